"""``dflare repair``: fine-tune the original model on a campaign's triggering inputs and re-compress it.

    dflare repair --campaign DIR --original-keras M.keras|M.h5|SavedModel --out DIR2
        [--recipe int8|dynamic|float16] [--epochs N] [--learning-rate X] [--holdout-fraction F]
        [--seed N] [--json]

    dflare repair --campaign DIR --keep-float LAYERS|suggested --original-keras M --out DIR2 [--json]

Writes DIR2/<compressed>-repaired.tflite, DIR2/repair_report.{json,md}, the repair set
(DIR2/repair_set.npz, DIR2/repair_set/*.png + labels.csv), the held-out triggering inputs and a
re-run campaign against the repaired model (DIR2/rerun/). Needs TensorFlow (``pip install
dflare-edge[repair]``) except with ``--export-only``. The work is in ``host.repair.pipeline``.
``--keep-float`` instead re-converts the Keras original with those layers in float (TFLite's
QuantizationDebugger deny-list) and measures the campaign's triggering inputs, size and latency
(``host.repair.keep_float``; DIR2/keep_float_report.{json,md}).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from host.repair.dataset import DEFAULT_HOLDOUT_FRACTION
from host.repair.pipeline import DEFAULT_EPOCHS, DEFAULT_LEARNING_RATE, DEFAULT_TRIGGER_COPIES, RepairOptions
from host.repair.recipe import RECIPES
from host.repair.report import dflare_table, model_table


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "repair",
        help="fine-tune the original model on a campaign's triggering inputs and re-compress it",
        description="Build a repair set from a campaign's triggering inputs (labelled with the original model's "
        "prediction) plus its seeds, fine-tune a copy of the original Keras model on it, re-compress it with the "
        "compressed model's recipe, and report deviations on held-out triggering inputs, seed accuracy and a "
        "re-run of the search, before and after. Needs TensorFlow: pip install dflare-edge[repair].",
    )
    p.add_argument("--campaign", type=Path, required=True, metavar="DIR", help="a `dflare run --out` directory")
    p.add_argument("--original-keras", type=Path, metavar="M",
                   help="the original float model: .keras, .h5, or a SavedModel directory")
    p.add_argument("--out", type=Path, required=True, metavar="DIR2", help="output directory")
    p.add_argument("--recipe", choices=RECIPES,
                   help="how to re-compress (default: read from the compressed model's tensors)")
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, metavar="N",
                   help=f"fine-tuning epochs (default {DEFAULT_EPOCHS})")
    p.add_argument("--learning-rate", type=float, default=DEFAULT_LEARNING_RATE, metavar="X",
                   help=f"Adam learning rate (default {DEFAULT_LEARNING_RATE:g})")
    p.add_argument("--holdout-fraction", type=float, default=DEFAULT_HOLDOUT_FRACTION, metavar="F",
                   help="share of triggering inputs (by seed) held out to measure the repair "
                   f"(default {DEFAULT_HOLDOUT_FRACTION})")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="random seed of the split and fine-tuning")
    p.add_argument("--trigger-copies", type=int, default=DEFAULT_TRIGGER_COPIES, metavar="N",
                   help="times each triggering input appears in the repair set; 0 fine-tunes on the seeds only, "
                   f"an ablation (default {DEFAULT_TRIGGER_COPIES})")
    p.add_argument("--seeds", type=Path, metavar="S", help="the campaign's seeds, if moved since the campaign ran")
    p.add_argument("--original", type=Path, metavar="O.tflite", help="the campaign's original model, if moved")
    p.add_argument("--compressed", type=Path, metavar="C.tflite", help="the campaign's compressed model, if moved")
    p.add_argument("--no-rerun", dest="rerun", action="store_false",
                   help="skip re-running the search against the repaired model")
    p.add_argument("--export-only", action="store_true",
                   help="only write the repair set (npz, PNG + labels.csv); needs no TensorFlow")
    p.add_argument("--keep-float", metavar="LAYERS",
                   help="instead of fine-tuning: re-convert the Keras original (full integer) with these layers in "
                   "float, comma-separated (explain's layer names, full tensor names or builtin op names such as "
                   "SOFTMAX; 'suggested' takes DIR/explain.json's suggestion), and report the campaign's triggering "
                   "inputs that still deviate, size and latency")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object on stdout")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.keep_float is not None:
        return _keep_float(args)
    from host.repair.pipeline import run_repair

    options = RepairOptions(
        campaign=args.campaign, out=args.out, original_keras=args.original_keras, recipe=args.recipe,
        epochs=args.epochs, learning_rate=args.learning_rate, holdout_fraction=args.holdout_fraction,
        seed=args.seed, trigger_copies=args.trigger_copies, seeds=args.seeds, original=args.original,
        compressed=args.compressed, rerun=args.rerun, export_only=args.export_only,
    )
    report = run_repair(options)
    if args.json:
        print(json.dumps(report, default=str))
        return 0
    if "models" in report:
        print("\n".join(model_table(report["models"])))
    if "dflare" in report:
        print("\n".join(dflare_table(report["dflare"])))
    print(f"report: {report['files']['markdown']}")
    return 0


def _keep_float(args: argparse.Namespace) -> int:
    from host.errors import ConfigError
    from host.repair.keep_float import KeepFloatOptions, parse_layers, run_keep_float, table

    if args.export_only:
        raise ConfigError("--keep-float re-converts a model; it cannot be combined with --export-only")
    options = KeepFloatOptions(campaign=args.campaign, out=args.out, original_keras=args.original_keras,
                               layers=parse_layers(args.keep_float), seeds=args.seeds, original=args.original,
                               compressed=args.compressed)
    report = run_keep_float(options)
    if args.json:
        print(json.dumps(report, default=str))
        return 0
    print("\n".join(table(report["models"])))
    print(f"report: {report['files']['markdown']}")
    return 0
