"""``runtime.TensorReader`` and ``hidden_by_delegate``: which tensors a delegate keeps to itself.

A fused XNNPACK plan (an interpreter *without* preserve_all_tensors) is a real delegate that hides
the tensors inside its partitions, as a GPU delegate does: the plan analysis must name exactly the
tensors the interpreter then refuses to read, and a reader on such a plan must list them as hidden
and say why.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from device_agent import runtime
from device_agent.errors import InputError

MODEL = Path(__file__).resolve().parents[1] / "fixtures" / "models" / "digits28-int8.tflite"

pytestmark = pytest.mark.skipif(not MODEL.exists(), reason="fixture models missing (make fixtures)")


def _unreadable(interpreter) -> set[int]:
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
    interpreter.invoke()
    refused = set()
    for d in interpreter.get_tensor_details():
        try:
            interpreter.get_tensor(d["index"])
        except ValueError:
            refused.add(int(d["index"]))
    return refused


def test_the_plan_names_the_tensors_a_fused_delegate_hides() -> None:
    module = runtime.load_runtime().module
    fused = module.Interpreter(model_content=MODEL.read_bytes(),
                               experimental_op_resolver_type=module.OpResolverType.BUILTIN)
    fused.allocate_tensors()
    hidden = runtime.hidden_by_delegate(fused._get_ops_details())
    assert hidden and hidden == _unreadable(fused)


def test_a_reader_on_a_fused_plan_lists_the_hidden_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = runtime.ModelRunner(MODEL.read_bytes(), delegate="xnnpack")
    make = runner._make_interpreter
    # The reader asks for preserve_all_tensors; refuse it, as a delegate that keeps its intermediates would.
    monkeypatch.setattr(runner, "_make_interpreter", lambda allowed, options, preserve_all_tensors=False:
                        make(allowed, options))
    reader = runner.tensor_reader()
    readout = reader.read(np.zeros((1, 28, 28, 1), np.uint8), reader.select())
    hidden = {index for _, index in readout.hidden}
    assert hidden == runtime.hidden_by_delegate(reader._interpreter._get_ops_details())
    assert {t.index for t in readout.tensors}.isdisjoint(hidden) and len(readout.tensors) + len(hidden) == 12
    assert f"computes {len(hidden)} of the 12 tensors asked for inside its" in readout.note
    assert "xnnpack delegate" in readout.note and readout.outputs_identical


def test_select_names_what_the_model_lacks() -> None:
    reader = runtime.ModelRunner(MODEL.read_bytes(), delegate="ref").tensor_reader()
    with pytest.raises(InputError) as raised:
        reader.select(names=[f"missing{k}" for k in range(7)] + ["y" * 500], indices=[-3, 10_000])
    message = str(raised.value)
    assert "8 tensor name(s) not in the model: 'missing0'" in message and "and 3 more" in message
    assert "tensor index(es) -3, 10000 not in the model" in message and len(message) < 1000
    with pytest.raises(InputError, match="one image"):
        reader.read(np.zeros((2, 28, 28, 1), np.uint8), reader.select())
