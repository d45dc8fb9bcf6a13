"""Check that the fixture models' compressed variants can be driven to disagree with float32.

Two measurements per (model, compressed variant), on seeds where both models agree with the label:

1. **One-shot perturbation:** every seed gets each of DFlare's seven mutation operators
   (``host.search.mutations``) ``--draws`` times, once each from the seed; count the mutants on
   which float32 and the compressed model's top-1 labels differ.
2. **Search:** the real DFlare engine (``host.search.run``, in-process targets) with a budget of
   ``--max-queries`` per seed: how many of ``--seeds`` agreeing seeds it triggers, and the
   median queries per triggering input (one query = one image through one model).

Usage::

    .venv/bin/python scripts/fixture_findability.py [--name digits28] [--variant int8]

The fixtures are meant to let the search trigger >= 90% of 50 agreeing seeds within 5,000
queries for the int8 variants (tests/fixtures/README.md records the measured figures).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from host.search import mutations  # noqa: E402
from host.search.api import run  # noqa: E402
from host.search.results import SeedStatus  # noqa: E402
from host.targets.base import ModelSpec  # noqa: E402
from host.targets.local import LocalTarget  # noqa: E402

FIXTURES = REPO / "tests" / "fixtures"


def one_shot(original, compressed, x: np.ndarray, draws: int, rng: np.random.Generator) -> tuple[int, int]:
    """Mutants (each operator ``draws`` times per seed) on which the two top-1 labels differ."""
    images = np.repeat(x, len(mutations.OPERATORS) * draws, axis=0)
    steps = [mutations.draw(op, rng, x.shape[1:]) for _ in x for op in mutations.OPERATORS for _ in range(draws)]
    batch = mutations.apply(images, steps)
    differ = original.infer(batch).argmax(1) != compressed.infer(batch).argmax(1)
    return int(differ.sum()), len(batch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", action="append", choices=["digits28", "digits32rgb", "digits28wide"])
    parser.add_argument("--variant", action="append", choices=["int8", "dynamic", "float16"])
    parser.add_argument("--seeds", type=int, default=50, help="agreeing seeds to search from")
    parser.add_argument("--max-queries", type=int, default=5000, help="search budget per seed")
    parser.add_argument("--draws", type=int, default=3, help="one-shot mutants per operator and seed")
    parser.add_argument("--algo", default="dflare")
    parser.add_argument("--rng", type=int, default=0)
    parser.add_argument("--fixtures", type=Path, default=FIXTURES, help="folder with models/ and seeds/")
    args = parser.parse_args(argv)
    target = LocalTarget()
    for name in args.name or ["digits28", "digits32rgb"]:
        with np.load(args.fixtures / "seeds" / f"{name}.npz") as data:
            x, y = data["x"], data["y"]
        original = target.load(ModelSpec.from_path(args.fixtures / "models" / f"{name}-float32.tflite"))
        labels_original = original.infer(x).argmax(1)
        for variant in args.variant or ["int8", "dynamic", "float16"]:
            compressed = target.load(ModelSpec.from_path(args.fixtures / "models" / f"{name}-{variant}.tflite"))
            agree = np.flatnonzero((labels_original == compressed.infer(x).argmax(1)) & (labels_original == y))
            agree = agree[: args.seeds]
            differ, total = one_shot(original, compressed, x[agree], args.draws, np.random.default_rng(args.rng))
            start = time.monotonic()
            results = list(run(original, compressed, x[agree], algo=args.algo, budget=args.max_queries,
                               rng_seed=args.rng, labels=y[agree].tolist(), indices=agree.tolist()))
            queries = [r.queries for r in results if r.status == SeedStatus.triggered]
            median = int(np.median(queries)) if queries else None
            print(f"{name} float32 vs {variant}: one-shot mutants differ on {differ}/{total}; {args.algo} triggered "
                  f"{len(queries)}/{len(agree)} seeds within {args.max_queries} queries (median {median} queries, "
                  f"{time.monotonic() - start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
