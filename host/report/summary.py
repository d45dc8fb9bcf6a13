"""``summary.json``: the campaign's numbers, computed from the store alone.

The first eight keys are the ``dflare run --json`` contract (DESIGN.md §5):

    seeds                 seeds searched (requested seeds both models agree on, finished so far)
    triggered             seeds with a reproduced triggering input
    success_rate          triggered / seeds
    queries_per_trigger   mean queries spent on a seed that triggered (None when none did)
    candidates_per_trigger  the same in candidates (images tried on both models; the paper's unit)
    seconds_per_trigger   mean seconds spent on a seed that triggered (None when none did)
    total_queries         every query of the campaign, skipped seeds' agreement checks included
    out                   the output directory

Units and definitions are those of ``host.figures`` (one query = one image through one model, one
candidate = one image through both). The rest add detail: the median, p90 and maximum candidates
per trigger, counts per status, the skipped seeds and why, the exhausted seeds and how many mutants
their search kept (``mutants_kept``: 0 means it never left the seed image), per-algorithm and per-target
figures, the models, the config, and whether every requested seed has finished (``complete``).
``analysis`` (``analysis.py``) holds the label-flip table, per-class deviation rates, distance
statistics and histogram, operators, minimization totals and the perturbation bound; each entry of
``triggering_inputs`` carries its ``distances`` (raw and minimized), its ``minimized`` record and,
when ``dflare explain`` has run, its per-layer figures (``explain``: ``explain_view.input_view``);
the campaign-level ``explain`` holds the layer ranking and the deny-list suggestion.
Minimization queries are never part of ``total_queries`` or the per-trigger figures.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from host.figures import figures
from host.files import atomic_write
from host.records import SeedRecord
from host.report.analysis import analysis
from host.report.explain_view import input_view, read_explain, summary_view
from host.search.results import SeedStatus
from host.store import CampaignStore

SUMMARY_NAME = "summary.json"

#: Keys ``dflare run --json`` prints, in order.
JSON_KEYS = ("seeds", "triggered", "success_rate", "queries_per_trigger", "candidates_per_trigger",
             "seconds_per_trigger", "total_queries", "out")


def build_summary(store: CampaignStore, out_dir: str | Path) -> dict[str, Any]:
    """Compute the summary from the store.

    Args:
        store: the campaign store.
        out_dir: the campaign's output directory (reported as ``out``).

    Returns:
        A JSON-ready dict whose first keys are :data:`JSON_KEYS`.
    """
    records = store.outcomes()
    requested = store.requested()
    finished = {r.seed_index for r in records}
    fig = figures(records).to_dict()
    config = store.config_dict()
    per_algorithm = {}
    for algo in sorted({r.algo for r in records if r.status is not SeedStatus.skipped}):
        per_algorithm[algo] = figures(r for r in records if r.algo == algo and r.status is not SeedStatus.skipped
                                      ).to_dict()
    targets = store.targets()
    models = store.model_digests()
    per_target = {}
    for role, key, delegate_key in (("compressed", "target", "delegate"),
                                    ("original", "reference_target", "reference_delegate")):
        info = targets.get(role, {})
        per_target[role] = {
            "uri": info.get("uri", config.get(key)),
            "delegate": config.get(delegate_key),
            "model": info.get("model", {}),
            "model_sha256": models.get(role),
            "device": info.get("device", {}),
        }
    analysed = analysis(store)
    distances = analysed.pop("inputs")
    minimized = store.minimized()
    explained, explain_note = read_explain(out_dir, models)
    summary: dict[str, Any] = {key: fig[key] for key in JSON_KEYS if key != "out"}
    summary["out"] = str(out_dir)
    summary.update({
        "complete": finished >= {s.seed_index for s in requested},
        "seeds_requested": len(requested),
        "seeds_finished": len(records),
        "seeds_unfinished": len(requested) - len(finished & {s.seed_index for s in requested}),
        "flaky": fig["flaky"],
        "exhausted": fig["exhausted"],
        "skipped": fig["skipped"],
        **{key: fig[key] for key in ("median_candidates_per_trigger", "p90_candidates_per_trigger",
                                     "max_candidates_per_trigger", "total_candidates", "total_queries_per_trigger",
                                     "total_seconds")},
        "skipped_seeds": [{"seed_index": r.seed_index, "reason": r.exit_reason}
                          for r in sorted(records, key=lambda r: r.seed_index) if r.status is SeedStatus.skipped],
        "exhausted_seeds": [_exhausted_view(r) for r in sorted(records, key=lambda r: r.seed_index)
                            if r.status is SeedStatus.exhausted],
        "triggering_inputs": [
            {"seed_index": i.seed_index, "n": i.n, "status": i.status.value, "label_original": i.label_original,
             "label_compressed": i.label_compressed, "queries": i.queries, "seconds": i.seconds,
             "reproduced": i.reproduced, "png": f"inputs/{i.stem}.png", "npy": f"inputs/{i.stem}.npy",
             "distances": distances.get(i.stem), "minimized": _minimized_view(minimized.get((i.seed_index, i.n))),
             "explain": input_view(explained, i.stem)}
            for i in store.inputs()
        ],
        "analysis": analysed,
        "explain": summary_view(explained, explain_note),
        "per_algorithm": per_algorithm,
        "per_target": per_target,
        "algo": config.get("algo"),
        "config": config,
        "models": models,
        "runs": store.runs(),
    })
    return summary


def _exhausted_view(record: SeedRecord) -> dict[str, Any]:
    """An exhausted seed: its cost, why it stopped, and the mutants its search kept (None if not recorded).

    DFlare records ``accepted`` (mutants that replaced the current image). A seed with none never left
    its seed image: no single mutation moved either model's output past the fitness thresholds, which
    happens when both models are saturated on it (a larger budget rarely helps there).
    """
    search = record.extra.get("search") if isinstance(record.extra, dict) else None
    kept = search.get("accepted") if isinstance(search, dict) else None
    return {"seed_index": record.seed_index, "queries": record.queries, "reason": record.exit_reason,
            "mutants_kept": kept}


def _minimized_view(record: Any) -> dict[str, Any] | None:
    if record is None:
        return None
    view = record.to_dict()
    view.pop("trace", None)  # the kept steps are in the store; the summary keeps the figures
    view.pop("phases", None)
    return view


def json_view(summary: dict[str, Any]) -> dict[str, Any]:
    """The ``--json`` output: the contract keys only."""
    return {key: summary[key] for key in JSON_KEYS}


def write_summary(store: CampaignStore, out_dir: str | Path) -> tuple[Path, dict[str, Any]]:
    """Write ``out_dir/summary.json`` atomically; return its path and content."""
    summary = build_summary(store, out_dir)
    path = Path(out_dir) / SUMMARY_NAME
    atomic_write(path, json.dumps(summary, indent=2) + "\n")
    return path, summary
