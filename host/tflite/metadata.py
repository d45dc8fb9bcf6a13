"""Read a model's input normalization from its TFLite metadata (or a sidecar JSON file).

Standard TFLite metadata (tflite-support's ``metadata_schema.fbs``) lives in the model
flatbuffer as a ``Model.metadata`` entry named ``TFLITE_METADATA`` whose buffer holds a
``ModelMetadata`` flatbuffer (file identifier ``M001``). The normalization is at::

    ModelMetadata.subgraph_metadata[0].input_tensor_metadata[0].process_units[i]
        .options (union type NormalizationOptions) -> mean[], std[]

Rather than carry generated code for two schemas, this module reads the few fields it needs
with a small bounds-checked table reader (:class:`_Table`). Field ids below are the
declaration order of each table in the schema files (a vtable slot is ``4 + 2 * id``).

Policy: bytes that are not a TFLite model, or whose model tables cannot be read, have no
readable metadata (the runtime rejects such models with its own message when they load); a
``TFLITE_METADATA`` entry that is present but malformed is a :class:`~host.errors.ModelError`.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from device_agent.runtime import TFLITE_FILE_IDENTIFIER, Preprocessing
from host.errors import ModelError

#: Name of the Model.metadata entry that holds the ModelMetadata flatbuffer (tflite-support).
METADATA_NAME = "TFLITE_METADATA"
#: File identifier of a ModelMetadata flatbuffer (metadata_schema.fbs ``file_identifier``).
METADATA_FILE_IDENTIFIER = b"M001"
#: Suffix added to a model's file name for a sidecar normalization file (``model.tflite.json``).
SIDECAR_SUFFIX = ".json"

# tensorflow/lite/schema/schema.fbs
_MODEL_BUFFERS, _MODEL_METADATA = 4, 6
_BUFFER_DATA, _BUFFER_OFFSET, _BUFFER_SIZE = 0, 1, 2
_METADATA_NAME, _METADATA_BUFFER = 0, 1
# tensorflow_lite_support/metadata/metadata_schema.fbs
_MM_NAME, _MM_DESCRIPTION, _MM_VERSION, _MM_SUBGRAPHS = 0, 1, 2, 3
_MM_AUTHOR, _MM_LICENSE, _MM_MIN_PARSER_VERSION = 4, 5, 7
_SUBGRAPH_INPUTS = 2
_TENSOR_PROCESS_UNITS = 4
_UNIT_OPTIONS_TYPE, _UNIT_OPTIONS = 0, 1
_OPTIONS_NORMALIZATION = 1  # union ProcessUnitOptions { NormalizationOptions = 1, ... }
_NORM_MEAN, _NORM_STD = 0, 1


class _Malformed(Exception):
    """A flatbuffer offset or length points outside the buffer."""


class _Table:
    """One flatbuffers table: ``buf[pos]`` holds a signed offset back to its vtable.

    Every read is bounds-checked, so a corrupt buffer raises :class:`_Malformed` instead of
    returning garbage or an IndexError from deep inside struct.
    """

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf = buf
        self.pos = pos
        vtable = pos - self._read("<i", pos)
        self.vtable = vtable
        self.vtable_bytes = self._read("<H", vtable)

    def _read(self, fmt: str, at: int) -> int:
        size = struct.calcsize(fmt)
        if at < 0 or at + size > len(self.buf):
            raise _Malformed(f"offset {at} outside the {len(self.buf)}-byte buffer")
        return struct.unpack_from(fmt, self.buf, at)[0]

    def _field(self, field_id: int) -> int | None:
        """Absolute position of a field's value, or None when the field is absent."""
        slot = 4 + 2 * field_id
        if slot + 2 > self.vtable_bytes:
            return None
        offset = self._read("<H", self.vtable + slot)
        return self.pos + offset if offset else None

    def scalar(self, field_id: int, fmt: str, default: int = 0) -> int:
        at = self._field(field_id)
        return default if at is None else self._read(fmt, at)

    def _indirect(self, field_id: int) -> int | None:
        at = self._field(field_id)
        return None if at is None else at + self._read("<I", at)

    def table(self, field_id: int) -> _Table | None:
        at = self._indirect(field_id)
        return None if at is None else _Table(self.buf, at)

    def _vector(self, field_id: int, elem_bytes: int) -> tuple[int, int] | None:
        """(start, length) of a vector field, checked to fit in the buffer."""
        at = self._indirect(field_id)
        if at is None:
            return None
        length = self._read("<I", at)
        start = at + 4
        if start + length * elem_bytes > len(self.buf):
            raise _Malformed(f"vector of {length} elements at {start} runs past the buffer end")
        return start, length

    def bytes_(self, field_id: int) -> bytes | None:
        vec = self._vector(field_id, 1)
        return None if vec is None else bytes(self.buf[vec[0] : vec[0] + vec[1]])

    def string(self, field_id: int) -> str | None:
        raw = self.bytes_(field_id)
        if raw is None:
            return None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Malformed(f"string is not UTF-8: {exc}") from None

    def floats(self, field_id: int) -> tuple[float, ...]:
        vec = self._vector(field_id, 4)
        if vec is None:
            return ()
        return struct.unpack_from(f"<{vec[1]}f", self.buf, vec[0])

    def tables(self, field_id: int) -> list[_Table]:
        vec = self._vector(field_id, 4)
        if vec is None:
            return []
        start, length = vec
        return [_Table(self.buf, start + 4 * i + self._read("<I", start + 4 * i)) for i in range(length)]


def _root(buf: bytes) -> _Table:
    if len(buf) < 8:
        raise _Malformed(f"{len(buf)} bytes is too short for a flatbuffer")
    return _Table(buf, struct.unpack_from("<I", buf, 0)[0])


def _metadata_buffer(content: bytes) -> bytes | None:
    """The bytes of the model's TFLITE_METADATA buffer, or None when there is no such entry.

    Raises:
        ModelError: the entry exists but its buffer index or bytes are out of range.
    """
    if len(content) < 8 or content[4:8] != TFLITE_FILE_IDENTIFIER:
        return None
    try:
        model = _root(content)
        entries = [(e.string(_METADATA_NAME), e.scalar(_METADATA_BUFFER, "<I")) for e in model.tables(_MODEL_METADATA)]
        index = next((i for name, i in entries if name == METADATA_NAME), None)
        if index is None:
            return None
        buffers = model.tables(_MODEL_BUFFERS)
    except _Malformed:
        return None  # the model itself is broken: loading it reports that
    try:
        if index >= len(buffers):
            raise _Malformed(f"it names buffer {index} but the model has {len(buffers)} buffers")
        buffer = buffers[index]
        data = buffer.bytes_(_BUFFER_DATA)
        if not data:  # large models keep buffer bytes after the flatbuffer, addressed by offset/size
            offset, size = buffer.scalar(_BUFFER_OFFSET, "<Q"), buffer.scalar(_BUFFER_SIZE, "<Q")
            if offset <= 1 or offset + size > len(content):
                raise _Malformed(f"its buffer is empty or out of range (offset {offset}, size {size})")
            data = content[offset : offset + size]
    except _Malformed as exc:
        raise ModelError(f"the model's {METADATA_NAME} entry is malformed: {exc}; "
                         "re-export the model or rewrite its metadata") from None
    return data


def _parse_metadata(data: bytes) -> dict:
    """Decode a ModelMetadata flatbuffer into the fields reports use."""
    if len(data) < 8 or data[4:8] != METADATA_FILE_IDENTIFIER:
        raise _Malformed(f"buffer identifier is {data[4:8]!r}, expected {METADATA_FILE_IDENTIFIER!r}")
    root = _root(data)
    normalization = None
    subgraphs = root.tables(_MM_SUBGRAPHS)
    inputs = subgraphs[0].tables(_SUBGRAPH_INPUTS) if subgraphs else []
    for unit in inputs[0].tables(_TENSOR_PROCESS_UNITS) if inputs else []:
        if unit.scalar(_UNIT_OPTIONS_TYPE, "<B") == _OPTIONS_NORMALIZATION:
            options = unit.table(_UNIT_OPTIONS)
            if options is None:
                raise _Malformed("a NormalizationOptions process unit has no options table")
            normalization = {"mean": list(options.floats(_NORM_MEAN)), "std": list(options.floats(_NORM_STD))}
            break
    return {
        "name": root.string(_MM_NAME),
        "description": root.string(_MM_DESCRIPTION),
        "version": root.string(_MM_VERSION),
        "author": root.string(_MM_AUTHOR),
        "license": root.string(_MM_LICENSE),
        "min_parser_version": root.string(_MM_MIN_PARSER_VERSION),
        "normalization": normalization,
    }


_EMPTY = {"name": None, "description": None, "version": None, "author": None, "license": None,
          "min_parser_version": None, "normalization": None}


def read_model_metadata(content: bytes) -> dict:
    """Return a model's TFLite metadata fields for reports.

    Args:
        content: the .tflite file's bytes.

    Returns:
        ``{"name", "description", "version", "author", "license", "min_parser_version",
        "normalization"}``; ``normalization`` is ``{"mean": [...], "std": [...]}`` or None.
        Every value is None when the model carries no metadata.

    Raises:
        ModelError: the model has a TFLITE_METADATA entry that cannot be decoded.
    """
    data = _metadata_buffer(content)
    if data is None:
        return dict(_EMPTY)
    try:
        return _parse_metadata(data)
    except _Malformed as exc:
        raise ModelError(f"the model's {METADATA_NAME} metadata is malformed: {exc}; "
                         "re-export the model or rewrite its metadata") from None


def _to_preprocessing(values: dict, source: str) -> Preprocessing:
    try:
        mean = tuple(float(v) for v in values["mean"])
        std = tuple(float(v) for v in values["std"])
        return Preprocessing(mean, std)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{source}: normalization needs non-empty numeric 'mean' and non-zero 'std' "
                         f"lists ({exc})") from None


def preprocessing_for(path: Path | None, content: bytes) -> Preprocessing | None:
    """Find a model's input normalization: embedded metadata, else a sidecar, else None.

    Args:
        path: the model file (used to find the sidecar ``<path>.json``); None for bytes only.
        content: the model's bytes.

    Returns:
        The normalization from the model's TFLite metadata (NormalizationOptions on input 0),
        else from a sidecar JSON ``{"mean": [...], "std": [...]}`` next to the model, else None.

    Raises:
        ModelError: the embedded metadata or the sidecar file is malformed.
    """
    normalization = read_model_metadata(content)["normalization"]
    if normalization is not None:
        return _to_preprocessing(normalization, f"{path or 'model'} ({METADATA_NAME} NormalizationOptions)")
    if path is None:
        return None
    sidecar = Path(path).with_name(Path(path).name + SIDECAR_SUFFIX)
    if not sidecar.is_file():
        return None
    try:
        values = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read the normalization sidecar {sidecar}: {exc}") from None
    if not isinstance(values, dict):
        raise ModelError(f"{sidecar}: expected a JSON object like {{\"mean\": [127.5], \"std\": [127.5]}}")
    return _to_preprocessing(values, str(sidecar))
