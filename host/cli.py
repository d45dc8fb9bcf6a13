"""The ``dflare`` command: one subcommand per module in ``host/commands/``, imported only when it runs.

Exit codes (the contract CI gates rely on; ``host.exit_codes.ExitCode``):
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
from host.exit_codes import ExitCode

#: Subcommands and their one-line help; ``host.commands.<name>`` defines ``register(subparsers)``,
#: which sets ``func(args) -> int``. Only the chosen one is imported, so ``dflare --help`` and each
#: command start fast and a command's missing dependency breaks only that command.
COMMANDS: dict[str, str] = {
    "info": "show a target's device, runtime and delegates",
    "run": "search for inputs on which the compressed model disagrees with the original",
    "report": "rebuild a campaign's report.html, summary.json, junit.xml and inputs/ from its store",
    "explain": "name the layer of the compressed model where each deviation's error first jumps",
    "compare": "run one model on several targets/delegates and compare them pairwise",
    "deploy": "deploy the agent to a phone (adb) or a Linux board (systemd)",
    "bundle": "build the self-contained agent runtime for stock Android phones",
    "repair": "fine-tune the original model on a campaign's triggering inputs and re-compress it",
    "lab": "nightly runs over a lab of devices; trends and regressions",
}
#: What to install when a command's import fails on a missing module (top-level name -> pip argument).
INSTALL_HINTS: dict[str, str] = {
    "adb_shell": "adb-shell",
    "usb1": "'dflare-edge[usb]'",
    "tensorflow": "'dflare-edge[repair]'",
    "sqlalchemy": "'dflare-edge[lab]'",
    "rich": "rich",
    "jinja2": "jinja2",
    "PIL": "pillow",
    "cv2": "opencv-python-headless",
}


class MissingDependency(Exception):
    """A subcommand cannot be imported because a package it needs is not installed."""


def chosen_command(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line (the first word that is not a global option)."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser, with the full arguments of the command ``argv`` names (all of them when ``argv`` is None)."""
    parser = argparse.ArgumentParser(
        prog="dflare",
        description="Find inputs on which a compressed TFLite classifier disagrees with its original model.",
    )
    parser.add_argument("--version", action="version", version=f"dflare-edge {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = set(COMMANDS) if argv is None else {chosen_command(argv)}
    for name, summary in COMMANDS.items():
        if name in wanted:
            _load(name).register(subparsers)
        else:
            subparsers.add_parser(name, help=summary, add_help=False)
    return parser


def _load(name: str):
    try:
        return importlib.import_module(f"host.commands.{name}")
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        if top in ("host", ""):
            raise
        hint = INSTALL_HINTS.get(top, top)
        raise MissingDependency(f"dflare {name} needs the Python package {top!r}, which is not installed: "
                                f"pip install {hint}") from None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(argv)
    except MissingDependency as exc:
        print(f"dflare: error: {exc}", file=sys.stderr)
        return ExitCode.usage
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return ExitCode.usage
    try:
        return int(args.func(args))
    except (TargetUnreachableError, DeviceConnectError) as exc:  # an agent, or an adb device, out of reach
        print(f"dflare: error: {exc}", file=sys.stderr)
        return ExitCode.unreachable
    except (ConfigError, ModelError, Error) as exc:
        print(f"dflare: error: {exc}", file=sys.stderr)
        return ExitCode.usage
    except KeyboardInterrupt:
        print("dflare: interrupted; finished seeds are saved, rerun the same command to resume", file=sys.stderr)
        return ExitCode.interrupted


if __name__ == "__main__":
    sys.exit(main())
