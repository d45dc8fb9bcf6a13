"""The gRPC side of the agent: a thin servicer, token auth, status codes, health and reflection.

Assembly happens in one place, :func:`create_server`; :func:`run_server` wraps it in a context
manager yielding the bound port, so tests bind port 0. The servicer only converts protobuf
messages to calls on :class:`~device_agent.sessions.SessionManager` and
:class:`~device_agent.cache.ModelCache` and back; every exception becomes a status code through
the single table :data:`STATUS_BY_ERROR`.
"""

# ruff: noqa: E402 - grpc_env.apply() must run before the first `import grpc` (see below)

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import itertools
import logging
import math
import queue
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from device_agent import grpc_env

grpc_env.apply()  # before the first `import grpc`: gRPC core reads its settings then

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from device_agent import __version__, device_info, runtime
from device_agent._gen import agent_pb2, agent_pb2_grpc
from device_agent.cache import DEFAULT_CAPACITY_BYTES, ModelCache, default_cache_dir
from device_agent.errors import (
    AgentInvalidRequestError,
    AgentShuttingDownError,
    AgentWorkerCrashedError,
    InputError,
    LimitExceededError,
    ModelFormatError,
    NotFoundError,
    RuntimeDelegateUnavailableError,
    StreamIdleError,
)
from device_agent.sessions import DEFAULT_MAX_SESSIONS, LoadRequest, SessionManager
from device_agent.wire_dtypes import DTYPE_BY_ENUM, ENUM_BY_DTYPE
from device_agent.worker import IN_FLIGHT_SLOTS, InferResult, TensorsResult

log = logging.getLogger(__name__)

PROTOCOL_MAJOR = agent_pb2.PROTOCOL_VERSION_MAJOR
PROTOCOL_MINOR = agent_pb2.PROTOCOL_VERSION_MINOR
SERVICE_NAME = agent_pb2.DESCRIPTOR.services_by_name["Agent"].full_name

#: Default gRPC message cap, both directions. gRPC's own 4 MiB receive default is too small for
#: batches: 256 images of 224x224x3 uint8 are 38 MiB. 128 MiB keeps one runaway request from
#: exhausting a phone's memory.
DEFAULT_MAX_MESSAGE_BYTES = 128 << 20
#: Default cap on one input batch's bytes (Tensor.data); below the message cap to leave room for
#: the envelope, and the size of each worker's shared-memory slot.
DEFAULT_MAX_BATCH_BYTES = 64 << 20
#: InferStreams open at once; each holds a handler thread for its lifetime. 16 serve several hosts
#: (a search keeps one or two per model) while staying cheap on a phone. One more is refused with
#: RESOURCE_EXHAUSTED rather than queued behind the others.
DEFAULT_MAX_STREAMS = 16
#: Unary Infer calls running at once; each holds a handler thread until its batch is answered.
DEFAULT_MAX_INFER_CALLS = 32
#: Unary Infer calls running at once on one session: a hung model's callers can then hold only
#: part of :data:`DEFAULT_MAX_INFER_CALLS`, never the threads other sessions need. More than a
#: worker's slots would only wait in its queue anyway.
DEFAULT_MAX_INFER_CALLS_PER_SESSION = 16
#: Batches one InferBatches call may carry: a step and its re-runs are a handful; a long series
#: belongs on InferStream, which answers as it goes.
MAX_BATCHES_PER_CALL = 64
#: Handler threads kept beyond the inference limits for health, GetDeviceInfo, PutModel, LoadModel
#: and UnloadModel, so inference (a hung model, idle streams) can never starve them.
CONTROL_THREADS = 8
#: An InferStream that sends no request for this long is ended (DEADLINE_EXCEEDED), freeing its
#: thread: a search sends its next batch within milliseconds of the last answer.
DEFAULT_STREAM_IDLE_TIMEOUT_S = 60.0
#: Seconds in-flight calls get to finish after SIGTERM before they are cancelled: longer than one
#: large batch on a slow delegate, short enough for a lab's service manager.
SHUTDOWN_GRACE_S = 10.0
#: After the grace period gRPC cancels every call; a call gRPC core never completes (seen after a
#: request it could not decode) must not hold the shutdown past this much longer.
SHUTDOWN_MARGIN_S = 5.0
#: Longest status message sent: gRPC carries it in a header, and an echoed 100 KB field would make
#: the reply fail with an unrelated RESOURCE_EXHAUSTED (metadata size) instead.
MAX_STATUS_MESSAGE_CHARS = 1000
#: Longest client-supplied value quoted in a message (ids, names); longer ones are elided.
MAX_QUOTED_CHARS = 80
#: Longest session id accepted; the agent makes 16-character ids.
MAX_SESSION_ID_CHARS = 64
#: Longest model name (LoadModel.name) accepted: it is only a label for logs and messages.
MAX_MODEL_NAME_CHARS = 256
#: Interpreter threads allowed per CPU of the device: more only adds contention, and an absurd
#: count (a million) would make the worker spawn thousands of threads.
MAX_THREADS_PER_CPU = 4
#: Most mean/std values a LoadModel may carry; real models have 1 to 4 channels.
MAX_PREPROCESSING_VALUES = 64
#: Room kept in a GetTensors reply beside the tensors' data, for their names, shapes and quantization
#: (a few hundred bytes each; thousands of tensors in a large model). The whole reply is checked
#: against the message cap as well before it is sent.
TENSORS_HEADROOM_BYTES = 256 << 10
#: Longest wait for gRPC to finish a stream it ended itself (see _await_grpc_status).
_STATUS_WAIT_S = 5.0
#: How often a stream's request pump checks whether the stream ended while its queue is full.
_PUMP_POLL_S = 0.1
#: Metadata key carrying "Bearer <token>".
AUTH_METADATA_KEY = "authorization"


#: Exception -> gRPC status code, first match wins (subclasses before their bases).
STATUS_BY_ERROR: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (AgentInvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (InputError, grpc.StatusCode.INVALID_ARGUMENT),
    (ModelFormatError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (LimitExceededError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (RuntimeDelegateUnavailableError, grpc.StatusCode.FAILED_PRECONDITION),
    (AgentWorkerCrashedError, grpc.StatusCode.ABORTED),
    (AgentShuttingDownError, grpc.StatusCode.UNAVAILABLE),
    (StreamIdleError, grpc.StatusCode.DEADLINE_EXCEEDED),
)



def shorten(text: str, limit: int = MAX_QUOTED_CHARS) -> str:
    """``text`` if at most ``limit`` characters, else its head and tail around a count of what was cut."""
    if len(text) <= limit:
        return text
    keep = max(2, limit - 30) // 2
    return f"{text[:keep]}...({len(text) - 2 * keep} characters cut)...{text[-keep:]}"


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """Map an exception to (status code, message) through :data:`STATUS_BY_ERROR`.

    The message is capped at :data:`MAX_STATUS_MESSAGE_CHARS`, so a huge field echoed back can
    never turn the reply into an unrelated metadata error.
    """
    for error_type, code in STATUS_BY_ERROR:
        if isinstance(exc, error_type):
            return code, shorten(str(exc), MAX_STATUS_MESSAGE_CHARS)
    log.error("internal error", exc_info=exc)
    message = f"internal agent error ({type(exc).__name__}: {exc}); see the agent's log"
    return grpc.StatusCode.INTERNAL, shorten(message, MAX_STATUS_MESSAGE_CHARS)


@contextlib.contextmanager
def _status_from_errors(context: grpc.ServicerContext) -> Iterator[None]:
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - every failure leaves as a status code
        code, message = status_for(exc)
        context.abort(code, message)


@dataclass(frozen=True)
class AgentConfig:
    """Everything the agent is started with (the ``serve`` flags).

    ``max_batch_bytes`` <= ``max_message_bytes``: a batch travels inside one message.
    """

    host: str = "127.0.0.1"
    port: int = 50051
    token: str | None = None
    tls_cert: bytes | None = None
    tls_key: bytes | None = None
    cache_dir: str = ""
    cache_max_bytes: int = DEFAULT_CAPACITY_BYTES
    allowed_delegates: tuple[str, ...] = ()
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES
    max_sessions: int = DEFAULT_MAX_SESSIONS
    max_streams: int = DEFAULT_MAX_STREAMS
    max_infer_calls: int = DEFAULT_MAX_INFER_CALLS
    max_infer_calls_per_session: int = DEFAULT_MAX_INFER_CALLS_PER_SESSION
    stream_idle_timeout_s: float = DEFAULT_STREAM_IDLE_TIMEOUT_S
    worker_cpus: tuple[int, ...] = ()

    @property
    def handler_threads(self) -> int:
        """gRPC handler threads: every admitted inference call at once, plus :data:`CONTROL_THREADS`."""
        return self.max_streams + self.max_infer_calls + CONTROL_THREADS

    def __post_init__(self) -> None:
        if self.max_batch_bytes > self.max_message_bytes:
            raise ValueError(
                f"max batch bytes ({self.max_batch_bytes}) cannot exceed max message bytes ({self.max_message_bytes})"
            )
        if min(self.max_streams, self.max_infer_calls, self.max_infer_calls_per_session) < 1:
            raise ValueError(f"max streams ({self.max_streams}), max Infer calls ({self.max_infer_calls}) and "
                             f"per session ({self.max_infer_calls_per_session}) must be at least 1")
        if self.stream_idle_timeout_s <= 0:
            raise ValueError(f"stream idle timeout must be positive, got {self.stream_idle_timeout_s} s")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both a certificate and its private key (--tls-cert and --tls-key)")
        if not is_loopback(self.host) and not self.token:
            raise ValueError(
                f"refusing to listen on {self.host}, which is not a loopback address, without a token: anyone "
                "on the network could run code through the agent; pass --token-file (and ideally --tls-cert/--tls-key)"
            )


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """Rejects calls without ``authorization: Bearer <token>``; health checks need no token.

    The comparison is constant-time (:func:`hmac.compare_digest`), so timing does not leak the token.
    """

    #: Methods anyone may call: probes must not need a secret.
    OPEN_PREFIXES = (f"/{health.SERVICE_NAME}/",)

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails):
        method = handler_call_details.method
        if method.startswith(self.OPEN_PREFIXES):
            return continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        supplied = metadata.get(AUTH_METADATA_KEY)
        if supplied is None:
            message = ("missing token: this agent requires one; pass --token-file FILE or set DFLARE_TOKEN "
                       "(sent as 'authorization: Bearer <token>' metadata)")
        elif not hmac.compare_digest(str(supplied).encode(), self._expected):
            message = "token refused: it does not match the agent's --token-file; check the token you passed"
        else:
            return continuation(handler_call_details)
        log.warning("rejected %s: %s", method, message.split(":")[0])
        return _denying_handler(continuation(handler_call_details), message)


def _denying_handler(handler: grpc.RpcMethodHandler | None, message: str) -> grpc.RpcMethodHandler:
    def deny(_request, context: grpc.ServicerContext):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler is None or not (handler.request_streaming or handler.response_streaming):
        return grpc.unary_unary_rpc_method_handler(deny)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny)
    return grpc.unary_stream_rpc_method_handler(deny)


class _Admission:
    """Counts inference calls in progress and refuses one beyond its limit (RESOURCE_EXHAUSTED).

    Refusing instead of queueing keeps handler threads free for control calls: a queued call
    would wait for a thread that a hung model or an idle stream may hold for a long time.
    """

    def __init__(self, what: str, limit: int, flag: str, per_key_limit: int | None = None) -> None:
        self.what = what
        self.limit = limit
        self.flag = flag
        self.per_key_limit = per_key_limit
        self._active = 0
        self._by_key: dict[str, int] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def admit(self, key: str = "") -> Iterator[None]:
        """Hold one place for the ``with`` block (and one of ``key``'s, with a per-key limit).

        Raises:
            LimitExceededError: ``limit`` calls, or ``per_key_limit`` for ``key``, are in progress.
        """
        with self._lock:
            if self._active >= self.limit:
                raise LimitExceededError(
                    f"{self.limit} {self.what} are in progress, this agent's limit ({self.flag}); "
                    "retry when one has finished"
                )
            held = self._by_key.get(key, 0)
            if self.per_key_limit is not None and held >= self.per_key_limit:
                raise LimitExceededError(
                    f"{held} {self.what} on session {shorten(key)!r} are in progress, the limit per session "
                    f"({self.flag}_per_session); retry when one has finished"
                )
            self._active += 1
            self._by_key[key] = held + 1
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                left = self._by_key[key] - 1
                if left:
                    self._by_key[key] = left
                else:
                    del self._by_key[key]


class AgentServicer(agent_pb2_grpc.AgentServicer):
    """The Agent service: protobuf in, calls on the session manager and cache, protobuf out."""

    def __init__(self, config: AgentConfig, cache: ModelCache, sessions: SessionManager) -> None:
        self.config = config
        self.cache = cache
        self.sessions = sessions
        self._static_info = device_info.static_info()
        self._runtime = runtime.load_runtime()
        # Probing for delegate libraries runs ldconfig/gcc (tens of ms): do it once, not per call.
        self._delegates = runtime.available_delegates(config.allowed_delegates)
        self._streams = _Admission("InferStreams", config.max_streams, "max_streams")
        self._infer_calls = _Admission("unary Infer calls", config.max_infer_calls, "max_infer_calls",
                                       config.max_infer_calls_per_session)

    def GetDeviceInfo(self, request, context):  # noqa: N802 - gRPC method name
        with _status_from_errors(context):
            total, available = device_info.memory_bytes()
            info = self._static_info
            return agent_pb2.DeviceInfo(
                protocol_major=PROTOCOL_MAJOR,
                protocol_minor=PROTOCOL_MINOR,
                agent_version=__version__,
                runtime=self._runtime.name,
                runtime_version=self._runtime.version,
                delegates=self._delegates,
                machine=info["machine"],
                abis=info["abis"],
                system=info["system"],
                release=info["release"],
                cpu_count=info["cpu_count"],
                memory_total_bytes=total,
                memory_available_bytes=available,
                python_version=info["python_version"],
                hostname=info["hostname"],
                properties=info["properties"],
                max_message_bytes=self.config.max_message_bytes,
                max_batch_bytes=self.config.max_batch_bytes,
                max_batches_per_call=MAX_BATCHES_PER_CALL,
                cache_capacity_bytes=self.cache.capacity_bytes,
                cache_used_bytes=self.cache.used_bytes,
                sessions=len(self.sessions),
                max_sessions=self.sessions.max_sessions,
            )

    def PutModel(self, request_iterator, context):  # noqa: N802
        with _status_from_errors(context):
            first = next(request_iterator, None)
            if first is None:
                raise AgentInvalidRequestError("PutModel received no chunks: send sha256 and total_bytes in the first")
            chunks = itertools.chain([first.data], (chunk.data for chunk in request_iterator))
            size, present = self.cache.put(first.sha256, first.total_bytes, chunks)
            return agent_pb2.PutModelResponse(sha256=first.sha256, size_bytes=size, already_present=present)

    def LoadModel(self, request, context):  # noqa: N802
        with _status_from_errors(context):
            check_load_request(request, self._static_info["cpu_count"])
            session = self.sessions.load(LoadRequest(
                sha256=request.sha256,
                delegate=request.delegate,
                delegate_options=dict(request.delegate_options),
                threads=request.threads,
                mean=tuple(request.preprocessing.mean),
                std=tuple(request.preprocessing.std),
                name=request.name,
            ))
            result = session.result
            try:
                check_preprocessing_fits(request.preprocessing, result.input_spec)
            except AgentInvalidRequestError:
                self.sessions.unload(session.id)
                raise
            return agent_pb2.LoadModelResponse(
                session_id=session.id,
                input=_spec_message(result.input_spec),
                outputs=[_spec_message(s) for s in result.output_specs],
                delegated_nodes=result.delegated_nodes,
                cpu_ops=result.cpu_ops,
                delegate=result.delegate,
                load_latency_us=result.load_latency_us,
            )

    def Infer(self, request, context):  # noqa: N802
        with _status_from_errors(context), self._infer_calls.admit(request.session_id):
            start_ns = time.perf_counter_ns()
            return _response(request.request_id, self._submit(request).result(), start_ns)

    def InferBatches(self, request, context):  # noqa: N802
        """Each input as its own invocation, in order, answered together (protocol 1.2).

        All are queued on the worker before the first answer is awaited, so the copies overlap the
        interpreter as on InferStream, without a stream's threads. An input that does not fit fails
        the call, naming its position, after the ones queued before it have finished.
        """
        with _status_from_errors(context), self._infer_calls.admit(request.session_id):
            start_ns = time.perf_counter_ns()
            count = len(request.inputs)
            if count == 0:
                raise AgentInvalidRequestError("InferBatches without inputs: send at least one batch")
            if count > MAX_BATCHES_PER_CALL:
                raise LimitExceededError(f"InferBatches with {count} batches, over this agent's limit of "
                                         f"{MAX_BATCHES_PER_CALL} per call: send a long series on InferStream")
            submitted: list[futures.Future] = []
            for position, tensor in enumerate(request.inputs):
                try:
                    submitted.append(self._submit_input(request.session_id, tensor))
                except (AgentInvalidRequestError, LimitExceededError, NotFoundError) as exc:
                    for future in submitted:  # reading the replies frees the worker's slots
                        with contextlib.suppress(Exception):
                            future.result()
                    raise type(exc)(f"InferBatches input {position} of {count}: {exc}") from None
            return agent_pb2.InferBatchesResponse(
                results=[_response(position, future.result(), start_ns) for position, future in enumerate(submitted)])

    def InferStream(self, request_iterator, context):  # noqa: N802
        """Keep up to the worker's slot count of batches in flight, answering in request order.

        A pump thread reads requests and queues them on the worker while this generator waits for
        the oldest result, so reading, copying and the interpreter overlap. At most
        ``max_streams`` are open at once; one that sends nothing for ``stream_idle_timeout_s``
        ends with DEADLINE_EXCEEDED.
        """
        with _status_from_errors(context), self._streams.admit():
            pending: queue.Queue = queue.Queue(maxsize=IN_FLIGHT_SLOTS)
            stopped = threading.Event()
            pump = threading.Thread(target=self._pump, args=(request_iterator, pending, stopped),
                                    name="infer-stream-pump", daemon=True)
            pump.start()
            idle_s = self.config.stream_idle_timeout_s
            try:
                while True:
                    try:
                        item = pending.get(timeout=idle_s)
                    except queue.Empty:
                        raise StreamIdleError(
                            f"InferStream sent no request for {idle_s:g} s, the agent's idle limit: it was closed "
                            "to free its thread; open a new stream when there is work"
                        ) from None
                    if item is None:
                        _await_grpc_status(context)
                        return
                    if isinstance(item, BaseException):
                        raise item
                    request_id, future, start_ns = item
                    yield _response(request_id, future.result(), start_ns)
            finally:
                stopped.set()  # the pump stops at its next put; drain so it is not blocked on a full queue
                with contextlib.suppress(queue.Empty):
                    while True:
                        pending.get_nowait()

    @staticmethod
    def _put_unless_stopped(pending: queue.Queue, item, stopped: threading.Event) -> bool:
        while not stopped.is_set():
            try:
                pending.put(item, timeout=_PUMP_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _pump(self, request_iterator, pending: queue.Queue, stopped: threading.Event) -> None:
        try:
            for request in request_iterator:
                start_ns = time.perf_counter_ns()
                if not self._put_unless_stopped(pending, (request.request_id, self._submit(request), start_ns),
                                                stopped):
                    return
            self._put_unless_stopped(pending, None, stopped)
        except Exception as exc:  # noqa: BLE001 - handed to the generator, which maps it to a status
            self._put_unless_stopped(pending, exc, stopped)

    def _submit(self, request: agent_pb2.InferRequest) -> futures.Future:
        return self._submit_input(request.session_id, request.input)

    def _submit_input(self, session_id: str, tensor: agent_pb2.Tensor) -> futures.Future:
        dtype = DTYPE_BY_ENUM.get(tensor.dtype)
        if dtype is None:
            known = tensor.dtype in agent_pb2.DataType.values()
            name = agent_pb2.DataType.Name(tensor.dtype) if known else tensor.dtype
            raise AgentInvalidRequestError(
                f"input dtype {name} is not a valid element type: set Tensor.dtype (DATA_TYPE_UINT8 for images)"
            )
        check_session_id(session_id)
        return self.sessions.submit(session_id, tensor.shape, dtype, tensor.data)

    def GetTensors(self, request, context):  # noqa: N802
        """One image's intermediate tensors, within min(max_bytes, the message cap minus headroom)."""
        with _status_from_errors(context), self._infer_calls.admit(request.session_id):
            tensor = request.input
            dtype = DTYPE_BY_ENUM.get(tensor.dtype)
            if dtype is None:
                raise AgentInvalidRequestError(
                    "input dtype is not a valid element type: set Tensor.dtype (DATA_TYPE_UINT8 for images)")
            check_session_id(request.session_id)
            limit, reason = tensors_limit(request.max_bytes, self.config.max_message_bytes)
            result = self.sessions.tensors(request.session_id, tensor.shape, dtype, tensor.data,
                                           list(request.tensor_names), list(request.tensor_indices),
                                           limit, reason).result()
            response = _tensors_response(result)
            size = response.ByteSize()
            if size > self.config.max_message_bytes:
                raise LimitExceededError(
                    f"the reply with {len(response.tensors)} tensors is {size} bytes, over this agent's message "
                    f"limit of {self.config.max_message_bytes} bytes (--max-message-bytes); ask for fewer tensors"
                )
            return response

    def UnloadModel(self, request, context):  # noqa: N802
        with _status_from_errors(context):
            check_session_id(request.session_id)
            self.sessions.unload(request.session_id)
            return agent_pb2.UnloadModelResponse()


def check_session_id(session_id: str) -> None:
    """Refuse an id longer than any the agent makes, quoting only its head and tail.

    Raises:
        NotFoundError: the id is longer than :data:`MAX_SESSION_ID_CHARS`.
    """
    if len(session_id) > MAX_SESSION_ID_CHARS:
        raise NotFoundError(
            f"unknown session {shorten(session_id)!r}: {len(session_id)} characters, but session ids are at most "
            f"{MAX_SESSION_ID_CHARS}; use the session_id LoadModel returned"
        )


def tensors_limit(max_bytes: int, max_message_bytes: int) -> tuple[int, str]:
    """The most tensor data a GetTensors reply may carry, and where that limit comes from.

    ``max_bytes`` (0: none) or the message cap minus :data:`TENSORS_HEADROOM_BYTES`, whichever is smaller.
    """
    cap = max(0, max_message_bytes - TENSORS_HEADROOM_BYTES)
    if max_bytes and max_bytes <= cap:
        return int(max_bytes), "the request's max_bytes"
    return cap, (f"this agent's --max-message-bytes of {max_message_bytes} less {TENSORS_HEADROOM_BYTES} bytes "
                 "kept for the tensors' names, shapes and quantization")


def _tensors_response(result: TensorsResult) -> agent_pb2.GetTensorsResponse:
    response = agent_pb2.GetTensorsResponse(note=result.note, delegate=result.delegate,
                                            outputs_identical=result.outputs_identical,
                                            invoke_latency_us=result.invoke_latency_us)
    hidden = list(result.hidden)
    no_wire_type = 0
    for name, index, shape, dtype, data, scales, zero_points, quantized_dimension in result.tensors:
        if dtype not in ENUM_BY_DTYPE:  # bool, strings, int4: the protocol has no DataType for them
            hidden.append((name, index))
            no_wire_type += 1
            continue
        response.tensors.add(name=name, index=index,
                             tensor=agent_pb2.Tensor(shape=shape, dtype=ENUM_BY_DTYPE[dtype], data=data),
                             scales=scales, zero_points=zero_points, quantized_dimension=quantized_dimension)
    for name, index in hidden:
        response.hidden.append(name)
        response.hidden_indices.append(index)
    if no_wire_type:
        extra = f"{no_wire_type} tensor(s) have a dtype the protocol cannot carry (listed in hidden)"
        response.note = f"{response.note}; {extra}" if response.note else extra
    return response


def check_load_request(request: agent_pb2.LoadModelRequest, cpu_count: int) -> None:
    """Check LoadModel's threads, preprocessing values and name before a worker starts.

    Args:
        request: the LoadModel request.
        cpu_count: the device's CPUs (GetDeviceInfo's ``cpu_count``); bounds ``threads``.

    Raises:
        AgentInvalidRequestError: threads above :data:`MAX_THREADS_PER_CPU` per CPU; a mean or std
            that is NaN or infinite; a zero std; too many values; a name too long.
    """
    max_threads = MAX_THREADS_PER_CPU * max(1, cpu_count)
    if request.threads > max_threads:
        raise AgentInvalidRequestError(
            f"threads={request.threads} is more than this device can use: at most {max_threads} "
            f"({MAX_THREADS_PER_CPU} per CPU, {cpu_count} CPUs); 0 picks the runtime's default"
        )
    for field_name in ("mean", "std"):
        values = list(getattr(request.preprocessing, field_name))
        if len(values) > MAX_PREPROCESSING_VALUES:
            raise AgentInvalidRequestError(
                f"preprocessing {field_name} has {len(values)} values; send one, or one per input channel"
            )
        if not all(math.isfinite(v) for v in values):
            raise AgentInvalidRequestError(f"preprocessing {field_name} must be finite numbers, got {values}")
    if any(v == 0 for v in request.preprocessing.std):
        raise AgentInvalidRequestError(
            f"preprocessing std must be non-zero (it divides each pixel), got {list(request.preprocessing.std)}"
        )
    if len(request.name) > MAX_MODEL_NAME_CHARS:
        raise AgentInvalidRequestError(
            f"model name is {len(request.name)} characters, more than {MAX_MODEL_NAME_CHARS}: "
            f"{shorten(request.name)!r}; it is only a label, send a shorter one"
        )


def check_preprocessing_fits(preprocessing: agent_pb2.Preprocessing, input_spec: runtime.TensorSpec) -> None:
    """Check that mean and std each have one value or one per channel of the model's input.

    Raises:
        AgentInvalidRequestError: another count.
    """
    channels = int(input_spec.shape[-1]) if input_spec.shape else 1
    for field_name in ("mean", "std"):
        count = len(getattr(preprocessing, field_name))
        if count not in (0, 1, channels):
            raise AgentInvalidRequestError(
                f"preprocessing {field_name} has {count} values but the model's input has {channels} channel(s) "
                f"(shape {tuple(input_spec.shape)}); send one value or {channels}"
            )


def _await_grpc_status(context: grpc.ServicerContext) -> None:
    """When gRPC itself ended a stream (a request it could not decode), wait until its status is sent.

    Returning from the handler makes gRPC send a second status; racing the first, that one can
    be left incomplete in gRPC core, and the server's shutdown would then wait for it forever.
    Once the call has terminated, the second status is dropped harmlessly.
    """
    if context.is_active():
        return
    terminated = threading.Event()
    if context.add_callback(terminated.set):
        terminated.wait(_STATUS_WAIT_S)


def _spec_message(spec: runtime.TensorSpec) -> agent_pb2.TensorSpec:
    return agent_pb2.TensorSpec(name=spec.name, shape=spec.shape, dtype=ENUM_BY_DTYPE.get(spec.dtype, 0),
                                scale=spec.scale, zero_point=spec.zero_point)


def _response(request_id: int, result: InferResult, start_ns: int) -> agent_pb2.InferResponse:
    response = agent_pb2.InferResponse(request_id=request_id, invoke_latency_us=result.invoke_latency_us,
                                       run_latency_us=result.run_latency_us)
    for shape, data in result.outputs:
        response.outputs.add(shape=shape, dtype=agent_pb2.DATA_TYPE_FLOAT32, data=data)
    response.server_latency_us = (time.perf_counter_ns() - start_ns) // 1000
    return response


@dataclass
class Agent:
    """A started agent: the gRPC server, its bound port, and what to close on shutdown."""

    server: grpc.Server
    port: int
    servicer: AgentServicer
    health: health.HealthServicer

    def stop(self, grace_s: float | None = SHUTDOWN_GRACE_S) -> None:
        """Stop taking calls, let in-flight ones finish for up to ``grace_s``, then stop the workers.

        Bounded: after ``grace_s`` plus :data:`SHUTDOWN_MARGIN_S` the workers are stopped even if
        gRPC still reports a call in progress.
        """
        self.health.enter_graceful_shutdown()
        bound_s = (grace_s or 0.0) + SHUTDOWN_MARGIN_S
        if not self.server.stop(grace_s).wait(bound_s):
            log.warning("gRPC did not finish every call within %.0f s of the shutdown; stopping anyway", bound_s)
        self.servicer.sessions.close()


def create_server(config: AgentConfig) -> Agent:
    """Build and start the agent's gRPC server as ``config`` says.

    Raises:
        RuntimeError: the address cannot be bound.
    """
    cache_dir = config.cache_dir or default_cache_dir()
    _quiet_grpc_decode_errors()
    cache = ModelCache(cache_dir, config.cache_max_bytes)
    sessions = SessionManager(cache, config.max_batch_bytes, config.max_sessions, config.allowed_delegates,
                              worker_cpus=config.worker_cpus)
    interceptors = [TokenAuthInterceptor(config.token)] if config.token else []
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 0),  # a second agent on the same port must fail, not share it
    ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=config.handler_threads, thread_name_prefix="rpc"),
                         interceptors=interceptors, options=options)
    servicer = AgentServicer(config, cache, sessions)
    agent_pb2_grpc.add_AgentServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service in ("", SERVICE_NAME):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"[{config.host}]:{config.port}" if ":" in config.host else f"{config.host}:{config.port}"
    if config.tls_cert is not None:
        credentials = grpc.ssl_server_credentials([(config.tls_key, config.tls_cert)])
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
    if not port:
        raise RuntimeError(f"cannot listen on {address}: is another process using the port?")
    server.start()
    log.info("agent %s serving %s on %s:%d (protocol %d.%d, cache %s, token %s, tls %s)", __version__, SERVICE_NAME,
             config.host, port, PROTOCOL_MAJOR, PROTOCOL_MINOR, cache_dir, "on" if config.token else "off",
             "on" if config.tls_cert else "off")
    return Agent(server, port, servicer, health_servicer)


class _OneLineErrors(logging.Filter):
    """Turns a gRPC log record's traceback into one line: a client's undecodable message is its
    mistake, not the agent's, and a fuzzing client would otherwise fill the log with tracebacks."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()} ({type(exc).__name__}: {shorten(str(exc), 200)})"
            record.args = ()
            record.levelno, record.levelname = logging.WARNING, "WARNING"  # the client's fault
            record.exc_info = None
            record.exc_text = None
        return True


#: gRPC's logger reporting requests it could not decode ("Exception deserializing message!").
_GRPC_DECODE_LOGGER = "grpc._common"


def _quiet_grpc_decode_errors() -> None:
    logger = logging.getLogger(_GRPC_DECODE_LOGGER)
    if not any(isinstance(f, _OneLineErrors) for f in logger.filters):
        logger.addFilter(_OneLineErrors())


@contextlib.contextmanager
def run_server(port: int = 0, host: str = "127.0.0.1", *, token: str | None = None,
               cache_dir: str = "", allowed_delegates: Sequence[str] = (), grace_s: float = 0.0,
               **config_fields) -> Iterator[int]:
    """Run an agent in this process for the duration of a ``with`` block; yields the bound port.

    Args:
        port: 0 picks a free port.
        host: the address to bind.
        token: required bearer token, or None.
        cache_dir: model store ("" for the default).
        allowed_delegates: libraries ``external:`` delegates may load.
        grace_s: how long in-flight calls get on exit.
        **config_fields: any other :class:`AgentConfig` field.
    """
    config = AgentConfig(host=host, port=port, token=token, cache_dir=cache_dir,
                         allowed_delegates=tuple(allowed_delegates), **config_fields)
    agent = create_server(config)
    try:
        yield agent.port
    finally:
        agent.stop(grace_s)
