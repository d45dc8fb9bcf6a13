"""ModelRunner reports precisely which ops a delegate left on the CPU kernels."""

from __future__ import annotations

from pathlib import Path

import pytest

from device_agent import runtime

MODELS = Path(__file__).resolve().parents[1] / "fixtures" / "models"


def _runner(name: str, delegate: str) -> runtime.ModelRunner:
    path = MODELS / name
    if not path.exists():
        pytest.skip(f"fixture model {path} missing (make fixtures)")
    return runtime.ModelRunner(path.read_bytes(), delegate=delegate)


def test_xnnpack_fallback_lists_only_undelegated_ops():
    runner = _runner("digits28-int8.tflite", "xnnpack")
    assert runner.delegated_nodes >= 1
    # XNNPACK takes the convolutions and dense layers; the shape plumbing stays on the CPU.
    assert "CONV_2D" not in runner.cpu_ops
    assert "FULLY_CONNECTED" not in runner.cpu_ops
    assert "RESHAPE" in runner.cpu_ops


@pytest.mark.parametrize("delegate", ["cpu", "ref"])
def test_no_delegate_reports_nothing(delegate):
    runner = _runner("digits28-float32.tflite", delegate)
    assert (runner.delegated_nodes, runner.cpu_ops) == (0, [])


def test_walk_stops_at_delegate_inputs():
    ops = [
        {"index": 0, "op_name": "CONV_2D", "inputs": [0, 5], "outputs": [1]},
        {"index": 1, "op_name": "RESHAPE", "inputs": [1], "outputs": [2]},
        {"index": 2, "op_name": "FULLY_CONNECTED", "inputs": [2, 6], "outputs": [3]},
        {"index": 3, "op_name": "DELEGATE", "inputs": [2, 6], "outputs": [3]},
    ]
    assert [op["op_name"] for op in runtime._ops_left_on_cpu(ops)] == ["CONV_2D", "RESHAPE"]
