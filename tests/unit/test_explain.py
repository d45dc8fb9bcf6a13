"""dflare explain on a real campaign over the fixture models: capture, matching, metrics, the rule, explain.json."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest

from device_agent.runtime import Preprocessing
from host.campaign.config import CampaignConfig
from host.campaign.progress import LogProgress
from host.campaign.runner import CampaignRunner
from host.cli import main as dflare
from host.exit_codes import ExitCode
from host.explain import blame
from host.explain.matching import match_graphs
from host.explain.metrics import SNR_CAP_DB, error_stats
from host.explain.tensors import GraphRunner, TensorInfo, dequantize, kernels_for
from host.targets.base import ModelSpec
from tests.campaign_support import model, noise_search, seeds

N_SEEDS = 4
MAX_QUERIES = 1000  # the noise search flips most digits28 int8 seeds within a few hundred queries
#: The fixture's normalization, from its TFLite metadata (as the campaign applies it).
PIXELS = ModelSpec.from_path(model("digits28", "int8")).preprocessing


def _runner(variant: str) -> GraphRunner:
    return GraphRunner(model("digits28", variant).read_bytes(), "xnnpack", PIXELS, variant)


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("explain")
    cfg = CampaignConfig(model("digits28", "float32"), model("digits28", "int8"), seeds("digits28"), out=out,
                         limit=N_SEEDS, max_queries=MAX_QUERIES)
    outcome = CampaignRunner(cfg, search=noise_search, progress=LogProgress(io.StringIO())).run()
    assert outcome.triggered > 0
    return out


@pytest.fixture(scope="module")
def explained(campaign: Path) -> dict:
    assert dflare(["explain", str(campaign)]) == ExitCode.ok
    return json.loads((campaign / "explain.json").read_text(), parse_constant=_no_constant)


def _no_constant(name: str) -> float:
    raise AssertionError(f"explain.json holds {name}, which is not JSON")


def test_the_campaign_preprocessing_is_the_one_recorded(campaign: Path) -> None:
    from host.store import CampaignStore

    with CampaignStore.open_existing(campaign) as store:
        assert Preprocessing.from_dict(store.targets()["compressed"]["model"]["preprocessing"]) == PIXELS


def test_every_activation_is_kept_and_xnnpack_exposes_them() -> None:
    runner = _runner("int8")
    assert runner.kernels == "xnnpack" and runner.note == ""
    ops = [t.op for t in runner.graph]
    assert ops == ["INPUT", "CONV_2D", "MAX_POOL_2D", "CONV_2D", "MAX_POOL_2D", "RESHAPE", "FULLY_CONNECTED",
                   "FULLY_CONNECTED", "SOFTMAX"]  # no weights, no shape arithmetic (int32)
    image = np.load(seeds("digits28"))["x"][0]
    values, probs = runner.run(image)
    assert set(values) == {t.index for t in runner.graph}
    assert probs.shape == (10,) and abs(probs.sum() - 1) < 0.02


def test_a_delegate_that_hides_its_tensors_falls_back_to_builtin_kernels_and_says_so() -> None:
    assert kernels_for("xnnpack") == ("xnnpack", "") and kernels_for("ref") == ("ref", "")
    kernels, note = kernels_for("gpu")
    assert kernels == "cpu" and "gpu" in note and "builtin kernels" in note


def test_int8_tensors_match_by_name_in_execution_order() -> None:
    original, compressed = _runner("float32").graph, _runner("int8").graph
    matching = match_graphs(original, compressed)
    assert matching.counts() == {"name": 9, "order_shape": 0, "unsure": 0}
    assert [m.original.order for m in matching.matches] == list(range(9))
    assert all(m.original.name == m.compressed.name for m in matching.matches)
    assert not matching.unmatched_original and not matching.unmatched_compressed


def test_float16_renamed_tensors_match_by_order_and_shape() -> None:
    matching = match_graphs(_runner("float32").graph, _runner("float16").graph)
    by_order = [m for m in matching.matches if m.confidence == "order_shape"]
    assert by_order, "the float16 converter renames the conv outputs: they must pair by order"
    assert {m.original.op for m in by_order} == {"CONV_2D"}
    assert all(m.original.shape == m.compressed.shape and m.original.order == m.compressed.order
               for m in matching.matches)


def test_without_names_order_matching_finds_the_name_pairs() -> None:
    original, compressed = _runner("float32").graph, _runner("dynamic").graph
    by_name = match_graphs(original, compressed)
    blank = [dataclasses.replace(t, name="") for t in compressed]
    by_order = match_graphs(original, blank)
    assert {m.confidence for m in by_order.matches} == {"order_shape"}
    assert [(m.original.index, m.compressed.index) for m in by_order.matches] == \
        [(m.original.index, m.compressed.index) for m in by_name.matches]


def test_an_extra_tensor_makes_the_matches_around_it_unsure() -> None:
    original, compressed = _runner("float32").graph, _runner("int8").graph
    extra = dataclasses.replace(compressed[3], index=999, name="", op="QUANTIZE")
    blank = [dataclasses.replace(t, name="") for t in compressed]
    matching = match_graphs(original, [*blank[:4], extra, *blank[4:]])
    unsure = [m for m in matching.matches if m.confidence == "unsure"]
    assert unsure and all("between name anchors" in m.reason for m in unsure)
    assert [t.index for t in matching.unmatched_compressed] == [999]  # same shape, but another op: left over
    assert len(matching.matches) == len(original)


def test_metrics_agree_with_numpy_on_a_real_tensor_pair() -> None:
    original, compressed = _runner("float32"), _runner("int8")
    image = np.load(seeds("digits28"))["x"][1]
    vo, _ = original.run(image)
    vc, _ = compressed.run(image)
    conv_o, conv_c = original.graph[1], compressed.graph[1]
    # The int8 tensor read back and dequantized by hand: (q - zero_point) * scale.
    raw = compressed._interpreter.get_tensor(conv_c.index)  # noqa: SLF001 - the test reads the interpreter
    assert raw.dtype == np.int8
    hand = (raw.astype(np.float64) - conv_c.zero_points[0]) * conv_c.scales[0]
    np.testing.assert_array_equal(vc[conv_c.index], hand)
    o, c = vo[conv_o.index].ravel(), hand.ravel()
    stats = error_stats(o, c)
    assert stats.rmse == pytest.approx(np.sqrt(np.mean((c - o) ** 2)), rel=1e-12)
    assert stats.snr_db == pytest.approx(10 * np.log10(np.sum(o ** 2) / np.sum((c - o) ** 2)), rel=1e-12)
    assert stats.cosine == pytest.approx(np.dot(o, c) / np.linalg.norm(o) / np.linalg.norm(c), rel=1e-12)
    assert stats.max_abs == pytest.approx(np.max(np.abs(c - o)), rel=1e-12)
    assert 30 < stats.snr_db < 60 and stats.cosine > 0.999  # int8 conv output: small but real error


def test_metric_edge_cases_stay_finite() -> None:
    same = error_stats(np.ones(4), np.ones(4))
    assert same.snr_db == SNR_CAP_DB and same.rmse == 0 and same.cosine == 1
    assert error_stats(np.zeros(3), np.zeros(3)).cosine == 1
    assert error_stats(np.zeros(3), np.ones(3)).snr_db == -SNR_CAP_DB
    with pytest.raises(ValueError):
        error_stats(np.zeros(3), np.zeros(4))


def test_per_channel_dequantization_scales_along_the_quantized_dimension() -> None:
    info = TensorInfo(0, "w", (2, 3), "int8", "INPUT", -1, 0, scales=(0.5, 2.0, 1.0), zero_points=(0, 1, -1),
                      quantized_dimension=1)
    raw = np.array([[2, 3, 4], [-2, 1, 0]], np.int8)
    np.testing.assert_array_equal(dequantize(raw, info), [[1.0, 4.0, 5.0], [-1.0, 0.0, 1.0]])
    float_info = dataclasses.replace(info, scales=(), zero_points=())
    np.testing.assert_array_equal(dequantize(raw, float_info), raw.astype(np.float64))


def test_the_first_jump_rule() -> None:
    # a 6 dB drop above 30 dB is ordinary quantization noise; one that lands below 30 dB is a jump
    assert blame.first_jump([53.0, 44.0, 45.0, 42.0, 38.0, 25.0]) == 5
    assert blame.first_jump([53.0, 44.0, 45.0, 42.0, 38.0, 33.0]) is None
    assert blame.first_jump([53.0, 28.0, 20.0]) == 1
    assert blame.most_grown([0.2, 5.0, None, 12.0, 3.0, -4.0]) == [3, 1, 4]


def test_explain_json_describes_every_stored_input(campaign: Path, explained: dict) -> None:
    from host.store import CampaignStore

    with CampaignStore.open_existing(campaign) as store:
        stems = [r.stem for r in store.inputs()]
        minimized = [m.stem for m in store.minimized().values()]
    assert explained["schema"] == "dflare-explain/1"
    assert [e["input"] for e in explained["inputs"] if e["kind"] == "raw"] == stems
    assert sorted(e["input"] for e in explained["inputs"] if e["kind"] == "minimized") == sorted(minimized)
    assert {m["kernels"] for m in explained["models"].values()} == {"xnnpack"}
    assert explained["matching"]["counts"]["name"] == len(explained["tensors"]) == 9
    assert set(explained["rule"]) >= {"jump_db", "below_db", "text"}
    for entry in explained["inputs"]:
        assert entry["reproduces"] is True  # the campaign's own kernels: every stored deviation flips again
        assert entry["status"] == "triggered"
        assert entry["labels"]["explain"] == entry["labels"]["stored"]
        assert len(entry["layers"]) == 9
        for row in entry["layers"]:
            assert set(row["trigger"]) == {"rmse", "snr_db", "cosine", "max_abs"}
            assert row["growth"]["snr_drop_db"] == pytest.approx(row["seed"]["snr_db"] - row["trigger"]["snr_db"])
        assert entry["lowest_snr"]["snr_db"] == min(r["trigger"]["snr_db"] for r in entry["layers"])


def test_the_rule_names_a_layer_on_the_int8_pair(explained: dict) -> None:
    jumps = [e["first_jump"] for e in explained["inputs"] if e["first_jump"]]
    assert jumps, "no input of the int8 campaign has a first jump"
    for jump in jumps:
        row = explained["inputs"][0]["layers"][jump["match"]]
        assert jump["layer"] == row["layer"] and jump["snr_db"] < blame.BELOW_DB and jump["drop_db"] > blame.JUMP_DB
    assert explained["ranking"][0]["first_jump"] >= 1


def test_the_table_names_the_jump(campaign: Path, capsys: pytest.CaptureFixture) -> None:
    assert dflare(["explain", str(campaign)]) == ExitCode.ok
    out = capsys.readouterr().out
    assert "tensors matched: 9 by name" in out and "first jump:" in out and "explain.json" in out


def test_a_directory_without_a_campaign_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert dflare(["explain", str(tmp_path)]) == ExitCode.usage
    assert "no campaign store" in capsys.readouterr().err
    assert not (tmp_path / "explain.json").exists()


def test_another_model_than_the_campaign_ran_is_refused(campaign: Path, capsys: pytest.CaptureFixture) -> None:
    assert dflare(["explain", str(campaign), "--compressed", str(model("digits28", "dynamic"))]) == ExitCode.usage
    err = capsys.readouterr().err
    assert "is not the compressed model this campaign ran" in err and "--compressed" in err


def _run_flags(out: Path) -> list[str]:
    return ["--original", str(model("digits28", "float32")), "--compressed", str(model("digits28", "int8")),
            "--seeds", str(seeds("digits28")), "--out", str(out), "--limit", "2", "--max-queries", "800",
            "--progress", "log", "--no-minimize"]


def test_run_explain_writes_explain_json_after_the_reports(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import argparse

    from host.campaign.command import add_arguments, execute

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "out"
    assert execute(parser.parse_args([*_run_flags(out), "--explain", "--json"]), search=noise_search,
                   argv=["dflare", "run"]) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed)["out"] == str(out)  # --json: stdout is still the summary object alone
    doc = json.loads((out / "explain.json").read_text())
    assert doc["inputs"] and {e["kind"] for e in doc["inputs"]} == {"raw"}
    # Resuming with --explain is allowed (not part of the identity) and prints one line about it.
    assert execute(parser.parse_args([*_run_flags(out), "--explain"]), search=noise_search,
                   argv=["dflare", "run"]) == 0
    assert f"explain: {out / 'explain.json'}" in capsys.readouterr().out


def test_without_readable_xnnpack_tensors_the_builtin_kernels_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(GraphRunner, "_all_readable", lambda self: False)
    runner = _runner("int8")
    assert runner.kernels == "cpu" and "XNNPACK did not expose" in runner.note
    values, _ = runner.run(np.load(seeds("digits28"))["x"][0])
    assert set(values) == {t.index for t in runner.graph}


def test_explain_html_marks_the_blamed_layer(campaign: Path, explained: dict) -> None:
    html = (campaign / "explain.html").read_text()
    assert 'href="report.html"' in html
    for entry in explained["inputs"]:
        assert f'id="explain-{entry["input"]}"' in html and f'src="{entry["png"]}"' in html
    assert html.count('class="jump"') == sum(1 for e in explained["inputs"] if e["first_jump"])
    assert html.count("data:image/svg+xml;base64,") == len(explained["inputs"])


def test_a_remote_campaign_says_the_figures_are_the_hosts() -> None:
    from host.explain.explainer import ModelSource, _kernel_notes

    source = ModelSource("compressed", Path("c.tflite"), b"", "gpu", "grpc://10.0.0.2:50051", PIXELS)
    runner = _runner("int8")
    runner.note = kernels_for("gpu")[1]  # as a gpu campaign would have it
    notes = _kernel_notes(source, runner)
    assert "gpu delegate" in notes[0] and "grpc://10.0.0.2:50051" in notes[1] and "future work" in notes[1]


#: Rounding an int8 layer's weights to multiples of 16 leaves it about 4 bits: on the fixtures the
#: rule then names that layer on every triggering input (docs/explain.md, "Checking the rule").
COARSE_STEP = 16


def coarsened(variant: str, weights: str, dest: Path, step: int = COARSE_STEP) -> Path:
    """A copy of a fixture model with one layer's int8 weights rounded to multiples of ``step`` (same scales)."""
    from device_agent.runtime import load_runtime

    content = model("digits28", variant).read_bytes()
    interpreter = load_runtime().module.Interpreter(model_content=content)
    detail = next(d for d in interpreter.get_tensor_details() if d["name"] == weights)
    values = interpreter.get_tensor(detail["index"])
    assert values.dtype == np.int8 and content.count(values.tobytes()) == 1  # the weight buffer, found once
    coarse = np.clip(np.round(values.astype(np.float64) / step) * step, -127, 127).astype(np.int8)
    dest.write_bytes(content.replace(values.tobytes(), coarse.tobytes()))
    return dest


@pytest.mark.parametrize(("weights", "layer"), [("digits_cnn_1/conv2_1/convolution", "digits_cnn_1/conv2_1/Relu"),
                                                ("digits_cnn_1/dense_1/MatMul", "digits_cnn_1/dense_1/MatMul")])
def test_the_rule_names_the_one_coarsened_layer(tmp_path: Path, weights: str, layer: str) -> None:
    compressed = coarsened("int8", weights, tmp_path / "coarse.tflite")
    cfg = CampaignConfig(model("digits28", "float32"), compressed, seeds("digits28"), out=tmp_path / "out",
                         limit=N_SEEDS, max_queries=MAX_QUERIES, minimize=False)
    assert CampaignRunner(cfg, search=noise_search, progress=LogProgress(io.StringIO())).run().triggered > 0
    from host.explain.explainer import explain_directory

    _, doc = explain_directory(tmp_path / "out")
    assert {e["first_jump"]["layer"] if e["first_jump"] else None for e in doc["inputs"]} == {layer}
    assert doc["ranking"][0]["layer"] == layer
    # The suggestion keeps that layer in float first, named as QuantizationDebugOptions takes it.
    suggestion = doc["suggestion"]
    assert suggestion["layers"][0]["layer"] == layer and suggestion["layers"][0]["carries"] == len(doc["inputs"])
    assert suggestion["denylisted_nodes"][0] == doc["tensors"][suggestion["layers"][0]["match"]]["original"]["name"]


def test_a_campaign_without_deviations_explains_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    same = model("digits28", "float32")  # the same model twice: no input can flip
    cfg = CampaignConfig(same, same, seeds("digits28"), out=tmp_path, limit=1, max_queries=64, minimize=False)
    assert CampaignRunner(cfg, search=noise_search, progress=LogProgress(io.StringIO())).run().triggered == 0
    assert dflare(["explain", str(tmp_path)]) == ExitCode.ok
    assert "no triggering input stored" in capsys.readouterr().out
    doc = json.loads((tmp_path / "explain.json").read_text())
    assert doc["inputs"] == [] and doc["ranking"] == []
    assert doc["matching"]["counts"]["name"] == 9  # identical graphs: every tensor by its name
