"""host.tflite.metadata: normalization from embedded TFLite metadata, a sidecar, or nothing."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from device_agent.runtime import ModelRunner
from host.errors import ModelError
from host.targets.base import ModelSpec
from host.tflite.metadata import METADATA_NAME, preprocessing_for, read_model_metadata

MODELS = Path(__file__).resolve().parent.parent / "fixtures" / "models"
GRAY = MODELS / "digits28-float32.tflite"
RGB = MODELS / "digits32rgb-int8.tflite"


def _metadata_start(content: bytes) -> int:
    """Where the ModelMetadata buffer begins: 4 bytes before its unique ``M001`` identifier."""
    assert content.count(b"M001") == 1
    return content.index(b"M001") - 4


def _without_metadata(content: bytes) -> bytes:
    """Rename the TFLITE_METADATA entry (same length), so the model no longer carries metadata."""
    assert content.count(METADATA_NAME.encode()) == 1
    return content.replace(METADATA_NAME.encode(), b"XFLITE_METADATA")


def test_embedded_normalization_is_returned_per_channel() -> None:
    gray = preprocessing_for(GRAY, GRAY.read_bytes())
    rgb = preprocessing_for(RGB, RGB.read_bytes())
    assert gray is not None and rgb is not None
    assert len(gray.mean) == len(gray.std) == 1
    assert len(rgb.mean) == len(rgb.std) == 3
    # Digits are dark ink on black for the gray model, random colours for the RGB one.
    assert 20 < gray.mean[0] < 80 and all(100 < m < 160 for m in rgb.mean)
    assert all(s > 30 for s in gray.std + rgb.std)


def test_read_model_metadata_describes_the_model() -> None:
    info = read_model_metadata(RGB.read_bytes())
    assert info["name"] == "digits32rgb-int8"
    assert info["version"] == "1"
    assert "digits" in info["description"]
    assert info["min_parser_version"] == "1.0.0"
    assert len(info["normalization"]["mean"]) == 3


def test_every_variant_of_a_model_carries_the_same_normalization() -> None:
    values = {preprocessing_for(p, p.read_bytes()) for p in MODELS.glob("digits28-*.tflite")}
    assert len(values) == 1


def test_model_spec_from_path_uses_the_metadata() -> None:
    spec = ModelSpec.from_path(GRAY)
    assert spec.preprocessing == preprocessing_for(GRAY, GRAY.read_bytes())


def test_model_without_metadata_gives_none_and_still_runs(tmp_path: Path) -> None:
    content = _without_metadata(GRAY.read_bytes())
    path = tmp_path / "plain.tflite"
    path.write_bytes(content)
    assert preprocessing_for(path, content) is None
    assert preprocessing_for(None, content) is None
    assert read_model_metadata(content)["normalization"] is None
    assert read_model_metadata(content)["name"] is None
    out = ModelRunner(content).infer(np.zeros((2, 28, 28, 1), np.uint8))
    assert out.shape == (2, 10)


def test_sidecar_is_used_when_nothing_is_embedded(tmp_path: Path) -> None:
    content = _without_metadata(GRAY.read_bytes())
    path = tmp_path / "plain.tflite"
    path.write_bytes(content)
    (tmp_path / "plain.tflite.json").write_text(json.dumps({"mean": [127.5], "std": [127.5]}))
    pre = preprocessing_for(path, content)
    assert pre is not None and (pre.mean, pre.std) == ((127.5,), (127.5,))


def test_embedded_metadata_wins_over_a_sidecar(tmp_path: Path) -> None:
    path = tmp_path / "m.tflite"
    path.write_bytes(GRAY.read_bytes())
    (tmp_path / "m.tflite.json").write_text(json.dumps({"mean": [1.0], "std": [2.0]}))
    assert preprocessing_for(path, path.read_bytes()) == preprocessing_for(GRAY, GRAY.read_bytes())


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"mean": [1.0]}', '{"mean": [1.0], "std": [0.0]}'])
def test_malformed_sidecar_is_a_model_error(tmp_path: Path, text: str) -> None:
    content = _without_metadata(GRAY.read_bytes())
    path = tmp_path / "plain.tflite"
    path.write_bytes(content)
    (tmp_path / "plain.tflite.json").write_text(text)
    with pytest.raises(ModelError, match="plain.tflite.json"):
        preprocessing_for(path, content)


def test_bytes_that_are_not_tflite_have_no_metadata() -> None:
    assert preprocessing_for(None, b"not a model at all") is None
    assert read_model_metadata(b"")["normalization"] is None


def _corrupt(content: bytes, at: int, new: bytes) -> bytes:
    return content[:at] + new + content[at + len(new):]


@pytest.mark.parametrize("what", ["identifier", "root offset", "vtable offset"])
def test_corrupt_metadata_buffer_is_a_model_error(what: str) -> None:
    content = GRAY.read_bytes()
    start = _metadata_start(content)
    if what == "identifier":
        bad = _corrupt(content, start + 4, b"XXXX")
    elif what == "root offset":
        bad = _corrupt(content, start, struct.pack("<I", 0x7FFFFFF0))
    else:  # the root table's signed offset to its vtable points far outside the buffer
        root = struct.unpack_from("<I", content, start)[0]
        bad = _corrupt(content, start + root, struct.pack("<i", -0x7FFFFFF0))
    with pytest.raises(ModelError, match=METADATA_NAME):
        preprocessing_for(None, bad)
    with pytest.raises(ModelError, match=METADATA_NAME):
        read_model_metadata(bad)


def test_zero_std_in_metadata_is_a_model_error() -> None:
    content = GRAY.read_bytes()
    start = _metadata_start(content)
    std = preprocessing_for(GRAY, content).std[0]
    packed = struct.pack("<f", std)
    at = content.index(packed, start)
    with pytest.raises(ModelError, match="std"):
        preprocessing_for(GRAY, _corrupt(content, at, struct.pack("<f", 0.0)))
