from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProtocolVersion(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROTOCOL_VERSION_UNSPECIFIED: _ClassVar[ProtocolVersion]
    PROTOCOL_VERSION_MAJOR: _ClassVar[ProtocolVersion]
    PROTOCOL_VERSION_MINOR: _ClassVar[ProtocolVersion]

class DataType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA_TYPE_UNSPECIFIED: _ClassVar[DataType]
    DATA_TYPE_UINT8: _ClassVar[DataType]
    DATA_TYPE_INT8: _ClassVar[DataType]
    DATA_TYPE_INT16: _ClassVar[DataType]
    DATA_TYPE_INT32: _ClassVar[DataType]
    DATA_TYPE_INT64: _ClassVar[DataType]
    DATA_TYPE_FLOAT16: _ClassVar[DataType]
    DATA_TYPE_FLOAT32: _ClassVar[DataType]
    DATA_TYPE_FLOAT64: _ClassVar[DataType]
PROTOCOL_VERSION_UNSPECIFIED: ProtocolVersion
PROTOCOL_VERSION_MAJOR: ProtocolVersion
PROTOCOL_VERSION_MINOR: ProtocolVersion
DATA_TYPE_UNSPECIFIED: DataType
DATA_TYPE_UINT8: DataType
DATA_TYPE_INT8: DataType
DATA_TYPE_INT16: DataType
DATA_TYPE_INT32: DataType
DATA_TYPE_INT64: DataType
DATA_TYPE_FLOAT16: DataType
DATA_TYPE_FLOAT32: DataType
DATA_TYPE_FLOAT64: DataType

class Tensor(_message.Message):
    __slots__ = ("shape", "dtype", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DataType
    data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DataType, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class TensorSpec(_message.Message):
    __slots__ = ("name", "shape", "dtype", "scale", "zero_point")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    ZERO_POINT_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DataType
    scale: float
    zero_point: int
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DataType, str]] = ..., scale: _Optional[float] = ..., zero_point: _Optional[int] = ...) -> None: ...

class Preprocessing(_message.Message):
    __slots__ = ("mean", "std")
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    mean: _containers.RepeatedScalarFieldContainer[float]
    std: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, mean: _Optional[_Iterable[float]] = ..., std: _Optional[_Iterable[float]] = ...) -> None: ...

class GetDeviceInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeviceInfo(_message.Message):
    __slots__ = ("protocol_major", "protocol_minor", "agent_version", "runtime", "runtime_version", "delegates", "machine", "abis", "system", "release", "cpu_count", "memory_total_bytes", "memory_available_bytes", "python_version", "hostname", "properties", "max_message_bytes", "max_batch_bytes", "cache_capacity_bytes", "cache_used_bytes", "sessions", "max_sessions", "max_batches_per_call")
    class PropertiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PROTOCOL_MAJOR_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_MINOR_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_VERSION_FIELD_NUMBER: _ClassVar[int]
    DELEGATES_FIELD_NUMBER: _ClassVar[int]
    MACHINE_FIELD_NUMBER: _ClassVar[int]
    ABIS_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    CPU_COUNT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_AVAILABLE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PYTHON_VERSION_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_BYTES_FIELD_NUMBER: _ClassVar[int]
    CACHE_CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    CACHE_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCHES_PER_CALL_FIELD_NUMBER: _ClassVar[int]
    protocol_major: int
    protocol_minor: int
    agent_version: str
    runtime: str
    runtime_version: str
    delegates: _containers.RepeatedScalarFieldContainer[str]
    machine: str
    abis: _containers.RepeatedScalarFieldContainer[str]
    system: str
    release: str
    cpu_count: int
    memory_total_bytes: int
    memory_available_bytes: int
    python_version: str
    hostname: str
    properties: _containers.ScalarMap[str, str]
    max_message_bytes: int
    max_batch_bytes: int
    cache_capacity_bytes: int
    cache_used_bytes: int
    sessions: int
    max_sessions: int
    max_batches_per_call: int
    def __init__(self, protocol_major: _Optional[int] = ..., protocol_minor: _Optional[int] = ..., agent_version: _Optional[str] = ..., runtime: _Optional[str] = ..., runtime_version: _Optional[str] = ..., delegates: _Optional[_Iterable[str]] = ..., machine: _Optional[str] = ..., abis: _Optional[_Iterable[str]] = ..., system: _Optional[str] = ..., release: _Optional[str] = ..., cpu_count: _Optional[int] = ..., memory_total_bytes: _Optional[int] = ..., memory_available_bytes: _Optional[int] = ..., python_version: _Optional[str] = ..., hostname: _Optional[str] = ..., properties: _Optional[_Mapping[str, str]] = ..., max_message_bytes: _Optional[int] = ..., max_batch_bytes: _Optional[int] = ..., cache_capacity_bytes: _Optional[int] = ..., cache_used_bytes: _Optional[int] = ..., sessions: _Optional[int] = ..., max_sessions: _Optional[int] = ..., max_batches_per_call: _Optional[int] = ...) -> None: ...

class PutModelChunk(_message.Message):
    __slots__ = ("sha256", "total_bytes", "data")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    total_bytes: int
    data: bytes
    def __init__(self, sha256: _Optional[str] = ..., total_bytes: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class PutModelResponse(_message.Message):
    __slots__ = ("sha256", "size_bytes", "already_present")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ALREADY_PRESENT_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    size_bytes: int
    already_present: bool
    def __init__(self, sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., already_present: _Optional[bool] = ...) -> None: ...

class LoadModelRequest(_message.Message):
    __slots__ = ("sha256", "delegate", "delegate_options", "threads", "preprocessing", "name")
    class DelegateOptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SHA256_FIELD_NUMBER: _ClassVar[int]
    DELEGATE_FIELD_NUMBER: _ClassVar[int]
    DELEGATE_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSING_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    delegate: str
    delegate_options: _containers.ScalarMap[str, str]
    threads: int
    preprocessing: Preprocessing
    name: str
    def __init__(self, sha256: _Optional[str] = ..., delegate: _Optional[str] = ..., delegate_options: _Optional[_Mapping[str, str]] = ..., threads: _Optional[int] = ..., preprocessing: _Optional[_Union[Preprocessing, _Mapping]] = ..., name: _Optional[str] = ...) -> None: ...

class LoadModelResponse(_message.Message):
    __slots__ = ("session_id", "input", "outputs", "delegated_nodes", "cpu_ops", "delegate", "load_latency_us")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    DELEGATED_NODES_FIELD_NUMBER: _ClassVar[int]
    CPU_OPS_FIELD_NUMBER: _ClassVar[int]
    DELEGATE_FIELD_NUMBER: _ClassVar[int]
    LOAD_LATENCY_US_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    input: TensorSpec
    outputs: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    delegated_nodes: int
    cpu_ops: _containers.RepeatedScalarFieldContainer[str]
    delegate: str
    load_latency_us: int
    def __init__(self, session_id: _Optional[str] = ..., input: _Optional[_Union[TensorSpec, _Mapping]] = ..., outputs: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., delegated_nodes: _Optional[int] = ..., cpu_ops: _Optional[_Iterable[str]] = ..., delegate: _Optional[str] = ..., load_latency_us: _Optional[int] = ...) -> None: ...

class InferRequest(_message.Message):
    __slots__ = ("session_id", "input", "request_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    input: Tensor
    request_id: int
    def __init__(self, session_id: _Optional[str] = ..., input: _Optional[_Union[Tensor, _Mapping]] = ..., request_id: _Optional[int] = ...) -> None: ...

class InferResponse(_message.Message):
    __slots__ = ("request_id", "outputs", "invoke_latency_us", "run_latency_us", "server_latency_us")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    INVOKE_LATENCY_US_FIELD_NUMBER: _ClassVar[int]
    RUN_LATENCY_US_FIELD_NUMBER: _ClassVar[int]
    SERVER_LATENCY_US_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    outputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    invoke_latency_us: int
    run_latency_us: int
    server_latency_us: int
    def __init__(self, request_id: _Optional[int] = ..., outputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., invoke_latency_us: _Optional[int] = ..., run_latency_us: _Optional[int] = ..., server_latency_us: _Optional[int] = ...) -> None: ...

class InferBatchesRequest(_message.Message):
    __slots__ = ("session_id", "inputs")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    inputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    def __init__(self, session_id: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ...) -> None: ...

class InferBatchesResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[InferResponse]
    def __init__(self, results: _Optional[_Iterable[_Union[InferResponse, _Mapping]]] = ...) -> None: ...

class UnloadModelRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class UnloadModelResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetTensorsRequest(_message.Message):
    __slots__ = ("session_id", "input", "tensor_names", "tensor_indices", "max_bytes")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    TENSOR_NAMES_FIELD_NUMBER: _ClassVar[int]
    TENSOR_INDICES_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    input: Tensor
    tensor_names: _containers.RepeatedScalarFieldContainer[str]
    tensor_indices: _containers.RepeatedScalarFieldContainer[int]
    max_bytes: int
    def __init__(self, session_id: _Optional[str] = ..., input: _Optional[_Union[Tensor, _Mapping]] = ..., tensor_names: _Optional[_Iterable[str]] = ..., tensor_indices: _Optional[_Iterable[int]] = ..., max_bytes: _Optional[int] = ...) -> None: ...

class NamedTensor(_message.Message):
    __slots__ = ("name", "index", "tensor", "scales", "zero_points", "quantized_dimension")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    SCALES_FIELD_NUMBER: _ClassVar[int]
    ZERO_POINTS_FIELD_NUMBER: _ClassVar[int]
    QUANTIZED_DIMENSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    index: int
    tensor: Tensor
    scales: _containers.RepeatedScalarFieldContainer[float]
    zero_points: _containers.RepeatedScalarFieldContainer[int]
    quantized_dimension: int
    def __init__(self, name: _Optional[str] = ..., index: _Optional[int] = ..., tensor: _Optional[_Union[Tensor, _Mapping]] = ..., scales: _Optional[_Iterable[float]] = ..., zero_points: _Optional[_Iterable[int]] = ..., quantized_dimension: _Optional[int] = ...) -> None: ...

class GetTensorsResponse(_message.Message):
    __slots__ = ("tensors", "hidden", "hidden_indices", "note", "delegate", "outputs_identical", "invoke_latency_us")
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_INDICES_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    DELEGATE_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_IDENTICAL_FIELD_NUMBER: _ClassVar[int]
    INVOKE_LATENCY_US_FIELD_NUMBER: _ClassVar[int]
    tensors: _containers.RepeatedCompositeFieldContainer[NamedTensor]
    hidden: _containers.RepeatedScalarFieldContainer[str]
    hidden_indices: _containers.RepeatedScalarFieldContainer[int]
    note: str
    delegate: str
    outputs_identical: bool
    invoke_latency_us: int
    def __init__(self, tensors: _Optional[_Iterable[_Union[NamedTensor, _Mapping]]] = ..., hidden: _Optional[_Iterable[str]] = ..., hidden_indices: _Optional[_Iterable[int]] = ..., note: _Optional[str] = ..., delegate: _Optional[str] = ..., outputs_identical: _Optional[bool] = ..., invoke_latency_us: _Optional[int] = ...) -> None: ...
