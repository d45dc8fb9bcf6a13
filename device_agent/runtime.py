"""One interface over the TFLite Python runtimes (``ai_edge_litert``, else ``tflite_runtime``).

Everything that touches an interpreter goes through :class:`ModelRunner`: the agent's worker
process and the host's in-process ``LocalTarget`` use the same code, so their outputs agree bit
for bit. The host always sends uint8 NHWC images; the runner applies the model's preprocessing
((pixel - mean) / std per channel), quantizes for integer inputs, runs the batch and returns
float32 probabilities, dequantizing integer outputs.

Delegates (``DELEGATE_NAMES``):
    cpu      TFLite's builtin kernels with no default delegate (plain CPU path).
    xnnpack  builtin kernels with the default XNNPACK delegate applied (TFLite's usual CPU path).
    ref      the reference kernels (``BUILTIN_REF`` op resolver): slow, simple, a useful oracle.
    gpu      the GPU delegate library, when present on the device.
    nnapi    the NNAPI delegate library (Android), when present.
    external:PATH  a delegate library loaded with ``load_delegate``; only paths the caller allows.
"""

from __future__ import annotations

import ctypes.util
import functools
import math
import os
import platform
import time
import warnings
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Sequence

import numpy as np

from device_agent.bundled_runtime import bundled_runtime, is_android_library, unavailable_reason
from device_agent.errors import InputError, ModelFormatError, RuntimeDelegateUnavailableError, RuntimeUnavailableError

#: Delegate names accepted by :func:`parse_delegate` (``external:`` takes a path after the colon).
DELEGATE_NAMES = ("cpu", "xnnpack", "ref", "gpu", "nnapi", "external")

#: Shared-library names tried for the GPU and NNAPI delegates, in order.
_GPU_DELEGATE_LIBS = ("libtensorflowlite_gpu_delegate.so", "libLiteRtGpuAccelerator.so")
_NNAPI_DELEGATE_LIBS = ("libtensorflowlite_nnapi_delegate.so", "libnnapi_delegate.so")

#: The first four bytes of a TFLite flatbuffer are its root offset; bytes 4..8 are this identifier.
TFLITE_FILE_IDENTIFIER = b"TFL3"


@dataclass(frozen=True)
class Runtime:
    """The TFLite Python runtime in use."""

    name: str
    version: str
    module: ModuleType = field(repr=False, compare=False)


_RUNTIME: Runtime | None = None


def load_runtime() -> Runtime:
    """Import the interpreter module, preferring ``ai_edge_litert`` over ``tflite_runtime``.

    Returns:
        The runtime's name, version and ``interpreter`` module.

    Raises:
        RuntimeUnavailableError: neither package is installed.
    """
    global _RUNTIME
    if _RUNTIME is not None:
        return _RUNTIME
    try:
        from ai_edge_litert import interpreter as module  # type: ignore[import-not-found]

        version = _package_version("ai-edge-litert")
        _RUNTIME = Runtime("ai_edge_litert", version, module)
    except ImportError:
        try:
            from tflite_runtime import interpreter as module  # type: ignore[import-not-found]
        except ImportError:
            raise RuntimeUnavailableError(
                "no TFLite runtime found: install ai-edge-litert (pip install ai-edge-litert) "
                "or, on platforms without its wheels, tflite-runtime"
            ) from None
        _RUNTIME = Runtime("tflite_runtime", _package_version("tflite-runtime"), module)
    return _RUNTIME


def _package_version(dist: str) -> str:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # noqa: BLE001 - metadata may be missing in a pushed wheelhouse
        return "unknown"


@dataclass(frozen=True)
class Preprocessing:
    """Per-channel normalization applied to uint8 pixels: ``(pixel - mean) / std``.

    One value applies to every channel. The default (mean 0, std 1) feeds raw 0..255 values.
    """

    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if not self.mean or not self.std:
            raise ValueError("preprocessing needs at least one mean and one std value")
        if any(s == 0 for s in self.std):
            raise ValueError(f"preprocessing std must be non-zero, got {self.std}")

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        return cls(tuple(float(v) for v in data.get("mean", (0.0,))),
                   tuple(float(v) for v in data.get("std", (1.0,))))

    def apply(self, images: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Return float32 ``(images - mean) / std``, broadcasting over the channel axis.

        Args:
            images: uint8 NHWC batch.
            out: a float32 array of the same shape to write into; a new array if None.
        """
        mean, std = _normalization(self.mean, self.std, tuple(images.shape[1:]))
        if out is None:
            out = images.astype(np.float32)
        else:
            np.copyto(out, images, casting="unsafe")  # uint8 -> float32 is exact, as astype
        # Per-channel values are tiled over whole images: numpy's inner loop then runs over
        # H*W*C values rather than C, six times faster for RGB and the same arithmetic.
        if out.flags.c_contiguous:
            flat = out.reshape(len(out), -1) if mean.size > 1 else out
        else:  # a strided destination cannot be flattened in place: broadcast per channel
            flat = out
            mean, std = (_per_channel(v, out.shape[-1], what) for v, what in ((self.mean, "mean"), (self.std, "std")))
        flat -= mean
        flat /= std
        return out


@functools.lru_cache(maxsize=32)
def _normalization(mean: tuple[float, ...], std: tuple[float, ...],
                   image_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """float32 mean and std for one image shape: one value each, or tiled to H*W*C values per image."""
    channels = image_shape[-1]
    mean_values = _per_channel(mean, channels, "mean")
    std_values = _per_channel(std, channels, "std")
    if channels == 1 or (np.all(mean_values == mean_values[0]) and np.all(std_values == std_values[0])):
        return mean_values[:1], std_values[:1]
    repeats = math.prod(image_shape) // channels
    tiled = np.tile(mean_values, repeats), np.tile(std_values, repeats)
    for values in tiled:
        values.flags.writeable = False  # shared by every caller through the cache
    return tiled


def _per_channel(values: Sequence[float], channels: int, what: str) -> np.ndarray:
    if len(values) == 1:
        return np.full(channels, values[0], dtype=np.float32)
    if len(values) != channels:
        raise InputError(f"preprocessing {what} has {len(values)} values but images have {channels} channels")
    return np.asarray(values, dtype=np.float32)


@dataclass(frozen=True)
class TensorSpec:
    """What one model input or output looks like."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: float = 0.0
    zero_point: int = 0

    @property
    def quantized(self) -> bool:
        return self.scale != 0.0

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
                "scale": self.scale, "zero_point": self.zero_point}


def needs_preparation(spec: TensorSpec) -> bool:
    """True when uint8 images must be normalized or quantized before they fit the model's input."""
    return not (spec.dtype == "uint8" and not spec.quantized)


def _dequantized(interpreter: Any, index: int, spec: TensorSpec) -> np.ndarray:
    """An output tensor as float32 (a copy), dequantized when the model quantizes it."""
    raw = interpreter.get_tensor(index)
    if spec.quantized:
        out = raw.astype(np.float32)
        out -= spec.zero_point
        out *= spec.scale
        return out
    return raw.astype(np.float32, copy=True)


def prepare_input(images: np.ndarray, spec: TensorSpec, preprocessing: Preprocessing,
                  out: np.ndarray | None = None) -> np.ndarray:
    """Turn a uint8 NHWC batch into the model's input tensor: normalize, then quantize if needed.

    The one definition of the arithmetic, used in the interpreter's process and in the agent
    (which prepares the next batch while the worker runs the current one), so both give the same
    bytes.

    Args:
        images: uint8 NHWC batch.
        spec: the model's input tensor.
        preprocessing: the normalization to apply.
        out: where to write the tensor (shape of ``images``, dtype ``spec.dtype``); a new array if None.

    Raises:
        InputError: the preprocessing does not fit the images' channel count.
    """
    if not needs_preparation(spec):
        if out is None:
            return images
        out[...] = images
        return out
    if out is not None and not spec.quantized and out.dtype == np.float32:
        return preprocessing.apply(images, out=out)  # straight into ``out``: no temporary
    values = preprocessing.apply(images)
    if spec.quantized:
        info = np.iinfo(np.dtype(spec.dtype))
        values /= spec.scale
        values += spec.zero_point
        np.rint(values, out=values)
        np.clip(values, info.min, info.max, out=values)
        return values.astype(spec.dtype) if out is None else _copied(values, out)
    return values.astype(spec.dtype, copy=False) if out is None else _copied(values, out)


def _copied(values: np.ndarray, out: np.ndarray) -> np.ndarray:
    np.copyto(out, values, casting="unsafe")
    return out


def _spec(detail: dict) -> TensorSpec:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return TensorSpec(
        name=str(detail["name"]),
        shape=tuple(int(d) for d in detail["shape"]),
        dtype=np.dtype(detail["dtype"]).name,
        scale=float(scale),
        zero_point=int(zero_point),
    )


@dataclass(frozen=True)
class DelegateChoice:
    """A parsed delegate request: its kind and, for ``external``, the library path."""

    kind: str
    path: str = ""

    def __str__(self) -> str:
        return f"external:{self.path}" if self.kind == "external" else self.kind


def parse_delegate(text: str) -> DelegateChoice:
    """Parse ``cpu|xnnpack|ref|gpu|nnapi|external:/path/lib.so``.

    Raises:
        ValueError: an unknown delegate name, or ``external`` without a path.
    """
    kind, _, path = text.strip().partition(":")
    kind = kind.lower() or "cpu"
    if kind not in DELEGATE_NAMES:
        raise ValueError(f"unknown delegate {text!r}; expected one of cpu, xnnpack, ref, gpu, nnapi, external:PATH")
    if kind == "external" and not path:
        raise ValueError("delegate 'external' needs a library path: external:/path/to/libdelegate.so")
    if kind != "external" and path:
        raise ValueError(f"delegate {kind!r} takes no path (got {text!r})")
    return DelegateChoice(kind, path)


def _find_library(names: Sequence[str]) -> str | None:
    for name in names:
        found = ctypes.util.find_library(name.removeprefix("lib").removesuffix(".so"))
        if found:
            return found
        for directory in ("/system/lib64", "/vendor/lib64", "/system/lib", "/vendor/lib"):
            candidate = os.path.join(directory, name)
            if os.path.exists(candidate):
                return candidate
    return None


def available_delegates(allowed_external: Sequence[str] = ()) -> list[str]:
    """Return the delegates usable here: always cpu/xnnpack/ref, plus gpu/nnapi/external when found.

    In the self-contained Android runtime gpu and nnapi are never listed (they cannot load there:
    :mod:`device_agent.bundled_runtime`), nor are allowed external paths inside Android's partitions.
    """
    names = ["cpu", "xnnpack", "ref"]
    if bundled_runtime() is not None:
        return names + [f"external:{p}" for p in allowed_external if not is_android_library(p)]
    if _find_library(_GPU_DELEGATE_LIBS):
        names.append("gpu")
    if _find_library(_NNAPI_DELEGATE_LIBS):
        names.append("nnapi")
    names.extend(f"external:{p}" for p in allowed_external)
    return names


def check_tflite_bytes(content: bytes) -> None:
    """Reject bytes that are obviously not a TFLite flatbuffer, with a message saying why.

    Raises:
        ModelFormatError: too short, or no ``TFL3`` identifier.
    """
    if len(content) < 8:
        raise ModelFormatError(f"model is {len(content)} bytes, too short to be a TFLite flatbuffer")
    if content[4:8] != TFLITE_FILE_IDENTIFIER:
        raise ModelFormatError(
            f"not a TFLite model: bytes 4..8 are {content[4:8]!r}, expected {TFLITE_FILE_IDENTIFIER!r}"
        )


def _is_delegate_kernel(op: dict) -> bool:
    return str(op.get("op_name", "")).upper() == "DELEGATE"


def _ops_left_on_cpu(ops: list[dict]) -> list[dict]:
    """Return the model's ops that no delegate kernel replaced (they run on the CPU kernels)."""
    covered = _covered_ops(ops)
    return [op for op in ops if not _is_delegate_kernel(op) and int(op["index"]) not in covered]


def hidden_by_delegate(ops: list[dict]) -> set[int]:
    """Tensor indices computed inside a delegate partition: written only in the delegate's own memory.

    A delegate kernel writes out its partition's outputs; the tensors between them live inside the
    delegate (GPU memory, an NNAPI driver) and the interpreter's copies are never filled in.

    Args:
        ops: the interpreter's ``_get_ops_details()``.
    """
    covered = _covered_ops(ops)
    written = {int(t) for op in ops if _is_delegate_kernel(op) for t in op.get("outputs", ())}
    return {int(t) for op in ops if not _is_delegate_kernel(op) and int(op["index"]) in covered
            for t in op.get("outputs", ()) if int(t) >= 0 and int(t) not in written}


def _covered_ops(ops: list[dict]) -> set[int]:
    """Indices of the original ops some delegate kernel replaced.

    ``_get_ops_details()`` lists every original node followed by the ``DELEGATE`` kernels that
    replaced some of them. An original node is replaced when it lies between a delegate kernel's
    input and output tensors, so walk back from each kernel's outputs to its inputs.
    """
    originals = [op for op in ops if not _is_delegate_kernel(op)]
    kernels = [op for op in ops if _is_delegate_kernel(op)]
    by_index = {int(op["index"]): op for op in originals}
    producer = {int(t): int(op["index"]) for op in originals for t in op.get("outputs", ())}
    covered: set[int] = set()
    for kernel in kernels:
        boundary = {int(t) for t in kernel.get("inputs", ())}
        stack = [int(t) for t in kernel.get("outputs", ())]
        seen: set[int] = set()
        while stack:
            tensor = stack.pop()
            if tensor in boundary or tensor in seen:
                continue
            seen.add(tensor)
            index = producer.get(tensor)
            if index is None or index in covered:
                continue
            covered.add(index)
            stack.extend(int(t) for t in by_index[index].get("inputs", ()) if int(t) >= 0)
    return covered


class ModelRunner:
    """A loaded model on one delegate, taking uint8 NHWC batches and returning float32 outputs.

    Args:
        model_content: the .tflite file's bytes.
        delegate: a delegate string (see :func:`parse_delegate`).
        threads: interpreter threads (``None``: the runtime's default).
        preprocessing: normalization for uint8 inputs (``None``: raw pixel values).
        allowed_external: library paths an ``external:`` delegate may name.
        delegate_options: options passed to ``load_delegate`` for gpu/nnapi/external.

    Raises:
        ModelFormatError: the bytes are not a loadable model.
        RuntimeDelegateUnavailableError: the delegate is missing on this device, or not allowed.
        ValueError: an unknown delegate name.
    """

    def __init__(
        self,
        model_content: bytes,
        delegate: str = "cpu",
        threads: int | None = None,
        preprocessing: Preprocessing | None = None,
        allowed_external: Sequence[str] = (),
        delegate_options: dict[str, str] | None = None,
    ) -> None:
        check_tflite_bytes(model_content)
        self.runtime = load_runtime()
        self.delegate = parse_delegate(delegate)
        self.threads = threads
        self.preprocessing = preprocessing or Preprocessing()
        self._content = model_content  # the interpreter reads from this buffer: keep it alive
        self._allowed_external = tuple(allowed_external)
        self._delegate_options = dict(delegate_options or {})
        self._tensor_reader: TensorReader | None = None
        self._interpreter = self._make_interpreter(allowed_external, delegate_options or {})
        try:
            self._interpreter.allocate_tensors()
        except (RuntimeError, ValueError) as exc:
            raise ModelFormatError(f"the runtime could not allocate the model's tensors: {exc}") from None
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        if len(inputs) != 1:
            raise ModelFormatError(f"expected an image classifier with one input, the model has {len(inputs)}")
        self._input_index = int(inputs[0]["index"])
        self._output_indices = [int(o["index"]) for o in outputs]
        self.input_spec = _spec(inputs[0])
        self.output_specs = [_spec(o) for o in outputs]
        # Try resizing the batch dimension; a model that refuses falls back to one image at a time.
        self._batch_resizable = True
        #: Seconds the interpreter's invoke() took in the last infer call (benchmark_model's figure:
        #: no preprocessing or output copies); read by ``dflare compare`` and the benchmarks.
        self.last_invoke_s = 0.0
        self._batch_size = int(self.input_spec.shape[0]) if self.input_spec.shape else 1
        if len(self.input_spec.shape) != 4:
            raise ModelFormatError(f"expected an NHWC image input, the model's input shape is {self.input_spec.shape}")
        self.delegated_nodes, self.cpu_ops = self._delegation_summary()

    # -- construction -------------------------------------------------------------------------
    def _make_interpreter(self, allowed_external: Sequence[str], options: dict[str, str],
                          preserve_all_tensors: bool = False):
        module = self.runtime.module
        resolver = module.OpResolverType
        kwargs: dict = {"model_content": self._content, "num_threads": self.threads}
        if preserve_all_tensors:
            kwargs["experimental_preserve_all_tensors"] = True
        kind = self.delegate.kind
        if kind == "cpu":
            kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        elif kind == "xnnpack":
            kwargs["experimental_op_resolver_type"] = resolver.BUILTIN
        elif kind == "ref":
            kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_REF
        else:
            library = self._delegate_library(allowed_external)
            try:
                loaded = module.load_delegate(library, options)
            except (ValueError, OSError, RuntimeError) as exc:
                hint = ("; this is dflare's self-contained glibc runtime: a delegate built for Android's bionic libc "
                        "cannot load here (docs/android.md)") if bundled_runtime() is not None else ""
                raise RuntimeDelegateUnavailableError(
                    f"delegate {self.delegate} failed to load from {library}: {exc}{hint}"
                ) from None
            kwargs["experimental_delegates"] = [loaded]
            kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        try:
            if not preserve_all_tensors:
                return module.Interpreter(**kwargs)
            with warnings.catch_warnings():  # LiteRT warns that keeping every tensor costs memory: asked for
                warnings.simplefilter("ignore")
                return module.Interpreter(**kwargs)
        except (ValueError, RuntimeError) as exc:
            raise ModelFormatError(f"the runtime rejected the model: {exc}") from None

    def _delegate_library(self, allowed_external: Sequence[str]) -> str:
        kind = self.delegate.kind
        if bundled_runtime() is not None and (kind in ("gpu", "nnapi") or (
                kind == "external" and is_android_library(self.delegate.path))):
            raise RuntimeDelegateUnavailableError(unavailable_reason(str(self.delegate)))
        if kind == "external":
            path = os.path.realpath(self.delegate.path)
            allowed = {os.path.realpath(p) for p in allowed_external}
            if path not in allowed:
                raise RuntimeDelegateUnavailableError(
                    f"external delegate {self.delegate.path!r} is not allowed on this agent; start it with "
                    f"--allow-delegate {self.delegate.path} (allowed now: {sorted(allowed) or 'none'})"
                )
            if not os.path.exists(path):
                raise RuntimeDelegateUnavailableError(f"external delegate library {path} does not exist")
            return path
        library = _find_library(_GPU_DELEGATE_LIBS if kind == "gpu" else _NNAPI_DELEGATE_LIBS)
        if library is None:
            raise RuntimeDelegateUnavailableError(
                f"delegate {kind!r} is not available on this device ({platform.machine()}, {platform.system()}); "
                f"available: {', '.join(available_delegates(allowed_external))}"
            )
        return library

    def _delegation_summary(self) -> tuple[int, list[str]]:
        """Count nodes replaced by a delegate and list the ops left on the CPU kernels."""
        if self.delegate.kind in ("cpu", "ref"):
            return 0, []
        try:
            ops = self._interpreter._get_ops_details()  # noqa: SLF001 - no public API for the plan
        except Exception:  # noqa: BLE001 - older runtimes lack it; report nothing rather than fail
            return 0, []
        delegated = [op for op in ops if _is_delegate_kernel(op)]
        cpu_ops = sorted({str(op.get("op_name")) for op in _ops_left_on_cpu(ops)})
        return len(delegated), cpu_ops

    # -- inference ----------------------------------------------------------------------------
    @property
    def image_shape(self) -> tuple[int, int, int]:
        """The (H, W, C) a single image must have."""
        _, h, w, c = self.input_spec.shape
        return (h, w, c)

    @property
    def num_classes(self) -> int:
        return int(np.prod(self.output_specs[0].shape[1:]))

    def prepare(self, images: np.ndarray) -> np.ndarray:
        """Turn a uint8 NHWC batch into the model's input tensor (preprocess + quantize)."""
        self._check_batch(images)
        if images.dtype != np.uint8:
            return images  # already a typed tensor in the model's own dtype
        return prepare_input(images, self.input_spec, self.preprocessing)

    def _check_batch(self, images: np.ndarray) -> None:
        if images.ndim != 4 or tuple(images.shape[1:]) != self.image_shape:
            raise InputError(
                f"input batch has shape {tuple(images.shape)}, the model expects (N, "
                f"{', '.join(map(str, self.image_shape))})"
            )
        if images.dtype != np.uint8 and images.dtype.name != self.input_spec.dtype:
            raise InputError(
                f"input dtype {images.dtype.name} not accepted: send uint8 images or "
                f"{self.input_spec.dtype} tensors"
            )

    def infer(self, images: np.ndarray) -> np.ndarray:
        """Run a batch and return the first output as float32, shape (N, classes).

        Raises:
            InputError: the batch's shape or dtype does not fit the model.
        """
        return self.infer_all(images)[0]

    def infer_all(self, images: np.ndarray, prepared: bool = False) -> list[np.ndarray]:
        """Run a batch and return every output, dequantized to float32.

        Args:
            images: uint8 NHWC images, or a typed tensor in the model's input dtype.
            prepared: ``images`` is already the model's input tensor (``prepare_input`` ran
                elsewhere, e.g. in the agent while this process ran the previous batch).
        """
        tensor = images if prepared else self.prepare(images)
        n = int(tensor.shape[0])
        if n == 0:
            return [np.zeros((0, *spec.shape[1:]), np.float32) for spec in self.output_specs]
        if self._resize(n):
            self._interpreter.set_tensor(self._input_index, np.ascontiguousarray(tensor))
            start = time.perf_counter()
            self._interpreter.invoke()
            self.last_invoke_s = time.perf_counter() - start
            return [_dequantized(self._interpreter, i, spec)
                    for i, spec in zip(self._output_indices, self.output_specs)]
        # A model whose batch dimension cannot change runs one image at a time.
        per_image, invoke_s = [], 0.0
        for i in range(n):
            per_image.append(self.infer_all(tensor[i : i + 1], prepared=True))
            invoke_s += self.last_invoke_s
        self.last_invoke_s = invoke_s
        return [np.concatenate([p[k] for p in per_image]) for k in range(len(self.output_specs))]

    def _resize(self, n: int) -> bool:
        if n == self._batch_size:
            return True
        if not self._batch_resizable:
            return False
        try:
            self._interpreter.resize_tensor_input(self._input_index, [n, *self.image_shape])
            self._interpreter.allocate_tensors()
        except (RuntimeError, ValueError):
            self._batch_resizable = False
            self._interpreter.resize_tensor_input(self._input_index, [self._batch_size, *self.image_shape])
            self._interpreter.allocate_tensors()
            return n == self._batch_size
        self._batch_size = n
        return True

    # -- intermediate tensors -----------------------------------------------------------------
    def tensor_reader(self) -> TensorReader:
        """The same model on a second interpreter that keeps every tensor, built on first use.

        Raises:
            ModelFormatError, RuntimeDelegateUnavailableError: as at construction.
        """
        if self._tensor_reader is None:
            self._tensor_reader = TensorReader(self)
        return self._tensor_reader


@dataclass(frozen=True)
class ReadTensor:
    """One tensor read from an interpreter: its raw values and how to dequantize them."""

    name: str
    index: int
    array: np.ndarray
    scales: tuple[float, ...] = ()
    zero_points: tuple[int, ...] = ()
    quantized_dimension: int = 0


@dataclass(frozen=True)
class TensorReadout:
    """The tensors of one image, those that could not be read, and what to tell a person about them."""

    tensors: list[ReadTensor]
    hidden: list[tuple[str, int]]
    note: str
    outputs_identical: bool
    invoke_latency_us: int


class TensorReader:
    """A runner's model on an interpreter built with ``experimental_preserve_all_tensors=True``.

    Same bytes, delegate (a fresh instance of it), options and threads as the runner: the tensors
    come from the device's own kernels. A delegate computes the tensors inside each of its partitions
    in its own memory and writes out only the partition's outputs; those inner tensors are *hidden*
    (:func:`hidden_by_delegate`), as is any tensor the interpreter refuses to read.

    Args:
        runner: the session's runner (its interpreter stays as it is, without kept tensors).

    Raises:
        ModelFormatError, RuntimeDelegateUnavailableError: the interpreter cannot be built.
    """

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner
        self._interpreter = runner._make_interpreter(runner._allowed_external, runner._delegate_options,  # noqa: SLF001
                                                     preserve_all_tensors=True)
        input_index = runner._input_index  # noqa: SLF001 - the same model: the same tensor indices
        if runner.input_spec.shape[0] != 1:
            self._interpreter.resize_tensor_input(input_index, [1, *runner.image_shape])
        try:
            self._interpreter.allocate_tensors()
        except (RuntimeError, ValueError) as exc:
            raise ModelFormatError(f"the runtime could not allocate the model's tensors: {exc}") from None
        self._details = {int(d["index"]): d for d in self._interpreter.get_tensor_details()}
        try:
            ops = self._interpreter._get_ops_details()  # noqa: SLF001 - no public API for the plan
        except Exception:  # noqa: BLE001 - older runtimes lack it: nothing is known to be hidden
            ops = []
        self.delegate_kernels = sum(1 for op in ops if _is_delegate_kernel(op))
        self.hidden = hidden_by_delegate(ops)
        #: Every activation in execution order: the graph's inputs, then each op's outputs.
        self.activations: list[int] = []
        for index in [int(d["index"]) for d in self._interpreter.get_input_details()] + [
                int(t) for op in sorted((o for o in ops if not _is_delegate_kernel(o)), key=lambda o: int(o["index"]))
                for t in op.get("outputs", ())]:
            if index >= 0 and index not in self.activations:
                self.activations.append(index)

    def select(self, names: Sequence[str] = (), indices: Sequence[int] = ()) -> list[int]:
        """The tensor indices asked for (every activation when both are empty), in the order asked.

        Raises:
            InputError: a name or index the model does not have (the message lists them).
        """
        if not names and not indices:
            return list(self.activations)
        by_name: dict[str, list[int]] = {}
        for index, detail in self._details.items():
            by_name.setdefault(str(detail["name"]), []).append(index)
        unknown_names = [n for n in names if n not in by_name]
        unknown_indices = [i for i in indices if int(i) not in self._details]
        if unknown_names or unknown_indices:
            parts = []
            if unknown_names:
                quoted = ", ".join(repr(_elided(n)) for n in unknown_names[:_UNKNOWN_LISTED])
                extra = len(unknown_names) - _UNKNOWN_LISTED
                more = f" and {extra} more" if extra > 0 else ""
                parts.append(f"{len(unknown_names)} tensor name(s) not in the model: {quoted}{more}")
            if unknown_indices:
                listed = ", ".join(str(i) for i in unknown_indices[:_UNKNOWN_LISTED])
                parts.append(f"tensor index(es) {listed} not in the model (it has {len(self._details)} tensors, "
                             f"0..{len(self._details) - 1})")
            raise InputError("; ".join(parts) + "; leave names and indices empty for every activation")
        selected: list[int] = []
        for index in [i for n in names for i in by_name[n]] + [int(i) for i in indices]:
            if index not in selected:
                selected.append(index)
        return selected

    def nbytes(self, indices: Sequence[int]) -> int:
        """Bytes of data the tensors ``indices`` hold (hidden ones count nothing: they are not sent)."""
        total = 0
        for index in indices:
            if index not in self.hidden:
                detail = self._details[index]
                total += math.prod(int(d) for d in detail["shape"]) * np.dtype(detail["dtype"]).itemsize
        return total

    def read(self, images: np.ndarray, indices: Sequence[int]) -> TensorReadout:
        """Run one image (uint8 or the model's input dtype, shape (1, H, W, C)) and read ``indices``.

        Also runs the image on the runner's own interpreter, to say whether keeping every tensor
        changed the outputs (a delegate may plan the graph differently then).

        Raises:
            InputError: the image does not fit the model, or is not one image.
        """
        if images.ndim != 4 or images.shape[0] != 1:
            raise InputError(f"GetTensors takes one image, shape (1, {', '.join(map(str, self.runner.image_shape))}); "
                             f"got shape {tuple(images.shape)}")
        tensor = np.ascontiguousarray(self.runner.prepare(images))
        self._interpreter.set_tensor(self.runner._input_index, tensor)  # noqa: SLF001
        start = time.perf_counter()
        self._interpreter.invoke()
        invoke_us = int((time.perf_counter() - start) * 1e6)
        read, hidden, unreadable = [], [], 0
        for index in indices:
            detail = self._details[index]
            name = str(detail["name"])
            if index in self.hidden:
                hidden.append((name, index))
                continue
            try:
                array = np.array(self._interpreter.get_tensor(index))  # a copy: the next invoke overwrites it
            except ValueError:
                hidden.append((name, index))
                unreadable += 1
                continue
            q = detail.get("quantization_parameters", {}) or {}
            read.append(ReadTensor(name, index, array, tuple(float(s) for s in q.get("scales", ())),
                                   tuple(int(z) for z in q.get("zero_points", ())),
                                   int(q.get("quantized_dimension", 0))))
        session_outputs = self.runner.infer_all(tensor, prepared=True)
        mine = [_dequantized(self._interpreter, index, spec) for index, spec in
                zip(self.runner._output_indices, self.runner.output_specs)]  # noqa: SLF001
        identical = all(np.array_equal(a, b) for a, b in zip(mine, session_outputs))
        return TensorReadout(read, hidden, self._note(len(indices), len(hidden) - unreadable, unreadable, identical,
                                                      mine, session_outputs), identical, invoke_us)

    def _note(self, asked: int, inside: int, unreadable: int, identical: bool, mine: list[np.ndarray],
              session: list[np.ndarray]) -> str:
        notes = []
        if inside:
            notes.append(f"the {self.runner.delegate} delegate computes {inside} of the {asked} tensors asked for "
                         f"inside its {self.delegate_kernels} partition(s) and never writes them out (listed in "
                         "hidden)")
        if unreadable:
            notes.append(f"{unreadable} of the {asked} tensors asked for cannot be read from the interpreter "
                         "(listed in hidden)")
        if not identical:
            diff = max(float(np.max(np.abs(a - b))) if a.size else 0.0 for a, b in zip(mine, session))
            notes.append(f"keeping every tensor changed the model's outputs (largest difference {diff:.3g}): the "
                         f"{self.runner.delegate} delegate plans the graph differently then, and these tensors "
                         "show that plan")
        return "; ".join(notes)


#: Unknown names or indices quoted in an error message; the rest are counted.
_UNKNOWN_LISTED = 5
#: Longest tensor name quoted in an error message.
_QUOTED_NAME_CHARS = 80


def _elided(text: str) -> str:
    if len(text) <= _QUOTED_NAME_CHARS:
        return text
    keep = (_QUOTED_NAME_CHARS - 30) // 2
    return f"{text[:keep]}...({len(text) - 2 * keep} characters cut)...{text[-keep:]}"
