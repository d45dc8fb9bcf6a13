"""``dflare repair --keep-float LAYERS``: re-convert the Keras original with some layers in float, and measure it.

The lifecycle, once:

1. Read the campaign (store, triggering inputs, seeds, models, each checked against the stored
   digests) and load its two models on the campaign's targets. The compressed model must be
   full-integer (``int8``): QuantizationDebugger's deny-list applies to a calibrated conversion.
2. Load the Keras original and check it is the campaign's original (``pipeline.load_checked_keras``).
3. Calibrate once on the seeds (as ``dflare repair`` does: the training data is not at hand) through
   ``tf.lite.experimental.QuantizationDebugger`` (``host.tflite.export.KeepFloatConverter``), resolve
   LAYERS against the calibrated model's op outputs (:func:`resolve_layers`), and convert twice:
   without a deny-list (the control: what re-calibration alone does) and with it.
4. Measure each model on the campaign's compressed target: how many of the campaign's triggering
   inputs still deviate from the original, seed accuracy, bytes, and latency per image
   (:func:`latency_ms`).
5. Write ``keep_float_report.json`` and ``keep_float_report.md``.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from host.errors import ConfigError, ModelError, RepairError
from host.files import atomic_write
from host.repair import dataset
from host.repair.pipeline import CALIBRATION_MAX, Sessions, load_checked_keras, open_sessions, top1_labels
from host.repair.recipe import detect_recipe
from host.targets.base import ModelSpec, Session

REPORT_JSON = "keep_float_report.json"
REPORT_MD = "keep_float_report.md"
#: ``--keep-float suggested``: take the deny-list from DIR/explain.json's suggestion.
SUGGESTED = "suggested"

#: Latency: single-image calls per round, rounds, and warm-up calls per model. The models take turns
#: round by round and each reports its fastest round: on a shared machine, load from other processes
#: slows some rounds of every model alike, and the fastest round is the least disturbed (the median of
#: 5 rounds varied by 2-4x under a load average of 7 on 2 cores; the fastest of 15, by at most 15 % between runs).
LATENCY_CALLS = 50
LATENCY_ROUNDS = 15
LATENCY_WARMUP = 10

#: Model rows of the table, in order.
MODEL_ROWS = (
    ("compressed", "compressed (campaign, before)"),
    ("recompressed", "re-converted, nothing in float (control)"),
    ("keep_float", "re-converted, LAYERS in float"),
    ("original", "original (float, reference)"),
)


@dataclass(frozen=True)
class KeepFloatOptions:
    """What ``dflare repair --keep-float`` needs; field names match the flags.

    Attributes:
        campaign: a ``dflare run --out`` directory with triggering inputs.
        out: where the models and the report go.
        original_keras: the original float model (.keras, .h5 or a SavedModel directory).
        layers: layer names, tensor names or builtin op names to keep in float, or ``("suggested",)``.
        seeds / original / compressed: the campaign's files, if moved since it ran.
    """

    campaign: Path
    out: Path
    original_keras: Path | None
    layers: tuple[str, ...]
    seeds: Path | None = None
    original: Path | None = None
    compressed: Path | None = None

    def validate(self) -> None:
        """Raises ConfigError naming the first unusable option."""
        if not self.layers:
            raise ConfigError("--keep-float needs at least one layer (comma-separated), or 'suggested'")
        if self.original_keras is None:
            raise ConfigError("--keep-float needs --original-keras (the float model to re-convert)")


def parse_layers(text: str) -> tuple[str, ...]:
    """``--keep-float``'s value: comma-separated names (tensor names hold ``;`` and ``/``, never a comma)."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def op_outputs(content: bytes) -> list[tuple[str, str]]:
    """``(op name, output tensor name)`` of every op of a .tflite model, in execution order."""
    from device_agent.runtime import load_runtime

    interpreter = load_runtime().module.Interpreter(model_content=content)
    names = {int(d["index"]): str(d["name"]) for d in interpreter.get_tensor_details()}
    return [(str(op["op_name"]), names[int(t)]) for op in interpreter._get_ops_details()  # noqa: SLF001
            for t in op["outputs"] if int(t) in names]


_SCOPE_SUFFIX = re.compile(r"^([^/;]+)_\d+/")


def _unscoped(name: str) -> str:
    """A name without the ``_N`` Keras adds to the model scope on a trace (``digits_cnn_1/`` -> ``digits_cnn/``)."""
    return ";".join(_SCOPE_SUFFIX.sub(r"\1/", part) for part in name.split(";"))


def resolve_layers(items: Sequence[str], outputs: Sequence[tuple[str, str]]) -> tuple[list[str], list[str], dict]:
    """Turn ``--keep-float`` items into QuantizationDebugOptions' ``denylisted_nodes`` and ``denylisted_ops``.

    Each item is, in this order: a builtin op name of the model (``SOFTMAX``: every op of that type);
    an op output tensor name (the full ``;``-joined name); the first ``;``-part of exactly one such
    name (explain's ``layer``); or either of those with the model scope's ``_N`` suffix ignored.

    Args:
        items: the names given.
        outputs: ``(op name, output tensor name)`` of the calibrated model (:func:`op_outputs`).

    Returns:
        ``(nodes, ops, resolved)``, ``resolved`` mapping each item to what it became.

    Raises:
        RepairError: an item names nothing in the model, or more than one tensor.
    """
    op_names = {op for op, _ in outputs}
    tensors = [name for _, name in outputs]
    nodes: list[str] = []
    ops: list[str] = []
    resolved: dict[str, str] = {}
    for item in items:
        if item in op_names:
            ops.append(item)
            resolved[item] = f"every {item} op"
            continue
        found = [t for t in tensors if t == item] or [t for t in tensors if t.split(";")[0] == item]
        if not found:
            key = _unscoped(item)
            found = ([t for t in tensors if _unscoped(t) == key]
                     or [t for t in tensors if _unscoped(t).split(";")[0] == key.split(";")[0]])
        if len(found) != 1:
            layers = ", ".join(dict.fromkeys(t.split(";")[0] for t in tensors))
            what = "names no op output" if not found else f"names {len(found)} tensors"
            raise RepairError(f"--keep-float {item!r} {what} of the re-converted model; its layers are: {layers} "
                              f"(or a builtin op name: {', '.join(sorted(op_names))})")
        if found[0] not in nodes:
            nodes.append(found[0])
        resolved[item] = found[0]
    return nodes, ops, resolved


def suggested_layers(campaign: Path) -> tuple[str, ...]:
    """The deny-list of ``dflare explain``'s suggestion (DIR/explain.json).

    Raises:
        RepairError: no explain.json, or it suggests nothing.
    """
    from host.report.explain_view import EXPLAIN_JSON

    path = Path(campaign) / EXPLAIN_JSON
    try:
        suggestion = json.loads(path.read_text()).get("suggestion") or {}
    except (OSError, ValueError):
        raise RepairError(f"--keep-float suggested reads {path}, which is missing or unreadable: "
                          f"run dflare explain {campaign} first") from None
    names = tuple(suggestion.get("denylisted_nodes") or ())
    if not names:
        raise RepairError(f"{path} suggests no layer to keep in float ({suggestion.get('why') or 'no suggestion'}); "
                          "name the layers with --keep-float LAYERS")
    return names


def latency_ms(sessions: dict[str, Session], images: np.ndarray, calls: int = LATENCY_CALLS,
               rounds: int = LATENCY_ROUNDS, warmup: int = LATENCY_WARMUP) -> dict[str, float]:
    """Per session, the mean time of one single-image ``infer`` call in its fastest round, in milliseconds.

    The sessions take turns round by round, so a burst of load from elsewhere falls on all of them.
    """
    for session in sessions.values():
        for i in range(warmup):
            session.infer(images[i % len(images)][None])
    best = {role: float("inf") for role in sessions}
    for _ in range(rounds):
        for role, session in sessions.items():
            started = time.perf_counter()
            for i in range(calls):
                session.infer(images[i % len(images)][None])
            best[role] = min(best[role], (time.perf_counter() - started) / calls * 1e3)
    return best


def run_keep_float(options: KeepFloatOptions, say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Re-convert with LAYERS in float and measure it against the campaign; return the report (also written).

    Raises:
        ConfigError: an unusable option.
        RepairError: TensorFlow missing, no triggering inputs, a compressed model that is not full-integer, a
            Keras model that is not the original, or a layer that names nothing.
        ModelError: a model that is missing or cannot be loaded.
        SeedError: the campaign's seeds are missing or changed.
        CampaignError: the directory holds no campaign.
        TargetError: a campaign target failed.
    """
    say = say or _stderr
    options.validate()
    started = time.monotonic()
    if not Path(options.original_keras).exists():  # type: ignore[arg-type]
        raise ModelError(f"original Keras model not found: {options.original_keras}")
    from host.repair import finetune
    from host.tflite.export import KeepFloatConverter, embed_metadata, extract_metadata

    finetune.require_tensorflow()
    items = suggested_layers(options.campaign) if options.layers == (SUGGESTED,) else options.layers
    data = dataset.load_campaign(options.campaign, options.seeds, options.original, options.compressed)
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"campaign": str(data.directory), "out": str(out), "keep_float": list(items),
                              "triggering_inputs": len(data.triggers)}
    with contextlib.ExitStack() as stack:
        sessions = open_sessions(data.config, stack)
        recipe = detect_recipe(sessions.compressed_spec.content, str(data.config.compressed))
        if recipe.variant != "int8":
            raise RepairError(f"--keep-float re-quantizes a full-integer model, and {data.config.compressed} is "
                              f"{recipe.variant} ({recipe.source}): QuantizationDebugger's deny-list needs int8 "
                              "calibration")
        report["recipe"] = recipe.to_dict()
        keras_model, _ = load_checked_keras(options.original_keras, data, sessions, report)  # type: ignore[arg-type]
        calibration = sessions.compressed_spec.preprocessing.apply(data.seeds.x)[:CALIBRATION_MAX]
        say(f"repair: calibrating {options.original_keras} on {len(calibration)} seeds (QuantizationDebugger)")
        with finetune.quiet():
            converter = KeepFloatConverter(keras_model, calibration, recipe.int8_io)
        nodes, ops, resolved = resolve_layers(items, op_outputs(converter.calibrated_model))
        report["denylist"] = {"denylisted_nodes": nodes, "denylisted_ops": ops, "resolved": resolved,
                              "calibration_images": len(calibration), "fully_quantize": converter.fully_quantize}
        metadata = extract_metadata(sessions.compressed_spec.content)
        stem = Path(data.config.compressed).stem
        models = {"compressed": (Path(data.config.compressed), sessions.compressed_spec.content)}
        for role, suffix, deny in (("recompressed", "recompressed", ((), ())), ("keep_float", "keep-float",
                                                                                (nodes, ops))):
            try:
                with finetune.quiet():
                    content = converter.convert(*deny)
            except ValueError as exc:
                raise RepairError(f"the converter refused the deny-list {nodes + ops} ({exc})") from None
            content = embed_metadata(content, metadata) if metadata else content
            path = out / f"{stem}-{suffix}.tflite"
            path.write_bytes(content)
            models[role] = (path, content)
        say(f"repair: wrote {models['keep_float'][0]} ({', '.join(nodes + ops)} in float); measuring")
        report["models"] = _measure(models, sessions, data)
    report["seconds"] = time.monotonic() - started
    report["files"] = write_report(report, out)
    return report


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _measure(models: dict[str, tuple[Path, bytes]], sessions: Sessions,
             data: dataset.CampaignData) -> dict[str, dict[str, Any]]:
    """Per model: triggering inputs that still deviate, seed accuracy and agreement, bytes, latency per image."""
    triggers = np.asarray([t.image for t in data.triggers], np.uint8).reshape(-1, *data.seeds.x.shape[1:])
    reference = top1_labels(sessions.original, triggers)
    reference_seeds = top1_labels(sessions.original, data.seeds.x)
    labels = data.seeds.y if data.seeds.y is not None else reference_seeds
    target = sessions.targets[data.config.target]
    spec = sessions.compressed_spec
    results: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        loaded: dict[str, Session] = {}
        for role, (path, content) in models.items():
            if role == "compressed":
                loaded[role] = sessions.compressed
            else:
                loaded[role] = target.load(ModelSpec(content, path.name, spec.delegate, spec.threads,
                                                     spec.preprocessing))
                stack.callback(loaded[role].close)
            seeds = top1_labels(loaded[role], data.seeds.x)
            results[role] = {
                "path": str(path), "bytes": len(content),
                "deviations": int((top1_labels(loaded[role], triggers) != reference).sum()), "count": len(triggers),
                "seed_accuracy": float((seeds == labels).mean()),
                "seed_agreement_with_original": float((seeds == reference_seeds).mean()),
            }
        original = Path(data.config.original)
        results["original"] = {"path": str(original), "bytes": original.stat().st_size, "deviations": 0,
                               "count": len(triggers), "seed_accuracy": float((reference_seeds == labels).mean()),
                               "seed_agreement_with_original": 1.0}
        loaded["original"] = sessions.original
        for role, ms in latency_ms(loaded, data.seeds.x).items():
            results[role]["latency_ms"] = ms
    return results


def table(models: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown rows: deviations on the campaign's triggering inputs, seed accuracy, size and latency."""
    base = models["compressed"]
    lines = ["| model | triggering inputs that deviate | seed accuracy | bytes | latency ms/image (x before) |",
             "|---|---:|---:|---:|---:|"]
    for role, title in MODEL_ROWS:
        row = models.get(role)
        if row is None:
            continue
        deviate = "-" if role == "original" else f"{row['deviations']} / {row['count']}"
        lines.append(f"| {title} | {deviate} | {100 * row['seed_accuracy']:.1f}% | {row['bytes']:,} | "
                     f"{row['latency_ms']:.3f} ({row['latency_ms'] / base['latency_ms']:.2f}x) |")
    return lines


def write_report(report: dict[str, Any], out_dir: Path) -> dict[str, str]:
    """Write the report as JSON and markdown into ``out_dir``; return their paths (also stored in the JSON)."""
    files = {"json": str(out_dir / REPORT_JSON), "markdown": str(out_dir / REPORT_MD)}
    report = {**report, "files": files}
    deny = report["denylist"]
    lines = [f"# dflare repair --keep-float of {report['campaign']}", "",
             f"Kept in float: {', '.join(deny['denylisted_nodes'] + deny['denylisted_ops'])} "
             f"(QuantizationDebugOptions denylisted_nodes={deny['denylisted_nodes']}, "
             f"denylisted_ops={deny['denylisted_ops']}). Calibrated on {deny['calibration_images']} seeds; "
             f"{report['triggering_inputs']} triggering inputs of the campaign re-run on its compressed target.", ""]
    lines += table(report["models"]) + [""]
    atomic_write(files["markdown"], "\n".join(lines))
    atomic_write(files["json"], json.dumps(report, indent=2, default=str) + "\n")
    return files
