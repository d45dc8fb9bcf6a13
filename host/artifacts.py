"""Per-input artifacts in ``--out/inputs/``: ``<seed>_<n>.png`` (lossless) and ``<seed>_<n>.npy``, and for a
minimized input ``<seed>_<n>_min.png`` / ``.npy``.

Both hold exactly the tested uint8 pixels: the PNG decodes to the same bytes, the .npy keeps the
(H, W, C) array as is. The store keeps the bytes too, so these files can always be rebuilt.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from host.files import atomic_write
from host.records import InputRecord, MinimizedRecord

INPUTS_DIR = "inputs"


def png_bytes(image: np.ndarray) -> bytes:
    """Encode a uint8 HWC image (C = 1 or 3) as a lossless PNG."""
    from PIL import Image

    image = np.ascontiguousarray(image, dtype=np.uint8)
    if image.ndim == 3 and image.shape[2] == 1:
        pil = Image.fromarray(image[:, :, 0], mode="L")
    elif image.ndim == 3 and image.shape[2] == 3:
        pil = Image.fromarray(image, mode="RGB")
    elif image.ndim == 2:
        pil = Image.fromarray(image, mode="L")
    else:
        raise ValueError(f"cannot store an image of shape {image.shape} as PNG (expected HxWx1 or HxWx3)")
    buf = io.BytesIO()
    pil.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def write_input(out_dir: str | Path, record: InputRecord | MinimizedRecord, overwrite: bool = True
                ) -> tuple[Path, Path]:
    """Write one input's (raw or minimized) PNG and .npy atomically (temp file + rename); return their paths."""
    folder = Path(out_dir) / INPUTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    png = folder / f"{record.stem}.png"
    npy = folder / f"{record.stem}.npy"
    if overwrite or not png.exists():
        atomic_write(png, png_bytes(record.image))
    if overwrite or not npy.exists():
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(record.image, dtype=np.uint8), allow_pickle=False)
        atomic_write(npy, buf.getvalue())
    return png, npy


def write_all(out_dir: str | Path, records: list[InputRecord] | list[MinimizedRecord]) -> list[Path]:
    """Write every input's files that are missing (after an interrupted run); return the PNG paths."""
    return [write_input(out_dir, r, overwrite=False)[0] for r in records]

