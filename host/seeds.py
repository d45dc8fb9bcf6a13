"""Seed images: an .npz (``x`` uint8 NHWC, optional ``y``) or a folder of PNG/JPEG files.

The one seed loader, used by campaigns, ``dflare compare``, the lab and repair.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from host.errors import SeedError

#: File name endings read from a seed folder (case-insensitive).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class SeedSet:
    """Seed images ready for the models: ``x`` uint8 (N, H, W, C), optional integer labels ``y``."""

    x: np.ndarray
    y: np.ndarray | None
    names: list[str]
    source: Path

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def label(self, index: int) -> int | None:
        return None if self.y is None else int(self.y[index])

    def digest(self) -> str:
        """sha256 over the images' shape and bytes and the labels: equal seed sets give equal digests."""
        h = hashlib.sha256()
        h.update(repr(tuple(self.x.shape)).encode())
        h.update(np.ascontiguousarray(self.x).tobytes())
        if self.y is not None:
            h.update(b"y")
            h.update(np.ascontiguousarray(self.y, dtype=np.int64).tobytes())
        return h.hexdigest()


def load_seeds(path: str | Path, image_shape: tuple[int, int, int] | None = None, resize: bool = False,
               limit: int | None = None) -> SeedSet:
    """Read seeds and check they fit the models' input.

    Args:
        path: an .npz file or a folder of images.
        image_shape: the (H, W, C) the models take; None accepts any uint8 NHWC .npz (a folder needs it,
            to know the channels and size to read the images at).
        resize: resize folder images of another size (else such an image is an error).
        limit: keep only the first ``limit`` seeds.

    Returns:
        The seed set.

    Raises:
        SeedError: the path is missing, or the seeds have the wrong format, dtype, shape or size.
    """
    path = Path(path)
    if not path.exists():
        raise SeedError(f"seeds not found: {path} (give an .npz with x[,y] or a folder of PNG/JPEG images)")
    if path.is_dir():
        if image_shape is None:
            raise SeedError(f"{path} is a folder of images; give the seeds as an .npz (x uint8 NHWC) here")
        seeds = _load_folder(path, image_shape, resize, limit)
    else:
        seeds = _load_npz(path, image_shape)
    if limit is not None and len(seeds) > limit:
        y = None if seeds.y is None else seeds.y[:limit]
        seeds = SeedSet(seeds.x[:limit], y, seeds.names[:limit], seeds.source)
    return seeds


def _expected(image_shape: tuple[int, int, int]) -> str:
    h, w, c = image_shape
    return f"(N, {h}, {w}, {c}) uint8"


def _load_npz(path: Path, image_shape: tuple[int, int, int] | None) -> SeedSet:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError) as exc:
        raise SeedError(f"{path} is not a readable .npz file ({exc}); expected arrays x (uint8 NHWC) and optional y"
                        ) from None
    if "x" not in arrays:
        raise SeedError(f"{path} has no array 'x' (it has {sorted(arrays) or 'none'}); expected x uint8 NHWC")
    x = arrays["x"]
    if x.dtype != np.uint8:
        raise SeedError(f"{path}: x has dtype {x.dtype}, expected uint8 pixels 0..255 "
                        "(convert with np.clip(x * 255, 0, 255).round().astype(np.uint8) for 0..1 floats)")
    if x.ndim == 3 and (image_shape is None or image_shape[2] == 1):
        x = x[..., np.newaxis]  # grayscale NHW: add the channel axis
    if image_shape is None and x.ndim != 4:
        raise SeedError(f"{path}: x has shape {tuple(x.shape)}, expected (N, H, W, C) uint8 images")
    if image_shape is not None and (x.ndim != 4 or tuple(x.shape[1:]) != tuple(image_shape)):
        raise SeedError(f"{path}: x has shape {tuple(x.shape)}, the models expect {_expected(image_shape)}")
    if x.shape[0] == 0:
        raise SeedError(f"{path}: x holds no images")
    y = arrays.get("y")
    if y is not None:
        y = np.asarray(y).reshape(-1)
        if y.shape[0] != x.shape[0]:
            raise SeedError(f"{path}: y has {y.shape[0]} labels for {x.shape[0]} images")
        if not np.issubdtype(y.dtype, np.integer):
            raise SeedError(f"{path}: y has dtype {y.dtype}, expected integer class labels")
        y = y.astype(np.int64)
    names = [f"{path.name}[{i}]" for i in range(x.shape[0])]
    return SeedSet(np.ascontiguousarray(x), y, names, path)


def _load_folder(path: Path, image_shape: tuple[int, int, int], resize: bool, limit: int | None) -> SeedSet:
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SeedError(f"{path} holds no PNG or JPEG images")
    if limit is not None:
        files = files[:limit]
    h, w, c = image_shape
    if c not in (1, 3):
        raise SeedError(f"the models take {c}-channel images; image folders give 1 (grayscale) or 3 (RGB) channels")
    images = []
    for file in files:
        try:
            with Image.open(file) as img:
                img = img.convert("L" if c == 1 else "RGB")
                if img.size != (w, h):
                    if not resize:
                        raise SeedError(
                            f"{file}: image is {img.size[0]}x{img.size[1]} (width x height), the models expect "
                            f"{w}x{h}; resize the seeds or pass --resize"
                        )
                    img = img.resize((w, h), Image.Resampling.BILINEAR)
                arr = np.asarray(img, dtype=np.uint8)
        except (UnidentifiedImageError, OSError) as exc:
            raise SeedError(f"{file}: not a readable image ({exc})") from None
        images.append(arr.reshape(h, w, c))
    return SeedSet(np.stack(images), None, [f.name for f in files], path)
