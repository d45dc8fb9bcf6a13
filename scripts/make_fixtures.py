"""Train the two fixture classifiers and export them as TFLite (float32, dynamic, int8, float16).

Run by hand with TensorFlow and scikit-learn installed (the ``fixtures`` extra)::

    python scripts/make_fixtures.py            # or: make fixtures

Outputs (committed, see tests/fixtures/README.md):
    tests/fixtures/models/<name>-{float32,dynamic,int8,float16}.tflite
    tests/fixtures/models/<name>.keras          the Keras original (uncompiled), for the repair feature
    tests/fixtures/seeds/<name>.npz             x: uint8 NHWC held-out images, y: int64 labels

Models (data: scikit-learn's bundled 8x8 digits, no download):
    digits28     28x28x1 grayscale, the digit upsampled to 20x20 and centred (MNIST-like).
    digits32rgb  32x32x3, the digit upsampled to 24x24 and composited in a random colour on a
                 random colour-gradient background with a small random shift.
    digits28wide digits28's images and seeds, a wider batch-normalized CNN trained on shifted and
                 corrupted copies (noise, blur) and int8-calibrated on clean and corrupted images:
                 meant as a harder pair (single mutations split it more rarely than digits28).

Every model takes the normalized float image ``(pixel - mean) / std`` (per channel, mean/std in
pixel units from the training set) and outputs softmax probabilities. The normalization is
embedded in each .tflite as standard TFLite metadata (a ``TFLITE_METADATA`` entry holding a
ModelMetadata flatbuffer, tflite-support's metadata_schema.fbs), written by hand here because
tflite-support is not installable alongside current TensorFlow.

The script is deterministic given ``--seed`` (same data split, weights and TFLite bytes on the
same TensorFlow version). From ``host`` it imports only ``host.tflite.export`` (the export
recipe ``dflare repair`` reuses; it needs nothing beyond numpy, TensorFlow and flatbuffers).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out of the report

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402  (scikit-learn depends on scipy)

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run from a checkout without installing it (e.g. a bare TensorFlow venv)
    sys.path.insert(0, str(REPO))

# The export recipe is shared with `dflare repair`, which re-compresses a fine-tuned model the same way.
from host.tflite.export import VARIANTS, build_metadata, convert, embed_metadata  # noqa: E402

FIXTURES_DIR = REPO / "tests" / "fixtures"

#: Held-out images per model written as seeds: enough for success-rate figures, small on disk.
SEEDS_PER_MODEL = 200
#: Held-out images in total (seeds plus a validation remainder used only for reporting).
HELD_OUT_COUNT = 300
#: Training epochs: reaches ~0.98 (gray) / ~0.95 (RGB) held-out accuracy in about a minute on 2 cores.
EPOCHS = 12
BATCH_SIZE = 32
#: Renders of each training digit for the RGB model (new colours/shift each time): more colour variety.
RGB_TRAIN_RENDERS = 3
#: Images fed to the int8 calibration (representative dataset), drawn from the training set.
CALIBRATION_COUNT = 200
#: Minimum luminance difference (0..255) between digit and background colours, so digits stay legible.
RGB_MIN_CONTRAST = 90.0
#: Fixture budget: the whole set must stay well under this (the issue asks for < 5 MB).
MAX_TOTAL_BYTES = 5 * 1024 * 1024
#: Keras originals are committed only below this size (the repair feature fine-tunes them).
MAX_KERAS_BYTES = 500 * 1024
#: digits28wide: corrupted copies of each training image (plus the clean one), epochs, batch size.
WIDE_TRAIN_COPIES = 4
WIDE_EPOCHS = 15
WIDE_BATCH_SIZE = 64
#: Corruptions per augmented image (0..this many) and the largest Gaussian noise sigma (grey levels)
#: in training and in calibration.
MAX_CORRUPTIONS = 4
TRAIN_NOISE_SIGMA = 160.0
CALIBRATION_NOISE_SIGMA = 200.0

@dataclass
class Dataset:
    """Uint8 NHWC images and labels for one fixture model."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


# -- data ----------------------------------------------------------------------------------------
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.images.astype(np.float32) / 16.0, data.target.astype(np.int64)  # 0..1, (1797, 8, 8)


def _split(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    train, test = train_test_split(index, test_size=HELD_OUT_COUNT, stratify=labels, random_state=seed)
    return np.sort(train), np.sort(test)


def _upsample(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear-upsample (N, 8, 8) intensities in 0..1 to (N, size, size), clipped to 0..1."""
    zoom = size / images.shape[1]
    return np.clip(np.stack([ndimage.zoom(im, zoom, order=1) for im in images]), 0.0, 1.0)


def make_digits28(seed: int) -> Dataset:
    """28x28 grayscale: the digit at 20x20 centred with a 4-pixel border, like MNIST."""
    images, labels = _digits()
    ink = _upsample(images, 20)
    canvas = np.zeros((len(ink), 28, 28), np.float32)
    canvas[:, 4:24, 4:24] = ink
    x = np.rint(canvas * 255.0).astype(np.uint8)[..., None]
    train, test = _split(labels, seed)
    return Dataset(x[train], labels[train], x[test], labels[test])


def _luma(rgb: np.ndarray) -> float:
    return float(rgb @ np.array([0.299, 0.587, 0.114]))


def _render_rgb(ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Composite one 24x24 ink mask (0..1) onto a 32x32 colour-gradient background."""
    while True:
        fg = rng.uniform(0, 255, 3)
        bg = rng.uniform(0, 255, 3)
        if abs(_luma(fg) - _luma(bg)) >= RGB_MIN_CONTRAST:
            break
    # Background: the base colour plus a gentle random-direction gradient (+-25 levels) and noise.
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32) / 31.0 - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy)[..., None] * rng.uniform(-50, 50, 3)
    background = bg + ramp + rng.normal(0.0, 4.0, (32, 32, 3))
    mask = np.zeros((32, 32), np.float32)
    dy, dx = rng.integers(2, 7, size=2)  # centred is 4: a shift of up to 2 pixels each way
    mask[dy : dy + 24, dx : dx + 24] = ink
    image = background * (1.0 - mask[..., None]) + fg * mask[..., None]
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def make_digits32rgb(seed: int) -> Dataset:
    """32x32 RGB: a random-colour digit on a random tinted gradient, shifted up to 2 pixels."""
    images, labels = _digits()
    ink = _upsample(images, 24)
    train, test = _split(labels, seed)
    rng = np.random.default_rng(seed + 32)
    x_train = np.stack([_render_rgb(ink[i], rng) for _ in range(RGB_TRAIN_RENDERS) for i in train])
    y_train = np.concatenate([labels[train]] * RGB_TRAIN_RENDERS)
    x_test = np.stack([_render_rgb(ink[i], rng) for i in test])
    return Dataset(x_train, y_train, x_test, labels[test])


def _corrupt(image: np.ndarray, rng: np.random.Generator, max_sigma: float) -> np.ndarray:
    """Apply 0..MAX_CORRUPTIONS random corruptions to one float (H, W) image in 0..255.

    Gaussian noise (sigma up to ``max_sigma``), Gaussian blur, 3x3/5x5 median, 1% salt and pepper,
    or multiplicative (speckle) noise, each clipped to 0..255: generic robustness augmentation.
    """
    for _ in range(int(rng.integers(0, MAX_CORRUPTIONS + 1))):
        kind = int(rng.integers(5))
        if kind == 0:
            image = image + rng.normal(0.0, rng.uniform(0.0, max_sigma), image.shape)
        elif kind == 1:
            image = ndimage.gaussian_filter(image, rng.uniform(0.3, 1.5))
        elif kind == 2:
            image = ndimage.median_filter(image, int(rng.choice([3, 5])))
        elif kind == 3:
            u = rng.random(image.shape)
            image = np.where(u < 0.01, 255.0, np.where(u > 0.99, 0.0, image))
        else:
            image = image + image * rng.normal(rng.uniform(-0.5, 0.5), rng.uniform(0.0, 0.25), image.shape)
        image = np.clip(image, 0.0, 255.0)
    return image


def corrupted(x: np.ndarray, rng: np.random.Generator, max_sigma: float) -> np.ndarray:
    """Uint8 (N, H, W, 1) images shifted by up to 2 pixels each way, then randomly corrupted."""
    out = []
    for im in x:
        dy, dx = rng.integers(-2, 3, size=2)
        shifted = np.roll(im[..., 0].astype(np.float32), (int(dy), int(dx)), axis=(0, 1))
        out.append(np.clip(np.rint(_corrupt(shifted, rng, max_sigma)), 0, 255).astype(np.uint8)[..., None])
    return np.stack(out)


DATASETS: dict[str, Callable[[int], Dataset]] = {"digits28": make_digits28, "digits32rgb": make_digits32rgb,
                                                 "digits28wide": make_digits28}
#: Fixtures with the wide model, corruption-augmented training and corrupted calibration images.
WIDE = frozenset({"digits28wide"})


# -- training ------------------------------------------------------------------------------------
def normalization(x_train: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the training pixels, in pixel units (0..255)."""
    pixels = x_train.reshape(-1, x_train.shape[-1]).astype(np.float64)
    return [float(np.float32(v)) for v in pixels.mean(0)], [float(np.float32(v)) for v in pixels.std(0)]


def normalize(x: np.ndarray, mean: list[float], std: list[float]) -> np.ndarray:
    return ((x.astype(np.float32) - np.float32(mean)) / np.float32(std)).astype(np.float32)


def build_model(shape: tuple[int, int, int]):
    """conv16-pool-conv32-pool-dense64-dense10 (softmax): ~50-75k parameters."""
    import keras

    # Explicit layer names: Keras' automatic ones count models built earlier in the process,
    # which would change the TFLite tensor names (and bytes) with the order fixtures are made.
    return keras.Sequential(
        [
            keras.Input(shape=shape, name="image"),
            keras.layers.Conv2D(16, 3, activation="relu", name="conv1"),
            keras.layers.MaxPooling2D(name="pool1"),
            keras.layers.Conv2D(32, 3, activation="relu", name="conv2"),
            keras.layers.MaxPooling2D(name="pool2"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(64, activation="relu", name="dense"),
            keras.layers.Dense(10, activation="softmax", name="probabilities"),
        ],
        name="digits_cnn",
    )


def build_wide_model(shape: tuple[int, int, int]):
    """Two conv-BN-ReLU pairs (24), pool, two (48), pool, one (48), global average pool, dense10: ~58k params.

    The batch norms are folded into the convolutions by the TFLite converter.
    """
    import keras

    layers: list = [keras.Input(shape=shape, name="image")]
    for name, filters in (("conv1a", 24), ("conv1b", 24), ("pool1", 0), ("conv2a", 48), ("conv2b", 48),
                          ("pool2", 0), ("conv3", 48)):
        if not filters:
            layers.append(keras.layers.MaxPooling2D(name=name))
            continue
        layers += [keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=name),
                   keras.layers.BatchNormalization(name=f"{name}_bn"),
                   keras.layers.ReLU(name=f"{name}_relu")]
    layers += [keras.layers.GlobalAveragePooling2D(name="gap"),
               keras.layers.Dense(10, activation="softmax", name="probabilities")]
    return keras.Sequential(layers, name="digits_wide_cnn")


def train_wide(data: Dataset, mean: list[float], std: list[float], seed: int):
    """Train the wide model on the clean images plus WIDE_TRAIN_COPIES corrupted copies, cosine LR decay."""
    import keras

    rng = np.random.default_rng(seed + 28)
    x = np.concatenate([data.x_train] + [corrupted(data.x_train, rng, TRAIN_NOISE_SIGMA)
                                         for _ in range(WIDE_TRAIN_COPIES)])
    y = np.concatenate([data.y_train] * (WIDE_TRAIN_COPIES + 1))
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    model = build_wide_model(data.x_train.shape[1:])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    cosine = keras.callbacks.LearningRateScheduler(
        lambda epoch, lr: 1e-3 * 0.5 * (1.0 + float(np.cos(np.pi * epoch / WIDE_EPOCHS))))
    model.fit(normalize(x, mean, std), y, epochs=WIDE_EPOCHS, batch_size=WIDE_BATCH_SIZE, shuffle=True,
              verbose=0, callbacks=[cosine])
    return model


def train(data: Dataset, mean: list[float], std: list[float], seed: int):
    import keras

    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    model = build_model(data.x_train.shape[1:])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(normalize(data.x_train, mean, std), data.y_train, epochs=EPOCHS, batch_size=BATCH_SIZE,
              shuffle=True, verbose=0)
    return model


# -- measuring -----------------------------------------------------------------------------------
class Interpreter:
    """TensorFlow's TFLite interpreter (builtin kernels, no default delegate) on uint8 batches."""

    def __init__(self, content: bytes, mean: list[float], std: list[float]) -> None:
        import tensorflow as tf

        resolver = tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        self.interp = tf.lite.Interpreter(model_content=content, experimental_op_resolver_type=resolver)
        self.mean, self.std = mean, std
        self.input = self.interp.get_input_details()[0]
        self.output = self.interp.get_output_details()[0]

    def __call__(self, images: np.ndarray) -> np.ndarray:
        values = normalize(images, self.mean, self.std)
        scale, zero = self.input["quantization"]
        if scale:
            values = np.clip(np.rint(values / scale + zero), -128, 127).astype(np.int8)
        self.interp.resize_tensor_input(self.input["index"], list(images.shape))
        self.interp.allocate_tensors()
        self.interp.set_tensor(self.input["index"], values)
        self.interp.invoke()
        out = self.interp.get_tensor(self.output["index"]).astype(np.float32)
        scale, zero = self.output["quantization"]
        return (out - zero) * scale if scale else out


# -- main ----------------------------------------------------------------------------------------
def make(name: str, seed: int, out: Path) -> dict:
    """Train, export, embed metadata and write seeds for one fixture; return its figures."""
    models_dir, seeds_dir = out / "models", out / "seeds"
    data = DATASETS[name](seed)
    mean, std = normalization(data.x_train)
    model = (train_wide if name in WIDE else train)(data, mean, std, seed)
    x_seeds, y_seeds = data.x_test[:SEEDS_PER_MODEL], data.y_test[:SEEDS_PER_MODEL]
    seeds_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(seeds_dir / f"{name}.npz", x=x_seeds, y=y_seeds.astype(np.int64))

    calib_rng = np.random.default_rng(seed + 1)
    if name in WIDE:  # every training image plus a corrupted copy of each: ranges cover perturbed inputs too
        clean = data.x_train[calib_rng.permutation(len(data.x_train))]
        calibration = normalize(np.concatenate([clean, corrupted(clean, calib_rng, CALIBRATION_NOISE_SIGMA)]),
                                mean, std)
    else:
        calibration = normalize(
            data.x_train[calib_rng.choice(len(data.x_train), CALIBRATION_COUNT, replace=False)], mean, std)
    h, w, c = data.x_train.shape[1:]
    report: dict = {"name": name, "mean": mean, "std": std, "seeds": len(y_seeds),
                    "train_images": len(data.y_train), "variants": {}}
    predictions: dict[str, np.ndarray] = {}
    models_dir.mkdir(parents=True, exist_ok=True)
    for variant in VARIANTS:
        content = embed_metadata(convert(model, variant, calibration),
                                 build_metadata(name, variant, c, h, mean, std))
        path = models_dir / f"{name}-{variant}.tflite"
        path.write_bytes(content)
        probs = Interpreter(content, mean, std)(x_seeds)
        predictions[variant] = probs.argmax(1)
        report["variants"][variant] = {
            "bytes": len(content),
            "sha256": hashlib.sha256(content).hexdigest(),
            "seed_accuracy": float((predictions[variant] == y_seeds).mean()),
            "disagrees_with_float32": int((predictions[variant] != predictions["float32"]).sum()),
        }

    keras_path = models_dir / f"{name}.keras"
    export = _uncompiled_copy(model, build_wide_model if name in WIDE else build_model)
    export.save(keras_path)
    if keras_path.stat().st_size > MAX_KERAS_BYTES:
        keras_path.unlink()
        report["keras"] = None
    else:
        report["keras"] = {"bytes": keras_path.stat().st_size}
    held_out = model.predict(normalize(data.x_test, mean, std), verbose=0).argmax(1)
    report["keras_held_out_accuracy"] = float((held_out == data.y_test).mean())
    report["params"] = int(model.count_params())
    return report


def _uncompiled_copy(model, build: Callable = build_model):
    """A weight-identical copy without optimizer state (a third of the size; repair recompiles)."""
    copy = build(model.input_shape[1:])  # keras.models.clone_model keeps the compile state
    copy.set_weights(model.get_weights())
    return copy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="seed for the split, rendering and training")
    parser.add_argument("--only", choices=sorted(DATASETS), action="append", help="make only this fixture")
    parser.add_argument("--out", type=Path, default=FIXTURES_DIR, help="write models/ and seeds/ here")
    args = parser.parse_args(argv)

    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    reports = [make(name, args.seed, args.out) for name in (args.only or DATASETS)]
    for r in reports:
        print(f"{r['name']}: {r['params']} params, {r['train_images']} training images, {r['seeds']} seeds, "
              f"held-out accuracy (Keras, {HELD_OUT_COUNT} images) {r['keras_held_out_accuracy']:.3f}, "
              f"mean {np.round(r['mean'], 2).tolist()} std {np.round(r['std'], 2).tolist()}, "
              f"keras {r['keras']['bytes'] if r['keras'] else 'not saved (too big)'} bytes")
        for variant, v in r["variants"].items():
            print(f"  {variant:8s} {v['bytes']:7d} bytes  seed accuracy {v['seed_accuracy']:.3f}  "
                  f"disagrees with float32 on {v['disagrees_with_float32']}/{r['seeds']} seeds")
    total = sum(f.stat().st_size for d in (args.out / "models", args.out / "seeds") for f in d.iterdir() if f.is_file())
    print(f"fixtures total: {total} bytes")
    if total > MAX_TOTAL_BYTES:
        print(f"fixtures are {total} bytes, over the {MAX_TOTAL_BYTES}-byte budget: shrink the models",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
