"""The protocol's DataType enum and numpy dtype names, both ways: one table for the agent and the host."""

from __future__ import annotations

from device_agent._gen import agent_pb2

#: agent.proto ``DataType`` value -> numpy dtype name.
DTYPE_BY_ENUM: dict[int, str] = {
    agent_pb2.DATA_TYPE_UINT8: "uint8",
    agent_pb2.DATA_TYPE_INT8: "int8",
    agent_pb2.DATA_TYPE_INT16: "int16",
    agent_pb2.DATA_TYPE_INT32: "int32",
    agent_pb2.DATA_TYPE_INT64: "int64",
    agent_pb2.DATA_TYPE_FLOAT16: "float16",
    agent_pb2.DATA_TYPE_FLOAT32: "float32",
    agent_pb2.DATA_TYPE_FLOAT64: "float64",
}
#: numpy dtype name -> agent.proto ``DataType`` value.
ENUM_BY_DTYPE: dict[str, int] = {name: value for value, name in DTYPE_BY_ENUM.items()}
