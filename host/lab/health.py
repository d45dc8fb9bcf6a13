"""Device health check, as LAVA does before a job: the agent answers, and a golden inference matches.

``record_golden`` runs the health model on a trusted target (``local:`` by default) and stores the
outputs; ``check_health`` runs the same model and inputs on a device and compares: the same top-1
label on every input and every probability within ``atol``. A device that fails is taken out of
the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from host.errors import ConfigError, HealthCheckError
from host.lab.config import HealthCheck
from host.seeds import load_seeds
from host.targets.base import ModelSpec, Target


def _run(target: Target, health: HealthCheck) -> np.ndarray:
    x = load_seeds(health.inputs).x
    session = target.load(ModelSpec.from_path(health.model, delegate=health.delegate))
    try:
        return np.asarray(session.infer(x), dtype=np.float32)
    finally:
        session.close()


def record_golden(target: Target, health: HealthCheck) -> Path:
    """Run the health model on ``target`` and write the expected outputs to ``health.expected``."""
    probs = _run(target, health)
    health.expected.parent.mkdir(parents=True, exist_ok=True)
    with health.expected.open("wb") as fh:
        np.savez(fh, probs=probs)
    return health.expected


def check_health(target: Target, health: HealthCheck | None) -> dict[str, Any]:
    """Ask the target for its info, then (if configured) compare a golden inference.

    Returns:
        The target's info (runtime, versions, delegates ...).

    Raises:
        TargetError: the target does not answer (its subclasses: unreachable, auth, ...).
        HealthCheckError: the outputs differ from the recorded ones.
        ConfigError: the expected-outputs file is missing.
    """
    info = target.info()
    if health is None:
        return info
    try:
        with np.load(health.expected) as data:
            expected = data["probs"]
    except FileNotFoundError:
        raise ConfigError(f"golden outputs {health.expected} not found: record them with "
                          "`dflare lab golden LAB.toml` on a trusted target") from None
    except (OSError, KeyError, ValueError) as exc:
        raise ConfigError(f"cannot read golden outputs {health.expected}: {exc}") from None
    actual = _run(target, health)
    if actual.shape != expected.shape:
        raise HealthCheckError(target, f"golden inference gave shape {actual.shape}, recorded {expected.shape}")
    labels_differ = int((actual.argmax(1) != expected.argmax(1)).sum())
    max_diff = float(np.abs(actual - expected).max()) if actual.size else 0.0
    if labels_differ or max_diff > health.atol:
        raise HealthCheckError(
            target, f"golden inference differs from the recorded outputs ({labels_differ} top-1 labels differ, "
            f"max |diff| {max_diff:.3g} > atol {health.atol}); the device is taken out of this run")
    return info
