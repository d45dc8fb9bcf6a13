"""Helpers for the lab tests: lab files, and a compressed model with two classes swapped."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from device_agent.runtime import load_runtime

FIXTURES = Path(__file__).resolve().parent / "fixtures"
FLOAT = FIXTURES / "models" / "digits28-float32.tflite"
INT8 = FIXTURES / "models" / "digits28-int8.tflite"
SEEDS = FIXTURES / "seeds" / "digits28.npz"


def swap_classes(model: Path, out: Path, a: int = 0, b: int = 1) -> Path:
    """Write a copy of ``model`` whose classifier layer has classes ``a`` and ``b`` swapped.

    The last layer's weight rows and bias entries (constant tensors whose first dimension is the
    class count) are found as byte strings in the flatbuffer and swapped in place: a deliberately
    changed compressed model that deviates from the original exactly where it predicts a or b.
    """
    content = bytearray(model.read_bytes())
    interp = load_runtime().module.Interpreter(model_content=bytes(content))
    interp.allocate_tensors()
    classes = int(interp.get_output_details()[0]["shape"][-1])
    swapped = 0
    for detail in interp.get_tensor_details():
        shape = tuple(detail["shape"])
        if not shape or shape[0] != classes or len(shape) > 2:
            continue
        try:
            tensor = interp.get_tensor(detail["index"])
        except ValueError:
            continue  # an activation, not a constant
        raw = tensor.tobytes()
        offset = bytes(content).find(raw)
        if offset < 0 or bytes(content).find(raw, offset + 1) >= 0:
            continue
        changed = tensor.copy()
        changed[[a, b]] = changed[[b, a]]
        content[offset : offset + len(raw)] = changed.tobytes()
        swapped += 1
    if swapped != 2:
        raise AssertionError(f"expected to swap the classifier's weights and bias, swapped {swapped} tensors")
    out.write_bytes(bytes(content))
    return out


def write_lab(path: Path, devices: list[tuple[str, str]], compressed: Path, *, delegates=("xnnpack",),
              seeds: int = 12, max_queries: int = 60, extra: str = "") -> Path:
    """Write a lab.toml with the digits28 pair, tiny budgets and fast retries."""
    lines = [
        "[lab]", 'name = "test-lab"', 'history = "history.sqlite"', 'out = "runs"',
        f"delegates = [{', '.join(repr(d).replace(chr(39), chr(34)) for d in delegates)}]",
        "retries = 1", "backoff_s = 0.05", "connect_timeout_s = 2.0", "",
        "[budget]", f"seeds = {seeds}", f"max_queries = {max_queries}", "latency_runs = 3", "batch_size = 4", "",
        "[regression]", "latency_ratio = 1000.0", "",  # latency on 2 shared cores is too noisy to gate here
    ]
    for name, uri in devices:
        lines += ["[[device]]", f'name = "{name}"', f'uri = "{uri}"', ""]
    lines += ["[[model]]", 'name = "digits28"', f'original = "{FLOAT}"', f'compressed = "{compressed}"',
              f'seeds = "{SEEDS}"', "", extra]
    path.write_text("\n".join(lines))
    return path


def seed_labels(model: Path, delegate: str, n: int) -> np.ndarray:
    """Top-1 labels of ``model`` on the first n fixture seeds, with the model's own preprocessing."""
    from device_agent.runtime import ModelRunner
    from host.targets import ModelSpec

    with np.load(SEEDS) as data:
        x = data["x"][:n]
    spec = ModelSpec.from_path(model)
    runner = ModelRunner(spec.content, delegate=delegate, preprocessing=spec.preprocessing)
    return runner.infer(x).argmax(1)
