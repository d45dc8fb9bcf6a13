"""Run one model on several targets/delegates and compare them pairwise (``dflare compare``).

Every *column* is one place a model runs: a target URI plus delegate and thread options (the
compressed model), or the original model on its reference target. Each column runs all seeds; for
every pair of columns the comparison reports top-1 disagreements (count and rate), the largest and
the mean absolute difference of the probability vectors, and each column's latency per image
(mean, p50, p90, p99, as TFLite's ``benchmark_model`` reports them) and peak memory when the target
reports it.

Latency is measured the way ``benchmark_model`` does: untimed warm-up runs first (the first
invocations pay for allocation, XNNPACK weight packing and cold caches), then timed runs, one
``session.infer`` of one batch each; a run's time divided by its batch size is one per-image
sample, and timed runs cycle over the seed batches until at least ``min_runs`` samples exist. Two
figures per column:

* ``latency``: the interpreter's own ``invoke()`` time as the target reports it (a local session's
  ``runner.last_invoke_s``, or a remote session's ``last_invoke_ms``): benchmark_model's figure,
  free of preprocessing, transport and output copies. Its ``source`` is ``"invoke"``. A target
  that reports nothing falls back to the host's wall clock (``source`` ``"host"``).
* ``host_latency``: the host's wall clock around each ``infer`` call (what a caller of the target
  pays, including preprocessing and, for a remote target, the RPC).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from host.errors import ConfigError, Error, SeedError, TargetUnreachableError
from host.targets.base import ModelSpec, Session, Target

#: Untimed runs before timing starts: benchmark_model's default is 1; the second covers XNNPACK's
#: lazy weight packing and a batch-size change (tensor re-allocation) after the first call.
DEFAULT_WARMUP_RUNS = 2

#: Minimum timed runs per column: benchmark_model's default ``num_runs`` (50), enough for a p90.
DEFAULT_MIN_RUNS = 50

#: Images per ``infer`` call. 1 matches benchmark_model's per-invocation latency.
DEFAULT_BATCH_SIZE = 1

#: Options a target spec may carry after the URI (``local:,delegate=xnnpack,threads=2``).
TARGET_OPTIONS = ("delegate", "threads", "name")

#: Label of the original model's column.
ORIGINAL_LABEL = "original"


@dataclass(frozen=True)
class TargetSpec:
    """One column of the comparison: where the model runs and with which options.

    Attributes:
        uri: the target URI (``local:``, ``grpc://HOST:PORT``, ``adb://SERIAL``).
        delegate: the delegate to load the model with (``None``: the model's own default, ``cpu``).
        threads: interpreter threads (``None``: the runtime's default).
        name: a display label; empty means one is derived from the URI and options.
    """

    uri: str
    delegate: str | None = None
    threads: int | None = None
    name: str = ""

    @property
    def label(self) -> str:
        """A short display label, e.g. ``local:/xnnpack`` or ``grpc://10.0.0.2:50051/gpu/t2``."""
        if self.name:
            return self.name
        parts = [self.uri, self.delegate or "cpu"]
        if self.threads is not None:
            parts.append(f"t{self.threads}")
        return "/".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, "delegate": self.delegate or "cpu", "threads": self.threads, "label": self.label}


def parse_target_spec(text: str) -> TargetSpec:
    """Parse ``URI[,delegate=NAME][,threads=N][,name=LABEL]``.

    Examples: ``local:,delegate=xnnpack``; ``grpc://127.0.0.1:50051,delegate=ref,threads=2``.

    Raises:
        ConfigError: an empty URI, an option without ``=``, an unknown option, or a bad value.
    """
    uri, *options = [part.strip() for part in text.split(",")]
    if not uri:
        raise ConfigError(f"target spec {text!r} has no URI; expected e.g. local:,delegate=xnnpack")
    if uri == "local":
        uri = "local:"
    values: dict[str, Any] = {}
    for option in options:
        key, sep, value = option.partition("=")
        key = key.strip().lower()
        if not sep or not value.strip():
            raise ConfigError(f"target spec {text!r}: option {option!r} needs a value (KEY=VALUE)")
        if key not in TARGET_OPTIONS:
            raise ConfigError(f"target spec {text!r}: unknown option {key!r}; known: {', '.join(TARGET_OPTIONS)}")
        if key in values:
            raise ConfigError(f"target spec {text!r}: option {key!r} given twice")
        values[key] = value.strip()
    threads = values.get("threads")
    if threads is not None:
        try:
            threads = int(threads)
        except ValueError:
            raise ConfigError(f"target spec {text!r}: threads must be a whole number, got {threads!r}") from None
        if threads <= 0:
            raise ConfigError(f"target spec {text!r}: threads must be positive, got {threads}")
    spec = TargetSpec(uri, values.get("delegate"), threads, values.get("name", ""))
    if spec.delegate is not None:
        from device_agent.runtime import parse_delegate

        try:
            parse_delegate(spec.delegate)
        except ValueError as exc:
            raise ConfigError(f"target spec {text!r}: {exc}") from None
    return spec


@dataclass(frozen=True)
class LatencyStats:
    """Per-image latency in milliseconds over the timed runs (one sample per ``infer`` call)."""

    mean_ms: float
    std_ms: float
    min_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    runs: int
    batch_size: int
    warmup_runs: int
    source: str = "host"  # "invoke": the interpreter's own timing; "host": wall clock around infer()

    @classmethod
    def from_samples(cls, per_image_ms: Sequence[float], batch_size: int, warmup_runs: int,
                     source: str = "host") -> LatencyStats:
        """Summarize per-image samples (each a run's milliseconds divided by its batch size).

        Raises:
            ValueError: no samples.
        """
        if not per_image_ms:
            raise ValueError("latency needs at least one timed run")
        a = np.asarray(per_image_ms, dtype=np.float64)
        p50, p90, p99 = np.percentile(a, [50, 90, 99])
        return cls(float(a.mean()), float(a.std()), float(a.min()), float(p50), float(p90), float(p99),
                   float(a.max()), int(a.size), batch_size, warmup_runs, source)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


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


def load_seed_images(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Read seeds from an ``.npz`` with ``x`` (uint8 NHWC) and optional ``y`` (labels).

    Raises:
        SeedError: the file is missing, not an npz, lacks ``x``, or ``x`` is not uint8 NHWC.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            if "x" not in data.files:
                raise SeedError(f"seed file {path} has no 'x' array (found: {', '.join(data.files) or 'none'})")
            x = data["x"]
            y = data["y"] if "y" in data.files else None
    except FileNotFoundError:
        raise SeedError(f"seed file not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise SeedError(f"cannot read seed file {path} as .npz: {exc}") from None
    if x.dtype != np.uint8 or x.ndim != 4:
        raise SeedError(f"seed images in {path} must be uint8 NHWC, got {x.dtype} with shape {x.shape}")
    return x, y


def reported_invoke_ms(session: Session) -> float | None:
    """The target's own timing of the last ``infer`` call's ``invoke()``, in ms, if it reports one.

    A remote session reports it as ``last_invoke_ms``; a local session through its runner's
    ``last_invoke_s``.
    """
    value = getattr(session, "last_invoke_ms", None)
    if value is None:
        seconds = getattr(getattr(session, "runner", None), "last_invoke_s", None)
        value = None if seconds is None else seconds * 1e3
    if isinstance(value, (int, float)) and math.isfinite(value) and value > 0:
        return float(value)
    return None


def measure_session(
    session: Session,
    seeds: np.ndarray,
    batch_size: int = DEFAULT_BATCH_SIZE,
    warmup_runs: int = DEFAULT_WARMUP_RUNS,
    min_runs: int = DEFAULT_MIN_RUNS,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[np.ndarray, LatencyStats, LatencyStats]:
    """Run every seed through a session, timing each batch after warm-up.

    Args:
        session: a loaded model.
        seeds: uint8 NHWC images.
        batch_size: images per ``infer`` call.
        warmup_runs: untimed calls on the first batch before timing.
        min_runs: timed calls at least; seed batches are cycled until reached.
        clock: a monotonic clock in seconds (injected in tests).

    Returns:
        (outputs for every seed in order, per-image latency (the target's invoke timing when it
        reports one on every call, else the host's), the host's per-image wall-clock latency).

    Raises:
        ValueError: no seeds, or a batch size below 1.
    """
    n = int(seeds.shape[0])
    if n == 0:
        raise ValueError("no seed images to compare on")
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    batches = [seeds[i : i + batch_size] for i in range(0, n, batch_size)]
    for _ in range(warmup_runs):
        session.infer(batches[0])
    outputs: list[np.ndarray] = []
    host_ms: list[float] = []
    invoke_ms: list[float] = []
    runs = max(min_runs, len(batches))
    for k in range(runs):
        batch = batches[k % len(batches)]
        start = clock()
        out = session.infer(batch)
        elapsed_ms = (clock() - start) * 1e3
        host_ms.append(elapsed_ms / len(batch))
        reported = reported_invoke_ms(session)
        if reported is not None:
            invoke_ms.append(reported / len(batch))
        if k < len(batches):
            outputs.append(np.asarray(out, dtype=np.float32))
    probs = np.concatenate(outputs)
    host = LatencyStats.from_samples(host_ms, batch_size, warmup_runs, "host")
    if len(invoke_ms) == runs:
        return probs, LatencyStats.from_samples(invoke_ms, batch_size, warmup_runs, "invoke"), host
    return probs, host, host


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


def _peak_memory(session: Session, target: Target) -> int | None:
    """The peak memory a target reports for a session (``peak_memory_bytes``), if it reports one."""
    for source in (session, target):
        value = getattr(source, "peak_memory_bytes", None)
        if callable(value):
            value = value()
        if isinstance(value, int) and value > 0:
            return value
    return None


TargetOpener = Callable[[str], Target]


def run_compare(
    model: ModelSpec,
    targets: Sequence[TargetSpec],
    seeds: np.ndarray,
    open_target: TargetOpener,
    original: ModelSpec | None = None,
    original_target: TargetSpec = TargetSpec("local:"),
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
                column.peak_memory_bytes = _peak_memory(session, target)
                column.delegated_nodes = getattr(session, "delegated_nodes", None)
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
