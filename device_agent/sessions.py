"""Loaded models: one worker process per session, request validation, restart after a crash.

The servicer in ``server.py`` only translates protobuf messages; everything a request must
satisfy (known session, shape, dtype, byte length, size limits) is checked here, before any
byte reaches a worker, so a malformed request never costs a worker.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import secrets
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from device_agent import runtime
from device_agent.cache import ModelCache, check_sha256
from device_agent.errors import (
    AgentInvalidRequestError,
    AgentShuttingDownError,
    AgentWorkerCrashedError,
    LimitExceededError,
    NotFoundError,
)
from device_agent.worker import (
    FAULT_OPTION,
    FAULTS,
    RESERVED_OPTION_PREFIX,
    LoadResult,
    LoadSpec,
    Worker,
    fault_injection_enabled,
)

log = logging.getLogger(__name__)

#: Default limit on loaded sessions: each is a process holding an interpreter (tens of MB), and a
#: search needs two (original + compressed) per delegate compared.
DEFAULT_MAX_SESSIONS = 16
#: Input dtypes a request may name, by numpy name.
INPUT_DTYPES = ("uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64")


@dataclass(frozen=True)
class LoadRequest:
    """A validated LoadModel request, independent of protobuf."""

    sha256: str
    delegate: str = "cpu"
    delegate_options: Mapping[str, str] = field(default_factory=dict)
    threads: int = 0
    mean: Sequence[float] = ()
    std: Sequence[float] = ()
    name: str = ""


@dataclass
class Session:
    """One loaded model and the worker running it."""

    id: str
    request: LoadRequest
    spec: LoadSpec
    result: LoadResult
    worker: Worker
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def label(self) -> str:
        return f"{self.request.name or self.request.sha256[:12]} on {self.result.delegate} (session {self.id})"


class SessionManager:
    """Creates, runs and releases sessions.

    Args:
        cache: where uploaded models are stored.
        max_batch_bytes: the largest input batch accepted, in bytes.
        max_sessions: the most sessions loaded at once.
        allowed_external: library paths ``external:`` delegates may load.
        worker_cpus: CPUs every worker is pinned to (empty: not pinned).
    """

    def __init__(self, cache: ModelCache, max_batch_bytes: int, max_sessions: int = DEFAULT_MAX_SESSIONS,
                 allowed_external: Sequence[str] = (), worker_cpus: Sequence[int] = ()) -> None:
        self.cache = cache
        self.worker_cpus = tuple(worker_cpus)
        self.max_batch_bytes = int(max_batch_bytes)
        self.max_sessions = int(max_sessions)
        self.allowed_external = tuple(allowed_external)
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._loading = 0
        self._closed = False

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    # -- load / unload ----------------------------------------------------------------------------
    def load(self, request: LoadRequest) -> Session:
        """Start a worker and load the model in it.

        Raises:
            AgentInvalidRequestError: bad digest, delegate name, threads, preprocessing or options.
            NotFoundError: the model is not in the cache.
            LimitExceededError: too many sessions.
            RuntimeDelegateUnavailableError: the delegate is missing here.
            ModelFormatError: the runtime refused the model.
            AgentWorkerCrashedError: loading crashed the worker.
        """
        spec_without_path = self._load_spec(request, model_path="")
        with self._lock:
            if self._closed:
                raise AgentShuttingDownError("the agent is shutting down; retry on a restarted agent")
            if len(self._sessions) + self._loading >= self.max_sessions:
                raise LimitExceededError(
                    f"{self.max_sessions} sessions are loaded, the agent's limit (--max-sessions); "
                    "unload a session first"
                )
            self._loading += 1
        try:
            path = self.cache.pin(request.sha256)
            try:
                spec = LoadSpec(**{**spec_without_path.__dict__, "model_path": str(path)})
                label = f"{request.name or request.sha256[:12]}/{spec.delegate}"
                worker, result = self._start_worker(label, spec)
            except BaseException:
                self.cache.unpin(request.sha256)
                raise
            session = Session(secrets.token_hex(8), request, spec, result, worker)
            with self._lock:
                self._sessions[session.id] = session
        finally:
            with self._lock:
                self._loading -= 1
        log.info("loaded %s: delegated nodes %d, cpu ops %s, %d us", session.label, result.delegated_nodes,
                 result.cpu_ops, result.load_latency_us)
        return session

    def _load_spec(self, request: LoadRequest, model_path: str) -> LoadSpec:
        check_sha256(request.sha256)
        try:
            delegate = runtime.parse_delegate(request.delegate or "cpu")
        except ValueError as exc:
            raise AgentInvalidRequestError(str(exc)) from None
        if request.threads < 0:
            raise AgentInvalidRequestError(f"threads must be >= 0 (0: the runtime's default), got {request.threads}")
        try:
            preprocessing = runtime.Preprocessing(tuple(request.mean) or (0.0,), tuple(request.std) or (1.0,))
        except ValueError as exc:
            raise AgentInvalidRequestError(str(exc)) from None
        options = dict(request.delegate_options)
        fault = options.pop(FAULT_OPTION, "")
        reserved = sorted(k for k in options if k.startswith(RESERVED_OPTION_PREFIX))
        if reserved:
            raise AgentInvalidRequestError(
                f"delegate options {reserved} use the reserved prefix {RESERVED_OPTION_PREFIX!r}")
        if fault and (not fault_injection_enabled() or fault not in FAULTS):
            raise AgentInvalidRequestError(
                f"delegate option {FAULT_OPTION!r} is for tests only (agent started with "
                f"DFLARE_AGENT_FAULT_INJECTION=1, values {', '.join(FAULTS)})"
            )
        return LoadSpec(model_path, str(delegate), request.threads or None, preprocessing.to_dict(),
                        self.allowed_external, options, fault)

    def _start_worker(self, label: str, spec: LoadSpec) -> tuple[Worker, LoadResult]:
        worker = Worker(label, self.max_batch_bytes, self.worker_cpus)
        try:
            worker.start()
            return worker, worker.load(spec)
        except BaseException:
            worker.close()
            raise

    def unload(self, session_id: str) -> None:
        """Stop a session's worker and let its model be evicted again.

        Raises:
            NotFoundError: unknown session.
        """
        with self._lock:
            session = self._sessions.pop(session_id, None)
        if session is None:
            raise self._unknown(session_id)
        session.worker.close()
        self.cache.unpin(session.request.sha256)
        log.info("unloaded %s", session.label)

    def close(self) -> None:
        """Stop every worker (agent shutdown)."""
        with self._lock:
            self._closed = True
            sessions = list(self._sessions.values())
            self._sessions.clear()
        for session in sessions:
            session.worker.close()
            self.cache.unpin(session.request.sha256)

    # -- inference --------------------------------------------------------------------------------
    def get(self, session_id: str) -> Session:
        """Raises: NotFoundError: unknown session."""
        with self._lock:
            session = self._sessions.get(session_id)
        if session is None:
            raise self._unknown(session_id)
        return session

    @staticmethod
    def _unknown(session_id: str) -> NotFoundError:
        return NotFoundError(
            f"unknown session {session_id!r}: it was unloaded or the agent restarted; load the model again"
        )

    def submit(self, session_id: str, shape: Sequence[int], dtype: str, data: bytes) -> Future:
        """Validate one batch and queue it on the session's worker.

        Returns:
            A future resolving to a :class:`~device_agent.worker.InferResult`.

        Raises:
            NotFoundError: unknown session.
            AgentInvalidRequestError: shape, dtype or byte length do not fit the model.
            LimitExceededError: the batch is larger than ``max_batch_bytes``.
            AgentWorkerCrashedError: the worker died and could not be restarted.
        """
        session = self.get(session_id)
        shape = validate_batch(session, shape, dtype, len(data), self.max_batch_bytes)
        worker = self._live_worker(session)
        try:
            return worker.submit(data, shape, dtype)
        except AgentWorkerCrashedError:
            self.restart_in_background(session)
            raise

    def tensors(self, session_id: str, shape: Sequence[int], dtype: str, data: bytes, names: Sequence[str],
                indices: Sequence[int], limit_bytes: int, limit_reason: str) -> Future:
        """Validate one image and queue a GetTensors on the session's worker (see ``Worker.tensors``).

        Returns:
            A future resolving to a :class:`~device_agent.worker.TensorsResult`.

        Raises:
            NotFoundError: unknown session.
            AgentInvalidRequestError: the input is not one image that fits the model.
            AgentWorkerCrashedError: the worker died and could not be restarted.
        """
        session = self.get(session_id)
        shape = validate_batch(session, shape, dtype, len(data), self.max_batch_bytes)
        if shape[0] != 1:
            raise AgentInvalidRequestError(f"GetTensors takes one image, shape (1, {', '.join(map(str, shape[1:]))}); "
                                      f"got a batch of {shape[0]}")
        worker = self._live_worker(session)
        try:
            return worker.tensors(data, shape, dtype, names, indices, limit_bytes, limit_reason)
        except AgentWorkerCrashedError:
            self.restart_in_background(session)
            raise

    def _live_worker(self, session: Session) -> Worker:
        with session.lock:
            if session.worker.alive:
                return session.worker
            log.warning("restarting the worker for %s", session.label)
            session.worker.close()
            # An injected test fault fires in a session's first worker only, so tests can show
            # that the session serves again after the restart.
            session.spec = dataclasses.replace(session.spec, fault="")
            session.worker, session.result = self._start_worker(session.worker.name, session.spec)
            return session.worker

    def restart_in_background(self, session: Session) -> None:
        """Start a fresh worker for a session whose worker died, without making the caller wait."""

        def restart() -> None:
            try:
                self._live_worker(session)
            except Exception as exc:  # noqa: BLE001 - the next request retries and reports it
                log.error("could not restart the worker for %s: %s", session.label, exc)

        threading.Thread(target=restart, name=f"restart[{session.id}]", daemon=True).start()


def validate_batch(session: Session, shape: Sequence[int], dtype: str, nbytes: int, max_batch_bytes: int) -> tuple:
    """Check a batch against the session's model and the agent's limits; return its shape as a tuple.

    Raises:
        AgentInvalidRequestError: shape, dtype or byte length do not fit.
        LimitExceededError: the batch exceeds ``max_batch_bytes``.
    """
    spec = session.result.input_spec
    image_shape = tuple(int(d) for d in spec.shape[1:])
    expected = f"(N, {', '.join(map(str, image_shape))})"
    shape = tuple(int(d) for d in shape)
    model = session.request.name or session.request.sha256[:12]
    if dtype not in INPUT_DTYPES:
        raise AgentInvalidRequestError(f"input dtype {dtype!r} is not supported: send uint8 images")
    if dtype != "uint8" and dtype != spec.dtype:
        raise AgentInvalidRequestError(
            f"input dtype {dtype} does not fit model {model}: send uint8 images or {spec.dtype} tensors"
        )
    if len(shape) != 4 or shape[1:] != image_shape:
        raise AgentInvalidRequestError(f"input shape {shape} does not fit model {model}: expected {expected} NHWC")
    if shape[0] < 1:
        raise AgentInvalidRequestError(f"input batch is empty (shape {shape}): send at least one image")
    expected_bytes = math.prod(shape) * np.dtype(dtype).itemsize  # math.prod: np.prod costs ~10 us
    if nbytes != expected_bytes:
        raise AgentInvalidRequestError(
            f"input data is {nbytes} bytes but shape {shape} of {dtype} needs {expected_bytes} bytes"
        )
    if nbytes > max_batch_bytes:
        per_image = expected_bytes // shape[0]
        raise LimitExceededError(
            f"batch is {nbytes} bytes, over this agent's limit of {max_batch_bytes} bytes (--max-batch-bytes); "
            f"send at most {max(1, max_batch_bytes // per_image)} images per batch"
        )
    return shape
