"""The committed fixture models and seeds (scripts/make_fixtures.py) load and behave as documented.

Every model runs on the real interpreter through ModelRunner, with preprocessing read from its
embedded TFLite metadata, exactly as ``ModelSpec.from_path`` + ``LocalTarget`` would.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest

from device_agent.runtime import ModelRunner, load_runtime
from host.tflite.metadata import preprocessing_for

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
MODELS = FIXTURES / "models"
SEEDS = FIXTURES / "seeds"
NAMES = {"digits28": (28, 28, 1), "digits32rgb": (32, 32, 3), "digits28wide": (28, 28, 1)}
VARIANTS = ("float32", "dynamic", "int8", "float16")
COMPRESSED = ("dynamic", "int8", "float16")
#: Accuracy floor on the seeds for every model (the issue's stated floor).
MIN_SEED_ACCURACY = 0.9
#: Minimum fraction of seeds on which a compressed model's top-1 equals float32's.
MIN_AGREEMENT = 0.9
#: The whole fixture set must stay under this (issue 3: "well under 5 MB together").
MAX_FIXTURE_BYTES = 5 * 1024 * 1024


@cache
def seeds(name: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(SEEDS / f"{name}.npz") as data:
        return data["x"], data["y"]


@cache
def predictions(name: str, variant: str) -> np.ndarray:
    """Top-1 labels of one fixture model on its seeds (one batch: the runner resizes the input)."""
    path = MODELS / f"{name}-{variant}.tflite"
    content = path.read_bytes()
    runner = ModelRunner(content, preprocessing=preprocessing_for(path, content))
    probs = runner.infer(seeds(name)[0])
    assert probs.shape == (len(seeds(name)[1]), 10)
    return probs.argmax(axis=1)


@pytest.mark.parametrize("name", sorted(NAMES))
def test_seed_sets_are_uint8_nhwc_with_int_labels(name: str) -> None:
    x, y = seeds(name)
    assert x.dtype == np.uint8 and x.shape[1:] == NAMES[name]
    assert y.dtype == np.int64 and y.shape == (len(x),)
    assert 150 <= len(x) <= 300
    assert set(y.tolist()) == set(range(10)), "seeds should cover every digit"
    assert len(np.unique(x.reshape(len(x), -1), axis=0)) == len(x), "seed images should be distinct"


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", sorted(NAMES))
def test_model_accuracy_on_seeds_is_above_floor(name: str, variant: str) -> None:
    accuracy = float((predictions(name, variant) == seeds(name)[1]).mean())
    assert accuracy >= MIN_SEED_ACCURACY, f"{name}-{variant}: seed accuracy {accuracy:.3f}"


@pytest.mark.parametrize("variant", COMPRESSED)
@pytest.mark.parametrize("name", sorted(NAMES))
def test_compressed_model_agrees_with_float32_on_most_seeds(name: str, variant: str) -> None:
    agreement = float((predictions(name, variant) == predictions(name, "float32")).mean())
    assert agreement >= MIN_AGREEMENT, f"{name}-{variant} agrees with float32 on {agreement:.3f} of seeds"


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", sorted(NAMES))
def test_model_input_is_resizable_and_typed_as_documented(name: str, variant: str) -> None:
    path = MODELS / f"{name}-{variant}.tflite"
    content = path.read_bytes()
    interpreter = load_runtime().module.Interpreter(model_content=content)
    detail = interpreter.get_input_details()[0]
    assert detail["shape_signature"][0] == -1, "the batch dimension must be resizable"
    assert tuple(detail["shape"][1:]) == NAMES[name]
    expected_dtype = np.int8 if variant == "int8" else np.float32
    assert detail["dtype"] == expected_dtype
    assert interpreter.get_output_details()[0]["dtype"] == expected_dtype
    pre = preprocessing_for(path, content)
    assert pre is not None and len(pre.mean) == len(pre.std) == NAMES[name][2]
    assert not (MODELS / f"{path.name}.json").exists(), "normalization is embedded; no sidecar expected"


def test_fixture_set_is_small() -> None:
    total = sum(f.stat().st_size for d in (MODELS, SEEDS) for f in d.rglob("*") if f.is_file())
    assert total < MAX_FIXTURE_BYTES, f"fixtures take {total} bytes"
