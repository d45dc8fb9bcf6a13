"""The minimizer's mechanics on small numpy classifiers: budgets, bounds, re-verification, replay of subsets;
the analysis tables; the campaign settings for minimization and bounds."""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import pytest

from host.campaign.command import add_arguments, config_from_args
from host.errors import ConfigError
from host.records import InputRecord
from host.report.analysis import flip_table, histogram, ties
from host.search import SeedStatus, run
from host.search.bounds import UNBOUNDED, PerturbationBound
from host.search.deviation import top1_tied
from host.search.distances import linf
from host.search.minimize import MinimizeExit, minimize, replay_subsets
from host.search.mutations import replay
from host.search.results import MutationStep
from tests.unit.test_engine import LinearSession, _agreeing_seeds


def _triggered(bound: PerturbationBound = UNBOUNDED, n: int = 6):
    original, compressed = LinearSession(), LinearSession(step=0.5)
    seeds = _agreeing_seeds(n, original, compressed)
    results = [r for r in run(original, compressed, seeds, "dflare", 2000, 3, bound=bound) if r.triggered]
    assert results
    return original, compressed, seeds, results


class Counting:
    """Counts the images a session is asked for."""

    def __init__(self, session) -> None:
        self.session, self.images = session, 0

    def infer(self, images: np.ndarray) -> np.ndarray:
        self.images += len(images)
        return self.session.infer(images)

    def infer_many(self, batches) -> list[np.ndarray]:
        return [self.infer(b) for b in batches]


def test_minimized_inputs_trigger_are_closer_and_queries_are_counted_exactly():
    original, compressed, seeds, results = _triggered()
    for r in results:
        o, c = Counting(original), Counting(compressed)
        m = minimize(o, c, seeds[r.seed_index], r.image, r.trace, r.probs_original, r.probs_compressed,
                     seed_label=r.seed_label, max_queries=400)
        assert o.images == c.images and 2 * o.images == m.queries + m.verify_queries
        assert m.queries <= 400 and m.verify_queries == 2 * m.verify_runs
        assert np.argmax(original.infer(m.image[None])) != np.argmax(compressed.infer(m.image[None]))
        assert m.after.l2 <= m.before.l2
        assert set(m.phases) >= {"trace", "blend", "boundary", "regions", "final_blend"}


def test_a_tiny_budget_stops_with_the_raw_input_still_reported():
    original, compressed, seeds, results = _triggered()
    r = results[0]
    m = minimize(original, compressed, seeds[r.seed_index], r.image, r.trace, r.probs_original,
                 r.probs_compressed, seed_label=r.seed_label, max_queries=2)
    assert m.exit_reason is MinimizeExit.max_queries and m.queries <= 2
    assert m.reproduced == 3  # whatever it returns was re-verified


def test_minimization_stays_inside_the_search_bound():
    bound = PerturbationBound(max_linf=24)
    original, compressed, seeds, results = _triggered(bound, n=8)
    for r in results:
        m = minimize(original, compressed, seeds[r.seed_index], r.image, r.trace, r.probs_original,
                     r.probs_compressed, bound=bound, seed_label=r.seed_label, max_queries=300)
        assert linf(m.image, seeds[r.seed_index]) <= 24 and linf(r.image, seeds[r.seed_index]) <= 24


def test_replay_subsets_equals_replaying_each_subset():
    rng = np.random.default_rng(0)
    seed = rng.integers(0, 256, (8, 8, 1)).astype(np.uint8)
    steps = [MutationStep("pixel_change", {"indices": [1, 5], "values": [0, 255]}),
             MutationStep("box_blur", {"kernel": 3}),
             MutationStep("salt_pepper", {"salt": [7], "pepper": [9]})]
    subsets = [[0], [1, 2], [0, 2], [0, 1, 2], []]
    batch = replay_subsets(seed, steps, subsets)
    for image, subset in zip(batch, subsets):
        assert np.array_equal(image, replay(seed, [steps[i] for i in subset]))


def _record(lo: int, lc: int) -> InputRecord:
    image = np.zeros((4, 4, 1), np.uint8)
    return InputRecord(0, 0, SeedStatus.triggered, [], np.zeros(3), np.zeros(3), lo, lc, lo, 10, 0.1, 3, image)


def test_flip_table_and_histogram():
    table = flip_table([_record(1, 2), _record(1, 2), _record(2, 0)])
    assert table["pairs"][0] == {"original": 1, "compressed": 2, "count": 2}
    assert table["labels"] == [0, 1, 2]
    assert table["matrix"] == [[0, 0, 0], [0, 0, 2], [1, 0, 0]]
    h = histogram([10.0, 20.0, 30.0], [1.0, 2.0], bins=3)
    assert sum(h["raw"]) == 3 and sum(h["minimized"]) == 2 and h["edges"][-1] == 30.0


def test_ties_count_exact_top1_ties_per_model():
    tie = np.array([0.25, 0.375, 0.375, 0.0], np.float32)  # int8 outputs land on a coarse grid
    clear = np.array([0.25, 0.375, 0.37109375, 0.00390625], np.float32)
    records = [dataclasses.replace(_record(2, 1), n=i, probs_original=po, probs_compressed=pc)
               for i, (po, pc) in enumerate([(clear, tie), (clear, clear), (tie, tie)])]
    assert top1_tied(tie) and not top1_tied(clear) and not top1_tied(np.array([1.0]))
    assert ties(records) == {"inputs": 3, "compressed": 2, "original": 1,
                             "compressed_inputs": ["0_0", "0_2"], "original_inputs": ["0_2"]}


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(["--original", "o.tflite", "--compressed", "c.tflite", "--seeds", "s.npz", *argv])


def test_flags_reach_the_config_and_bad_values_are_refused():
    cfg = config_from_args(_args())
    assert cfg.minimize is True and cfg.max_linf is None and cfg.min_ssim is None
    cfg = config_from_args(_args("--no-minimize", "--max-linf", "8", "--min-ssim", "0.9"))
    assert (cfg.minimize, cfg.max_linf, cfg.min_ssim) == (False, 8, 0.9)
    assert "minimize" not in cfg.identity() and cfg.identity()["max_linf"] == 8
    for argv in (["--max-linf", "300"], ["--min-ssim", "1.5"], ["--minimize-max-queries", "1"]):
        with pytest.raises(ConfigError):
            config_from_args(_args(*argv))
