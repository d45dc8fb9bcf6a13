"""``dflare bundle build --platform android-arm64``: build the self-contained agent runtime for stock phones.

    dflare bundle build --platform android-arm64 [--cache-dir DIR] [--out DIR] [--rebuild] [--json]

Fetches Debian bookworm arm64 packages (mmdebstrap) and the manylinux aarch64 wheels (pip) once into
the cache, assembles the runtime (host/deploy/runtime_bundle.py), and prints the tarball's path, size
and sha256. The same inputs give the same bytes; a tree already built is taken from the cache.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from host.deploy.runtime_bundle import PLATFORM, build_runtime, default_cache_dir


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bundle", help="build the self-contained agent runtime for stock Android phones",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="bundle_command", metavar="{build}")
    b = sub.add_parser("build", help="build (or reuse from the cache) the runtime tarball")
    b.add_argument("--platform", required=True, choices=[PLATFORM])
    b.add_argument("--cache-dir", type=Path, help=f"downloads and built tarballs (default {default_cache_dir()}, "
                                                  "or $DFLARE_CACHE_DIR)")
    b.add_argument("--out", type=Path, help="also copy the tarball and its .json here")
    b.add_argument("--rebuild", action="store_true", help="build the tarball again even when cached")
    b.add_argument("--json", action="store_true", help="print the bundle facts as JSON")
    b.set_defaults(func=_run_build)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _run_build(args: argparse.Namespace) -> int:
    log = None if args.json else (lambda line: print(f"bundle: {line}", flush=True))
    bundle = build_runtime(args.platform, args.cache_dir, log=log, rebuild=args.rebuild)
    path = bundle.path
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / bundle.path.name
        shutil.copyfile(bundle.path, path)
        facts = {**bundle.to_dict(), "path": str(path.resolve())}
        Path(str(path) + ".json").write_text(json.dumps(facts, indent=1) + "\n")
    if args.json:
        print(json.dumps({**bundle.to_dict(), "path": str(path)}, indent=1))
    else:
        how = "cached" if bundle.cached else f"built in {bundle.build_s:.1f} s"
        print(f"{path}: {bundle.size_bytes / 2**20:.1f} MiB ({bundle.unpacked_bytes / 2**20:.0f} MiB unpacked, "
              f"{bundle.files} files), sha256 {bundle.sha256[:16]}, {how}")
        print(f"push it with: dflare deploy adb --host HOST:PORT --runtime-bundle {path}")
    return 0
