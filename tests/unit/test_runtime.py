"""device_agent.runtime: delegate parsing, preprocessing, model byte checks (no model file needed)."""

from __future__ import annotations

import numpy as np
import pytest

from device_agent import runtime
from device_agent.errors import InputError, ModelFormatError, RuntimeDelegateUnavailableError


@pytest.mark.parametrize("text,kind,path", [
    ("cpu", "cpu", ""),
    ("XNNPACK", "xnnpack", ""),
    ("ref", "ref", ""),
    ("", "cpu", ""),
    ("external:/opt/lib/libfoo.so", "external", "/opt/lib/libfoo.so"),
])
def test_parse_delegate_accepts_known_names(text: str, kind: str, path: str) -> None:
    choice = runtime.parse_delegate(text)
    assert (choice.kind, choice.path) == (kind, path)


@pytest.mark.parametrize("text,fragment", [
    ("tpu", "unknown delegate 'tpu'"),
    ("external", "needs a library path"),
    ("cpu:/x.so", "takes no path"),
])
def test_parse_delegate_rejects_with_a_clear_message(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        runtime.parse_delegate(text)


def test_preprocessing_broadcasts_per_channel() -> None:
    images = np.full((2, 2, 2, 3), 100, dtype=np.uint8)
    out = runtime.Preprocessing(mean=(0.0, 50.0, 100.0), std=(1.0, 2.0, 4.0)).apply(images)
    assert out.dtype == np.float32
    assert out[0, 0, 0].tolist() == [100.0, 25.0, 0.0]


@pytest.mark.parametrize("mean,std", [((120.5, 3.0, 250.0), (60.25, 7.0, 0.5)), ((127.5,), (127.5,)),
                                      ((10.0, 10.0, 10.0), (3.0, 3.0, 3.0))])
def test_preprocessing_equals_the_per_channel_formula_bit_for_bit(mean, std) -> None:
    images = np.random.default_rng(1).integers(0, 256, (3, 5, 7, 3), dtype=np.uint8)
    expected = np.empty(images.shape, np.float32)
    for c in range(3):
        m, s = np.float32(mean[c % len(mean)]), np.float32(std[c % len(std)])
        expected[..., c] = (images[..., c].astype(np.float32) - m) / s
    pre = runtime.Preprocessing(mean=mean, std=std)
    assert pre.apply(images).tobytes() == expected.tobytes()
    assert pre.apply(images[:, ::2]).tobytes() == np.ascontiguousarray(expected[:, ::2]).tobytes()  # strided input
    out = np.empty((3, 7, 5, 3), np.float32).transpose(0, 2, 1, 3)  # a non-contiguous destination
    assert pre.apply(images, out=out).tobytes() == expected.tobytes()


def test_preprocessing_rejects_channel_mismatch() -> None:
    images = np.zeros((1, 2, 2, 3), dtype=np.uint8)
    with pytest.raises(InputError, match="2 values but images have 3 channels"):
        runtime.Preprocessing(mean=(0.0, 1.0), std=(1.0,)).apply(images)


def test_preprocessing_rejects_zero_std() -> None:
    with pytest.raises(ValueError, match="non-zero"):
        runtime.Preprocessing(std=(0.0,))


def test_preprocessing_round_trips_through_dict() -> None:
    pre = runtime.Preprocessing(mean=(1.5, 2.0), std=(3.0, 4.0))
    assert runtime.Preprocessing.from_dict(pre.to_dict()) == pre


@pytest.mark.parametrize("spec", [
    runtime.TensorSpec("in", (1, 4, 4, 3), "float32"),
    runtime.TensorSpec("in", (1, 4, 4, 3), "int8", scale=0.0173, zero_point=-3),
    runtime.TensorSpec("in", (1, 4, 4, 3), "uint8", scale=0.02, zero_point=128),
    runtime.TensorSpec("in", (1, 4, 4, 3), "float16"),
    runtime.TensorSpec("in", (1, 4, 4, 3), "uint8"),
])
def test_prepare_input_into_a_buffer_gives_the_same_bytes(spec: runtime.TensorSpec) -> None:
    # The agent prepares batches into shared memory; the bytes must equal the in-process path's.
    images = np.random.default_rng(0).integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    pre = runtime.Preprocessing(mean=(120.5, 3.0, 250.0), std=(60.25, 7.0, 0.5))
    fresh = runtime.prepare_input(images, spec, pre)
    out = np.full(images.shape, 7, dtype=spec.dtype)
    written = runtime.prepare_input(images, spec, pre, out=out)
    assert written is out
    assert fresh.dtype.name == spec.dtype and out.tobytes() == fresh.tobytes()
    assert runtime.needs_preparation(spec) == (spec.dtype != "uint8" or spec.quantized)


@pytest.mark.parametrize("content,fragment", [
    (b"", "too short"),
    (b"\x00" * 16, "not a TFLite model"),
    (b"PK\x03\x04" + b"\x00" * 20, "not a TFLite model"),
])
def test_non_tflite_bytes_are_rejected(content: bytes, fragment: str) -> None:
    with pytest.raises(ModelFormatError, match=fragment):
        runtime.ModelRunner(content)


def test_truncated_model_is_rejected() -> None:
    # A valid header with nothing behind it: the runtime itself must refuse it.
    content = b"\x1c\x00\x00\x00TFL3" + b"\x00" * 24
    with pytest.raises(ModelFormatError):
        runtime.ModelRunner(content)


def test_unavailable_delegate_names_what_is_available() -> None:
    content = b"\x1c\x00\x00\x00TFL3" + b"\x00" * 24
    with pytest.raises(RuntimeDelegateUnavailableError, match="not allowed on this agent"):
        runtime.ModelRunner(content, delegate="external:/tmp/libnothing.so")


def test_runtime_is_found() -> None:
    rt = runtime.load_runtime()
    assert rt.name in ("ai_edge_litert", "tflite_runtime")
    assert {"cpu", "xnnpack", "ref"} <= set(runtime.available_delegates())
