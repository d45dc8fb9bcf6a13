"""Every operator's bytes are pinned, and traces stored by an earlier version replay to the same images.

``tests/fixtures/golden_mutations.json`` was written by dflare-edge 0.1.0 (commit 1a87a0b), before
the blurs moved to OpenCV's kernels: per shape and operator, the steps applied to images regenerated
from numpy's frozen ``RandomState`` stream and the sha256 of the mutants; and the traces a campaign
stored then (digits28 float32 vs int8) with the sha256 of each stored input.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from host.search import mutations
from host.search.mutations import apply, replay
from host.search.results import MutationStep

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
GOLDEN = json.loads((FIXTURES / "golden_mutations.json").read_text())


def _images(case: dict) -> np.ndarray:
    shape = tuple(case["shape"])
    images = np.random.RandomState(case["randomstate_seed"]).randint(0, 256, size=(case["n"], *shape)).astype(np.uint8)
    images[0, : shape[0] // 2] = 0
    images[1 % case["n"], :, : shape[1] // 3] = 255
    return images


@pytest.mark.parametrize("case", GOLDEN["images"], ids=lambda c: f"{c['op']}-{'x'.join(map(str, c['shape']))}")
def test_operator_bytes_are_pinned(case):
    steps = [MutationStep.from_dict(s) for s in case["steps"]]
    assert hashlib.sha256(apply(_images(case), steps).tobytes()).hexdigest() == case["sha256"]


def test_every_operator_and_shape_is_pinned():
    ops = {(c["op"], tuple(c["shape"])) for c in GOLDEN["images"]}
    assert len({op for op, _ in ops}) == 7 and len({shape for _, shape in ops}) == 4


@pytest.mark.parametrize("stored", GOLDEN["traces"], ids=lambda t: f"seed{t['seed_index']}")
def test_traces_stored_by_an_earlier_version_replay_the_same(stored):
    seed = np.load(FIXTURES / "seeds" / stored["seed_file"])["x"][stored["seed_index"]]
    image = replay(seed, [MutationStep.from_dict(s) for s in stored["trace"]])
    assert hashlib.sha256(image.tobytes()).hexdigest() == stored["sha256"]


def _reference_blur(images: np.ndarray, op: str, k: int) -> np.ndarray:
    """The plain formulas, with numpy's own padding: the kernels' bytes must equal these everywhere."""
    if k == 1:
        return images.copy()
    if op == "median_blur":
        r = k // 2
        padded = np.pad(images, ((0, 0), (r, r), (r, r), (0, 0)), mode="edge")
        h, w = images.shape[1:3]
        windows = np.stack([padded[:, dy : dy + h, dx : dx + w] for dy in range(k) for dx in range(k)])
        return np.median(windows, axis=0).astype(np.uint8)
    anchor = k // 2
    padded = np.pad(images, ((0, 0), (anchor, k - 1 - anchor), (anchor, k - 1 - anchor), (0, 0)),
                    mode="reflect").astype(np.float64)
    taps = np.full(k, 1.0) if op == "box_blur" else np.asarray(mutations._SMALL_GAUSSIAN_TAPS[k])
    h, w = images.shape[1:3]
    rows = sum(t * padded[:, i : i + h] for i, t in enumerate(taps))
    out = sum(t * rows[:, :, i : i + w] for i, t in enumerate(taps))
    if op == "box_blur":
        out = out / float(k * k)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("shape", [(1, 9, 1), (2, 2, 3), (28, 28, 1), (63, 65, 3), (64, 64, 1), (70, 96, 3)])
@pytest.mark.parametrize("op", ["box_blur", "gaussian_blur", "median_blur"])
def test_blurs_equal_the_plain_formulas_on_every_size(op, shape):
    kernels = {"box_blur": mutations.BOX_KERNELS, "gaussian_blur": mutations.GAUSSIAN_KERNELS,
               "median_blur": mutations.MEDIAN_KERNELS}[op]
    images = np.random.RandomState(sum(shape)).randint(0, 256, size=(3, *shape)).astype(np.uint8)
    images[0] = images[0] // 128 * 255  # two levels: many exact ties to round
    for k in kernels:
        out = apply(images, [MutationStep(op, {"kernel": k})] * len(images))
        np.testing.assert_array_equal(out, _reference_blur(images, op, k), err_msg=f"{op} k={k} {shape}")


QUANTILE_STEPS = [
    MutationStep("gaussian_noise", {"seed": 123456789, "sigma": 0.31622776601683794, "wrap": True,
                                    "normals": "quantile16"}),
    MutationStep("gaussian_noise", {"seed": 2**62 + 5, "sigma": 80.63808033429368, "wrap": False,
                                    "normals": "quantile16"}),
    MutationStep("speckle_noise", {"seed": 99, "mean": 0.3, "sigma": 0.2, "wrap": True, "normals": "quantile16"}),
    MutationStep("speckle_noise", {"seed": 7, "mean": -0.2, "sigma": 0.15, "wrap": False, "normals": "quantile16"}),
]


def _noise_images() -> np.ndarray:
    images = np.random.RandomState(11).randint(0, 256, size=(4, 40, 36, 3)).astype(np.uint8)
    images[0, :20] = 0
    images[1, :, :12] = 255
    return images


def test_quantile_noise_bytes_are_pinned_and_do_not_depend_on_the_rows_beside():
    images = _noise_images()
    out = apply(images, QUANTILE_STEPS)
    assert hashlib.sha256(out.tobytes()).hexdigest() == \
        "d99536f579b9e99a5c4e7a28f9fc38d3dfba14ce785bd2d05857080c51580b7d"
    old = MutationStep("gaussian_noise", {"seed": 5, "sigma": 0.31622776601683794, "wrap": True})  # Box-Muller
    mixed = apply(np.concatenate([images[:1], images]), [old, *QUANTILE_STEPS])
    np.testing.assert_array_equal(mixed[1:], out)
    for i, step in enumerate(QUANTILE_STEPS):
        np.testing.assert_array_equal(apply(images[i : i + 1], [step])[0], out[i])


def test_the_quantile_table_is_the_committed_one_and_standard_normal():
    table = np.load(Path(mutations.__file__).with_name("normal_quantiles.npy"))
    assert hashlib.sha256(table.tobytes()).hexdigest() == \
        "7030c40868edff0a36b70d4a06ceacbf25ac02eb87069f34786f8258a1e9a44d"
    z = mutations._quantile_normals(list(range(20)), 50_000).astype(np.float64)
    assert abs(z.mean()) < 0.005 and abs(z.std() - 1.0) < 0.005
    assert abs(np.mean(z < -1.0) - 0.158655) < 0.002  # Phi(-1)
    assert z.min() >= -4.33 and z.max() <= 4.33


def test_new_noise_steps_name_their_generator_and_unknown_ones_are_refused():
    step = mutations.draw("gaussian_noise", np.random.default_rng(0), (8, 8, 1))
    assert step.params["normals"] == mutations.NORMALS == "quantile16"
    bad = MutationStep("gaussian_noise", {"seed": 1, "sigma": 1.0, "wrap": False, "normals": "mersenne"})
    with pytest.raises(mutations.MutationError, match="unknown noise generator 'mersenne'"):
        apply(np.zeros((1, 4, 4, 1), np.uint8), [bad])
