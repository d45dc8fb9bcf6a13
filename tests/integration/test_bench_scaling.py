"""scripts/bench_scaling.py: each point in its own child process, with its own memory figures."""

from __future__ import annotations

import json

import pytest

from tests.script_support import load_script


@pytest.mark.timeout(180)
def test_seed_and_batch_axes_measure_each_point_in_a_child(capsys, monkeypatch):
    bench = load_script("bench_scaling")
    monkeypatch.setattr(bench, "SEED_COUNTS", (5, 40))
    monkeypatch.setattr(bench, "LIVE_SEEDS", (1, 8))
    assert bench.main(["--axis", "seeds", "--budget", "40", "--json"]) == 0
    seeds_rows = json.loads(capsys.readouterr().out)
    assert bench.main(["--axis", "live", "--budget", "40", "--json"]) == 0
    live_rows = json.loads(capsys.readouterr().out)

    assert [r["seeds"] for r in seeds_rows] == [5, 40]
    for row in seeds_rows + live_rows:
        assert 0 < row["queries"] <= row["seeds"] * 40
        assert row["queries_per_s"] > 0 and row["mean_batch"] >= 1
        assert 0 < row["rss_start_mib"] <= row["rss_peak_mib"]
        assert row["rss_growth_mib"] == pytest.approx(row["rss_peak_mib"] - row["rss_start_mib"])
    # the engine's batch does not change what the search finds, only how it is sent
    assert [r["max_live_seeds"] for r in live_rows] == [1, 8]
    assert live_rows[0]["queries"] == live_rows[1]["queries"]
    assert live_rows[0]["triggered"] == live_rows[1]["triggered"]
    assert live_rows[0]["mean_batch"] < live_rows[1]["mean_batch"]


@pytest.mark.timeout(120)
def test_model_axis_with_fixtures_only_prints_a_table(capsys):
    bench = load_script("bench_scaling")
    assert bench.main(["--axis", "model", "--fixtures-only", "--budget", "20"]) == 0
    out = capsys.readouterr().out
    assert "**model**" in out
    for name in ("digits28", "digits28wide", "digits32rgb"):
        assert f"| {name} (fixture) |" in out
