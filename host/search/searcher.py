"""What the engine asks of a search algorithm, for one seed.

A searcher owns one seed's state (current image, corpus, operator statistics, its own random
generator). The engine drives it in lockstep with other seeds:

1. ``propose(max_candidates)`` returns the next candidate(s): a base image, its trace from the
   seed and one mutation step to apply (the engine applies the steps of every live seed in one
   vectorized call);
2. the engine runs all candidates through both models, one batch per model;
3. ``observe(candidates, probs_original, probs_compressed)`` feeds the outputs back (possibly for a
   prefix only: the engine stops a seed's list at its first deviation) and returns how many
   candidates the algorithm *consumed*.

Speculation: a sequential algorithm such as DFlare proposes one candidate, observes it, then
proposes the next. When a rejected candidate leaves the searcher's state untouched, the next
candidate can be proposed before the first is observed: DFlare proposes up to ``max_candidates``
"assuming each is rejected", snapshotting its generator and counters after each. ``observe``
walks them in order; at the first accepted one it restores the snapshot taken right after it and
reports the rest unconsumed. The consumed candidates, the state and the generator are then exactly
those of the one-at-a-time algorithm, so results and counted queries do not depend on
``max_candidates``; unconsumed candidates cost inference only (counted apart as speculative).

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

    speculative: bool  # proposes several candidates as if each were rejected (observe may stop early)
    proposal_open: bool  # speculative only: the pending candidates are still valid (none kept yet)

    def propose(self, max_candidates: int = 1) -> list[Candidate]:
        """The next candidates to query (at least one; at most ``max_candidates`` where that is a choice)."""
        ...

    def observe(self, candidates: list[Candidate], probs_original: np.ndarray, probs_compressed: np.ndarray) -> int:
        """Outputs for (a prefix of) the proposed candidates, rows in the same order; return how many it consumed."""
        ...

    @staticmethod
    def observe_many(searchers: list[Searcher], candidate_lists: list[list[Candidate]], probs_original: np.ndarray,
                     probs_compressed: np.ndarray, spans: list[tuple[int, int]]) -> list[int]:
        """Speculative searchers only: ``observe`` for many seeds of this class at once, seed i's rows
        being ``spans[i]`` of the probabilities; each seed's verdicts exactly those of its own
        ``observe``. Returns the candidates each seed consumed."""
        ...

    def end_step(self, also_consumed: int = 0) -> None:
        """The engine has fed back all it will this step (plus ``also_consumed`` candidates it consumed
        without feeding back: a confirmed deviation); drop unconsumed proposals."""
        ...

    def stats(self) -> dict:
        """Algorithm-specific counters for the result's ``extra`` (JSON-ready)."""
        ...
