"""Helpers for campaign tests: fixture paths and a small, real noise search over real interpreters.

``noise_search`` is deliberately simple (uniform noise of growing amplitude, one batch per step), so
campaign tests do not depend on the search engine's tuning; it still runs both models on every
candidate, counts queries the same way (one image through one model = one query), re-runs a
deviation to confirm it, and yields :class:`SeedResult` objects exactly as the engine does.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import numpy as np

from host.campaign.runner import SearchJob
from host.search.results import MutationStep, SeedResult, SeedStatus

ROOT = Path(__file__).resolve().parent
MODELS = ROOT / "fixtures" / "models"
SEEDS = ROOT / "fixtures" / "seeds"

#: Candidates per step of the noise search: one batch per model per step.
NOISE_BATCH = 16


def model(name: str, variant: str) -> Path:
    return MODELS / f"{name}-{variant}.tflite"


def seeds(name: str) -> Path:
    return SEEDS / f"{name}.npz"


def noise_search(job: SearchJob, delay_s: float = 0.0) -> Iterator[SeedResult]:
    """Search each seed with uniform noise of growing amplitude until the two models disagree.

    Args:
        job: the campaign's search job.
        delay_s: sleep after each seed (lets a test kill the process mid-campaign).
    """
    cfg = job.config
    budget = cfg.max_queries or 10_000
    for k, index in enumerate(job.seed_indices):
        t0 = time.monotonic()
        rng = np.random.default_rng([cfg.seed, index])
        seed = job.images[k]
        queries = 0
        found = None
        step = 0
        while queries + 2 * NOISE_BATCH <= budget:
            amplitude = min(255, 8 * (step + 1))
            noise = rng.integers(-amplitude, amplitude + 1, size=(NOISE_BATCH, *seed.shape))
            cand = np.clip(seed.astype(np.int16) + noise, 0, 255).astype(np.uint8)
            po, pc = job.original.infer(cand), job.compressed.infer(cand)
            queries += 2 * NOISE_BATCH
            hit = np.nonzero(po.argmax(1) != pc.argmax(1))[0]
            step += 1
            if hit.size:
                j = int(hit[0])
                found = (cand[j], po[j], pc[j], amplitude, step)
                break
        seconds = time.monotonic() - t0
        if found is None:
            yield SeedResult(index, SeedStatus.exhausted, job.labels[k], queries, seconds, algo=cfg.algo,
                             exit_reason="max_queries")
        else:
            image, po_j, pc_j, amplitude, steps = found
            reproduced = 0
            for _ in range(cfg.reruns):
                ro, rc = job.original.infer(image[None]), job.compressed.infer(image[None])
                reproduced += int(ro.argmax() != rc.argmax())
            status = SeedStatus.triggered if reproduced == cfg.reruns else SeedStatus.flaky
            yield SeedResult(
                index, status, job.labels[k], queries, seconds, algo=cfg.algo, exit_reason="deviation",
                image=image, trace=[MutationStep("uniform_noise", {"amplitude": amplitude, "steps": steps})],
                probs_original=po_j, probs_compressed=pc_j, label_original=int(po_j.argmax()),
                label_compressed=int(pc_j.argmax()), reproduced=reproduced,
            )
        if delay_s:
            time.sleep(delay_s)
