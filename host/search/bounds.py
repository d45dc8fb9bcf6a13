"""Perturbation bounds: keep every searched (and so every reported) input close to its seed.

``--max-linf N`` projects: after each mutation, every value is clipped to ``seed +- N`` (and
0..255), so the mutant is the nearest image inside the L-infinity ball. ``--min-ssim X`` rejects:
a mutant whose SSIM to its seed (``distances.ssim``) is below X is not kept. Both may be given;
projection comes first, then the SSIM check.

What a rejected mutant costs (the engine's accounting is unchanged): the rejected image is never
sent to a model; its candidate slot carries its *parent* instead (the image the mutation was
applied to, or the seed when that parent is itself outside the bound, which only a DiffChaser
crossover can produce). The parent is queried like any candidate, so **every rejected mutant
costs 2 search queries**, counted in the seed's ``queries``, in queries per trigger and in the
budgets, exactly as an accepted one; the algorithm sees an unchanged image (DFlare: not novel, no
growth, so the operator scores a failure and MH learns to avoid it; random: stays put). The
rejected slot's trace is its parent's, so rejected mutations never appear in a trace.
``extra["bound"]`` of each result counts ``evaluated`` (mutants produced for the seed, speculative
ones included), ``projected`` (changed by the L-infinity clip) and ``rejected``.

Replay: a bounded mutant is ``replay(seed, trace, bound)``: each step, then the L-infinity clip
(the SSIM check never needs replaying, since rejected steps are not in traces).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from host.errors import ConfigError
from host.search import distances, mutations
from host.search.results import MutationStep
from host.search.searcher import Candidate


@dataclass(frozen=True)
class PerturbationBound:
    """How far from its seed a searched image may go; ``None`` means unbounded.

    Args:
        max_linf: largest allowed change of any value, in grey levels (0..255).
        min_ssim: smallest allowed SSIM to the seed (in (-1, 1]).

    Raises:
        ConfigError: a value out of range.
    """

    max_linf: int | None = None
    min_ssim: float | None = None

    def __post_init__(self) -> None:
        if self.max_linf is not None and not 0 <= int(self.max_linf) <= 255:
            raise ConfigError(f"max_linf must be 0..255 grey levels, got {self.max_linf}")
        if self.min_ssim is not None and not -1.0 < float(self.min_ssim) <= 1.0:
            raise ConfigError(f"min_ssim must be in (-1, 1] (1 = identical to the seed), got {self.min_ssim}")

    @property
    def active(self) -> bool:
        return self.max_linf is not None or self.min_ssim is not None

    def to_dict(self) -> dict[str, Any]:
        return {"max_linf": self.max_linf, "min_ssim": self.min_ssim}

    def project(self, images: np.ndarray, seeds: np.ndarray) -> np.ndarray:
        """Clip uint8 images to ``seed +- max_linf`` (unchanged without an L-infinity bound)."""
        if self.max_linf is None:
            return images
        s = np.asarray(seeds, dtype=np.int16)
        lo = np.clip(s - int(self.max_linf), 0, 255)
        hi = np.clip(s + int(self.max_linf), 0, 255)
        return np.clip(np.asarray(images, dtype=np.int16), lo, hi).astype(np.uint8)

    def admissible(self, images: np.ndarray, seeds: np.ndarray) -> np.ndarray:
        """Per image of an NHWC batch: inside the bound (L-infinity and SSIM)?"""
        images = np.asarray(images)
        ok = np.ones(len(images), dtype=bool)
        if self.max_linf is not None:
            ok &= np.asarray(distances.linf(images, seeds)) <= int(self.max_linf)
        if self.min_ssim is not None:
            ok &= np.asarray(distances.ssim(images, seeds)) >= float(self.min_ssim)
        return ok

    def contains(self, image: np.ndarray, seed: np.ndarray) -> bool:
        """Whether one HWC image is inside the bound around its seed."""
        return bool(self.admissible(np.asarray(image)[None], np.asarray(seed)[None])[0])


UNBOUNDED = PerturbationBound()


def replay(seed_image: np.ndarray, trace: Sequence[MutationStep], bound: PerturbationBound = UNBOUNDED
           ) -> np.ndarray:
    """Re-create a bounded search's mutant: each step, then the L-infinity projection."""
    seed = np.asarray(seed_image, dtype=np.uint8)
    image = seed[None]
    for step in trace:
        image = bound.project(mutations.apply(image, [step]), seed[None])
    return image[0]


class BoundFilter:
    """The engine's candidate hook for a bound: projects mutants and swaps rejected ones for their parents.

    Args:
        bound: the perturbation bound to enforce.
    """

    def __init__(self, bound: PerturbationBound) -> None:
        self.bound = bound
        self.counts: dict[int, dict[str, int]] = defaultdict(lambda: {"evaluated": 0, "projected": 0, "rejected": 0})

    def __call__(self, candidates: Sequence[Candidate], mutants: np.ndarray, seeds: np.ndarray,
                 seed_indices: Sequence[int]) -> np.ndarray:
        """Return the images to query for ``candidates`` (their mutants, bounded).

        Rejected candidates are changed in place to stand for their parent (``step`` None; the
        trace of the seed when the parent is out of bounds too), see the module docstring.
        """
        out = self.bound.project(mutants, seeds)
        projected = np.any((out != mutants).reshape(len(out), -1), axis=1)
        ok = self.bound.admissible(out, seeds) if self.bound.min_ssim is not None else np.ones(len(out), bool)
        rejected = np.flatnonzero(~ok)
        if rejected.size:
            bases = np.stack([candidates[i].base for i in rejected])
            base_ok = self.bound.admissible(bases, seeds[rejected])
            for k, i in enumerate(rejected):
                candidate = candidates[i]
                if base_ok[k]:
                    out[i] = candidate.base
                else:  # a crossover child outside the bound: fall back to the seed itself
                    out[i] = seeds[i]
                    candidate.base, candidate.trace = seeds[i], ()
                candidate.step = None
        for i, index in enumerate(seed_indices):
            c = self.counts[int(index)]
            c["evaluated"] += 1
            c["projected"] += int(projected[i])
            c["rejected"] += int(not ok[i])
        return out

    def stats(self, seed_index: int) -> dict[str, Any]:
        """``{"bound": {max_linf, min_ssim, evaluated, projected, rejected}}`` for a result's ``extra``."""
        return {"bound": {**self.bound.to_dict(), **self.counts[int(seed_index)]}}
