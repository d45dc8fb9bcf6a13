"""The search on third-party models (``../shared/real-models``) and, where those are absent, the fixtures.

* A saturated seed (both models at top probability, so no single mutation moves the outputs past
  the original's thresholds) stalls the original code, and the default search leaves it and
  triggers: the margin rule and, on its own, the stall rule (issue 17).
* ``dflare-faithful`` stays the original code: its candidate counts on a fixed seed set and rng
  seed are pinned, on a real pair when present and on a fixture pair always. The pins use the
  reference kernels (``delegate=ref``), whose outputs do not depend on the CPU's vector unit.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from host.search import SeedStatus, run
from host.search.dflare import DEFAULT, ORIGINAL, DFlareSearcher
from host.search.engine import Engine
from tests.script_support import load_script

pairs = load_script("bench_pairs")
REAL = pairs.real_models_dir().is_dir()
needs_real = pytest.mark.skipif(not REAL, reason=f"real models not found at {pairs.real_models_dir()}")

#: A saturated seed: (pair, dataset index). MNIST test image 56 on the weight-quantized model (both
#: models give the label 0.99992), or the fixture seed 8 on float32 vs dynamic range (0.999999).
SATURATED = ("real:mnist_quantized", 56) if REAL else ("digits28/dynamic", 8)


def _seed_of(pair_name: str, index: int, delegate: str = "xnnpack"):
    pair = pairs.load_pair(pair_name, 100, delegate=delegate)
    (row,) = np.flatnonzero(pair.indices == index)
    return pair, pair.seeds[row : row + 1]


def _search(pair, seed: np.ndarray, index: int, config, max_queries: int):
    from functools import partial

    engine = Engine(pair.original, pair.compressed, partial(DFlareSearcher, config=config), budget=max_queries)
    (result,) = [e.result for e in engine.run(seed, indices=[index]) if e.result is not None]
    return result


@pytest.mark.timeout(120)
def test_a_saturated_seed_stalls_the_original_and_not_the_default():
    name, index = SATURATED
    pair, seed = _seed_of(name, index)
    p_o, p_c = pair.original.infer(seed)[0], pair.compressed.infer(seed)[0]
    assert p_o.max() > 0.9998 and p_c.max() > 0.9998 and p_o.argmax() == p_c.argmax()  # saturated, agreeing

    stuck = _search(pair, seed, index, ORIGINAL, max_queries=2000)
    assert stuck.status is SeedStatus.exhausted and stuck.extra["search"]["accepted"] == 0  # never left the seed

    found = _search(pair, seed, index, DEFAULT, max_queries=2000)
    assert found.status is SeedStatus.triggered, found.exit_reason
    assert found.extra["search"]["accepted"] > 0

    # the stall rule alone (margin rule off) also walks off the plateau: it keeps mutants the
    # fitness would not, and each escape restarts the fitness from there
    walked = _search(pair, seed, index, DEFAULT.with_departure("margin_fitness", False), max_queries=2000)
    assert walked.extra["search"]["stall_escapes"] > 0 and walked.extra["search"]["accepted"] > 0
    no_rule = _search(pair, seed, index, replace(DEFAULT.with_departure("margin_fitness", False),
                                                 stall_patience=None), max_queries=2000)
    assert no_rule.extra["search"]["accepted"] == 0


def _faithful_candidates(pair_name: str, n_seeds: int) -> list[tuple[int, str, int]]:
    pair = pairs.load_pair(pair_name, n_seeds, delegate="ref")
    results = run(pair.original, pair.compressed, pair.seeds, algo="dflare-faithful", budget=4000, rng_seed=0,
                  indices=pair.indices)
    return sorted((r.seed_index, r.status.value, r.queries // 2) for r in results)


#: (seed index, status, candidates) of dflare-faithful, rng seed 0, 4,000 queries per seed, delegate ref.
FAITHFUL_REAL_A8W8 = [
    (0, "triggered", 30), (1, "triggered", 14), (2, "triggered", 39), (3, "triggered", 37), (4, "triggered", 12),
    (5, "triggered", 14), (6, "triggered", 31), (7, "triggered", 29), (9, "triggered", 19), (10, "triggered", 41),
    (11, "triggered", 22), (12, "triggered", 15), (13, "triggered", 23), (14, "triggered", 31),
    (15, "triggered", 10), (16, "triggered", 3), (17, "triggered", 50), (18, "triggered", 4), (19, "triggered", 15),
    (20, "triggered", 6),
]
FAITHFUL_DIGITS28_INT8 = [
    (0, "triggered", 52), (1, "triggered", 65), (2, "triggered", 23), (3, "triggered", 13), (4, "triggered", 18),
    (5, "triggered", 20), (6, "triggered", 26), (7, "triggered", 89), (8, "triggered", 12), (9, "triggered", 12),
    (10, "triggered", 41), (12, "triggered", 51), (13, "triggered", 46), (14, "triggered", 85),
    (15, "triggered", 14), (16, "triggered", 47), (17, "triggered", 64), (18, "triggered", 15),
    (19, "triggered", 16), (20, "triggered", 185),
]


@needs_real
@pytest.mark.timeout(120)
def test_faithful_candidate_counts_are_pinned_on_a_real_pair():
    assert _faithful_candidates("real:conv_fc_mnist_srq_a8w8", 20) == FAITHFUL_REAL_A8W8


@pytest.mark.timeout(120)
def test_faithful_candidate_counts_are_pinned_on_a_fixture_pair():
    assert _faithful_candidates("digits28/int8", 20) == FAITHFUL_DIGITS28_INT8
