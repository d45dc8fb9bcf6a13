"""``dflare info TARGET [--token-file F] [--json]``: what a target is and what it can run.

TARGET is ``local:`` (this machine's interpreter), ``grpc://HOST:PORT`` (an agent; token from
``--token-file`` or ``$DFLARE_TOKEN``) or ``adb://SERIAL``. An unreachable agent exits with code 3;
a refused or missing token says so.
"""

from __future__ import annotations

import argparse
import json

from host.commands.target_flags import add_target_arguments, target_options
from host.exit_codes import ExitCode

#: Keys printed first, in this order, in the human-readable view; the rest follow sorted.
_LEADING_KEYS = ("uri", "runtime", "runtime_version", "delegates", "machine", "abis", "system", "release",
                 "cpu_count", "memory_total_bytes", "memory_available_bytes", "python", "agent_version", "protocol")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "info",
        help="show a target's device, runtime and delegates",
        description="Show what a target is: runtime and version, delegates, CPU/ABI, memory, OS, agent limits.",
    )
    p.add_argument("target", metavar="TARGET", help="local:, grpc://HOST:PORT, grpcs://HOST:PORT (TLS) or adb://SERIAL")
    add_target_arguments(p)
    p.add_argument("--json", action="store_true", help="print the facts as one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from host.targets import open_target

    target = open_target(args.target, target_options(args))
    try:
        info = target.info()
    finally:
        target.close()
    if args.json:
        print(json.dumps(info, sort_keys=True, default=str))
    else:
        print(format_info(info))
    return ExitCode.ok


def format_info(info: dict) -> str:
    """Render facts as aligned ``key: value`` lines, the important ones first."""
    keys = [k for k in _LEADING_KEYS if k in info] + sorted(k for k in info if k not in _LEADING_KEYS)
    width = max((len(k) for k in keys), default=0)
    lines = []
    for key in keys:
        value = info[key]
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in sorted(value.items())) or "-"
        elif isinstance(value, (list, tuple)):
            value = ", ".join(map(str, value)) or "-"
        lines.append(f"{key.ljust(width)}  {value}")
    return "\n".join(lines)
