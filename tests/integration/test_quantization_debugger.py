"""explain's per-layer figures against TFLite's QuantizationDebugger (needs TensorFlow: the ``repair`` marker).

The digits28 fixture: its Keras source is quantized full-integer by the debugger (calibrated on a batch
of 64 seeds), and the debugger's layer statistics on that batch are compared with explain's figures
for the fixture's float32 model against the debugger's quantized model (``get_nondebug_quantized_model``).
The debugger's ``mean_squared_error`` of a layer is the batch mean of each image's mean((q - f)^2),
which is explain's ``rmse`` squared, averaged over the same images.

- In whole-model mode (``enable_whole_model_verify``: each float op is fed the float model's own
  previous outputs), the debugger measures what explain measures, the error accumulated up to the
  layer: every layer agrees within :data:`REL_TOL` with the kernels the debugger's interpreter runs
  (XNNPACK).
- In its default per-layer mode, each float op is fed the quantized model's previous output, so a
  layer's figure is its own error alone. Only the first quantized layer then sees the same input in
  both tools; explain's figures are the accumulated error everywhere (docs/explain.md).
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

from host.explain.matching import match_graphs
from host.explain.metrics import error_stats
from host.explain.tensors import GraphRunner
from host.targets.base import ModelSpec
from tests.campaign_support import MODELS, model, seeds
from tests.tensorflow_support import requires_tensorflow

pytestmark = [
    pytest.mark.repair,
    requires_tensorflow,
]

#: Images in the calibration and debug batch (the debugger runs them one at a time).
BATCH = 64
#: Relative tolerance on each layer's mean squared error. Measured on TensorFlow 2.21: at most 2e-6
#: with XNNPACK kernels on both sides (float32 rounding of the debugger's sums).
REL_TOL = 1e-4


def _name(numeric_verify: str) -> str:
    """The quantized tensor a NumericVerify output checks: ``NumericVerify/{name}{d}:{index}`` -> ``{name}``
    (the converter appends one digit to the debug model's copy of each name, as the debugger's own parser assumes).
    """
    name = numeric_verify.rsplit(":", 1)[0].removeprefix("NumericVerify/")
    return name[:-1] if re.match(r"\d", name[-1]) else name


@pytest.fixture(scope="module")
def debugged() -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf
    from tensorflow.lite.python import convert

    from host.repair import finetune
    from host.tflite.export import KeepFloatConverter

    preprocessing = ModelSpec.from_path(model("digits28", "float32")).preprocessing
    images = np.load(seeds("digits28"))["x"][:BATCH]
    batch = preprocessing.apply(images).astype(np.float32)

    def dataset():
        return ([batch[i : i + 1]] for i in range(len(batch)))

    with finetune.quiet():
        converter = KeepFloatConverter(keras.models.load_model(MODELS / "digits28.keras", compile=False), batch,
                                       "float32")
        quantized = converter.convert()
        per_layer = converter.debugger  # its debug dataset is the calibration batch
        per_layer.run()
        whole = convert.mlir_quantize(converter.calibrated_model, enable_numeric_verify=True,
                                      enable_whole_model_verify=True)
        whole_model = tf.lite.experimental.QuantizationDebugger(quant_debug_model_content=whole, debug_dataset=dataset)
        whole_model.run()
    return {"images": images, "quantized": quantized, "preprocessing": preprocessing,
            "per_layer": {_name(k): dict(v) for k, v in per_layer.layer_statistics.items()},
            "whole_model": {_name(k): dict(v) for k, v in whole_model.layer_statistics.items()}}


def _our_mse(debugged: dict, kernels: str) -> dict[str, float]:
    """explain's rmse^2 per matched layer, averaged over the batch, by the compressed tensor's name."""
    original = GraphRunner(model("digits28", "float32").read_bytes(), kernels, debugged["preprocessing"], "original")
    compressed = GraphRunner(debugged["quantized"], kernels, debugged["preprocessing"], "compressed")
    matches = match_graphs(original.graph, compressed.graph).matches
    sums = np.zeros(len(matches))
    for image in debugged["images"]:
        o, _ = original.run(image)
        c, _ = compressed.run(image)
        sums += [error_stats(o[m.original.index], c[m.compressed.index]).rmse ** 2 for m in matches]
    return {m.original.name: s / len(debugged["images"]) for m, s in zip(matches, sums)}


def test_whole_model_statistics_equal_explains_per_layer_figures(debugged: dict) -> None:
    ours = _our_mse(debugged, "xnnpack")
    theirs = debugged["whole_model"]
    assert len(theirs) == 8  # conv1, pool1, conv2, pool2, flatten, dense, logits, softmax
    assert set(theirs) <= set(ours), sorted(set(theirs) - set(ours))  # every layer the debugger covers, we do
    for name, stats in theirs.items():
        assert ours[name] == pytest.approx(stats["mean_squared_error"], rel=REL_TOL), name


def test_the_default_per_layer_mode_agrees_on_the_first_layer_only(debugged: dict) -> None:
    ours = _our_mse(debugged, "xnnpack")
    per_layer, whole = debugged["per_layer"], debugged["whole_model"]
    assert set(per_layer) == set(whole)
    first = next(iter(whole))  # conv1: both modes feed it the same quantized input
    assert "conv1" in first
    assert ours[first] == pytest.approx(per_layer[first]["mean_squared_error"], rel=REL_TOL)
    # A max pool on the quantized input is exact, alone: its own error is nil, the accumulated one is not.
    pool = next(name for name in per_layer if "pool1" in name)
    assert per_layer[pool]["mean_squared_error"] < 1e-9 < ours[pool]
