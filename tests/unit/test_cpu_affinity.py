"""device_agent.cpu_affinity: CPU lists and the --worker-cpus checks."""

from __future__ import annotations

import os

import pytest

from device_agent import cpu_affinity


@pytest.mark.parametrize("text,cpus", [
    ("1", (1,)),
    ("0,2", (0, 2)),
    ("4-7", (4, 5, 6, 7)),
    ("0-1, 6", (0, 1, 6)),
    ("3,1-2", (1, 2, 3)),
])
def test_parse_cpu_list(text: str, cpus: tuple[int, ...]) -> None:
    assert cpu_affinity.parse_cpu_list(text) == cpus
    assert cpu_affinity.parse_cpu_list(cpu_affinity.format_cpu_list(cpus)) == cpus


@pytest.mark.parametrize("text,fragment", [("a", "not a CPU list"), ("1-", "not a CPU list"), ("", "not a CPU list"),
                                           ("5-2", "runs backwards"), ("-1", "not a CPU list")])
def test_parse_cpu_list_rejects_malformed_text(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        cpu_affinity.parse_cpu_list(text)


def test_format_cpu_list_merges_runs() -> None:
    assert cpu_affinity.format_cpu_list(frozenset({0, 1, 2, 5, 7, 8})) == "0-2,5,7-8"


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity on this platform")
def test_a_cpu_this_process_cannot_use_is_refused_naming_the_available_ones() -> None:
    missing = max(os.sched_getaffinity(0)) + 1
    with pytest.raises(ValueError, match=rf"names CPU {missing}, but this agent may use CPUs .* only"):
        cpu_affinity.check_worker_cpus((missing,))
    cpu_affinity.check_worker_cpus(tuple(os.sched_getaffinity(0)))
