"""scripts/bench_real.py: the default search vs the original code and each departure, per pair."""

from __future__ import annotations

import json

import pytest

from host.figures import figures
from host.search.dflare import DEPARTURES
from tests.script_support import load_script


@pytest.mark.timeout(300)
def test_bench_real_prints_every_variant_in_both_units_and_the_verdict(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DFLARE_REAL_MODELS", str(tmp_path / "absent"))
    bench = load_script("bench_real")
    out = tmp_path / "rows.json"
    assert bench.main(["--seeds", "4", "--seed", "0", "1", "--max-queries", "400", "--pairs", "digits28/int8",
                       "--json-out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "is missing; skipping the real pairs" in text
    rows = json.loads(out.read_text())
    variants = [r["variant"] for r in rows]
    assert variants[:2] == ["dflare", "dflare-faithful"]
    assert {f"faithful +{d}" for d in DEPARTURES} <= set(variants)
    assert len(variants) == 2 + 2 * len(DEPARTURES) + 1  # and dflare-no-mh
    for row in rows:
        assert row["seeds"] == 8  # 4 seeds x 2 rng seeds, pooled
        if row["triggered"]:
            assert row["candidates_per_trigger"] * 2 == pytest.approx(row["queries_per_trigger"])
            assert row["median_candidates_per_trigger"] <= row["max_candidates_per_trigger"]
    assert rows[1]["departures"] == [] and rows[0]["departures"]
    assert "candidates / trigger: mean | median | p90 | max | queries" in text
    assert "Default vs faithful on digits28/int8: " in text


def test_verdict_needs_success_mean_and_p90():
    bench = load_script("bench_real")
    good = {"triggered": 10, "success_rate": 1.0, "candidates_per_trigger": 40.0, "p90_candidates_per_trigger": 80.0}
    assert bench.verdict(good, dict(good))[0]
    assert bench.verdict(good, {**good, "p90_candidates_per_trigger": 79.0}) == (False, "NOT met (p90)")
    assert bench.verdict({**good, "triggered": 9, "success_rate": 0.9}, good)[1] == "NOT met (success)"


def test_measured_rows_are_the_shared_figures():
    bench = load_script("bench_real")
    pairs = load_script("bench_pairs")
    pair = pairs.load_pair("digits28/int8", 3)
    row = bench.measure(pair, "dflare", bench.DEFAULT, [0], 300)
    from host.search import run

    results = list(run(pair.original, pair.compressed, pair.seeds, budget=300, rng_seed=0, indices=pair.indices))
    assert {k: row[k] for k in figures(results).to_dict() if "seconds" not in k} == \
        {k: v for k, v in figures(results).to_dict().items() if "seconds" not in k}
