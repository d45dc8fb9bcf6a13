"""``dflare run``: search for triggering inputs between an original and a compressed model.

    dflare run --original O.tflite --compressed C.tflite --seeds S.npz [--target T]
        [--reference-target T] [--algo dflare|diffchaser|random|...] [--max-queries N]
        [--timeout-s S] [--seed N] [--out DIR] [--json]

Thin on purpose: flags, config merging, the campaign store, resume and reports live in
``host.campaign`` (``command.py`` -> ``runner.py``), and the search itself is
``host.search.run`` (the batched lockstep engine). With ``--json`` it prints
``{"seeds", "triggered", "success_rate", "queries_per_trigger", "seconds_per_trigger",
"total_queries", "out", ...}``; DIR gets ``inputs/*.png`` + ``.npy``, ``summary.json``,
``campaign.sqlite``, ``report.html`` and ``junit.xml``.
"""

from __future__ import annotations

import argparse

from host.campaign.command import add_arguments, execute


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "run",
        help="search for inputs on which the compressed model disagrees with the original",
        description="Search seed images for triggering inputs: small mutations on which the compressed model's "
        "top-1 label differs from the original model's (DFlare by default). Rerun with the same --out to resume.",
    )
    add_arguments(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    return execute(args)
