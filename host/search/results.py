"""What a search produces for one seed, in a form the store, reports and CLI all share."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np


class SeedStatus(str, Enum):
    """How a seed's search ended."""

    triggered = "triggered"  # a deviation found and reproduced on every re-run
    flaky = "flaky"  # a deviation found that did not reproduce on re-run
    exhausted = "exhausted"  # budget spent, no deviation
    skipped = "skipped"  # the two models already disagree on the seed (or it mismatches its label)


@dataclass(frozen=True)
class MutationStep:
    """One applied mutation: enough to replay it exactly."""

    op: str
    params: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "params": dict(self.params)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MutationStep:
        return cls(str(data["op"]), dict(data["params"]))


@dataclass
class SeedResult:
    """The outcome of searching one seed."""

    seed_index: int
    status: SeedStatus
    seed_label: int  # the label both models agree on for the seed
    queries: int  # model queries spent (one image through one model = 1)
    seconds: float
    algo: str = "dflare"
    exit_reason: str = ""
    image: np.ndarray | None = None  # the triggering input, uint8 HWC, exactly as tested
    trace: list[MutationStep] = field(default_factory=list)
    probs_original: np.ndarray | None = None
    probs_compressed: np.ndarray | None = None
    label_original: int | None = None
    label_compressed: int | None = None
    reproduced: int = 0  # re-runs (of those attempted) that reproduced the deviation
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def triggered(self) -> bool:
        return self.status is SeedStatus.triggered

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (the image itself is left out; artifacts store it)."""
        def vec(v: np.ndarray | None) -> list[float] | None:
            return None if v is None else [float(x) for x in np.asarray(v).ravel()]

        return {
            "seed_index": self.seed_index,
            "status": self.status.value,
            "seed_label": self.seed_label,
            "queries": self.queries,
            "seconds": self.seconds,
            "algo": self.algo,
            "exit_reason": self.exit_reason,
            "trace": [s.to_dict() for s in self.trace],
            "probs_original": vec(self.probs_original),
            "probs_compressed": vec(self.probs_compressed),
            "label_original": self.label_original,
            "label_compressed": self.label_compressed,
            "reproduced": self.reproduced,
            "extra": self.extra,
        }
