"""The programmatic entry point: ``host.search.run(original, compressed, seeds, ...)``.

The CLI (``dflare run``), benchmarks and tests all go through :func:`run`; it builds the
searcher for the chosen algorithm and drives :class:`~host.search.engine.Engine`.
"""

from __future__ import annotations

import time
from dataclasses import replace
from functools import partial
from typing import Callable, Iterator, Sequence

import numpy as np

from host.errors import ConfigError
from host.search.bounds import BoundFilter, PerturbationBound
from host.search.dflare import DEFAULT, ORIGINAL, DFlareConfig, DFlareSearcher
from host.search.diffchaser import DiffChaserSearcher, PixelDiffChaserSearcher
from host.search.engine import MAX_LIVE_SEEDS, MAX_SPECULATION, VERIFY_RUNS, Budget, Engine, Event, SearcherFactory
from host.search.random import RandomSearcher
from host.search.results import SeedResult
from host.search.searcher import SeedContext
from host.targets.base import Session

#: Algorithm names accepted by :func:`run` and ``dflare run --algo``.
ALGORITHMS: tuple[str, ...] = (
    "dflare",  # the corrected algorithm (DESIGN.md section 3)
    "dflare-faithful",  # the original code's behaviour, bugs included
    "dflare-no-mh",  # ablation: uniform operator choice
    "dflare-novelty",  # the default with the paper's novelty term in the fitness (a TensorFuzz corpus)
    "diffchaser",  # the genetic-algorithm baseline, with DFlare's operators and output-difference fitness
    "diffchaser-pixel",  # the same GA with the paper's pixel-level mutation and uncertainty fitness
    "random",  # random operator, always accept
)


#: Each algorithm's revision: bumped whenever its results for the same settings, models and seeds
#: change, so a campaign an earlier version started refuses to resume (``host.store`` names the
#: change) instead of mixing two searches' results. 2 for ``dflare``: the default dropped the novelty
#: term (docs/architecture.md).
SEARCH_REVISIONS: dict[str, int] = {**{name: 1 for name in ALGORITHMS}, "dflare": 2}

#: Options :func:`searcher_factory` (and so :func:`run`) accept beyond the algorithm's name.
ALGO_OPTIONS: tuple[str, ...] = ("population_size", "mutation_rate")


def searcher_factory(algo: str, **options) -> SearcherFactory:
    """Return ``(seed_context, rng) -> searcher`` for an algorithm name.

    Args:
        algo: one of :data:`ALGORITHMS`.
        **options: DiffChaser's ``population_size`` and ``mutation_rate`` (each variant has its own
            defaults).

    Raises:
        ConfigError: an unknown algorithm or option.
    """
    unknown = sorted(set(options) - set(ALGO_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown search option(s) {', '.join(unknown)}; accepted: {', '.join(ALGO_OPTIONS)} "
                          "(the run's random seed is rng_seed=, budgets go in budget=Budget(...))")
    chaser_options = {k: (int(v) if k == "population_size" else float(v)) for k, v in options.items()}
    configs = {
        "dflare": DEFAULT,
        "dflare-faithful": ORIGINAL,
        "dflare-no-mh": replace(DEFAULT, use_mh=False),
        "dflare-novelty": DEFAULT.with_departure("drop_novelty", False),
    }
    if algo in configs:
        return partial(_dflare, config=configs[algo])
    if algo == "diffchaser":
        return partial(DiffChaserSearcher, **chaser_options)
    if algo == "diffchaser-pixel":
        return partial(PixelDiffChaserSearcher, **chaser_options)
    if algo == "random":
        return RandomSearcher
    raise ConfigError(f"unknown search algorithm {algo!r}; expected one of {', '.join(ALGORITHMS)}")


def _dflare(seed: SeedContext, rng: np.random.Generator, config: DFlareConfig) -> DFlareSearcher:
    return DFlareSearcher(seed, rng, config)


def run(
    original: Session,
    compressed: Session,
    seeds: np.ndarray,
    algo: str = "dflare",
    budget: Budget | int | None = None,
    rng_seed: int = 0,
    *,
    labels: Sequence[int] | None = None,
    indices: Sequence[int] | None = None,
    seed_probs: tuple[np.ndarray, np.ndarray] | None = None,
    verify_runs: int = VERIFY_RUNS,
    max_live_seeds: int = MAX_LIVE_SEEDS,
    max_speculation: int = MAX_SPECULATION,
    mutation_threads: int | None = None,
    on_event: Callable[[Event], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    bound: PerturbationBound | None = None,
    ignore_ties: bool = False,
    **algo_options,
) -> Iterator[SeedResult]:
    """Search for triggering inputs; yield one :class:`SeedResult` per seed as it finishes.

    (To read run-wide statistics, build an :class:`Engine` with :func:`searcher_factory` instead.)

    Args:
        original: the original (reference) model's session.
        compressed: the compressed model's session.
        seeds: uint8 (N, H, W, C) (or (N, H, W) grey) seed images.
        algo: one of :data:`ALGORITHMS`.
        budget: a :class:`Budget`, or an int meaning max queries per seed (default 5,000 per seed).
        rng_seed: the run's random seed; seed i's generator derives from (rng_seed, i).
        labels: optional dataset labels (kept in ``extra``).
        indices: the seeds' indices if ``seeds`` is a subset of a larger set.
        seed_probs: both models' probabilities on ``seeds``, when the caller already has them (the
            campaign's agreement check): the seeds are not run again; their check is still counted.
        verify_runs: re-runs a deviation must survive on both models.
        max_live_seeds: seeds searched in lockstep at most.
        max_speculation: candidates DFlare may propose per seed and step (results do not depend on it).
        mutation_threads: threads a step's mutations may be split over (default: the CPUs, at most 8;
            only batches of large images split; results do not depend on it).
        on_event: called with every engine event (started, flaky, triggered, exhausted, skipped).
        clock: monotonic clock (injectable for tests).
        bound: keep every mutant within ``max_linf`` / ``min_ssim`` of its seed (``bounds.py``); the
            results' ``extra["bound"]`` counts projected and rejected mutants.
        ignore_ties: count a deviation only when both models' top-1 labels are unique
            (``host.search.deviation``); default: the top-1 labels differ, as in DFlare.
        **algo_options: ``population_size`` / ``mutation_rate`` for DiffChaser.

    Raises:
        ConfigError: an unknown algorithm or an unusable budget.
        SeedError: seeds that do not fit the models.
    """
    engine = Engine(original, compressed, searcher_factory(algo, **algo_options), algo=algo,
                    budget=Budget.of(budget), rng_seed=rng_seed, verify_runs=verify_runs,
                    max_live_seeds=max_live_seeds, max_speculation=max_speculation,
                    mutation_threads=mutation_threads, clock=clock,
                    candidate_filter=BoundFilter(bound) if bound is not None and bound.active else None,
                    ignore_ties=ignore_ties)
    for event in engine.run(seeds, labels=labels, indices=indices, seed_probs=seed_probs):
        if on_event is not None:
            on_event(event)
        if event.result is not None:
            yield event.result
