"""The self-contained aarch64 agent runtime that ``dflare deploy adb`` pushes to stock Android phones.

PyPI has no Android builds of numpy, grpcio or a TFLite runtime, and a stock phone has no Python. So
the agent ships with everything it runs on, built from two registries:

* Debian bookworm arm64 packages (``mmdebstrap --variant=extract``, as ``scripts/emulated_board.sh``
  fetches them): the dynamic loader ``ld-linux-aarch64.so.1``, glibc, libstdc++, zlib, expat, libffi
  and Debian's CPython 3.11 with its standard library;
* the manylinux aarch64 wheels of numpy, grpcio (+ health, reflection), protobuf and ai-edge-litert,
  at the host's versions (so a phone computes with the same releases as the host and the board).

Layout of the bundle (a directory, shipped as one ``.tar.gz``)::

    bin/python3                    Debian's python3.11 (its NEEDED libraries are all in lib/)
    bin/dflare-agent               a POSIX sh launcher: the same command ``dflare deploy adb`` runs
    lib/ld-linux-aarch64.so.1      the loader, run as a program: it needs no /lib on the device
    lib/*.so*                      exactly the libraries the ELF files above need (DT_NEEDED closure)
    lib/python3.11/                the standard library, trimmed, with precompiled .pyc
    site/                          the wheels, trimmed (no tests, headers, converters, GPU accelerators)
    agent/device_agent/            the agent
    dflare-runtime.json            what this runtime is and cannot do (read by device_agent.bundled_runtime)

The agent starts as ``lib/ld-linux-aarch64.so.1 --library-path lib bin/python3 -s -m device_agent
serve ...`` with ``PYTHONHOME``/``PYTHONPATH`` set on that command line (:func:`agent_command`);
its model workers are started with the same loader prefix (``DFLARE_AGENT_LAUNCHER``), since the
kernel cannot run ``bin/python3`` by itself (its PT_INTERP is /lib/ld-linux-aarch64.so.1, absent on
a phone).

Reproducible and cached: entries are sorted, owners and mtimes fixed, gzip's own timestamp zeroed,
.pyc files are hash-based (``UNCHECKED_HASH``, no source mtimes). The tarball is named by the sha256
of the assembled tree (paths, modes and bytes, before compiling), so the same inputs reuse the
cached tarball instead of building it again.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.metadata
import io
import json
import os
import py_compile
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

from host.deploy.elf import EM_AARCH64, elf_machine, needed_libraries
from host.errors import ConfigError
from host.files import atomic_write

#: The platform this runtime is built for (``host.deploy.bundle.PLATFORMS``).
PLATFORM = "android-arm64"
#: Bump when the layout or the trimming changes: part of the tree, so of the cache key.
LAYOUT_VERSION = 2
#: Debian release and packages: Python 3.11 is bookworm's, and matches the host's .pyc format.
SUITE = "bookworm"
DEBIAN_PACKAGES = ("libc6", "python3.11-minimal", "libpython3.11-stdlib", "libstdc++6", "libgcc-s1", "zlib1g")
PYTHON_VERSION = "3.11"
#: Wheels installed at the host's versions (``importlib.metadata``), so a phone runs the same releases.
WHEEL_PACKAGES = ("ai-edge-litert", "grpcio", "grpcio-health-checking", "grpcio-reflection", "protobuf", "numpy")
#: pip finds ai-edge-litert (manylinux_2_27) and numpy/grpcio (2014/2_17/2_28) only with several tags
#: listed (docs: notes on the emulated board, pitfall 1). bookworm's glibc 2.36 runs all of them.
PLATFORM_TAGS = ("manylinux2014_aarch64", "manylinux_2_17_aarch64", "manylinux_2_27_aarch64",
                 "manylinux_2_28_aarch64", "manylinux_2_34_aarch64")
LOADER = "ld-linux-aarch64.so.1"
#: The file in the bundle describing it; device_agent.bundled_runtime reads it from sys.prefix.
RUNTIME_MANIFEST = "dflare-runtime.json"
#: Environment variable naming the worker launcher (argv prefix, shell words) for device_agent.worker.
LAUNCHER_ENV = "DFLARE_AGENT_LAUNCHER"
#: Built tarballs kept in the cache (newest first): every change to the agent makes a new one (~40 MB).
KEEP_TARBALLS = 3
#: The fixed mtime of every tar entry (2020-01-01): same inputs, same bytes.
FIXED_MTIME = 1577836800

#: Standard library parts the agent never imports (tests, GUIs, build tools, databases).
STDLIB_EXCLUDE = frozenset({
    "test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data", "distutils", "venv",
    "sqlite3", "curses", "dbm", "turtle.py", "pydoc.py", "config-3.11-aarch64-linux-gnu", "site-packages",
    "dist-packages", "__phello__",
})
#: Extension modules of lib-dynload left out (prefixes): test modules, terminals, databases, audio.
#: _ssl and _hashlib go too (they pull in OpenSSL, 5.5 MB): gRPC brings its own TLS, and hashlib falls back
#: to the interpreter's built-in _sha256 for the model cache's digests.
DYNLOAD_EXCLUDE_PREFIXES = ("_test", "_ctypes_test", "_xx", "xxlimited", "_curses", "readline", "_dbm", "_gdbm",
                            "nis", "ossaudiodev", "audioop", "_sqlite3", "_tkinter", "_crypt", "_ssl", "_hashlib")
#: Wheel contents left out: directory names anywhere, and paths under site/ (prefixes).
WHEEL_EXCLUDE_DIRS = frozenset({"tests", "__pycache__", "include", "f2py", "_pyinstaller"})
WHEEL_EXCLUDE_PATHS = (
    "bin/",
    # ai-edge-litert: the agent uses only its Interpreter; these are the converter, calibration,
    # GenAI ops, ahead-of-time compilation, vendor NPU plugins and the WebGPU accelerator (which needs
    # the phone's GPU libraries, not loadable here: docs/android.md).
    "ai_edge_litert/libLiteRtWebGpuAccelerator.so", "ai_edge_litert/aot/", "ai_edge_litert/tools/",
    "ai_edge_litert/vendors/", "ai_edge_litert/_pywrap_litert_converter.so",
    "ai_edge_litert/_pywrap_tfl_calibration.so", "ai_edge_litert/_pywrap_tensorflow_lite_calibration_wrapper.so",
    "ai_edge_litert/pywrap_genai_ops.so",
    # LiteRT's CompiledModel runtime (the Interpreter's wrapper does not link it) and the converter's
    # dependencies (ml_dtypes, flatbuffers, tqdm), which the Interpreter never imports.
    "ai_edge_litert/libLiteRt.so", "ml_dtypes/", "flatbuffers/", "tqdm/",
)
WHEEL_EXCLUDE_SUFFIXES = (".pyi", ".h", ".hpp", ".c", ".pxd", ".pyx", ".a")
#: What the runtime can and cannot do, written into its manifest and reported by the agent.
DELEGATES = ("cpu", "xnnpack", "ref")
UNAVAILABLE_DELEGATES = ("gpu", "nnapi")

Log = Callable[[str], None]


def default_cache_dir() -> Path:
    """``$DFLARE_CACHE_DIR``, else ``~/.cache/dflare-edge``: the Debian root, wheels and built bundles."""
    env = os.environ.get("DFLARE_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "dflare-edge"


@dataclass(frozen=True)
class RuntimeBundle:
    """A built runtime tarball and what it holds."""

    path: Path
    platform: str
    sha256: str
    size_bytes: int
    unpacked_bytes: int
    files: int
    tree_sha256: str
    cached: bool
    build_s: float

    def to_dict(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        return d

    @classmethod
    def load(cls, manifest_path: Path) -> RuntimeBundle:
        """Read the ``.json`` written next to a tarball; ``cached`` is True.

        Raises:
            ConfigError: missing or unreadable, or the tarball's bytes changed since it was written.
        """
        try:
            data = json.loads(Path(manifest_path).read_text())
            path = Path(data["path"])
            fields = {k: data[k] for k in ("platform", "sha256", "size_bytes", "unpacked_bytes", "files",
                                           "tree_sha256")}
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"cannot read the runtime manifest {manifest_path}: {exc}") from None
        if not path.is_file() or path.stat().st_size != fields["size_bytes"]:
            raise ConfigError(f"the runtime tarball {path} is missing or changed: rebuild it "
                              "(dflare bundle build --platform android-arm64)")
        return cls(path=path, cached=True, build_s=0.0, **fields)


def agent_command(runtime_dir: str) -> tuple[dict[str, str], list[str]]:
    """The environment and argv that start ``python -m device_agent`` from a runtime directory.

    Nothing comes from the device: the loader is the bundle's, libraries come only from its
    ``lib/`` (``--library-path``), ``PYTHONHOME`` points at it, and the workers get the same prefix.

    Args:
        runtime_dir: where the bundle is unpacked on the device (or a shell expression such as ``$R``).
    """
    r = runtime_dir
    prefix = [f"{r}/lib/{LOADER}", "--library-path", f"{r}/lib", f"{r}/bin/python3", "-s"]
    env = {
        "PYTHONHOME": r,
        "PYTHONPATH": f"{r}/agent:{r}/site",
        "PYTHONNOUSERSITE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",  # the .pyc files are in the bundle; never write next to them
        "PYTHONUTF8": "1",  # no locale files on the device: UTF-8 without asking the C library
        LAUNCHER_ENV: " ".join(_sh_word(w) for w in prefix),
    }
    return env, [*prefix, "-m", "device_agent"]


def _sh_word(word: str) -> str:
    """Quote for sh, leaving ``$VAR`` expansions alone (the launcher script uses ``$R``)."""
    return f'"{word}"' if "$" in word else "'" + word.replace("'", "'\\''") + "'"


def _launcher_script() -> str:
    env, argv = agent_command("$R")
    lines = ["#!/system/bin/sh",
             "# dflare-agent from this self-contained runtime (generated by host/deploy/runtime_bundle.py).",
             "# Usage: sh bin/dflare-agent serve --port 50051 --token-file TOKEN --cache-dir DIR",
             'R=$(cd "$(dirname "$0")/.." && pwd)']
    for key, value in env.items():
        quoted = value.replace('"', '\\"') if key == LAUNCHER_ENV else value
        lines.append(f'export {key}="{quoted}"')
    lines.append("exec " + " ".join(_sh_word(w) for w in argv) + ' "$@"')
    return "\n".join(lines) + "\n"


# --- inputs: the Debian root and the wheels -------------------------------------------------------

def _run(command: list[str], what: str, log: Log) -> None:
    log(f"{what}: {' '.join(command[:6])}{' ...' if len(command) > 6 else ''}")
    try:
        done = subprocess.run(command, capture_output=True, text=True)
    except FileNotFoundError:
        raise ConfigError(f"{what} needs {command[0]!r}, which is not installed: on Debian/Ubuntu "
                          f"apt-get install {'mmdebstrap' if command[0] == 'mmdebstrap' else command[0]}") from None
    if done.returncode != 0:
        raise ConfigError(f"{what} failed (exit {done.returncode}): {(done.stderr or done.stdout)[-1500:]}")


def ensure_debian_root(cache_dir: Path, log: Log) -> Path:
    """The extracted bookworm arm64 packages (built once per package list, then reused)."""
    key = hashlib.sha256(f"{SUITE} {' '.join(DEBIAN_PACKAGES)}".encode()).hexdigest()[:16]
    root = cache_dir / f"debroot-{key}"
    if (root / "usr/bin" / f"python{PYTHON_VERSION}").is_file():
        return root
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    # No mirror argument: mmdebstrap uses this machine's configured Debian mirror.
    _run(["mmdebstrap", "--quiet", "--arch=arm64", "--variant=extract", f"--include={','.join(DEBIAN_PACKAGES)}",
          SUITE, str(tmp)], "fetching Debian arm64 packages", log)
    tmp.rename(root)
    return root


def wheel_requirements() -> list[str]:
    """``name==version`` for each wheel, at the version installed on this host.

    Raises:
        ConfigError: one is not installed here.
    """
    out = []
    for name in WHEEL_PACKAGES:
        try:
            out.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            raise ConfigError(f"{name} is not installed on this host: the runtime takes the host's versions "
                              f"(pip install {name})") from None
    return out


def ensure_wheels(cache_dir: Path, log: Log) -> Path:
    """The aarch64 wheels installed with ``pip --target`` (once per requirement list)."""
    requirements = wheel_requirements()
    key = hashlib.sha256(" ".join([*requirements, *PLATFORM_TAGS]).encode()).hexdigest()[:16]
    site = cache_dir / f"wheels-{key}"
    if (site / ".complete").is_file():
        return site
    tmp = site.with_name(site.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    platforms = [a for tag in PLATFORM_TAGS for a in ("--platform", tag)]
    # pip runs natively; --only-binary with --platform/--python-version picks the cp311 aarch64 wheels.
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
          "--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp", *platforms,
          "--target", str(tmp), *requirements], "fetching aarch64 wheels", log)
    (tmp / ".complete").write_text("\n".join(requirements) + "\n")
    tmp.rename(site)
    return site


# --- assembling the tree ---------------------------------------------------------------------------

def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)  # follows symlinks: the bundle holds regular files only
    os.chmod(dst, 0o755 if os.access(src, os.X_OK) else 0o644)


def _resolve_in_root(root: Path, path: Path) -> Path | None:
    """Follow a symlink inside the Debian root (absolute targets are relative to the root)."""
    for _ in range(16):
        if not path.is_symlink():
            return path if path.exists() else None
        target = os.readlink(path)
        path = root / target.lstrip("/") if target.startswith("/") else path.parent / target
    return None


def _copy_tree(src: Path, dst: Path, keep: Callable[[str], bool], root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(src):
        rel_dir = Path(dirpath).relative_to(src)
        dirnames[:] = sorted(d for d in dirnames if keep((rel_dir / d).as_posix() + "/"))
        for name in sorted(filenames):
            rel = (rel_dir / name).as_posix()
            if not keep(rel):
                continue
            real = _resolve_in_root(root, Path(dirpath) / name)
            if real is not None and real.is_file():
                _copy(real, dst / rel)


def _keep_stdlib(rel: str) -> bool:
    first = rel.split("/", 1)[0].rstrip("/")
    if first in STDLIB_EXCLUDE or "/__pycache__" in "/" + rel or "/test/" in "/" + rel or "/tests/" in "/" + rel:
        return False
    if rel.startswith("lib-dynload/") and rel.count("/") == 1:
        return not rel.split("/")[1].startswith(DYNLOAD_EXCLUDE_PREFIXES)
    return not rel.endswith((".exe", ".pyc"))


def _keep_wheel_file(rel: str) -> bool:
    parts = rel.rstrip("/").split("/")
    if any(p in WHEEL_EXCLUDE_DIRS for p in parts) or rel.startswith(WHEEL_EXCLUDE_PATHS) or rel == ".complete":
        return False
    return not rel.endswith(WHEEL_EXCLUDE_SUFFIXES) and not rel.endswith(".pyc")


def _agent_files() -> Iterable[tuple[Path, str]]:
    import device_agent

    root = Path(device_agent.__file__).resolve().parent
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix in (".py", ".typed"):
            yield path, "device_agent/" + path.relative_to(root).as_posix()


def _library_dirs(root: Path) -> list[Path]:
    return [root / "lib/aarch64-linux-gnu", root / "usr/lib/aarch64-linux-gnu"]


def _add_libraries(tree: Path, debroot: Path) -> None:
    """Copy into ``lib/`` the loader and the DT_NEEDED closure of every ELF file in the tree.

    A soname shipped inside a wheel (``numpy.libs/``, ``ai_edge_litert/``) is found there through the
    wheel's RUNPATH and is not copied again.

    Raises:
        ConfigError: a needed library is neither in the tree nor in the Debian root.
    """
    lib = tree / "lib"
    elves = [p for p in sorted(tree.rglob("*")) if p.is_file() and elf_machine(p) == EM_AARCH64]
    provided = {p.name for p in elves}
    wanted = {LOADER: "the launch command", "libc.so.6": "the launch command"}
    queue = list(elves)
    while queue:
        path = queue.pop()
        for soname in needed_libraries(path):
            wanted.setdefault(soname, path.relative_to(tree).as_posix())
        for soname in sorted(wanted):
            if soname in provided:
                continue
            source = next((d / soname for d in _library_dirs(debroot) if (d / soname).exists()), None)
            if source is None:
                raise ConfigError(f"{wanted[soname]} needs {soname}, which neither the wheels nor the Debian "
                                  f"packages ({', '.join(DEBIAN_PACKAGES)}) provide: add its package to "
                                  "DEBIAN_PACKAGES in host/deploy/runtime_bundle.py")
            real = _resolve_in_root(debroot, source)
            _copy(real, lib / soname)
            provided.add(soname)
            queue.append(lib / soname)


def assemble(tree: Path, debroot: Path, site: Path) -> None:
    """Lay out the runtime in ``tree`` (see the module docstring), without .pyc files."""
    shutil.rmtree(tree, ignore_errors=True)
    (tree / "bin").mkdir(parents=True)
    _copy(debroot / "usr/bin" / f"python{PYTHON_VERSION}", tree / "bin/python3")
    _copy_tree(debroot / "usr/lib" / f"python{PYTHON_VERSION}", tree / "lib" / f"python{PYTHON_VERSION}",
               _keep_stdlib, debroot)
    _copy_tree(site, tree / "site", _keep_wheel_file, site)
    for src, rel in _agent_files():
        _copy(src, tree / "agent" / rel)
    _add_libraries(tree, debroot)
    script = tree / "bin/dflare-agent"
    script.write_text(_launcher_script())
    script.chmod(0o755)
    manifest = {
        "layout_version": LAYOUT_VERSION,
        "platform": PLATFORM,
        "kind": "self-contained glibc aarch64 runtime (Debian bookworm loader, libc and CPython "
                f"{PYTHON_VERSION}; manylinux wheels)",
        "python": PYTHON_VERSION,
        "debian": {"suite": SUITE, "packages": list(DEBIAN_PACKAGES)},
        "wheels": wheel_requirements(),
        "delegates": list(DELEGATES),
        "unavailable_delegates": list(UNAVAILABLE_DELEGATES),
    }
    (tree / RUNTIME_MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def tree_digest(tree: Path) -> tuple[str, int, int]:
    """(sha256 over every path, mode and content in sorted order, total bytes, file count)."""
    digest = hashlib.sha256()
    total = count = 0
    for path in sorted(p for p in tree.rglob("*") if p.is_file()):
        rel = path.relative_to(tree).as_posix()
        data = path.read_bytes()
        digest.update(f"{rel}\0{path.stat().st_mode & 0o777:o}\0{len(data)}\0".encode())
        digest.update(data)
        total += len(data)
        count += 1
    return digest.hexdigest(), total, count


def compile_tree(tree: Path) -> None:
    """Precompile every .py to hash-based .pyc (no mtimes: reproducible, valid after any copy).

    Without them the first start on a phone compiles the standard library, numpy and grpc (seconds;
    under emulation half a minute), and tries to write ``__pycache__`` into the bundle.
    """
    for path in sorted(tree.rglob("*.py")):
        rel = path.relative_to(tree).as_posix()
        try:
            py_compile.compile(str(path), dfile=rel, doraise=True,
                               invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        except py_compile.PyCompileError:
            continue  # a file the 3.11 compiler rejects (e.g. lib2to3 test data) is simply not precompiled


def write_tarball(tree: Path, out: Path) -> None:
    """A gzip'd tar of ``tree``: sorted entries, root-owned, fixed mtimes, no name or time in the gzip header.

    Built in memory (about 40 MiB) and written with :func:`host.files.atomic_write`, so a failed build
    leaves the previous tarball (or none), never a truncated one.
    """
    raw = io.BytesIO()
    with gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0, compresslevel=6) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for path in sorted(tree.rglob("*")):
            rel = path.relative_to(tree).as_posix()
            info = tarfile.TarInfo(rel)
            info.mtime = FIXED_MTIME
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if path.is_dir():
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                info.size = path.stat().st_size
                info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
                with open(path, "rb") as f:
                    tar.addfile(info, f)
    atomic_write(out, raw.getvalue())


def build_runtime(platform: str = PLATFORM, cache_dir: Path | None = None, log: Log | None = None,
                  rebuild: bool = False) -> RuntimeBundle:
    """Build (or reuse from the cache) the runtime tarball for ``platform``.

    Args:
        platform: only ``android-arm64`` has a self-contained runtime.
        cache_dir: where the Debian root, wheels and tarballs are kept (default :func:`default_cache_dir`).
        log: progress lines (default: none).
        rebuild: build the tarball again even when the cache holds one for the same tree.

    Raises:
        ConfigError: another platform, a missing tool (mmdebstrap, pip) or package, a failed download.
    """
    if platform != PLATFORM:
        raise ConfigError(f"no self-contained runtime for {platform!r}: only {PLATFORM} has one (on Linux boards "
                          "pip installs the agent: dflare deploy linux; other Android ABIs need a device Python)")
    log = log or (lambda _line: None)
    start = time.monotonic()
    cache_dir = (Path(cache_dir) if cache_dir else default_cache_dir()).resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    debroot = ensure_debian_root(cache_dir, log)
    site = ensure_wheels(cache_dir, log)
    tree = cache_dir / f"tree-{os.getpid()}"
    try:
        assemble(tree, debroot, site)
        tree_sha, unpacked, files = tree_digest(tree)
        out = cache_dir / f"runtime-{platform}-{tree_sha[:16]}.tar.gz"
        manifest = out.with_name(out.name + ".json")
        if not rebuild and manifest.is_file():
            with contextlib.suppress(ConfigError):  # a damaged cache entry is rebuilt
                cached = RuntimeBundle.load(manifest)
                log(f"cached: {out}")
                return cached
        if sys.version_info[:2] == tuple(int(p) for p in PYTHON_VERSION.split(".")):
            log(f"compiling .pyc and writing {out.name}")
            compile_tree(tree)
        else:  # another bytecode format: the device would ignore them; it compiles in memory instead (slower start)
            log(f"writing {out.name} without .pyc (this host runs Python {sys.version_info[0]}.{sys.version_info[1]}, "
                f"the runtime {PYTHON_VERSION})")
        _, unpacked, files = tree_digest(tree)
        write_tarball(tree, out)
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    content_sha = _file_sha256(out)
    bundle = RuntimeBundle(path=out, platform=platform, sha256=content_sha, size_bytes=out.stat().st_size,
                           unpacked_bytes=unpacked, files=files, tree_sha256=tree_sha, cached=False,
                           build_s=round(time.monotonic() - start, 1))
    atomic_write(manifest, json.dumps(bundle.to_dict(), indent=1) + "\n")
    prune_cache(cache_dir, platform)
    return bundle


def prune_cache(cache_dir: Path, platform: str = PLATFORM, keep: int = KEEP_TARBALLS) -> list[Path]:
    """Delete all but the ``keep`` most recently written tarballs (and their .json); returns what went."""
    tarballs = sorted(cache_dir.glob(f"runtime-{platform}-*.tar.gz"), key=lambda p: p.stat().st_mtime, reverse=True)
    removed = []
    for old in tarballs[keep:]:
        for path in (old, old.with_name(old.name + ".json")):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        removed.append(old)
    return removed


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_member(bundle: RuntimeBundle, name: str) -> bytes:
    """One file of a built tarball (tests and ``dflare bundle`` use it to show the manifest)."""
    with tarfile.open(bundle.path, "r:gz") as tar:
        member = tar.extractfile(name)
        if member is None:
            raise ConfigError(f"{bundle.path} has no file {name}")
        return io.BytesIO(member.read()).getvalue()
