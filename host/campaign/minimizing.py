"""Minimize a campaign's triggering inputs after its search, and store them next to the raw ones.

Each stored triggering input that has no minimized version yet (this run's, or one a killed or
older run left) is shrunk with :func:`host.search.minimize.minimize` on the campaign's two targets,
inside the campaign's perturbation bound, then stored (one transaction) and written to
``inputs/<seed>_<n>_min.png`` / ``.npy``. Flaky inputs are not minimized: they do not trigger
reliably to begin with. Minimization queries are recorded per input and never added to the
search's figures (queries per trigger stays the search's cost).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from host import artifacts
from host.campaign.config import CampaignConfig
from host.records import InputRecord, MinimizedRecord
from host.search.bounds import PerturbationBound
from host.search.minimize import minimize
from host.search.results import SeedStatus
from host.store import CampaignStore
from host.targets.base import Session

log = logging.getLogger(__name__)


def bound_of(config: CampaignConfig) -> PerturbationBound:
    """The campaign's perturbation bound (unbounded unless max_linf / min_ssim are set)."""
    return PerturbationBound(max_linf=config.max_linf, min_ssim=config.min_ssim)


def minimize_record(record: InputRecord, original: Session, compressed: Session,
                    config: CampaignConfig) -> MinimizedRecord | None:
    """Minimize one stored triggering input; ``None`` when its seed image was not stored.

    The boundary walk's random probes derive from ``(config.seed, seed_index)``, so a rerun gives
    the same minimized input on deterministic targets.
    """
    if record.seed_image is None:
        return None
    result = minimize(
        original, compressed, record.seed_image, record.image, record.trace, record.probs_original,
        record.probs_compressed, bound=bound_of(config), max_queries=config.minimize_max_queries,
        verify_runs=config.reruns, seed_label=record.seed_label, rng_seed=(config.seed, record.seed_index),
        ignore_ties=config.ignore_ties,
    )
    return MinimizedRecord(
        record.seed_index, record.n, result.probs_original, result.probs_compressed, result.label_original,
        result.label_compressed, result.queries, result.verify_queries, result.reproduced, result.seconds,
        result.info(), result.image,
    )


def minimize_pending(store: CampaignStore, original: Session, compressed: Session, config: CampaignConfig,
                     on_done: Callable[[MinimizedRecord], None] | None = None) -> int:
    """Minimize every stored triggering input that has no minimized version; return how many were done.

    Args:
        store: the campaign store (read for the inputs, written for each minimized one).
        original: the original model's session.
        compressed: the compressed model's session.
        config: the campaign's settings (bound, budget, re-runs, random seed, output directory).
        on_done: called after each input is stored.
    """
    done = store.minimized()
    pending = [r for r in store.inputs() if r.status is SeedStatus.triggered and (r.seed_index, r.n) not in done]
    count = 0
    for record in pending:
        minimized = minimize_record(record, original, compressed, config)
        if minimized is None:
            log.warning("input %s cannot be minimized: its seed image is not stored", record.stem)
            continue
        store.record_minimized(minimized)
        artifacts.write_input(Path(config.out), minimized)
        count += 1
        if on_done is not None:
            on_done(minimized)
    return count
