"""Pair the original graph's activations with the compressed graph's.

The converter usually keeps tensor names through quantization (``conv1/Relu;conv1/BiasAdd``), so:

1. **name**: a name that occurs once in each graph, with the same shape, pairs the two tensors.
   These anchors must run in the same order in both graphs; one that crosses an earlier anchor is
   dropped (it would pair a tensor with one computed at another depth).
2. **order_shape**: between two anchors, when both graphs have the same number of activations and
   each pair has the same op and shape, they pair in execution order.
3. **unsure**: otherwise each remaining original tensor takes the next compressed tensor of the same
   shape (and the same op, if there is one), in order. Such a pair is reported as unsure, with why.

Tensors left over are listed as unmatched (e.g. a compressed graph's extra QUANTIZE op).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from host.explain.tensors import TensorInfo

#: The three confidences of a match, best first.
CONFIDENCES = ("name", "order_shape", "unsure")


@dataclass(frozen=True)
class Match:
    """One original tensor paired with one compressed tensor."""

    original: TensorInfo
    compressed: TensorInfo
    confidence: str  # one of CONFIDENCES
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = {"confidence": self.confidence, "original": self.original.to_dict(),
               "compressed": self.compressed.to_dict()}
        if self.reason:
            out["reason"] = self.reason
        return out


@dataclass(frozen=True)
class Matching:
    """Every match in the original graph's execution order, and what was left unmatched."""

    matches: list[Match]
    unmatched_original: list[TensorInfo]
    unmatched_compressed: list[TensorInfo]

    def counts(self) -> dict[str, int]:
        counted = Counter(m.confidence for m in self.matches)
        return {c: counted.get(c, 0) for c in CONFIDENCES}

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": self.counts(),
            "unsure": [m.original.layer for m in self.matches if m.confidence == "unsure"],
            "unmatched_original": [t.to_dict() for t in self.unmatched_original],
            "unmatched_compressed": [t.to_dict() for t in self.unmatched_compressed],
        }


def match_graphs(original: list[TensorInfo], compressed: list[TensorInfo]) -> Matching:
    """Pair two graphs' activations (both in execution order); see the module docstring for the rules."""
    anchors = _name_anchors(original, compressed)
    matches: list[Match] = []
    unmatched_o: list[TensorInfo] = []
    unmatched_c: list[TensorInfo] = []
    prev_o = prev_c = -1
    for o_pos, c_pos in [*anchors, (len(original), len(compressed))]:
        seg_o, seg_c = original[prev_o + 1:o_pos], compressed[prev_c + 1:c_pos]
        found, left_o, left_c = _match_segment(seg_o, seg_c)
        matches.extend(found)
        unmatched_o.extend(left_o)
        unmatched_c.extend(left_c)
        if o_pos < len(original):
            matches.append(Match(original[o_pos], compressed[c_pos], "name"))
        prev_o, prev_c = o_pos, c_pos
    matches.sort(key=lambda m: m.original.order)
    return Matching(matches, unmatched_o, unmatched_c)


def _name_anchors(original: list[TensorInfo], compressed: list[TensorInfo]) -> list[tuple[int, int]]:
    """Positions (original, compressed) of tensors paired by a unique shared name, increasing in both."""
    names_o = Counter(t.name for t in original)
    by_name_c = {t.name: i for i, t in enumerate(compressed)}
    names_c = Counter(t.name for t in compressed)
    anchors: list[tuple[int, int]] = []
    for i, t in enumerate(original):
        if not t.name or names_o[t.name] != 1 or names_c.get(t.name) != 1:
            continue
        j = by_name_c[t.name]
        if compressed[j].shape != t.shape:
            continue
        if anchors and j <= anchors[-1][1]:
            continue  # crosses an earlier anchor
        anchors.append((i, j))
    return anchors


def _match_segment(seg_o: list[TensorInfo], seg_c: list[TensorInfo]
                   ) -> tuple[list[Match], list[TensorInfo], list[TensorInfo]]:
    """Pair the tensors between two anchors by order and shape."""
    if not seg_o or not seg_c:
        return [], list(seg_o), list(seg_c)
    if len(seg_o) == len(seg_c) and all(a.shape == b.shape and a.op == b.op for a, b in zip(seg_o, seg_c)):
        return [Match(a, b, "order_shape") for a, b in zip(seg_o, seg_c)], [], []
    matches: list[Match] = []
    left_o: list[TensorInfo] = []
    start = 0
    for a in seg_o:
        same_shape = [j for j in range(start, len(seg_c)) if seg_c[j].shape == a.shape]
        same_op = [j for j in same_shape if seg_c[j].op == a.op]
        pick = (same_op or same_shape or [None])[0]
        if pick is None:
            left_o.append(a)
            continue
        why = (f"{len(seg_o)} original vs {len(seg_c)} compressed tensors between name anchors; "
               + ("same op and shape" if same_op else f"same shape, op {a.op} vs {seg_c[pick].op}"))
        matches.append(Match(a, seg_c[pick], "unsure", why))
        start = pick + 1
    used = {m.compressed.index for m in matches}
    return matches, left_o, [b for b in seg_c if b.index not in used]
