"""The ``dflare`` entry point: subcommands load only when they run; a missing package is one clear line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from host.cli import COMMANDS, chosen_command, main
from host.exit_codes import ExitCode


def _dflare_without(module: str, *argv: str) -> subprocess.CompletedProcess:
    """Run ``dflare ARGV`` in a fresh interpreter where ``module`` cannot be imported."""
    code = (f"import sys; sys.modules[{module!r}] = None\n"
            f"from host.cli import main\nsys.exit(main({list(argv)!r}))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_help_lists_every_command_without_importing_any():
    proc = subprocess.run([sys.executable, "-c", "import sys\nfrom host.cli import main\ntry:\n    main(['--help'])\n"
                           "except SystemExit:\n    pass\nprint(sorted(m for m in sys.modules if m.startswith("
                           "'host.commands.')))"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for name in COMMANDS:
        assert name in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_help_works_without_adb_shell_and_deploy_says_what_to_install():
    assert _dflare_without("adb_shell", "--help").returncode == 0
    assert _dflare_without("adb_shell", "run", "--help").returncode == 0
    proc = _dflare_without("adb_shell", "deploy", "adb")
    assert proc.returncode == ExitCode.usage
    assert proc.stderr.strip() == ("dflare: error: dflare deploy needs the Python package 'adb_shell', which is not "
                                   "installed: pip install adb-shell")


def test_the_command_is_the_first_word_that_is_not_an_option():
    assert chosen_command(["-v", "run", "--seeds", "x"]) == "run"
    assert chosen_command(["--version"]) is None and chosen_command(["nope"]) is None


def test_no_command_prints_help_and_exits_with_the_usage_code(capsys):
    assert main([]) == ExitCode.usage
    assert "COMMAND" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        main(["bogus"])
    assert stop.value.code == 2
