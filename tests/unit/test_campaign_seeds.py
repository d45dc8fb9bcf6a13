"""Seed loading: .npz and image folders, with errors that name the expected shape or size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from host.errors import SeedError
from host.seeds import load_seeds

SHAPE = (28, 28, 1)


def npz(tmp_path: Path, **arrays: np.ndarray) -> Path:
    path = tmp_path / "s.npz"
    np.savez(path, **arrays)
    return path


def test_npz_with_labels_and_limit(tmp_path: Path) -> None:
    x = np.random.default_rng(0).integers(0, 256, (5, 28, 28, 1), dtype=np.uint8)
    seeds = load_seeds(npz(tmp_path, x=x, y=np.arange(5)), SHAPE, limit=3)
    assert len(seeds) == 3 and seeds.x.tobytes() == x[:3].tobytes() and seeds.label(2) == 2
    assert seeds.names[0] == "s.npz[0]"


def test_grayscale_without_channel_axis_is_accepted(tmp_path: Path) -> None:
    x = np.zeros((2, 28, 28), np.uint8)
    assert load_seeds(npz(tmp_path, x=x), SHAPE).x.shape == (2, 28, 28, 1)


def test_digest_depends_on_pixels_and_labels(tmp_path: Path) -> None:
    x = np.zeros((2, 28, 28, 1), np.uint8)
    a = load_seeds(npz(tmp_path, x=x), SHAPE).digest()
    x2 = x.copy()
    x2[1, 3, 3, 0] = 1
    assert a != load_seeds(npz(tmp_path, x=x2), SHAPE).digest()
    assert a != load_seeds(npz(tmp_path, x=x, y=np.array([0, 1])), SHAPE).digest()
    assert a == load_seeds(npz(tmp_path, x=x), SHAPE).digest()


@pytest.mark.parametrize(("arrays", "message"), [
    ({"x": np.zeros((2, 28, 28, 1), np.float32)}, r"x has dtype float32, expected uint8"),
    ({"x": np.zeros((2, 32, 32, 3), np.uint8)}, r"x has shape \(2, 32, 32, 3\), the models expect \(N, 28, 28, 1\)"),
    ({"images": np.zeros((2, 28, 28, 1), np.uint8)}, r"has no array 'x' \(it has \['images'\]\)"),
    ({"x": np.zeros((2, 28, 28, 1), np.uint8), "y": np.arange(3)}, r"y has 3 labels for 2 images"),
    ({"x": np.zeros((2, 28, 28, 1), np.uint8), "y": np.array([0.5, 1.0])}, r"y has dtype float64"),
])
def test_bad_npz_is_explained(tmp_path: Path, arrays: dict, message: str) -> None:
    with pytest.raises(SeedError, match=message):
        load_seeds(npz(tmp_path, **arrays), SHAPE)


def test_missing_and_unreadable(tmp_path: Path) -> None:
    with pytest.raises(SeedError, match="seeds not found"):
        load_seeds(tmp_path / "nope.npz", SHAPE)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"nonsense")
    with pytest.raises(SeedError, match="not a readable .npz"):
        load_seeds(bad, SHAPE)


def test_image_folder_png_and_jpeg(tmp_path: Path) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "b.png")
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=95)
    (tmp_path / "notes.txt").write_text("ignored")
    seeds = load_seeds(tmp_path, (32, 32, 3))
    assert seeds.names == ["a.jpg", "b.png"] and seeds.y is None
    assert seeds.x[1].tobytes() == rgb.tobytes()  # PNG is lossless
    gray = load_seeds(tmp_path, (32, 32, 1))
    assert gray.x.shape == (2, 32, 32, 1)


def test_image_folder_size_needs_explicit_resize(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((40, 30), np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(SeedError, match=r"big.png: image is 30x40 .*expect 28x28; resize the seeds or pass --resize"):
        load_seeds(tmp_path, SHAPE)
    assert load_seeds(tmp_path, SHAPE, resize=True).x.shape == (1, 28, 28, 1)


def test_empty_folder_and_broken_image(tmp_path: Path) -> None:
    with pytest.raises(SeedError, match="holds no PNG or JPEG"):
        load_seeds(tmp_path, SHAPE)
    (tmp_path / "x.png").write_bytes(b"not a png")
    with pytest.raises(SeedError, match="x.png: not a readable image"):
        load_seeds(tmp_path, SHAPE)
