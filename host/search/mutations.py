"""The seven image mutation operators of DFlare, vectorized over a batch and replayable exactly.

Every mutation is split in two:

* :func:`draw` samples everything random about one mutation from a ``numpy.random.Generator``
  and returns a :class:`~host.search.results.MutationStep` holding the concrete draws (kernel
  size, pixel coordinates and values) or, for the two dense noise operators, a 63-bit noise seed
  plus the noise parameters;
* :func:`apply` turns a batch of uint8 images (N, H, W, C) and one step per image into the
  mutants, with no randomness left. Images that share an operator are processed together.
  :func:`apply_parallel` does the same in row chunks on several threads (numpy releases the GIL
  inside its loops), which pays on large images.

So ``replay(seed, trace)`` (apply each step of a trace in order) reproduces a mutant byte for
byte. Noise comes from SplitMix64 words of the step's seed through a fixed Box-Muller transform
in float64 (not from ``Generator.normal``, whose stream numpy may change between releases); the
only platform-dependent part is the last ulp of ``log``/``cos``/``sin`` on different CPUs, which
could move a noisy value across a rounding boundary by one grey level in very rare cases.

Operators (names are stable: they are stored in traces):

``gaussian_noise``
    Additive N(0, sigma) noise. Default mode reads "variance 0.1" on the 0..1 intensity scale
    (the paper's wording, and the scale the noise formula was written for): sigma =
    ``255 * sqrt(GAUSSIAN_VAR)`` ~ 80.6 grey levels, rounded to the nearest level and clipped.
    Faithful mode reproduces what the original code does with 0..255 data: sigma = ``sqrt(0.1)``
    ~ 0.32 grey levels, then ``astype(uint8)``, i.e. truncation toward zero and wrap-around
    (-1.2 -> 255), which darkens about half the values by one level per application. Measured on
    the fixture models, the strong reading lets the (improvement-only) default algorithm leave
    seeds on which both models are saturated (int8 softmax at 255/256); the weak one leaves ~12%
    of such seeds untouched after 2,500 candidates (docs/benchmarks.md, "Search efficacy").
``salt_pepper``
    ``ceil(0.004 * size / 2)`` values set to 255, then as many set to 0 (amount 0.004, salt vs
    pepper 0.5, positions drawn with replacement over H*W*C as in the original).
``speckle_noise``
    Multiplicative noise ``x + x * n`` with ``n ~ N(mean, sigma)``, ``mean ~ U(-0.5, 0.5)``,
    ``sigma = sqrt(0.05 * U(0, 1))`` drawn per mutation. Clipped (default) or truncated and
    wrapped (faithful).
``pixel_change``
    0..9 values (uniform count; positions with replacement) set to uniform random 0..255.
``box_blur``
    Mean over a k x k window, k uniform in 1..5 (even k anchors at k // 2, as OpenCV's
    ``blur``), border reflect-101, round half to even.
``gaussian_blur``
    k in {1, 3, 5, 7} with OpenCV's fixed small-kernel taps for sigma=0 (1; 1-2-1/4; binomial 5;
    the 7-tap table), separable, border reflect-101, round half to even.
``median_blur``
    k in {1, 3, 5, 7}, border replicate (as OpenCV's ``medianBlur``).

DiffChaser's genetic steps are stored the same way, as concrete values: ``crossover`` (the genes
taken from the second parent) and ``gene_mutation`` (genes nudged by its pixel-level mutation).
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from host.errors import Error
from host.search.results import MutationStep

#: Operator names, in the order the original code lists them (MH ranks index into this tuple).
OPERATORS: tuple[str, ...] = (
    "gaussian_noise",
    "salt_pepper",
    "speckle_noise",
    "pixel_change",
    "box_blur",
    "gaussian_blur",
    "median_blur",
)

#: Variance of the additive Gaussian noise: 0.1 on the 0..1 scale (default mode), or, in faithful mode,
#: 0.1 applied to raw 0..255 values as the original code does.
GAUSSIAN_VAR: float = 0.1
#: Fraction of values hit by salt-and-pepper noise (the original's ``amount``).
SALT_PEPPER_AMOUNT: float = 0.004
#: Share of salt (255) among the salt-and-pepper values (the original's ``s_vs_p``).
SALT_VS_PEPPER: float = 0.5
#: Upper bound of the speckle noise variance draw (the original: ``var = 0.05 * rand()``).
SPECKLE_MAX_VAR: float = 0.05
#: Pixel change touches 0..MAX values (the original samples from ``range(0, 10)``).
PIXEL_CHANGE_MAX_COUNT: int = 9
#: Kernel sizes each blur draws from (the original's lists; even box kernels are allowed there too).
BOX_KERNELS: tuple[int, ...] = (1, 2, 3, 4, 5)
GAUSSIAN_KERNELS: tuple[int, ...] = (1, 3, 5, 7)
MEDIAN_KERNELS: tuple[int, ...] = (1, 3, 5, 7)

#: OpenCV's fixed Gaussian taps for ksize <= 7 with sigma <= 0 (``getGaussianKernel``'s small table).
_SMALL_GAUSSIAN_TAPS: dict[int, tuple[float, ...]] = {
    1: (1.0,),
    3: (0.25, 0.5, 0.25),
    5: (0.0625, 0.25, 0.375, 0.25, 0.0625),
    7: (0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125),
}

#: Images with fewer pixels (H*W) than this are padded by one vectorized gather and median-filtered by
#: a numpy sorting network; larger ones get OpenCV's border copy and median kernel (scripts/bench_mutations.py).
SMALL_IMAGE_PIXELS: int = 64 * 64

#: Values a noise operator processes per pass (about 256 KiB of float32 per temporary).
NOISE_PASS_VALUES: int = 64 * 1024

#: :func:`apply_parallel` splits a batch only when each chunk keeps at least this many values
#: (N*H*W*C). Below it, thread hand-offs, GIL contention and the per-operator Python cost outweigh
#: the numpy loops run in parallel (scripts/bench_mutations.py, 2 threads: 32 candidates of 32x32x3
#: run at 0.5-0.6x one thread's speed and 64 at 1.0x; 32 of 64x64x3 at 1.2x, of 96x96x3 and larger
#: at 1.6-2.5x).
PARALLEL_MIN_VALUES: int = 150_000

#: How new noise steps turn their seed into normals (the step's ``normals`` param): SplitMix64 words
#: split into 16-bit levels, each looked up in ``normal_quantiles.npy`` and scaled in float32. Steps
#: without the param (stored before it existed) use ``boxmuller``, the earlier float64 Box-Muller
#: transform, so their traces replay unchanged.
NORMALS: str = "quantile16"
_NORMAL_KINDS: tuple[str, ...] = ("boxmuller", "quantile16")

#: Noise seeds are drawn below 2**63 so they survive a round trip through JSON and SQLite INTEGER.
_NOISE_SEED_BOUND: int = 2**63


class MutationError(Error):
    """A step names an unknown operator or carries parameters that do not fit the image (bad input, e.g. a
    hand-edited or foreign trace: part of the one error tree, so the CLI reports it as bad input)."""


# --------------------------------------------------------------------------------------------
# drawing: all randomness lives here
# --------------------------------------------------------------------------------------------
def draw(op: str, rng: np.random.Generator, image_shape: Sequence[int], faithful: bool = False) -> MutationStep:
    """Sample one concrete mutation.

    Args:
        op: an operator name from :data:`OPERATORS`.
        rng: the only source of randomness.
        image_shape: (H, W, C) of the image the step will apply to.
        faithful: reproduce the original code's uint8 wrap-around in the two noise operators.

    Returns:
        A step whose params fully determine the mutant (see the module docstring).

    Raises:
        MutationError: an unknown operator.
    """
    size = int(image_shape[0]) * int(image_shape[1]) * int(image_shape[2])
    if op == "gaussian_noise":
        sigma = math.sqrt(GAUSSIAN_VAR) * (1.0 if faithful else 255.0)
        return MutationStep(op, {"seed": _noise_seed(rng), "sigma": sigma, "wrap": faithful, "normals": NORMALS})
    if op == "salt_pepper":
        n_salt = math.ceil(SALT_PEPPER_AMOUNT * size * SALT_VS_PEPPER)
        n_pepper = math.ceil(SALT_PEPPER_AMOUNT * size * (1.0 - SALT_VS_PEPPER))
        salt = rng.integers(0, size, n_salt)
        pepper = rng.integers(0, size, n_pepper)
        return MutationStep(op, {"salt": salt.tolist(), "pepper": pepper.tolist()})
    if op == "speckle_noise":
        mean = -0.5 + float(rng.random())
        sigma = math.sqrt(SPECKLE_MAX_VAR * float(rng.random()))
        return MutationStep(op, {"seed": _noise_seed(rng), "mean": mean, "sigma": sigma, "wrap": faithful,
                                 "normals": NORMALS})
    if op == "pixel_change":
        count = int(rng.integers(0, PIXEL_CHANGE_MAX_COUNT + 1))
        indices = rng.integers(0, size, count)
        values = rng.integers(0, 256, count)
        return MutationStep(op, {"indices": indices.tolist(), "values": values.tolist()})
    if op == "box_blur":
        return MutationStep(op, {"kernel": BOX_KERNELS[int(rng.integers(len(BOX_KERNELS)))]})
    if op == "gaussian_blur":
        return MutationStep(op, {"kernel": GAUSSIAN_KERNELS[int(rng.integers(len(GAUSSIAN_KERNELS)))]})
    if op == "median_blur":
        return MutationStep(op, {"kernel": MEDIAN_KERNELS[int(rng.integers(len(MEDIAN_KERNELS)))]})
    raise MutationError(f"unknown mutation operator {op!r}; expected one of {', '.join(OPERATORS)}")


def _noise_seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, _NOISE_SEED_BOUND))


# --------------------------------------------------------------------------------------------
# applying: deterministic, vectorized per operator
# --------------------------------------------------------------------------------------------
def apply(images: np.ndarray, steps: Sequence[MutationStep | None]) -> np.ndarray:
    """Apply ``steps[i]`` to ``images[i]`` for every i; ``None`` leaves the image unchanged.

    Args:
        images: uint8 (N, H, W, C); not modified.
        steps: one step (or None) per image.

    Returns:
        A new uint8 (N, H, W, C) array of mutants.

    Raises:
        MutationError: wrong dtype/shape, a length mismatch or an unknown operator.
    """
    if images.dtype != np.uint8 or images.ndim != 4:
        raise MutationError(f"mutations take a uint8 (N, H, W, C) batch, got {images.dtype} {images.shape}")
    if len(steps) != len(images):
        raise MutationError(f"{len(steps)} steps for {len(images)} images: give exactly one (or None) per image")
    out = images.copy()
    groups: dict[tuple[str, Any], list[int]] = defaultdict(list)
    for i, step in enumerate(steps):
        if step is None:
            continue
        kernel = step.params.get("kernel") if step.op.endswith("_blur") else None
        groups[(step.op, kernel)].append(i)
    for (op, kernel), rows in groups.items():
        idx = np.asarray(rows)
        if op in ("box_blur", "gaussian_blur", "median_blur"):
            out[idx] = _BLURS[op](images[idx], int(kernel))
        elif op in _POINTWISE:
            out[idx] = _POINTWISE[op](images[idx], [steps[i].params for i in rows])  # type: ignore[union-attr]
        else:
            raise MutationError(f"unknown mutation operator {op!r}; expected one of {', '.join(OPERATORS)}")
    return out


def apply_parallel(images: np.ndarray, steps: Sequence[MutationStep | None], executor: Executor | None,
                   workers: int, min_values: int | None = None) -> np.ndarray:
    """:func:`apply` in row chunks, ``workers - 1`` of them on ``executor`` and one on this thread.

    Every row's mutant depends only on its image and step, so the bytes are those of :func:`apply`.
    The batch is split into at most ``workers`` chunks of at least ``min_values`` values each
    (default :data:`PARALLEL_MIN_VALUES`); a batch too small for two such chunks (or no executor)
    is mutated here, in one call.

    Raises:
        MutationError: as :func:`apply`.
    """
    if images.ndim != 4 or len(steps) != len(images):
        return apply(images, steps)  # let apply name the problem
    min_values = PARALLEL_MIN_VALUES if min_values is None else min_values
    chunks = min(workers, len(images), images.size // max(1, min_values)) if executor is not None else 1
    if chunks < 2:
        return apply(images, steps)
    bounds = np.linspace(0, len(images), chunks + 1).astype(int)
    futures = [executor.submit(apply, images[lo:hi], steps[lo:hi])  # type: ignore[union-attr]
               for lo, hi in zip(bounds[:-2], bounds[1:-1])]
    last = apply(images[bounds[-2]:], steps[bounds[-2]:])
    return np.concatenate([f.result() for f in futures] + [last])


def replay(seed_image: np.ndarray, trace: Sequence[MutationStep]) -> np.ndarray:
    """Re-create a mutant from its seed image (uint8 HWC) and its trace, byte for byte."""
    image = np.asarray(seed_image, dtype=np.uint8)[None]
    for step in trace:
        image = apply(image, [step])
    return image[0]


# -- pointwise operators ----------------------------------------------------------------------
_GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(seeds: np.ndarray, n: int) -> np.ndarray:
    """(len(seeds), n) uint64 words: SplitMix64's stream from each seed, computed for all at once."""
    counters = np.arange(1, n + 1, dtype=np.uint64)
    counters *= _GOLDEN_GAMMA
    z = seeds.astype(np.uint64)[:, None] + counters[None, :]
    # in place: the same integer steps without a temporary per step (half the time on RGB batches)
    z ^= z >> np.uint64(30)
    z *= _MIX_1
    z ^= z >> np.uint64(27)
    z *= _MIX_2
    z ^= z >> np.uint64(31)
    return z


def _standard_normals(seeds: Sequence[int], n: int) -> np.ndarray:
    """(len(seeds), n) N(0, 1) draws: SplitMix64 words -> uniforms in (0, 1) -> Box-Muller.

    Pure integer and float64 arithmetic, vectorized over every seed of a batch, and the same on
    any numpy version (unlike ``Generator.normal``) up to the last ulp of ``log``/``cos``/``sin``,
    which differs between CPUs (numpy uses SVML on AVX-512 machines, libm elsewhere). The uint8
    mutants a trace replays to are the same anywhere but with probability ~1e-14 per value.
    """
    pairs = (n + 1) // 2
    words = _splitmix64(np.asarray(seeds, dtype=np.uint64), 2 * pairs)
    words >>= np.uint64(11)
    u = words.astype(np.float64)  # then (u + 0.5) / 2**53: in (0, 1), never 0
    u += 0.5
    u *= 1.0 / 9007199254740992.0
    # sqrt(-2 log u1) * (cos, sin)(2 pi u2), in place (the same float64 operations, so the same bits)
    radius = np.log(u[:, :pairs])
    radius *= -2.0
    np.sqrt(radius, out=radius)
    angle = u[:, pairs:]
    angle *= 2.0 * np.pi
    out = np.empty((len(u), 2 * pairs))
    np.cos(angle, out=out[:, :pairs])
    out[:, :pairs] *= radius
    np.sin(angle, out=out[:, pairs:])
    out[:, pairs:] *= radius
    return out[:, :n]


def _to_uint8(values: np.ndarray, wrap: np.ndarray) -> np.ndarray:
    """Round and clip to 0..255, or (rows where ``wrap``) truncate toward zero and wrap mod 256.

    The wrap is ``astype(uint8)`` of the truncated integer, as the original code's cast: an int16
    cast (noisy values stay far inside its range) then the modular cast to uint8, which is the
    same as ``mod 256`` and costs a fraction of an int64 ``mod``.
    """
    out = np.empty(values.shape, dtype=np.uint8)
    wrap = np.asarray(wrap, dtype=bool)
    for rows, wrapped in ((np.flatnonzero(~wrap), False), (np.flatnonzero(wrap), True)):
        if not rows.size:
            continue
        part = values if rows.size == len(values) else values[rows]
        if wrapped:
            result = np.trunc(part).astype(np.int16).astype(np.uint8)
        else:
            result = np.clip(np.rint(part), 0, 255).astype(np.uint8)
        if rows.size == len(values):
            return result
        out[rows] = result
    return out


@functools.cache
def _quantile_table() -> np.ndarray:
    """The 65,536 normal quantiles (``scripts/make_normal_quantiles.py``) as float32 multiples of 2**-20."""
    table = np.load(Path(__file__).with_name("normal_quantiles.npy"))
    return table.astype(np.float32) * np.float32(2.0**-20)


def _quantile_normals(seeds: Sequence[int], n: int) -> np.ndarray:
    """(len(seeds), n) float32 N(0, 1) draws: each SplitMix64 word gives four 16-bit levels (lowest
    bits first), each level its quantile. Integer work and one table look-up: no transcendental
    function, so the bits are the same on every platform."""
    words = _splitmix64(np.asarray(seeds, dtype=np.uint64), (n + 3) // 4)
    levels = np.ascontiguousarray(words, dtype="<u8").view("<u2")[:, :n]
    return np.take(_quantile_table(), levels)


def _noise_rows(images: np.ndarray, params: list[dict], combine) -> np.ndarray:
    """Apply a noise operator row group by row group, one group per ``normals`` generator.

    ``combine(x, noise)`` gets the images (in the generator's float type: float64 for
    ``boxmuller``, as stored traces were made; float32 for ``quantile16``) and ``sigma * z`` per row
    (``z`` standard normal); it returns the noisy values, rounded by :func:`_to_uint8`. Each row's
    bytes depend only on its image and step, never on the rows beside it.
    """
    kinds = [p.get("normals", "boxmuller") for p in params]
    unknown = sorted(set(kinds) - set(_NORMAL_KINDS))
    if unknown:
        raise MutationError(f"unknown noise generator {unknown[0]!r}; expected one of {', '.join(_NORMAL_KINDS)}")
    out = np.empty_like(images)
    n = math.prod(images.shape[1:])
    # rows per pass: the float temporaries of a pass stay in the CPU's cache (a pass over a batch of
    # large images is bound by memory bandwidth, not arithmetic)
    per_pass = max(1, NOISE_PASS_VALUES // max(1, n))
    for kind, generate in (("boxmuller", _standard_normals), ("quantile16", _quantile_normals)):
        kind_rows = [i for i, k in enumerate(kinds) if k == kind]
        for start in range(0, len(kind_rows), per_pass):
            rows = kind_rows[start : start + per_pass]
            group = [params[i] for i in rows]
            noise = generate([int(p["seed"]) for p in group], n)
            noise *= np.asarray([float(p["sigma"]) for p in group], dtype=noise.dtype)[:, None]
            x = images[rows].astype(noise.dtype)
            values = combine(x, noise.reshape(x.shape), group)
            out[rows] = _to_uint8(values, np.asarray([bool(p.get("wrap", False)) for p in group]))
    return out


def _gaussian_noise(images: np.ndarray, params: list[dict]) -> np.ndarray:
    def combine(x: np.ndarray, noise: np.ndarray, group: list[dict]) -> np.ndarray:
        x += noise
        return x

    return _noise_rows(images, params, combine)


def _speckle_noise(images: np.ndarray, params: list[dict]) -> np.ndarray:
    def combine(x: np.ndarray, noise: np.ndarray, group: list[dict]) -> np.ndarray:
        shape = (-1,) + (1,) * (x.ndim - 1)
        noise += np.asarray([float(p["mean"]) for p in group], dtype=noise.dtype).reshape(shape)
        noise *= x
        x += noise  # x + x * (sigma z + mean)
        return x

    return _noise_rows(images, params, combine)


def _set_values(images: np.ndarray, passes: list[list[tuple[Sequence[int], Any]]]) -> np.ndarray:
    """Assign values at flat positions, row by row, in passes (a later pass, or a later position in
    a pass, overrides an earlier one at the same position, as a sequential loop would).

    A pass's value is one int for all its positions or one value per position. All rows and passes
    are gathered into flat lists first and assigned with one fancy assignment.
    """
    out = images.copy()
    flat = out.reshape(len(out), -1)
    size = flat.shape[1]
    rows: list[int] = []
    positions: list[int] = []
    values: list[int] = []
    for pass_no in range(max((len(p) for p in passes), default=0)):  # pass-major: later passes come later
        for row, assignments in enumerate(passes):
            if pass_no >= len(assignments):
                continue
            indices, value = assignments[pass_no]
            count = len(indices)
            positions.extend(indices)
            rows.extend([row] * count)
            values.extend([value] * count if isinstance(value, (int, np.integer)) else value)
    if not positions:
        return out
    row_ix, pos = np.asarray(rows, dtype=np.int64), np.asarray(positions, dtype=np.int64)
    val = np.asarray(values, dtype=np.uint8)
    if val.shape != pos.shape:
        raise MutationError(f"{val.size} values for {pos.size} pixel positions: give one value per position")
    if pos.min() < 0 or pos.max() >= size:
        raise MutationError(f"pixel index out of range for an image of {size} values")
    # keep the last assignment to each (row, position): fancy assignment does not promise an order
    keys = row_ix * size + pos
    _, last = np.unique(keys[::-1], return_index=True)
    keep = keys.size - 1 - last
    flat[row_ix[keep], pos[keep]] = val[keep]
    return out


def _salt_pepper(images: np.ndarray, params: list[dict]) -> np.ndarray:
    return _set_values(images, [[(p["salt"], 255), (p["pepper"], 0)] for p in params])


def _recorded_values(images: np.ndarray, params: list[dict]) -> np.ndarray:
    """Set the step's concrete ``values`` at its ``indices``: pixel_change's draws, and DiffChaser's
    crossover (genes from the other parent) and gene mutation (nudged genes)."""
    return _set_values(images, [[(p["indices"], p["values"])] for p in params])


_POINTWISE = {
    "gaussian_noise": _gaussian_noise,
    "salt_pepper": _salt_pepper,
    "speckle_noise": _speckle_noise,
    "pixel_change": _recorded_values,
    "crossover": _recorded_values,
    "gene_mutation": _recorded_values,
}


# -- blurs --------------------------------------------------------------------------------------
def _border_index(n: int, before: int, after: int, mode: str) -> np.ndarray:
    """Source index of every padded position along an axis of length n (``reflect`` is reflect-101)."""
    idx = np.arange(-before, n + after)
    if mode == "edge":
        return np.clip(idx, 0, n - 1)
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    idx = np.mod(idx, period)
    return np.where(idx < n, idx, period - idx)


@functools.cache
def _pad_indices(h: int, w: int, before: int, after: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(row index column, column index row) for :func:`_pad`; a handful of shapes, so cached."""
    return _border_index(h, before, after, mode)[:, None], _border_index(w, before, after, mode)[None, :]


def _pad(images: np.ndarray, before: int, after: int, mode: str) -> np.ndarray:
    """Pad H and W like ``np.pad(mode=mode)``, by fancy indexing (much cheaper for small images)."""
    rows, cols = _pad_indices(images.shape[1], images.shape[2], before, after, mode)
    return images[:, rows, cols, :]


@functools.cache
def _cv2():
    """OpenCV, imported on first use (host only). Its own thread pool is turned off: a step's
    mutations already run on the threads :func:`apply_parallel` gives them."""
    import cv2

    cv2.setNumThreads(1)
    return cv2


def _mosaic(images: np.ndarray, before: int, after: int, mode: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """Each image padded on its own (``reflect`` is reflect-101, ``edge`` replicates), the padded
    images stacked into one tall 2-D (or HxWxC) image for a single OpenCV call.

    A window of the filter that starts in a tile's padded rows never reaches the next tile, so every
    output pixel is exactly the filter of its own image with that border; the caller crops each
    tile. Returns the mosaic and the padded batch shape.
    """
    n, h, w, c = images.shape
    padded_shape = (n, h + before + after, w + before + after, c)
    if h * w < SMALL_IMAGE_PIXELS:
        padded = np.ascontiguousarray(_pad(images, before, after, mode))
    else:  # large images: a memcpy-speed border per image beats one fancy-index gather
        cv2 = _cv2()
        border = cv2.BORDER_REFLECT_101 if mode == "reflect" else cv2.BORDER_REPLICATE
        padded = np.empty(padded_shape, dtype=images.dtype)
        for i in range(n):
            cv2.copyMakeBorder(images[i], before, after, before, after, border,
                               dst=padded[i] if c > 1 else padded[i, :, :, 0])
    mosaic = padded.reshape(n * padded_shape[1], padded_shape[2], c)
    return (mosaic[:, :, 0] if c == 1 else mosaic), padded_shape


def _tiles(result: np.ndarray, padded_shape: tuple[int, ...], offset: int, shape: tuple[int, ...]) -> np.ndarray:
    """Crop each image back out of a filtered mosaic: rows and columns offset..offset+H/W of its tile."""
    n, h, w, c = shape
    tiles = result.reshape(padded_shape)
    return np.ascontiguousarray(tiles[:, offset : offset + h, offset : offset + w, :])


def _box_blur(images: np.ndarray, kernel: int) -> np.ndarray:
    """Mean over the k x k window (anchor k // 2, reflect-101), rounded half to even.

    OpenCV sums each window (exact integers in float32); the mean is taken here, so the bytes are
    those of the plain formula (OpenCV's own 8-bit rounding differs on ties).
    """
    if kernel not in BOX_KERNELS:
        raise MutationError(f"box blur kernel must be one of {BOX_KERNELS}, got {kernel}")
    if kernel == 1:
        return images.copy()
    k = kernel
    anchor = k // 2
    cv2 = _cv2()
    mosaic, padded_shape = _mosaic(images, anchor, k - 1 - anchor, "reflect")
    total = cv2.boxFilter(mosaic, cv2.CV_32F, (k, k), anchor=(0, 0), normalize=False,
                          borderType=cv2.BORDER_CONSTANT)
    total = _tiles(total, padded_shape, 0, images.shape)
    # float32 division rounds to the same integer as the float64 formula: k*k is a power of two
    # (exact) or odd, and then no window sum / k*k lies within float32's error of a half
    total /= np.float32(k * k)
    return np.clip(np.rint(total), 0, 255).astype(np.uint8)


def _gaussian_blur(images: np.ndarray, kernel: int) -> np.ndarray:
    """OpenCV's fixed small Gaussian taps (sigma 0), separable, reflect-101, rounded half to even.

    The taps are multiples of 1/64, so every partial sum is exact in float32 and the result is the
    exact filter value before rounding (OpenCV's 8-bit fixed-point path rounds ties differently).
    """
    if kernel not in GAUSSIAN_KERNELS:
        raise MutationError(f"gaussian blur kernel must be one of {GAUSSIAN_KERNELS}, got {kernel}")
    if kernel == 1:
        return images.copy()
    cv2 = _cv2()
    anchor = kernel // 2
    mosaic, padded_shape = _mosaic(images, anchor, kernel - 1 - anchor, "reflect")
    taps = np.asarray(_SMALL_GAUSSIAN_TAPS[kernel], dtype=np.float32)
    out = cv2.sepFilter2D(mosaic.astype(np.float32), cv2.CV_32F, taps, taps, anchor=(0, 0),
                          borderType=cv2.BORDER_CONSTANT)
    return np.clip(np.rint(_tiles(out, padded_shape, 0, images.shape)), 0, 255).astype(np.uint8)


def _median_blur(images: np.ndarray, kernel: int) -> np.ndarray:
    """Median of the k x k window, border replicated (OpenCV's ``medianBlur``).

    OpenCV's kernel or a sorting network over whole planes, whichever is faster for the batch (both
    give the exact median, so the bytes are the same either way).
    """
    if kernel not in MEDIAN_KERNELS:
        raise MutationError(f"median blur kernel must be one of {MEDIAN_KERNELS}, got {kernel}")
    if kernel == 1:
        return images.copy()
    r = kernel // 2
    n, h, w, c = images.shape
    # OpenCV for large images, single images, and grey 7x7 windows (its histogram kernel beats the
    # 320-comparator network there); the network elsewhere (scripts/bench_mutations.py)
    if c in (1, 3, 4) and (h * w >= SMALL_IMAGE_PIXELS or n == 1 or (kernel == 7 and c == 1)):
        mosaic, padded_shape = _mosaic(images, r, r, "edge")
        return _tiles(_cv2().medianBlur(mosaic, kernel), padded_shape, r, images.shape)
    return _median_by_network(_pad(images, r, r, "edge"), kernel, images.shape)


def _median_by_network(padded: np.ndarray, kernel: int, shape: tuple[int, ...]) -> np.ndarray:
    """Median of every k x k window with a pruned Batcher sorting network over whole planes.

    Each of the k*k window offsets is one plane (the shifted image, copied as rows of W*C
    contiguous values, so the copies run at memory speed even for 3-channel images); the network's
    comparators are elementwise min/max over planes into a reused scratch plane, so the work is
    vectorized over every pixel of the batch with no allocation per comparator.
    """
    target, comparators = _median_network(kernel * kernel)
    n, h, w, c = shape
    rows = padded.reshape(n, h + kernel - 1, (w + kernel - 1) * c)
    planes = [rows[:, dy : dy + h, dx * c : (dx + w) * c].copy() for dy in range(kernel) for dx in range(kernel)]
    scratch = np.empty_like(planes[0])
    minimum, maximum = np.minimum, np.maximum
    for i, j in comparators:
        low, high = planes[i], planes[j]
        minimum(low, high, out=scratch)
        maximum(low, high, out=high)
        planes[i], scratch = scratch, low
    return planes[target].reshape(shape)


@functools.cache
def _median_network(values: int) -> tuple[int, tuple[tuple[int, int], ...]]:
    """(median wire, comparators) of Batcher's odd-even merge sort over ``values`` wires, pruned to
    the comparators the median wire depends on.

    Batcher's network needs a power of two of wires: the values are padded with as many 0s below as
    255s above, which keeps the median at a known wire. A comparator (i < j) only ever leaves the
    0s on the lowest wires and the 255s on the highest, so every comparator touching a pad wire is
    a no-op: those are dropped, and the pads never exist (wires are renumbered to 0..values-1).
    """
    n = 1
    while n < values:
        n *= 2
    comparators = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        comparators.append((i + j, i + j + k))
            k //= 2
        p *= 2
    n_low = (n - values) // 2
    target = n_low + values // 2  # real values sit between n_low zeros and the 255s
    needed, kept = {target}, []
    for i, j in reversed(comparators):
        if (i in needed or j in needed) and n_low <= i and j < n_low + values:
            kept.append((i - n_low, j - n_low))
            needed.update((i, j))
    return target - n_low, tuple(reversed(kept))


_BLURS = {"box_blur": _box_blur, "gaussian_blur": _gaussian_blur, "median_blur": _median_blur}
