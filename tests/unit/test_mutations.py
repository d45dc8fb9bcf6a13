"""The seven mutation operators: shapes, parameter ranges, statistics, blurs, exact replay."""

from __future__ import annotations

import hashlib
import json
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from host.search import mutations
from host.search.mutations import OPERATORS, MutationError, apply, draw, replay
from host.search.results import MutationStep

SHAPES = [(28, 28, 1), (32, 32, 3)]


def _images(n: int, shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("op", OPERATORS)
@pytest.mark.parametrize("faithful", [False, True])
def test_every_operator_keeps_shape_and_dtype_and_leaves_input_alone(op, shape, faithful):
    rng = np.random.default_rng(1)
    images = _images(4, shape)
    before = images.copy()
    steps = [draw(op, rng, shape, faithful=faithful) for _ in range(4)]
    out = apply(images, steps)
    assert out.shape == images.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(images, before)


def test_draw_is_deterministic_given_the_generator():
    a = [draw(op, np.random.default_rng(7), (28, 28, 1)) for op in OPERATORS]
    b = [draw(op, np.random.default_rng(7), (28, 28, 1)) for op in OPERATORS]
    assert a == b


@pytest.mark.parametrize(("op", "kernels"), [
    ("box_blur", {1, 2, 3, 4, 5}),
    ("gaussian_blur", {1, 3, 5, 7}),
    ("median_blur", {1, 3, 5, 7}),
])
def test_blur_kernel_sizes_cover_exactly_their_range(op, kernels):
    rng = np.random.default_rng(0)
    seen = {draw(op, rng, (28, 28, 1)).params["kernel"] for _ in range(400)}
    assert seen == kernels


def test_pixel_change_touches_zero_to_nine_values():
    rng = np.random.default_rng(0)
    counts = {len(draw("pixel_change", rng, (28, 28, 1)).params["indices"]) for _ in range(500)}
    assert counts == set(range(10))
    image = np.full((1, 28, 28, 1), 77, np.uint8)
    for _ in range(50):
        step = draw("pixel_change", rng, (28, 28, 1))
        changed = np.count_nonzero(apply(image, [step]) != image)
        assert changed <= len(step.params["indices"]) <= 9


@pytest.mark.parametrize("shape", SHAPES)
def test_salt_and_pepper_hits_the_original_amount(shape):
    size = math.prod(shape)
    expected = math.ceil(0.004 * size * 0.5)
    step = draw("salt_pepper", np.random.default_rng(3), shape)
    assert len(step.params["salt"]) == len(step.params["pepper"]) == expected
    image = np.full((1, *shape), 128, np.uint8)
    out = apply(image, [step])
    assert 0 < np.count_nonzero(out == 255) <= expected
    assert 0 < np.count_nonzero(out == 0) <= expected
    assert np.count_nonzero(out != 128) <= 2 * expected


def test_gaussian_noise_default_has_variance_point_one_on_the_unit_scale():
    rng = np.random.default_rng(0)
    image = np.full((8, 32, 32, 3), 128, np.uint8)
    out = apply(image, [draw("gaussian_noise", rng, (32, 32, 3)) for _ in range(8)]).astype(np.float64)
    delta = out - 128
    assert abs(delta.mean()) < 2.0
    # sigma = 255 * sqrt(0.1) = 80.6 grey levels (clipping at 0/255 cuts the tails beyond ~1.6 sigma)
    sigma = 255 * math.sqrt(0.1)
    assert 0.66 < np.mean(np.abs(delta) <= sigma) < 0.70  # P(|Z| <= 1) = 0.683
    assert 0.36 < np.mean(np.abs(delta) <= sigma / 2) < 0.40  # P(|Z| <= 0.5) = 0.383


def test_gaussian_noise_faithful_truncates_and_wraps_like_astype_uint8():
    rng = np.random.default_rng(0)
    shape = (64, 64, 3)
    steps = [draw("gaussian_noise", rng, shape, faithful=True) for _ in range(8)]
    assert all(s.params["wrap"] and abs(s.params["sigma"] - math.sqrt(0.1)) < 1e-12 for s in steps)
    mid = apply(np.full((8, *shape), 100, np.uint8), steps).astype(np.int64)
    # N(0, 0.316): truncation sends every negative draw down one level, a positive one stays
    assert 0.47 < np.mean(mid == 99) < 0.53
    assert np.mean(mid == 100) > 0.46
    assert np.mean(mid < 99) < 0.003 and np.mean(mid > 100) < 0.003  # |draw| >= 1: p ~ 0.0008 each
    black = apply(np.zeros((8, *shape), np.uint8), steps)
    wrapped = np.count_nonzero(black == 255)  # draws <= -1 (p ~ 0.0008) wrap to 255
    assert 0 < wrapped < 0.003 * black.size
    assert np.count_nonzero((black != 0) & (black != 255)) == np.count_nonzero(black == 1)


def test_speckle_noise_scales_intensity_within_half_to_one_and_a_half():
    rng = np.random.default_rng(0)
    image = np.full((1, 32, 32, 3), 100, np.uint8)
    for _ in range(20):
        step = draw("speckle_noise", rng, (32, 32, 3))
        assert -0.5 <= step.params["mean"] <= 0.5 and 0 <= step.params["sigma"] <= math.sqrt(0.05)
        out = apply(image, [step]).astype(np.float64)
        assert abs(out.mean() / 100.0 - (1.0 + step.params["mean"])) < 0.03


def test_speckle_noise_faithful_wraps_overflow():
    step = MutationStep("speckle_noise", {"seed": 1, "mean": 0.4, "sigma": 0.0, "wrap": True})
    out = apply(np.full((1, 2, 2, 1), 200, np.uint8), [step])
    assert np.all(out == 24)  # 200 * 1.4 = 280 -> 280 mod 256
    unwrapped = MutationStep("speckle_noise", {**step.params, "wrap": False})
    clipped = apply(np.full((1, 2, 2, 1), 200, np.uint8), [unwrapped])
    assert np.all(clipped == 255)


def test_standard_normal_stream_has_unit_statistics():
    z = mutations._standard_normals([12345, 2**63 - 1], 200_001)
    assert z.shape == (2, 200_001)
    for row in z:
        assert abs(row.mean()) < 0.01 and abs(row.std() - 1.0) < 0.01
        assert abs(np.mean(np.abs(row) < 1.0) - 0.6827) < 0.005
    assert abs(np.corrcoef(z[0], z[1])[0, 1]) < 0.01  # streams of different seeds are unrelated
    # fixed arithmetic: the first words of SplitMix64 from seed 0 are the reference values
    words = mutations._splitmix64(np.array([0], np.uint64), 2)[0]
    assert [int(w) for w in words] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4]


def test_standard_normals_stay_the_reference_values():
    # A stored trace names a noise seed, not the noise. float64 log/cos/sin may differ in the last
    # ulp between CPUs (numpy dispatches them to SVML on AVX-512 machines, to libm elsewhere), so
    # the normals are compared with a tolerance of a few hundred ulps: any change of the stream
    # itself (SplitMix64 words, the uniform mapping, Box-Muller's order) moves them by O(1).
    z = mutations._standard_normals([12345, 2**63 - 1, 0], 1001)
    reference = [
        [1.7141103894433034, -0.8502365852111149, -0.4135721791086786, 1.0466327952114645, -0.8538950137127564],
        [-1.4311938663926795, -0.3313506634593724, -2.0819689213144836, -1.243976188688896, -0.46799700164625857],
        [0.47616539587901857, 1.2091428196445388, 1.0573849187343138, 0.1463653443565137, 1.4866302719701199],
    ]
    np.testing.assert_allclose(z[:, [0, 1, 500, 501, 1000]], reference, rtol=1e-13, atol=0)


def test_noise_mutants_keep_their_bytes_so_saved_traces_replay():
    # What a replay must reproduce is the uint8 mutant. A last-ulp difference in the normals moves a
    # value across a rounding boundary with probability ~1e-14, so these bytes hold on every CPU.
    images = _images(6, (28, 28, 3), seed=7)
    steps = [
        MutationStep("gaussian_noise", {"seed": 701435644899102496, "sigma": 80.63808033429368, "wrap": False}),
        MutationStep("gaussian_noise", {"seed": 8300473645860114686, "sigma": 0.31622776601683794, "wrap": True}),
        MutationStep("gaussian_noise", {"seed": 6342248152966317134, "sigma": 80.63808033429368, "wrap": False}),
        MutationStep("speckle_noise", {"seed": 7349714439837756296, "mean": -0.12999926852909327,
                                       "sigma": 0.2051297241058216, "wrap": False}),
        MutationStep("speckle_noise", {"seed": 8572181675238230199, "mean": -0.1735589073687127,
                                       "sigma": 0.20581887278145017, "wrap": True}),
        MutationStep("speckle_noise", {"seed": 8306440174080410623, "mean": 0.11989173645435813,
                                       "sigma": 0.1326240918168362, "wrap": False}),
    ]
    digest = hashlib.sha256(apply(images, steps).tobytes()).hexdigest()
    assert digest == "71c57a8c75a865a65ff807ec2838fab9ca45357d31b17b7c991f64d0fecd86e9"


@pytest.mark.parametrize("op", ["box_blur", "gaussian_blur", "median_blur"])
def test_blur_of_a_constant_image_is_constant(op):
    for k in {"box_blur": mutations.BOX_KERNELS}.get(op, (1, 3, 5, 7)):
        image = np.full((2, 9, 11, 3), 173, np.uint8)
        out = apply(image, [MutationStep(op, {"kernel": k})] * 2)
        np.testing.assert_array_equal(out, image)


def test_median_blur_removes_isolated_salt_noise():
    image = np.full((1, 16, 16, 1), 50, np.uint8)
    for y, x in [(2, 3), (8, 8), (12, 5), (0, 0), (15, 15)]:
        image[0, y, x, 0] = 255
    out = apply(image, [MutationStep("median_blur", {"kernel": 3})])
    assert np.all(out == 50)


def test_box_blur_matches_a_plain_window_mean():
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (1, 10, 10, 1), dtype=np.uint8)
    out = apply(image, [MutationStep("box_blur", {"kernel": 3})])
    window = image[0, 3:6, 4:7, 0].astype(np.float64)
    assert out[0, 4, 5, 0] == np.rint(window.mean())
    # even kernels anchor at k // 2, like OpenCV: k=2 averages rows/cols (y-1, y) x (x-1, x)
    out2 = apply(image, [MutationStep("box_blur", {"kernel": 2})])
    assert out2[0, 4, 5, 0] == np.rint(image[0, 3:5, 4:6, 0].astype(np.float64).mean())


def test_gaussian_blur_impulse_response_is_the_separable_small_kernel():
    image = np.zeros((1, 15, 15, 1), np.uint8)
    image[0, 7, 7, 0] = 255
    out = apply(image, [MutationStep("gaussian_blur", {"kernel": 3})])
    taps = np.array([0.25, 0.5, 0.25])
    expected = np.rint(255 * np.outer(taps, taps))
    np.testing.assert_array_equal(out[0, 6:9, 6:9, 0], expected)
    assert np.count_nonzero(out) == 9


def test_batched_apply_equals_one_image_at_a_time():
    rng = np.random.default_rng(11)
    images = _images(21, (28, 28, 1), seed=2)
    steps = [draw(OPERATORS[i % len(OPERATORS)], rng, (28, 28, 1), faithful=bool(i % 2)) for i in range(21)]
    steps[3] = None
    batched = apply(images, steps)
    for i in range(21):
        np.testing.assert_array_equal(batched[i], apply(images[i : i + 1], [steps[i]])[0])
    np.testing.assert_array_equal(batched[3], images[3])


class CountingExecutor(ThreadPoolExecutor):
    """A thread pool that counts the chunks it was given."""

    def __init__(self, workers: int) -> None:
        super().__init__(max_workers=workers, thread_name_prefix="test-mutate")
        self.submitted = 0

    def submit(self, fn, /, *args, **kwargs):
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


@pytest.mark.parametrize("workers", [2, 3, 8])
def test_apply_in_row_chunks_on_threads_gives_the_bytes_of_one_call(workers):
    rng = np.random.default_rng(5)
    shape = (40, 40, 3)
    images = _images(17, shape, seed=4)
    steps = [draw(OPERATORS[i % len(OPERATORS)], rng, shape, faithful=i % 3 == 0) for i in range(17)]
    steps[6] = None
    with CountingExecutor(workers - 1) as pool:
        chunked = mutations.apply_parallel(images, steps, pool, workers, min_values=1)
        assert pool.submitted == workers - 1  # the calling thread took one chunk itself
    assert chunked.tobytes() == apply(images, steps).tobytes()


def test_apply_parallel_keeps_small_batches_on_the_calling_thread():
    images = _images(4, (32, 32, 3))
    steps = [draw("gaussian_noise", np.random.default_rng(i), (32, 32, 3)) for i in range(4)]
    with CountingExecutor(1) as pool:
        # 4 x 3,072 values: below two chunks of the default minimum
        out = mutations.apply_parallel(images, steps, pool, 2)
        assert pool.submitted == 0
        # chunks of at least half the batch: two of them
        assert mutations.apply_parallel(images, steps, pool, 8, min_values=images.size // 2).tobytes() == out.tobytes()
        assert pool.submitted == 1
    assert mutations.apply_parallel(images, steps, None, 8, min_values=1).tobytes() == out.tobytes()
    with pytest.raises(MutationError, match="uint8"):
        mutations.apply_parallel(images.astype(np.float32), steps, None, 2)


def test_replay_of_a_trace_through_json_reproduces_the_mutant_byte_for_byte():
    rng = np.random.default_rng(3)
    seed = _images(1, (32, 32, 3))[0]
    image, trace = seed, []
    for i in range(40):
        step = draw(OPERATORS[int(rng.integers(len(OPERATORS)))], rng, seed.shape, faithful=i % 3 == 0)
        image = apply(image[None], [step])[0]
        trace.append(step)
    restored = [MutationStep.from_dict(d) for d in json.loads(json.dumps([s.to_dict() for s in trace]))]
    assert replay(seed, restored).tobytes() == image.tobytes()


def test_crossover_step_sets_the_recorded_values():
    image = np.zeros((1, 4, 4, 1), np.uint8)
    out = apply(image, [MutationStep("crossover", {"indices": [0, 5, 15], "values": [9, 8, 7]})])
    assert out.ravel()[[0, 5, 15]].tolist() == [9, 8, 7] and np.count_nonzero(out) == 3


def test_bad_input_is_rejected_with_a_clear_error():
    with pytest.raises(MutationError, match="unknown mutation operator"):
        draw("sharpen", np.random.default_rng(0), (4, 4, 1))
    with pytest.raises(MutationError, match="uint8"):
        apply(np.zeros((1, 4, 4, 1), np.float32), [None])
    with pytest.raises(MutationError, match="one .or None. per image"):
        apply(np.zeros((2, 4, 4, 1), np.uint8), [None])
    with pytest.raises(MutationError, match="kernel"):
        apply(np.zeros((1, 4, 4, 1), np.uint8), [MutationStep("median_blur", {"kernel": 4})])
    with pytest.raises(MutationError, match="out of range"):
        apply(np.zeros((1, 4, 4, 1), np.uint8), [MutationStep("pixel_change", {"indices": [16], "values": [1]})])


@pytest.mark.parametrize("mode", ["reflect", "edge"])
def test_border_padding_matches_numpy_pad(mode):
    rng = np.random.default_rng(0)
    for h, w in [(28, 28), (3, 5), (1, 4), (2, 2)]:
        x = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
        for before, after in [(1, 1), (2, 1), (3, 3), (0, 1)]:
            expected = np.pad(x, ((0, 0), (before, after), (before, after), (0, 0)), mode=mode)
            np.testing.assert_array_equal(mutations._pad(x, before, after, mode), expected)


def test_repeated_positions_keep_the_last_value_as_a_sequential_loop_would():
    image = np.zeros((2, 2, 2, 1), np.uint8)
    change = MutationStep("pixel_change", {"indices": [1, 3, 1], "values": [10, 20, 30]})
    salt_then_pepper = MutationStep("salt_pepper", {"salt": [0, 2], "pepper": [2]})
    out = apply(image, [change, salt_then_pepper])
    assert out[0].ravel().tolist() == [0, 30, 0, 20]
    assert out[1].ravel().tolist() == [255, 0, 0, 0]


@pytest.mark.parametrize("kernel", [3, 5, 7])
def test_median_blur_sorting_network_equals_the_plain_median(kernel):
    rng = np.random.default_rng(kernel)
    images = rng.integers(0, 256, (4, 9, 7, 3), dtype=np.uint8)
    images[0] = rng.integers(0, 3, (9, 7, 3))  # many ties
    images[1] = rng.choice(np.array([0, 255], np.uint8), (9, 7, 3))  # the values the network's pads stand for
    r = kernel // 2
    padded = np.pad(images, ((0, 0), (r, r), (r, r), (0, 0)), mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (kernel, kernel), axis=(1, 2))
    expected = np.median(windows.reshape(*windows.shape[:4], -1), axis=-1).astype(np.uint8)
    batched = apply(images, [MutationStep("median_blur", {"kernel": kernel})] * 4)
    single = np.stack([apply(images[i : i + 1], [MutationStep("median_blur", {"kernel": kernel})])[0]
                       for i in range(4)])  # one image per call
    np.testing.assert_array_equal(batched, expected)
    np.testing.assert_array_equal(single, expected)


@pytest.mark.parametrize("shape", [(1, 5, 1), (5, 1, 1), (2, 3, 3)])
def test_median_blur_of_tiny_images_equals_the_plain_median(shape):
    # one-row images once made the network's window planes alias each other (no copy of a contiguous view)
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, (1, *shape), dtype=np.uint8)
    for kernel in (3, 5, 7):
        r = kernel // 2
        padded = np.pad(image, ((0, 0), (r, r), (r, r), (0, 0)), mode="edge")
        windows = np.lib.stride_tricks.sliding_window_view(padded, (kernel, kernel), axis=(1, 2))
        expected = np.median(windows.reshape(*windows.shape[:4], -1), axis=-1).astype(np.uint8)
        np.testing.assert_array_equal(apply(image, [MutationStep("median_blur", {"kernel": kernel})]), expected)
