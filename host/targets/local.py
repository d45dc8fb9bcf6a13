"""LocalTarget: the TFLite interpreter in this process (any delegate the host has)."""

from __future__ import annotations

import os
import platform
from typing import Sequence

import numpy as np

from device_agent import runtime
from device_agent.errors import InputError, ModelFormatError, RuntimeDelegateUnavailableError
from host.errors import DelegateUnavailableError, InvalidRequestError, ModelError
from host.targets.base import ModelSpec


class LocalSession:
    """A model on an in-process interpreter."""

    def __init__(self, target: LocalTarget, model: ModelSpec, runner: runtime.ModelRunner) -> None:
        self.target = target
        self.model = model
        self.runner = runner
        self.input_spec = runner.input_spec
        self.output_specs = runner.output_specs
        self.delegated_nodes: int | None = runner.delegated_nodes
        self.cpu_ops: list[str] | None = list(runner.cpu_ops)
        self.peak_memory_bytes: int | None = None  # one process for host and model: no per-model figure

    @property
    def last_invoke_ms(self) -> float | None:
        seconds = self.runner.last_invoke_s if self.runner is not None else None
        return None if seconds is None else seconds * 1e3

    def infer(self, images: np.ndarray) -> np.ndarray:
        try:
            return self.runner.infer(images)
        except InputError as exc:
            raise InvalidRequestError(self.target, f"{self.model.name}: {exc}") from None

    def infer_many(self, batches: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [self.infer(b) for b in batches]

    def close(self) -> None:
        self.runner = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"LocalSession({self.model.name}, delegate={self.model.delegate})"


class LocalTarget:
    """Runs models in this process. URI: ``local:``.

    Args:
        allowed_external: delegate libraries an ``external:`` delegate may load.
    """

    def __init__(self, allowed_external: Sequence[str] = ()) -> None:
        self.uri = "local:"
        self.allowed_external = tuple(allowed_external)

    def info(self) -> dict:
        rt = runtime.load_runtime()
        return {
            "uri": self.uri,
            "runtime": rt.name,
            "runtime_version": rt.version,
            "delegates": runtime.available_delegates(self.allowed_external),
            "machine": platform.machine(),
            "system": platform.system(),
            "release": platform.release(),
            "cpu_count": os.cpu_count() or 0,
            "python": platform.python_version(),
        }

    def load(self, model: ModelSpec) -> LocalSession:
        try:
            runner = runtime.ModelRunner(
                model.content,
                delegate=model.delegate,
                threads=model.threads,
                preprocessing=model.preprocessing,
                allowed_external=self.allowed_external,
            )
        except ModelFormatError as exc:
            raise ModelError(f"{model.name}: {exc}") from None
        except RuntimeDelegateUnavailableError as exc:
            raise DelegateUnavailableError(self, str(exc)) from None
        return LocalSession(self, model, runner)

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return "LocalTarget(local:)"

    def __str__(self) -> str:
        return self.uri
