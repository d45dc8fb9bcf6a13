"""The random baseline: a uniformly chosen operator each step, and every mutant is kept.

A random walk over the same seven operators; it shows what DFlare's operator selection and
fitness buy (DESIGN.md section 3).
"""

from __future__ import annotations

import numpy as np

from host.search import mutations
from host.search.results import MutationStep
from host.search.searcher import Candidate, SeedContext


class RandomSearcher:
    """Random operator, always accept.

    Args:
        seed: the seed's context.
        rng: the seed's random generator.
        faithful: use the original's wrap-around noise semantics.
    """

    speculative = False

    def __init__(self, seed: SeedContext, rng: np.random.Generator, faithful: bool = False) -> None:
        self.seed = seed
        self.rng = rng
        self.faithful = faithful
        self.current = seed.image
        self.trace: tuple[MutationStep, ...] = ()
        self.uses = np.zeros(len(mutations.OPERATORS), dtype=np.int64)

    def propose(self, max_candidates: int = 1) -> list[Candidate]:  # every mutant is kept: no speculation
        op = int(self.rng.integers(len(mutations.OPERATORS)))
        self.uses[op] += 1
        step = mutations.draw(mutations.OPERATORS[op], self.rng, self.current.shape, faithful=self.faithful)
        return [Candidate(self.current, self.trace, step)]

    def observe(self, candidates: list[Candidate], probs_original: np.ndarray, probs_compressed: np.ndarray) -> int:
        (candidate,) = candidates
        assert candidate.image is not None
        self.current = candidate.image
        self.trace = candidate.full_trace
        return 1

    def end_step(self, also_consumed: int = 0) -> None:
        pass

    def stats(self) -> dict:
        return {"operator_uses": {op: int(n) for op, n in zip(mutations.OPERATORS, self.uses)}}
