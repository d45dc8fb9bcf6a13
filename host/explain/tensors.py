"""Run one model in process with every intermediate tensor kept, and read them back dequantized.

The interpreter is built with ``experimental_preserve_all_tensors=True``. Which kernels run it:

- ``cpu`` and ``ref`` campaigns: the same builtin (or reference) kernels.
- ``xnnpack``: with all tensors preserved, LiteRT applies the XNNPACK delegate one node per
  partition (it fuses the whole graph into two partitions otherwise), so every intermediate is
  written out and readable; on the fixtures the final outputs are bit-identical to the fused
  run's. When some activation is still unreadable, the builtin kernels are used instead.
- ``gpu``, ``nnapi``, ``external:``: the delegate keeps its intermediates to itself (GPU memory,
  the NNAPI driver), and these are the device's kernels anyway: the builtin kernels run instead.

The choice and its reason are kept in :attr:`GraphRunner.kernels` / :attr:`GraphRunner.note`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from device_agent import runtime
from host.errors import ModelError

#: Delegates whose intermediates can be read in this process (the rest fall back to ``cpu``).
READABLE_KERNELS = ("cpu", "ref", "xnnpack")

#: Integer dtypes an activation may have when quantized; unquantized integers are shapes and indices.
_QUANTIZED_DTYPES = ("int8", "uint8", "int16")


@dataclass(frozen=True)
class TensorInfo:
    """One activation of a graph: the graph input or an op's output that depends on it.

    Attributes:
        index: the interpreter's tensor index.
        name: the tensor's name as the converter left it.
        shape: its shape (batch first).
        dtype: its stored dtype (``int8`` for a quantized tensor).
        op: the producing op's name (``INPUT`` for the graph input).
        op_index: the producing op's position in the execution plan (-1 for the input).
        order: its position among the graph's activations, in execution order.
        scales / zero_points / quantized_dimension: its quantization (empty scales: not quantized).
    """

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str
    op: str
    op_index: int
    order: int
    scales: tuple[float, ...] = ()
    zero_points: tuple[int, ...] = ()
    quantized_dimension: int = 0

    @property
    def quantized(self) -> bool:
        return bool(self.scales) and any(s != 0.0 for s in self.scales)

    @property
    def layer(self) -> str:
        """A short display name: the first of the converter's ``;``-joined names."""
        return self.name.split(";")[0] or f"tensor {self.index}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "name": self.name, "layer": self.layer, "op": self.op,
                               "op_index": self.op_index, "shape": list(self.shape), "dtype": self.dtype}
        if self.quantized:
            out["quantization"] = {"scales": list(self.scales), "zero_points": list(self.zero_points),
                                   "quantized_dimension": self.quantized_dimension}
        return out


def dequantize(raw: np.ndarray, info: TensorInfo) -> np.ndarray:
    """A tensor's real values as float64: ``(q - zero_point) * scale``, per channel along ``quantized_dimension``."""
    if not info.quantized:
        return raw.astype(np.float64)
    scales = np.asarray(info.scales, np.float64)
    zeros = np.asarray(info.zero_points or (0,) * len(scales), np.float64)
    if scales.size > 1:  # per-channel: broadcast along the quantized dimension
        shape = [1] * raw.ndim
        shape[info.quantized_dimension] = scales.size
        scales, zeros = scales.reshape(shape), zeros.reshape(shape)
    return (raw.astype(np.float64) - zeros) * scales


def kernels_for(delegate: str) -> tuple[str, str]:
    """The kernels the explain interpreter uses for a campaign's delegate, and why (empty: the same)."""
    kind = runtime.parse_delegate(delegate).kind
    if kind in READABLE_KERNELS:
        return kind, ""
    return "cpu", (f"the campaign ran this model on the {delegate} delegate, which keeps its intermediate "
                   "tensors inside the delegate; measured with the host's builtin kernels instead")


class GraphRunner:
    """One model on an in-process interpreter that keeps every tensor.

    Args:
        content: the .tflite bytes.
        delegate: the campaign's delegate for this model (see :func:`kernels_for`).
        preprocessing: the normalization the campaign applied to uint8 pixels.
        role: ``original`` or ``compressed``, for messages.
        threads: interpreter threads, as the campaign ran the model (None: the runtime's default).

    Raises:
        ModelError: the runtime cannot load the model, or it is not a one-input image model.
    """

    def __init__(self, content: bytes, delegate: str, preprocessing: runtime.Preprocessing, role: str,
                 threads: int | None = None) -> None:
        self.role = role
        self.threads = threads
        self.preprocessing = preprocessing
        self._content = content  # the interpreter reads from this buffer: keep it alive
        self.kernels, self.note = kernels_for(delegate)
        self._interpreter = self._build(self.kernels)
        self.graph = self._activations()
        if self.kernels == "xnnpack" and not self._all_readable():
            self.kernels = "cpu"
            self.note = ("XNNPACK did not expose every intermediate tensor with preserve_all_tensors; "
                         "measured with the builtin kernels instead")
            self._interpreter = self._build("cpu")
            self.graph = self._activations()

    def _build(self, kernels: str) -> Any:
        module = runtime.load_runtime().module
        resolver = {"cpu": module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                    "xnnpack": module.OpResolverType.BUILTIN,
                    "ref": module.OpResolverType.BUILTIN_REF}[kernels]
        try:
            with warnings.catch_warnings():  # LiteRT warns that preserving tensors costs memory: it is the point
                warnings.simplefilter("ignore")
                interpreter = module.Interpreter(model_content=self._content, experimental_op_resolver_type=resolver,
                                                 experimental_preserve_all_tensors=True, num_threads=self.threads)
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"the {self.role} model cannot be loaded for explain: {exc}") from None
        inputs = interpreter.get_input_details()
        if len(inputs) != 1 or len(inputs[0]["shape"]) != 4:
            raise ModelError(f"the {self.role} model is not a one-input NHWC image model")
        self._input = inputs[0]
        self._outputs = interpreter.get_output_details()
        return interpreter

    def _activations(self) -> list[TensorInfo]:
        """The graph input and every op output that depends on it, in execution order."""
        details = {int(d["index"]): d for d in self._interpreter.get_tensor_details()}
        ops = [op for op in self._interpreter._get_ops_details()  # noqa: SLF001 - no public API for the plan
               if str(op.get("op_name", "")).upper() != "DELEGATE"]
        live = {int(self._input["index"])}
        found: list[tuple[int, str, int]] = [(int(self._input["index"]), "INPUT", -1)]
        for op in sorted(ops, key=lambda o: int(o["index"])):
            if not any(int(t) in live for t in op.get("inputs", ()) if int(t) >= 0):
                continue  # a constant folded at run time (float16 weights' DEQUANTIZE): not an activation
            for t in op.get("outputs", ()):
                live.add(int(t))
                found.append((int(t), str(op["op_name"]), int(op["index"])))
        graph = []
        for index, op_name, op_index in found:
            d = details[index]
            q = d.get("quantization_parameters", {})
            scales = tuple(float(s) for s in q.get("scales", ()))
            dtype = np.dtype(d["dtype"]).name
            if np.issubdtype(np.dtype(d["dtype"]), np.integer) and not (scales and dtype in _QUANTIZED_DTYPES):
                continue  # shapes, indices, counts: not numbers to compare
            graph.append(TensorInfo(index, str(d["name"]), tuple(int(s) for s in d["shape"]), dtype, op_name,
                                    op_index, len(graph), scales, tuple(int(z) for z in q.get("zero_points", ())),
                                    int(q.get("quantized_dimension", 0))))
        return graph

    def _all_readable(self) -> bool:
        self._invoke(np.zeros(tuple(int(s) for s in self._input["shape"][1:]), np.uint8))
        try:
            for info in self.graph:
                self._interpreter.get_tensor(info.index)
        except ValueError:
            return False
        return True

    def _invoke(self, image: np.ndarray) -> None:
        spec = runtime.TensorSpec(str(self._input["name"]), tuple(int(s) for s in self._input["shape"]),
                                  np.dtype(self._input["dtype"]).name, *self._input["quantization"])
        # The campaign's own arithmetic (runtime.prepare_input), so the bytes are those the search sent.
        tensor = runtime.prepare_input(image[None], spec, self.preprocessing)
        self._interpreter.set_tensor(int(self._input["index"]), np.ascontiguousarray(tensor))
        self._interpreter.invoke()

    def run(self, image: np.ndarray) -> tuple[dict[int, np.ndarray], np.ndarray]:
        """Run one uint8 HWC image; return every activation dequantized (by tensor index) and the output.

        Raises:
            ModelError: the image does not fit the model, or a kept tensor cannot be read.
        """
        expected = tuple(int(s) for s in self._input["shape"][1:])
        if tuple(image.shape) != expected:
            raise ModelError(f"an image of shape {tuple(image.shape)} does not fit the {self.role} model "
                             f"(expects {expected})")
        self._invoke(np.ascontiguousarray(image, np.uint8))
        values: dict[int, np.ndarray] = {}
        for info in self.graph:
            try:
                values[info.index] = dequantize(self._interpreter.get_tensor(info.index), info)
            except ValueError as exc:
                raise ModelError(f"the {self.role} model's tensor {info.name!r} cannot be read: {exc}") from None
        out = self._outputs[0]
        raw = self._interpreter.get_tensor(int(out["index"]))
        scale, zero = out["quantization"]
        probs = (raw.astype(np.float64) - zero) * scale if scale else raw.astype(np.float64)
        return values, probs.reshape(-1)


class DeviceGraphRunner:
    """The compressed side measured on an agent (``GetTensors``): the device's own kernels and delegate.

    The graph (which tensors are activations, their quantization) is read from the model here, on
    a local :class:`GraphRunner` that never runs; the same bytes give the same tensor indices on the
    device. A first call on a blank image learns which activations the device's delegate hides;
    those are left out of :attr:`graph`, so they are reported as unmatched rather than compared.

    Args:
        session: a loaded session offering ``tensors(image, indices=...)`` (``RemoteSession``, ``AdbSession``).
        content, delegate, preprocessing, role, threads: as for :class:`GraphRunner`.
        device: the target URI, for messages and the output.

    Raises:
        ModelError: the model cannot be read here.
        host.errors.TargetError: the agent refused or failed the call.
    """

    def __init__(self, session: Any, content: bytes, delegate: str, preprocessing: runtime.Preprocessing,
                 role: str, device: str, threads: int | None = None) -> None:
        self.role = role
        self.device = device
        self._session = session
        local = GraphRunner(content, "cpu", preprocessing, role, threads)
        self._output_index = int(local._outputs[0]["index"])  # noqa: SLF001 - the same runner module's state
        self._output_quantization = tuple(local._outputs[0]["quantization"])  # noqa: SLF001
        self._shape = tuple(int(s) for s in local._input["shape"][1:])  # noqa: SLF001
        probe = self._read(np.zeros(self._shape, np.uint8), local.graph)
        self.kernels = probe.delegate or delegate
        self.hidden = [info.name for info in local.graph if info.index in probe.hidden]
        self.graph = [info for info in local.graph if info.index not in probe.hidden]
        self.outputs_identical = probe.outputs_identical
        self.note = probe.note

    def _read(self, image: np.ndarray, graph: list[TensorInfo]) -> Any:
        indices = [info.index for info in graph]
        if self._output_index not in indices:
            indices.append(self._output_index)
        return self._session.tensors(image, indices=indices)

    def run(self, image: np.ndarray) -> tuple[dict[int, np.ndarray], np.ndarray]:
        """Run one uint8 HWC image on the agent; return every kept activation dequantized and the output.

        Raises:
            ModelError: the image does not fit, or the agent hid a tensor it returned before.
        """
        if tuple(image.shape) != self._shape:
            raise ModelError(f"an image of shape {tuple(image.shape)} does not fit the {self.role} model "
                             f"(expects {self._shape})")
        got = self._read(np.ascontiguousarray(image, np.uint8), self.graph)
        values: dict[int, np.ndarray] = {}
        for info in self.graph:
            if info.index not in got.by_index:
                raise ModelError(f"the agent at {self.device} did not return the {self.role} model's tensor "
                                 f"{info.name!r} this time ({got.note or 'no reason given'})")
            values[info.index] = dequantize(got.by_index[info.index][1], info)
        if self._output_index in got.by_index:
            raw = got.by_index[self._output_index][1]
            scale, zero = self._output_quantization
            probs = (raw.astype(np.float64) - zero) * scale if scale else raw.astype(np.float64)
        else:  # the delegate hides even the output: the session's own answer
            probs = self._session.infer(image[None]).astype(np.float64)
        return values, probs.reshape(-1)

    def close(self) -> None:
        """Unload the model on the agent."""
        self._session.close()
