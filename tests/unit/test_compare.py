"""dflare compare: target specs, latency measurement, and the disagreement matrix vs direct computation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from device_agent.runtime import ModelRunner, Preprocessing
from host.cli import main
from host.compare.columns import compare_outputs, run_compare
from host.compare.html import render_compare_html
from host.errors import ConfigError, SeedError
from host.seeds import load_seeds
from host.targets import ModelSpec, open_target
from host.targets.latency import LatencyStats, measure_session
from host.targets.spec import TargetSpec, parse_target_spec

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
INT8 = FIXTURES / "models" / "digits28-int8.tflite"
FLOAT = FIXTURES / "models" / "digits28-float32.tflite"
SEEDS = FIXTURES / "seeds" / "digits28.npz"
#: digits28 takes pixels scaled to 0..1; given explicitly so the test does not depend on metadata parsing.
PREPROCESSING = Preprocessing(mean=(0.0,), std=(255.0,))
#: Blend steps between two seeds of the fixture: inputs near a decision boundary, where the XNNPACK
#: and reference kernels' small numeric differences flip the top-1 label on a few images.
BLEND_STEPS = 33


# -- target specs ---------------------------------------------------------------------------------
def test_parse_target_spec_reads_uri_and_options():
    assert parse_target_spec("local:,delegate=xnnpack") == TargetSpec("local:", "xnnpack")
    spec = parse_target_spec("grpc://127.0.0.1:50051,delegate=ref,threads=2")
    assert (spec.uri, spec.delegate, spec.threads) == ("grpc://127.0.0.1:50051", "ref", 2)
    assert spec.label == "grpc://127.0.0.1:50051/ref/t2"
    assert parse_target_spec("local").uri == "local:"
    assert parse_target_spec("local:,name=phone-gpu").label == "phone-gpu"


@pytest.mark.parametrize("text, fragment", [
    ("local:,delegate", "needs a value"),
    ("local:,speed=fast", "unknown option 'speed'"),
    ("local:,threads=two", "whole number"),
    ("local:,threads=0", "positive"),
    ("local:,delegate=tpu", "unknown delegate"),
    ("local:,delegate=ref,delegate=cpu", "given twice"),
    (",delegate=ref", "no URI"),
])
def test_parse_target_spec_rejects_bad_specs(text, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse_target_spec(text)


# -- measurement ----------------------------------------------------------------------------------
class _CountingSession:
    """A session returning one-hot outputs; each call advances a fake clock by 2 ms per image."""

    def __init__(self, clock: list[float]) -> None:
        self.calls: list[int] = []
        self.clock = clock
        self.last_invoke_ms: float | None = None  # reports no timing of its own unless a test sets one
        self.delegated_nodes = self.cpu_ops = self.peak_memory_bytes = None

    def infer(self, images: np.ndarray) -> np.ndarray:
        self.calls.append(len(images))
        self.clock[0] += 0.002 * len(images)
        out = np.zeros((len(images), 10), np.float32)
        out[np.arange(len(images)), images[:, 0, 0, 0] % 10] = 1.0
        return out


def test_measure_session_times_each_batch_after_warmup_and_keeps_seed_order():
    clock = [0.0]
    session = _CountingSession(clock)
    seeds = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1)
    probs, latency, host = measure_session(session, seeds, batch_size=4, warmup_runs=2, min_runs=7,
                                             clock=lambda: clock[0])
    # 2 warm-up calls on the first batch, then 7 timed calls cycling over batches of 4, 4, 2.
    assert session.calls == [4, 4, 4, 4, 2, 4, 4, 2, 4]
    assert np.array_equal(probs.argmax(1), np.arange(10))
    assert latency.runs == 7 and latency.batch_size == 4 and latency.warmup_runs == 2
    assert latency.p50_ms == pytest.approx(2.0) and latency.p99_ms == pytest.approx(2.0)
    assert latency.source == "host" and host == latency  # the session reports no timing of its own


def test_measure_session_prefers_the_targets_own_invoke_timing():
    clock = [0.0]
    session = _CountingSession(clock)
    session.last_invoke_ms = 1.0  # a remote session's report: 1 ms per call, whatever the batch
    seeds = np.zeros((8, 1, 1, 1), np.uint8)
    _, latency, host = measure_session(session, seeds, batch_size=4, warmup_runs=0, min_runs=4,
                                       clock=lambda: clock[0])
    assert latency.source == "invoke" and latency.mean_ms == pytest.approx(0.25)
    assert host.source == "host" and host.mean_ms == pytest.approx(2.0)


def test_local_sessions_report_invoke_time():
    session = open_target("local:").load(ModelSpec.from_path(INT8, preprocessing=PREPROCESSING))
    with np.load(SEEDS) as data:
        x = data["x"][:16]
    _, latency, host = measure_session(session, x, batch_size=8, warmup_runs=1, min_runs=4)
    assert latency.source == "invoke" and latency.runs == 4
    assert 0 < latency.mean_ms <= host.mean_ms  # invoke() is part of each timed call


def test_latency_percentiles_match_numpy():
    samples = [float(v) for v in range(1, 101)]
    stats = LatencyStats.from_samples(samples, batch_size=1, warmup_runs=0)
    assert stats.mean_ms == pytest.approx(50.5)
    assert stats.p50_ms == pytest.approx(np.percentile(samples, 50))
    assert stats.p90_ms == pytest.approx(np.percentile(samples, 90))
    assert stats.p99_ms == pytest.approx(np.percentile(samples, 99))


def test_compare_outputs_counts_top1_disagreements():
    a = np.array([[0.9, 0.1], [0.4, 0.6], [0.5, 0.5]], np.float32)
    b = np.array([[0.8, 0.2], [0.7, 0.3], [0.5, 0.5]], np.float32)
    count, max_abs, mean_abs, idx = compare_outputs(a, b)
    assert (count, idx) == (1, [1])
    assert max_abs == pytest.approx(0.3)
    assert mean_abs == pytest.approx((0.1 + 0.1 + 0.3 + 0.3) / 6)


# -- the must-show: matrix == direct computation --------------------------------------------------
def _boundary_blends(x: np.ndarray, pairs: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, BLEND_STEPS, dtype=np.float32)[:, None, None, None]
    xf = x.astype(np.float32)
    blends = [xf[i] * (1 - t) + xf[i + 1] * t for i in range(0, 2 * pairs, 2)]
    return np.clip(np.rint(np.concatenate(blends)), 0, 255).astype(np.uint8)


def _direct_labels(path: Path, delegate: str, x: np.ndarray) -> np.ndarray:
    runner = ModelRunner(path.read_bytes(), delegate=delegate, preprocessing=PREPROCESSING)
    return np.concatenate([runner.infer(x[i : i + 64]) for i in range(0, len(x), 64)]).argmax(1)


@pytest.mark.parametrize("seed_set", ["seeds", "boundary_blends"])
def test_compare_matrix_matches_direct_computation(tmp_path, capsys, seed_set):
    with np.load(SEEDS) as data:
        x, y = data["x"][:80], data["y"][:80]
    if seed_set == "boundary_blends":
        x = _boundary_blends(x, pairs=20)
        y = np.zeros(len(x), np.int64)
    seeds = tmp_path / "seeds.npz"
    np.savez(seeds, x=x, y=y)
    out = tmp_path / "out"
    code = main(["compare", "--model", str(INT8), "--original", str(FLOAT), "--seeds", str(seeds),
                 "--targets", "local:,delegate=xnnpack", "local:,delegate=ref",
                 "--mean", "0", "--std", "255", "--batch-size", "16", "--runs", "3", "--warmup-runs", "1",
                 "--out", str(out), "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert json.loads((out / "summary.json").read_text()) == summary
    labels = summary["matrix"]["labels"]
    assert labels == ["original", "local:/xnnpack", "local:/ref"]

    direct = {
        "original": _direct_labels(FLOAT, "cpu", x),
        "local:/xnnpack": _direct_labels(INT8, "xnnpack", x),
        "local:/ref": _direct_labels(INT8, "ref", x),
    }
    total = 0
    for i, a in enumerate(labels):
        for j, b in enumerate(labels):
            expected = int((direct[a] != direct[b]).sum())
            assert summary["matrix"]["disagreements"][i][j] == expected, (a, b)
            total += expected
    by_pair = {(p["a"], p["b"]): p for p in summary["pairs"]}
    xr = by_pair[("local:/xnnpack", "local:/ref")]
    assert xr["disagreeing_seeds"] == [int(k) for k in np.flatnonzero(direct["local:/xnnpack"] != direct["local:/ref"])]
    if seed_set == "boundary_blends":
        # Not vacuous: near decision boundaries the delegates really differ on some images.
        assert xr["disagreements"] > 0
        assert total > 0
    for column in summary["columns"]:
        assert column["error"] == ""
        assert 0 < column["latency_ms"]["p50_ms"] <= column["latency_ms"]["p99_ms"]
        assert column["latency_ms"]["source"] == "invoke"
        assert column["latency_ms"]["runs"] == -(-len(x) // 16)  # every seed batch timed once
    html = (out / "compare.html").read_text()
    assert "local:/xnnpack" in html and f"{xr['disagreements']}/{len(x)}" in html


def test_a_failing_column_is_reported_and_the_others_compared(tmp_path):
    with np.load(SEEDS) as data:
        x = data["x"][:8]
    model = ModelSpec.from_path(INT8, preprocessing=PREPROCESSING)
    specs = [TargetSpec("local:", "xnnpack"), TargetSpec("local:", "external:/nonexistent/libdelegate.so"),
             TargetSpec("local:", "ref")]
    result = run_compare(model, specs, x, open_target, batch_size=4, warmup_runs=0, min_runs=1)
    failed = [c for c in result.columns if not c.ok]
    assert [c.label for c in failed] == ["local:/external:/nonexistent/libdelegate.so"]
    assert "not allowed" in failed[0].error
    assert [(p.a, p.b) for p in result.pairs] == [("local:/xnnpack", "local:/ref")]
    html = render_compare_html(result.to_dict())
    assert "not allowed" in html and "n/a" in html


def test_compare_needs_two_columns_and_valid_seeds(tmp_path):
    model = ModelSpec.from_path(INT8, preprocessing=PREPROCESSING)
    with pytest.raises(ConfigError, match="at least two columns"):
        run_compare(model, [TargetSpec("local:")], np.zeros((1, 28, 28, 1), np.uint8), open_target)
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((1, 28, 28, 1), np.uint8))
    assert main(["compare", "--model", str(INT8), "--seeds", str(bad), "--targets", "local:", "local:,delegate=ref",
                 "--out", str(tmp_path / "o")]) == 2
    with pytest.raises(SeedError, match="no array 'x'"):
        load_seeds(bad)


def test_compare_search_saves_inputs_that_really_separate_the_pair(tmp_path, capsys):
    with np.load(SEEDS) as data:
        x = data["x"][:4]
    seeds = tmp_path / "seeds.npz"
    np.savez(seeds, x=x)
    out = tmp_path / "out"
    code = main(["compare", "--model", str(INT8), "--original", str(FLOAT), "--seeds", str(seeds),
                 "--targets", "local:,delegate=xnnpack", "--mean", "0", "--std", "255", "--runs", "1",
                 "--search", "--max-queries", "200", "--out", str(out), "--json"])
    assert code == 0
    (pair,) = json.loads(capsys.readouterr().out)["pairs"]
    search = pair["search"]
    assert search["seeds"] == 4 and search["triggered"] == len(search["triggering_seeds"])
    with np.load(Path(search["artifacts"]) / "triggering.npz") as saved:
        images, label_a, label_b = saved["x"], saved["label_a"], saved["label_b"]
    assert len(images) == search["triggered"]
    if len(images):
        # Each saved input gives different top-1 labels on the two columns, as a direct run shows.
        a = ModelRunner(FLOAT.read_bytes(), delegate="cpu", preprocessing=PREPROCESSING).infer(images).argmax(1)
        b = ModelRunner(INT8.read_bytes(), delegate="xnnpack", preprocessing=PREPROCESSING).infer(images).argmax(1)
        assert list(a) == list(label_a) and list(b) == list(label_b) and all(a != b)
