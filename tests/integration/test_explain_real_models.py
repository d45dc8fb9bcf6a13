"""dflare explain on the third-party models of ``../shared/real-models`` (skipped where they are absent).

* The partly quantized model adds a QUANTIZE and a DEQUANTIZE op: every original tensor still pairs
  by name, and the two extra tensors are listed as unmatched.
* ``conv_fc_mnist_srq_a8w8`` is not a quantization of ``conv_fc_mnist``: its conv weights do not
  correlate with the float model's (measured: r = -0.07), so the first conv's output is already
  unrelated (SNR about 1 dB on every seed). The rule must name that conv on every input.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from device_agent.runtime import Preprocessing
from host.campaign.config import CampaignConfig
from host.campaign.progress import LogProgress
from host.campaign.runner import CampaignRunner
from host.explain.explainer import explain_directory
from host.explain.matching import match_graphs
from host.explain.tensors import GraphRunner
from tests.campaign_support import noise_search
from tests.script_support import load_script

REAL = load_script("bench_pairs").real_models_dir()
pytestmark = pytest.mark.skipif(not REAL.is_dir(), reason=f"real models not found at {REAL}")

#: The real models carry no normalization metadata: pixel / 255 (their README).
PIXELS = Preprocessing((0.0,), (255.0,))


def _graph(name: str) -> list:
    return GraphRunner((REAL / f"{name}.tflite").read_bytes(), "xnnpack", PIXELS, name).graph


def test_extra_quantize_ops_are_unmatched_and_the_rest_pairs_by_name() -> None:
    matching = match_graphs(_graph("conv_fc_mnist"), _graph("partly_quantized_mnist"))
    assert matching.counts() == {"name": 7, "order_shape": 0, "unsure": 0}
    assert sorted(t.op for t in matching.unmatched_compressed) == ["DEQUANTIZE", "QUANTIZE"]
    assert not matching.unmatched_original


def test_a_compressed_model_from_another_training_run_is_blamed_on_its_first_conv(tmp_path: Path) -> None:
    cfg = CampaignConfig(REAL / "conv_fc_mnist.tflite", REAL / "conv_fc_mnist_srq_a8w8.tflite",
                         REAL / "mnist_test.npz", out=tmp_path, limit=4, max_queries=2000, mean=(0.0,),
                         std=(255.0,), minimize=False)
    assert CampaignRunner(cfg, search=noise_search, progress=LogProgress(io.StringIO())).run().triggered > 0
    _, doc = explain_directory(tmp_path)
    assert doc["inputs"]
    for entry in doc["inputs"]:
        assert entry["first_jump"]["op"] == "CONV_2D" and entry["first_jump"]["match"] == 1
        assert entry["layers"][1]["seed"]["snr_db"] < 10  # unrelated already on the seed, not only on the trigger
