"""Run one model on several targets/delegates and compare them pairwise (``dflare compare``).

Every *column* is one place a model runs: a target URI plus delegate and thread options (the
compressed model), or the original model on its reference target. Each column runs all seeds; for
every pair of columns the comparison reports top-1 disagreements (count and rate), the largest and
the mean absolute difference of the probability vectors, and each column's latency per image
(mean, p50, p90, p99, as TFLite's ``benchmark_model`` reports them) and peak memory when the target
reports it.

Latency is measured the way ``benchmark_model`` does (``host.targets.latency``): ``latency`` is the
interpreter's own ``invoke()`` time when the target reports it, ``host_latency`` the host's wall clock
around each ``infer`` call.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from host.errors import ConfigError, Error, TargetUnreachableError
from host.targets.base import ModelSpec, Session, Target
from host.targets.latency import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MIN_RUNS,
    DEFAULT_WARMUP_RUNS,
    LatencyStats,
    measure_session,
)
from host.targets.spec import LOCAL_TARGET, TargetSpec

#: Label of the original model's column.
ORIGINAL_LABEL = "original"


@dataclass
class Column:
    """One model on one target: its outputs on the seeds, latency and what the target reported."""

    label: str
    spec: TargetSpec
    role: str  # "compressed" or "original"
    model: dict[str, Any]
    probs: np.ndarray | None = None
    latency: LatencyStats | None = None  # benchmark_model-style: the target's invoke() time if reported
    host_latency: LatencyStats | None = None  # the host's wall clock around each infer() call
    peak_memory_bytes: int | None = None
    delegated_nodes: int | None = None
    target_info: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.probs is not None and not self.error

    @property
    def labels(self) -> np.ndarray:
        assert self.probs is not None
        return np.argmax(self.probs, axis=1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "role": self.role,
            "target": self.spec.to_dict(),
            "model": self.model,
            "latency_ms": self.latency.to_dict() if self.latency else None,
            "host_latency_ms": self.host_latency.to_dict() if self.host_latency else None,
            "peak_memory_bytes": self.peak_memory_bytes,
            "delegated_nodes": self.delegated_nodes,
            "target_info": self.target_info,
            "error": self.error,
        }


@dataclass
class PairResult:
    """How two columns differ on the seeds."""

    a: str
    b: str
    seeds: int
    disagreements: int
    max_abs_diff: float
    mean_abs_diff: float
    disagreeing_seeds: list[int]
    search: dict[str, Any] | None = None

    @property
    def rate(self) -> float:
        return self.disagreements / self.seeds if self.seeds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "seeds": self.seeds, "disagreements": self.disagreements,
                "rate": self.rate, "max_abs_diff": self.max_abs_diff, "mean_abs_diff": self.mean_abs_diff,
                "disagreeing_seeds": self.disagreeing_seeds, "search": self.search}


def compare_outputs(a: np.ndarray, b: np.ndarray) -> tuple[int, float, float, list[int]]:
    """Top-1 disagreements and absolute probability differences between two (N, classes) outputs.

    Returns:
        (disagreement count, max |a-b| over all seeds and classes, mean |a-b| over all seeds and
        classes, indices of the disagreeing seeds).

    Raises:
        ValueError: the two outputs have different shapes.
    """
    if a.shape != b.shape:
        raise ValueError(f"outputs differ in shape: {a.shape} vs {b.shape} (models with different class counts?)")
    differ = np.argmax(a, axis=1) != np.argmax(b, axis=1)
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    max_abs = float(diff.max()) if diff.size else 0.0
    mean_abs = float(diff.mean()) if diff.size else 0.0
    return int(differ.sum()), max_abs, mean_abs, [int(i) for i in np.flatnonzero(differ)]


@dataclass
class CompareResult:
    """Every column and every pair; ``to_dict()`` is what ``summary.json`` holds."""

    seeds: int
    columns: list[Column]
    pairs: list[PairResult]
    settings: dict[str, Any] = field(default_factory=dict)

    def pair(self, a: str, b: str) -> PairResult:
        """The pair of two column labels, in either order.

        Raises:
            KeyError: no such pair.
        """
        for p in self.pairs:
            if {p.a, p.b} == {a, b}:
                return p
        raise KeyError(f"no pair {a!r} / {b!r}; columns: {[c.label for c in self.columns]}")

    def matrix(self, key: str = "disagreements") -> list[list[float | None]]:
        """A symmetric label x label matrix of one pair field (``None`` where a column failed)."""
        labels = [c.label for c in self.columns]
        out: list[list[float | None]] = [[None] * len(labels) for _ in labels]
        for i, c in enumerate(self.columns):
            if c.ok:
                out[i][i] = 0
        for p in self.pairs:
            i, j = labels.index(p.a), labels.index(p.b)
            value = p.rate if key == "rate" else getattr(p, key)
            out[i][j] = out[j][i] = value
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "seeds": self.seeds,
            "settings": self.settings,
            "columns": [c.to_dict() for c in self.columns],
            "pairs": [p.to_dict() for p in self.pairs],
            "matrix": {
                "labels": [c.label for c in self.columns],
                "disagreements": self.matrix("disagreements"),
                "rate": self.matrix("rate"),
                "max_abs_diff": self.matrix("max_abs_diff"),
            },
        }


def _unique_labels(specs: Sequence[TargetSpec]) -> list[str]:
    labels: list[str] = []
    for spec in specs:
        label = spec.label
        k = 2
        while label in labels or label == ORIGINAL_LABEL:
            label = f"{spec.label}#{k}"
            k += 1
        labels.append(label)
    return labels


TargetOpener = Callable[[str], Target]


def run_compare(
    model: ModelSpec,
    targets: Sequence[TargetSpec],
    seeds: np.ndarray,
    open_target: TargetOpener,
    original: ModelSpec | None = None,
    original_target: TargetSpec = LOCAL_TARGET,
    batch_size: int = DEFAULT_BATCH_SIZE,
    warmup_runs: int = DEFAULT_WARMUP_RUNS,
    min_runs: int = DEFAULT_MIN_RUNS,
    pair_hook: Callable[[PairResult, Session, Session], None] | None = None,
) -> CompareResult:
    """Run ``model`` on every target spec (and ``original`` on ``original_target``), then compare pairs.

    A column whose target cannot be opened or cannot load the model records the error and is left
    out of the pairs; the others still run.

    Args:
        model: the (compressed) model to run on every target.
        targets: the columns; the same URI may appear with different delegates.
        seeds: uint8 NHWC seed images.
        open_target: builds a Target from a URI (``host.targets.open_target`` with credentials bound).
        original: the original model, added as a reference column when given.
        original_target: where the original model runs.
        batch_size, warmup_runs, min_runs: see :func:`measure_session`.
        pair_hook: called for every pair with both sessions still open (``--search`` uses it).

    Returns:
        The columns and pairs.

    Raises:
        ConfigError: fewer than two columns were asked for.
    """
    jobs: list[tuple[str, TargetSpec, ModelSpec, str]] = []
    if original is not None:
        jobs.append((ORIGINAL_LABEL, original_target, original, "original"))
    for label, spec in zip(_unique_labels(targets), targets):
        jobs.append((label, spec, model, "compressed"))
    if len(jobs) < 2:
        raise ConfigError("compare needs at least two columns: give two or more --targets, or --original")
    opened: dict[str, Target] = {}
    infos: dict[str, dict[str, Any]] = {}
    unreachable: dict[str, str] = {}  # URI -> error: later columns on a dead target fail at once
    sessions: dict[str, Session] = {}
    columns: list[Column] = []
    try:
        for label, spec, m, role in jobs:
            loaded = m.with_options(delegate=spec.delegate, threads=spec.threads)
            column = Column(label, spec, role, loaded.describe())
            columns.append(column)
            if spec.uri in unreachable:
                column.error = unreachable[spec.uri]
                continue
            try:
                if spec.uri not in opened:
                    target = open_target(spec.uri)
                    opened[spec.uri] = target
                    infos[spec.uri] = target.info()
                target = opened[spec.uri]
                column.target_info = infos[spec.uri]
                session = target.load(loaded)
                sessions[label] = session
                column.probs, column.latency, column.host_latency = measure_session(
                    session, seeds, batch_size, warmup_runs, min_runs)
                column.peak_memory_bytes = session.peak_memory_bytes
                column.delegated_nodes = session.delegated_nodes
            except TargetUnreachableError as exc:
                column.error = unreachable[spec.uri] = str(exc)
            except Error as exc:
                column.error = str(exc)
        ok = [c for c in columns if c.ok]
        pairs: list[PairResult] = []
        for a, b in itertools.combinations(ok, 2):
            count, max_abs, mean_abs, idx = compare_outputs(a.probs, b.probs)  # type: ignore[arg-type]
            pair = PairResult(a.label, b.label, int(seeds.shape[0]), count, max_abs, mean_abs, idx)
            if pair_hook is not None:
                pair_hook(pair, sessions[a.label], sessions[b.label])
            pairs.append(pair)
    finally:
        for session in sessions.values():
            _quietly(session.close)
        for target in opened.values():
            _quietly(target.close)
    settings = {"batch_size": batch_size, "warmup_runs": warmup_runs, "min_runs": min_runs}
    return CompareResult(int(seeds.shape[0]), columns, pairs, settings)


def _quietly(fn: Callable[[], Any]) -> None:
    # Cleanup must not hide the real result or error.
    with contextlib.suppress(Exception):
        fn()
