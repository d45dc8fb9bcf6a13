"""diffchaser-pixel: DiffChaser's GA with pixel-level mutation and uncertainty fitness."""

from __future__ import annotations

import numpy as np
import pytest

from host.search import mutations, searcher_factory
from host.search.diffchaser import (
    GENE_MUTATION_MAX_DELTA,
    GENE_MUTATION_RATE,
    PixelDiffChaserSearcher,
    uncertainty,
)
from host.search.searcher import SeedContext


def _seed(image: np.ndarray) -> SeedContext:
    probs = np.full(10, 0.1, dtype=np.float32)
    return SeedContext(index=0, image=image, label=0, probs_original=probs, probs_compressed=probs)


def _materialize(candidates):
    for c in candidates:
        c.image = mutations.apply(c.base[None], [c.step])[0]
    return candidates


def test_uncertainty_is_the_gap_between_the_two_top_probabilities():
    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(uncertainty(probs), [0.5, 0.0, 1.0])


def test_gene_mutation_nudges_about_r2_of_the_genes_by_at_most_8_levels():
    image = np.full((32, 32, 3), 128, dtype=np.uint8)
    searcher = PixelDiffChaserSearcher(_seed(image), np.random.default_rng(0), population_size=40)
    candidates = _materialize(searcher.propose())
    assert len(candidates) == 40
    changed = []
    for c in candidates:
        assert c.step.op == "gene_mutation" and c.trace == ()
        diff = c.image.astype(np.int16) - image
        assert np.abs(diff).max() <= GENE_MUTATION_MAX_DELTA
        assert np.count_nonzero(diff) == len(c.step.params["indices"])  # only real changes are recorded
        changed.append(np.count_nonzero(diff) / image.size)
    # 1% of the genes, less the 1/17 of draws that are a zero change
    expected = GENE_MUTATION_RATE * 16 / 17
    assert abs(np.mean(changed) - expected) < 0.2 * expected


def test_gene_mutation_clips_at_the_ends_of_the_range():
    image = np.zeros((16, 16, 1), dtype=np.uint8)
    searcher = PixelDiffChaserSearcher(_seed(image), np.random.default_rng(1), population_size=20,
                                       mutation_rate=0.2)
    for c in _materialize(searcher.propose()):
        values = np.asarray(c.step.params["values"])
        assert values.size and values.min() >= 1 and values.max() <= GENE_MUTATION_MAX_DELTA


def _observed_searcher(population: int, gaps_original: np.ndarray) -> PixelDiffChaserSearcher:
    image = np.full((8, 8, 1), 100, dtype=np.uint8)
    searcher = PixelDiffChaserSearcher(_seed(image), np.random.default_rng(2), population_size=population)
    candidates = _materialize(searcher.propose())
    top = 0.5 + gaps_original / 2  # two-class outputs: top-1 minus top-2 = the gap
    probs_original = np.stack([top, 1 - top], axis=1)
    probs_compressed = np.tile([0.9, 0.1], (population, 1))
    assert searcher.observe(candidates, probs_original, probs_compressed) == population
    return searcher


def test_the_most_uncertain_chromosome_on_the_original_model_survives_unchanged():
    gaps = np.linspace(0.9, 0.1, 8)
    gaps[3] = 0.0
    searcher = _observed_searcher(8, gaps)
    kept = searcher.images[3].copy()
    children = searcher.propose()
    assert len(children) == 7 and 3 not in {c.tag for c in children}
    _materialize(children)
    searcher.observe(children, np.tile([0.6, 0.4], (7, 1)), np.tile([0.6, 0.4], (7, 1)))
    assert searcher.images[3].tobytes() == kept.tobytes() and searcher.generation == 2


def test_tournaments_favour_uncertain_parents():
    gaps = np.ones(8)
    gaps[5] = 0.0
    searcher = _observed_searcher(8, gaps)
    wins = np.mean([searcher._tournament(0) == 5 for _ in range(2000)])
    assert wins == pytest.approx(1 - (7 / 8) ** 4, abs=0.05)  # uniform choice would give 1/8


def test_searcher_factory_passes_the_gene_mutation_rate():
    image = np.zeros((4, 4, 1), dtype=np.uint8)
    factory = searcher_factory("diffchaser-pixel", population_size=6, mutation_rate=0.05)
    searcher = factory(_seed(image), np.random.default_rng(0))
    assert isinstance(searcher, PixelDiffChaserSearcher)
    assert (searcher.population_size, searcher.mutation_rate) == (6, 0.05)
    assert searcher_factory("diffchaser-pixel")(_seed(image), np.random.default_rng(0)).mutation_rate == \
        GENE_MUTATION_RATE


def test_every_chromosome_stays_within_8_levels_per_generation_of_the_seed():
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
    searcher = PixelDiffChaserSearcher(_seed(image), np.random.default_rng(6), population_size=10,
                                       mutation_rate=0.3)
    for generation in range(1, 6):
        candidates = _materialize(searcher.propose())
        n = len(candidates)
        searcher.observe(candidates, rng.dirichlet(np.ones(10), n), rng.dirichlet(np.ones(10), n))
        for chromosome, trace in zip(searcher.images, searcher.traces):
            distance = np.abs(chromosome.astype(np.int16) - image).max()
            assert distance <= GENE_MUTATION_MAX_DELTA * generation
            assert mutations.replay(image, trace).tobytes() == chromosome.tobytes()
