"""scripts/bench_lab.py: the same lab on one host and on Dask workers, both timed, both complete."""

from __future__ import annotations

import json

import pytest

from tests.script_support import load_script

pytestmark = pytest.mark.slow


@pytest.mark.timeout(300)
def test_one_host_and_two_workers_run_the_same_combinations(capsys):
    pytest.importorskip("distributed", reason="the lab extra (Dask distributed) is not installed")
    bench = load_script("bench_lab")
    assert bench.main(["--devices", "2", "--workers", "2", "--repeats", "1", "--seeds", "2", "--max-queries", "0",
                       "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for side in ("one_host", "dask"):
        assert result[side]["counts"] == {"passed": 4}
        assert len(result[side]["wall_s"]) == 1 and result[side]["median_s"] > 0
    assert "| 2 Dask workers | 4 |" in bench._table(result)
