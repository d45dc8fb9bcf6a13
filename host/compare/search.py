"""``dflare compare --search``: run the DFlare search between every pair of compare columns.

The first column of a pair plays the "original" model, the second the "compressed" one: a
triggering input is an image on which the two columns' top-1 labels differ (e.g. XNNPACK vs the
reference kernels, GPU vs CPU). Triggering images of each pair go to
``OUT/<pair>/triggering.npz`` (``x`` uint8 NHWC, ``seed_index``, ``label_a``, ``label_b``).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from host.compare.columns import PairResult
from host.figures import figures
from host.search import run as search_run
from host.search.results import SeedResult, SeedStatus
from host.targets.base import Session


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "column"


def summarize_search(results: list[SeedResult], seconds: float) -> dict[str, Any]:
    """A pair's search figures (``host.figures``: success rate over searched seeds, queries and
    candidates per trigger as means over triggered seeds) plus the wall time and triggering seeds."""
    summary = figures(results).to_dict()
    summary.update(seconds=seconds,
                   triggering_seeds=[r.seed_index for r in results if r.status is SeedStatus.triggered])
    return summary


class PairSearch:
    """A ``pair_hook`` for :func:`host.compare.columns.run_compare` that searches between the two sessions.

    Args:
        seeds: uint8 NHWC seed images (the same the comparison ran on).
        labels: their dataset labels (kept in each result's ``extra``), or ``None``.
        algo: the search algorithm name.
        max_queries: per-seed query budget.
        timeout_s: per-seed time budget in seconds, or ``None``.
        seed: the search's random seed.
        out: folder for each pair's triggering inputs.
    """

    def __init__(self, seeds: np.ndarray, labels: np.ndarray | None, algo: str = "dflare",
                 max_queries: int | None = 500, timeout_s: float | None = None, seed: int = 0,
                 out: Path | None = None) -> None:
        self.seeds = seeds
        self.labels = labels
        self.algo = algo
        self.max_queries = max_queries
        self.timeout_s = timeout_s
        self.seed = seed
        self.out = out
        self._run = search_run

    def __call__(self, pair: PairResult, session_a: Session, session_b: Session) -> None:
        start = time.monotonic()
        from host.search import Budget

        budget = Budget(max_queries=self.max_queries, max_seconds=self.timeout_s)
        labels = None if self.labels is None else [int(v) for v in self.labels]
        results = list(self._run(session_a, session_b, self.seeds, algo=self.algo, budget=budget,
                                 rng_seed=self.seed, labels=labels))
        pair.search = summarize_search(results, time.monotonic() - start)
        if self.out is not None:
            pair.search["artifacts"] = str(self._save(pair, results))

    def _save(self, pair: PairResult, results: list[SeedResult]) -> Path:
        folder = self.out / f"{_slug(pair.a)}__vs__{_slug(pair.b)}"  # type: ignore[operator]
        folder.mkdir(parents=True, exist_ok=True)
        hits = [r for r in results if r.status is SeedStatus.triggered and r.image is not None]
        shape = self.seeds.shape[1:]
        np.savez_compressed(
            folder / "triggering.npz",
            x=np.stack([r.image for r in hits]) if hits else np.zeros((0, *shape), np.uint8),
            seed_index=np.array([r.seed_index for r in hits], np.int64),
            label_a=np.array([-1 if r.label_original is None else r.label_original for r in hits], np.int64),
            label_b=np.array([-1 if r.label_compressed is None else r.label_compressed for r in hits], np.int64),
        )
        return folder
