"""The ``dflare`` command: one subcommand per module in ``host/commands/``.

Exit codes (the contract CI gates rely on):
    0  completed
    1  deviations found and ``--fail-on-deviation`` given (or a regression, for lab reports)
    2  usage or input error
    3  target unreachable (an agent, or an adb device not connected or not authorized)
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

from host import __version__
from host.errors import ConfigError, DeviceConnectError, Error, ModelError, TargetUnreachableError

EXIT_OK = 0
EXIT_DEVIATION = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

#: Subcommand modules; each defines ``register(subparsers)`` which sets ``func(args) -> int``.
COMMAND_MODULES = ("info", "run", "report", "compare", "deploy", "bench", "repair", "lab")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dflare",
        description="Find inputs on which a compressed TFLite classifier disagrees with its original model.",
    )
    parser.add_argument("--version", action="version", version=f"dflare-edge {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"host.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"host.commands.{name}":
                raise
            continue  # not built yet
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args))
    except (TargetUnreachableError, DeviceConnectError) as exc:  # an agent, or an adb device, out of reach
        print(f"dflare: error: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (ConfigError, ModelError) as exc:
        print(f"dflare: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Error as exc:
        print(f"dflare: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("dflare: interrupted; finished seeds are saved, rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
