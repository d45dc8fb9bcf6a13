"""The search: mutation operators, DFlare, DiffChaser and random baselines, the lockstep engine.

``run(original, compressed, seeds, algo="dflare", budget=..., rng_seed=...)`` is the entry point;
it yields a :class:`SeedResult` per seed.
"""

from host.search.api import ALGORITHMS, SEARCH_REVISIONS, run, searcher_factory
from host.search.engine import Budget, Engine, Event, EventKind, ExitReason
from host.search.mutations import OPERATORS, replay
from host.search.results import MutationStep, SeedResult, SeedStatus

__all__ = [
    "ALGORITHMS",
    "OPERATORS",
    "SEARCH_REVISIONS",
    "Budget",
    "Engine",
    "Event",
    "EventKind",
    "ExitReason",
    "MutationStep",
    "SeedResult",
    "SeedStatus",
    "replay",
    "run",
    "searcher_factory",
]
