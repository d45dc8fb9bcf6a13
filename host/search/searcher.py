"""What the engine asks of a search algorithm, for one seed.

A searcher owns one seed's state (current image, corpus, operator statistics, its own random
generator). The engine drives it in lockstep with other seeds:

1. ``propose()`` returns the next candidate(s): a base image, its trace from the seed and one
   mutation step to apply (the engine applies the steps of every live seed in one vectorized call);
2. the engine runs all candidates through both models, one batch per model;
3. ``observe(candidates, probs_original, probs_compressed)`` feeds the outputs back.

The engine (not the searcher) decides success (top-1 labels differ), re-verifies, counts queries
and enforces budgets, so every algorithm is measured the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from host.search.results import MutationStep


@dataclass
class Candidate:
    """One image to query: ``step`` applied to ``base`` (whose own trace from the seed is ``trace``)."""

    base: np.ndarray  # uint8 HWC
    trace: tuple[MutationStep, ...]
    step: MutationStep | None
    image: np.ndarray | None = field(default=None, repr=False)  # filled in by the engine
    tag: int = 0  # searcher-private (e.g. a population slot)

    @property
    def full_trace(self) -> tuple[MutationStep, ...]:
        return self.trace if self.step is None else (*self.trace, self.step)


@dataclass(frozen=True)
class SeedContext:
    """What a searcher knows about its seed when it starts."""

    index: int
    image: np.ndarray  # uint8 HWC
    label: int  # the label both models agree on
    probs_original: np.ndarray
    probs_compressed: np.ndarray


class Searcher(Protocol):
    """One seed's search state; see the module docstring for the protocol."""

    def propose(self) -> list[Candidate]:
        """The next candidates to query (at least one)."""
        ...

    def observe(self, candidates: list[Candidate], probs_original: np.ndarray, probs_compressed: np.ndarray) -> None:
        """Outputs for (a prefix of) the proposed candidates, rows in the same order."""
        ...

    def stats(self) -> dict:
        """Algorithm-specific counters for the result's ``extra`` (JSON-ready)."""
        ...
