"""scripts/bench_search.py: one run, every algorithm, --json rows with the documented keys."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_search", ROOT / "scripts" / "bench_search.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.mark.timeout(120)
def test_bench_prints_one_json_list_of_rows(capsys):
    bench = _bench()
    code = bench.main(["--seeds", "4", "--max-queries", "300", "--repeat", "1", "--json",
                       "--algos", "dflare", "diffchaser", "diffchaser-pixel", "random"])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["algo"] for r in rows] == ["dflare", "diffchaser", "diffchaser-pixel", "random",
                                         "dflare (one seed at a time)"]
    for row in rows:
        for key in ("algo", "success_rate", "queries_per_trigger", "median_queries", "seconds_per_trigger",
                    "total_queries_per_trigger"):
            assert key in row
        assert 0.0 <= row["success_rate"] <= 1.0 and row["seeds"] == 4
    batched, sequential = rows[0], rows[-1]
    # the same inputs with the same queries, batched or not (XNNPACK is batch-invariant)
    assert (batched["triggered"], batched["total_queries"]) == (sequential["triggered"], sequential["total_queries"])
    assert batched["speedup_vs_one_seed_at_a_time"] > 0
