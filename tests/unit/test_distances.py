"""Distances from the seed: L0 / L2 / L-infinity by hand, SSIM against TensorFlow's values and its properties."""

from __future__ import annotations

import numpy as np
import pytest

from host.search import distances


def _pattern(h: int, w: int, c: int, k: int) -> np.ndarray:
    y, x, ch = np.meshgrid(np.arange(h), np.arange(w), np.arange(c), indexing="ij")
    return ((x * 37 + y * 11 * k + ch * 53 + (x * y * k) % 17) * (k + 3) % 256).astype(np.uint8)


def _gradient(h: int, w: int, c: int) -> np.ndarray:
    y, x, ch = np.meshgrid(np.arange(h), np.arange(w), np.arange(c), indexing="ij")
    return ((y * 255) // (h - 1) // 2 + x * 4 + ch * 10).clip(0, 255).astype(np.uint8)


#: tf.image.ssim(a, b, max_val=255, filter_size=11, filter_sigma=1.5, k1=0.01, k2=0.03) on TensorFlow 2.21
#: (float32), computed once for these deterministic images.
TF_SSIM = [
    (_pattern(28, 28, 1, 1), _pattern(28, 28, 1, 2), 0.019253144040703773),
    (_gradient(28, 28, 1), np.clip(_gradient(28, 28, 1).astype(int) + 20, 0, 255).astype(np.uint8), 0.9846303462982178),
    (_pattern(32, 32, 3, 1), _pattern(32, 32, 3, 5), -0.020939001813530922),
    (_gradient(32, 32, 3), _pattern(32, 32, 3, 3), 0.009711984544992447),
]


@pytest.mark.parametrize(("a", "b", "expected"), TF_SSIM)
def test_ssim_matches_tensorflow(a, b, expected):
    assert distances.ssim(a, b) == pytest.approx(expected, abs=1e-5)


def test_ssim_properties():
    rng = np.random.default_rng(0)
    seed = _gradient(28, 28, 1)
    assert distances.ssim(seed, seed) == pytest.approx(1.0)
    noisy = [np.clip(seed + rng.normal(0, s, seed.shape), 0, 255).astype(np.uint8) for s in (2, 8, 32, 96)]
    values = [distances.ssim(n, seed) for n in noisy]
    assert all(-1.0 <= v < 1.0 for v in values)
    assert values == sorted(values, reverse=True), "more noise must mean less structural similarity"
    assert distances.ssim(noisy[1], seed) == pytest.approx(distances.ssim(seed, noisy[1]))  # symmetric
    # a batch gives the per-image values
    batch = np.stack(noisy)
    np.testing.assert_allclose(distances.ssim(batch, seed[None]), values)
    # a uniform brightness shift keeps structure: SSIM stays far higher than for noise of the same L2
    shifted = np.clip(seed.astype(int) + 10, 0, 255).astype(np.uint8)
    same_l2 = np.clip(seed + rng.choice([-10, 10], seed.shape), 0, 255).astype(np.uint8)
    assert distances.ssim(shifted, seed) > distances.ssim(same_l2, seed)


def test_small_images_use_a_smaller_window():
    a = _pattern(8, 8, 1, 1)
    assert distances.ssim(a, a) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 3x3"):
        distances.ssim(np.zeros((2, 2, 1), np.uint8), np.zeros((2, 2, 1), np.uint8))


def test_l0_l2_linf_by_hand():
    seed = np.zeros((4, 4, 3), np.uint8)
    image = seed.copy()
    image[0, 0] = (3, 4, 0)  # one pixel, two channels
    image[2, 1, 2] = 12
    d = distances.distances(image, seed)
    assert d.l0 == 2  # pixels, not values
    assert d.l2 == pytest.approx(13.0)  # sqrt(9 + 16 + 144)
    assert d.linf == 12
    assert d.to_dict()["l0"] == 2
    assert distances.l0(seed, seed) == 0 and distances.l2(seed, seed) == 0.0 and distances.linf(seed, seed) == 0
