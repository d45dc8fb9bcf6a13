"""DFlare's MH operator selection, fitness ordering and novelty corpus (no model needed)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from host.search import dflare, mutations
from host.search.dflare import (
    DEFAULT,
    DEPARTURES,
    ORIGINAL,
    STALL_PATIENCE,
    Best,
    DFlareConfig,
    DFlareSearcher,
    MHSelector,
    NoveltyCorpus,
    kept_rows,
    margin,
    mh_acceptance,
    output_difference,
    pair_margin,
)
from host.search.searcher import SeedContext

P = 1.0 / 7


def _expected_rank_distribution(k1: int, n: int = 7, p: float = P) -> np.ndarray:
    weights = np.array([min(1.0, (1 - p) ** (k2 - k1)) for k2 in range(n)])
    return weights / weights.sum()


def test_acceptance_probability_is_geometric_in_the_rank_gap():
    assert mh_acceptance(3, 3, P) == 1.0
    assert mh_acceptance(3, 0, P) == 1.0  # better-ranked proposals are always accepted
    assert mh_acceptance(3, 5, P) == pytest.approx((6 / 7) ** 2)
    assert mh_acceptance(-1, 6, P) == pytest.approx((6 / 7) ** 7)


@pytest.mark.parametrize("k1", [-1, 0, 3, 6])
def test_mh_chosen_ranks_follow_the_acceptance_law(k1):
    selector = MHSelector(7, np.random.default_rng(k1 + 10))
    n = 40_000
    counts = np.bincount([selector.propose_rank(k1) for _ in range(n)], minlength=7)
    expected = _expected_rank_distribution(k1)
    # 4 standard deviations of a binomial proportion at n = 40,000 is at most 0.01
    np.testing.assert_allclose(counts / n, expected, atol=0.01)
    # the accepted fraction of proposals is the mean acceptance probability
    mean_acceptance = np.mean([mh_acceptance(k1, k2, P) for k2 in range(7)])
    assert n / selector.proposals == pytest.approx(mean_acceptance, abs=0.01)


def _selector_with_scores(rank_from_last: bool, seed: int) -> MHSelector:
    selector = MHSelector(7, np.random.default_rng(seed), rank_from_last=rank_from_last)
    # operator i has success rate i / 10: the ranking is 6, 5, 4, 3, 2, 1, 0 (no ties)
    selector.uses[:] = 10_000_000
    selector.successes[:] = np.arange(7) * 1_000_000
    return selector


def test_ranking_sorts_by_success_rate_and_breaks_ties_at_random():
    selector = _selector_with_scores(True, 0)
    assert selector.ranking() == [6, 5, 4, 3, 2, 1, 0]
    tied = MHSelector(7, np.random.default_rng(0))
    orders = {tuple(tied.ranking()) for _ in range(50)}
    assert len(orders) > 10


@pytest.mark.parametrize(("rank_from_last", "k1"), [(True, 3), (False, -1)])
def test_choose_uses_the_last_operators_rank_or_the_original_bug(rank_from_last, k1):
    selector = _selector_with_scores(rank_from_last, 1)
    n = 30_000
    ranks = [6 - selector.choose(last_op=3) for _ in range(n)]  # op 3 sits at rank 3
    np.testing.assert_allclose(np.bincount(ranks, minlength=7) / n, _expected_rank_distribution(k1), atol=0.012)


def test_first_choice_and_no_mh_ablation_are_uniform():
    selector = MHSelector(7, np.random.default_rng(2), uniform=True)
    selector.successes[:] = [100, 0, 0, 0, 0, 0, 0]
    selector.uses[:] = 100
    counts = np.bincount([selector.choose(last_op=0) for _ in range(21_000)], minlength=7)
    np.testing.assert_allclose(counts / 21_000, 1 / 7, atol=0.012)
    fresh = MHSelector(7, np.random.default_rng(3))
    assert np.bincount([MHSelector(7, np.random.default_rng(s)).choose(None) for s in range(2100)],
                       minlength=7).min() > 200
    assert fresh.uses.sum() == 0


def test_success_rate_counts_uses_and_successes():
    selector = MHSelector(7, np.random.default_rng(0))
    op = selector.choose(None)
    selector.record_success(op)
    selector.choose(op)
    assert selector.uses.sum() == 2 and selector.successes[op] == 1
    assert selector.scores[op] == pytest.approx(1 / selector.uses[op], rel=1e-6)


def _kept(config: DFlareConfig, best: Best, diffs, margins=None, novel=None, rejected: int = 0):
    diffs = np.asarray(diffs, dtype=np.float64)
    margins = np.full(len(diffs), best.margin) if margins is None else np.asarray(margins, dtype=np.float64)
    novel = None if novel is None else np.asarray(novel)
    return kept_rows(config, best, rejected, diffs, margins, novel)


def test_difference_rule_keeps_growth_only_by_default():
    best = Best(diff=0.010, margin=0.5)
    kept, _ = _kept(DEFAULT, best, [0.0115, -0.0115, 0.0105, 0.010, 0.005])
    # grew by 1.5e-3 (either sign: the magnitude counts); by only 5e-4; unchanged; a decrease
    assert kept.tolist() == [True, True, False, False, False]
    assert _kept(DEFAULT, best, [0.0], novel=[True])[0].tolist() == [True]  # novelty alone is enough


def test_original_difference_rule_also_keeps_decreases():
    best = Best(diff=0.010, margin=0.5)
    kept, _ = _kept(ORIGINAL, best, [0.005, 0.0115, 0.0095, 0.010], novel=[False, False, False, True])
    assert kept.tolist() == [True, True, False, True]


def test_margin_rule_keeps_a_mutant_closer_to_a_label_change_with_a_relative_step():
    config = DFlareConfig(drop_novelty=True, stall_patience=None)
    far = Best(diff=0.0, margin=0.5)
    assert _kept(config, far, [0.0] * 3, margins=[0.4985, 0.4995, 0.6])[0].tolist() == [True, False, False]
    near = Best(diff=0.0, margin=0.002)  # below 1e-2 the step is a tenth of the margin
    assert _kept(config, near, [0.0] * 2, margins=[0.0017, 0.00185])[0].tolist() == [True, False]
    assert not _kept(ORIGINAL, near, [0.0], margins=[0.0])[0].any()  # the original has no margin rule


def test_stall_rule_keeps_the_candidate_after_patience_rejections():
    config = DFlareConfig(drop_novelty=True, stall_patience=5)
    best = Best(diff=0.0, margin=0.5)
    kept, by_stall = _kept(config, best, [0.0] * 4, rejected=2)  # rows see 2, 3, 4, 5 rejections before them
    assert kept.tolist() == [False, False, False, True] and by_stall.tolist() == [False, False, False, True]
    kept, by_stall = _kept(config, best, [0.0, 0.5], rejected=5)  # a better row is not counted as an escape
    assert kept.tolist() == [True, True] and by_stall.tolist() == [True, False]
    assert not _kept(replace(config, stall_patience=None), best, [0.0] * 4, rejected=100)[0].any()
    with pytest.raises(ValueError, match="stall_patience"):
        DFlareConfig(stall_patience=0)


def test_output_difference_tracks_the_seed_label_or_each_top_one():
    po = np.array([0.1, 0.7, 0.2], np.float32)
    pc = np.array([0.5, 0.4, 0.1], np.float32)
    assert output_difference(po, pc, 1)[0] == pytest.approx(0.3)
    assert output_difference(po, pc, 1, seed_label=False)[0] == pytest.approx(0.2)
    assert margin(po)[0] == pytest.approx(0.5) and pair_margin(po, pc)[0] == pytest.approx(0.1)


def test_departures_are_each_one_field_away_from_the_original():
    assert ORIGINAL.departures() == ()
    assert set(DEFAULT.departures()) <= set(DEPARTURES)
    for name in DEPARTURES:
        assert ORIGINAL.with_departure(name, True).departures() == (name,)
        assert name not in DEFAULT.with_departure(name, False).departures()
    assert ORIGINAL.with_departure("stall_patience", True).stall_patience == STALL_PATIENCE


def test_novelty_threshold_is_squared_l2_above_one_half():
    corpus = NoveltyCorpus(dim=4)
    assert corpus.update(np.zeros(4)) == (True, float("inf"))
    near = np.array([0.7, 0.0, 0.0, 0.0])  # squared distance 0.49
    novel, distance = corpus.update(near)
    assert not novel and distance == pytest.approx(0.49, rel=1e-6)
    far = np.array([0.5, 0.51, 0.0, 0.0])  # squared distance 0.5101
    assert corpus.update(far)[0]
    assert corpus.size == 2
    assert not corpus.update(far + 0.01)[0]  # now close to a stored vector


def test_novelty_nearest_neighbour_is_exact():
    rng = np.random.default_rng(0)
    corpus = NoveltyCorpus(dim=20, threshold=0.0)
    stored = rng.random((300, 20)).astype(np.float32)
    for v in stored:
        corpus.add(v)
    for q in rng.random((20, 20)).astype(np.float32):
        brute = min(float(np.sum((s - q) ** 2)) for s in stored)
        assert corpus.nearest_sq_distance(q) == pytest.approx(brute, rel=1e-5)


def test_batched_novelty_distances_equal_the_one_at_a_time_ones_bit_for_bit(monkeypatch):
    rng = np.random.default_rng(1)
    corpus = NoveltyCorpus(dim=20)
    for v in rng.dirichlet(np.ones(20), 257).astype(np.float32):
        corpus.add(v)
    queries = rng.dirichlet(np.ones(20), 16).astype(np.float32)
    one_by_one = [corpus.nearest_sq_distance(q) for q in queries]
    assert corpus.nearest_sq_distances(queries).tolist() == one_by_one
    monkeypatch.setattr(dflare, "MAX_CORPUS_BYTES", 3 * 257 * 20 * 4)  # chunks of 3 rows
    assert corpus.nearest_sq_distances(queries).tolist() == one_by_one
    assert NoveltyCorpus(dim=20).nearest_sq_distances(queries).tolist() == [float("inf")] * 16


def test_novelty_corpus_memory_is_bounded():
    corpus = NoveltyCorpus(dim=20, threshold=0.0, max_bytes=20 * 4 * 100)
    rng = np.random.default_rng(0)
    for v in rng.random((1000, 20)):
        corpus.add(v)
    assert corpus.capacity == 100 and corpus.size == 100 and corpus.added == 1000
    assert corpus.nbytes <= 20 * 4 * 100
    latest = rng.random(20)
    corpus.add(latest)
    assert corpus.nearest_sq_distance(latest) == 0.0  # the ring overwrote an old vector with it


def _seed(label: int = 0) -> SeedContext:
    image = np.full((8, 8, 1), 100, np.uint8)
    p = np.array([0.9, 0.1], np.float32)
    return SeedContext(0, image, label, p, p.copy())


def _feed(searcher: DFlareSearcher, po: list[float], pc: list[float]):
    (candidate,) = searcher.propose()
    candidate.image = mutations.apply(candidate.base[None], [candidate.step])[0]
    searcher.observe([candidate], np.array([po], np.float32), np.array([pc], np.float32))
    return candidate


def test_searcher_keeps_a_mutant_only_when_fitness_improves():
    config = DFlareConfig(margin_fitness=False, stall_patience=None, drop_novelty=False)
    searcher = DFlareSearcher(_seed(), np.random.default_rng(0), config)
    assert searcher.best == Best(0.0, pytest.approx(0.8))
    rejected = _feed(searcher, [0.8995, 0.1005], [0.9, 0.1])  # diff 5e-4: too small, not novel
    assert searcher.current is searcher.seed.image and searcher.trace == () and searcher.last_op is None
    kept = _feed(searcher, [0.9, 0.1], [0.88, 0.12])  # diff grew to 0.02
    assert searcher.trace == kept.full_trace and searcher.current is kept.image
    op = mutations.OPERATORS.index(kept.step.op)
    assert searcher.last_op == op and searcher.selector.successes[op] == 1
    assert rejected.step is not None
    novel = _feed(searcher, [0.2, 0.8], [0.18, 0.82])  # same diff, far away: novel
    assert searcher.trace == novel.full_trace and searcher.accepted == 2
    assert searcher.corpus is not None and searcher.corpus.size == 2


def test_the_default_keeps_no_novelty_corpus_and_no_merely_novel_mutant():
    config = replace(DEFAULT, margin_fitness=False, stall_patience=None)
    assert config.drop_novelty and "drop_novelty" in DEFAULT.departures()
    searcher = DFlareSearcher(_seed(), np.random.default_rng(0), config)
    kept = _feed(searcher, [0.9, 0.1], [0.88, 0.12])  # diff grew to 0.02
    _feed(searcher, [0.2, 0.8], [0.18, 0.82])  # the same diff, far away: novel, but novelty is no fitness here
    assert searcher.trace == kept.full_trace and searcher.accepted == 1 and searcher.corpus is None
    assert searcher.stats()["corpus_size"] == 0


def test_searcher_keeps_a_mutant_whose_margin_shrank():
    searcher = DFlareSearcher(_seed(), np.random.default_rng(0), DFlareConfig(drop_novelty=True))
    _feed(searcher, [0.85, 0.15], [0.85, 0.15])  # the difference stays 0; the margin falls 0.8 -> 0.7
    assert searcher.accepted == 1 and searcher.best.margin == pytest.approx(0.7)


def test_searcher_escapes_a_plateau_after_the_stall_patience():
    searcher = DFlareSearcher(_seed(), np.random.default_rng(0), DFlareConfig(drop_novelty=True, stall_patience=3))
    for _ in range(3):
        _feed(searcher, [0.9, 0.1], [0.9, 0.1])  # nothing moves: rejected
    assert searcher.accepted == 0 and searcher.rejected_in_a_row == 3
    kept = _feed(searcher, [0.9, 0.1], [0.9, 0.1])
    assert searcher.accepted == 1 and searcher.stall_escapes == 1 and searcher.trace == kept.full_trace
    assert searcher.rejected_in_a_row == 0 and searcher.stats()["stall_escapes"] == 1


def test_no_novelty_ablation_ignores_novel_vectors():
    searcher = DFlareSearcher(_seed(), np.random.default_rng(0), DFlareConfig(drop_novelty=True, margin_fitness=False))
    _feed(searcher, [0.2, 0.8], [0.2, 0.8])
    assert searcher.accepted == 0 and searcher.corpus is None


def test_faithful_searcher_starts_from_zero_difference_and_accepts_decreases():
    seed = SeedContext(0, np.full((8, 8, 1), 100, np.uint8), 0, np.array([0.9, 0.1], np.float32),
                       np.array([0.8, 0.2], np.float32))
    searcher = DFlareSearcher(seed, np.random.default_rng(0), replace(ORIGINAL, drop_novelty=True))
    assert searcher.best.diff == 0.0 and not searcher.selector.rank_from_last
    _feed(searcher, [0.9, 0.1], [0.85, 0.15])
    assert searcher.accepted == 1
    _feed(searcher, [0.9, 0.1], [0.89, 0.11])  # |diff| fell from 0.05 to 0.01
    assert searcher.accepted == 2
    corrected = DFlareSearcher(seed, np.random.default_rng(0), DFlareConfig(drop_novelty=True))
    assert corrected.best.diff == pytest.approx(0.1)


def _oracle(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two deterministic 'models' whose outputs move with the image (so some mutants are kept)."""
    flat = images.reshape(len(images), -1).astype(np.float64) / 255.0
    w = np.random.default_rng(42).normal(0, 1, (flat.shape[1], 2))
    logits_o = flat @ w
    logits_c = logits_o + 0.3 * np.sin(7 * flat.sum(axis=1, keepdims=True)) * np.array([1.0, 0.0])
    soft = lambda z: np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)  # noqa: E731
    return soft(logits_o).astype(np.float32), soft(logits_c).astype(np.float32)


@pytest.mark.parametrize("config", [DEFAULT, ORIGINAL, DFlareConfig(use_mh=False), DFlareConfig(stall_patience=2),
                                    DFlareConfig(strong_noise=True)])
def test_speculative_proposals_replay_the_one_at_a_time_algorithm_exactly(config):
    seed_image = np.random.default_rng(0).integers(0, 256, (6, 6, 1), dtype=np.uint8)
    po, pc = _oracle(seed_image[None])
    context = SeedContext(0, seed_image, int(np.argmax(po[0])), po[0], pc[0])

    def run(width: int, budget: int = 120) -> tuple[list, DFlareSearcher]:
        searcher = DFlareSearcher(context, np.random.default_rng(7), config)
        history: list = []
        while len(history) < budget:
            candidates = searcher.propose(min(width, budget - len(history)))
            images = mutations.apply(np.stack([c.base for c in candidates]), [c.step for c in candidates])
            for c, image in zip(candidates, images):
                c.image = image
            p_o, p_c = _oracle(images)
            used = searcher.observe(candidates, p_o, p_c)
            searcher.end_step()
            history.extend((c.step, c.image.tobytes()) for c in candidates[:used])
        return history[:budget], searcher

    reference, one = run(1)
    for width in (2, 5, 16):
        history, wide = run(width)
        assert history == reference
        assert wide.accepted == one.accepted > 3
    assert not one.proposal_open


def test_a_kept_candidate_cuts_off_the_pending_ones():
    seed = _seed()
    searcher = DFlareSearcher(seed, np.random.default_rng(0), DFlareConfig(drop_novelty=True, margin_fitness=False))
    candidates = searcher.propose(4)
    assert searcher.proposal_open and len(candidates) == 4
    for c in candidates:
        c.image = mutations.apply(c.base[None], [c.step])[0]
    probs_o = np.array([[0.9, 0.1]] * 4, np.float32)
    probs_c = np.array([[0.9, 0.1], [0.7, 0.3], [0.9, 0.1], [0.9, 0.1]], np.float32)
    assert searcher.observe(candidates, probs_o, probs_c) == 2  # the second is kept, 3 and 4 are void
    assert not searcher.proposal_open and searcher.trace == candidates[1].full_trace
    assert searcher.selector.uses.sum() == 2
