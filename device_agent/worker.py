"""Model execution in a child process, so a native crash costs one request, never the agent.

Each loaded session owns one :class:`Worker`: a child process holding one
:class:`~device_agent.runtime.ModelRunner`. The agent talks to it over a pipe carrying small
control messages; image batches and outputs travel through shared-memory slots (an anonymous
``memfd_create`` region, or a file in /dev/shm, mapped by both processes: :mod:`device_agent.shm`),
so a batch is copied once into the slot and read in place by the interpreter. A worker has
:data:`IN_FLIGHT_SLOTS` slots: while it runs one batch the agent can already copy the next ones in,
which is what lets ``InferStream`` keep the interpreter busy.

When the child dies (SIGSEGV, SIGABRT from a broken delegate or model), every request it held
fails with :class:`~device_agent.errors.WorkerCrashedError` naming the signal and what it was
doing; the session's owner starts a fresh worker for the next request.

Test-only fault injection: when the agent's environment has ``DFLARE_AGENT_FAULT_INJECTION=1``,
the delegate option ``dflare.fault`` (``abort_on_load``, ``abort_on_infer``, ``segv_on_infer``)
makes the worker crash on purpose. Without the variable the option is refused.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import mmap
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Sequence

import numpy as np

from device_agent import launch, runtime, shm
from device_agent.errors import (
    AgentInvalidRequestError,
    AgentWorkerCrashedError,
    InputError,
    LimitExceededError,
    ModelFormatError,
    RuntimeDelegateUnavailableError,
)

log = logging.getLogger(__name__)

#: Batches one worker may hold at once (one running, the rest copied in and queued). Two hide the
#: agent's per-request overhead behind the interpreter; four leave room for a few client threads.
IN_FLIGHT_SLOTS = 4

#: Environment variable enabling the ``dflare.fault`` delegate option (tests only).
FAULT_INJECTION_ENV = "DFLARE_AGENT_FAULT_INJECTION"
#: Delegate option naming a fault to inject (only with :data:`FAULT_INJECTION_ENV` set).
FAULT_OPTION = "dflare.fault"
FAULTS = ("abort_on_load", "abort_on_infer", "segv_on_infer")
#: Delegate-option keys starting with this are the agent's own and never reach a delegate.
RESERVED_OPTION_PREFIX = "dflare."

#: How long a stopping worker may take to exit before it is killed; exiting frees an interpreter
#: and a few mappings, well under a second even on a slow phone.
_STOP_TIMEOUT_S = 3.0
#: How long to wait for a dead worker's exit status; the pipe closes as the process exits.
_REAP_TIMEOUT_S = 2.0
#: Longest wait for a slot held by a caller still copying its batch in; every change notifies, so
#: this only bounds a wait that a missed notification would otherwise make endless.
_SLOT_WAIT_S = 0.05
#: Floor of a batch's execution timeout: covers a first batch (nothing measured yet), a delegate
#: compiling its kernels on the first invoke and a busy phone, while still ending a hung model.
MIN_BATCH_TIMEOUT_S = 30.0
#: A batch may take this many times the slowest time per image measured so far before it counts
#: as hung: far beyond scheduling noise, and a hang is forever.
BATCH_TIMEOUT_FACTOR = 50.0
#: Environment variable fixing every batch's execution timeout in seconds (instead of deriving it).
BATCH_TIMEOUT_ENV = "DFLARE_AGENT_BATCH_TIMEOUT_S"
#: How often a reader waiting for a reply re-checks the running batch's timeout.
_TIMEOUT_CHECK_S = 1.0
#: Memory one invoke's activations may take in a worker: a larger batch runs as several invokes of
#: images that fit (same outputs), since the interpreter's arena grows with the batch (1,024 images
#: of a wide conv net take hundreds of MB) while the byte cap on a batch only bounds its input.
DEFAULT_BATCH_MEMORY_BYTES = 256 << 20
#: Environment variable setting that budget in bytes.
BATCH_MEMORY_ENV = "DFLARE_AGENT_BATCH_MEMORY_BYTES"
#: Images of the batch run at load to measure the interpreter's memory per image.
_PROBE_IMAGES = 8
#: A GetTensors call may run as long as a batch of this many images: it may build an interpreter
#: (the first call) and it invokes twice, the kept-tensor interpreter and the session's own.
_TENSORS_TIMEOUT_IMAGES = 4

_ERROR_KINDS: dict[str, type[Exception]] = {
    "model_format": ModelFormatError,
    "input": InputError,
    "delegate_unavailable": RuntimeDelegateUnavailableError,
    "invalid": AgentInvalidRequestError,
    "limit": LimitExceededError,
}


def configured_batch_timeout_s() -> float | None:
    """The batch execution timeout fixed by ``$DFLARE_AGENT_BATCH_TIMEOUT_S``, or None (derive it)."""
    text = os.environ.get(BATCH_TIMEOUT_ENV, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        log.warning("ignoring %s=%r: expected a positive number of seconds", BATCH_TIMEOUT_ENV, text)
        return None
    return value


def fault_injection_enabled() -> bool:
    """True when the test-only ``dflare.fault`` option is honoured."""
    return os.environ.get(FAULT_INJECTION_ENV) == "1"


@dataclass(frozen=True)
class LoadSpec:
    """Everything a worker needs to build its interpreter (picklable)."""

    model_path: str
    delegate: str
    threads: int | None
    preprocessing: dict
    allowed_external: tuple[str, ...]
    delegate_options: dict[str, str]
    fault: str = ""


@dataclass(frozen=True)
class LoadResult:
    """What the worker reports after loading."""

    input_spec: runtime.TensorSpec
    output_specs: list[runtime.TensorSpec]
    delegated_nodes: int
    cpu_ops: list[str]
    delegate: str
    load_latency_us: int


@dataclass(frozen=True)
class InferResult:
    """One batch's outputs (float32 bytes with their shapes) and the interpreter's latency."""

    outputs: list[tuple[tuple[int, ...], bytes]]
    invoke_latency_us: int
    run_latency_us: int


@dataclass(frozen=True)
class TensorsResult:
    """One image's intermediate tensors, read by the worker (see :class:`runtime.TensorReader`).

    Attributes:
        tensors: (name, index, shape, dtype, bytes, scales, zero_points, quantized_dimension) each.
        hidden: (name, index) of the tensors asked for that the delegate keeps to itself.
        note: what a person should know about them ("" when nothing).
        delegate: the delegate that ran the image.
        outputs_identical: the outputs equal the session's own interpreter's, bit for bit.
        invoke_latency_us: the interpreter's invoke() time.
    """

    tensors: list[tuple[str, int, tuple[int, ...], str, bytes, tuple[float, ...], tuple[int, ...], int]]
    hidden: list[tuple[str, int]]
    note: str
    delegate: str
    outputs_identical: bool
    invoke_latency_us: int


class _Slot:
    """One shared-memory region: input batch at offset 0, outputs after ``input_bytes``."""

    def __init__(self, input_bytes: int, output_bytes: int) -> None:
        self.input_bytes = input_bytes
        self.size = input_bytes + output_bytes
        # path is None for a memfd region: its fd goes to the worker over the socket (see load()).
        self.fd, self.path = shm.create_region(self.size)
        try:
            self.map = mmap.mmap(self.fd, self.size)
        except BaseException:
            os.close(self.fd)
            raise
        self.view = memoryview(self.map)

    def release_fd(self) -> None:
        """Close our descriptor once the worker holds its own mapping (the region lives on in both)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def unlink(self) -> None:
        self.release_fd()
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def close(self) -> None:
        self.unlink()
        self.view.release()
        self.map.close()


def describe_exit(exitcode: int | None) -> str:
    """Describe a child's exit status: ``killed by SIGSEGV``, ``exit code 3``."""
    if exitcode is None:
        return "exit status unknown"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


def _child_env() -> dict[str, str]:
    """The agent's environment, with the directory (or zipapp) holding ``device_agent`` on PYTHONPATH.

    The agent may run from a checkout, a wheel or the ``dflare-agent.pyz`` zipapp that
    ``dflare deploy`` pushes; the child must import the same ``device_agent`` in every case.
    """
    import device_agent

    root = os.path.dirname(os.path.dirname(os.path.abspath(device_agent.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


class _WorkerFuture(Future):
    """A future whose ``result()`` reads the worker's replies itself (no reader thread to wake)."""

    def __init__(self, worker: Worker) -> None:
        super().__init__()
        self._worker = worker
        #: Set by submit for a batch: its execution timeout, and when it was queued.
        self.timeout_s: float | None = None
        self.queued_at = 0.0

    def result(self, timeout: float | None = None):
        self._worker._drive(self)
        return super().result(timeout)


class Worker:
    """A child process running one model; thread-safe, with up to :data:`IN_FLIGHT_SLOTS` batches queued.

    Replies are read by whichever caller is waiting (one at a time, under ``_recv_lock``): the
    worker answers in order, so the reader resolves the oldest pending future, its own or another
    caller's. This saves a thread hand-off per batch compared with a dedicated reader thread.

    Args:
        name: a label for logs and error messages (the model's name and delegate).
        max_batch_bytes: the largest input batch a slot must hold.
        cpus: CPUs the child runs on (its interpreter threads too); empty: wherever the agent runs.
    """

    def __init__(self, name: str, max_batch_bytes: int, cpus: Sequence[int] = (),
                 batch_timeout_s: float | None = None) -> None:
        self.name = name
        # None: derived from the measured latency (see batch_timeout); $DFLARE_AGENT_BATCH_TIMEOUT_S fixes it.
        self.fixed_batch_timeout_s = batch_timeout_s or configured_batch_timeout_s()
        self._slowest_s_per_image = 0.0
        self._last_reply_at = 0.0
        self.max_batch_bytes = max_batch_bytes
        self.cpus = tuple(int(c) for c in cpus)
        self._conn: Connection | None = None
        self._process: subprocess.Popen | None = None
        self._send_lock = threading.Lock()
        # Notified (under _send_lock) whenever a slot is freed or a batch is queued: a submitter
        # finding no free slot and nothing queued waits here (see submit).
        self._slots_changed = threading.Condition(self._send_lock)
        self._recv_lock = threading.Lock()
        self._pending: collections.deque[tuple[Future, int | None, str]] = collections.deque()
        self._slots: list[_Slot] = []
        self._free_slots: list[int] = []
        self._dead_reason: str | None = None
        # Set by load(): uint8 batches are normalized/quantized here, straight into the slot, while
        # the child runs the previous batch (see _write_batch).
        self._input_spec: runtime.TensorSpec | None = None
        self._preprocessing = runtime.Preprocessing()

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the child process (``python -m device_agent.worker``), connected by a socket pair.

        A fresh interpreter rather than ``multiprocessing``: the child inherits no gRPC threads
        and never re-imports the agent's ``__main__``.
        """
        parent_sock, child_sock = socket.socketpair()
        # launch.python_command(): sys.executable, or the loader-prefixed command of the Android runtime.
        command = [*launch.python_command(), "-m", "device_agent.worker", str(child_sock.fileno())]
        if self.cpus:
            command.append(",".join(map(str, self.cpus)))
        try:
            self._process = subprocess.Popen(
                command,
                pass_fds=[child_sock.fileno()],
                stdin=subprocess.DEVNULL,
                close_fds=True,
                env=_child_env(),
            )
        finally:
            child_sock.close()
        self._conn = Connection(parent_sock.detach())

    @property
    def alive(self) -> bool:
        """False once the child died or was stopped (also when it died while idle)."""
        return self._dead_reason is None and self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def load(self, spec: LoadSpec) -> LoadResult:
        """Build the interpreter in the child, then map the shared-memory slots.

        Raises:
            ModelFormatError, RuntimeDelegateUnavailableError, AgentInvalidRequestError: the
                runtime refused the model or delegate.
            AgentWorkerCrashedError: the child died while loading.
        """
        result: LoadResult = self._call(("load", spec), "loading the model").result()
        image_bytes = int(np.prod(result.input_spec.shape[1:]))  # uint8: the smallest accepted input
        max_images = max(1, self.max_batch_bytes // max(1, image_bytes))
        output_bytes = max_images * sum(int(np.prod(s.shape[1:])) for s in result.output_specs) * 4
        slots = [_Slot(self.max_batch_bytes, output_bytes) for _ in range(IN_FLIGHT_SLOTS)]
        try:
            fds = [s.fd for s in slots if s.path is None]
            self._call(("attach", [(s.path, s.size, s.input_bytes) for s in slots], len(fds)), "mapping shared memory",
                       fds=fds).result()
        finally:
            for slot in slots:
                slot.unlink()  # both processes hold mappings now; the name is no longer needed
        with self._send_lock:
            self._slots = slots
            self._free_slots = list(range(len(slots)))
        self._input_spec = result.input_spec
        self._preprocessing = runtime.Preprocessing.from_dict(spec.preprocessing)
        return result

    def close(self) -> None:
        """Stop the child (politely, then by force) and release the slots."""
        process = self._process
        if process is None:
            return
        if self._dead_reason is None:
            try:
                with self._send_lock:
                    self._conn.send(("stop",))
            except (OSError, ValueError):
                pass
        try:
            code = process.wait(_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(_REAP_TIMEOUT_S)
            code = 0  # it ignored "stop": it did not die by itself
        # A child that died by itself (a crashing model) is reported as such, even when this close
        # (a restart) wins the race against the reader that would have reported it.
        self._fail_pending("stopped" if code == 0 else describe_exit(code))
        if self._conn is not None:
            self._conn.close()
        for slot in self._slots:
            with contextlib.suppress(BufferError):  # a caller still holds a view: freed when collected
                slot.close()
        self._slots = []

    # -- requests -------------------------------------------------------------------------------
    def submit(self, data: bytes | memoryview, shape: Sequence[int], dtype: str) -> Future:
        """Queue one batch; the future resolves to an :class:`InferResult`.

        Blocks while all slots are in flight (reading replies to free one).

        Raises:
            AgentWorkerCrashedError: the worker is already dead (via the future when it dies later).
        """
        nbytes = len(data)
        if nbytes > self.max_batch_bytes:
            raise AgentInvalidRequestError(f"batch of {nbytes} bytes exceeds the slot size {self.max_batch_bytes}")
        while True:
            with self._send_lock:
                if self._dead_reason is not None:
                    raise self._crash_error("waiting for a free slot")
                if self._free_slots:
                    index = self._free_slots.pop()
                    break
                if not self._pending:
                    # Every slot is held by a caller still copying its batch in (not queued yet) or
                    # by a reply being read out (dequeued, not yet freed): no reply to wait for, so
                    # wait for one of them to queue its batch or free its slot.
                    self._slots_changed.wait(_SLOT_WAIT_S)
                    continue
                oldest = self._pending[0][0]
            self._drive(oldest)  # frees a slot, even one whose caller went away
        shape = tuple(int(d) for d in shape)
        try:
            dtype, prepared = self._write_batch(self._slots[index], data, shape, dtype)
        except Exception:
            with self._send_lock:
                self._free_slots.append(index)
                self._slots_changed.notify_all()
            if self._dead_reason is not None:  # closed under us (a restart): its slots are gone
                raise self._crash_error(f"writing a batch of shape {shape}") from None
            raise
        future = self._call(("infer", index, shape, dtype, prepared), f"running a batch of shape {shape}", slot=index)
        future.queued_at = time.monotonic()
        future.timeout_s = self.batch_timeout(shape[0])
        return future

    def batch_timeout(self, images: int) -> float:
        """Seconds a batch of ``images`` may run before the worker is killed as hung.

        The fixed timeout when one is configured, else :data:`BATCH_TIMEOUT_FACTOR` times the
        slowest time per image measured on this worker, at least :data:`MIN_BATCH_TIMEOUT_S`.
        """
        if self.fixed_batch_timeout_s:
            return self.fixed_batch_timeout_s
        return max(MIN_BATCH_TIMEOUT_S, BATCH_TIMEOUT_FACTOR * self._slowest_s_per_image * images)

    def _write_batch(self, slot: _Slot, data: bytes | memoryview, shape: tuple[int, ...],
                     dtype: str) -> tuple[str, bool]:
        """Put a batch in a slot; return the dtype written and whether it is the model's input tensor.

        uint8 images are normalized and quantized here, in the caller's thread, rather than in
        the child: the agent prepares batch k+1 on one core while the interpreter runs batch k on
        another, and the child's share of the work (its critical path) shrinks to invoke. The
        arithmetic is :func:`runtime.prepare_input`, the same the child would run, so the bytes
        are identical. A batch whose tensor would not fit the slot goes as uint8 (the child prepares it).

        Raises:
            AgentInvalidRequestError: the model's preprocessing does not fit the images.
        """
        spec = self._input_spec
        if dtype == "uint8" and spec is not None and runtime.needs_preparation(spec):
            itemsize = np.dtype(spec.dtype).itemsize
            count = math.prod(shape)
            if count * itemsize <= slot.input_bytes:
                images = np.frombuffer(data, dtype=np.uint8, count=count).reshape(shape)
                out = np.frombuffer(slot.map, dtype=spec.dtype, count=count).reshape(shape)
                try:
                    runtime.prepare_input(images, spec, self._preprocessing, out=out)
                except InputError as exc:
                    raise AgentInvalidRequestError(str(exc)) from None
                finally:
                    del out  # release the slot's buffer export (close() must be able to unmap)
                return spec.dtype, True
        slot.view[: len(data)] = data
        return dtype, False

    def infer(self, data: bytes | memoryview, shape: Sequence[int], dtype: str) -> InferResult:
        """Run one batch and wait for it (see :meth:`submit`)."""
        return self.submit(data, shape, dtype).result()

    def tensors(self, data: bytes, shape: Sequence[int], dtype: str, names: Sequence[str], indices: Sequence[int],
                limit_bytes: int, limit_reason: str) -> Future:
        """Queue one image for :class:`runtime.TensorReader`; the future resolves to a :class:`TensorsResult`.

        The image and the tensors travel over the pipe, not through a slot: this is a debugging call
        for one image, and its reply can be far larger than a slot's outputs.

        Args:
            data, shape, dtype: the image, (1, H, W, C), uint8 or the model's input dtype.
            names, indices: the tensors asked for (both empty: every activation).
            limit_bytes: the most tensor data the reply may carry.
            limit_reason: where that limit comes from, for the error message.

        Raises (through the future):
            InputError: an unknown name or index, or an image that does not fit.
            LimitExceededError: the tensors hold more than ``limit_bytes``.
            AgentWorkerCrashedError: the worker died.
        """
        shape = tuple(int(d) for d in shape)
        future = self._call(("tensors", bytes(data), shape, dtype, list(names), [int(i) for i in indices],
                             int(limit_bytes), limit_reason), f"reading the tensors of an image of shape {shape}")
        future.queued_at = time.monotonic()
        # Building the kept-tensor interpreter (first call) and two invokes: a batch of a few images.
        future.timeout_s = self.batch_timeout(_TENSORS_TIMEOUT_IMAGES)
        return future

    def _call(self, message: tuple, what: str, slot: int | None = None, fds: Sequence[int] = ()) -> Future:
        future = _WorkerFuture(self)
        with self._send_lock:
            if self._dead_reason is None:
                self._pending.append((future, slot, what))
                try:
                    self._conn.send(message)
                    if fds:  # right behind the message, under the same lock: the child reads them next
                        shm.send_fds(self._conn, list(fds))
                    return future
                except (OSError, ValueError):
                    self._pending.pop()
                finally:
                    self._slots_changed.notify_all()
            if slot is not None:
                self._free_slots.append(slot)
                self._slots_changed.notify_all()
        if self._dead_reason is None:  # the send failed: the child is gone; collect its status
            self._on_child_exit()
        raise self._crash_error(what)

    def _crash_error(self, what: str) -> AgentWorkerCrashedError:
        return AgentWorkerCrashedError(
            f"the worker for {self.name} died ({self._dead_reason or 'pipe closed'}) while {what}; "
            "the agent starts a fresh worker for the next request"
        )

    # -- replies --------------------------------------------------------------------------------
    def _drive(self, future: Future) -> None:
        """Read replies in order until ``future`` is resolved (or the child is gone)."""
        while not future.done():
            with self._recv_lock:
                if future.done():
                    return
                try:
                    if not self._reply_in_time():
                        return
                    reply = self._conn.recv()
                except (EOFError, OSError, ValueError):
                    self._on_child_exit()
                    return
                self._last_reply_at = time.monotonic()
                with self._send_lock:
                    head, slot, _ = self._pending.popleft()
                try:
                    self._resolve(head, slot, reply)
                finally:
                    if slot is not None:
                        with self._send_lock:
                            self._free_slots.append(slot)
                            self._slots_changed.notify_all()

    def _reply_in_time(self) -> bool:
        """Wait for the next reply; False when the batch running overran its timeout (the worker is then killed).

        The running batch is the oldest queued one; its clock starts when it was queued or when
        the reply before it came, whichever is later (the child runs batches one at a time).
        """
        while True:
            with self._send_lock:
                head = self._pending[0][0] if self._pending else None
            timeout_s = getattr(head, "timeout_s", None)
            wait_s = _TIMEOUT_CHECK_S
            if timeout_s is not None:
                started = max(head.queued_at, self._last_reply_at)
                left_s = started + timeout_s - time.monotonic()
                if left_s <= 0:
                    self._kill_hung(timeout_s)
                    return False
                wait_s = min(wait_s, left_s)
            if self._conn.poll(wait_s):
                return True

    def _kill_hung(self, timeout_s: float) -> None:
        """Kill a worker whose batch ran past its timeout; every request it held fails with the reason."""
        reason = f"killed: a batch ran longer than its {timeout_s:.3g} s execution timeout, the model hung"
        with self._send_lock:
            if self._dead_reason is None:
                self._dead_reason = reason
        log.error("worker %s (pid %s) %s", self.name, self.pid, reason)
        if self._process is not None:
            with contextlib.suppress(OSError):
                self._process.kill()  # SIGKILL also ends a stopped (SIGSTOP) process
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(_REAP_TIMEOUT_S)
        self._fail_pending(reason)

    def _resolve(self, future: Future, slot: int | None, reply: tuple) -> None:
        kind = reply[0]
        if kind == "error":
            _, error_kind, message = reply
            future.set_exception(_ERROR_KINDS.get(error_kind, RuntimeError)(message))
        elif kind == "infer":
            _, shapes, invoke_us, run_us = reply
            view = self._slots[slot].view
            offset = self._slots[slot].input_bytes
            outputs = []
            for shape in shapes:
                nbytes = math.prod(shape) * 4  # math.prod: np.prod costs ~10 us per call
                outputs.append((tuple(shape), bytes(view[offset : offset + nbytes])))
                offset += nbytes
            if shapes and shapes[0]:
                per_image_s = run_us / 1e6 / max(1, shapes[0][0])
                self._slowest_s_per_image = max(self._slowest_s_per_image, per_image_s)
            future.set_result(InferResult(outputs, invoke_us, run_us))
        else:
            future.set_result(reply[1])

    def _on_child_exit(self) -> None:
        code = None
        if self._process is not None:
            try:
                code = self._process.wait(_REAP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._process.kill()  # the pipe is gone but the process lingers: it is of no use
                code = self._process.wait(_REAP_TIMEOUT_S)
        reason = describe_exit(code)
        if self._dead_reason is None:
            log.error("worker %s (pid %s) died: %s", self.name, self.pid, reason)
        self._fail_pending(reason)

    def _fail_pending(self, reason: str) -> None:
        with self._send_lock:
            if self._dead_reason is None:
                self._dead_reason = reason
            pending = list(self._pending)
            self._pending.clear()
            self._free_slots = list(range(len(self._slots)))
            self._slots_changed.notify_all()
        for future, _, what in pending:
            if not future.done():
                future.set_exception(self._crash_error(what))

def _batch_memory_bytes() -> int:
    """The activation budget per invoke: ``$DFLARE_AGENT_BATCH_MEMORY_BYTES``, else the default."""
    text = os.environ.get(BATCH_MEMORY_ENV, "").strip()
    return int(text) if text.isdigit() and int(text) > 0 else DEFAULT_BATCH_MEMORY_BYTES


def _resident_bytes() -> int | None:
    """This process's resident memory (Linux and Android /proc), or None where unknown."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * mmap.PAGESIZE
    except (OSError, ValueError, IndexError):
        return None


def _chunk_images(runner: runtime.ModelRunner, budget_bytes: int) -> int | None:
    """Images per invoke that keep the interpreter's activations within ``budget_bytes``.

    Measured, not guessed: the resident memory the interpreter gains going from 1 to
    :data:`_PROBE_IMAGES` images (its arena is allocated for the batch and touched by invoke).
    None when nothing measurable was gained (a small model: any batch the slot holds fits) or
    resident memory cannot be read.
    """
    image = np.zeros((1, *runner.image_shape), np.uint8)
    try:
        runner.infer_all(image)
        before = _resident_bytes()
        runner.infer_all(np.repeat(image, _PROBE_IMAGES, axis=0))
        after = _resident_bytes()
    except InputError:  # preprocessing that does not fit the images: each request reports it
        return None
    if before is None or after is None or after <= before:
        return None
    per_image = (after - before) / (_PROBE_IMAGES - 1)
    return max(1, int(budget_bytes // per_image))


# -- the child process ------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the child: ``python -m device_agent.worker FD [CPUS]``.

    FD is its end of the socket pair; CPUS (``1,3``) the CPUs to pin itself to before the
    interpreter starts its threads.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    if len(args) not in (1, 2) or not args[0].isdigit():
        print("usage: python -m device_agent.worker FD [CPUS] (started by the agent, not by hand)", file=sys.stderr)
        return 2
    if len(args) == 2:
        from device_agent.cpu_affinity import parse_cpu_list, pin

        pin(parse_cpu_list(args[1]))
    _child_main(Connection(int(args[0])))
    return 0


def _child_main(conn: Connection) -> None:
    """Serve load/attach/infer messages until ``stop`` or the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the agent, which stops us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _disable_core_dumps()
    state = _ChildState()
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        op = message[0]
        if op == "stop":
            return
        try:
            if op == "attach" and len(message) > 2 and message[2]:
                state.fds = shm.receive_fds(conn, message[2])
            reply = state.handle(op, message[1:2] if op == "attach" else message[1:])
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the agent, typed
            reply = ("error", _error_kind(exc), str(exc))
        conn.send(reply)


def _disable_core_dumps() -> None:
    """A crashing model must not fill the device's storage with core files."""
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, ValueError, OSError):
        pass


def _error_kind(exc: Exception) -> str:
    for kind, cls in _ERROR_KINDS.items():
        if isinstance(exc, cls):
            return kind
    if isinstance(exc, ValueError):
        return "invalid"
    return f"internal:{type(exc).__name__}"


class _ChildState:
    def __init__(self) -> None:
        self.runner: runtime.ModelRunner | None = None
        self.fault = ""
        self.maps: list[mmap.mmap] = []
        self.input_bytes: list[int] = []
        self.fds: list[int] = []  # memfd regions received with "attach", in slot order
        self.chunk_images: int | None = None  # images per invoke (None: any batch in one invoke)

    def handle(self, op: str, args: tuple) -> Any:
        if op == "load":
            return ("ok", self._load(*args))
        if op == "attach":
            return ("ok", self._attach(*args))
        if op == "infer":
            return self._infer(*args)
        if op == "tensors":
            return ("ok", self._tensors(*args))
        raise RuntimeError(f"unknown worker operation {op!r}")

    def _load(self, spec: LoadSpec) -> LoadResult:
        self.fault = spec.fault
        if self.fault == "abort_on_load":
            os.abort()
        start = time.perf_counter_ns()
        content = open(spec.model_path, "rb").read()  # noqa: SIM115 - read whole, closed by refcount
        self.runner = runtime.ModelRunner(
            content,
            delegate=spec.delegate,
            threads=spec.threads,
            preprocessing=runtime.Preprocessing.from_dict(spec.preprocessing),
            allowed_external=spec.allowed_external,
            delegate_options=spec.delegate_options,
        )
        self.chunk_images = _chunk_images(self.runner, _batch_memory_bytes())
        latency_us = (time.perf_counter_ns() - start) // 1000
        return LoadResult(self.runner.input_spec, list(self.runner.output_specs), self.runner.delegated_nodes,
                          list(self.runner.cpu_ops), str(self.runner.delegate), latency_us)

    def _attach(self, slots: list[tuple[str, int, int]]) -> None:
        for path, size, input_bytes in slots:
            fd = os.open(path, os.O_RDWR) if path is not None else self.fds.pop(0)
            try:
                self.maps.append(mmap.mmap(fd, size))
            finally:
                os.close(fd)
            self.input_bytes.append(input_bytes)

    def _tensors(self, data: bytes, shape: tuple[int, ...], dtype: str, names: list[str], indices: list[int],
                 limit_bytes: int, limit_reason: str) -> TensorsResult:
        reader = self.runner.tensor_reader()  # built on first use: most sessions never need it
        selected = reader.select(names, indices)
        nbytes = reader.nbytes(selected)
        if nbytes > limit_bytes:
            raise LimitExceededError(
                f"the {len(selected)} tensors asked for hold {nbytes} bytes, over the limit of {limit_bytes} bytes "
                f"({limit_reason}); ask for fewer tensors (tensor_names or tensor_indices) or raise max_bytes"
            )
        images = np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape)
        readout = reader.read(images, selected)
        tensors = [(t.name, t.index, tuple(int(d) for d in t.array.shape), t.array.dtype.name, t.array.tobytes(),
                    t.scales, t.zero_points, t.quantized_dimension) for t in readout.tensors]
        return TensorsResult(tensors, readout.hidden, readout.note, str(self.runner.delegate),
                             readout.outputs_identical, readout.invoke_latency_us)

    def _infer(self, index: int, shape: tuple[int, ...], dtype: str, prepared: bool = False) -> tuple:
        if self.fault == "abort_on_infer":
            os.abort()
        if self.fault == "segv_on_infer":
            import ctypes

            ctypes.string_at(0)  # reads address 0: SIGSEGV
        mapping = self.maps[index]
        count = math.prod(shape)
        images = np.frombuffer(mapping, dtype=np.dtype(dtype), count=count).reshape(shape)
        n = shape[0]
        step = min(n, self.chunk_images or n)
        start = time.perf_counter_ns()
        invoke_s = 0.0
        shapes: list[tuple[int, ...]] = []
        for first in range(0, n, step):
            outputs = self.runner.infer_all(images[first:first + step], prepared=prepared)
            invoke_s += self.runner.last_invoke_s
            if not shapes:
                shapes = [(n, *(int(d) for d in out.shape[1:])) for out in outputs]
            # Output k of the whole batch is one float32 block after the input; a chunk fills its rows.
            offset = self.input_bytes[index]
            for out, out_shape in zip(outputs, shapes):
                per_image = math.prod(out_shape[1:])
                flat = np.ascontiguousarray(out, dtype=np.float32).reshape(-1)
                rows = offset + 4 * first * per_image
                np.frombuffer(mapping, dtype=np.float32, count=flat.size, offset=rows)[:] = flat
                offset += 4 * n * per_image
        run_us = (time.perf_counter_ns() - start) // 1000
        del images
        return ("infer", shapes, int(invoke_s * 1e6), run_us)


if __name__ == "__main__":
    # Run the copy imported as device_agent.worker, so pickled classes carry their real module name.
    from device_agent import worker as _worker

    sys.exit(_worker.main())
