"""The campaign figures, defined once and computed from per-seed outcomes.

Units:

* a **query** is one image through one model;
* a **candidate** is one image tried on both models, so a candidate costs
  :data:`QUERIES_PER_CANDIDATE` queries. The DFlare paper and the original code count candidates.

Every figure is over *searched* seeds: a skipped seed (the models already disagree on it, or not
with its label) counts only in ``total_queries``. Per-trigger figures are over the seeds that
triggered: ``queries_per_trigger`` is the mean of their queries, ``candidates_per_trigger`` the mean
of their candidates (with the median, 90th percentile and maximum beside it), and
``total_queries_per_trigger`` is every query of the campaign (failed seeds included) over the
triggered seeds: what a campaign pays for each input found.

``summary.json``, the HTML and JUnit reports, ``dflare compare --search``, the lab history and the
benchmarks all take their numbers from :func:`figures`, so one name means one number everywhere.
This module imports nothing from the rest of ``host``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Protocol

import numpy as np

#: Queries one candidate costs: the original model and the compressed one.
QUERIES_PER_CANDIDATE: int = 2


class Outcome(Protocol):
    """What :func:`figures` reads of a finished seed (a store record or a search result)."""

    status: Any  # a SeedStatus, or its value
    queries: int
    seconds: float


@dataclass(frozen=True)
class Figures:
    """Success and cost of a set of finished seeds (see the module docstring for each definition)."""

    seeds: int
    triggered: int
    flaky: int
    exhausted: int
    skipped: int
    success_rate: float
    queries_per_trigger: float | None
    candidates_per_trigger: float | None
    median_candidates_per_trigger: float | None
    p90_candidates_per_trigger: float | None
    max_candidates_per_trigger: float | None
    seconds_per_trigger: float | None
    total_queries: int
    total_candidates: float
    total_queries_per_trigger: float | None
    total_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def candidates(queries: int | float) -> float:
    """Candidates (images tried on both models) for a query count."""
    return queries / QUERIES_PER_CANDIDATE


def _status(outcome: Outcome) -> str:
    return str(getattr(outcome.status, "value", outcome.status))


def figures(outcomes: Iterable[Outcome]) -> Figures:
    """The figures of finished seeds (skipped seeds count only in ``total_queries``)."""
    outcomes = list(outcomes)
    counts = {"triggered": 0, "flaky": 0, "exhausted": 0, "skipped": 0}
    for outcome in outcomes:
        status = _status(outcome)
        counts[status] = counts.get(status, 0) + 1
    searched = [o for o in outcomes if _status(o) != "skipped"]
    hits = [o for o in searched if _status(o) == "triggered"]
    total_queries = int(sum(o.queries for o in outcomes))
    hit_candidates = np.asarray([candidates(o.queries) for o in hits], dtype=np.float64)

    def stat(fn) -> float | None:
        return float(fn(hit_candidates)) if hits else None

    return Figures(
        seeds=len(searched),
        triggered=len(hits),
        flaky=counts["flaky"],
        exhausted=counts["exhausted"],
        skipped=counts["skipped"],
        success_rate=len(hits) / len(searched) if searched else 0.0,
        queries_per_trigger=float(np.mean([o.queries for o in hits])) if hits else None,
        candidates_per_trigger=stat(np.mean),
        median_candidates_per_trigger=stat(np.median),
        p90_candidates_per_trigger=stat(lambda a: np.percentile(a, 90)),
        max_candidates_per_trigger=stat(np.max),
        seconds_per_trigger=float(np.mean([o.seconds for o in hits])) if hits else None,
        total_queries=total_queries,
        total_candidates=candidates(total_queries),
        total_queries_per_trigger=total_queries / len(hits) if hits else None,
        total_seconds=float(sum(o.seconds for o in outcomes)),
    )
