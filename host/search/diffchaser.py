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

:class:`PixelDiffChaserSearcher` (``diffchaser-pixel``) is the same GA with the paper's own
operators instead of DFlare's, as far as public sources describe them: a pixel-level mutation
``mutate(X[i], r2)`` that nudges each gene with probability r2, and a fitness on prediction
*uncertainty* (the gap between the top-1 and top-2 probabilities, smaller is fitter) rather than
on the difference between the two models, which the DFlare authors name as DiffChaser's weakness
on compressed models. Its constants (r2 = 0.01, changes of at most 8 grey levels, tournaments of
4, half the parents chosen on each model's uncertainty) follow a public re-implementation
(Artistzq/dnc_toolkit, ``se4ai/disagreements/diffchaser.py``); that one adds only positive
changes, ours are symmetric.
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

    def _scores(self, probs_original: np.ndarray, probs_compressed: np.ndarray) -> np.ndarray:
        """Fitness of each evaluated chromosome: the output difference for the seed label."""
        label = self.seed.label
        return np.abs(output_difference(probs_original, probs_compressed, label))

    def observe(self, candidates: list[Candidate], probs_original: np.ndarray, probs_compressed: np.ndarray) -> int:
        scores = self._scores(probs_original, probs_compressed)
        if not self.images:
            self.images = [c.image for c in candidates]  # type: ignore[misc]
            self.traces = [c.full_trace for c in candidates]
            self.fitness = scores
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


#: ``diffchaser-pixel``: probability that a gene (one H*W*C value) is nudged.
GENE_MUTATION_RATE: float = 0.01
#: ``diffchaser-pixel``: largest change of a nudged gene, in grey levels (8/255 of the range).
GENE_MUTATION_MAX_DELTA: int = 8
#: ``diffchaser-pixel``: chromosomes drawn per tournament; the most uncertain one wins.
TOURNAMENT_SIZE: int = 4


def uncertainty(probs: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability of each row: 0 on a decision boundary, near 1 when confident."""
    top2 = np.partition(np.asarray(probs, dtype=np.float64), -2, axis=-1)[..., -2:]
    return top2[..., 1] - top2[..., 0]


class PixelDiffChaserSearcher(DiffChaserSearcher):
    """DiffChaser's GA with pixel-level mutation and uncertainty fitness (module docstring).

    Args:
        seed: the seed's context.
        rng: the seed's random generator.
        population_size: chromosomes per generation (>= 2).
        mutation_rate: probability that a gene is nudged (r2).
    """

    def __init__(self, seed: SeedContext, rng: np.random.Generator, population_size: int = POPULATION_SIZE,
                 mutation_rate: float = GENE_MUTATION_RATE) -> None:
        super().__init__(seed, rng, population_size=population_size, mutation_rate=mutation_rate)
        self.fitness = np.zeros((0, 2), dtype=np.float64)  # smaller is fitter (see _scores)

    def _gene_mutation(self, image: np.ndarray) -> MutationStep | None:
        flat = image.ravel()
        indices = np.flatnonzero(self.rng.random(flat.size) < self.mutation_rate)
        deltas = self.rng.integers(-GENE_MUTATION_MAX_DELTA, GENE_MUTATION_MAX_DELTA + 1, indices.size)
        values = np.clip(flat[indices].astype(np.int16) + deltas, 0, 255)
        changed = values != flat[indices]
        if not changed.any():
            return None
        return MutationStep("gene_mutation", {"indices": indices[changed].tolist(),
                                              "values": values[changed].tolist()})

    def _tournament(self, model: int) -> int:
        entrants = self.rng.integers(0, len(self.images), TOURNAMENT_SIZE)
        return int(entrants[np.argmin(self.fitness[entrants, model])])

    def propose(self, max_candidates: int = 1) -> list[Candidate]:  # a whole generation at once
        if not self.images:
            return [Candidate(self.seed.image, (), self._gene_mutation(self.seed.image), tag=i)
                    for i in range(self.population_size)]
        best = int(np.argmin(self.fitness[:, 0]))
        candidates = []
        for n, slot in enumerate(s for s in range(len(self.images)) if s != best):
            model = n % 2  # half the parents are picked on each model's uncertainty
            child, trace = self._crossover(self._tournament(model), self._tournament(model))
            candidates.append(Candidate(child, trace, self._gene_mutation(child), tag=slot))
        return candidates

    def _scores(self, probs_original: np.ndarray, probs_compressed: np.ndarray) -> np.ndarray:
        """Per chromosome: uncertainty on the original model (column 0) and on the compressed one (column 1)."""
        return np.stack([uncertainty(probs_original), uncertainty(probs_compressed)], axis=1)

    def stats(self) -> dict:
        return {"generations": self.generation,
                "least_uncertainty_gap": float(self.fitness.min()) if self.fitness.size else 1.0}
