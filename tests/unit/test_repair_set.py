"""dflare repair without TensorFlow: reading a real campaign, the split, the repair set and its export, recipes,
and the errors (TensorFlow missing, no original, no triggering inputs, moved or changed files)."""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from host.campaign.config import CampaignConfig
from host.campaign.progress import LogProgress
from host.campaign.runner import CampaignRunner
from host.cli import main as dflare
from host.errors import ConfigError, ModelError, RepairError, SeedError
from host.repair import dataset
from host.repair.recipe import detect_recipe, given_recipe
from host.search.results import SeedStatus
from host.store import CampaignStore
from tests.campaign_support import MODELS, model, noise_search, seeds

N_SEEDS = 16
MAX_QUERIES = 1000  # the noise search finds most digits28 int8 deviations in a few hundred queries


def run_campaign(out: Path, **changes) -> Path:
    cfg = CampaignConfig(model("digits28", "float32"), model("digits28", "int8"), seeds("digits28"), out=out,
                         limit=N_SEEDS, max_queries=MAX_QUERIES).replace(**changes)
    CampaignRunner(cfg, search=noise_search, progress=LogProgress(io.StringIO())).run()
    return out


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = run_campaign(tmp_path_factory.mktemp("campaign"))
    with CampaignStore.open_existing(out) as store:
        assert sum(r.status is SeedStatus.triggered for r in store.inputs()) >= 4  # enough to split
    return out


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = dflare(["repair", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_load_campaign_reads_the_stored_triggering_inputs(campaign: Path) -> None:
    data = dataset.load_campaign(campaign)
    with CampaignStore.open_existing(campaign) as store:
        stored = [r for r in store.inputs() if r.status is SeedStatus.triggered]
    assert [(t.seed_index, t.n) for t in data.triggers] == [(r.seed_index, r.n) for r in stored]
    for t, r in zip(data.triggers, stored):
        assert np.array_equal(t.image, r.image) and t.label_original == r.label_original
        assert t.label_original != t.label_compressed
    assert data.seeds.x.shape == (N_SEEDS, 28, 28, 1) and data.figures["triggered"] == len(stored)


def test_split_is_deterministic_disjoint_by_seed_and_sized(campaign: Path) -> None:
    triggers = dataset.load_campaign(campaign).triggers
    repair, held = dataset.split_triggers(triggers, 0.5, seed=3)
    again = dataset.split_triggers(triggers, 0.5, seed=3)
    assert [t.seed_index for t in repair] == [t.seed_index for t in again[0]]
    assert {t.seed_index for t in repair}.isdisjoint({t.seed_index for t in held})
    assert sorted(t.seed_index for t in repair + held) == sorted(t.seed_index for t in triggers)
    assert len(held) == round(0.5 * len(triggers))
    splits = {tuple(sorted(t.seed_index for t in dataset.split_triggers(triggers, 0.5, seed=s)[1])) for s in range(6)}
    assert len(splits) > 1  # the seed drives the split
    assert dataset.split_triggers(triggers, 0.0, seed=0) == (triggers, [])
    _, tiny = dataset.split_triggers(triggers, 0.01, seed=0)
    assert len(tiny) == 1  # a positive fraction holds out at least one
    with pytest.raises(ConfigError, match="holdout-fraction"):
        dataset.split_triggers(triggers, 1.0, seed=0)


def test_repair_set_labels_triggers_with_the_original_and_keeps_the_seeds(campaign: Path) -> None:
    data = dataset.load_campaign(campaign)
    repair, _ = dataset.split_triggers(data.triggers, 0.5, seed=0)
    rs = dataset.build_repair_set(repair, data.seeds.x, data.seeds.y, trigger_copies=3)
    assert len(rs) == 3 * len(repair) + N_SEEDS
    assert rs.count(dataset.SOURCE_TRIGGER) == 3 * len(repair) and rs.count(dataset.SOURCE_SEED) == N_SEEDS
    for k, t in enumerate(repair):
        for c in range(3):
            row = 3 * k + c
            assert np.array_equal(rs.x[row], t.image) and rs.y[row] == t.label_original
            assert rs.seed_index[row] == t.seed_index
    assert np.array_equal(rs.x[-N_SEEDS:], data.seeds.x) and np.array_equal(rs.y[-N_SEEDS:], data.seeds.y)
    with pytest.raises(ConfigError, match="copies"):
        dataset.build_repair_set(repair, data.seeds.x, data.seeds.y, trigger_copies=-1)
    seeds_only = dataset.build_repair_set(repair, data.seeds.x, data.seeds.y, trigger_copies=0)
    assert seeds_only.count(dataset.SOURCE_TRIGGER) == 0 and np.array_equal(seeds_only.x, data.seeds.x)


def test_export_writes_npz_and_lossless_png_with_labels(campaign: Path, tmp_path: Path) -> None:
    data = dataset.load_campaign(campaign)
    repair, held = dataset.split_triggers(data.triggers, 0.5, seed=0)
    rs = dataset.build_repair_set(repair, data.seeds.x, data.seeds.y, trigger_copies=2)
    files = dataset.export_repair_set(rs, tmp_path)
    with np.load(files["npz"], allow_pickle=False) as npz:
        assert np.array_equal(npz["x"], rs.x) and np.array_equal(npz["y"], rs.y)
        assert list(npz["source"]) == list(rs.source) and np.array_equal(npz["seed_index"], rs.seed_index)
    with open(files["labels_csv"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(repair) + N_SEEDS  # copies made for weighting are written once
    assert sorted(p.name for p in files["folder"].glob("*.png")) == sorted(r["file"] for r in rows)
    expected = {("trigger", t.seed_index): (t.image, t.label_original) for t in repair}
    expected.update({("seed", i): (data.seeds.x[i], int(data.seeds.y[i])) for i in range(N_SEEDS)})
    for r in rows:
        image, label = expected[(r["source"], int(r["seed_index"]))]
        decoded = np.asarray(Image.open(files["folder"] / r["file"])).reshape(image.shape)
        assert np.array_equal(decoded, image) and int(r["label"]) == label
    held_path = dataset.export_held_out(held, tmp_path)
    with np.load(held_path, allow_pickle=False) as npz:
        assert np.array_equal(npz["x"], np.stack([t.image for t in held]))
        assert list(npz["label_original"]) == [t.label_original for t in held]


def test_export_only_through_the_cli_needs_no_tensorflow(campaign: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # importing it now fails, as when it is not installed
    code, out, err = cli(capsys, "--campaign", str(campaign), "--out", str(tmp_path / "r"), "--export-only", "--json")
    assert code == 0, err
    report = json.loads(out)
    total = report["triggering_inputs"]["total"]
    assert report["triggering_inputs"]["repair"] + report["triggering_inputs"]["held_out"] == total
    assert report["repair_set"]["images"] == report["triggering_inputs"]["repair"] + N_SEEDS
    assert "models" not in report and "dflare" not in report
    for name in ("repair_set.npz", "repair_set/labels.csv", "held_out.npz", "repair_report.json", "repair_report.md"):
        assert (tmp_path / "r" / name).exists(), name
    assert json.loads((tmp_path / "r" / "repair_report.json").read_text())["repair_set"] == report["repair_set"]


def test_missing_tensorflow_names_the_extra(campaign: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    code, out, err = cli(capsys, "--campaign", str(campaign), "--original-keras", str(MODELS / "digits28.keras"),
                         "--out", str(tmp_path / "r"))
    assert code == 2 and out == ""
    assert "TensorFlow" in err and "pip install dflare-edge[repair]" in err and "--export-only" in err
    assert not (tmp_path / "r").exists()  # failed before writing anything


def test_errors_a_person_can_act_on(campaign: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--campaign", str(campaign), "--out", str(tmp_path / "r")]
    code, _, err = cli(capsys, *base, "--original-keras", str(tmp_path / "nope.keras"))
    assert code == 2 and "original Keras model not found" in err and "nope.keras" in err
    code, _, err = cli(capsys, *base)
    assert code == 2 and "--original-keras is required" in err
    code, _, err = cli(capsys, "--campaign", str(tmp_path / "empty"), "--out", str(tmp_path / "r"), "--export-only")
    assert code == 2 and "no campaign store" in err
    code, _, err = cli(capsys, *base, "--export-only", "--holdout-fraction", "1")
    assert code == 2 and "--holdout-fraction must be in [0, 1)" in err
    code, _, err = cli(capsys, *base, "--export-only", "--epochs", "0")
    assert code == 2 and "--epochs" in err


def test_a_campaign_without_triggering_inputs_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_campaign(tmp_path / "c", limit=3, max_queries=8)  # below one noise batch: every seed exhausted
    code, _, err = cli(capsys, "--campaign", str(out), "--out", str(tmp_path / "r"), "--export-only")
    assert code == 2 and "has no triggering inputs" in err and "--max-queries" in err


def test_moved_or_changed_campaign_files(campaign: Path, tmp_path: Path) -> None:
    moved = tmp_path / "campaign"
    shutil.copytree(campaign, moved)
    with CampaignStore.open_existing(moved) as store:
        config = store.config_dict()
        store.set_meta("config", {**config, "seeds": str(tmp_path / "gone.npz")})
    with pytest.raises(SeedError, match="--seeds"):
        dataset.load_campaign(moved)
    assert len(dataset.load_campaign(moved, seeds=seeds("digits28")).seeds) == N_SEEDS
    with np.load(seeds("digits28")) as npz:
        np.savez(tmp_path / "other.npz", x=npz["x"][::-1], y=npz["y"][::-1])
    with pytest.raises(SeedError, match="not the seeds the campaign used"):
        dataset.load_campaign(moved, seeds=tmp_path / "other.npz")
    with pytest.raises(ModelError, match="not the compressed model the campaign tested.*--compressed"):
        dataset.load_campaign(moved, seeds=seeds("digits28"), compressed=model("digits28", "dynamic"))
    with pytest.raises(ModelError, match="cannot be read.*--original"):
        dataset.load_campaign(moved, seeds=seeds("digits28"), original=tmp_path / "gone.tflite")


@pytest.mark.parametrize("variant", ["int8", "dynamic", "float16"])
def test_recipe_is_read_from_the_compressed_model(variant: str) -> None:
    recipe = detect_recipe(model("digits28", variant).read_bytes())
    assert recipe.variant == variant and recipe.source.startswith("detected")
    if variant == "int8":
        assert recipe.int8_io == "int8"


def test_recipe_of_an_uncompressed_model_must_be_given() -> None:
    content = model("digits28", "float32").read_bytes()
    with pytest.raises(RepairError, match="--recipe"):
        detect_recipe(content)
    assert given_recipe("int8", model("digits28", "int8").read_bytes()).int8_io == "int8"
    assert given_recipe("int8", content).int8_io == "float32"  # keeps the model's float input
    with pytest.raises(RepairError, match="unknown recipe"):
        given_recipe("int4")
