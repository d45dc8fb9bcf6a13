"""The Target contract: where a model runs. Engines receive targets; they never build them.

A :class:`Target` loads a :class:`ModelSpec` and returns a :class:`Session`; a session takes a
uint8 NHWC batch and returns float32 probabilities of shape (N, classes). ``local.py`` runs the
interpreter in this process, ``remote.py`` talks to a ``dflare-agent`` over gRPC. Both produce
bit-identical outputs for the same model, delegate and batch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from device_agent.runtime import Preprocessing, TensorSpec, parse_delegate
from host.errors import ConfigError, ModelError

#: Seconds to wait for a device's agent to accept a connection: an agent on loopback or a forwarded
#: port answers in milliseconds; 10 s covers a phone waking up, and a dead agent costs this much per attempt.
DEFAULT_CONNECT_TIMEOUT_S: float = 10.0


@dataclass(frozen=True)
class ModelSpec:
    """A model and how to run it: its bytes, delegate, thread count and preprocessing."""

    content: bytes = field(repr=False)
    name: str = "model"
    delegate: str = "cpu"
    threads: int | None = None
    preprocessing: Preprocessing = field(default_factory=Preprocessing)

    def __post_init__(self) -> None:
        try:
            parse_delegate(self.delegate)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @classmethod
    def from_path(
        cls,
        path: str | Path,
        delegate: str = "cpu",
        threads: int | None = None,
        preprocessing: Preprocessing | None = None,
    ) -> ModelSpec:
        """Read a .tflite file; preprocessing defaults to the model's own metadata, if any.

        Raises:
            ModelError: the file is missing or unreadable.
        """
        path = Path(path)
        try:
            content = path.read_bytes()
        except FileNotFoundError:
            raise ModelError(f"model file not found: {path}") from None
        except OSError as exc:
            raise ModelError(f"cannot read model file {path}: {exc.strerror}") from None
        if preprocessing is None:
            from host.tflite.metadata import preprocessing_for

            preprocessing = preprocessing_for(path, content) or Preprocessing()
        return cls(content, path.name, delegate, threads, preprocessing)

    def with_options(self, delegate: str | None = None, threads: int | None = None) -> ModelSpec:
        return ModelSpec(self.content, self.name, delegate or self.delegate,
                         threads if threads is not None else self.threads, self.preprocessing)

    def describe(self) -> dict:
        return {"name": self.name, "sha256": self.sha256, "bytes": len(self.content),
                "delegate": self.delegate, "threads": self.threads,
                "preprocessing": self.preprocessing.to_dict()}


@runtime_checkable
class Session(Protocol):
    """A model loaded on a target: the whole contract, as TFLite's ``BenchmarkResults`` states its figures.

    Every session has every attribute; a figure the target cannot know is ``None``, never missing.

    Attributes:
        model: what was loaded (bytes, delegate, threads, preprocessing).
        input_spec: the input tensor (N, H, W, C) and its quantization.
        output_specs: the output tensors.
        delegated_nodes: delegate kernels in the execution plan (0 for cpu/ref; None if unknown).
        cpu_ops: ops the delegate left on the CPU kernels (None if unknown).
        last_invoke_ms: the interpreter's own ``invoke()`` time for the last ``infer`` call, in ms
            (benchmark_model's figure: no preprocessing, transport or copies); None before the first call.
        peak_memory_bytes: the peak memory the target measured for this model (None if it measures none).
    """

    model: ModelSpec
    input_spec: TensorSpec
    output_specs: list[TensorSpec]
    delegated_nodes: int | None
    cpu_ops: list[str] | None
    last_invoke_ms: float | None
    peak_memory_bytes: int | None

    def infer(self, images: np.ndarray) -> np.ndarray:
        """Run a uint8 (N,H,W,C) batch; return float32 (N, classes)."""
        ...

    def infer_many(self, batches: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run several batches, each its own interpreter invocation, in order (an agent streams them)."""
        ...

    def close(self) -> None:
        """Release the model on the target."""
        ...


@runtime_checkable
class Target(Protocol):
    """Somewhere models run: this process, or an agent on a device."""

    uri: str

    def info(self) -> dict:
        """Device and runtime facts (runtime, version, delegates, CPU, memory, OS)."""
        ...

    def load(self, model: ModelSpec) -> Session:
        """Load a model; raises ``host.errors.TargetError`` subclasses on failure."""
        ...

    def close(self) -> None:
        """Release every session and connection."""
        ...
