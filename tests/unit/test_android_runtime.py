"""The self-contained Android runtime's pieces that need no emulation: ELF reading, the reproducible
tarball, trimming rules, the launch command, the worker launcher, memfd slots and the delegate refusal."""

from __future__ import annotations

import json
import os
import platform
import shlex
import socket
import sys
import tarfile
from multiprocessing.connection import Connection
from pathlib import Path

import pytest

from device_agent import bundled_runtime, launch, runtime, shm
from device_agent.errors import RuntimeDelegateUnavailableError
from host.deploy import runtime_bundle
from host.deploy.elf import EM_X86_64, elf_machine, needed_libraries

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.mark.skipif(platform.machine() != "x86_64" or sys.platform != "linux", reason="reads this x86-64 Linux ELF")
def test_elf_reader_names_the_machine_and_the_needed_libraries() -> None:
    python = Path(sys.executable).resolve()
    assert elf_machine(python) == EM_X86_64
    assert "libc.so.6" in needed_libraries(python) or any(n.startswith("libpython") for n in needed_libraries(python))
    assert elf_machine(Path(__file__)) is None and needed_libraries(Path(__file__)) == []


def _tree(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "bin/tool").write_text("#!/bin/sh\n")
    (root / "bin/tool").chmod(0o755)
    (root / "lib/python3.11").mkdir(parents=True)
    (root / "lib/python3.11/os.py").write_text("x = 1\n")
    return root


def test_tarball_is_reproducible_sorted_root_owned_with_fixed_mtimes(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "tree")
    os.utime(tree / "bin/tool", (1e9, 1e9))
    runtime_bundle.write_tarball(tree, tmp_path / "a.tar.gz")
    os.utime(tree / "bin/tool", (2e9, 2e9))  # a later mtime changes nothing
    runtime_bundle.write_tarball(tree, tmp_path / "b.tar.gz")
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()
    with tarfile.open(tmp_path / "a.tar.gz") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert {(m.uid, m.gid, m.mtime) for m in members} == {(0, 0, runtime_bundle.FIXED_MTIME)}
    assert {m.name: m.mode for m in members if m.isfile()} == {"bin/tool": 0o755, "lib/python3.11/os.py": 0o644}


def test_a_failed_tarball_build_keeps_the_previous_tarball_and_leaves_no_temporary(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "tree")
    out = tmp_path / "out" / "runtime.tar.gz"
    out.parent.mkdir()
    runtime_bundle.write_tarball(tree, out)
    before = out.read_bytes()
    (tree / "bin/dangling").symlink_to(tree / "missing")  # is_dir() False, stat() fails: mid-archive
    with pytest.raises(FileNotFoundError):
        runtime_bundle.write_tarball(tree, out)
    assert out.read_bytes() == before
    assert [p.name for p in out.parent.iterdir()] == ["runtime.tar.gz"]


def test_cache_keeps_the_newest_tarballs(tmp_path: Path) -> None:
    for i in range(5):
        tarball = tmp_path / f"runtime-android-arm64-{i:016x}.tar.gz"
        tarball.write_bytes(b"x")
        Path(str(tarball) + ".json").write_text("{}")
        os.utime(tarball, (1e9 + i, 1e9 + i))
    removed = runtime_bundle.prune_cache(tmp_path, keep=3)
    assert sorted(p.name for p in removed) == [f"runtime-android-arm64-{i:016x}.tar.gz" for i in (0, 1)]
    assert len(list(tmp_path.glob("*.tar.gz"))) == 3 and len(list(tmp_path.glob("*.json"))) == 3


def test_tree_digest_covers_names_modes_and_bytes(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "tree")
    digest, total, count = runtime_bundle.tree_digest(tree)
    assert (total, count) == (len("#!/bin/sh\n") + len("x = 1\n"), 2)
    (tree / "lib/python3.11/os.py").chmod(0o755)
    assert runtime_bundle.tree_digest(tree)[0] != digest


@pytest.mark.parametrize("rel, kept", [
    ("os.py", True), ("json/decoder.py", True), ("lib-dynload/_ctypes.cpython-311-aarch64-linux-gnu.so", True),
    ("test/test_os.py", False), ("tkinter/__init__.py", False), ("idlelib/", False),
    ("lib-dynload/_testcapi.cpython-311-aarch64-linux-gnu.so", False), ("lib-dynload/readline.cpython-311.so", False),
    ("unittest/test/test_case.py", False), ("encodings/__pycache__/utf_8.cpython-311.pyc", False),
    ("lib-dynload/_ssl.cpython-311-aarch64-linux-gnu.so", False), ("ssl.py", True),
])
def test_stdlib_trimming(rel: str, kept: bool) -> None:
    assert runtime_bundle._keep_stdlib(rel) is kept


@pytest.mark.parametrize("rel, kept", [
    ("numpy/__init__.py", True), ("numpy.libs/libscipy_openblas64_-ff651d7f.so", True),
    ("ai_edge_litert/_pywrap_litert_interpreter_wrapper.so", True), ("grpc/_cython/cygrpc.cpython-311.so", True),
    ("numpy/_core/tests/test_umath.py", False), ("numpy/_core/include/numpy/ndarrayobject.h", False),
    ("numpy/__init__.pyi", False), ("bin/f2py", False), ("ai_edge_litert/libLiteRtWebGpuAccelerator.so", False),
    ("ai_edge_litert/aot/core/types.py", False), ("grpc/_cython/_cygrpc/grpc.pxi", True),
    ("ai_edge_litert/libLiteRt.so", False), ("ml_dtypes/__init__.py", False), ("tqdm/", False),
])
def test_wheel_trimming(rel: str, kept: bool) -> None:
    assert runtime_bundle._keep_wheel_file(rel) is kept


def test_agent_command_sets_everything_on_the_command_line_and_workers_get_the_same_prefix() -> None:
    env, argv = runtime_bundle.agent_command("/data/local/tmp/dflare/runtime")
    r = "/data/local/tmp/dflare/runtime"
    assert argv == [f"{r}/lib/ld-linux-aarch64.so.1", "--library-path", f"{r}/lib", f"{r}/bin/python3", "-s", "-m",
                    "device_agent"]
    assert env["PYTHONHOME"] == r and env["PYTHONPATH"] == f"{r}/agent:{r}/site"
    assert shlex.split(env[launch.LAUNCHER_ENV]) == argv[:5]
    assert not {"HOME", "TMPDIR", "LANG"} & set(env)
    script = runtime_bundle._launcher_script()
    assert script.startswith("#!/system/bin/sh\n") and 'exec "$R/lib/ld-linux-aarch64.so.1"' in script


def test_worker_launcher_defaults_to_sys_executable_and_reads_the_variable(monkeypatch) -> None:
    monkeypatch.delenv(launch.LAUNCHER_ENV, raising=False)
    assert launch.python_command() == [sys.executable]
    monkeypatch.setenv(launch.LAUNCHER_ENV, "'/d/lib/ld-linux-aarch64.so.1' --library-path '/d/lib' '/d/bin/python3'")
    assert launch.python_command() == ["/d/lib/ld-linux-aarch64.so.1", "--library-path", "/d/lib", "/d/bin/python3"]
    monkeypatch.setenv(launch.LAUNCHER_ENV, "'unterminated")
    with pytest.raises(RuntimeError, match="not valid shell words"):
        launch.python_command()


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="needs memfd_create (Linux)")
def test_slots_are_nameless_memfd_regions_passed_over_the_worker_socket(monkeypatch) -> None:
    monkeypatch.delenv("TMPDIR", raising=False)
    fd, path = shm.create_region(4096)
    assert path is None and os.fstat(fd).st_size == 4096
    a, b = socket.socketpair()
    left, right = Connection(a.detach()), Connection(b.detach())
    try:
        os.pwrite(fd, b"slot", 0)
        left.send(("attach", 1))
        shm.send_fds(left, [fd])
        assert right.recv() == ("attach", 1)
        (received,) = shm.receive_fds(right, 1)
        assert os.pread(received, 4, 0) == b"slot"
        os.close(received)
    finally:
        os.close(fd)
        left.close()
        right.close()


@pytest.fixture()
def in_bundled_runtime(tmp_path: Path, monkeypatch):
    (tmp_path / bundled_runtime.MANIFEST_NAME).write_text(json.dumps(
        {"kind": "self-contained glibc aarch64 runtime", "unavailable_delegates": ["gpu", "nnapi"]}))
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    bundled_runtime.bundled_runtime.cache_clear()
    yield
    bundled_runtime.bundled_runtime.cache_clear()


@pytest.mark.parametrize("delegate", ["gpu", "nnapi", "external:/vendor/lib64/libnpu_delegate.so"])
def test_android_delegates_are_refused_in_the_bundled_runtime_with_what_would_work(in_bundled_runtime,
                                                                                   delegate: str) -> None:
    assert runtime.available_delegates(["/vendor/lib64/libnpu_delegate.so"]) == ["cpu", "xnnpack", "ref"]
    content = (FIXTURES / "models/digits28-int8.tflite").read_bytes()
    with pytest.raises(RuntimeDelegateUnavailableError) as refused:
        runtime.ModelRunner(content, delegate=delegate, allowed_external=["/vendor/lib64/libnpu_delegate.so"])
    message = str(refused.value)
    assert "self-contained Android runtime" in message and "Termux" in message and "external:/path/lib.so" in message


def test_device_info_says_what_the_bundled_runtime_cannot_load(in_bundled_runtime) -> None:
    from device_agent.device_info import static_info

    properties = static_info()["properties"]
    assert properties["dflare.runtime"] == "self-contained glibc aarch64 runtime"
    assert properties["dflare.unavailable_delegates"].startswith("gpu, nnapi, vendor NPU delegates")
