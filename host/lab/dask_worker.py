"""``dflare lab worker``: a Dask worker that holds a lab host's devices and runs their combinations.

Each lab host runs one. It advertises one Dask resource per device it holds (``device:NAME`` = 1), so
the scheduler gives a combination of device D only to a worker holding D, one at a time there (the
lab host asks for ``{"device:D": 1}``, :func:`resource`). It keeps each device's agent connection
between the combinations of a run (a :class:`host.lab.runner.DeviceDriver` per run and device, the
same code as the lab host's own threads): the health check runs here, the original model runs here
on this host's CPU, and a device that failed or disappeared gets its later combinations skipped at
once. Results (history rows, per-seed rows, triggering inputs as bytes) go back to the lab host,
which writes the history and the files; progress goes back as Dask events (:data:`EVENT_TOPIC`).

Device URIs and agent tokens stay on the worker's host: ``--device NAME=URI[,token_file=PATH]``;
a device given as a bare NAME uses the lab file's URI.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import socket
import sys
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from host.errors import ConfigError, TargetUnreachableError
from host.lab.config import DeviceConfig, LabConfig, ModelPair
from host.lab.runner import ComboResult, DeviceDriver, DeviceOutcome, LabEvent, LoadedPair, default_open_target
from host.targets.options import resolve_token

log = logging.getLogger(__name__)

#: The Dask event topic progress is sent under; the lab host subscribes to it for its run.
EVENT_TOPIC = "dflare-lab"
#: Drivers (agent connections) a worker keeps per device across runs: the current run's only. A
#: resumed run of an older id reconnects, which costs a health check.
KEPT_RUNS = 1


def resource(device: str) -> str:
    """The Dask resource a worker holding ``device`` advertises (and a combination of it asks for)."""
    return f"device:{device}"


class SchedulerUnreachableError(TargetUnreachableError):
    """The Dask scheduler of ``[lab] executor`` or ``--scheduler`` does not answer (exit code 3)."""


def import_distributed():
    """``distributed``, or one clear error naming the extra.

    Raises:
        ConfigError: the lab extra is not installed.
    """
    try:
        import distributed
    except ImportError:
        raise ConfigError("a lab on Dask needs the lab extra (Dask distributed): pip install 'dflare-edge[lab]'") \
            from None
    return distributed


@dataclass(frozen=True)
class HeldDevice:
    """A device attached to this worker's host: ``--device NAME[=URI][,token_file=PATH]``."""

    name: str
    uri: str | None = None  # None: the lab file's
    token_file: Path | None = None

    @classmethod
    def parse(cls, text: str) -> HeldDevice:
        """Parse ``NAME[=URI][,token_file=PATH]``.

        Raises:
            ConfigError: no name, or an unknown option.
        """
        from host.lab.config import _NAME_RE

        head, *options = text.split(",")
        name, _, uri = head.partition("=")
        if not _NAME_RE.match(name):
            raise ConfigError(f"--device {text!r}: give NAME[=URI][,token_file=PATH], NAME being letters, digits, "
                              "'.', '_' or '-' (as in the lab file)")
        token_file = None
        for option in options:
            key, _, value = option.partition("=")
            if key != "token_file" or not value:
                raise ConfigError(f"--device {text!r}: unknown option {option!r} (known: token_file=PATH)")
            token_file = Path(value).expanduser()
        if uri and not uri.startswith(("local", "grpc://", "grpcs://", "adb://")):
            raise ConfigError(f"--device {text!r}: the URI must be local:, grpc://HOST:PORT, grpcs://HOST:PORT "
                              "or adb://SERIAL")
        return cls(name, uri or None, token_file)


@dataclass(frozen=True)
class ComboTask:
    """What the lab host sends for one combination (the models travel separately, scattered once)."""

    run_id: str
    config: LabConfig
    device: DeviceConfig
    pair: ModelPair
    delegate: str


@dataclass
class TaskOutcome:
    """What a worker sends back: the combination and the device's state after it."""

    result: ComboResult
    device_row: dict[str, Any]
    device: DeviceOutcome
    worker: str


class LabWorkerState:
    """The devices this worker holds and their drivers, per run (shared by the worker's task threads)."""

    def __init__(self, name: str, devices: list[HeldDevice], token_file: Path | None = None,
                 tls_ca_file: Path | None = None, tls_server_name: str | None = None) -> None:
        from host.targets.local import LocalTarget

        self.name = name
        self.devices = {d.name: d for d in devices}
        self.token_file = token_file
        self.tls_ca_file = tls_ca_file
        self.tls_server_name = tls_server_name
        self.reference = LocalTarget()
        self._drivers: dict[tuple[str, str], DeviceDriver] = {}
        self._runs: list[str] = []
        self._lock = threading.Lock()

    def driver(self, task: ComboTask, models: LoadedPair, worker: Any) -> DeviceDriver:
        """The run's driver for the task's device (made on its first combination)."""
        key = (task.run_id, task.device.name)
        with self._lock:
            if task.run_id not in self._runs:
                self._runs.append(task.run_id)
                for old in self._runs[:-KEPT_RUNS]:
                    self._close_locked(old)
            driver = self._drivers.get(key)
            if driver is None:
                held = self.devices.get(task.device.name) or HeldDevice(task.device.name)
                device = replace(task.device, uri=held.uri or task.device.uri)
                token = resolve_token(None, held.token_file or self.token_file)
                open_target = functools.partial(
                    default_open_target, connect_timeout_s=task.config.connect_timeout_s,
                    tls_ca_file=self.tls_ca_file, tls_server_name=self.tls_server_name)
                if not device.uri:
                    open_target = functools.partial(_no_uri, self.name)
                driver = DeviceDriver(task.config, device, token, {}, task.run_id, open_target, self.reference,
                                      functools.partial(_send_event, worker, task.run_id, self.name),
                                      _sleep, worker=self.name)
                self._drivers[key] = driver
        driver.models[task.pair.name] = models
        return driver

    def close_run(self, run_id: str) -> None:
        """Close the run's agent connections (the lab host calls this when the run ends)."""
        with self._lock:
            self._close_locked(run_id)

    def _close_locked(self, run_id: str) -> None:
        for key in [k for k in self._drivers if k[0] == run_id]:
            self._drivers.pop(key).close()
        if run_id in self._runs:
            self._runs.remove(run_id)


def _no_uri(worker: str, uri: str, token: str | None):
    raise ConfigError(f"worker {worker} has no URI for this device: start it with --device NAME=URI "
                      "(or give the device a uri in the lab file)")


def _sleep(seconds: float) -> None:
    import time

    time.sleep(seconds)


def _send_event(worker: Any, run_id: str, worker_name: str, event: LabEvent) -> None:
    msg = {"run_id": run_id, "lab_worker": worker_name, "kind": event.kind, "device": event.device,
           "model": event.model, "delegate": event.delegate, "message": event.message}
    try:
        msg["key"] = str(worker.get_current_task() or "")
    except Exception:  # noqa: BLE001 - outside a task (never expected): the event goes without its key
        msg["key"] = ""
    worker.log_event(EVENT_TOPIC, msg)


#: This process's worker states by Dask worker name (one per ``dflare lab worker`` process; several in
#: one process only in tests).
_STATES: dict[str, LabWorkerState] = {}


def run_combination(task: ComboTask, models: LoadedPair, previous: TaskOutcome | None = None) -> TaskOutcome:
    """The Dask task: one combination on the device this worker holds.

    ``previous`` is the device's previous combination (unused: depending on it keeps a device's
    combinations in order and one at a time, even when two workers advertise the device).

    Raises:
        RuntimeError: this Dask worker was not started by ``dflare lab worker`` (it holds no devices).
    """
    from distributed import get_worker

    worker = get_worker()
    state = _STATES.get(str(worker.name))
    if state is None:
        raise RuntimeError(f"Dask worker {worker.name} ({worker.address}) is not a `dflare lab worker`: it "
                           f"advertises {sorted(worker.state.total_resources)} but holds no lab devices")
    driver = state.driver(task, models, worker)
    result = driver.run(task.pair, task.delegate)
    return TaskOutcome(result, driver.device_row(), replace(driver.outcome, info=dict(driver.outcome.info)),
                       state.name)


def close_run(run_id: str, dask_worker: Any = None) -> None:
    """Run on every worker at the end of a run (``Client.run``): close that run's agent connections."""
    for state in list(_STATES.values()):
        state.close_run(run_id)


# -- the `dflare lab worker` process ------------------------------------------------------------
def serve_worker(scheduler: str, devices: list[HeldDevice], *, name: str | None = None, host: str | None = None,
                 nthreads: int | None = None, token_file: Path | None = None, tls_ca_file: Path | None = None,
                 tls_server_name: str | None = None, connect_timeout_s: float = 10.0,
                 on_ready=None) -> None:
    """Start a Dask worker holding ``devices`` and serve until SIGTERM/SIGINT or the scheduler goes away.

    Raises:
        SchedulerUnreachableError: the scheduler does not answer within ``connect_timeout_s``, or it went
            away (for ``connect_timeout_s``) while serving.
        ConfigError: the lab extra is missing, or a device is given twice.
    """
    import_distributed()
    if not devices:
        raise ConfigError("give at least one --device NAME[=URI] for this worker to hold")
    names = [d.name for d in devices]
    if len(set(names)) != len(names):
        raise ConfigError(f"a device is given twice: {', '.join(names)}")
    name = name or socket.gethostname()
    state = LabWorkerState(name, devices, token_file, tls_ca_file, tls_server_name)
    asyncio.run(_serve(scheduler, state, host, nthreads or len(devices), connect_timeout_s, on_ready))


async def _serve(scheduler: str, state: LabWorkerState, host: str | None, nthreads: int, connect_timeout_s: float,
                 on_ready) -> None:
    from distributed import Worker
    from distributed.comm import connect

    try:
        comm = await connect(scheduler, timeout=connect_timeout_s)
        await comm.close()
    except (OSError, TimeoutError, ValueError) as exc:
        raise SchedulerUnreachableError(f"Dask scheduler {scheduler}",
                                        f"cannot connect within {connect_timeout_s:g} s: {exc}") from None
    _STATES[state.name] = state
    try:
        worker = Worker(scheduler, nthreads=nthreads, name=state.name, host=host,
                        resources={resource(d): 1 for d in state.devices}, death_timeout=connect_timeout_s)
        await worker
        loop = asyncio.get_running_loop()
        stopped: list[int] = []

        def stop(sig: int) -> None:
            stopped.append(sig)
            asyncio.ensure_future(worker.close(reason="signal"))

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop, sig)
        print(f"dflare lab worker {state.name} at {worker.address} (scheduler {scheduler}): devices "
              + ", ".join(f"{d.name}={d.uri or '(lab file)'}" for d in state.devices.values()),
              file=sys.stderr, flush=True)
        if on_ready is not None:
            on_ready(worker)
        await worker.finished()
        if not stopped:  # closed by Dask itself: the scheduler went away for longer than death_timeout
            raise SchedulerUnreachableError(f"Dask scheduler {scheduler}",
                                            f"lost; worker {state.name} stopped (a service manager restarts it)")
    finally:
        _STATES.pop(state.name, None)
        for run_id in list(state._runs):
            state.close_run(run_id)
