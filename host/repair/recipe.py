"""The compression recipe of a compressed model: given (``--recipe``) or read from the model's tensors.

A TFLite converter recipe leaves clear marks in the tensor types, which the TFLite runtime lists
(no TensorFlow needed):

- ``int8`` (full integer): quantized int32 biases (only integer kernels need them); its input type
  (int8, uint8 or float32) is kept so the repaired model is a drop-in replacement.
- ``float16``: float16 weight tensors (dequantized at load).
- ``dynamic`` (dynamic range): int8 weights with quantization scales, float activations and biases.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from device_agent.runtime import load_runtime
from host.errors import ModelError, RepairError
from host.tflite.export import INT8_IO_TYPES

#: Recipes ``dflare repair --recipe`` accepts (``float32`` is no compression, so nothing to repair).
RECIPES = ("int8", "dynamic", "float16")


@dataclass(frozen=True)
class Recipe:
    """How to re-compress the fine-tuned model.

    Attributes:
        variant: one of :data:`RECIPES`.
        int8_io: for ``int8``, the model's input/output type (``int8``, ``uint8`` or ``float32``).
        source: where the recipe came from (``"given"`` or a note on what was detected).
    """

    variant: str
    int8_io: str = "int8"
    source: str = "given"

    def to_dict(self) -> dict:
        return {"variant": self.variant, "int8_io": self.int8_io if self.variant == "int8" else None,
                "source": self.source}


def detect_recipe(content: bytes, name: str = "the compressed model") -> Recipe:
    """Read the recipe that produced a compressed TFLite model from its tensor types.

    Args:
        content: the .tflite bytes.
        name: how to call the model in error messages (its path).

    Raises:
        ModelError: the runtime cannot read the model.
        RepairError: the model shows no known compression (pass ``--recipe``).
    """
    try:
        interpreter = load_runtime().module.Interpreter(model_content=content)
    except (ValueError, RuntimeError) as exc:
        raise ModelError(f"{name}: the TFLite runtime cannot read it ({exc})") from None
    tensors = interpreter.get_tensor_details()
    input_dtype = np.dtype(interpreter.get_input_details()[0]["dtype"]).name

    def has(dtype: str, quantized: bool | None = None) -> bool:
        for t in tensors:
            if np.dtype(t["dtype"]).name != dtype:
                continue
            scales = t.get("quantization_parameters", {}).get("scales", ())
            if quantized is None or bool(len(scales)) == quantized:
                return True
        return False

    if has("int32", quantized=True):
        io = input_dtype if input_dtype in INT8_IO_TYPES else "float32"
        return Recipe("int8", io, f"detected: full-integer kernels (quantized biases), {io} input")
    if has("float16"):
        return Recipe("float16", source="detected: float16 weights")
    if has("int8", quantized=True):
        return Recipe("dynamic", source="detected: int8 weights with float activations (dynamic range)")
    raise RepairError(f"{name} shows no known compression (no int8 or float16 tensors): pass --recipe "
                      f"{'|'.join(RECIPES)} to say how to re-compress the repaired model")


def given_recipe(variant: str, content: bytes | None = None) -> Recipe:
    """A recipe named on the command line; for ``int8`` the I/O type follows the compressed model's input.

    Raises:
        RepairError: an unknown recipe name.
    """
    if variant not in RECIPES:
        raise RepairError(f"unknown recipe {variant!r}; choose one of {', '.join(RECIPES)}")
    io = "int8"
    if variant == "int8" and content is not None:
        try:
            interpreter = load_runtime().module.Interpreter(model_content=content)
            dtype = np.dtype(interpreter.get_input_details()[0]["dtype"]).name
            io = dtype if dtype in INT8_IO_TYPES else "float32"
        except (ValueError, RuntimeError):
            pass  # unreadable: keep the fixtures' int8 I/O; loading the model reports the real problem
    return Recipe(variant, io, "given (--recipe)")
