"""Where the compressed model breaks: label flips, per-class rates, distances, operators, minimization.

Computed from the store alone, for ``summary.json`` (key ``analysis``) and ``report.html``. Only
triggering (reproduced) inputs count in the flips, distances and operators; flaky ones are listed
but not analysed. Distances follow ``host.search.distances`` (L2 and L-infinity in grey levels).
"""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

import numpy as np

from host.records import InputRecord, MinimizedRecord, SeedRecord
from host.search.deviation import top1_tied
from host.search.distances import distances
from host.search.results import SeedStatus
from host.store import CampaignStore

#: Bins of the distance histograms: enough to show a shape for tens to hundreds of inputs.
HISTOGRAM_BINS = 12


def input_distances(record: InputRecord, minimized: MinimizedRecord | None) -> dict[str, Any]:
    """``{"raw": {...}, "minimized": {...} | None}`` distances from the seed (empty without a stored seed)."""
    if record.seed_image is None:
        return {"raw": None, "minimized": None}
    return {"raw": distances(record.image, record.seed_image).to_dict(),
            "minimized": None if minimized is None else distances(minimized.image, record.seed_image).to_dict()}


def flip_table(records: list[InputRecord]) -> dict[str, Any]:
    """Counts of (original label -> compressed label) over triggering inputs, as pairs and as a matrix."""
    pairs = Counter((r.label_original, r.label_compressed) for r in records)
    labels = sorted({label for pair in pairs for label in pair})
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for (lo, lc), count in pairs.items():
        matrix[index[lo]][index[lc]] = count
    return {
        "pairs": [{"original": lo, "compressed": lc, "count": n}
                  for (lo, lc), n in sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))],
        "labels": labels,
        "matrix": matrix,
    }


def ties(records: list[InputRecord]) -> dict[str, Any]:
    """Triggering inputs whose deviation rests on an exact top-1 tie.

    A quantized output has few distinct values, so two classes can share the top probability;
    ``argmax`` then picks the lower class, which is a real change of the deployed label but not a
    confident one. Counted per model, with the inputs' stems (``<seed>_<n>``).
    """
    compressed = [r.stem for r in records if top1_tied(r.probs_compressed)]
    original = [r.stem for r in records if top1_tied(r.probs_original)]
    return {"inputs": len(records), "compressed": len(compressed), "original": len(original),
            "compressed_inputs": compressed, "original_inputs": original}


def per_class(records: list[SeedRecord]) -> list[dict[str, Any]]:
    """Deviation rate per seed class (the label both models agree on) over the searched seeds."""
    searched = [r for r in records if r.status is not SeedStatus.skipped and r.seed_label is not None]
    out = []
    for label in sorted({r.seed_label for r in searched}):
        group = [r for r in searched if r.seed_label == label]
        hits = sum(r.status is SeedStatus.triggered for r in group)
        out.append({"label": label, "seeds": len(group), "triggered": hits, "rate": hits / len(group)})
    return out


def histogram(raw: list[float], minimized: list[float], bins: int = HISTOGRAM_BINS) -> dict[str, Any]:
    """Shared-edge histograms of raw and minimized values."""
    values = raw + minimized
    if not values:
        return {"edges": [], "raw": [], "minimized": []}
    top = max(values) if max(values) > 0 else 1.0
    edges = np.linspace(0.0, top, bins + 1)
    return {"edges": [float(e) for e in edges],
            "raw": np.histogram(raw, edges)[0].tolist(),
            "minimized": np.histogram(minimized, edges)[0].tolist()}


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "mean": None, "max": None}
    return {"median": float(statistics.median(values)), "mean": float(statistics.fmean(values)),
            "max": float(max(values))}


def operators(records: list[InputRecord], minimized: dict[tuple[int, int], MinimizedRecord]) -> list[dict[str, Any]]:
    """Per mutation operator: triggering inputs whose raw trace uses it, its steps there, and the
    minimized traces that still need it (which mutations break this model)."""
    inputs, steps, kept = Counter(), Counter(), Counter()
    for r in records:
        ops = [s.op for s in r.trace]
        steps.update(ops)
        inputs.update(set(ops))
        m = minimized.get((r.seed_index, r.n))
        if m is not None:
            kept.update({s["op"] for s in m.info.get("trace", [])})
    return [{"op": op, "inputs": inputs[op], "steps": steps[op], "minimized_inputs": kept[op]}
            for op in sorted(inputs, key=lambda op: (-inputs[op], op))]


def minimization(records: list[InputRecord], minimized: dict[tuple[int, int], MinimizedRecord],
                 dists: dict[tuple[int, int], dict[str, Any]]) -> dict[str, Any]:
    """Totals and the median L2 before and after over the minimized triggering inputs."""
    done = [minimized[(r.seed_index, r.n)] for r in records if (r.seed_index, r.n) in minimized]
    before = [dists[(m.seed_index, m.n)]["raw"]["l2"] for m in done if dists[(m.seed_index, m.n)]["raw"]]
    after = [dists[(m.seed_index, m.n)]["minimized"]["l2"] for m in done if dists[(m.seed_index, m.n)]["minimized"]]
    median_before = statistics.median(before) if before else None
    median_after = statistics.median(after) if after else None
    return {
        "inputs": len(done),
        "reproduced": sum(m.reproduced == m.info.get("verify_runs", m.reproduced) for m in done),
        "queries": sum(m.queries for m in done),
        "verify_queries": sum(m.verify_queries for m in done),
        "mean_queries": statistics.fmean(m.queries for m in done) if done else None,
        "seconds": sum(m.seconds for m in done),
        "median_l2_before": median_before,
        "median_l2_after": median_after,
        "median_l2_reduction": (1.0 - median_after / median_before) if median_before and median_after is not None
        else None,
    }


def bound_view(config: dict[str, Any], outcomes: list[SeedRecord]) -> dict[str, Any]:
    """The campaign's perturbation bound and what it did: mutants evaluated, projected and rejected."""
    totals = Counter()
    for r in outcomes:
        for key, value in (r.extra.get("bound") or {}).items():
            if key in ("evaluated", "projected", "rejected"):
                totals[key] += int(value)
    return {"max_linf": config.get("max_linf"), "min_ssim": config.get("min_ssim"),
            "evaluated": totals["evaluated"], "projected": totals["projected"], "rejected": totals["rejected"]}


def analysis(store: CampaignStore) -> dict[str, Any]:
    """Everything above for one campaign (JSON-ready), plus ``inputs``: distances per ``"<seed>_<n>"``."""
    outcomes = store.outcomes()
    inputs = [r for r in store.inputs() if r.status is SeedStatus.triggered]
    minimized = store.minimized()
    dists = {(r.seed_index, r.n): input_distances(r, minimized.get((r.seed_index, r.n))) for r in inputs}
    metric_values: dict[str, dict[str, list[float]]] = {}
    for metric in ("l0", "l2", "linf", "ssim"):
        raw = [d["raw"][metric] for d in dists.values() if d["raw"]]
        small = [d["minimized"][metric] for d in dists.values() if d["minimized"]]
        metric_values[metric] = {"raw": raw, "minimized": small}
    return {
        "flips": flip_table(inputs),
        "ties": ties(inputs),
        "per_class": per_class(outcomes),
        "distances": {metric: {"raw": _stats(v["raw"]), "minimized": _stats(v["minimized"])}
                      for metric, v in metric_values.items()},
        "l2_histogram": histogram(metric_values["l2"]["raw"], metric_values["l2"]["minimized"]),
        "operators": operators(inputs, minimized),
        "minimization": minimization(inputs, minimized, dists),
        "bound": bound_view(store.config_dict(), outcomes),
        "inputs": {f"{i}_{n}": d for (i, n), d in dists.items()},
    }
