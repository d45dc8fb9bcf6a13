"""dflare repair --keep-float without TensorFlow: naming the layers, the suggestion it reads, option checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from host.errors import ConfigError, RepairError
from host.repair.keep_float import KeepFloatOptions, op_outputs, parse_layers, resolve_layers, suggested_layers
from tests.campaign_support import model

CONV2 = ("digits_cnn_1/conv2_1/Relu;digits_cnn_1/conv2_1/BiasAdd;digits_cnn_1/conv2_1/convolution;"
         "digits_cnn_1/conv2_1/Squeeze1")


@pytest.fixture(scope="module")
def outputs() -> list[tuple[str, str]]:
    return op_outputs(model("digits28", "float32").read_bytes())


def test_the_float_model_names_its_op_outputs(outputs: list[tuple[str, str]]) -> None:
    assert ("CONV_2D", CONV2) in outputs and ("SOFTMAX", "StatefulPartitionedCall_1:0") in outputs
    assert [op for op, _ in outputs].count("FULLY_CONNECTED") == 2


def test_layers_resolve_to_denylisted_nodes_and_ops(outputs: list[tuple[str, str]]) -> None:
    nodes, ops, resolved = resolve_layers(["digits_cnn_1/conv2_1/Relu", CONV2, "SOFTMAX",
                                           "digits_cnn/dense_1/MatMul"], outputs)
    assert nodes[0] == CONV2 and len(nodes) == 2  # the short name and the full one are the same node, listed once
    assert nodes[1].startswith("digits_cnn_1/dense_1/MatMul;")  # the model scope's _N suffix ignored
    assert ops == ["SOFTMAX"] and resolved["SOFTMAX"] == "every SOFTMAX op"


def test_a_name_that_matches_nothing_lists_the_layers(outputs: list[tuple[str, str]]) -> None:
    with pytest.raises(RepairError, match="names no op output.*digits_cnn_1/conv1_1/Relu.*CONV_2D"):
        resolve_layers(["conv9"], outputs)
    with pytest.raises(RepairError, match="names 2 tensors"):
        resolve_layers(["a"], [("CONV_2D", "a;x"), ("CONV_2D", "a;y")])


def test_parse_layers_and_options() -> None:
    assert parse_layers(f" {CONV2}, SOFTMAX ,,") == (CONV2, "SOFTMAX")
    with pytest.raises(ConfigError, match="at least one layer"):
        KeepFloatOptions(Path("c"), Path("o"), Path("m.keras"), ()).validate()
    with pytest.raises(ConfigError, match="--original-keras"):
        KeepFloatOptions(Path("c"), Path("o"), None, ("SOFTMAX",)).validate()


def test_suggested_reads_explain_json(tmp_path: Path) -> None:
    with pytest.raises(RepairError, match="run dflare explain"):
        suggested_layers(tmp_path)
    (tmp_path / "explain.json").write_text(json.dumps({"suggestion": {"denylisted_nodes": [], "why": "spread"}}))
    with pytest.raises(RepairError, match="suggests no layer.*spread"):
        suggested_layers(tmp_path)
    (tmp_path / "explain.json").write_text(json.dumps({"suggestion": {"denylisted_nodes": [CONV2]}}))
    assert suggested_layers(tmp_path) == (CONV2,)
