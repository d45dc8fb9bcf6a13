"""The agent normalizes/quantizes uint8 batches itself, into the worker's shared memory.

Both ways a batch reaches the interpreter give the in-process bytes: prepared by the agent (the
tensor fits the slot) and as uint8 prepared by the worker (it does not: a float32 tensor is four
times the images' bytes). Also: a preprocessing that does not fit the images fails that request
only, and the slot it held is free again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from device_agent import runtime
from device_agent.errors import AgentInvalidRequestError
from device_agent.worker import LoadSpec, Worker
from host.tflite.metadata import preprocessing_for

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MODELS = [FIXTURES / "models" / f"digits32rgb-{variant}.tflite" for variant in ("float32", "int8")]

pytestmark = pytest.mark.skipif(not all(p.exists() for p in MODELS), reason="fixture models missing")


def _load(model: Path, max_batch_bytes: int, preprocessing: dict) -> Worker:
    worker = Worker(model.stem, max_batch_bytes)
    worker.start()
    worker.load(LoadSpec(str(model), "xnnpack", 1, preprocessing, (), {}))
    return worker


@pytest.mark.parametrize("model,slot_factor,agent_prepares", [
    (MODELS[0], 4, True),  # float32 tensor: 4x the images' bytes, fits a 4x slot
    (MODELS[0], 1, False),  # ... but not a 1x slot: the worker gets uint8 and prepares it
    (MODELS[1], 1, True),  # int8 tensor: the images' size
], ids=["float32-agent-prepares", "float32-worker-prepares", "int8-agent-prepares"])
def test_both_preparation_paths_give_the_in_process_bytes(model: Path, slot_factor: int, agent_prepares: bool,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    images = np.load(FIXTURES / "seeds" / "digits32rgb.npz")["x"][:16]
    preprocessing = preprocessing_for(model, model.read_bytes())
    assert preprocessing is not None
    runner = runtime.ModelRunner(model.read_bytes(), delegate="xnnpack", threads=1, preprocessing=preprocessing)
    expected = runner.infer(images)
    calls = []
    real_prepare = runtime.prepare_input
    monkeypatch.setattr(runtime, "prepare_input", lambda *a, **k: calls.append(1) or real_prepare(*a, **k))
    worker = _load(model, images.nbytes * slot_factor, preprocessing.to_dict())
    try:
        result = worker.infer(images.tobytes(), images.shape, "uint8")
        (shape, data), = result.outputs
        assert np.frombuffer(data, np.float32).reshape(shape).tobytes() == expected.tobytes()
        assert bool(calls) == agent_prepares
    finally:
        worker.close()


def test_preprocessing_that_does_not_fit_fails_the_request_and_frees_its_slot() -> None:
    images = np.load(FIXTURES / "seeds" / "digits32rgb.npz")["x"][:4]
    worker = _load(MODELS[0], images.nbytes * 4, {"mean": [1.0, 2.0], "std": [1.0]})
    try:
        for _ in range(8):  # more than the slots: a leaked slot would block here
            with pytest.raises(AgentInvalidRequestError, match="2 values but images have 3 channels"):
                worker.submit(images.tobytes(), images.shape, "uint8")
    finally:
        worker.close()
