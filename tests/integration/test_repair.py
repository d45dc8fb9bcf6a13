"""dflare repair end to end on the fixture models (needs TensorFlow: the ``repair`` marker).

A real DFlare campaign on digits28 float32 vs int8 (100 seeds, a small budget), then ``dflare repair``
with the committed Keras original: the repaired int8 model must deviate from the original on fewer
held-out triggering inputs than the campaign's int8 model, with seed accuracy within one point.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from host.cli import main as dflare
from host.repair.recipe import detect_recipe
from host.targets import LocalTarget, ModelSpec
from host.tflite.metadata import preprocessing_for
from tests.campaign_support import MODELS, model, seeds
from tests.tensorflow_support import requires_tensorflow

pytestmark = [
    pytest.mark.repair,
    pytest.mark.slow,
    requires_tensorflow,
]

#: Queries per seed: DFlare's median on this pair is ~120 (tests/fixtures/README.md), so 400 triggers
#: about 70% of the seeds (measured: 140 of 198 searched with all 200 seeds).
MAX_QUERIES = 400
#: Seeds: 100 give ~70 triggering inputs, ~35 of them held out; the campaign and the re-run each take
#: ~15-30 s on 2 cores.
N_SEEDS = 100
#: One percentage point of seed accuracy (the issue's bound).
ONE_POINT = 0.01


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("campaign")
    code = dflare(["run", "--original", str(model("digits28", "float32")), "--compressed",
                   str(model("digits28", "int8")), "--seeds", str(seeds("digits28")), "--max-queries",
                   str(MAX_QUERIES), "--limit", str(N_SEEDS), "--out", str(out), "--progress", "log", "--json"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["triggered"] >= 40, summary  # enough held-out inputs for the comparison to mean something
    return out


@pytest.fixture(scope="module")
def repaired(campaign: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("repaired")
    import subprocess
    import sys

    # A child process, as a user runs it: stdout must hold only the JSON (TensorFlow's chatter kept off it).
    proc = subprocess.run(
        [sys.executable, "-m", "host.cli", "repair", "--campaign", str(campaign), "--original-keras",
         str(MODELS / "digits28.keras"), "--out", str(out), "--json"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout), out


def test_repaired_int8_deviates_less_on_held_out_triggering_inputs(repaired: tuple[dict, Path]) -> None:
    report, _ = repaired
    before, after = report["models"]["compressed"], report["models"]["repaired"]
    held = report["triggering_inputs"]["held_out"]
    assert before["held_out_count"] == after["held_out_count"] == held >= 20
    assert before["held_out_deviations"] == held  # reproduced triggering inputs all deviate before repair
    assert after["held_out_deviations"] < before["held_out_deviations"]
    assert abs(after["seed_accuracy"] - before["seed_accuracy"]) <= ONE_POINT + 1e-9
    assert report["recipe"]["variant"] == "int8" and report["recipe"]["source"].startswith("detected")


def test_repaired_model_is_a_drop_in_int8_replacement(repaired: tuple[dict, Path]) -> None:
    report, out = repaired
    path = Path(report["models"]["repaired"]["path"])
    content = path.read_bytes()
    assert path.parent == out and detect_recipe(content).variant == "int8"
    original_int8 = model("digits28", "int8")
    assert preprocessing_for(path, content) == preprocessing_for(original_int8, original_int8.read_bytes())
    session = LocalTarget().load(ModelSpec.from_path(path, delegate="xnnpack"))  # the campaign's delegate
    assert session.input_spec.dtype == "int8" and session.input_spec.shape[1:] == (28, 28, 1)
    with np.load(out / "held_out.npz") as held:
        labels = session.infer(held["x"]).argmax(1)
        assert int((labels != held["label_original"]).sum()) == report["models"]["repaired"]["held_out_deviations"]


def test_dflare_rerun_uses_the_same_seeds_and_budget(repaired: tuple[dict, Path], campaign: Path) -> None:
    report, out = repaired
    d = report["dflare"]
    assert d["max_queries"] == MAX_QUERIES and d["algo"] == "dflare"
    assert d["before"]["seeds"] + d["before"]["skipped"] == d["after"]["seeds"] + d["after"]["skipped"] == N_SEEDS
    rerun = json.loads((out / "rerun" / "summary.json").read_text())
    assert rerun["triggered"] == d["after"]["triggered"] and rerun["config"]["compressed"] == \
        report["models"]["repaired"]["path"]
    markdown = (out / "repair_report.md").read_text()
    assert "| repaired (fine-tuned, re-compressed) |" in markdown and "| repaired (re-run) |" in markdown


def test_exports_match_the_report(repaired: tuple[dict, Path]) -> None:
    report, out = repaired
    with np.load(out / "repair_set.npz") as npz:
        assert len(npz["y"]) == report["repair_set"]["images"]
        assert int((npz["source"] == "trigger").sum()) == report["triggering_inputs"]["repair"]
    assert (out / "repaired.keras").exists()


def test_an_unloadable_or_foreign_original_is_refused(campaign: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "broken.keras"
    bad.write_bytes(b"not a zip")
    assert dflare(["repair", "--campaign", str(campaign), "--original-keras", str(bad), "--out",
                   str(tmp_path / "a"), "--no-rerun"]) == 2
    assert "cannot load the original Keras model" in capsys.readouterr().err
    assert dflare(["repair", "--campaign", str(campaign), "--original-keras", str(MODELS / "digits32rgb.keras"),
                   "--out", str(tmp_path / "b"), "--no-rerun"]) == 2
    err = capsys.readouterr().err
    assert "(32, 32, 3)" in err and "not their original" in err
