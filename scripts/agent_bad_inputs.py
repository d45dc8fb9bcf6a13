#!/usr/bin/env python3
"""What the agent answers to each kind of bad input: a table of (call, kind, status, message).

Starts a real agent on loopback (token on, small message and batch caps), sends it every kind of
malformed or hostile request listed in :data:`CASES` over raw gRPC stubs, and records the status
code and message of each. Then it checks that the agent is still alive and serves the same outputs
as before, and counts the log lines that undecodable messages cost.

    python scripts/agent_bad_inputs.py                          # print the table
    python scripts/agent_bad_inputs.py --write docs/agent-errors.md
    python scripts/agent_bad_inputs.py --json                   # one JSON list of rows
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from device_agent._gen import agent_pb2, agent_pb2_grpc  # noqa: E402
from host.deploy.loopback import start_agent  # noqa: E402

MODEL = ROOT / "tests" / "fixtures" / "models" / "digits28-int8.tflite"
#: Small caps, so the size limits are reached with small requests.
MAX_MESSAGE_BYTES = 1 << 20
MAX_BATCH_BYTES = 256 << 10
RPC_TIMEOUT_S = 60.0
#: Undecodable messages sent to count the log lines they cost (the issue saw 5 per message).
FUZZ_MESSAGES = 200
IMAGE_BYTES = 28 * 28


@dataclass
class Probe:
    """A connected agent: a stub, the auth metadata, a stored model and a loaded session."""

    channel: grpc.Channel
    stub: agent_pb2_grpc.AgentStub
    auth: tuple
    sha256: str
    session_id: str


@dataclass(frozen=True)
class Case:
    """One bad request: the call, what is wrong with it, and how to send it."""

    call: str
    kind: str
    send: Callable[[Probe], object]


def _put(probe: Probe, data: bytes, sha256: str | None = None, total: int | None = None, chunks=None):
    sha256 = hashlib.sha256(data).hexdigest() if sha256 is None else sha256
    total = len(data) if total is None else total
    messages = chunks if chunks is not None else (
        [agent_pb2.PutModelChunk(sha256=sha256, total_bytes=total, data=data[:4096])]
        + [agent_pb2.PutModelChunk(data=data[i:i + 4096]) for i in range(4096, len(data), 4096)])
    return probe.stub.PutModel(iter(messages), metadata=probe.auth, timeout=RPC_TIMEOUT_S)


def _load(probe: Probe, **fields):
    fields.setdefault("sha256", probe.sha256)
    return probe.stub.LoadModel(agent_pb2.LoadModelRequest(**fields), metadata=probe.auth, timeout=RPC_TIMEOUT_S)


def _infer(probe: Probe, data: bytes = bytes(IMAGE_BYTES), shape=(1, 28, 28, 1), dtype=agent_pb2.DATA_TYPE_UINT8,
           session_id: str | None = None):
    request = agent_pb2.InferRequest(session_id=probe.session_id if session_id is None else session_id,
                                     input=agent_pb2.Tensor(shape=shape, dtype=dtype, data=data))
    return probe.stub.Infer(request, metadata=probe.auth, timeout=RPC_TIMEOUT_S)


def _tensors(probe: Probe, data: bytes = bytes(IMAGE_BYTES), shape=(1, 28, 28, 1), dtype=agent_pb2.DATA_TYPE_UINT8,
             session_id: str | None = None, **fields):
    request = agent_pb2.GetTensorsRequest(session_id=probe.session_id if session_id is None else session_id,
                                          input=agent_pb2.Tensor(shape=shape, dtype=dtype, data=data), **fields)
    return probe.stub.GetTensors(request, metadata=probe.auth, timeout=RPC_TIMEOUT_S)


def _stream(probe: Probe, requests: list) -> None:
    for _ in probe.stub.InferStream(iter(requests), metadata=probe.auth, timeout=RPC_TIMEOUT_S):
        pass


def _raw(probe: Probe, method: str, payload: bytes, streaming: bool) -> None:
    path = f"/dflare.agent.v1.Agent/{method}"
    if streaming:
        for _ in probe.channel.stream_stream(path)(iter([payload]), metadata=probe.auth, timeout=RPC_TIMEOUT_S):
            pass
    else:
        probe.channel.unary_unary(path)(payload, metadata=probe.auth, timeout=RPC_TIMEOUT_S)


def _model() -> bytes:
    return MODEL.read_bytes()


def _fresh_model() -> bytes:
    """Bytes with a TFLite header the agent does not hold yet (so an upload is not answered from the cache)."""
    return b"\x1c\x00\x00\x00TFL3" + np.random.default_rng(1).bytes(8192)


def _corrupt_model() -> bytes:
    data = bytearray(_model())
    data[len(data) // 2:] = bytes(len(data) - len(data) // 2)  # valid header, zeroed body
    return bytes(data)


CASES: tuple[Case, ...] = (
    Case("any", "no token", lambda p: p.stub.GetDeviceInfo(agent_pb2.GetDeviceInfoRequest(), timeout=RPC_TIMEOUT_S)),
    Case("any", "wrong token", lambda p: p.stub.GetDeviceInfo(
        agent_pb2.GetDeviceInfoRequest(), metadata=(("authorization", "Bearer wrong"),), timeout=RPC_TIMEOUT_S)),
    Case("PutModel", "no chunks", lambda p: _put(p, b"", chunks=[])),
    Case("PutModel", "no total_bytes", lambda p: _put(p, _fresh_model(), total=0)),
    Case("PutModel", "truncated upload", lambda p: _put(p, _fresh_model()[:5000],
                                                        sha256=hashlib.sha256(_fresh_model()).hexdigest(),
                                                        total=len(_fresh_model()))),
    Case("PutModel", "more bytes than announced", lambda p: _put(p, _fresh_model(), total=100)),
    Case("PutModel", "sha256 mismatch", lambda p: _put(p, _model(), sha256="0" * 64)),
    Case("PutModel", "not a TFLite file", lambda p: _put(p, b"\x00" * 4096)),
    Case("PutModel", "malformed sha256", lambda p: _put(p, _model(), sha256="ABC")),
    Case("PutModel", "100 KB sha256", lambda p: _put(p, _model(), sha256="a" * 100_000)),
    Case("LoadModel", "unknown digest", lambda p: _load(p, sha256="0" * 64)),
    Case("LoadModel", "corrupt model with a TFLite header", lambda p: (_put(p, _corrupt_model()), _load(
        p, sha256=hashlib.sha256(_corrupt_model()).hexdigest()))),
    Case("LoadModel", "unknown delegate", lambda p: _load(p, delegate="tpu")),
    Case("LoadModel", "delegate not on this device", lambda p: _load(p, delegate="gpu")),
    Case("LoadModel", "external delegate not allowed", lambda p: _load(p, delegate="external:/nonexistent/lib.so")),
    Case("LoadModel", "reserved delegate option", lambda p: _load(p, delegate_options={"dflare.x": "1"})),
    Case("LoadModel", "fault injection without the test switch",
         lambda p: _load(p, delegate_options={"dflare.fault": "abort_on_infer"})),
    Case("LoadModel", "threads = -1", lambda p: _load(p, threads=-1)),
    Case("LoadModel", "threads = 1000000", lambda p: _load(p, threads=1_000_000)),
    Case("LoadModel", "mean NaN", lambda p: _load(p, preprocessing=agent_pb2.Preprocessing(mean=[float("nan")]))),
    Case("LoadModel", "std 0", lambda p: _load(p, preprocessing=agent_pb2.Preprocessing(std=[0.0]))),
    Case("LoadModel", "std infinite", lambda p: _load(p, preprocessing=agent_pb2.Preprocessing(std=[float("inf")]))),
    Case("LoadModel", "3 mean values for 1 channel",
         lambda p: _load(p, preprocessing=agent_pb2.Preprocessing(mean=[1.0, 2.0, 3.0]))),
    Case("LoadModel", "100 KB name", lambda p: _load(p, name="n" * 100_000)),
    Case("Infer", "unknown session", lambda p: _infer(p, session_id="no-such-session")),
    Case("Infer", "100 KB session id", lambda p: _infer(p, session_id="s" * 100_000)),
    Case("Infer", "dtype not in the enum", lambda p: _infer(p, dtype=99)),
    Case("Infer", "dtype unspecified", lambda p: _infer(p, dtype=0)),
    Case("Infer", "float32 for an int8 model", lambda p: _infer(p, data=bytes(4 * IMAGE_BYTES),
                                                                dtype=agent_pb2.DATA_TYPE_FLOAT32)),
    Case("Infer", "rank 3 shape", lambda p: _infer(p, shape=(28, 28, 1))),
    Case("Infer", "wrong image size", lambda p: _infer(p, data=bytes(32 * 32), shape=(1, 32, 32, 1))),
    Case("Infer", "empty batch", lambda p: _infer(p, data=b"", shape=(0, 28, 28, 1))),
    Case("Infer", "bytes do not match the shape", lambda p: _infer(p, data=bytes(IMAGE_BYTES - 1))),
    Case("Infer", "batch over --max-batch-bytes", lambda p: _infer(
        p, data=bytes(IMAGE_BYTES * 400), shape=(400, 28, 28, 1))),
    Case("Infer", "message over --max-message-bytes", lambda p: _infer(
        p, data=bytes(IMAGE_BYTES * 1400), shape=(1400, 28, 28, 1))),
    Case("Infer", "undecodable message", lambda p: _raw(p, "Infer", b"\xff\xff\xff\xff not a protobuf", False)),
    Case("InferStream", "bad first request", lambda p: _stream(p, [agent_pb2.InferRequest(session_id="x")])),
    Case("InferStream", "undecodable first message",
         lambda p: _raw(p, "InferStream", b"\xff\xff\xff\xff not a protobuf", True)),
    Case("GetTensors", "unknown session", lambda p: _tensors(p, session_id="no-such-session")),
    Case("GetTensors", "two images", lambda p: _tensors(p, data=bytes(2 * IMAGE_BYTES), shape=(2, 28, 28, 1))),
    Case("GetTensors", "dtype unspecified", lambda p: _tensors(p, dtype=0)),
    Case("GetTensors", "unknown tensor name", lambda p: _tensors(p, tensor_names=["no/such/layer"])),
    Case("GetTensors", "unknown tensor index", lambda p: _tensors(p, tensor_indices=[10_000])),
    Case("GetTensors", "100 KB tensor name", lambda p: _tensors(p, tensor_names=["t" * 100_000])),
    Case("GetTensors", "tensors over max_bytes", lambda p: _tensors(p, max_bytes=100)),
    Case("UnloadModel", "unknown session", lambda p: p.stub.UnloadModel(
        agent_pb2.UnloadModelRequest(session_id="no-such-session"), metadata=p.auth, timeout=RPC_TIMEOUT_S)),
)


def run_case(probe: Probe, case: Case) -> dict:
    """Send one case; its row: call, kind, status name and message ("OK" if it was accepted)."""
    try:
        case.send(probe)
    except grpc.RpcError as error:
        return {"call": case.call, "kind": case.kind, "status": error.code().name, "message": error.details() or ""}
    return {"call": case.call, "kind": case.kind, "status": "OK", "message": ""}


def _outputs(probe: Probe) -> bytes:
    images = np.random.default_rng(0).integers(0, 256, (8, 28, 28, 1), dtype=np.uint8)
    return _infer(probe, data=images.tobytes(), shape=images.shape).outputs[0].data


def probe_agent(workdir: Path) -> tuple[list[dict], dict]:
    """Run every case against a fresh agent; return the rows and the checks made afterwards."""
    with start_agent(workdir, "--max-message-bytes", str(MAX_MESSAGE_BYTES), "--max-batch-bytes",
                     str(MAX_BATCH_BYTES), log_level="INFO") as agent:
        channel = grpc.insecure_channel(f"127.0.0.1:{agent.port}",
                                        options=[("grpc.max_send_message_length", 8 * MAX_MESSAGE_BYTES)])
        with channel:
            stub = agent_pb2_grpc.AgentStub(channel)
            auth = (("authorization", f"Bearer {agent.token}"),)
            sha256 = hashlib.sha256(_model()).hexdigest()
            probe = Probe(channel, stub, auth, sha256, "")
            _put(probe, _model())
            probe.session_id = _load(probe, name="m").session_id
            before = _outputs(probe)
            rows = [run_case(probe, case) for case in CASES]
            log_lines_before = len(agent.log().splitlines())
            for _ in range(FUZZ_MESSAGES):
                with contextlib.suppress(grpc.RpcError):
                    _raw(probe, "Infer", b"\xff\xff\xff\xff not a protobuf", False)
            log_lines = len(agent.log().splitlines()) - log_lines_before
            checks = {
                "alive": agent.alive(),
                "same_outputs_after": _outputs(probe) == before,
                "undecodable_messages": FUZZ_MESSAGES,
                "log_lines_for_them": log_lines,
                "tracebacks_in_log": agent.log().count("Traceback"),
            }
    return rows, checks


def markdown(rows: list[dict], checks: dict) -> str:
    """The table and checks as the Markdown page docs/agent-errors.md."""
    lines = [
        "# What the agent answers to bad input",
        "",
        "Written by `python scripts/agent_bad_inputs.py --write docs/agent-errors.md`; do not edit by hand.",
        "The script starts a real agent on loopback (token on, `--max-message-bytes 1M`,",
        "`--max-batch-bytes 256K`), sends each request below over raw gRPC, and records the status code and",
        "message. [protocol.md](protocol.md) explains the codes.",
        "",
        "| Call | Bad input | Status | Message |",
        "|---|---|---|---|",
    ]
    for row in rows:
        message = row["message"].replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {row['call']} | {row['kind']} | `{row['status']}` | {message} |")
    lines += [
        "",
        f"Afterwards the agent was alive ({checks['alive']}) and returned the same outputs as before "
        f"({checks['same_outputs_after']}). {checks['undecodable_messages']} more undecodable messages cost "
        f"{checks['log_lines_for_them']} log lines, and the log holds {checks['tracebacks_in_log']} tracebacks.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="write the Markdown page here instead of printing it")
    parser.add_argument("--json", action="store_true", help="print the rows and checks as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dflare-bad-inputs-") as tmp:
        rows, checks = probe_agent(Path(tmp))
    if args.json:
        print(json.dumps({"rows": rows, "checks": checks}, indent=1))
    elif args.write:
        args.write.write_text(markdown(rows, checks))
        print(f"wrote {args.write} ({len(rows)} kinds)")
    else:
        print(markdown(rows, checks))
    ok = checks["alive"] and checks["same_outputs_after"] and all(r["status"] != "OK" for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
