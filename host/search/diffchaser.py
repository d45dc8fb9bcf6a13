"""The DiffChaser baseline (Xie et al., IJCAI 2019): a genetic algorithm over mutants of the seed.

No public code exists; this follows the paper's Algorithm 1:

1. the initial population is ``population_size`` mutants of the seed (one random operator each);
2. every generation, fitness is computed for every chromosome (one query per model each) and the
   search stops as soon as one disagrees (the engine checks that, as for every algorithm);
3. every chromosome except the fittest is replaced by ``crossover(x1, x2)`` of two parents chosen
   by fitness-proportionate (roulette-wheel) selection, then mutated with probability
   ``mutation_rate`` by one of the same seven operators DFlare uses.

Fitness is the output difference ``|p_orig(y) - p_cps(y)|`` for the seed label y (DESIGN.md:
"fitness = output difference"). Crossover is uniform: each value (H*W*C genes) comes from either
parent with probability 1/2. It is recorded in the trace as a ``crossover`` step holding the
concrete values taken from the second parent, so a DiffChaser trace replays like any other.

Queries are counted like DFlare's: each chromosome evaluated costs one query per model; the
fittest chromosome is kept without re-evaluation.
"""

from __future__ import annotations

import numpy as np

from host.search import mutations
from host.search.dflare import output_difference
from host.search.results import MutationStep
from host.search.searcher import Candidate, SeedContext

#: Chromosomes per generation. Our choice (the paper's value is not restated here): large enough for
#: crossover to mix distinct lineages, small enough that a generation costs 200 queries.
POPULATION_SIZE: int = 100
#: Probability that a child also gets one mutation operator after crossover.
MUTATION_RATE: float = 0.5
#: Added to every fitness so the roulette wheel is defined when all differences are zero.
_ROULETTE_EPSILON: float = 1e-9


class DiffChaserSearcher:
    """DiffChaser's GA on one seed.

    Args:
        seed: the seed's context.
        rng: the seed's random generator.
        population_size: chromosomes per generation (>= 2).
        mutation_rate: probability of mutating a child after crossover.
        faithful: use the original DFlare code's wrap-around noise semantics in the operators.
    """

    speculative = False

    def __init__(self, seed: SeedContext, rng: np.random.Generator, population_size: int = POPULATION_SIZE,
                 mutation_rate: float = MUTATION_RATE, faithful: bool = False) -> None:
        if population_size < 2:
            raise ValueError(f"DiffChaser needs a population of at least 2, got {population_size}")
        self.seed = seed
        self.rng = rng
        self.population_size = population_size
        self.mutation_rate = mutation_rate
        self.faithful = faithful
        self.images: list[np.ndarray] = []
        self.traces: list[tuple[MutationStep, ...]] = []
        self.fitness = np.zeros(0, dtype=np.float64)
        self.generation = 0

    def _mutation(self, shape: tuple[int, ...]) -> MutationStep:
        op = mutations.OPERATORS[int(self.rng.integers(len(mutations.OPERATORS)))]
        return mutations.draw(op, self.rng, shape, faithful=self.faithful)

    def _select(self) -> int:
        weights = self.fitness + _ROULETTE_EPSILON
        return int(self.rng.choice(len(weights), p=weights / weights.sum()))

    def _crossover(self, a: int, b: int) -> tuple[np.ndarray, tuple[MutationStep, ...]]:
        first, second = self.images[a], self.images[b]
        take = self.rng.random(first.size) < 0.5
        indices = np.flatnonzero(take & (first.ravel() != second.ravel()))
        if indices.size == 0:
            return first, self.traces[a]
        step = MutationStep("crossover", {"indices": indices.tolist(), "values": second.ravel()[indices].tolist()})
        child = mutations.apply(first[None], [step])[0]
        return child, (*self.traces[a], step)

    def propose(self, max_candidates: int = 1) -> list[Candidate]:  # a whole generation at once
        shape = self.seed.image.shape
        if not self.images:
            return [Candidate(self.seed.image, (), self._mutation(shape), tag=i) for i in range(self.population_size)]
        best = int(np.argmax(self.fitness))
        candidates = []
        for slot in range(len(self.images)):
            if slot == best:
                continue
            child, trace = self._crossover(self._select(), self._select())
            step = self._mutation(shape) if self.rng.random() < self.mutation_rate else None
            candidates.append(Candidate(child, trace, step, tag=slot))
        return candidates

    def observe(self, candidates: list[Candidate], probs_original: np.ndarray, probs_compressed: np.ndarray) -> int:
        label = self.seed.label
        scores = [abs(output_difference(po, pc, label)) for po, pc in zip(probs_original, probs_compressed)]
        if not self.images:
            self.images = [c.image for c in candidates]  # type: ignore[misc]
            self.traces = [c.full_trace for c in candidates]
            self.fitness = np.asarray(scores, dtype=np.float64)
        else:
            for candidate, score in zip(candidates, scores):
                self.images[candidate.tag] = candidate.image  # type: ignore[assignment]
                self.traces[candidate.tag] = candidate.full_trace
                self.fitness[candidate.tag] = score
        self.generation += 1
        return len(candidates)

    def end_step(self, also_consumed: int = 0) -> None:
        pass

    def stats(self) -> dict:
        return {"generations": self.generation, "best_fitness": float(self.fitness.max()) if self.fitness.size else 0.0}
