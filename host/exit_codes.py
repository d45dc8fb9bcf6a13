"""The ``dflare`` exit codes, the contract CI gates rely on (one definition for every subcommand)."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """What a ``dflare`` run ended with."""

    ok = 0  # completed
    deviation = 1  # deviations found with --fail-on-deviation, a compare disagreement, or a lab regression
    usage = 2  # usage or input error (a missing extra included)
    unreachable = 3  # target unreachable (an agent, or an adb device not connected or not authorized)
    interrupted = 130  # Ctrl-C: finished seeds are saved
