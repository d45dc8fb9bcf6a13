"""What a campaign keeps about its seeds and inputs: the record types the store writes and reports read.

A leaf module: the store (``host.store``), the artifact files (``host.artifacts``), the reports and
the campaign runner all speak these types, and none of them needs the others to do so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from host.search.results import MutationStep, SeedStatus


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace, so equal values compare equal as text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class CampaignIdentity(Protocol):
    """What the store needs of a campaign's settings (``host.campaign.config.CampaignConfig``)."""

    def identity(self) -> dict[str, Any]:
        """The fields that define what the campaign computes (a change refuses a resume)."""

    def to_dict(self) -> dict[str, Any]:
        """Every setting, JSON-ready."""


@dataclass(frozen=True)
class RequestedSeed:
    """A seed the campaign was asked to handle (recorded before any search starts)."""

    seed_index: int
    label: int | None
    name: str

    def to_dict(self) -> dict[str, Any]:
        return {"seed_index": self.seed_index, "label": self.label, "name": self.name}


@dataclass(frozen=True)
class SeedRecord:
    """A finished seed's outcome."""

    seed_index: int
    status: SeedStatus
    seed_label: int | None
    queries: int
    seconds: float
    algo: str
    exit_reason: str
    label_original: int | None
    label_compressed: int | None
    extra: dict[str, Any]
    run_id: int | None
    finished_at: float

    @property
    def triggered(self) -> bool:
        return self.status is SeedStatus.triggered

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed_index": self.seed_index, "status": self.status.value, "seed_label": self.seed_label,
            "queries": self.queries, "seconds": self.seconds, "algo": self.algo,
            "exit_reason": self.exit_reason, "label_original": self.label_original,
            "label_compressed": self.label_compressed, "extra": self.extra, "run_id": self.run_id,
            "finished_at": self.finished_at,
        }


@dataclass(frozen=True)
class InputRecord:
    """A deviating input (triggered, or flaky when it did not reproduce) with everything to report it."""

    seed_index: int
    n: int
    status: SeedStatus
    trace: list[MutationStep]
    probs_original: np.ndarray
    probs_compressed: np.ndarray
    label_original: int
    label_compressed: int
    seed_label: int | None
    queries: int
    seconds: float
    reproduced: int
    image: np.ndarray = field(repr=False)
    seed_image: np.ndarray | None = field(default=None, repr=False)

    @property
    def stem(self) -> str:
        """The artifact file name without extension: ``<seed>_<n>``."""
        return f"{self.seed_index}_{self.n}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view; the image bytes are left out (they are the artifact files)."""
        return {
            "seed_index": self.seed_index, "n": self.n, "status": self.status.value,
            "trace": [s.to_dict() for s in self.trace],
            "probs_original": [float(v) for v in self.probs_original],
            "probs_compressed": [float(v) for v in self.probs_compressed],
            "label_original": self.label_original, "label_compressed": self.label_compressed,
            "seed_label": self.seed_label, "queries": self.queries, "seconds": self.seconds,
            "reproduced": self.reproduced, "shape": list(self.image.shape),
            "png": f"inputs/{self.stem}.png", "npy": f"inputs/{self.stem}.npy",
        }


@dataclass(frozen=True)
class MinimizedRecord:
    """A triggering input shrunk toward its seed (``host.search.minimize``), re-verified on both targets.

    ``info`` holds the kept trace steps, the distances ``before``/``after``, the phases and why it stopped.
    """

    seed_index: int
    n: int  # the raw input it minimizes
    probs_original: np.ndarray
    probs_compressed: np.ndarray
    label_original: int
    label_compressed: int
    queries: int  # minimization queries (apart from the search's)
    verify_queries: int
    reproduced: int
    seconds: float
    info: dict[str, Any]
    image: np.ndarray = field(repr=False)

    @property
    def stem(self) -> str:
        """The artifact file name without extension: ``<seed>_<n>_min``."""
        return f"{self.seed_index}_{self.n}_min"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view; the image bytes are left out (they are the artifact files)."""
        return {
            "seed_index": self.seed_index, "n": self.n, "label_original": self.label_original,
            "label_compressed": self.label_compressed, "queries": self.queries,
            "verify_queries": self.verify_queries, "reproduced": self.reproduced, "seconds": self.seconds,
            **self.info, "png": f"inputs/{self.stem}.png", "npy": f"inputs/{self.stem}.npy",
        }
