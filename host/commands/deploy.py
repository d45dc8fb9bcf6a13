"""``dflare deploy``: put the agent on a device.

    dflare deploy adb (--serial S | --host HOST:PORT) [...]   push + start + forward, until Ctrl-C
    dflare deploy build --platform P [--out DIR]             build the agent zipapp for a platform
    dflare deploy linux [--root DIR] [...]                   install the systemd service on this board
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from pathlib import Path

from host.deploy.adb import (
    DEFAULT_AUTH_TIMEOUT_S,
    DEFAULT_DEVICE_DIR,
    DEFAULT_START_TIMEOUT_S,
    RUNTIME_MODES,
    AdbDeployment,
    AdbDeployOptions,
    DeviceAddress,
)
from host.deploy.bundle import NATIVE_REQUIREMENTS, PLATFORMS, build_bundle
from host.deploy.linux import DEFAULT_PORT, DEFAULT_TOKEN_FILE, install
from host.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("deploy", help="deploy the agent to a phone (adb) or a Linux board (systemd)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="deploy_command", metavar="{adb,build,linux}")

    a = sub.add_parser("adb", help="deploy over adb (USB or network), forward a host port, keep it up until Ctrl-C",
                       description=(
                           "Checks the device (ABI, Android version, Python, free space), pushes the agent "
                           "and a fresh token, starts `dflare-agent serve` on the device loopback, forwards "
                           "a host port to it over adb (no adb binary needed) and waits for its health check. On a "
                           "stock arm64 phone the agent comes with its own runtime (loader, libc, Python, wheels: "
                           "`dflare bundle build`), pushed once and reused while unchanged; cpu, xnnpack and ref run "
                           "there, gpu/nnapi need a device Python (docs/android.md). With --python, the device's "
                           "Python 3.10+ needs numpy, grpcio and a TFLite runtime for its ABI "
                           f"({', '.join(pip for _, pip in NATIVE_REQUIREMENTS)}): the zipapp carries the rest."))
    where = a.add_mutually_exclusive_group(required=True)
    where.add_argument("--serial", help="USB device serial (needs the usb extra: pip install 'dflare-edge[usb]')")
    where.add_argument("--host", metavar="HOST:PORT", help="network adb (adb tcpip / Wireless debugging)")
    a.add_argument("--python", help="interpreter on the device (default: python3 on the shell PATH, then a "
                                    f"standalone one in {DEFAULT_DEVICE_DIR}/python, then Termux's)")
    a.add_argument("--device-dir", default=DEFAULT_DEVICE_DIR, help="where the agent lives on the device")
    a.add_argument("--device-port", type=int, help="agent port on the device loopback (default: random)")
    a.add_argument("--local-port", type=int, default=0, help="host port to forward from (default: a free one)")
    a.add_argument("--bundle", type=Path, help="a zipapp from `dflare deploy build` (default: built now)")
    a.add_argument("--runtime", choices=RUNTIME_MODES, default="auto",
                   help="auto (default): a device Python with the native modules when the shell finds one, else "
                        "(arm64 phones) the self-contained runtime; runtime: always that; python: the device's")
    a.add_argument("--runtime-bundle", type=Path, help="a runtime from `dflare bundle build` (default: built or "
                                                       "taken from the cache now)")
    a.add_argument("--cache-dir", type=Path, help="where runtimes are built and cached")
    a.add_argument("--key", type=Path, help="adb private key (default: ~/.android/adbkey, created when missing)")
    a.add_argument("--auth-timeout-s", type=float, default=DEFAULT_AUTH_TIMEOUT_S,
                   help="time to accept the 'Allow USB debugging' prompt")
    a.add_argument("--start-timeout-s", type=float, default=DEFAULT_START_TIMEOUT_S,
                   help="time for the agent to become healthy")
    a.add_argument("--token-file", type=Path, help="write the agent token here (0600) for --target grpc://...")
    a.add_argument("--purge", action="store_true", help="on exit delete the whole device directory")
    a.add_argument("--json", action="store_true", help="print the device info as JSON")
    a.set_defaults(func=_run_adb)

    b = sub.add_parser("build", help="build the agent zipapp (+ manifest) for a platform")
    b.add_argument("--platform", required=True, choices=sorted(PLATFORMS))
    b.add_argument("--out", type=Path, default=Path("dist"), help="output directory")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=_run_build)

    lx = sub.add_parser("linux", help="install the agent as a hardened systemd service on this board",
                        description="Run on the board, after `pip install dflare-edge` (docs/raspberry-pi.md).")
    lx.add_argument("--root", type=Path, default=Path("/"), help="stage files under DIR instead of / (no start)")
    lx.add_argument("--agent", help="path of dflare-agent (default: this installation's)")
    lx.add_argument("--bind", default="127.0.0.1", help="address the agent binds (default loopback: use an SSH "
                                                        "tunnel or TLS to reach it, see docs/raspberry-pi.md)")
    lx.add_argument("--port", type=int, default=DEFAULT_PORT)
    lx.add_argument("--token-file", default=DEFAULT_TOKEN_FILE, help="root-only token file")
    lx.add_argument("--rotate-token", action="store_true", help="replace an existing token")
    lx.add_argument("--no-start", action="store_true", help="write the files, do not enable the service")
    lx.add_argument("--agent-arg", action="append", default=[], help="extra `serve` argument (repeatable)")
    lx.set_defaults(func=_run_linux)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _run_adb(args: argparse.Namespace) -> int:
    address = DeviceAddress.parse(args.host or args.serial)  # a HOST:PORT serial (`adb devices`) is network adb
    options = AdbDeployOptions(device_dir=args.device_dir, python=args.python, device_port=args.device_port,
                               local_port=args.local_port, bundle=args.bundle, key_path=args.key,
                               auth_timeout_s=args.auth_timeout_s, start_timeout_s=args.start_timeout_s,
                               purge=args.purge, runtime=args.runtime, runtime_bundle=args.runtime_bundle,
                               cache_dir=args.cache_dir)
    from host.targets.remote import AgentProbe  # imports grpc: only for this subcommand

    deployment = AdbDeployment(address, options, probe=AgentProbe())
    info = deployment.initialize()
    try:
        if args.token_file:
            _write_private(args.token_file, deployment.token)
        if args.json:
            print(json.dumps({**info, "grpc": f"grpc://{deployment.grpc_address}"}, indent=1))
        else:
            print(f"{address.uri}: {info['manufacturer']} {info['model']} ({info['soc']}), Android "
                  f"{info['android_release']}, {info['abi']}, Python {info['python']['version']}")
            bundle = info.get("bundle", {})
            if deployment.uses_runtime:
                how = f"pushed in {bundle['push_s']:.0f} s" if bundle.get("pushed") else "already on the device"
                print(f"runtime: self-contained, {bundle['bytes'] / 2**20:.1f} MiB ({how}); delegates cpu, xnnpack, "
                      "ref (gpu/nnapi need a device Python: docs/android.md)")
            token_hint = f" --token-file {args.token_file}" if args.token_file else ""
            print(f"agent ready: --target grpc://{deployment.grpc_address}{token_hint}  (Ctrl-C stops it)")
        sys.stdout.flush()
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        deployment.stop()
    return 0


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _run_build(args: argparse.Namespace) -> int:
    bundle = build_bundle(args.out, args.platform)
    if args.json:
        print(json.dumps(bundle.to_dict(), indent=1))
    else:
        print(f"{bundle.path} ({bundle.size_bytes // 1024} KiB, sha256 {bundle.sha256[:12]}) for {bundle.platform}")
        print(f"the device must provide: {', '.join(bundle.native_requirements)}")
        if bundle.platform == "android-arm64":
            print("a stock phone has none of them: dflare bundle build --platform android-arm64 makes the "
                  "self-contained runtime that dflare deploy adb pushes instead (docs/android.md)")
    return 0


def _run_linux(args: argparse.Namespace) -> int:
    if args.port <= 0:
        raise ConfigError("--port must be positive")
    result = install(root=args.root, agent=args.agent, host=args.bind, port=args.port, token_file=args.token_file,
                     extra_args=tuple(args.agent_arg), start=not args.no_start, rotate_token=args.rotate_token)
    print(f"unit: {result.unit_path}\ntoken: {result.token_path} (root-only)")
    print("service started" if result.started else "not started (staged or --no-start)")
    print(f"reach it: ssh -N -L {args.port}:127.0.0.1:{args.port} USER@BOARD, then --target "
          f"grpc://127.0.0.1:{args.port} --token-file <a copy of the token>")
    return 0
