"""Outputs through the agent equal the in-process interpreter's, bit for bit.

Every fixture model variant x batch sizes 1 and 64 x delegates cpu/xnnpack/ref, through Infer and
through InferBatches (infer_many) and InferStream, against ``LocalTarget`` with the same ModelSpec.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from host.targets import LocalTarget, ModelSpec
from host.targets.remote import RemoteTarget

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MODELS = sorted((FIXTURES / "models").glob("*.tflite"))
DELEGATES = ("cpu", "xnnpack", "ref")
BATCH_SIZES = (1, 64)

pytestmark = pytest.mark.skipif(not MODELS, reason="fixture models missing (make fixtures)")


def _images(model_path: Path, n: int) -> np.ndarray:
    """Real seed images (tiled to n), with a few noisy ones so outputs are not all saturated."""
    name = model_path.name.rsplit("-", 1)[0]
    x = np.load(FIXTURES / "seeds" / f"{name}.npz")["x"]
    images = np.resize(x, (n, *x.shape[1:])).copy()
    rng = np.random.default_rng(n)
    noisy = images[: max(1, n // 4)].astype(np.int16) + rng.integers(-60, 61, images[: max(1, n // 4)].shape)
    images[: max(1, n // 4)] = np.clip(noisy, 0, 255).astype(np.uint8)
    return images


@pytest.fixture(scope="module")
def remote(agent):
    uri, token = agent
    with RemoteTarget(uri, token=token) as target:
        yield target


@pytest.mark.parametrize("delegate", DELEGATES)
@pytest.mark.parametrize("model_path", MODELS, ids=[p.stem for p in MODELS])
def test_agent_outputs_equal_in_process_outputs(remote, model_path, delegate):
    spec = ModelSpec.from_path(model_path, delegate=delegate)
    local = LocalTarget().load(spec)
    session = remote.load(spec)
    try:
        assert session.input_spec == local.input_spec
        assert session.output_specs == local.output_specs
        assert (session.delegated_nodes, session.cpu_ops) == (local.delegated_nodes, local.cpu_ops)
        for n in BATCH_SIZES:
            images = _images(model_path, n)
            expected = local.infer(images)
            got = session.infer(images)
            assert got.dtype == np.float32 and got.shape == expected.shape
            assert got.tobytes() == expected.tobytes(), f"batch {n}: outputs differ from the in-process interpreter"
        batches = [_images(model_path, n) for n in BATCH_SIZES]
        expected = [local.infer(b).tobytes() for b in batches]
        assert [g.tobytes() for g in session.infer_many(batches)] == expected, "InferBatches differs"
        assert [g.tobytes() for g in session._infer_stream(batches, 4)] == expected, "InferStream differs"
    finally:
        session.close()


def test_model_is_uploaded_only_when_the_agent_lacks_it(remote, agent):
    spec = ModelSpec.from_path(MODELS[0])
    remote.load(spec).close()
    remote.load(spec.with_options(delegate="ref")).close()
    assert remote.upload(spec) is False  # the agent already holds the digest
    assert agent.log().count(f"stored model {spec.sha256}") == 1
    assert (agent.cache_dir / f"{spec.sha256}.tflite").read_bytes() == spec.content
    assert remote.info()["sessions"] == 0  # closed sessions are unloaded on the agent
