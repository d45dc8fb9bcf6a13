"""Per-image latency of a session, measured as TFLite's ``benchmark_model`` measures it.

Untimed warm-up runs first (the first invocations pay for allocation, XNNPACK weight packing and
cold caches), then timed runs, one ``session.infer`` of one batch each; a run's time divided by its
batch size is one per-image sample, and timed runs cycle over the seed batches until at least
``min_runs`` samples exist. Two figures:

* the interpreter's own ``invoke()`` time as the target reports it (a local session's
  ``runner.last_invoke_s``, or a remote session's ``last_invoke_ms``): benchmark_model's figure,
  free of preprocessing, transport and output copies (``source`` ``"invoke"``); a target that reports
  nothing falls back to the host's wall clock (``source`` ``"host"``);
* the host's wall clock around each ``infer`` call (what a caller of the target pays, including
  preprocessing and, for a remote target, the RPC).

Used by ``dflare compare`` and by the lab's per-combination latency.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from host.targets.base import Session

#: Untimed runs before timing starts: benchmark_model's default is 1; the second covers XNNPACK's
#: lazy weight packing and a batch-size change (tensor re-allocation) after the first call.
DEFAULT_WARMUP_RUNS = 2

#: Minimum timed runs per column: benchmark_model's default ``num_runs`` (50), enough for a p90.
DEFAULT_MIN_RUNS = 50

#: Images per ``infer`` call. 1 matches benchmark_model's per-invocation latency.
DEFAULT_BATCH_SIZE = 1

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


def reported_invoke_ms(session: Session) -> float | None:
    """The target's own timing of the last ``infer`` call's ``invoke()``, in ms, if it reports one."""
    value = session.last_invoke_ms
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
