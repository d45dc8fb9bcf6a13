"""Engine mechanics: query accounting, budgets, exit reasons, batching, verification, determinism.

The sessions here are small numpy classifiers (a fixed random linear layer and a coarsely
quantized copy of it), so the engine's bookkeeping can be checked exactly and fast; the same
properties are checked on the real TFLite fixture models in tests/integration/test_search_models.py.
"""

from __future__ import annotations

import threading
import zlib

import numpy as np
import pytest

import host.search.engine as engine_module
import host.search.mutations as mutations
from host.errors import ConfigError, SeedError
from host.search import ALGORITHMS, Budget, Engine, EventKind, ExitReason, SeedStatus, replay, run, searcher_factory
from host.search.engine import seed_rng
from host.targets.base import ModelSpec, TensorSpec

SHAPE = (8, 8, 1)
CLASSES = 4


class LinearSession:
    """softmax(W x): a deterministic stand-in classifier; ``step`` > 0 quantizes its logits."""

    def __init__(self, step: float = 0.0, seed: int = 0, noise: float = 0.0) -> None:
        rng = np.random.default_rng(seed)
        self.weights = rng.normal(0, 1, (int(np.prod(SHAPE)), CLASSES)) / 20.0
        self.step = step
        self.noise_rng = np.random.default_rng(99) if noise else None
        self.noise = noise
        self.model = ModelSpec(b"TFL3fake", name=f"linear-step{step}")
        self.input_spec = TensorSpec("x", (1, *SHAPE), "float32")
        self.output_specs = [TensorSpec("y", (1, CLASSES), "float32")]
        self.batches: list[int] = []
        self.threads: set[str] = set()
        self.barrier: threading.Barrier | None = None

    def infer(self, images: np.ndarray) -> np.ndarray:
        if self.barrier is not None:
            self.barrier.wait(timeout=5)  # both sessions must be inside infer() at once
        self.batches.append(len(images))
        self.threads.add(threading.current_thread().name)
        logits = (images.reshape(len(images), -1).astype(np.float64) / 255.0) @ self.weights
        if self.step:
            logits = np.round(logits / self.step) * self.step
        if self.noise_rng is not None:
            logits = logits + self.noise_rng.normal(0, self.noise, logits.shape)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    def infer_many(self, batches) -> list[np.ndarray]:
        return [self.infer(b) for b in batches]

    def close(self) -> None:
        pass


def _agreeing_seeds(n: int, original, compressed, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    found = []
    while len(found) < n:
        x = rng.integers(0, 256, (64, *SHAPE), dtype=np.uint8)
        agree = np.argmax(original.infer(x), 1) == np.argmax(compressed.infer(x), 1)
        found.extend(x[agree])
    original.batches.clear()
    compressed.batches.clear()
    return np.stack(found[:n])


def _events(engine: Engine, seeds: np.ndarray, **kwargs):
    return list(engine.run(seeds, **kwargs))


def _results(events):
    return {e.seed_index: e.result for e in events if e.result is not None}


def test_identical_models_exhaust_every_seed_at_exactly_the_query_budget():
    original, compressed = LinearSession(), LinearSession()
    seeds = _agreeing_seeds(5, original, compressed)
    engine = Engine(original, compressed, searcher_factory("dflare"), budget=Budget(max_queries=40),
                    max_speculation=1)
    results = _results(_events(engine, seeds))
    assert sorted(results) == list(range(5))
    for r in results.values():
        assert r.status is SeedStatus.exhausted and r.exit_reason == "max_queries"
        assert r.queries == 40  # 2 for the seed check + 19 candidates x 2 models
    assert engine.total_queries == 200 and engine.exit_reason is ExitReason.finished
    # one batch per session per step, every live seed in it
    assert original.batches == compressed.batches == [5] * 20


@pytest.mark.parametrize("step", [0.0, 0.25])  # never / sometimes deviating
def test_speculation_fills_batches_without_changing_results_or_counted_queries(step):
    original, compressed = LinearSession(), LinearSession(step=step)
    seeds = _agreeing_seeds(3, original, compressed)
    plain = Engine(original, compressed, searcher_factory("dflare"), budget=300, max_speculation=1)
    plain_results = _results(_events(plain, seeds))
    original.batches.clear()
    wide = Engine(original, compressed, searcher_factory("dflare"), budget=300, max_speculation=16)
    wide_results = _results(_events(wide, seeds))
    assert wide.steps < plain.steps
    assert max(original.batches) > 3  # 3 live seeds: up to 16 candidates each per step
    for i, r in plain_results.items():
        w = wide_results[i]
        assert (w.status, w.queries, w.trace, w.extra["search"]) == (r.status, r.queries, r.trace, r.extra["search"])
        assert r.extra["speculative_queries"] == 0
    assert wide.total_queries == plain.total_queries
    assert wide.total_speculative_queries == sum(r.extra["speculative_queries"] for r in wide_results.values())
    if step == 0.0:  # nothing triggers: every seed runs 149 candidates, 1 per step vs up to 16
        assert plain.steps == 150 and wide.steps <= 150 // 4


def test_seeds_the_models_already_disagree_on_are_skipped():
    original, compressed = LinearSession(), LinearSession(step=0.6)
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (200, *SHAPE), dtype=np.uint8)
    disagree = np.flatnonzero(np.argmax(original.infer(x), 1) != np.argmax(compressed.infer(x), 1))
    assert disagree.size > 0
    seeds = x[disagree[:3]]
    events = _events(Engine(original, compressed, searcher_factory("dflare"), budget=50), seeds)
    results = _results(events)
    assert all(r.status is SeedStatus.skipped and r.queries == 2 for r in results.values())
    assert [e.kind for e in events].count(EventKind.skipped) == 3
    assert all(r.label_original != r.label_compressed for r in results.values())


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_every_algorithm_finds_reproducible_deviations_with_exact_traces(algo):
    original, compressed = LinearSession(), LinearSession(step=0.25)
    seeds = _agreeing_seeds(6, original, compressed)
    options = {"population_size": 8} if algo.startswith("diffchaser") else {}
    results = list(run(original, compressed, seeds, algo=algo, budget=2000, rng_seed=3, **options))
    triggered = [r for r in results if r.status is SeedStatus.triggered]
    assert len(triggered) >= 4
    for r in triggered:
        assert r.algo == algo and r.exit_reason == "triggered" and r.reproduced == 3
        assert r.queries <= 2000 and r.extra["verify_queries"] == 6
        assert replay(seeds[r.seed_index], r.trace).tobytes() == r.image.tobytes()
        po, pc = original.infer(r.image[None]), compressed.infer(r.image[None])
        assert np.argmax(po) == r.label_original != r.label_compressed == np.argmax(pc)
        np.testing.assert_array_equal(po[0], r.probs_original)


@pytest.mark.parametrize("algo", ["dflare", "dflare-faithful", "diffchaser", "diffchaser-pixel", "random"])
def test_lockstep_gives_each_seed_the_same_result_as_running_it_alone(algo):
    original, compressed = LinearSession(), LinearSession(step=0.25)
    seeds = _agreeing_seeds(7, original, compressed)
    options = {"population_size": 6} if algo.startswith("diffchaser") else {}
    budget = Budget(max_queries=150)
    together = {r.seed_index: r for r in run(original, compressed, seeds, algo, budget, 11, **options)}
    narrow = {r.seed_index: r for r in run(original, compressed, seeds, algo, budget, 11, max_live_seeds=2,
                                          **options)}
    for i in range(len(seeds)):
        (alone,) = run(original, compressed, seeds[i : i + 1], algo, budget, 11, indices=[i], **options)
        for other in (together[i], narrow[i]):
            assert (other.status, other.queries, other.exit_reason) == (alone.status, alone.queries,
                                                                        alone.exit_reason)
            assert other.trace == alone.trace
            if alone.image is not None:
                assert other.image.tobytes() == alone.image.tobytes()


def test_max_live_seeds_bounds_every_batch():
    original, compressed = LinearSession(), LinearSession()
    seeds = _agreeing_seeds(7, original, compressed)
    list(run(original, compressed, seeds, budget=20, max_live_seeds=3, max_speculation=1))
    assert max(original.batches) == 3 and sum(original.batches) == 7 * 10


def test_per_seed_time_budget_uses_the_injected_clock():
    original, compressed = LinearSession(), LinearSession()
    seeds = _agreeing_seeds(2, original, compressed)
    ticks = iter(range(10_000))
    engine = Engine(original, compressed, searcher_factory("dflare"), budget=Budget(max_queries=None, max_seconds=5),
                    clock=lambda: float(next(ticks)))
    results = _results(_events(engine, seeds))
    for r in results.values():
        assert r.exit_reason == "max_seconds" and r.status is SeedStatus.exhausted
        assert 5 <= r.seconds < 6  # each step's 1 s is shared by the two seeds


def test_campaign_query_budget_stops_the_run_through_one_exit_path():
    original, compressed = LinearSession(), LinearSession()
    seeds = _agreeing_seeds(4, original, compressed)
    engine = Engine(original, compressed, searcher_factory("dflare"),
                    budget=Budget(max_queries=None, campaign_max_queries=100), max_live_seeds=2)
    results = _results(_events(engine, seeds))
    assert engine.exit_reason is ExitReason.campaign_max_queries
    assert engine.statistics["stopped-because"] == ExitReason.campaign_max_queries.describe()
    assert engine.total_queries <= 100
    assert {r.exit_reason for r in results.values()} == {"campaign_max_queries"}
    assert len(results) == 2 and engine.seeds_unstarted == 2


def test_campaign_time_budget():
    original, compressed = LinearSession(), LinearSession()
    seeds = _agreeing_seeds(3, original, compressed)
    ticks = iter(range(10_000))
    engine = Engine(original, compressed, searcher_factory("random"),
                    budget=Budget(max_queries=None, campaign_max_seconds=10), clock=lambda: float(next(ticks)))
    results = _results(_events(engine, seeds))
    assert engine.exit_reason is ExitReason.campaign_max_seconds
    assert len(results) == 3 and all(r.exit_reason == "campaign_max_seconds" for r in results.values())


class FirstLookFlaky(LinearSession):
    """Disagrees with the original on the first look at one image in four, never on a re-run."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[bytes] = set()

    def infer(self, images: np.ndarray) -> np.ndarray:
        probs = super().infer(images)
        for i, image in enumerate(images):
            key = image.tobytes()
            if key not in self.seen:
                self.seen.add(key)
                if zlib.crc32(key) % 4 == 0:
                    probs[i] = np.roll(probs[i], 1)  # another top-1 label
        return probs


@pytest.mark.parametrize("speculation", [1, 16])
def test_a_deviation_that_does_not_reproduce_is_flaky_not_triggered(speculation):
    original = LinearSession()
    seeds = _agreeing_seeds(4, original, LinearSession())
    engine = Engine(original, FirstLookFlaky(), searcher_factory("dflare"), budget=Budget(max_queries=60),
                    verify_runs=3, max_speculation=speculation)
    events = _events(engine, seeds)
    flaky_events = [e for e in events if e.kind is EventKind.flaky]
    results = _results(events)
    assert flaky_events and all(e.detail["reproduced"] == 0 for e in flaky_events)
    searched = [r for r in results.values() if r.status is not SeedStatus.skipped]
    assert searched and all(r.status is SeedStatus.flaky for r in searched)
    for r in searched:
        assert r.reproduced == 0 and r.extra["flaky"] and r.image is not None
        assert r.exit_reason == "max_queries" and r.queries == 60  # the search went on after each flaky one
    assert engine.total_verify_queries == sum(r.extra["verify_queries"] for r in results.values()) > 0


def test_the_two_sessions_run_concurrently_on_large_batches(monkeypatch):
    monkeypatch.setattr(engine_module, "PARALLEL_INFER_MIN_VALUES", 1)  # every batch counts as large
    original, compressed = LinearSession(), LinearSession()
    seeds = _agreeing_seeds(2, original, compressed)
    original.threads.clear()
    compressed.threads.clear()
    original.barrier = compressed.barrier = threading.Barrier(2)
    results = list(run(original, compressed, seeds, budget=10, max_speculation=1))  # serial calls break the barrier
    assert len(results) == 2 and original.batches == compressed.batches == [2] * 5
    assert "MainThread" not in original.threads and compressed.threads == {"MainThread"}


def test_small_batches_run_both_sessions_on_the_calling_thread(monkeypatch):
    monkeypatch.setattr(engine_module, "PARALLEL_INFER_MIN_VALUES", 10**9)
    original, compressed = LinearSession(), LinearSession()
    seeds = _agreeing_seeds(2, original, compressed)
    original.threads.clear()
    compressed.threads.clear()
    results = list(run(original, compressed, seeds, budget=10, max_speculation=1))
    assert len(results) == 2
    assert original.threads == compressed.threads == {"MainThread"}


def test_one_session_as_both_models_is_called_serially():
    session = LinearSession()
    seeds = _agreeing_seeds(2, session, session)
    results = list(run(session, session, seeds, budget=10))
    assert all(r.status is SeedStatus.exhausted for r in results)


def test_seed_generators_depend_only_on_run_seed_and_index():
    a = seed_rng(5, 17).integers(0, 2**32, 4)
    assert a.tolist() == seed_rng(5, 17).integers(0, 2**32, 4).tolist()
    assert a.tolist() != seed_rng(5, 18).integers(0, 2**32, 4).tolist()
    assert a.tolist() != seed_rng(6, 17).integers(0, 2**32, 4).tolist()


@pytest.mark.parametrize("algo", ["dflare", "diffchaser"])
def test_mutations_split_over_threads_change_no_result(algo, monkeypatch):
    original, compressed = LinearSession(), LinearSession(step=0.25)
    seeds = _agreeing_seeds(6, original, compressed)
    options = {"population_size": 6} if algo == "diffchaser" else {}
    one = {r.seed_index: r for r in run(original, compressed, seeds, algo, 120, 3, mutation_threads=1, **options)}
    threads: set[str] = set()
    apply = mutations.apply

    def recording_apply(images, steps):
        threads.add(threading.current_thread().name)
        return apply(images, steps)

    monkeypatch.setattr(mutations, "PARALLEL_MIN_VALUES", 1)  # split even these 8x8 batches
    monkeypatch.setattr(mutations, "apply", recording_apply)
    split = {r.seed_index: r for r in run(original, compressed, seeds, algo, 120, 3, mutation_threads=3, **options)}
    assert any(name.startswith("dflare-mutate") for name in threads)  # the split really happened
    for i, r in one.items():
        assert (split[i].status, split[i].queries, split[i].trace) == (r.status, r.queries, r.trace)
        if r.image is not None:
            assert split[i].image.tobytes() == r.image.tobytes()
    with pytest.raises(ConfigError, match="mutation_threads"):
        Engine(original, compressed, searcher_factory("dflare"), mutation_threads=0)


def test_bad_seeds_and_budgets_are_reported_clearly():
    original, compressed = LinearSession(), LinearSession()
    with pytest.raises(SeedError, match="uint8"):
        list(run(original, compressed, np.zeros((1, *SHAPE), np.float32)))
    with pytest.raises(SeedError, match="expects"):
        list(run(original, compressed, np.zeros((1, 9, 9, 1), np.uint8)))
    with pytest.raises(ConfigError, match="budget"):
        Budget(max_queries=None)
    with pytest.raises(ConfigError, match="too small"):
        Budget(max_queries=1)
    with pytest.raises(ConfigError, match="unknown search algorithm"):
        searcher_factory("hillclimb")


def test_unknown_run_options_name_the_accepted_ones():
    original, compressed = LinearSession(), LinearSession()
    seeds = _agreeing_seeds(1, original, compressed)
    with pytest.raises(ConfigError, match="rng_seed"):
        list(run(original, compressed, seeds, seed=3))


def test_seed_outputs_given_by_the_caller_are_not_run_again_and_change_nothing_else():
    original, compressed = LinearSession(), LinearSession(step=0.5)
    seeds = _agreeing_seeds(6, original, compressed)
    plain = {r.seed_index: (r.status, r.queries, r.trace) for r in run(original, compressed, seeds, budget=200)}
    given = (original.infer(seeds), compressed.infer(seeds))
    original.batches.clear()
    results = run(original, compressed, seeds, budget=200, seed_probs=given)
    assert {r.seed_index: (r.status, r.queries, r.trace) for r in results} == plain  # the check still counts
    rerun = LinearSession()
    list(run(rerun, compressed, seeds, budget=200))
    assert sum(original.batches) == sum(rerun.batches) - len(seeds)  # one image fewer per seed: the check
    with pytest.raises(SeedError, match="seed probabilities for 5 and 6 seeds"):
        list(run(original, compressed, seeds, budget=200, seed_probs=(given[0][:5], given[1])))


class CallCounting(LinearSession):
    """Records each call as an agent would see it: one ``infer`` or one ``infer_many`` is one round trip."""

    def __init__(self, step: float = 0.0) -> None:
        super().__init__(step=step)
        self.calls: list[list[bytes]] = []  # per call, each batch's bytes

    def infer(self, images: np.ndarray) -> np.ndarray:
        self.calls.append([images.tobytes()])
        return super().infer(images)

    def infer_many(self, batches) -> list[np.ndarray]:
        self.calls.append([b.tobytes() for b in batches])
        return [LinearSession.infer(self, b) for b in batches]


def test_reruns_travel_with_the_next_steps_batch_not_in_a_call_of_their_own():
    original, compressed = LinearSession(), CallCounting(step=0.25)
    seeds = _agreeing_seeds(12, original, LinearSession(step=0.25))
    engine = Engine(original, compressed, searcher_factory("dflare"), budget=2000, verify_runs=3)
    results = _results(_events(engine, seeds))
    triggered = [r for r in results.values() if r.status is SeedStatus.triggered]
    assert len(triggered) >= 5 and len({r.extra["steps"] for r in triggered}) >= 3  # deviations over many steps
    reruns_only = [c for c in compressed.calls if len(c) == 3 and len(set(c)) == 1]
    # every step is one call; re-runs have a call of their own only when no seed was left to search
    assert len(compressed.calls) == engine.steps + len(reruns_only) == engine.session_calls
    assert len(reruns_only) <= 2
    assert all(r.reproduced == 3 for r in triggered)
    alone = {i: _results(_events(Engine(LinearSession(), LinearSession(step=0.25), searcher_factory("dflare"),
                                        budget=2000, rng_seed=0), seeds[i: i + 1], indices=[i]))[i]
             for i in range(len(seeds))}
    for i, r in results.items():  # waiting for the re-runs changes no seed's search
        assert (r.status, r.queries, r.trace) == (alone[i].status, alone[i].queries, alone[i].trace)


class CostAtDeviation(Engine):
    """Records the campaign's search cost (consumed + speculative queries) at the step a seed deviated."""

    cost_at_deviation: dict[int, int]

    def _feed_back(self, by_index, rows, spans, probs_o, probs_c, deviates):
        suspects = super()._feed_back(by_index, rows, spans, probs_o, probs_c, deviates)
        for seed, _ in suspects:
            self.cost_at_deviation.setdefault(seed.index, self.total_queries + self.total_speculative_queries)
        return suspects


def test_a_deviation_found_in_the_last_step_the_campaign_budget_affords_is_still_verified():
    original, compressed = LinearSession(), LinearSession(step=0.25)
    seeds = _agreeing_seeds(12, original, LinearSession(step=0.25))
    probe = CostAtDeviation(original, compressed, searcher_factory("dflare"), budget=2000)
    probe.cost_at_deviation = {}
    unlimited = _results(_events(probe, seeds))
    first = min(probe.cost_at_deviation, key=probe.cost_at_deviation.get)
    limit = probe.cost_at_deviation[first]
    engine = Engine(original, compressed, searcher_factory("dflare"),
                    budget=Budget(max_queries=2000, campaign_max_queries=limit))
    results = _results(_events(engine, seeds))
    assert engine.exit_reason is ExitReason.campaign_max_queries  # the next step did not fit
    assert results[first].status is SeedStatus.triggered and results[first].reproduced == 3
    assert results[first].trace == unlimited[first].trace
    assert any(r.exit_reason == "campaign_max_queries" for r in results.values())
