"""Keras -> TFLite export shared by ``scripts/make_fixtures.py`` and ``dflare repair``: one recipe, one place.

:func:`convert` applies a compression recipe (``float32``, ``dynamic``, ``int8``, ``float16``) with
``tf.lite.TFLiteConverter``; :class:`KeepFloatConverter` makes full-integer models with chosen layers
kept in float (``dflare repair --keep-float``, through TFLite's QuantizationDebugger);
:func:`build_metadata` writes a tflite-support ``ModelMetadata`` flatbuffer
(identifier ``M001``) carrying the input normalization; :func:`embed_metadata` adds it to a model as the
standard ``TFLITE_METADATA`` entry with 16-byte aligned buffers; :func:`extract_metadata` reads it back
so a repaired model keeps the compressed model's metadata.

TensorFlow and flatbuffers are imported inside the functions (the ``repair``/``fixtures`` extras), so
importing this module costs nothing. The fixture bytes depend on this code: change it only together
with ``make fixtures`` (the committed fixtures must stay byte-identical, tests/fixtures/README.md).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from host.tflite.metadata import METADATA_FILE_IDENTIFIER, METADATA_NAME

#: Compression recipes :func:`convert` knows (the fixture variants; ``float32`` is no compression).
VARIANTS = ("float32", "dynamic", "int8", "float16")
#: Input/output types a full-integer (``int8``) model may have at its boundary.
INT8_IO_TYPES = ("int8", "uint8", "float32")

# TFLite metadata (tflite-support metadata_schema.fbs, schema version 1.1.0) ---------------------
# Field ids are the declaration order in each table; a flatbuffers vtable slot is 4 + 2 * id.
METADATA_MIN_PARSER_VERSION = "1.0.0"  # only 1.0.0 fields are used below
_MODEL_METADATA = {"name": 0, "description": 1, "version": 2, "subgraph_metadata": 3,
                   "author": 4, "license": 5, "associated_files": 6, "min_parser_version": 7}
_SUBGRAPH_METADATA = {"name": 0, "description": 1, "input_tensor_metadata": 2, "output_tensor_metadata": 3}
_TENSOR_METADATA = {"name": 0, "description": 1, "dimension_names": 2, "content": 3, "process_units": 4}
_CONTENT = {"content_properties_type": 0, "content_properties": 1, "range": 2}
_IMAGE_PROPERTIES = {"color_space": 0, "default_size": 1}
_IMAGE_SIZE = {"width": 0, "height": 1}
_PROCESS_UNIT = {"options_type": 0, "options": 1}
_NORMALIZATION_OPTIONS = {"mean": 0, "std": 1}
_CONTENT_FEATURE_PROPERTIES = 1  # union ContentProperties: FeatureProperties=1, ImageProperties=2
_CONTENT_IMAGE_PROPERTIES = 2
_PROCESS_UNIT_NORMALIZATION = 1  # union ProcessUnitOptions: NormalizationOptions=1
_COLOR_SPACE_RGB = 1
_COLOR_SPACE_GRAYSCALE = 2
#: TFLite schema requires buffer data aligned to 16 bytes (``force_align: 16`` in schema.fbs).
_BUFFER_ALIGNMENT_BYTES = 16


def convert(model: Any, variant: str, calibration: np.ndarray, int8_io: str = "int8") -> bytes:
    """Convert a Keras model to TFLite with a resizable batch dimension (input signature [-1, H, W, C]).

    Args:
        model: a Keras model taking the normalized float image.
        variant: one of :data:`VARIANTS`.
        calibration: normalized float32 images (N, H, W, C) for the int8 representative dataset
            (fed one image at a time, in order); ignored by the other variants.
        int8_io: the ``int8`` model's input and output type, one of :data:`INT8_IO_TYPES`.

    Returns:
        The .tflite bytes (no metadata; see :func:`embed_metadata`).

    Raises:
        ValueError: an unknown variant or int8 I/O type.
    """
    import tensorflow as tf

    if int8_io not in INT8_IO_TYPES:
        raise ValueError(f"unknown int8 I/O type {int8_io!r}; expected one of {', '.join(INT8_IO_TYPES)}")
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if variant == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif variant == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([calibration[i : i + 1]] for i in range(len(calibration)))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if int8_io != "float32":
            converter.inference_input_type = getattr(tf, int8_io)
            converter.inference_output_type = getattr(tf, int8_io)
    elif variant == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif variant != "float32":
        raise ValueError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    return bytes(converter.convert())


class KeepFloatConverter:
    """Full-integer conversions of one Keras model, some layers kept in float, through TFLite's QuantizationDebugger.

    The model is calibrated once (``QuantizationDebugger(converter=...)``); each :meth:`convert`
    re-quantizes that calibrated model with a deny-list (``QuantizationDebugOptions(denylisted_nodes,
    denylisted_ops)``) and returns ``get_nondebug_quantized_model()``, so a conversion without a
    deny-list (the control) and with one differ only in the kept layers.

    Args:
        model: a Keras model taking the normalized float image.
        calibration: normalized float32 images (N, H, W, C), fed one at a time, in order.
        int8_io: the model's input/output type: ``float32`` keeps float I/O; ``int8`` or ``uint8``
            quantize them (``fully_quantize``; the debugger's quantizer gives int8 in both cases).

    Raises:
        ValueError: an unknown int8 I/O type, or the converter refuses the model.
    """

    def __init__(self, model: Any, calibration: np.ndarray, int8_io: str = "int8") -> None:
        import tensorflow as tf

        if int8_io not in INT8_IO_TYPES:
            raise ValueError(f"unknown int8 I/O type {int8_io!r}; expected one of {', '.join(INT8_IO_TYPES)}")
        self._options = tf.lite.experimental.QuantizationDebugOptions
        self.fully_quantize = int8_io != "float32"

        def dataset() -> Any:
            return ([calibration[i : i + 1]] for i in range(len(calibration)))

        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = dataset
        self.debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=dataset,
            debug_options=self._options(fully_quantize=self.fully_quantize))

    @property
    def calibrated_model(self) -> bytes:
        """The float model with its calibration statistics: its op output names are the deny-list's node names."""
        return bytes(self.debugger.calibrated_model)

    def convert(self, nodes: Sequence[str] = (), ops: Sequence[str] = ()) -> bytes:
        """The full-integer model with the ops writing ``nodes`` and every op of a type in ``ops`` in float.

        Raises:
            ValueError: the deny-list leaves nothing quantized (the debugger then refuses the model).
        """
        self.debugger.options = self._options(denylisted_nodes=list(nodes) or None, denylisted_ops=list(ops) or None,
                                              fully_quantize=self.fully_quantize)
        return bytes(self.debugger.get_nondebug_quantized_model())


def build_metadata(name: str, variant: str, channels: int, size: int, mean: list[float], std: list[float]) -> bytes:
    """Build a ModelMetadata flatbuffer (file identifier ``M001``) carrying the normalization."""
    import flatbuffers

    b = flatbuffers.Builder(1024)

    def floats(values: list[float]) -> int:
        b.StartVector(4, len(values), 4)
        for v in reversed(values):
            b.PrependFloat32(float(v))
        return b.EndVector()

    def offsets(items: list[int]) -> int:
        b.StartVector(4, len(items), 4)
        for item in reversed(items):
            b.PrependUOffsetTRelative(item)
        return b.EndVector()

    def table(fields: dict[str, int], values: dict[str, tuple[str, object]]) -> int:
        """Write a table; values map field name -> (kind, value), kind one of off/u8/u32."""
        b.StartObject(max(fields.values()) + 1)
        for field, (kind, value) in values.items():
            slot = fields[field]
            if kind == "off":
                b.PrependUOffsetTRelativeSlot(slot, value, 0)
            elif kind == "u8":
                b.PrependUint8Slot(slot, value, 0)
            elif kind == "u32":
                b.PrependUint32Slot(slot, value, 0)
            else:
                raise ValueError(kind)
        return b.EndObject()

    # Children first: flatbuffers builds bottom-up.
    norm = table(_NORMALIZATION_OPTIONS, {"mean": ("off", floats(mean)), "std": ("off", floats(std))})
    unit = table(_PROCESS_UNIT, {"options_type": ("u8", _PROCESS_UNIT_NORMALIZATION), "options": ("off", norm)})
    image_size = table(_IMAGE_SIZE, {"width": ("u32", size), "height": ("u32", size)})
    color = _COLOR_SPACE_RGB if channels == 3 else _COLOR_SPACE_GRAYSCALE
    image_props = table(_IMAGE_PROPERTIES, {"color_space": ("u8", color), "default_size": ("off", image_size)})
    in_content = table(_CONTENT, {"content_properties_type": ("u8", _CONTENT_IMAGE_PROPERTIES),
                                  "content_properties": ("off", image_props)})
    in_name, in_desc = b.CreateString("image"), b.CreateString(
        f"{size}x{size}x{channels} uint8 image normalized as (pixel - mean) / std per channel")
    in_tensor = table(_TENSOR_METADATA, {"name": ("off", in_name), "description": ("off", in_desc),
                                         "content": ("off", in_content), "process_units": ("off", offsets([unit]))})
    b.StartObject(0)  # FeatureProperties is an empty table
    feature = b.EndObject()
    out_content = table(_CONTENT, {"content_properties_type": ("u8", _CONTENT_FEATURE_PROPERTIES),
                                   "content_properties": ("off", feature)})
    out_name, out_desc = b.CreateString("probabilities"), b.CreateString("softmax over the digits 0..9")
    out_tensor = table(_TENSOR_METADATA, {"name": ("off", out_name), "description": ("off", out_desc),
                                          "content": ("off", out_content)})
    subgraph = table(_SUBGRAPH_METADATA, {"name": ("off", b.CreateString(name)),
                                          "input_tensor_metadata": ("off", offsets([in_tensor])),
                                          "output_tensor_metadata": ("off", offsets([out_tensor]))})
    strings = {
        "name": f"{name}-{variant}",
        "description": f"dflare-edge fixture: scikit-learn digits classifier ({variant} TFLite)",
        "version": "1",
        "author": "dflare-edge scripts/make_fixtures.py",
        "license": "Apache-2.0",
        "min_parser_version": METADATA_MIN_PARSER_VERSION,
    }
    string_offsets = {k: ("off", b.CreateString(v)) for k, v in strings.items()}
    root = table(_MODEL_METADATA, {**string_offsets, "subgraph_metadata": ("off", offsets([subgraph]))})
    b.Finish(root, file_identifier=METADATA_FILE_IDENTIFIER)
    return bytes(b.Output())


def embed_metadata(tflite: bytes, metadata: bytes) -> bytes:
    """Add (or replace) the ``TFLITE_METADATA`` entry and its buffer, re-packing the model."""
    import flatbuffers
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(tflite), 0)
    model.metadata = [m for m in (model.metadata or []) if m.name.decode() != METADATA_NAME]
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(metadata, np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata.append(entry)
    builder = flatbuffers.Builder(len(tflite) + len(metadata) + 1024)
    _pack_buffers_aligned(schema, model, builder)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def extract_metadata(tflite: bytes) -> bytes | None:
    """The ``TFLITE_METADATA`` entry's ModelMetadata bytes, or ``None`` when the model has none."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(tflite), 0)
    for entry in model.metadata or []:
        if entry.name.decode() == METADATA_NAME:
            data = model.buffers[entry.buffer].data
            return None if data is None else np.asarray(data, np.uint8).tobytes()
    return None


def _pack_buffers_aligned(schema: Any, model: Any, builder: Any) -> None:
    """Make every BufferT pack its data 16-byte aligned, as schema.fbs's ``force_align`` asks.

    The generated Python ``BufferT.Pack`` ignores ``force_align``; kernels that read weights in
    place may then see unaligned data. Pre-building each data vector here keeps the alignment.
    """

    class AlignedBufferT(schema.BufferT):
        def Pack(self, b: Any) -> int:  # noqa: N802 - flatbuffers' naming
            data = None
            if self.data is not None and len(self.data):
                raw = np.asarray(self.data, np.uint8).tobytes()
                b.StartVector(1, len(raw), _BUFFER_ALIGNMENT_BYTES)
                b.head -= len(raw)
                b.Bytes[b.head : b.head + len(raw)] = raw
                data = b.EndVector()
            schema.BufferStart(b)
            if data is not None:
                schema.BufferAddData(b, data)
            if self.offset:
                schema.BufferAddOffset(b, self.offset)
            if self.size:
                schema.BufferAddSize(b, self.size)
            return schema.BufferEnd(b)

    for buffer in model.buffers:
        buffer.__class__ = AlignedBufferT
