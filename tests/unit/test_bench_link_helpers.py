"""scripts/bench_link.py: the pure helpers (no root, no network namespace needed)."""

from __future__ import annotations

import ipaddress

import numpy as np
import pytest

from tests.script_support import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_link")


def test_transfer_share_is_the_link_runs_extra_time_over_its_wall(bench):
    assert bench.transfer_share(4.0, 1.0) == pytest.approx(0.75)
    assert bench.transfer_share(1.0, 1.0) == 0.0
    assert bench.transfer_share(0.9, 1.0) < 0  # noise: the link run was faster; reported, not hidden
    assert bench.transfer_share(None, 1.0) is None and bench.transfer_share(1.0, None) is None
    assert bench.transfer_share(0.0, 1.0) is None


def test_wire_share_is_bytes_over_rate_over_wall(bench):
    # 1.25 MB at 10 Mbit/s takes 1 s of link time: half of a 2 s run
    assert bench.wire_share(1_250_000, 10.0, 2.0) == pytest.approx(0.5)
    assert bench.wire_share(None, 10.0, 2.0) is None and bench.wire_share(10, None, 2.0) is None
    assert bench.wire_share(10, 10.0, 0.0) is None


def test_per_divides_or_gives_none(bench):
    assert bench.per(10.0, 4) == 2.5
    assert bench.per(10.0, 0) is None and bench.per(None, 3) is None


def test_tbf_args_give_rate_a_burst_of_at_least_the_minimum_and_a_latency(bench):
    args = bench.tbf_args(40.0)
    assert args[:3] == ["tbf", "rate", "40000000bit"]
    burst = int(args[args.index("burst") + 1].rstrip("b"))
    assert burst >= bench.MIN_BURST_BYTES and burst >= 40e6 / 8 * bench.BURST_MS / 1000
    assert args[args.index("latency") + 1] == f"{bench.TBF_LATENCY_MS}ms"
    fast = bench.tbf_args(1000.0)  # the bucket grows with the rate past the minimum
    assert int(fast[fast.index("burst") + 1].rstrip("b")) == int(1e9 / 8 * bench.BURST_MS / 1000)
    with pytest.raises(ValueError):
        bench.tbf_args(0.0)


def test_link_names_carry_the_pid_and_fit_interface_names(bench):
    netns, host_dev, ns_dev = bench.link_names(4_194_304)  # the largest pid Linux hands out
    assert len({netns, host_dev, ns_dev}) == 3
    assert all("4194304" in name for name in (netns, host_dev, ns_dev))
    assert len(host_dev) <= 15 and len(ns_dev) <= 15  # IFNAMSIZ - 1


def test_pick_subnet_is_a_private_30_that_avoids_taken_networks(bench):
    subnet = bench.pick_subnet(1234)
    assert subnet.prefixlen == 30 and subnet.subnet_of(bench.SUBNET_POOL) and subnet.is_private
    assert bench.pick_subnet(1234) == subnet  # derived from the pid
    moved = bench.pick_subnet(1234, [subnet])
    assert moved != subnet and not moved.overlaps(subnet)
    # a route covering the pid's slot and its neighbours pushes the choice past it
    wide = ipaddress.ip_network(f"{subnet.network_address}/28", strict=False)
    assert not bench.pick_subnet(1234, [wide]).overlaps(wide)
    with pytest.raises(bench.LinkError):
        bench.pick_subnet(1, [bench.SUBNET_POOL])


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "0"], "--seeds"),
    (["--max-queries", "1"], "--max-queries"),
    (["--repeat", "0"], "--repeat"),
    (["--rates", "0"], "--rates"),
    (["--rates", "10", "10"], "twice"),
    (["--sizes", "64"], "--sizes"),
])
def test_bad_arguments_are_usage_errors(bench, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_without_root_it_says_why_and_exits_2(bench, monkeypatch, capsys):
    monkeypatch.setattr(bench.os, "geteuid", lambda: 1000)
    assert "root" in bench.missing_prerequisites()
    assert bench.main(["--sizes", "32"]) == 2
    assert "needs root" in capsys.readouterr().err


def test_without_iproute2_it_names_the_missing_tools(bench, monkeypatch):
    monkeypatch.setattr(bench.os, "geteuid", lambda: 0)
    monkeypatch.setattr(bench.shutil, "which", lambda tool: None if tool == "tc" else f"/usr/sbin/{tool}")
    assert bench.missing_prerequisites() == "tc not found: install iproute2"


def test_counting_session_counts_payload_both_ways_and_passes_the_rest_through(bench):
    class Fake:
        input_spec = "spec"
        peak_memory_bytes = None

        def infer(self, images):
            return np.zeros((len(images), 10), np.float32)

    counting = bench.CountingSession(Fake())
    counting.infer(np.zeros((3, 32, 32, 3), np.uint8))
    counting.infer(np.zeros((1, 32, 32, 3), np.uint8))
    assert counting.sent_bytes == 4 * 32 * 32 * 3 and counting.received_bytes == 4 * 10 * 4
    assert counting.input_spec == "spec" and counting.peak_memory_bytes is None


def test_finish_row_takes_the_median_round_and_derives_per_candidate_figures(bench):
    def run(wall_s):
        return {"wall_s": wall_s, "seeds": 2, "skipped": 0, "triggered": 2, "candidates": 100.0, "steps": 10,
                "images_sent": 150, "payload_sent_bytes": 150 * 3072, "payload_received_bytes": 150 * 40,
                "wire_sent_bytes": 500_000, "wire_received_bytes": 20_000, "tbf_drops": 0, "infer_s": 0.1}

    row = bench.finish_row(32, "10 Mbit/s", 10.0, [run(3.0), run(1.0), run(2.0)])
    assert row["wall_s"] == 2.0 and row["rounds_wall_s"] == [3.0, 1.0, 2.0]
    assert row["candidates_per_trigger"] == 50 and row["wall_per_candidate_s"] == pytest.approx(0.02)
    assert row["wire_sent_per_candidate"] == 5000 and row["payload_sent_per_candidate"] == 150 * 3072 / 100
    assert row["wire_share"] == pytest.approx(520_000 * 8 / 10e6 / 2.0)
    none = bench.finish_row(32, "loopback", None, [{**run(1.0), "triggered": 0, "wire_sent_bytes": None,
                                                    "wire_received_bytes": None}])
    assert none["candidates_per_trigger"] is None and none["wire_share"] is None
