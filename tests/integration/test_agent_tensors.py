"""GetTensors on a real agent over loopback: the device's own interpreter, every intermediate kept.

The reference is an interpreter built here, directly on ai_edge_litert with
``experimental_preserve_all_tensors=True`` and the same op resolver, fed the bytes the agent feeds
(``device_agent.runtime.prepare_input``). On this machine the agent's kernels are the same, so the
tensors must be equal bit for bit. The limits answer RESOURCE_EXHAUSTED naming the size and the
limit, unknown names INVALID_ARGUMENT naming them, and the agent serves on afterwards.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import grpc
import numpy as np
import pytest

from device_agent import runtime
from device_agent._gen import agent_pb2, agent_pb2_grpc
from host.errors import InvalidRequestError, ProtocolError
from host.targets import ModelSpec
from host.targets.remote import RemoteTarget

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MODEL = FIXTURES / "models" / "digits28-int8.tflite"
SEEDS = FIXTURES / "seeds" / "digits28.npz"
RPC_TIMEOUT_S = 60
#: Tensors of digits28-int8 the agent returns by default: the input and every op output (SHAPE, PACK ... too).
ACTIVATIONS = 12

pytestmark = pytest.mark.skipif(not MODEL.exists(), reason="fixture models missing (make fixtures)")


def _images(count: int = 3) -> np.ndarray:
    return np.load(SEEDS)["x"][:count].astype(np.uint8)


def _reference(content: bytes, delegate: str, image: np.ndarray) -> dict[int, tuple[np.ndarray, tuple, tuple]]:
    """Every tensor of an in-process interpreter keeping them all, on the session's kernels."""
    module = runtime.load_runtime().module
    resolver = {"ref": module.OpResolverType.BUILTIN_REF, "xnnpack": module.OpResolverType.BUILTIN}[delegate]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = module.Interpreter(model_content=content, experimental_op_resolver_type=resolver,
                                         experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    spec = runtime.TensorSpec(detail["name"], tuple(detail["shape"]), np.dtype(detail["dtype"]).name,
                              *detail["quantization"])
    interpreter.set_tensor(detail["index"], runtime.prepare_input(image[None], spec, runtime.Preprocessing()))
    interpreter.invoke()
    return {int(d["index"]): (np.array(interpreter.get_tensor(d["index"])),
                              tuple(float(v) for v in d["quantization_parameters"]["scales"]),
                              tuple(int(v) for v in d["quantization_parameters"]["zero_points"]))
            for d in interpreter.get_tensor_details()}


@pytest.fixture(scope="module")
def target(agent) -> RemoteTarget:
    uri, token = agent
    with RemoteTarget(uri, token=token, rpc_timeout_s=RPC_TIMEOUT_S) as remote:
        yield remote


@pytest.mark.parametrize("delegate", ["ref", "xnnpack"])
def test_tensors_equal_an_in_process_interpreter_keeping_them(target: RemoteTarget, delegate: str) -> None:
    content = MODEL.read_bytes()
    session = target.load(ModelSpec(content, MODEL.name, delegate))
    try:
        for image in _images():
            got = session.tensors(image)
            assert got.delegate == delegate and got.hidden == {} and got.note == ""
            assert got.outputs_identical
            assert len(got.by_index) == ACTIVATIONS
            reference = _reference(content, delegate, image)
            for index, (name, array, quantization) in got.by_index.items():
                expected, scales, zero_points = reference[index]
                assert array.dtype == expected.dtype and array.shape == expected.shape, name
                assert np.array_equal(array, expected), f"{delegate}: tensor {index} {name!r} differs"
                assert (quantization.scales, quantization.zero_points) == (scales, zero_points), name
            # Quantized activations carry their parameters; the float logits' scales are empty.
            input_name, _, input_q = next(iter(got.by_index.values()))
            assert input_q.scales and input_q.zero_points, input_name
            # The model's output is the last activation: the session's Infer gives the same probabilities.
            probs = session.infer(image[None])[0]
            name, raw, q = got.by_index[max(got.by_index)]
            assert np.array_equal(((raw.astype(np.float32) - q.zero_points[0]) * np.float32(q.scales[0]))[0], probs)
    finally:
        session.close()


def test_tensors_by_name_and_index(target: RemoteTarget) -> None:
    session = target.load(ModelSpec(MODEL.read_bytes(), MODEL.name, "ref"))
    try:
        everything = session.tensors(_images(1)[0])
        (first, (first_name, _, _)), (last, (last_name, _, _)) = list(everything.by_index.items())[::ACTIVATIONS - 1]
        chosen = session.tensors(_images(1)[0], names=[last_name], indices=[first])
        assert list(chosen.by_index) == [last, first]  # names first, then indices, in the order asked
        assert np.array_equal(chosen.by_index[last][1], everything.by_index[last][1])
        assert set(chosen.tensors) == {first_name, last_name}
    finally:
        session.close()


def test_limits_and_unknown_names(target: RemoteTarget, agent) -> None:
    """RESOURCE_EXHAUSTED past max_bytes, INVALID_ARGUMENT naming unknown tensors; both as raw status codes."""
    uri, token = agent
    session = target.load(ModelSpec(MODEL.read_bytes(), MODEL.name, "ref"))
    image = _images(1)
    channel = grpc.insecure_channel(uri.removeprefix("grpc://"))
    stub = agent_pb2_grpc.AgentStub(channel)
    auth = (("authorization", f"Bearer {token}"),) if token else ()

    def call(**fields):
        request = agent_pb2.GetTensorsRequest(
            session_id=session.session_id,
            input=agent_pb2.Tensor(shape=image.shape, dtype=agent_pb2.DATA_TYPE_UINT8, data=image.tobytes()), **fields)
        return stub.GetTensors(request, metadata=auth, timeout=RPC_TIMEOUT_S)

    try:
        total = sum(a.nbytes for _, a, _ in session.tensors(image[0]).by_index.values())
        assert len(call(max_bytes=total).tensors) == ACTIVATIONS  # exactly at the limit: allowed
        with pytest.raises(grpc.RpcError) as raised:
            call(max_bytes=total - 1)
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"hold {total} bytes" in raised.value.details()
        assert f"limit of {total - 1} bytes (the request's max_bytes)" in raised.value.details()

        with pytest.raises(grpc.RpcError) as raised:
            call(tensor_names=["no/such/layer", "x" * 100_000], tensor_indices=[10_000])
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = raised.value.details()
        assert "'no/such/layer'" in details and "10000" in details and "characters cut" in details
        assert len(details) <= 1000

        with pytest.raises(grpc.RpcError) as raised:
            two = np.repeat(image, 2, axis=0)
            stub.GetTensors(agent_pb2.GetTensorsRequest(
                session_id=session.session_id,
                input=agent_pb2.Tensor(shape=two.shape, dtype=agent_pb2.DATA_TYPE_UINT8, data=two.tobytes())),
                metadata=auth, timeout=RPC_TIMEOUT_S)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "one image" in raised.value.details()

        # The host's client turns them into its own errors, naming the problem.
        with pytest.raises(InvalidRequestError, match="over the limit of 10 bytes"):
            session.tensors(image[0], max_bytes=10)
        with pytest.raises(InvalidRequestError, match="no/such/layer"):
            session.tensors(image[0], names=["no/such/layer"])
        # ... and the session still serves.
        assert len(session.tensors(image[0]).by_index) == ACTIVATIONS
    finally:
        channel.close()
        session.close()


@pytest.mark.parametrize("agent", [["--max-message-bytes", "270K", "--max-batch-bytes", "8K"]], indirect=True)
def test_the_message_cap_bounds_the_reply(agent) -> None:
    """max_bytes above the agent's own limit (message cap minus headroom) is cut down to it."""
    uri, token = agent
    with RemoteTarget(uri, token=token, rpc_timeout_s=RPC_TIMEOUT_S, max_message_bytes=270 << 10) as remote:
        session = remote.load(ModelSpec(MODEL.read_bytes(), MODEL.name, "ref"))
        with pytest.raises(InvalidRequestError) as raised:
            session.tensors(_images(1)[0], max_bytes=1 << 30)
        limit = (270 << 10) - (256 << 10)
        assert f"over the limit of {limit} bytes (this agent's --max-message-bytes of {270 << 10}" in str(raised.value)
        # A selection that fits is served.
        assert len(session.tensors(_images(1)[0], indices=[0]).by_index) == 1


def test_an_agent_older_than_1_1_is_told_to_update(target: RemoteTarget, monkeypatch: pytest.MonkeyPatch) -> None:
    """The host checks the agent's minor before calling, rather than meeting UNIMPLEMENTED."""
    session = target.load(ModelSpec(MODEL.read_bytes(), MODEL.name, "ref"))
    try:
        old = agent_pb2.DeviceInfo()
        old.CopyFrom(target.device_info_message())
        old.protocol_minor = 0
        monkeypatch.setattr(target, "_device_info", old)
        with pytest.raises(ProtocolError, match=r"speaks protocol 1\.0, GetTensors needs 1\.1: update the agent"):
            session.tensors(_images(1)[0])
    finally:
        session.close()
