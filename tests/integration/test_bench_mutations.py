"""scripts/bench_mutations.py: every image size, one thread vs split, the same bytes."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.script_support import load_script


def test_every_size_is_measured_on_one_thread_and_split(capsys):
    bench = load_script("bench_mutations")
    assert bench.main(["--rows", "4", "--rounds", "1", "--threads", "2", "3", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [tuple(r["shape"]) for r in rows] == list(bench.SHAPES)
    for row in rows:
        assert row["rows"] == 4 and row["values"] == 4 * row["shape"][0] * row["shape"][1] * row["shape"][2]
        assert row["serial_ms"] > 0 and set(row["threads"]) == {"2", "3"}  # (it raises if the bytes differ)
    assert bench.main(["--rows", "2", "--rounds", "1"]) == 0
    assert "| 224x224x3 | 301,056 |" in capsys.readouterr().out


def test_bad_arguments_are_named():
    bench = load_script("bench_mutations")
    with pytest.raises(SystemExit):
        bench.main(["--threads", "1"])


@pytest.mark.repair
@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None,
                    reason="TensorFlow is not installed: pip install dflare-edge[repair] (or '.[dev,repair]')")
@pytest.mark.timeout(300)
def test_search_on_large_images_finds_the_same_inputs_with_one_mutation_thread_or_several(capsys):
    bench = load_script("bench_mutations")
    assert bench.main(["--search", "--search-size", "96", "--search-seeds", "6", "--search-budget", "60",
                       "--json"]) == 0
    one, default = json.loads(capsys.readouterr().out)
    assert (one["mode"], one["mutation_threads"]) == ("1 thread", 1)
    assert default["mode"] == "default" and default["mutation_threads"] >= 1
    assert (one["queries"], one["triggered"]) == (default["queries"], default["triggered"])
    assert 0 < one["queries"] <= 6 * 60 and one["mutate_s"] > 0 and one["infer_s"] > 0
