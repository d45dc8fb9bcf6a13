"""How far a mutant is from its seed: L0, L2, L-infinity and SSIM, in numpy only.

Units (every function takes uint8 images, HxWxC or a batch NxHxWxC, compared on the 0..255 scale):

``l0``
    pixels changed: (h, w) positions where any channel differs (a colour pixel counts once).
``l2``
    Euclidean norm of the difference over every value, in grey levels (a 28x28 image that differs
    by 1 everywhere has L2 = 28).
``linf``
    the largest absolute difference of any value, in grey levels (0..255).
``ssim``
    structural similarity (Wang, Bovik, Sheikh, Simoncelli 2004) with the paper's standard
    settings, as ``tf.image.ssim`` computes it: an 11x11 Gaussian window (sigma 1.5) over the
    valid region only, K1 = 0.01, K2 = 0.03, dynamic range L = 255, the SSIM map averaged over
    positions, then over channels. An image smaller than the window uses the largest odd window
    that fits (3x3 at least). 1.0 means identical.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import numpy as np

#: The standard SSIM window (Wang et al. 2004): 11x11 taps of a Gaussian with sigma 1.5 pixels.
SSIM_WINDOW_PX: int = 11
SSIM_SIGMA_PX: float = 1.5
#: Stabilizing constants of SSIM, as fractions of the dynamic range (the paper's values).
SSIM_K1: float = 0.01
SSIM_K2: float = 0.03
#: Dynamic range of uint8 pixels.
DYNAMIC_RANGE: float = 255.0


@dataclass(frozen=True)
class Distances:
    """A mutant's distances from its seed (units in the module docstring)."""

    l0: int
    l2: float
    linf: int
    ssim: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _batch(images: np.ndarray) -> np.ndarray:
    """(N, H, W, C) float64 view of an HWC image or an NHWC batch."""
    a = np.asarray(images)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4:
        raise ValueError(f"expected an HxWxC image or an NxHxWxC batch, got shape {a.shape}")
    return a.astype(np.float64)


def _pair(images: np.ndarray, seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    single = np.asarray(images).ndim <= 3
    x, s = _batch(images), _batch(seeds)
    if s.shape[1:] != x.shape[1:] or len(s) not in (1, len(x)):
        raise ValueError(f"images {x.shape} and seeds {s.shape} do not match")
    return x, np.broadcast_to(s, x.shape), single


def _out(values: np.ndarray, single: bool) -> np.ndarray | float:
    return values[0].item() if single else values


def l0(images: np.ndarray, seeds: np.ndarray) -> np.ndarray | int:
    """Pixels changed (positions where any channel differs); per image for a batch."""
    x, s, single = _pair(images, seeds)
    counts = np.any(x != s, axis=3).sum(axis=(1, 2)).astype(np.int64)
    return _out(counts, single)


def l2(images: np.ndarray, seeds: np.ndarray) -> np.ndarray | float:
    """Euclidean distance in grey levels; per image for a batch."""
    x, s, single = _pair(images, seeds)
    d = (x - s).reshape(len(x), -1)
    return _out(np.sqrt(np.einsum("ij,ij->i", d, d)), single)


def linf(images: np.ndarray, seeds: np.ndarray) -> np.ndarray | int:
    """Largest absolute difference in grey levels; per image for a batch."""
    x, s, single = _pair(images, seeds)
    return _out(np.abs(x - s).reshape(len(x), -1).max(axis=1).astype(np.int64), single)


@functools.cache
def gaussian_taps(size: int, sigma: float) -> np.ndarray:
    """The normalized 1-D Gaussian of ``size`` taps (the 2-D window is its outer product)."""
    coords = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(coords**2) / (2.0 * sigma**2))
    return g / g.sum()


def _window(height: int, width: int) -> int:
    size = min(SSIM_WINDOW_PX, height, width)
    if size % 2 == 0:
        size -= 1
    if size < 3:
        raise ValueError(f"SSIM needs images of at least 3x3 pixels, got {height}x{width}")
    return size


def _filter_valid(a: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable correlation of (N, H, W, C) planes with ``taps``, valid region only."""
    k = len(taps)
    h, w = a.shape[1] - k + 1, a.shape[2] - k + 1
    rows = sum(t * a[:, i : i + h, :, :] for i, t in enumerate(taps))
    return sum(t * rows[:, :, i : i + w, :] for i, t in enumerate(taps))


def ssim(images: np.ndarray, seeds: np.ndarray) -> np.ndarray | float:
    """Structural similarity to the seed (settings in the module docstring); per image for a batch."""
    x, s, single = _pair(images, seeds)
    taps = gaussian_taps(_window(x.shape[1], x.shape[2]), SSIM_SIGMA_PX)
    c1 = (SSIM_K1 * DYNAMIC_RANGE) ** 2
    c2 = (SSIM_K2 * DYNAMIC_RANGE) ** 2
    mu_x, mu_s = _filter_valid(x, taps), _filter_valid(s, taps)
    mu_xs = mu_x * mu_s
    mu_sq = mu_x**2 + mu_s**2
    cov = _filter_valid(x * s, taps) - mu_xs
    var_sum = _filter_valid(x * x + s * s, taps) - mu_sq
    luminance = (2.0 * mu_xs + c1) / (mu_sq + c1)
    structure = (2.0 * cov + c2) / (var_sum + c2)
    return _out((luminance * structure).mean(axis=(1, 2, 3)), single)


def distances(image: np.ndarray, seed: np.ndarray) -> Distances:
    """All four distances of one HWC image from its seed."""
    return Distances(int(l0(image, seed)), float(l2(image, seed)), int(linf(image, seed)), float(ssim(image, seed)))
