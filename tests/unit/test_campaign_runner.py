"""CampaignRunner on the fixture models with real interpreters: outputs, resume, skipping, errors, reports."""

from __future__ import annotations

import io
import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from host.campaign.config import CampaignConfig
from host.campaign.progress import LogProgress, RichProgress, default_progress
from host.campaign.runner import CampaignRunner, SearchJob, engine_search
from host.cli import main as dflare
from host.errors import CampaignError, ModelError
from host.search.results import SeedStatus
from host.store import CampaignStore
from tests.campaign_support import model, noise_search, seeds

N_SEEDS = 10
MAX_QUERIES = 1000  # the noise search finds most digits28 int8 deviations in a few hundred queries


def make_config(out: Path, **changes) -> CampaignConfig:
    return CampaignConfig(model("digits28", "float32"), model("digits28", "int8"), seeds("digits28"), out=out,
                          limit=N_SEEDS, max_queries=MAX_QUERIES).replace(**changes)


def run(cfg: CampaignConfig, search=noise_search, **kwargs):
    return CampaignRunner(cfg, search=search, progress=LogProgress(io.StringIO()), **kwargs).run()


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("campaign")
    outcome = run(make_config(out))
    assert outcome.status == "completed" and outcome.triggered > 0
    return out


def test_outputs_agree_with_the_store(finished: Path) -> None:
    summary = json.loads((finished / "summary.json").read_text())
    with CampaignStore.open_existing(finished) as store:
        outcomes = {r.seed_index: r for r in store.outcomes()}
        inputs = {r.seed_index: r for r in store.inputs()}
        requested = store.requested()
    searched = [r for r in outcomes.values() if r.status is not SeedStatus.skipped]
    hits = [r for r in searched if r.triggered]
    assert len(requested) == N_SEEDS and set(outcomes) == {s.seed_index for s in requested}
    assert summary["complete"] is True
    assert (summary["seeds"], summary["triggered"]) == (len(searched), len(hits))
    assert summary["success_rate"] == pytest.approx(len(hits) / len(searched))
    assert summary["queries_per_trigger"] == pytest.approx(np.mean([r.queries for r in hits]))
    assert summary["total_queries"] == sum(r.queries for r in outcomes.values())
    assert summary["per_algorithm"]["dflare"]["triggered"] == len(hits)
    assert summary["per_target"]["compressed"]["model_sha256"] == store_digest(finished, "compressed")
    assert summary["per_target"]["compressed"]["device"]["runtime"]

    suite = ET.parse(finished / "junit.xml").getroot().find("testsuite")
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert set(cases) == {f"seed_{s.seed_index}" for s in requested}
    assert int(suite.get("failures")) == len(hits)
    for index, record in inputs.items():
        failure = cases[f"seed_{index}"].find("failure")
        if outcomes[index].triggered:
            assert failure.get("message") == (
                f"original label {record.label_original} != compressed label {record.label_compressed}")
        # the artifacts hold exactly the tested bytes
        png = np.asarray(Image.open(finished / "inputs" / f"{index}_0.png"))
        assert png.reshape(record.image.shape).tobytes() == record.image.tobytes()
        assert np.load(finished / "inputs" / f"{index}_0.npy").tobytes() == record.image.tobytes()
    html = (finished / "report.html").read_text()
    for index in inputs:
        assert f'id="input-{index}-0"' in html


def store_digest(out: Path, role: str) -> str:
    with CampaignStore.open_existing(out) as store:
        return store.model_digests()[role]


def test_every_stored_input_really_deviates(finished: Path) -> None:
    from device_agent.runtime import ModelRunner
    from host.targets.base import ModelSpec

    o = ModelSpec.from_path(model("digits28", "float32"))
    c = ModelSpec.from_path(model("digits28", "int8"))
    runner_o = ModelRunner(o.content, preprocessing=o.preprocessing)
    runner_c = ModelRunner(c.content, preprocessing=c.preprocessing)
    with CampaignStore.open_existing(finished) as store:
        for record in store.inputs():
            batch = record.image[None]
            assert int(runner_o.infer(batch).argmax()) == record.label_original
            assert int(runner_c.infer(batch).argmax()) == record.label_compressed != record.label_original


def test_dflare_report_rebuilds_everything(finished: Path, tmp_path: Path, capsys) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    before = json.loads((copy / "summary.json").read_text())
    for name in ("summary.json", "junit.xml", "report.html"):
        (copy / name).unlink()
    shutil.rmtree(copy / "inputs")
    assert dflare(["report", str(copy), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    after = json.loads((copy / "summary.json").read_text())
    assert printed["triggered"] == before["triggered"] and printed["out"] == str(copy)
    assert {k: v for k, v in after.items() if k != "out"} == {k: v for k, v in before.items() if k != "out"}
    assert (copy / "junit.xml").exists() and (copy / "report.html").exists()
    pngs = list((copy / "inputs").glob("*.png"))
    assert len([p for p in pngs if not p.stem.endswith("_min")]) == len(before["triggering_inputs"])
    minimized = [i for i in before["triggering_inputs"] if i.get("minimized")]
    assert len([p for p in pngs if p.stem.endswith("_min")]) == len(minimized)


class Interrupting:
    """Wraps the noise search: records what it was asked, raises KeyboardInterrupt after ``stop_after`` seeds."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.stop_after = stop_after
        self.asked: list[int] = []

    def __call__(self, job: SearchJob):
        self.asked.extend(job.seed_indices)
        for n, result in enumerate(noise_search(job)):
            if self.stop_after is not None and n == self.stop_after:
                raise KeyboardInterrupt
            yield result


def test_interrupted_campaign_resumes_without_redoing_or_losing_seeds(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    first = Interrupting(stop_after=4)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, first)
    with CampaignStore.open_existing(tmp_path) as store:
        after_first = {r.seed_index: r for r in store.outcomes()}
        assert store.runs()[-1]["status"] == "interrupted"
    searched_first = [i for i, r in after_first.items() if r.status is not SeedStatus.skipped]
    assert len(searched_first) == 4
    summary = json.loads((tmp_path / "summary.json").read_text())  # reports written despite the interrupt
    assert summary["complete"] is False and summary["seeds_unfinished"] == N_SEEDS - len(after_first)
    junit = ET.parse(tmp_path / "junit.xml").getroot()
    assert sum("not finished" in (s.get("message") or "") for s in junit.iter("skipped")) == N_SEEDS - len(after_first)

    second = Interrupting()
    outcome = run(cfg, second)
    assert outcome.status == "completed" and outcome.resumed_from == len(after_first)
    assert set(second.asked).isdisjoint(after_first)  # finished seeds are not searched again
    with CampaignStore.open_existing(tmp_path) as store:
        final = store.outcomes()
        assert len(final) == len({r.seed_index for r in final}) == N_SEEDS  # nothing duplicated or lost
        for r in final:
            if r.seed_index in after_first:
                assert r == after_first[r.seed_index]  # the first run's records are untouched
        assert [run["status"] for run in store.runs()] == ["interrupted", "completed"]


def test_disagreeing_and_mislabelled_seeds_are_skipped_and_listed(tmp_path: Path) -> None:
    data = np.load(seeds("digits28"))
    x, y = data["x"][:6], data["y"][:6].copy()
    y[[1, 4]] = (y[[1, 4]] + 1) % 10  # wrong labels: both models agree, but not with y
    path = tmp_path / "seeds.npz"
    np.savez(path, x=x, y=y)
    search = Interrupting()
    outcome = run(make_config(tmp_path / "out", seeds=path, limit=None), search)
    skipped = {s["seed_index"]: s["reason"] for s in outcome.summary["skipped_seeds"]}
    assert {1, 4} <= set(skipped) and "label is" in skipped[1]
    assert set(search.asked).isdisjoint(skipped)
    assert outcome.summary["skipped"] == len(skipped) and outcome.summary["seeds"] == 6 - len(skipped)


def test_exhausted_seeds_are_listed_with_the_mutants_their_search_kept(tmp_path: Path) -> None:
    # The original DFlare on float32 vs dynamic range: seed 8 is one on which both models stay saturated
    # under every operator, so its search never keeps a mutant (the default leaves it: test_search_real_models).
    cfg = make_config(tmp_path, compressed=model("digits28", "dynamic"), max_queries=200, algo="dflare-faithful")
    outcome = run(cfg, engine_search)
    with CampaignStore.open_existing(tmp_path) as store:
        exhausted = {r.seed_index: r for r in store.outcomes() if r.status is SeedStatus.exhausted}
    listed = {s["seed_index"]: s for s in outcome.summary["exhausted_seeds"]}
    assert set(listed) == set(exhausted) and 8 in listed
    for index, entry in listed.items():
        assert entry["mutants_kept"] == exhausted[index].extra["search"]["accepted"]
        assert entry["queries"] == exhausted[index].queries and entry["reason"] == exhausted[index].exit_reason
    assert listed[8]["mutants_kept"] == 0
    html = (tmp_path / "report.html").read_text()
    assert 'id="exhausted-seeds"' in html and "#8 (0 mutants kept)" in html
    never_moved = sum(e["mutants_kept"] == 0 for e in listed.values())
    assert f"{never_moved} of them never kept a mutant" in html


def test_changed_settings_are_refused_then_force_new_starts_over(finished: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    with pytest.raises(CampaignError, match="max_queries changed from 1000 to 999"):
        run(make_config(copy, max_queries=999))
    with pytest.raises(CampaignError, match="the compressed model changed"):
        run(make_config(copy, compressed=model("digits28", "dynamic")))
    search = Interrupting()
    outcome = run(make_config(copy, max_queries=999, limit=3), search, force_new=True)
    assert outcome.summary["seeds_requested"] == 3 and len(search.asked) > 0
    assert len(list((copy / "archive").iterdir())) == 1


def test_model_problems_are_named(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"input shape mismatch.*\(28, 28, 1\).*\(32, 32, 3\)"):
        run(make_config(tmp_path, compressed=model("digits32rgb", "int8")))
    not_tflite = tmp_path / "model.tflite"
    not_tflite.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelError, match="compressed model .*model.tflite is not a TFLite model"):
        run(make_config(tmp_path, compressed=not_tflite))
    with pytest.raises(ModelError, match="model file not found"):
        run(make_config(tmp_path, original=tmp_path / "missing.tflite"))


def test_progress_reporters() -> None:
    stream = io.StringIO()
    assert isinstance(default_progress(stream), LogProgress)

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert isinstance(default_progress(Tty()), RichProgress)


def test_progress_lines_and_bar_follow_the_campaign(finished: Path) -> None:
    with CampaignStore.open_existing(finished) as store:
        records = store.outcomes()
    stream = io.StringIO()
    log = LogProgress(stream)
    log.start(len(records) + 2, 2, 1)
    for record in records:
        log.seed_finished(record)
    log.finish()
    lines = stream.getvalue().splitlines()
    hits = 1 + sum(r.triggered for r in records)
    assert lines[0] == f"campaign: {len(records) + 2} seeds, resuming: 2 already finished"
    assert lines[1].startswith(f"[3/{len(records) + 2}] seed {records[0].seed_index} {records[0].status.value}")
    assert lines[-1] == f"campaign: {len(records) + 2}/{len(records) + 2} seeds finished, {hits} triggered"
    bar = RichProgress()
    bar.start(len(records), 0, 0)
    for record in records:
        bar.seed_finished(record)
    task = bar._progress.tasks[0]
    bar.finish()
    assert task.completed == len(records) and task.fields["triggered"] == hits - 1


def test_mutation_threads_reach_the_engine_and_do_not_block_a_resume(tmp_path: Path, monkeypatch) -> None:
    import host.search

    seen = []
    real_run = host.search.run

    def recording_run(*args, **kwargs):
        seen.append(kwargs.get("mutation_threads"))
        return real_run(*args, **kwargs)

    monkeypatch.setattr(host.search, "run", recording_run)
    out = tmp_path / "threads"
    first = run(make_config(out, limit=2, max_queries=60, mutation_threads=1, minimize=False), search=engine_search)
    assert seen == [1]
    # another thread count computes the same campaign: it resumes (nothing is left) instead of being refused
    again = run(make_config(out, limit=2, max_queries=60, mutation_threads=3, minimize=False), search=engine_search)
    assert again.summary["triggered"] == first.summary["triggered"]
