"""One definition of the campaign figures (host.figures), used by every path that prints them."""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from host.campaign.progress import LogProgress
from host.campaign.runner import CampaignRunner
from host.compare.search import summarize_search
from host.figures import QUERIES_PER_CANDIDATE, figures
from host.lab.history import SCHEMA_VERSION, History
from host.search.results import SeedResult, SeedStatus
from host.store import CampaignStore
from tests.campaign_support import model, noise_search, seeds
from tests.unit.test_campaign_runner import make_config


def _result(index: int, status: SeedStatus, queries: int, seconds: float = 0.5) -> SeedResult:
    return SeedResult(seed_index=index, status=status, seed_label=1, queries=queries, seconds=seconds, algo="dflare",
                      exit_reason="x")


RESULTS = [_result(0, SeedStatus.triggered, 10, 1.0), _result(1, SeedStatus.triggered, 30, 3.0),
           _result(2, SeedStatus.exhausted, 100), _result(3, SeedStatus.skipped, 2), _result(4, SeedStatus.flaky, 50),
           _result(5, SeedStatus.triggered, 200, 2.0)]


def test_the_definitions():
    f = figures(RESULTS)
    assert (f.seeds, f.triggered, f.flaky, f.exhausted, f.skipped) == (5, 3, 1, 1, 1)  # skipped is not searched
    assert f.success_rate == pytest.approx(3 / 5)
    assert f.queries_per_trigger == pytest.approx(80.0)  # the mean over triggered seeds
    assert f.candidates_per_trigger == pytest.approx(40.0) and QUERIES_PER_CANDIDATE == 2
    assert f.median_candidates_per_trigger == 15.0 and f.max_candidates_per_trigger == 100.0
    assert f.p90_candidates_per_trigger == pytest.approx(np.percentile([5, 15, 100], 90))
    assert f.seconds_per_trigger == pytest.approx(2.0)
    assert f.total_queries == 392 and f.total_candidates == 196.0  # skipped seeds' checks included
    assert f.total_queries_per_trigger == pytest.approx(392 / 3)
    empty = figures([_result(0, SeedStatus.exhausted, 100)])
    assert empty.success_rate == 0.0 and empty.queries_per_trigger is None and empty.candidates_per_trigger is None


def test_compare_search_prints_the_same_figures():
    summary = summarize_search(RESULTS, 9.0)
    assert {k: summary[k] for k in figures(RESULTS).to_dict()} == figures(RESULTS).to_dict()
    assert summary["triggering_seeds"] == [0, 1, 5] and summary["seconds"] == 9.0


def test_summary_json_and_the_cli_use_the_same_figures(tmp_path: Path, capsys) -> None:
    cfg = make_config(tmp_path, compressed=model("digits28", "int8"), seeds=seeds("digits28"))
    outcome = CampaignRunner(cfg, search=noise_search, progress=LogProgress(io.StringIO())).run()
    with CampaignStore.open_existing(tmp_path) as store:
        expected = figures(store.outcomes()).to_dict()
    summary = json.loads((tmp_path / "summary.json").read_text())
    for key in ("seeds", "triggered", "success_rate", "queries_per_trigger", "candidates_per_trigger",
                "median_candidates_per_trigger", "p90_candidates_per_trigger", "total_queries", "total_candidates"):
        assert summary[key] == expected[key], key
    assert expected["triggered"] > 0
    assert summary["per_algorithm"][cfg.algo]["candidates_per_trigger"] == expected["candidates_per_trigger"]
    from host.campaign.command import print_outcome

    print_outcome(outcome, as_json=False)
    assert f"candidates per trigger: {expected['candidates_per_trigger']:.0f} " in capsys.readouterr().out
    html = (tmp_path / "report.html").read_text()
    assert f'id="candidates-per-trigger">{expected["candidates_per_trigger"]:.0f}<' in html
    assert "candidates (" in (tmp_path / "junit.xml").read_text()


def _v1_history(path: Path) -> None:
    """A schema-1 history as dflare-edge wrote it before candidates: figures under the old definitions."""
    history = History(str(path))
    history.close()
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE lab_combos")
    conn.execute("""CREATE TABLE lab_combos (run_id VARCHAR(64) NOT NULL, device VARCHAR(200) NOT NULL,
        model VARCHAR(200) NOT NULL, delegate VARCHAR(300) NOT NULL, status VARCHAR(20) NOT NULL, error TEXT,
        attempts INTEGER, seconds DOUBLE PRECISION, model_sha256 VARCHAR(64), original_sha256 VARCHAR(64),
        runtime VARCHAR(100), runtime_version VARCHAR(100), agent_version VARCHAR(100), seeds INTEGER,
        seed_deviations INTEGER, triggered INTEGER, flaky INTEGER, success_rate DOUBLE PRECISION,
        queries_per_trigger DOUBLE PRECISION, total_queries INTEGER, latency_source VARCHAR(20),
        latency_mean_ms DOUBLE PRECISION, latency_p50_ms DOUBLE PRECISION, latency_p90_ms DOUBLE PRECISION,
        latency_p99_ms DOUBLE PRECISION, PRIMARY KEY (run_id, device, model, delegate))""")
    # 4 seeds: two triggered (10 and 30 queries), one exhausted (100), one skipped (2)
    conn.execute("INSERT INTO lab_combos (run_id, device, model, delegate, status, seeds, triggered, success_rate, "
                 "queries_per_trigger, total_queries) VALUES ('r1', 'd', 'm', 'cpu', 'passed', 4, 2, 0.5, 71.0, 142)")
    conn.execute("INSERT INTO lab_combos (run_id, device, model, delegate, status) "
                 "VALUES ('r1', 'd', 'm', 'gpu', 'failed')")
    conn.executemany("INSERT INTO lab_seeds VALUES ('r1', 'd', 'm', 'cpu', ?, 0, ?, ?)",
                     [(0, "triggered", 10), (1, "triggered", 30), (2, "exhausted", 100), (3, "skipped", 2)])
    conn.execute("UPDATE lab_meta SET value = '1' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("kind", ["sqlite-path", "sqlalchemy-url"])
def test_the_lab_history_migrates_to_the_shared_definitions(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "h.sqlite"
    _v1_history(path)
    if kind == "sqlalchemy-url":
        pytest.importorskip("sqlalchemy")
    history = History(f"sqlite:///{path}" if kind == "sqlalchemy-url" else str(path))
    passed, failed = sorted(history.combos("r1"), key=lambda c: c["delegate"])
    outcomes = [_result(0, SeedStatus.triggered, 10), _result(1, SeedStatus.triggered, 30),
                _result(2, SeedStatus.exhausted, 100), _result(3, SeedStatus.skipped, 2)]
    expected = figures(outcomes)
    assert passed["queries_per_trigger"] == expected.queries_per_trigger == 20.0  # was 71 (total / triggered)
    assert passed["candidates_per_trigger"] == expected.candidates_per_trigger
    assert passed["success_rate"] == pytest.approx(expected.success_rate)  # 2 of 3 searched; was 0.5
    assert failed["queries_per_trigger"] is None and failed["success_rate"] is None
    history.close()
    assert sqlite3.connect(path).execute("SELECT value FROM lab_meta").fetchone() == (str(SCHEMA_VERSION),)
    History(str(path)).close()  # a migrated history opens again as it is
