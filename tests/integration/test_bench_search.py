"""scripts/bench_search.py: one run, every algorithm, --json rows with the documented keys."""

from __future__ import annotations

import json

import pytest

from tests.script_support import load_script


@pytest.mark.timeout(120)
def test_bench_prints_one_json_list_of_rows(capsys):
    bench = load_script("bench_search")
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
    # inference is part of each run's wall time, so the ceiling it sets bounds the measured speed-up
    assert 0 < batched["infer_s"] < batched["wall_s"] and 0 < sequential["infer_s"] < sequential["wall_s"]
    assert batched["inference_s"] == batched["infer_s"]  # one round: its run is the median
    assert batched["speedup_ceiling"] == pytest.approx(sequential["wall_s"] / batched["infer_s"])
    assert batched["speedup_ceiling"] > batched["speedup_vs_one_seed_at_a_time"]


@pytest.mark.timeout(120)
def test_several_rng_seeds_pool_into_one_row_per_algorithm(capsys):
    bench = load_script("bench_search")
    common = ["--seeds", "3", "--max-queries", "200", "--repeat", "1", "--json", "--algos", "dflare", "random"]
    single = []
    for rng_seed in ("0", "1"):
        assert bench.main([*common, "--seed", rng_seed]) == 0
        single.append({r["algo"]: r for r in json.loads(capsys.readouterr().out)})
    assert bench.main([*common, "--seed", "0", "1"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["algo"] for r in rows] == ["dflare", "random", "dflare (one seed at a time)"]
    for row in rows[:2]:
        runs = [s[row["algo"]] for s in single]
        assert row["seeds"] == 6
        assert row["triggered"] == sum(r["triggered"] for r in runs)
        assert row["total_queries"] == sum(r["total_queries"] for r in runs)
        queries = runs[0]["trigger_queries"] + runs[1]["trigger_queries"]
        assert row["trigger_queries"] == queries
        if queries:
            assert row["queries_per_trigger"] == pytest.approx(sum(queries) / len(queries))
        assert [p["queries_per_trigger"] for p in row["per_rng_seed"]] == [r["queries_per_trigger"] for r in runs]
    # the one-at-a-time row runs the first rng seed only, and finds what the batched run of that seed found
    assert rows[-1]["seeds"] == 3
    assert rows[-1]["total_queries"] == single[0]["dflare"]["total_queries"]


def test_ratio_interval_brackets_the_ratio_of_means_and_widens_with_a_heavy_tail():
    bench = load_script("bench_search")
    assert bench.ratio_interval([], [1.0]) is None
    assert bench.ratio_interval([2.0] * 10, [100.0] * 10) == pytest.approx((0.02, 0.02))
    light = [100.0] * 49 + [200.0]
    heavy = [100.0] * 49 + [10_000.0]
    chaser = [10_000.0] * 50
    low, high = bench.ratio_interval(light, chaser)
    assert low <= (sum(light) / 50) / 10_000 <= high
    heavy_low, heavy_high = bench.ratio_interval(heavy, chaser)
    assert heavy_high - heavy_low > 10 * (high - low)
    assert bench.ratio_interval(heavy, chaser) == (heavy_low, heavy_high)  # seeded: reproducible


def test_paired_ratio_compares_only_the_runs_both_algorithms_triggered():
    bench = load_script("bench_search")
    dflare = {"trigger_keys": [[0, 1], [0, 2], [1, 1], [1, 5]], "trigger_queries": [10, 20, 30, 9000]}
    chaser = {"trigger_keys": [[0, 2], [1, 1], [0, 1]], "trigger_queries": [2000, 1000, 1000]}
    ratio, common = bench.paired_ratio(dflare, chaser)
    assert common == 3  # (1, 5) was triggered by DFlare alone: its 9,000 queries stay out
    assert ratio == pytest.approx((10 + 20 + 30) / (1000 + 2000 + 1000))
    assert bench.paired_ratio(dflare, {"trigger_keys": [[2, 1]], "trigger_queries": [5]}) is None


@pytest.mark.timeout(120)
def test_json_out_writes_the_rows_with_each_triggered_seed(tmp_path, capsys):
    bench = load_script("bench_search")
    out = tmp_path / "rows.json"
    assert bench.main(["--seeds", "3", "--max-queries", "200", "--repeat", "1", "--algos", "dflare",
                       "--seed", "4", "--json-out", str(out)]) == 0
    assert "| dflare |" in capsys.readouterr().out  # the Markdown table still goes to stdout
    rows = json.loads(out.read_text())
    dflare = rows[0]
    assert len(dflare["trigger_keys"]) == dflare["triggered"] == len(dflare["trigger_queries"])
    assert all(rng_seed == 4 for rng_seed, _ in dflare["trigger_keys"])


@pytest.mark.timeout(180)
def test_via_agent_runs_the_same_search_through_a_real_agent_batched_and_one_at_a_time(capsys):
    bench = load_script("bench_search")
    assert bench.main(["--seeds", "3", "--max-queries", "200", "--repeat", "1", "--algos", "dflare",
                       "--via-agent", "--json"]) == 0
    rows = {r["algo"]: r for r in json.loads(capsys.readouterr().out)}
    in_process = rows["dflare"]
    batched = rows["dflare (compressed model through the agent)"]
    sequential = rows["dflare (compressed model through the agent), one seed at a time"]
    # the agent's outputs are the interpreter's, bit for bit: the same inputs with the same queries
    for row in (batched, sequential):
        assert (row["triggered"], row["total_queries"]) == (in_process["triggered"], in_process["total_queries"])
    assert sequential["batch_calls"] > batched["batch_calls"]
    assert batched["triggered"]  # seeds 0-2 of digits28/int8 trigger within 200 queries, so the speed-up exists
    assert batched["speedup_vs_one_seed_at_a_time"] == pytest.approx(
        sequential["seconds_per_trigger"] / batched["seconds_per_trigger"])


@pytest.mark.timeout(180)
def test_pooling_json_out_files_gives_the_rows_of_one_run_with_all_their_rng_seeds(tmp_path, capsys):
    bench = load_script("bench_search")
    common = ["--seeds", "3", "--max-queries", "600", "--repeat", "1", "--algos", "dflare", "diffchaser"]
    files = []
    for rng_seed in ("0", "1"):
        files.append(tmp_path / f"rng{rng_seed}.json")
        assert bench.main([*common, "--seed", rng_seed, "--json-out", str(files[-1])]) == 0
    capsys.readouterr()  # their Markdown tables
    assert bench.main([*common, "--seed", "0", "1", "--json"]) == 0
    together = {r["algo"]: r for r in json.loads(capsys.readouterr().out)}
    assert bench.main(["--pool", *map(str, files), "--json"]) == 0
    pooled = {r["algo"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(pooled) == {"dflare", "diffchaser"}  # the one-at-a-time rows measure speed: left out
    for algo, row in pooled.items():
        for key in ("seeds", "triggered", "total_queries", "trigger_queries", "trigger_keys", "queries_per_trigger",
                    "median_queries", "per_rng_seed"):
            assert row[key] == together[algo][key], (algo, key)
    assert "queries_vs_diffchaser" in together["dflare"]  # the comparison is really checked below
    for key in ("queries_vs_diffchaser", "queries_vs_diffchaser_ci95", "queries_vs_diffchaser_paired",
                "queries_vs_diffchaser_per_rng_seed"):
        assert pooled["dflare"][key] == pytest.approx(together["dflare"][key]), key
    assert "speedup_vs_one_seed_at_a_time" not in pooled["dflare"]


def test_pool_names_a_file_that_is_not_a_json_out_file(tmp_path):
    bench = load_script("bench_search")
    bad = tmp_path / "summary.json"
    bad.write_text(json.dumps({"seeds": 3}))
    with pytest.raises(SystemExit, match="summary.json is not a bench_search --json-out file"):
        bench.main(["--pool", str(bad)])
    with pytest.raises(SystemExit, match="cannot read .*missing.json"):
        bench.main(["--pool", str(tmp_path / "missing.json")])
