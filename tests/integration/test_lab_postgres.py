"""The lab history on a real PostgreSQL server (a throwaway cluster made by initdb, tests/lab_support.py).

Schema creation and migration, one transaction per combination, and several writer processes at
once (as several lab hosts would be): no duplicate, no half-written combination, a passed row final.
"""

from __future__ import annotations

import multiprocessing
import random

import pytest

from host.errors import ConfigError
from host.lab.history import COMBO_FIELDS, SCHEMA_VERSION, History
from tests.lab_support import postgres_cluster

#: Writer processes and combinations in the concurrency test: each process writes every combination
#: (in its own order), so every key is contended; small enough to take about 3 s.
WRITERS = 4
COMBOS = 24
SEEDS_PER_COMBO = 6


@pytest.fixture
def pg_url() -> str:
    return postgres_cluster().database()


def _combo(device: str, delegate: str, status: str, writer: int) -> dict:
    row = {k: None for k in COMBO_FIELDS}
    row.update(run_id="r1", device=device, model="m", delegate=delegate, status=status, error=f"writer {writer}",
               attempts=1, seconds=0.1, seeds=SEEDS_PER_COMBO, worker=f"w{writer}")
    return row


def _seeds(writer: int) -> list[dict]:
    return [{"seed_index": i, "deviates": i % 2, "status": "triggered", "queries": 10 * writer + i}
            for i in range(SEEDS_PER_COMBO)]


def _writer(url: str, writer: int, barrier) -> None:
    barrier.wait()  # all open the (new) database at once: schema creation races without the advisory lock
    history = History(url)
    keys = [(f"d{i % 6}", f"del{i // 6}") for i in range(COMBOS)]
    random.Random(writer).shuffle(keys)
    for device, delegate in keys:
        # a failed attempt first, then a passed one (another host retrying the combination)
        history.record_combo(_combo(device, delegate, "failed", writer), [])
        history.record_combo(_combo(device, delegate, "passed", writer), _seeds(writer))
    history.close()


def test_concurrent_writer_processes_leave_one_complete_row_per_combination(pg_url):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WRITERS)
    procs = [ctx.Process(target=_writer, args=(pg_url, w, barrier)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * WRITERS
    history = History(pg_url)
    combos = history.combos("r1")
    assert len(combos) == COMBOS == len({(c["device"], c["delegate"]) for c in combos})
    assert {c["status"] for c in combos} == {"passed"}
    seeds = history.seeds("r1")
    assert len(seeds) == COMBOS * SEEDS_PER_COMBO
    for c in combos:
        # the seeds are those of the writer whose passed row won, never a mix of two writers
        writer = int(c["worker"][1:])
        mine = [s for s in seeds if (s["device"], s["delegate"]) == (c["device"], c["delegate"])]
        assert [s["queries"] for s in mine] == [10 * writer + i for i in range(SEEDS_PER_COMBO)]
        assert c["error"] == f"writer {writer}"
    history.close()


def test_a_failing_write_leaves_no_half_written_combination(pg_url):
    history = History(pg_url)
    bad = _seeds(1)
    bad[3]["seed_index"] = None  # NOT NULL: the seeds insert fails after the combination row went in
    with pytest.raises(Exception):  # noqa: B017 - the driver's IntegrityError, through SQLAlchemy
        history.record_combo(_combo("d", "cpu", "passed", 1), bad)
    assert history.combos("r1") == [] and history.seeds("r1") == []
    assert history.record_combo(_combo("d", "cpu", "passed", 1), _seeds(1))
    assert not history.record_combo(_combo("d", "cpu", "passed", 2), _seeds(2))  # passed is final
    assert history.passed_combos("r1") == {("d", "m", "cpu")}
    assert [s["queries"] for s in history.seeds("r1")] == [10 + i for i in range(SEEDS_PER_COMBO)]
    history.close()


def test_schema_is_created_then_migrated_from_version_2(pg_url):
    history = History(pg_url)
    history.start_run("r0", "lab", "2024-01-01T00:00:00", "0.1.0", {"k": 1})
    history.record_device({"run_id": "r0", "device": "d", "status": "ok", "worker": "w"})
    history.record_device({"run_id": "r0", "device": "d", "status": "failed", "error": "gone", "worker": "w"})
    assert [(d["status"], d["error"]) for d in history.devices("r0")] == [("failed", "gone")]
    history.close()
    import sqlalchemy

    engine = sqlalchemy.create_engine(pg_url)
    with engine.begin() as conn:  # what a schema-2 history looked like
        conn.execute(sqlalchemy.text("ALTER TABLE lab_combos DROP COLUMN worker"))
        conn.execute(sqlalchemy.text("ALTER TABLE lab_devices DROP COLUMN worker"))
        conn.execute(sqlalchemy.text("UPDATE lab_meta SET value = '2' WHERE key = 'schema_version'"))
    history = History(pg_url)
    assert history.record_combo(_combo("d", "cpu", "passed", 3), _seeds(3))
    assert history.combos("r1")[0]["worker"] == "w3"
    assert history.devices("r0")[0]["worker"] is None  # the migrated column, empty for old rows
    history.close()
    with engine.begin() as conn:
        assert conn.execute(sqlalchemy.text("SELECT value FROM lab_meta")).scalar() == str(SCHEMA_VERSION)
        conn.execute(sqlalchemy.text("UPDATE lab_meta SET value = '99' WHERE key = 'schema_version'"))
    engine.dispose()
    with pytest.raises(ConfigError, match="schema version 99"):
        History(pg_url)


def test_an_unreachable_database_is_a_config_error_without_the_password():
    pytest.importorskip("psycopg")
    with pytest.raises(ConfigError, match=r"cannot open lab history postgresql\+psycopg://lab:\*\*\*@127\.0\.0\.1:1/x"):
        History("postgresql+psycopg://lab:secret@127.0.0.1:1/x")
