"""CPU affinity for the agent's processes: give the interpreter cores of its own.

``dflare-agent serve --worker-cpus 4-7`` runs every model worker on CPUs 4-7 and the agent's own
threads (gRPC, request checks, input preparation) on the others, so serving a request never
preempts a running interpreter. On a big.LITTLE phone that also puts the model on the big cores,
which makes latencies comparable between runs. Linux and Android only (``sched_setaffinity``).
"""

from __future__ import annotations

import os


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """Parse a Linux CPU list (``1``, ``0,2``, ``4-7``, ``0-1,6``) into sorted CPU numbers.

    Raises:
        ValueError: malformed text, with an example of the accepted form.
    """
    cpus: set[int] = set()
    for part in text.replace(" ", "").split(","):
        first, dash, last = part.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError(f"not a CPU list: {text!r} (examples: 1, 0,2, 4-7, 0-1,6)")
        low, high = int(first), int(last) if dash else int(first)
        if high < low:
            raise ValueError(f"CPU range {part!r} runs backwards in {text!r}")
        cpus.update(range(low, high + 1))
    return tuple(sorted(cpus))


def available_cpus() -> frozenset[int]:
    """The CPUs this process may run on.

    Raises:
        ValueError: the platform cannot pin processes (no ``sched_getaffinity``).
    """
    if not hasattr(os, "sched_getaffinity"):
        raise ValueError("CPU pinning (--worker-cpus) needs Linux or Android: this platform cannot set affinity")
    return frozenset(os.sched_getaffinity(0))


def check_worker_cpus(cpus: tuple[int, ...]) -> None:
    """Check that every CPU in ``cpus`` is one this process may use.

    Raises:
        ValueError: a CPU is missing or the platform cannot pin, naming the CPUs available.
    """
    available = available_cpus()
    missing = sorted(set(cpus) - available)
    if missing:
        raise ValueError(f"--worker-cpus names CPU {', '.join(map(str, missing))}, but this agent may use CPUs "
                         f"{format_cpu_list(available)} only")


def pin(cpus: tuple[int, ...] | frozenset[int]) -> None:
    """Restrict the calling process (threads started later inherit it) to ``cpus``."""
    os.sched_setaffinity(0, set(cpus))


def pin_agent_beside_workers(worker_cpus: tuple[int, ...]) -> frozenset[int]:
    """Move the agent's own threads off the workers' CPUs, when any other CPU is left; return its CPUs."""
    rest = available_cpus() - set(worker_cpus)
    if rest:
        pin(rest)
        return rest
    return available_cpus()


def format_cpu_list(cpus: tuple[int, ...] | frozenset[int]) -> str:
    """Format CPU numbers as a Linux CPU list: ``{0, 1, 2, 5}`` -> ``0-2,5``."""
    runs: list[list[int]] = []  # [first, last] of each run of consecutive CPUs
    for cpu in sorted(cpus):
        if runs and cpu == runs[-1][1] + 1:
            runs[-1][1] = cpu
        else:
            runs.append([cpu, cpu])
    return ",".join(str(first) if first == last else f"{first}-{last}" for first, last in runs)
