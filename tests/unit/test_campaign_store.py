"""CampaignStore: round trips, one transaction per seed, refusing another campaign, SIGKILL durability."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from host.campaign.config import CampaignConfig
from host.errors import CampaignError
from host.records import RequestedSeed
from host.search.results import MutationStep, SeedResult, SeedStatus
from host.store import STORE_NAME, CampaignStore

DIGESTS = {"original": "a" * 64, "compressed": "b" * 64}
SEEDS_DIGEST = "c" * 64


def config(**changes) -> CampaignConfig:
    return CampaignConfig(Path("o.tflite"), Path("c.tflite"), Path("s.npz"), max_queries=100).replace(**changes)


def triggered(index: int, rng: np.random.Generator) -> SeedResult:
    po = rng.random(10).astype(np.float32)
    pc = rng.random(10).astype(np.float32)
    return SeedResult(
        index, SeedStatus.triggered, seed_label=3, queries=40 + index, seconds=0.5, exit_reason="deviation",
        image=rng.integers(0, 256, (28, 28, 1), dtype=np.uint8),
        trace=[MutationStep("gaussian_noise", {"std": 0.1}), MutationStep("box_blur", {"kernel": 3})],
        probs_original=po, probs_compressed=pc, label_original=int(po.argmax()), label_compressed=int(pc.argmax()),
        reproduced=3, extra={"steps": np.int64(2)},
    )


def open_store(tmp_path: Path, **kwargs) -> CampaignStore:
    return CampaignStore.create_or_resume(tmp_path, kwargs.pop("cfg", config()), kwargs.pop("digests", DIGESTS),
                                          kwargs.pop("seeds_digest", SEEDS_DIGEST), **kwargs)


def test_round_trip_is_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    hit = triggered(0, rng)
    seed_image = rng.integers(0, 256, (28, 28, 1), dtype=np.uint8)
    with open_store(tmp_path) as store:
        store.begin_run(["dflare", "run"], {"compressed": {"uri": "local:"}})
        store.record_requested([RequestedSeed(i, i % 10, f"s[{i}]") for i in range(3)])
        store.record_result(hit, seed_image)
        store.record_result(SeedResult(1, SeedStatus.exhausted, 1, 100, 2.0, exit_reason="max_queries"))
        store.record_result(SeedResult(2, SeedStatus.skipped, 2, 2, 0.01, exit_reason="models disagree",
                                       label_original=2, label_compressed=5))
        store.end_run("completed")
    with CampaignStore.open_existing(tmp_path) as store:
        assert store.finished_indices() == {0, 1, 2}
        assert [s.to_dict() for s in store.requested()][1] == {"seed_index": 1, "label": 1, "name": "s[1]"}
        outcomes = {r.seed_index: r for r in store.outcomes()}
        assert outcomes[0].status is SeedStatus.triggered and outcomes[0].queries == 40
        assert outcomes[0].extra == {"steps": 2}
        assert (outcomes[2].label_original, outcomes[2].label_compressed) == (2, 5)
        (record,) = store.inputs()
        assert record.image.tobytes() == hit.image.tobytes() and record.image.shape == (28, 28, 1)
        assert record.seed_image.tobytes() == seed_image.tobytes()
        assert np.array_equal(record.probs_original, hit.probs_original)  # float32 bit-exact
        assert np.array_equal(record.probs_compressed, hit.probs_compressed)
        assert record.trace == hit.trace
        assert (record.label_original, record.label_compressed, record.reproduced) == (
            hit.label_original, hit.label_compressed, 3)
        assert json.loads(json.dumps(record.to_dict()))["png"] == "inputs/0_0.png"
        assert store.targets() == {"compressed": {"uri": "local:"}}
        assert store.runs()[0]["status"] == "completed"
        assert store.model_digests() == DIGESTS
        mode = store._conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_a_seed_is_never_recorded_twice_or_unrequested(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    with open_store(tmp_path) as store:
        store.record_requested([RequestedSeed(0, None, "a")])
        store.record_result(triggered(0, rng))
        with pytest.raises(CampaignError, match="seed 0 cannot be recorded"):
            store.record_result(triggered(0, rng))
        with pytest.raises(CampaignError, match="seed 7 cannot be recorded"):
            store.record_result(SeedResult(7, SeedStatus.exhausted, 1, 1, 0.1))
        assert len(store.inputs()) == 1 and len(store.outcomes()) == 1


def test_a_seed_is_written_whole_or_not_at_all(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    broken = triggered(0, rng)
    broken.probs_compressed = None  # the input row cannot be written: the outcome must roll back too
    with open_store(tmp_path) as store:
        store.record_requested([RequestedSeed(0, None, "a")])
        with pytest.raises(CampaignError, match="both probability vectors"):
            store.record_result(broken)
        assert store.finished_indices() == set() and store.inputs() == []
        store.record_result(triggered(0, rng))  # and the seed can still be recorded properly
        assert store.finished_indices() == {0}


def test_requested_list_is_recorded_once(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        store.record_requested([RequestedSeed(0, 1, "a"), RequestedSeed(1, 2, "b")])
        store.record_requested([RequestedSeed(0, 9, "changed")])
        assert [(s.label, s.name) for s in store.requested()] == [(1, "a"), (2, "b")]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"cfg": config(algo="random")}, "algo changed from 'dflare' to 'random'"),
    ({"cfg": config(max_queries=5)}, "max_queries changed from 100 to 5"),
    ({"digests": {**DIGESTS, "compressed": "d" * 64}}, r"the compressed model changed \(sha256 bbbbbbbbbbbb -> dddd"),
    ({"seeds_digest": "e" * 64}, "the seed set changed"),
])
def test_another_campaign_is_refused_with_what_changed(tmp_path: Path, kwargs: dict, message: str) -> None:
    open_store(tmp_path).close()
    with pytest.raises(CampaignError, match=message) as info:
        open_store(tmp_path, **kwargs)
    assert "--force-new" in str(info.value)


def test_a_campaign_of_an_earlier_search_revision_is_refused_not_mixed(tmp_path: Path) -> None:
    from host.search import SEARCH_REVISIONS

    assert config().identity()["search_revision"] == SEARCH_REVISIONS["dflare"] > 1
    assert "search_revision" not in config(algo="random").identity()  # revision 1: identities as before
    open_store(tmp_path).close()
    store_path = tmp_path / STORE_NAME
    conn = sqlite3.connect(store_path)  # as the version before the revision wrote it
    earlier = {k: v for k, v in config().identity().items() if k != "search_revision"}
    conn.execute("UPDATE meta SET value = ? WHERE key = 'config_identity'", (json.dumps(earlier),))
    conn.commit()
    conn.close()
    with pytest.raises(CampaignError, match="search_revision changed from None to 2"):
        open_store(tmp_path)


def test_same_campaign_resumes_even_with_other_output_settings(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        store.record_requested([RequestedSeed(0, None, "a")])
        store.record_result(SeedResult(0, SeedStatus.exhausted, 1, 100, 1.0))
    with open_store(tmp_path, cfg=config(out=Path("x"), fail_on_deviation=True)) as store:
        assert store.finished_indices() == {0}


def test_force_new_archives_the_old_campaign(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        store.record_requested([RequestedSeed(0, None, "a")])
        store.record_result(SeedResult(0, SeedStatus.exhausted, 1, 100, 1.0))
    (tmp_path / "inputs").mkdir()
    (tmp_path / "inputs" / "0_0.png").write_bytes(b"old")
    (tmp_path / "summary.json").write_text("{}")
    (tmp_path / "explain.json").write_text("{}")  # dflare explain's outputs belong to the old campaign too
    with open_store(tmp_path, cfg=config(algo="random"), force_new=True) as store:
        assert store.finished_indices() == set() and store.requested() == []
        assert json.loads(store.meta("config"))["algo"] == "random"
    (archive,) = (tmp_path / "archive").iterdir()
    assert (archive / "inputs" / "0_0.png").read_bytes() == b"old"
    assert (archive / "summary.json").exists() and not (tmp_path / "summary.json").exists()
    assert (archive / "explain.json").exists() and not (tmp_path / "explain.json").exists()
    old = sqlite3.connect(archive / STORE_NAME)
    assert old.execute("SELECT count(*) FROM outcomes").fetchone()[0] == 1


def test_not_a_store_and_missing_store(tmp_path: Path) -> None:
    (tmp_path / STORE_NAME).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(CampaignError, match="not a readable campaign store"):
        open_store(tmp_path)
    with pytest.raises(CampaignError, match="no campaign store at"):
        CampaignStore.open_existing(tmp_path / "empty")


_WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from tests.unit.test_campaign_store import config, open_store, triggered, RequestedSeed
    from pathlib import Path
    rng = np.random.default_rng(0)
    store = open_store(Path(sys.argv[1]))
    store.record_requested([RequestedSeed(i, None, str(i)) for i in range(1000)])
    for i in range(1000):
        store.record_result(triggered(i, rng))
        print(i, flush=True)
""")


def test_sigkill_loses_no_committed_seed_and_leaves_no_half_seed(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    committed = []
    for line in proc.stdout:
        committed.append(int(line))
        if len(committed) == 25:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    with CampaignStore.open_existing(tmp_path) as store:
        finished = store.finished_indices()
        inputs = {r.seed_index for r in store.inputs()}
    assert set(committed) <= finished  # everything acknowledged is there
    assert inputs == finished  # every stored triggered seed has its input: no half-written seed
    assert finished == set(range(len(finished)))  # and nothing but a prefix


def test_a_run_killed_while_running_is_marked_interrupted_by_the_next(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        killed = store.begin_run(["dflare", "run"], {})
        store.record_requested([RequestedSeed(i, i % 10, f"s[{i}]") for i in range(3)])
        store.record_result(SeedResult(1, SeedStatus.exhausted, 1, 100, 2.0, exit_reason="max_queries"))
    # SIGKILL here: end_run never ran
    with open_store(tmp_path) as store:
        assert store.runs()[0]["status"] == "running"
        store.begin_run(["dflare", "run"], {})
        first, second = store.runs()
        (finished_at,) = [r.finished_at for r in store.outcomes() if r.run_id == killed]
        assert (first["status"], first["ended_at"]) == ("interrupted", finished_at)
        assert second["status"] == "running"
