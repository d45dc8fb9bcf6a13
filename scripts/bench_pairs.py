"""Model pairs for the benchmarks: third-party models from ``../shared/real-models`` and the fixtures.

A pair is an original (float) model, a compressed variant and the seeds both models classify
correctly (the first N such test images, in dataset order). Real pairs read
``../shared/real-models`` beside the project (or ``$DFLARE_REAL_MODELS``); when that folder is
missing they are skipped, and :func:`real_models_dir` says so. Its models carry no normalization
metadata: they take pixel / 255 (``Preprocessing(mean 0, std 255)``, its README).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
#: The real models' folder when $DFLARE_REAL_MODELS is not set.
DEFAULT_REAL_MODELS = ROOT.parent / "shared" / "real-models"
#: The real original and its compressed variants (file stems in the real-models folder).
REAL_ORIGINAL = "conv_fc_mnist"
REAL_VARIANTS = ("conv_fc_mnist_srq_a8w8", "mnist_quantized", "partly_quantized_mnist")
#: Test images read to find seeds: enough for a few hundred that both models get right.
REAL_POOL = 3000
#: Fixture pairs: (model, compressed variant).
FIXTURE_PAIRS = tuple((m, v) for m in ("digits28", "digits32rgb", "digits28wide")
                      for v in ("int8", "dynamic", "float16"))


@dataclass
class Pair:
    """A loaded pair and its seeds."""

    name: str
    kind: str  # "real" or "fixture"
    original: object  # a Session
    compressed: object
    seeds: np.ndarray  # uint8 NHWC
    indices: np.ndarray  # the seeds' indices in the dataset
    labels: np.ndarray


def real_models_dir() -> Path:
    return Path(os.environ.get("DFLARE_REAL_MODELS", DEFAULT_REAL_MODELS))


def pair_names(include_real: bool = True) -> list[str]:
    """Every pair name: ``real:<variant>`` (only when the real models are present) and ``<model>/<variant>``."""
    names = [f"real:{v}" for v in REAL_VARIANTS] if include_real and real_models_dir().is_dir() else []
    return names + [f"{m}/{v}" for m, v in FIXTURE_PAIRS]


def load_pair(name: str, n_seeds: int, delegate: str = "xnnpack", threads: int = 1, target=None) -> Pair:
    """Load a pair by name (``real:<variant>`` or ``<model>/<variant>``) with its first ``n_seeds`` seeds.

    ``target`` runs the compressed model (default: in process); the original always runs in process.

    Raises:
        SystemExit: the real models are missing, or fewer than ``n_seeds`` seeds qualify.
    """
    from device_agent.runtime import Preprocessing
    from host.targets import LocalTarget, ModelSpec

    local = LocalTarget()
    target = target or local
    if name.startswith("real:"):
        folder = real_models_dir()
        if not folder.is_dir():
            raise SystemExit(f"{name}: the real models are not at {folder} (set DFLARE_REAL_MODELS)")
        scale = Preprocessing((0.0,), (255.0,))
        original = local.load(ModelSpec.from_path(folder / f"{REAL_ORIGINAL}.tflite", delegate=delegate,
                                                  threads=threads, preprocessing=scale))
        compressed = target.load(ModelSpec.from_path(folder / f"{name[5:]}.tflite", delegate=delegate,
                                                     threads=threads, preprocessing=scale))
        data = np.load(folder / "mnist_test.npz")
        x, y, kind = data["x"][:REAL_POOL], data["y"][:REAL_POOL], "real"
    else:
        model, variant = name.split("/")
        original = local.load(ModelSpec.from_path(FIXTURES / "models" / f"{model}-float32.tflite",
                                                  delegate=delegate, threads=threads))
        compressed = target.load(ModelSpec.from_path(FIXTURES / "models" / f"{model}-{variant}.tflite",
                                                     delegate=delegate, threads=threads))
        data = np.load(FIXTURES / "seeds" / f"{model}.npz")
        x, y, kind = data["x"], data["y"], "fixture"
    right = np.flatnonzero((original.infer(x).argmax(1) == y) & (compressed.infer(x).argmax(1) == y))
    if right.size < n_seeds:
        raise SystemExit(f"{name}: only {right.size} seeds that both models classify correctly; asked for {n_seeds}")
    chosen = right[:n_seeds]
    return Pair(name, kind, original, compressed, x[chosen], chosen, y[chosen])
