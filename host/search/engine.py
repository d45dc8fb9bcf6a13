"""The batched lockstep engine: many seeds at once, one batch per model per step.

Each step asks every live seed's searcher for its next candidate(s), applies all their mutation
steps in one vectorized call, sends ONE batch to the original session and ONE to the compressed
session (on two threads once a batch is large enough to gain from it), and feeds each seed its
rows back. Every query goes
through :meth:`Engine.evaluate`, which counts queries per seed and for the campaign and enforces
the campaign budget; per-seed budgets are checked before a seed proposes.

Determinism: each seed has its own ``numpy.random.Generator`` derived from ``(rng_seed,
seed_index)``, and a searcher sees only its own rows, so a seed's candidates, query count and
result are the same whether it runs alone or beside a thousand others, as long as a model's output
for an image does not depend on the rest of the batch: true for XNNPACK, the reference kernels and
integer models; TFLite's builtin float kernels (delegate ``cpu``) round a row differently, by one
float32 ulp, with its position in the batch. Time budgets depend on the machine.

Speculation: when few seeds are live, DFlare searchers propose several candidates per step as if
each earlier one were rejected, and roll back exactly at the first kept one (``searcher.py``), so
the last, hardest seeds of a run still fill a batch. Results and counted queries are those of the
one-candidate-at-a-time algorithm; the unconsumed candidates' inference is counted apart.

Accounting: one query = one image through one model. A seed's ``queries`` are those its algorithm
consumed, including the two spent checking the seed itself; re-verification and speculative
queries are counted apart (``extra["verify_queries"]``, ``extra["speculative_queries"]``). The
campaign query budget caps all search inference (consumed + speculative).
A step's wall time is shared among its seeds in proportion to their queries, and a seed's time
budget reads that share, so it means "seconds spent on this seed" as in the sequential original.

Every deviation is re-run ``verify_runs`` times on both sessions before it is reported: one that
does not disagree on every re-run is kept as *flaky* (an event) and the seed's search goes on; a
seed whose budget runs out after a flaky deviation ends with status ``flaky``. The re-runs travel
with the next step's batch, in the same ``infer_many`` call per model (each batch its own
interpreter invocation), so verifying costs an agent no round trip of its own; the seed proposes
nothing while it waits, so its search is the same as if it had been judged at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np

from host.errors import ConfigError, ModelError, SeedError
from host.figures import QUERIES_PER_CANDIDATE as QUERIES_PER_IMAGE
from host.memory import reuse_freed_buffers
from host.search import deviation, mutations
from host.search.results import SeedResult, SeedStatus
from host.search.searcher import Candidate, Searcher, SeedContext
from host.targets.base import Session

if TYPE_CHECKING:
    from host.search.bounds import BoundFilter

log = logging.getLogger(__name__)

#: Re-runs that must all disagree before a deviation is reported (catches non-deterministic delegates).
VERIFY_RUNS: int = 3
#: The fewest re-runs the engine accepts: a deviation nobody re-ran is not a verified one.
MIN_VERIFY_RUNS: int = 1
#: Seeds searched in lockstep at most. 256 amortizes per-call overhead (RPC, interpreter resize) well
#: while a step's batch stays small: 256 DFlare candidates of 32x32x3 are 786 KB, under gRPC's 4 MiB
#: default message size. Seeds beyond it wait and start as others finish.
MAX_LIVE_SEEDS: int = 256
#: Speculation (see ``searcher.py``): a speculative searcher may propose up to SPECULATION_BATCH / live
#: seeds candidates per step, so the last seeds of a run (often the hard ones) still fill a batch of
#: ~64 instead of crawling one image per call; capped at MAX_SPECULATION because every candidate after
#: an accepted one is wasted inference, and accepted ones come every few candidates on a fresh seed.
SPECULATION_BATCH: int = 64
MAX_SPECULATION: int = 16
#: A batch smaller than this (pixel values) runs the two models one after the other on this thread:
#: handing a small batch to a second thread costs more (~30-50 us) than running it in parallel saves.
PARALLEL_INFER_MIN_VALUES: int = 8192
#: Threads a step's mutations may use at most (``mutations.apply_parallel``; only large batches split).
MAX_MUTATION_THREADS: int = 8
#: Per-seed query budget when none is given: the issue's acceptance bar (5,000 queries per seed).
DEFAULT_MAX_QUERIES: int = 5000

SearcherFactory = Callable[[SeedContext, np.random.Generator], Searcher]


class ExitReason(Enum):
    """Why a seed's search (or the whole campaign) stopped."""

    triggered = "a deviation was found and reproduced on every re-run"
    max_queries = "the seed's query budget is spent"
    max_seconds = "the seed's time budget is spent"
    campaign_max_queries = "the campaign's query budget is spent"
    campaign_max_seconds = "the campaign's time budget is spent"
    skipped = "the two models already disagree on the seed"
    finished = "nothing left to do"

    def describe(self) -> str:
        return self.value


@dataclass(frozen=True)
class Budget:
    """Limits per seed and per campaign; ``None`` means unlimited.

    Args:
        max_queries: queries per seed (one image through one model = 1).
        max_seconds: seconds spent on one seed (its share of each step).
        campaign_max_queries: search queries for the whole run.
        campaign_max_seconds: wall-clock seconds for the whole run.
    """

    max_queries: int | None = DEFAULT_MAX_QUERIES
    max_seconds: float | None = None
    campaign_max_queries: int | None = None
    campaign_max_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.max_queries is None and self.max_seconds is None and self.campaign_max_queries is None \
                and self.campaign_max_seconds is None:
            raise ConfigError("a search needs a budget: give max queries or seconds, per seed or per campaign")
        for name in ("max_queries", "campaign_max_queries"):
            value = getattr(self, name)
            if value is not None and value < QUERIES_PER_IMAGE:
                raise ConfigError(f"budget {name}={value} is too small: one candidate costs {QUERIES_PER_IMAGE}")
        for name in ("max_seconds", "campaign_max_seconds"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"budget {name} must be positive seconds, got {value}")

    @classmethod
    def of(cls, value: Budget | int | None) -> Budget:
        """A budget from a :class:`Budget`, an int (max queries per seed) or None (the default)."""
        if value is None:
            return cls()
        if isinstance(value, Budget):
            return value
        return cls(max_queries=int(value))


class EventKind(str, Enum):
    """What happened; ``triggered``, ``exhausted`` and ``skipped`` carry the seed's final result."""

    started = "started"
    flaky = "flaky"  # a deviation that did not reproduce; the seed's search goes on
    triggered = "triggered"
    exhausted = "exhausted"  # budget spent; result.status is exhausted, or flaky after a flaky deviation
    skipped = "skipped"


@dataclass(frozen=True)
class Event:
    """One engine event, for progress bars and storage."""

    kind: EventKind
    seed_index: int
    result: SeedResult | None = None
    detail: dict = field(default_factory=dict)

    @property
    def final(self) -> bool:
        return self.result is not None


class RunIsComplete(Exception):
    """Raised by :meth:`Engine.exit_with` to stop the campaign loop."""


def seed_rng(rng_seed: int, seed_index: int) -> np.random.Generator:
    """The generator of one seed: a function of the run's seed and the seed's index only."""
    return np.random.default_rng(np.random.SeedSequence([int(rng_seed), int(seed_index)]))


@dataclass
class _Suspect:
    """A seed's first deviation of a step: re-run with the next step's batch, then judged."""

    image: np.ndarray
    candidate: Candidate
    probs_original: np.ndarray  # the deviating row's outputs
    probs_compressed: np.ndarray
    candidates: list[Candidate]  # the step's candidates and their outputs: a batch algorithm observes
    step_probs: tuple[np.ndarray, np.ndarray]  # them all when the deviation turns out flaky


@dataclass
class _SeedRun:
    """One seed's bookkeeping inside the engine."""

    index: int
    image: np.ndarray
    dataset_label: int | None
    rng: np.random.Generator
    queries: int = 0
    verify_queries: int = 0
    speculative_queries: int = 0
    width: int = 1  # candidates to propose per step when speculating (see Engine._speculation)
    seconds: float = 0.0
    steps: int = 0
    context: SeedContext | None = None
    searcher: Searcher | None = None
    flaky: list[dict] = field(default_factory=list)
    first_flaky: tuple | None = None  # (image, trace, probs_o, probs_c, reproduced)
    known_probs: tuple[np.ndarray, np.ndarray] | None = None  # the seed's outputs, if the caller had them
    suspect: _Suspect | None = None  # a deviation waiting for its re-runs (the seed proposes nothing meanwhile)


class Engine:
    """Runs a search algorithm over many seeds in lockstep.

    Args:
        original: the reference model's session.
        compressed: the compressed model's session.
        make_searcher: builds one seed's searcher from its context and generator.
        algo: the algorithm's name, stored in results.
        budget: per-seed and campaign limits (an int: max queries per seed; None: 5,000 per seed).
        rng_seed: the run's seed; each seed's generator derives from it and the seed's index.
        verify_runs: re-runs on both sessions a deviation must survive.
        max_live_seeds: seeds searched in lockstep at most.
        max_speculation: candidates a speculative searcher may propose per step (1: none); results
            and counted queries do not depend on it.
        mutation_threads: threads a step's mutations may be split over (default: the CPUs, at most
            MAX_MUTATION_THREADS; 1: none). Only batches of large images split; the mutants are the same.
        clock: a monotonic clock in seconds (injectable for tests).
        candidate_filter: a perturbation bound's hook (``bounds.BoundFilter``): projects each step's
            mutants or swaps rejected ones for their parents; its counts go to ``extra["bound"]``.
        ignore_ties: count a deviation only when both models' top-1 labels are unique
            (``deviation.deviates``); default: DFlare's criterion, the top-1 labels differ.
    """

    def __init__(
        self,
        original: Session,
        compressed: Session,
        make_searcher: SearcherFactory,
        *,
        algo: str = "dflare",
        budget: Budget | int | None = None,
        rng_seed: int = 0,
        verify_runs: int = VERIFY_RUNS,
        max_live_seeds: int = MAX_LIVE_SEEDS,
        max_speculation: int = MAX_SPECULATION,
        mutation_threads: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        candidate_filter: BoundFilter | None = None,
        ignore_ties: bool = False,
    ) -> None:
        if verify_runs < MIN_VERIFY_RUNS:
            raise ConfigError(f"verify_runs must be at least {MIN_VERIFY_RUNS}, got {verify_runs}")
        if max_live_seeds < 1:
            raise ConfigError(f"max_live_seeds must be at least 1, got {max_live_seeds}")
        if mutation_threads is not None and mutation_threads < 1:
            raise ConfigError(f"mutation_threads must be at least 1, got {mutation_threads}")
        if rng_seed < 0:
            raise ConfigError(f"the random seed must be a non-negative integer, got {rng_seed}")
        reuse_freed_buffers()  # a step's large temporaries would otherwise cost a page fault per page
        self.original = original
        self.compressed = compressed
        self.make_searcher = make_searcher
        self.algo = algo
        self.budget = Budget.of(budget)
        self.rng_seed = int(rng_seed)
        self.verify_runs = verify_runs
        self.max_live_seeds = max_live_seeds
        self.max_speculation = max(1, int(max_speculation))
        self.mutation_threads = int(mutation_threads) if mutation_threads is not None \
            else max(1, min(os.cpu_count() or 1, MAX_MUTATION_THREADS))
        self.candidate_filter = candidate_filter  # a perturbation bound's hook (bounds.py), or None
        self.ignore_ties = bool(ignore_ties)
        self.clock = clock
        # run state, named by what it counts
        self.total_queries: int = 0
        self.total_verify_queries: int = 0
        self.total_speculative_queries: int = 0  # evaluated candidates the algorithms did not consume
        self.steps: int = 0
        self.batch_calls: int = 0  # interpreter invocations per session (a step's batch, each re-run)
        self.session_calls: int = 0  # infer/infer_many calls per session: each one round trip to an agent
        self.seeds_started: int = 0
        self.seeds_finished: int = 0
        self.seeds_unstarted: int = 0  # seeds never started because the campaign budget ran out
        self.exit_reason: ExitReason | None = None
        self.started_at: float | None = None
        self.statistics: dict[str, float | str] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._mutation_pool: ThreadPoolExecutor | None = None  # helpers of apply_parallel (threads start on use)

    # -- the one exit path ------------------------------------------------------------------
    def exit_with(self, reason: ExitReason) -> None:
        """Stop the campaign for ``reason`` (recorded in ``statistics`` and ``exit_reason``)."""
        self.statistics["stopped-because"] = reason.describe()
        self.exit_reason = reason
        raise RunIsComplete

    @contextlib.contextmanager
    def _phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            key = f"{name}_s"
            self.statistics[key] = float(self.statistics.get(key, 0.0)) + time.perf_counter() - start

    # -- querying ---------------------------------------------------------------------------
    def evaluate(self, images: np.ndarray, verify: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Run a batch through both models: every model query of the engine goes through here.

        Counts the campaign's inference and enforces its query budget; the caller charges each
        seed for the rows its algorithm consumed (see :meth:`_step`).

        Args:
            images: uint8 (N, H, W, C).
            verify: a re-verification batch (outside the search budgets).

        Returns:
            (probs_original, probs_compressed), each float32 (N, classes).

        Raises:
            RunIsComplete: via ``exit_with`` when the batch would exceed the campaign budget.
        """
        cost = QUERIES_PER_IMAGE * len(images)
        if not verify:
            self._check_campaign_queries(cost)
        with self._phase("infer"):
            probs_o, probs_c = self._infer_both(images)
        self.batch_calls += 1
        self.session_calls += 1
        if verify:
            self.total_verify_queries += cost
        self._check_outputs(probs_o, probs_c)
        return probs_o, probs_c

    def _check_campaign_queries(self, cost: int) -> None:
        """Stop the campaign (``RunIsComplete``) when ``cost`` more search queries would exceed its budget."""
        limit = self.budget.campaign_max_queries
        if limit is not None and self.total_queries + self.total_speculative_queries + cost > limit:
            self.exit_with(ExitReason.campaign_max_queries)

    def _rerun(self, images: np.ndarray, runs: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Re-verification: ``runs`` separate invocations of each model on the same images.

        Each run is its own interpreter invocation, as a re-run must be to catch a delegate whose
        outputs change between calls; ``infer_many`` lets an agent take all of them in one stream
        (one round trip instead of ``runs``). Counted as verification queries, outside the budgets.
        """
        pairs = self._infer_batches([images] * runs)
        self.batch_calls += runs
        self.session_calls += 1
        self.total_verify_queries += QUERIES_PER_IMAGE * len(images) * runs
        return pairs

    def _evaluate_with_reruns(self, images: np.ndarray, suspects: np.ndarray
                              ) -> tuple[np.ndarray, np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
        """:meth:`evaluate` of a step's batch and the re-runs of the last step's deviations, in one
        ``infer_many`` per model: one round trip to an agent instead of two. Each batch is its own
        interpreter invocation, as apart; the budgets count the step's batch only."""
        self._check_campaign_queries(QUERIES_PER_IMAGE * len(images))
        pairs = self._infer_batches([images] + [suspects] * self.verify_runs)
        self.batch_calls += 1 + self.verify_runs
        self.session_calls += 1
        self.total_verify_queries += QUERIES_PER_IMAGE * len(suspects) * self.verify_runs
        return pairs[0][0], pairs[0][1], pairs[1:]

    def _infer_batches(self, batches: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each batch through both models, one ``infer_many`` call per model; (original, compressed) per batch."""
        with self._phase("infer"):
            if self.original is self.compressed:
                outs_o = outs_c = self.original.infer_many(batches)
            elif self._pool is None or sum(b.size for b in batches) < PARALLEL_INFER_MIN_VALUES:
                outs_o, outs_c = self.original.infer_many(batches), self.compressed.infer_many(batches)
            else:
                future_o = self._pool.submit(self.original.infer_many, batches)
                try:
                    outs_c = self.compressed.infer_many(batches)
                except BaseException:
                    wait([future_o])
                    raise
                outs_o = future_o.result()
        pairs = list(zip(outs_o, outs_c))
        for probs_o, probs_c in pairs:
            self._check_outputs(probs_o, probs_c)
        return pairs

    def _infer_both(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.original is self.compressed or self._pool is None or images.size < PARALLEL_INFER_MIN_VALUES:
            return self.original.infer(images), self.compressed.infer(images)
        # The original on the helper thread, the compressed model here: one hand-off, not two.
        future_o = self._pool.submit(self.original.infer, images)
        try:
            probs_c = self.compressed.infer(images)
        except BaseException:
            wait([future_o])  # the original's session is not left running when the error propagates
            raise
        return future_o.result(), probs_c

    # -- the campaign -----------------------------------------------------------------------
    def run(self, seeds: np.ndarray, labels: Sequence[int] | None = None, indices: Sequence[int] | None = None,
            seed_probs: tuple[np.ndarray, np.ndarray] | None = None) -> Iterator[Event]:
        """Search every seed; yield events as they happen (final ones carry a ``SeedResult``).

        Args:
            seeds: uint8 (N, H, W, C) seed images.
            labels: optional dataset labels, stored in results' ``extra``.
            indices: the seeds' indices (default 0..N-1); a seed's generator depends on its index,
                so running ``seeds[i:i+1]`` with ``indices=[i]`` reproduces seed i of a larger run.
            seed_probs: (original, compressed) probabilities on ``seeds`` already computed by the
                caller; each seed then starts from them instead of a query batch. Its check is still
                charged (2 queries), so counts do not depend on who ran it.

        Raises:
            SeedError: seeds of the wrong dtype or shape for the models.
            ModelError: the two models' inputs or outputs do not match.
        """
        seeds = self._check_seeds(seeds)
        indices = list(range(len(seeds))) if indices is None else [int(i) for i in indices]
        if len(indices) != len(seeds):
            raise SeedError(f"{len(indices)} indices for {len(seeds)} seeds")
        if labels is not None and len(labels) != len(seeds):
            raise SeedError(f"{len(labels)} labels for {len(seeds)} seeds")
        if seed_probs is not None and not (len(seed_probs[0]) == len(seed_probs[1]) == len(seeds)):
            raise SeedError(f"seed probabilities for {len(seed_probs[0])} and {len(seed_probs[1])} seeds, "
                            f"not {len(seeds)}")
        queue = deque(
            _SeedRun(idx, seeds[i], None if labels is None else int(labels[i]), seed_rng(self.rng_seed, idx),
                     known_probs=None if seed_probs is None else (seed_probs[0][i], seed_probs[1][i]))
            for i, idx in enumerate(indices)
        )
        live: list[_SeedRun] = []
        self.started_at = self.clock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dflare-infer")
        if self.mutation_threads > 1:
            self._mutation_pool = ThreadPoolExecutor(max_workers=self.mutation_threads - 1,
                                                     thread_name_prefix="dflare-mutate")
        try:
            while queue or live:
                events: list[Event] = []
                try:
                    self._check_campaign_time()
                    new = []
                    while queue and len(live) + len(new) < self.max_live_seeds:
                        seed = queue.popleft()
                        new.append(seed)
                        self.seeds_started += 1
                        events.append(Event(EventKind.started, seed.index))
                    live.extend(new)
                    self._step(live, events)
                except RunIsComplete:
                    reason = self.exit_reason or ExitReason.finished
                    done = {e.seed_index for e in events if e.final}
                    waiting = [s for s in live if s.suspect is not None and s.index not in done]
                    if waiting:  # deviations found before the stop are still judged (outside the budgets)
                        self._settle(waiting, self._rerun(self._suspect_images(waiting), self.verify_runs), events)
                        done = {e.seed_index for e in events if e.final}
                    for seed in live:
                        if seed.index not in done:
                            events.append(self._finish(seed, reason))
                    live.clear()
                    self.seeds_unstarted += len(queue)
                    queue.clear()
                finally:
                    live[:] = [s for s in live if not any(e.final and e.seed_index == s.index for e in events)]
                yield from events
            if self.exit_reason is None:
                self.exit_reason = ExitReason.finished
                self.statistics["stopped-because"] = ExitReason.finished.describe()
        finally:
            self._pool.shutdown(wait=True)
            self._pool = None
            if self._mutation_pool is not None:
                self._mutation_pool.shutdown(wait=True)
                self._mutation_pool = None

    def _check_campaign_time(self) -> None:
        limit = self.budget.campaign_max_seconds
        if limit is not None and self.started_at is not None and self.clock() - self.started_at >= limit:
            self.exit_with(ExitReason.campaign_max_seconds)

    def _check_seeds(self, seeds: np.ndarray) -> np.ndarray:
        seeds = np.asarray(seeds)
        if seeds.dtype != np.uint8:
            raise SeedError(f"seed images must be uint8 (0..255 pixels), got {seeds.dtype}")
        if seeds.ndim == 3:
            seeds = seeds[..., None]
        expected = tuple(self.original.input_spec.shape[1:])
        if seeds.ndim != 4 or tuple(seeds.shape[1:]) != expected:
            raise SeedError(f"seed images have shape {seeds.shape[1:]}, the original model expects {expected}")
        other = tuple(self.compressed.input_spec.shape[1:])
        if other != expected:
            raise ModelError(f"the models take different inputs: original {expected}, compressed {other}")
        return seeds

    # -- one lockstep step ------------------------------------------------------------------
    def _speculation(self, seed: _SeedRun, n_live: int) -> int:
        """Candidates a speculative searcher proposes this step.

        The seed's own width grows while its candidates are rejected (doubling) and drops to the
        gap it took to keep one, so a seed that keeps most mutants wastes little; the cap fills a
        batch of ~SPECULATION_BATCH when few seeds are left. Results do not depend on it.
        """
        cap = max(1, min(self.max_speculation, SPECULATION_BATCH // max(1, n_live)))
        return min(seed.width, cap)

    def _step(self, live: list[_SeedRun], events: list[Event]) -> None:
        """One lockstep step: propose, mutate, one batch per model, verify, feed back."""
        step_start = self.clock()
        for seed in live:  # seeds whose outputs the caller already has start without a query
            if seed.searcher is None and seed.context is None and seed.known_probs is not None:
                self._charge(seed, 1, 1)
                self._start(seed, *seed.known_probs, events)
        initial = [seed for seed in live if seed.searcher is None and seed.known_probs is None]
        waiting = [seed for seed in live if seed.suspect is not None]  # last step's deviations, to re-run
        with self._phase("propose"):
            rows = self._propose(live, events)
        by_index = {s.index: s for s in live}
        owners: list[_SeedRun] = initial + waiting
        batch_rows: list[np.ndarray] = [seed.image for seed in initial]
        with self._phase("mutate"):
            flat = [(idx, c) for idx, cands in rows.items() for c in cands]
            if flat:
                mutants = mutations.apply_parallel(np.stack([c.base for _, c in flat]), [c.step for _, c in flat],
                                                   self._mutation_pool, self.mutation_threads)
                if self.candidate_filter is not None:  # project / reject mutants outside the bound
                    mutants = self.candidate_filter([c for _, c in flat], mutants,
                                                    np.stack([by_index[i].image for i, _ in flat]),
                                                    [i for i, _ in flat])
                for (idx, candidate), image in zip(flat, mutants):
                    candidate.image = image
                    owners.append(by_index[idx])
                    batch_rows.append(image)
        suspect_images = self._suspect_images(waiting) if waiting else None
        if not batch_rows:
            if suspect_images is not None:  # only re-runs are left (the campaign's last deviations)
                self._settle(waiting, self._rerun(suspect_images, self.verify_runs), events)
                self._share_time(self.clock() - step_start, owners)
            return
        batch = np.stack(batch_rows)
        self.steps += 1
        if suspect_images is None:
            probs_o, probs_c = self.evaluate(batch)
            reruns = []
        else:
            probs_o, probs_c, reruns = self._evaluate_with_reruns(batch, suspect_images)
        if waiting:
            self._settle(waiting, reruns, events)
        for row, seed in enumerate(initial):
            self._charge(seed, 1, 1)
            self._start(seed, probs_o[row], probs_c[row], events)
        spans: dict[int, tuple[int, int]] = {}
        row = len(initial)
        for idx, cands in rows.items():
            spans[idx] = (row, row + len(cands))
            row += len(cands)
        deviates = deviation.deviates(probs_o, probs_c, self.ignore_ties)
        with self._phase("observe"):
            for seed, r in self._feed_back(by_index, rows, spans, probs_o, probs_c, deviates):
                lo, hi = spans[seed.index]
                seed.suspect = _Suspect(batch[r], rows[seed.index][r - lo], probs_o[r], probs_c[r], rows[seed.index],
                                        (probs_o[lo:hi], probs_c[lo:hi]))
        self._share_time(self.clock() - step_start, owners)
        for idx, (lo, hi) in spans.items():
            if hi == lo:  # nothing affordable was left
                events.append(self._finish(by_index[idx], ExitReason.max_queries))

    def _propose(self, live: list[_SeedRun], events: list[Event]) -> dict[int, list[Candidate]]:
        """Each searching seed's candidates for this step (seeds out of budget are finished)."""
        rows: dict[int, list[Candidate]] = {}
        for seed in live:
            if seed.searcher is None or seed.suspect is not None:
                continue
            reason = self._seed_budget_spent(seed)
            if reason is not None:
                events.append(self._finish(seed, reason))
                continue
            affordable = self._affordable(seed)
            width = self._speculation(seed, len(live)) if seed.searcher.speculative else 1
            rows[seed.index] = seed.searcher.propose(min(width, affordable))[:affordable]
        return rows

    def _feed_back(self, by_index: dict[int, _SeedRun], rows: dict[int, list[Candidate]],
                   spans: dict[int, tuple[int, int]], probs_o: np.ndarray, probs_c: np.ndarray,
                   deviates: np.ndarray) -> list[tuple[_SeedRun, int]]:
        """Feed each seed its rows up to its first deviation, charge it, and return the deviations
        its algorithm reached (to verify). A batch algorithm (a GA generation) consumes all its rows;
        a speculative one stops at its first kept candidate, which voids the rest."""
        suspects: list[tuple[_SeedRun, int]] = []
        # each seed's first deviating row, from one scan of the batch (most steps have none)
        hit_rows = np.flatnonzero(deviates).tolist()
        firsts: dict[int, int | None] = dict.fromkeys(spans)
        if hit_rows:
            starts = np.searchsorted(hit_rows, [lo for lo, _ in spans.values()]).tolist()
            for (idx, (lo, hi)), k in zip(spans.items(), starts):
                if k < len(hit_rows) and hit_rows[k] < hi:
                    firsts[idx] = hit_rows[k] - lo
        observed = self._observe_speculative(by_index, rows, spans, firsts, probs_o, probs_c)
        for idx, (lo, hi) in spans.items():
            seed, cands = by_index[idx], rows[idx]
            searcher = seed.searcher
            assert searcher is not None
            seed.steps += 1
            d = firsts[idx]
            if not searcher.speculative:
                consumed = len(cands)
                if d is None:
                    searcher.observe(cands, probs_o[lo:hi], probs_c[lo:hi])
                else:
                    suspects.append((seed, lo + d))
            else:
                consumed = observed[idx]
                if d is not None and consumed == d and searcher.proposal_open:
                    consumed = d + 1
                    suspects.append((seed, lo + d))
                else:
                    kept = not searcher.proposal_open
                    searcher.end_step()
                    seed.width = max(1, consumed) if kept else min(2 * seed.width, self.max_speculation)
            self._charge(seed, consumed, hi - lo)
        return suspects

    @staticmethod
    def _observe_speculative(by_index: dict[int, _SeedRun], rows: dict[int, list[Candidate]],
                             spans: dict[int, tuple[int, int]], firsts: dict[int, int | None],
                             probs_o: np.ndarray, probs_c: np.ndarray) -> dict[int, int]:
        """Feed each speculative seed its rows up to its first deviation; return what each consumed.

        Speculative searchers of one class are fed together through the class's ``observe_many``
        (the :class:`~host.search.searcher.Searcher` contract; DFlare's is one numpy pass for the
        whole step); the verdicts are those each seed's own ``observe`` would give.
        """
        observed: dict[int, int] = {}
        groups: dict[type, list[int]] = {}
        for idx in spans:
            searcher = by_index[idx].searcher
            if searcher is not None and searcher.speculative:
                groups.setdefault(type(searcher), []).append(idx)
        for kind, members in groups.items():
            ends = {i: len(rows[i]) if firsts[i] is None else firsts[i] for i in members}
            results = kind.observe_many([by_index[i].searcher for i in members], [rows[i][: ends[i]] for i in members],
                                        probs_o, probs_c, [(spans[i][0], spans[i][0] + ends[i]) for i in members])
            observed.update(zip(members, results))
        return observed

    @staticmethod
    def _observe_flaky(seed: _SeedRun, suspect: _Suspect) -> None:
        """A deviation that did not reproduce is an ordinary candidate for the algorithm."""
        searcher = seed.searcher
        assert searcher is not None
        if searcher.speculative:
            searcher.observe([suspect.candidate], suspect.probs_original[None], suspect.probs_compressed[None])
            searcher.end_step()
        else:
            searcher.observe(suspect.candidates, *suspect.step_probs)

    def _affordable(self, seed: _SeedRun) -> int:
        if self.budget.max_queries is None:
            return 1 << 30
        return (self.budget.max_queries - seed.queries) // QUERIES_PER_IMAGE

    def _charge(self, seed: _SeedRun, consumed: int, evaluated: int) -> None:
        """Charge a seed for the candidates its algorithm consumed; the rest were speculative."""
        seed.queries += QUERIES_PER_IMAGE * consumed
        seed.speculative_queries += QUERIES_PER_IMAGE * (evaluated - consumed)
        self.total_queries += QUERIES_PER_IMAGE * consumed
        self.total_speculative_queries += QUERIES_PER_IMAGE * (evaluated - consumed)

    def _check_outputs(self, probs_o: np.ndarray, probs_c: np.ndarray) -> None:
        if probs_o.shape != probs_c.shape:
            raise ModelError(
                f"the models' outputs differ in shape: original {probs_o.shape[1:]}, compressed {probs_c.shape[1:]}; "
                "they must classify into the same classes"
            )

    def _share_time(self, seconds: float, owners: Sequence[_SeedRun]) -> None:
        if not owners:
            return
        share = seconds / len(owners)
        for owner in owners:
            owner.seconds += share

    def _seed_budget_spent(self, seed: _SeedRun) -> ExitReason | None:
        if self.budget.max_queries is not None and seed.queries + QUERIES_PER_IMAGE > self.budget.max_queries:
            return ExitReason.max_queries
        if self.budget.max_seconds is not None and seed.seconds >= self.budget.max_seconds:
            return ExitReason.max_seconds
        return None

    def _start(self, seed: _SeedRun, probs_o: np.ndarray, probs_c: np.ndarray, events: list[Event]) -> None:
        label_o, label_c = int(np.argmax(probs_o)), int(np.argmax(probs_c))
        if label_o != label_c:
            result = self._result(seed, SeedStatus.skipped, ExitReason.skipped, label_o)
            result.image = seed.image
            result.probs_original, result.probs_compressed = probs_o, probs_c
            result.label_original, result.label_compressed = label_o, label_c
            self.seeds_finished += 1
            events.append(Event(EventKind.skipped, seed.index, result))
            return
        seed.context = SeedContext(seed.index, seed.image, label_o, probs_o, probs_c)
        seed.searcher = self.make_searcher(seed.context, seed.rng)

    @staticmethod
    def _suspect_images(waiting: list[_SeedRun]) -> np.ndarray:
        """The waiting seeds' deviating images, one row each, for their re-runs."""
        return np.stack([seed.suspect.image for seed in waiting])  # type: ignore[union-attr]

    def _settle(self, waiting: list[_SeedRun], reruns: list[tuple[np.ndarray, np.ndarray]],
                events: list[Event]) -> None:
        """Judge each waiting seed's deviation by its re-runs (row i of each run is seed i's image):
        one that deviated on every run finishes its seed; any other is flaky and the search goes on."""
        reproduced = np.zeros(len(waiting), dtype=np.int64)
        with self._phase("verify"):
            for again_o, again_c in reruns:
                reproduced += deviation.deviates(again_o, again_c, self.ignore_ties)
        for seed, count in zip(waiting, reproduced):
            suspect = seed.suspect
            assert suspect is not None
            seed.suspect = None
            seed.verify_queries += QUERIES_PER_IMAGE * self.verify_runs
            found = (suspect.image, suspect.candidate.full_trace, suspect.probs_original, suspect.probs_compressed,
                     int(count))
            if count == self.verify_runs:
                if seed.searcher is not None and seed.searcher.speculative:
                    seed.searcher.end_step(also_consumed=1)
                events.append(self._finish(seed, ExitReason.triggered, found))
                continue
            detail = {"queries": seed.queries, "reproduced": int(count), "verify_runs": self.verify_runs,
                      "label_original": int(np.argmax(suspect.probs_original)),
                      "label_compressed": int(np.argmax(suspect.probs_compressed))}
            seed.flaky.append(detail)
            if seed.first_flaky is None:
                seed.first_flaky = found
            events.append(Event(EventKind.flaky, seed.index, None, detail))
            with self._phase("observe"):
                self._observe_flaky(seed, suspect)

    # -- finishing a seed: the one place results are built ---------------------------------
    def _result(self, seed: _SeedRun, status: SeedStatus, reason: ExitReason, label: int) -> SeedResult:
        extra: dict = {"verify_queries": seed.verify_queries, "speculative_queries": seed.speculative_queries,
                       "steps": seed.steps}
        if seed.dataset_label is not None:
            extra["dataset_label"] = seed.dataset_label
        if seed.flaky:
            extra["flaky"] = list(seed.flaky)
        if seed.searcher is not None:
            extra["search"] = seed.searcher.stats()
        if self.candidate_filter is not None:
            extra.update(self.candidate_filter.stats(seed.index))
        return SeedResult(seed_index=seed.index, status=status, seed_label=label, queries=seed.queries,
                          seconds=seed.seconds, algo=self.algo, exit_reason=reason.name, extra=extra)

    def _finish(self, seed: _SeedRun, reason: ExitReason, found: tuple | None = None) -> Event:
        label = seed.context.label if seed.context is not None else -1
        if found is None and seed.first_flaky is not None:
            status, found = SeedStatus.flaky, seed.first_flaky
        elif found is None:
            status = SeedStatus.exhausted
        else:
            status = SeedStatus.triggered
        result = self._result(seed, status, reason, label)
        if found is not None:
            image, trace, p_o, p_c, reproduced = found
            result.image = np.array(image, copy=True)
            result.trace = list(trace)
            result.probs_original, result.probs_compressed = np.array(p_o), np.array(p_c)
            result.label_original, result.label_compressed = int(np.argmax(p_o)), int(np.argmax(p_c))
            result.reproduced = reproduced
        self.seeds_finished += 1
        kind = EventKind.triggered if status is SeedStatus.triggered else EventKind.exhausted
        return Event(kind, seed.index, result)

