"""RemoteTarget: a ``dflare-agent`` reached over gRPC (``grpc://HOST:PORT``).

Shaped like Triton's client: requests are checked (shape, dtype) before anything is sent, results
come back as numpy arrays, every call carries a deadline, ``UNAVAILABLE`` is retried with
exponential backoff, and every ``grpc.RpcError`` becomes a :mod:`host.errors` class ``from None``,
so search code never sees gRPC.

Timeouts, by scope (``connect_timeout_s <= rpc_timeout_s <= load_timeout_s``):
    connect_timeout_s  waiting for the agent to accept the connection (an absent agent fails fast).
    rpc_timeout_s      one GetDeviceInfo / Infer / UnloadModel call; InferStream gets this per batch.
    load_timeout_s     PutModel + LoadModel: moving a model and starting its worker process.

A model is uploaded only when the agent lacks its digest: ``load`` asks for the model by sha256
first and sends the bytes only on NOT_FOUND.
"""

# ruff: noqa: E402 - grpc_env.apply() must run before the first `import grpc` (see below)

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence
from urllib.parse import urlsplit

from device_agent import grpc_env

grpc_env.apply()  # before the first `import grpc`: fewer thread hops per call (see device_agent/grpc_env.py)

import grpc
import numpy as np

from device_agent._gen import agent_pb2, agent_pb2_grpc
from device_agent.runtime import TensorSpec
from device_agent.wire_dtypes import DTYPE_BY_ENUM, ENUM_BY_DTYPE
from host.errors import (
    AuthenticationError,
    ConfigError,
    DelegateUnavailableError,
    InvalidRequestError,
    ModelError,
    ProtocolError,
    TargetError,
    TargetUnreachableError,
    WorkerCrashedError,
)
from host.targets.base import DEFAULT_CONNECT_TIMEOUT_S, ModelSpec
from host.targets.options import resolve_token

log = logging.getLogger(__name__)

#: The protocol major this host speaks; an agent with another major is refused (see agent.proto).
PROTOCOL_MAJOR = agent_pb2.PROTOCOL_VERSION_MAJOR
PROTOCOL_MINOR = agent_pb2.PROTOCOL_VERSION_MINOR
#: Environment variable holding the agent token when neither token nor token_file is given.

#: One batch of 256 images on a slow delegate stays well under a minute.
DEFAULT_RPC_TIMEOUT_S = 60.0
#: Uploading a model over adb and starting a worker (importing the runtime) on a slow phone.
DEFAULT_LOAD_TIMEOUT_S = 180.0
#: UNAVAILABLE retries and the first backoff: 0.2 + 0.4 + 0.8 s rides out an agent restart.
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF_S = 0.2
#: Matches the agent's default message cap (device_agent.server.DEFAULT_MAX_MESSAGE_BYTES).
DEFAULT_MAX_MESSAGE_BYTES = 128 << 20
#: Upload chunk size: far below any message cap, big enough that per-chunk overhead is noise.
UPLOAD_CHUNK_BYTES = 1 << 20
#: Batches kept in flight by infer_many: matches the agent worker's shared-memory slots
#: (device_agent.worker.IN_FLIGHT_SLOTS); more would only queue on the agent.
DEFAULT_IN_FLIGHT = 4
#: When unloading at close, do not wait long for an agent that has gone away.
_CLOSE_TIMEOUT_S = 5.0
#: Longest wait for the TCP probe that tells a refused port (no agent: fail at once) from a slow one.
_PROBE_TIMEOUT_S = 2.0
#: One health probe RPC of a starting agent (the deploy's health stage polls it every fraction of a second).
HEALTH_RPC_TIMEOUT_S = 2.0
#: The token check (one GetDeviceInfo): its first answer probes the delegates, seconds on a slow device.
TOKEN_CHECK_RPC_TIMEOUT_S = 30.0
#: Metadata key carrying "Bearer <token>" (the agent's ``device_agent.server.AUTH_METADATA_KEY``).
AUTH_METADATA_KEY = "authorization"



#: URI schemes of an agent: plaintext, and TLS (``grpcs://``, as gRPC's own tools spell it).
SCHEMES = ("grpc", "grpcs")


def parse_uri(uri: str) -> tuple[str, int]:
    """Split ``grpc://HOST:PORT`` or ``grpcs://HOST:PORT`` (IPv6 as ``grpc://[::1]:PORT``).

    Raises:
        ConfigError: another scheme, or no port.
    """
    parts = urlsplit(uri)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in SCHEMES or not parts.hostname or port is None:
        raise ConfigError(f"bad agent URI {uri!r}: expected grpc://HOST:PORT (grpcs:// for TLS), e.g. "
                          "grpc://127.0.0.1:50051")
    return parts.hostname, port


#: The protocol minor that added GetTensors.
_GET_TENSORS_MINOR = 1
#: The protocol minor that added InferBatches (and DeviceInfo.max_batches_per_call).
_INFER_BATCHES_MINOR = 2
#: Of the message limit, what an InferBatches request leaves to its envelope (shapes, ids, the session).
_INFER_BATCHES_HEADROOM_BYTES = 64 << 10


@dataclass(frozen=True)
class Quantization:
    """How a tensor's raw values map to reals: ``(q - zero_point) * scale``, per channel along
    ``quantized_dimension`` when there are several scales; empty scales: not quantized."""

    scales: tuple[float, ...] = ()
    zero_points: tuple[int, ...] = ()
    quantized_dimension: int = 0


@dataclass(frozen=True)
class DeviceTensors:
    """One image's tensors as the agent's interpreter held them (``RemoteSession.tensors``).

    Attributes:
        by_index: interpreter tensor index -> (name, raw array, quantization), in the order returned.
        hidden: index -> name of the tensors asked for that the delegate keeps to itself.
        note: the agent's word on them ("" when nothing to say).
        delegate: the delegate that ran the image.
        outputs_identical: the outputs equal, bit for bit, those of the session's interpreter.
        invoke_ms: the agent's invoke() time.
    """

    by_index: dict[int, tuple[str, np.ndarray, Quantization]]
    hidden: dict[int, str]
    note: str
    delegate: str
    outputs_identical: bool
    invoke_ms: float

    @property
    def tensors(self) -> dict[str, tuple[np.ndarray, Quantization]]:
        """Name -> (raw array, quantization); a name several tensors share keeps the last one."""
        return {name: (array, q) for name, array, q in self.by_index.values()}


class RemoteSession:
    """A model loaded on the agent; ``infer`` returns float32 (N, classes) like a local session.

    Attributes:
        session_id: the agent's id for this session.
        delegated_nodes: delegate kernels in the execution plan (0 for cpu/ref).
        cpu_ops: ops the delegate left on the CPU kernels.
        last_invoke_ms: the agent's interpreter invoke() time for the last batch (benchmark_model's figure).
        last_run_ms: the agent worker's whole time for the last batch (preprocess, invoke, dequantize).
        last_server_ms: time the last batch spent inside the agent's servicer.
    """

    def __init__(self, target: RemoteTarget, model: ModelSpec, response: agent_pb2.LoadModelResponse) -> None:
        self.target = target
        self.model = model
        self.session_id = response.session_id
        self.input_spec = _spec(response.input)
        self.output_specs = [_spec(s) for s in response.outputs]
        self.delegated_nodes: int | None = int(response.delegated_nodes)
        self.cpu_ops: list[str] | None = list(response.cpu_ops)
        self.delegate = response.delegate
        self.last_invoke_ms: float | None = None
        self.peak_memory_bytes: int | None = None  # the protocol reports none per session
        self.last_run_ms = 0.0
        self.last_server_ms = 0.0
        self._closed = False

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.input_spec.shape[1:])

    # -- requests ---------------------------------------------------------------------------------
    def _check(self, images: np.ndarray) -> np.ndarray:
        """Validate a batch the way the agent will, so a bad one fails here without a round trip."""
        if self._closed:
            raise InvalidRequestError(self.target, f"{self.model.name}: session was closed; load the model again")
        if not isinstance(images, np.ndarray):
            raise InvalidRequestError(self.target, f"{self.model.name}: expected a numpy array, got "
                                                   f"{type(images).__name__}")
        if images.ndim != 4 or tuple(images.shape[1:]) != self.image_shape:
            raise InvalidRequestError(
                self.target, f"{self.model.name}: input batch has shape {tuple(images.shape)}, the model expects "
                             f"(N, {', '.join(map(str, self.image_shape))})")
        if images.dtype != np.uint8 and images.dtype.name != self.input_spec.dtype:
            raise InvalidRequestError(
                self.target, f"{self.model.name}: input dtype {images.dtype.name} not accepted: send uint8 images "
                             f"or {self.input_spec.dtype} tensors")
        return np.ascontiguousarray(images)

    def _request(self, images: np.ndarray, request_id: int = 0) -> agent_pb2.InferRequest:
        return agent_pb2.InferRequest(
            session_id=self.session_id, request_id=request_id,
            input=agent_pb2.Tensor(shape=images.shape, dtype=ENUM_BY_DTYPE[images.dtype.name],
                                   data=images.tobytes()))

    def _outputs(self, response: agent_pb2.InferResponse) -> list[np.ndarray]:
        self.last_invoke_ms = response.invoke_latency_us / 1000.0
        self.last_run_ms = response.run_latency_us / 1000.0
        self.last_server_ms = response.server_latency_us / 1000.0
        outputs = []
        for tensor in response.outputs:
            shape = tuple(int(d) for d in tensor.shape)
            data = tensor.data  # each read of a bytes field makes a new bytes object: read it once
            if tensor.dtype != agent_pb2.DATA_TYPE_FLOAT32 or len(data) != 4 * math.prod(shape):
                raise ProtocolError(self.target, f"{self.model.name}: the agent sent an output of "
                                                 f"{len(data)} bytes for shape {shape}, dtype {tensor.dtype}")
            # The copy makes the array writable and independent of the response message.
            outputs.append(np.frombuffer(data, dtype=np.float32).reshape(shape).copy())
        if not outputs:
            raise ProtocolError(self.target, f"{self.model.name}: the agent returned no outputs")
        return outputs

    def _batches(self, images: np.ndarray) -> list[np.ndarray]:
        """Split a batch larger than the agent's batch limit (results are concatenated back)."""
        limit = self.target.device_limits()[1]
        per_image = max(1, images[:1].nbytes)
        step = max(1, limit // per_image)
        return [images[i: i + step] for i in range(0, len(images), step)] if len(images) > step else [images]

    # -- inference --------------------------------------------------------------------------------
    def infer(self, images: np.ndarray) -> np.ndarray:
        """Run a uint8 (N, H, W, C) batch; return the first output as float32 (N, classes).

        Raises:
            InvalidRequestError: the batch does not fit the model (checked before sending).
            WorkerCrashedError: the model crashed the agent's worker (the agent restarted it).
            TargetUnreachableError: the agent did not answer in ``rpc_timeout_s``.
        """
        return self.infer_all(images)[0]

    def infer_all(self, images: np.ndarray) -> list[np.ndarray]:
        """Run a batch and return every model output as float32."""
        images = self._check(images)
        if len(images) == 0:
            return [np.zeros((0, *s.shape[1:]), np.float32) for s in self.output_specs]
        parts = self._batches(images)
        if len(parts) > 1:
            results = [self.infer_all(part) for part in parts]
            return [np.concatenate([r[k] for r in results]) for k in range(len(results[0]))]
        response = self.target._invoke("Infer", self._request(images), self.target.rpc_timeout_s,
                                       what=f"running {self.model.name}")
        return self._outputs(response)

    def infer_many(self, batches: Sequence[np.ndarray], in_flight: int = DEFAULT_IN_FLIGHT) -> list[np.ndarray]:
        """Run several batches, each its own invocation on the agent; results in order.

        A few that fit one message go in one InferBatches call (protocol 1.2): one round trip, as a
        step's batch and its re-runs need. Others go over one InferStream with up to ``in_flight``
        outstanding, the agent copying batch k+1 in while batch k runs. Either beats :meth:`infer`
        in a loop.

        Raises:
            InvalidRequestError: a batch does not fit the model (all are checked before sending).
            WorkerCrashedError, TargetUnreachableError: as :meth:`infer`.
        """
        checked = [self._check(b) for b in batches]
        max_message, limit = self.target.device_limits()
        if len(checked) <= 1 or any(b.nbytes > limit or len(b) == 0 for b in checked):
            return [self.infer(b) for b in checked]  # one batch, or ones infer must split or short-circuit
        if self._fits_one_call(checked, max_message):
            request = agent_pb2.InferBatchesRequest(session_id=self.session_id,
                                                    inputs=[self._request(b).input for b in checked])
            response = self.target._invoke("InferBatches", request, self.target.rpc_timeout_s * len(checked),
                                           what=f"running {len(checked)} batches through {self.model.name}")
            if len(response.results) != len(checked):
                raise ProtocolError(self.target, f"InferBatches answered {len(response.results)} of "
                                                 f"{len(checked)} batches")
            return [self._outputs(result)[0] for result in response.results]
        return self._infer_stream(checked, in_flight)

    def _fits_one_call(self, batches: list[np.ndarray], max_message: int) -> bool:
        """Whether the agent takes ``batches`` in one InferBatches call (it speaks 1.2; count and bytes fit)."""
        info = self.target.device_info_message()
        if (info.protocol_major, info.protocol_minor) < (1, _INFER_BATCHES_MINOR):
            return False
        room = min(max_message, self.target.max_message_bytes) - _INFER_BATCHES_HEADROOM_BYTES
        return len(batches) <= info.max_batches_per_call and sum(b.nbytes for b in batches) <= room

    def _infer_stream(self, checked: list[np.ndarray], in_flight: int) -> list[np.ndarray]:
        """:meth:`infer_many` over one InferStream."""
        window = threading.Semaphore(max(1, in_flight))
        failure: list[BaseException] = []

        def requests() -> Iterator[agent_pb2.InferRequest]:
            for index, batch in enumerate(checked):
                window.acquire()
                if failure:
                    return
                yield self._request(batch, index)

        results: list[np.ndarray] = []

        def consume(stream) -> None:
            for response in stream:
                window.release()
                if response.request_id != len(results):
                    raise ProtocolError(self.target, f"InferStream answered request {response.request_id}, "
                                                     f"expected {len(results)}")
                results.append(self._outputs(response)[0])

        timeout_s = self.target.rpc_timeout_s * len(checked)
        try:
            self.target._invoke_stream("InferStream", requests, consume, timeout_s,
                                       what=f"streaming {len(checked)} batches through {self.model.name}",
                                       retryable=lambda: not results)
        finally:
            failure.append(StopIteration())
            window.release()  # unblock the request generator if it waits
        if len(results) != len(checked):
            raise ProtocolError(self.target, f"InferStream ended after {len(results)} of {len(checked)} batches")
        return results

    # -- intermediate tensors ---------------------------------------------------------------------
    def tensors(self, image: np.ndarray, names: Sequence[str] | None = None, indices: Sequence[int] | None = None,
                max_bytes: int = 0) -> DeviceTensors:
        """Run one image on the agent with every intermediate tensor kept; return the tensors asked for.

        The agent runs the session's model on its own delegate and kernels (GetTensors, protocol 1.1).

        Args:
            image: one uint8 (H, W, C) image, or (1, H, W, C); or a tensor in the model's input dtype.
            names: tensor names to return; with ``indices`` also None, every activation.
            indices: interpreter tensor indices to return.
            max_bytes: the most tensor data the reply may carry (0: the agent's own limit).

        Raises:
            InvalidRequestError: the image does not fit, a name or index is not in the model
                (INVALID_ARGUMENT), or the tensors exceed the limit (RESOURCE_EXHAUSTED).
            ProtocolError: the agent is older than protocol 1.1 (no GetTensors).
            WorkerCrashedError, TargetUnreachableError.
        """
        batch = image[None] if isinstance(image, np.ndarray) and image.ndim == 3 else image
        batch = self._check(batch)
        if len(batch) != 1:
            raise InvalidRequestError(self.target, f"{self.model.name}: GetTensors takes one image, got {len(batch)}")
        info = self.target.device_info_message()
        if (info.protocol_major, info.protocol_minor) < (1, _GET_TENSORS_MINOR):
            raise ProtocolError(self.target, f"the agent speaks protocol {info.protocol_major}.{info.protocol_minor}, "
                                             f"GetTensors needs 1.{_GET_TENSORS_MINOR}: update the agent "
                                             f"(agent {info.agent_version})")
        request = agent_pb2.GetTensorsRequest(
            session_id=self.session_id, tensor_names=list(names or ()), tensor_indices=list(indices or ()),
            max_bytes=int(max_bytes),
            input=agent_pb2.Tensor(shape=batch.shape, dtype=ENUM_BY_DTYPE[batch.dtype.name], data=batch.tobytes()))
        response = self.target._invoke("GetTensors", request, self.target.rpc_timeout_s,
                                       what=f"reading the tensors of {self.model.name}")
        by_index: dict[int, tuple[str, np.ndarray, Quantization]] = {}
        for t in response.tensors:
            shape = tuple(int(d) for d in t.tensor.shape)
            dtype = DTYPE_BY_ENUM.get(t.tensor.dtype)
            data = t.tensor.data
            if dtype is None or len(data) != math.prod(shape) * np.dtype(dtype).itemsize:
                raise ProtocolError(self.target, f"{self.model.name}: the agent sent tensor {t.name!r} as "
                                                 f"{len(data)} bytes for shape {shape}, dtype {t.tensor.dtype}")
            array = np.frombuffer(data, dtype=dtype).reshape(shape).copy()
            by_index[int(t.index)] = (t.name, array, Quantization(tuple(float(s) for s in t.scales),
                                                                  tuple(int(z) for z in t.zero_points),
                                                                  int(t.quantized_dimension)))
        return DeviceTensors(by_index, dict(zip(response.hidden_indices, response.hidden)), response.note,
                             response.delegate, bool(response.outputs_identical),
                             response.invoke_latency_us / 1000.0)

    def close(self) -> None:
        """Unload the model on the agent (the agent keeps the file in its cache)."""
        if self._closed:
            return
        self._closed = True
        self.target._forget(self)
        try:
            self.target._invoke("UnloadModel", agent_pb2.UnloadModelRequest(session_id=self.session_id),
                                _CLOSE_TIMEOUT_S, what=f"unloading {self.model.name}", retries=0)
        except (InvalidRequestError, TargetError) as exc:
            log.debug("unload of %s failed: %s", self.session_id, exc)

    def __repr__(self) -> str:
        return f"RemoteSession({self.model.name}, delegate={self.model.delegate}, {self.target.uri})"


class RemoteTarget:
    """An agent at ``grpc://HOST:PORT``.

    Args:
        uri: ``grpc://HOST:PORT``.
        token: the agent's token; else read from ``token_file``; else ``$DFLARE_TOKEN``.
        token_file: a file holding the token.
        tls_ca_file: PEM root certificate(s) to verify the agent's TLS certificate; enables TLS.
        tls: use TLS with the system's root certificates (implied by ``tls_ca_file``).
        tls_server_name: the name the agent's certificate was issued to, when not the URI's host.
        connect_timeout_s, rpc_timeout_s, load_timeout_s: see the module docstring.
        retries: attempts after the first when the agent is UNAVAILABLE.
        backoff_s: wait before the first retry; doubles each time.
        max_message_bytes: largest message sent or received.
        allowed_external: accepted for ``open_target`` symmetry and ignored: the agent's own
            ``--allow-delegate`` flags decide which libraries load there.

    Raises:
        ConfigError: a bad URI or unreadable token file.
    """

    def __init__(
        self,
        uri: str,
        token: str | None = None,
        token_file: str | os.PathLike | None = None,
        tls_ca_file: str | os.PathLike | None = None,
        tls: bool = False,
        tls_server_name: str | None = None,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        rpc_timeout_s: float = DEFAULT_RPC_TIMEOUT_S,
        load_timeout_s: float = DEFAULT_LOAD_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        backoff_s: float = DEFAULT_BACKOFF_S,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        allowed_external: Sequence[str] = (),
    ) -> None:
        self.uri = uri
        self.host, self.port = parse_uri(uri)
        self._token = resolve_token(token, token_file)
        self.connect_timeout_s = connect_timeout_s
        self.rpc_timeout_s = rpc_timeout_s
        self.load_timeout_s = max(load_timeout_s, rpc_timeout_s)
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_message_bytes = max_message_bytes
        self._tls_ca_file = tls_ca_file
        self._tls = tls or tls_ca_file is not None or uri.startswith("grpcs://")
        self._tls_server_name = tls_server_name
        self._metadata = _auth_metadata(self._token)
        self._channel: grpc.Channel | None = None
        self._stub: agent_pb2_grpc.AgentStub | None = None
        self._device_info: agent_pb2.DeviceInfo | None = None
        self._sessions: list[RemoteSession] = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RemoteTarget({self.uri!r})"

    def __str__(self) -> str:
        return self.uri

    def __enter__(self) -> RemoteTarget:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- connection -------------------------------------------------------------------------------
    def _connect(self) -> agent_pb2_grpc.AgentStub:
        with self._lock:
            if self._stub is not None:
                return self._stub
            target = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
            options = [("grpc.max_send_message_length", self.max_message_bytes),
                       ("grpc.max_receive_message_length", self.max_message_bytes)]
            if self._tls:
                if self._tls_server_name:
                    options.append(("grpc.ssl_target_name_override", self._tls_server_name))
                roots = None
                if self._tls_ca_file is not None:
                    try:
                        roots = Path(self._tls_ca_file).read_bytes()
                    except OSError as exc:
                        raise ConfigError(f"cannot read TLS CA file {self._tls_ca_file}: {exc.strerror}") from None
                channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(roots), options=options)
            else:
                channel = grpc.insecure_channel(target, options=options)
            refused = self._refused()
            if refused is not None:
                channel.close()
                raise TargetUnreachableError(
                    self, f"nothing listens at {target} ({refused.strerror or 'connection refused'}); start the agent "
                          f"with `dflare-agent serve --port {self.port}` (or check the port forward)"
                ) from None
            try:
                grpc.channel_ready_future(channel).result(timeout=self.connect_timeout_s)
            except grpc.FutureTimeoutError:
                channel.close()
                raise TargetUnreachableError(
                    self, f"no agent answered at {target} within {self.connect_timeout_s:g} s; start it with "
                          f"`dflare-agent serve --port {self.port}` (or check the port forward / TLS settings)"
                ) from None
            self._channel = channel
            self._stub = agent_pb2_grpc.AgentStub(channel)
        info = self._device_info_message()
        if info.protocol_major != PROTOCOL_MAJOR:
            self.close()
            raise ProtocolError(
                self, f"the agent speaks protocol {info.protocol_major}.{info.protocol_minor} (agent "
                      f"{info.agent_version}) but this host speaks {PROTOCOL_MAJOR}.{PROTOCOL_MINOR}; install the "
                      "same dflare-edge version on both sides")
        return self._stub

    def _refused(self) -> OSError | None:
        """Probe the agent's port once; the error when the connection is refused, else None.

        A refused connection means nothing listens there now: waiting ``connect_timeout_s`` for
        gRPC to give up would only delay the same answer. A probe that times out or fails another
        way (a slow link, a port forward still coming up) leaves the decision to gRPC's own wait.
        """
        try:
            with socket.create_connection((self.host, self.port), timeout=min(self.connect_timeout_s,
                                                                               _PROBE_TIMEOUT_S)):
                return None
        except ConnectionRefusedError as exc:
            return exc
        except OSError:
            return None

    def _device_info_message(self) -> agent_pb2.DeviceInfo:
        info = self._invoke("GetDeviceInfo", agent_pb2.GetDeviceInfoRequest(), self.rpc_timeout_s,
                            what="asking for device info", connect=False)
        self._device_info = info
        return info

    def device_info_message(self) -> agent_pb2.DeviceInfo:
        """The agent's GetDeviceInfo answer, as read when connecting (asked for again if not yet read)."""
        if self._device_info is None:
            self._connect()
        return self._device_info

    def device_limits(self) -> tuple[int, int]:
        """(max message bytes, max batch bytes) the agent accepts."""
        if self._device_info is None:
            self._connect()
        info = self._device_info
        return int(info.max_message_bytes), int(info.max_batch_bytes)

    # -- calls ------------------------------------------------------------------------------------
    def _invoke(self, method: str, request, timeout_s: float, what: str, retries: int | None = None,
                connect: bool = True):
        """Call a unary RPC with a deadline, retrying UNAVAILABLE; translate failures."""
        stub = self._connect() if connect else self._stub
        call = getattr(stub, method)
        attempts = 1 + (self.retries if retries is None else retries)
        for attempt in range(attempts):
            try:
                return call(request, timeout=timeout_s, metadata=self._metadata)
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.UNAVAILABLE and attempt + 1 < attempts:
                    self._backoff(attempt, method, error)
                    continue
                raise self.translate(error, what, timeout_s) from None
        raise AssertionError("unreachable")

    def _invoke_stream(self, method: str, requests: Callable[[], Iterator], consume: Callable, timeout_s: float,
                       what: str, retryable: Callable[[], bool], model_errors: bool = False) -> None:
        """Call a request-streaming RPC; ``consume`` reads the response(s). Retries only before any result."""
        stub = self._connect()
        call = getattr(stub, method)
        for attempt in range(1 + self.retries):
            try:
                consume(call(requests(), timeout=timeout_s, metadata=self._metadata))
                return
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.UNAVAILABLE and attempt < self.retries and retryable():
                    self._backoff(attempt, method, error)
                    continue
                raise self.translate(error, what, timeout_s, model_errors) from None

    def _backoff(self, attempt: int, method: str, error: grpc.RpcError) -> None:
        delay_s = self.backoff_s * (2 ** attempt)
        log.info("%s: %s unavailable (%s); retrying in %.1f s", self.uri, method, error.details(), delay_s)
        time.sleep(delay_s)

    def translate(self, error: grpc.RpcError, what: str, timeout_s: float | None = None,
                  model_errors: bool = False) -> Exception:
        """Turn a ``grpc.RpcError`` into the matching :mod:`host.errors` class.

        Args:
            error: the failed call.
            what: what was being done, for the message ("loading m.tflite on xnnpack").
            timeout_s: the call's deadline, named when it expired.
            model_errors: INVALID_ARGUMENT means the model's bytes were refused (ModelError).
        """
        code, details = error.code(), error.details() or ""
        message = f"{what}: {details}"
        if model_errors and code == grpc.StatusCode.INVALID_ARGUMENT:
            return ModelError(f"{self.uri}: {message}")
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return AuthenticationError(self, f"{what}: the agent refused the call: {details}")
        if code == grpc.StatusCode.UNAVAILABLE:
            return TargetUnreachableError(
                self, f"{what}: the agent is unavailable after {self.retries} retries ({details}); is it running?")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return TargetUnreachableError(
                self, f"{what}: no answer within {timeout_s:g} s (raise rpc_timeout_s/load_timeout_s for slow devices)")
        if code == grpc.StatusCode.ABORTED:
            return WorkerCrashedError(self, message)
        if code == grpc.StatusCode.FAILED_PRECONDITION:
            return DelegateUnavailableError(self, message)
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return InvalidRequestError(self, f"{message} (a size limit of the agent: see its --max-message-bytes, "
                                             "--max-batch-bytes, --cache-max-bytes, --max-sessions)")
        if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND):
            return InvalidRequestError(self, message)
        if code == grpc.StatusCode.UNIMPLEMENTED:
            return ProtocolError(self, f"{message} (the agent is an incompatible version)")
        return TargetError(self, f"{what}: {code.name}: {details}")

    # -- Target protocol --------------------------------------------------------------------------
    def info(self) -> dict:
        """Device and runtime facts, as a dict with the same core keys as ``LocalTarget.info()``.

        Raises:
            TargetUnreachableError, AuthenticationError, ProtocolError.
        """
        self._connect()
        info = _message_dict(self._device_info_message())
        info["uri"] = self.uri
        info["python"] = info.get("python_version", "")
        info["protocol"] = f"{info['protocol_major']}.{info['protocol_minor']}"
        return info

    def load(self, model: ModelSpec) -> RemoteSession:
        """Load ``model`` on the agent, uploading it first if the agent lacks its digest.

        Raises:
            ModelError: the agent rejected the model bytes.
            DelegateUnavailableError: the delegate is not available on the device.
            InvalidRequestError: a limit or option was refused.
            TargetUnreachableError, AuthenticationError, WorkerCrashedError.
        """
        self._connect()
        request = agent_pb2.LoadModelRequest(
            sha256=model.sha256, delegate=model.delegate, threads=model.threads or 0, name=model.name,
            preprocessing=agent_pb2.Preprocessing(mean=model.preprocessing.mean, std=model.preprocessing.std))
        response = self._load_or_upload(model, request, f"loading {model.name} on {model.delegate}")
        session = RemoteSession(self, model, response)
        with self._lock:
            self._sessions.append(session)
        return session

    def _load_or_upload(self, model: ModelSpec, request: agent_pb2.LoadModelRequest,
                        what: str) -> agent_pb2.LoadModelResponse:
        stub = self._connect()
        for attempt in range(2):
            try:
                return stub.LoadModel(request, timeout=self.load_timeout_s, metadata=self._metadata)
            except grpc.RpcError as error:
                code = error.code()
                if code == grpc.StatusCode.NOT_FOUND and attempt == 0:
                    self.upload(model)
                    continue
                if code == grpc.StatusCode.UNAVAILABLE and attempt == 0:
                    self._backoff(0, "LoadModel", error)
                    continue
                raise self.translate(error, what, self.load_timeout_s, model_errors=True) from None
        raise TargetError(self, f"{what}: the agent kept answering NOT_FOUND after the upload")

    def upload(self, model: ModelSpec) -> bool:
        """Send the model's bytes (the agent verifies size, sha256 and format); True if it was new.

        Raises:
            ModelError: the agent rejected the bytes.
            InvalidRequestError: the agent's cache cannot hold it.
        """
        content, sha = model.content, model.sha256

        def chunks() -> Iterator[agent_pb2.PutModelChunk]:
            yield agent_pb2.PutModelChunk(sha256=sha, total_bytes=len(content), data=content[:UPLOAD_CHUNK_BYTES])
            for start in range(UPLOAD_CHUNK_BYTES, len(content), UPLOAD_CHUNK_BYTES):
                yield agent_pb2.PutModelChunk(data=content[start: start + UPLOAD_CHUNK_BYTES])

        response: list[agent_pb2.PutModelResponse] = []
        self._invoke_stream("PutModel", chunks, response.append, self.load_timeout_s,
                            what=f"uploading {model.name} ({len(content)} bytes)", retryable=lambda: True,
                            model_errors=True)
        log.info("%s: uploaded %s (%d bytes, sha256 %s)", self.uri, model.name, len(content), sha[:12])
        return not response[0].already_present

    def _forget(self, session: RemoteSession) -> None:
        with self._lock:
            if session in self._sessions:
                self._sessions.remove(session)

    def reset_channel(self) -> None:
        """Close the channel but keep the sessions: the next call opens a fresh connection.

        For a forwarded link (adb) that came back after an outage: the old channel would first wait
        out gRPC's reconnect backoff, which grows to minutes while the link is down.
        """
        with self._lock:
            if self._channel is not None:
                self._channel.close()
            self._channel = self._stub = None

    def close(self) -> None:
        """Unload every session this target loaded and close the channel."""
        with self._lock:
            sessions = list(self._sessions)
        for session in sessions:
            session.close()
        with self._lock:
            if self._channel is not None:
                self._channel.close()
            self._channel = self._stub = None


def _auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries ``token`` (none without a token)."""
    return ((AUTH_METADATA_KEY, f"Bearer {token}"),) if token else ()


class AgentProbe:
    """One-shot checks of a starting agent at a plaintext ``HOST:PORT`` (an adb forward), each answering
    ``(ok, why not)`` instead of raising: ``host.deploy.adb.AdbDeployment`` polls them in its health stage.
    """

    def health(self, address: str, token: str) -> tuple[bool, str]:
        """One gRPC health check (``grpc.health.v1``) of the agent; returns (serving, why not).

        The agent's token interceptor lets health checks through without a token
        (``TokenAuthInterceptor.OPEN_PREFIXES``); the token is sent anyway, under the key the interceptor
        reads, so the probe also works behind a proxy that checks it. The token itself is checked by
        :meth:`check_token`.
        """
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with grpc.insecure_channel(address) as channel:
            try:
                response = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=HEALTH_RPC_TIMEOUT_S,
                    metadata=_auth_metadata(token))
            except grpc.RpcError as exc:
                return False, f"health check: {exc.code().name}"
        if response.status == health_pb2.HealthCheckResponse.SERVING:
            return True, ""
        return False, f"health status {health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)}"

    def check_token(self, address: str, token: str) -> tuple[bool, str]:
        """One authenticated call (``GetDeviceInfo``): (accepted, why not); a refused token says UNAUTHENTICATED."""
        with grpc.insecure_channel(address) as channel:
            try:
                agent_pb2_grpc.AgentStub(channel).GetDeviceInfo(
                    agent_pb2.GetDeviceInfoRequest(), timeout=TOKEN_CHECK_RPC_TIMEOUT_S,
                    metadata=_auth_metadata(token))
            except grpc.RpcError as exc:
                return False, f"{exc.code().name}: {exc.details()}"
        return True, ""


def _spec(message: agent_pb2.TensorSpec) -> TensorSpec:
    return TensorSpec(name=message.name, shape=tuple(int(d) for d in message.shape),
                      dtype=DTYPE_BY_ENUM.get(message.dtype, "unknown"), scale=float(message.scale),
                      zero_point=int(message.zero_point))


def _message_dict(message) -> dict:
    """A protobuf message as a plain dict (repeated -> list, map -> dict), field names as in the .proto."""
    out = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            out[field.name] = dict(value)
        elif field.is_repeated:
            out[field.name] = list(value)
        else:
            out[field.name] = value
    return out
