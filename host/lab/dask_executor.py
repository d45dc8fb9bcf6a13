"""The lab host's side of ``[lab] executor = "dask://HOST:PORT"``: every combination to the worker holding its device.

``DaskExecutor.run`` broadcasts each model pair to the workers once, then submits, per device, its
first combination (``host.lab.dask_worker.run_combination``) asking for the resource ``device:NAME``
(1): only a ``dflare lab worker`` holding that device runs it. When it is back, this host writes it
(``LabRunner.store``: the history, one transaction per combination, and the artifacts) and submits
the device's next one. So a device's combinations run in the lab file's order, one at a time, even
when two workers advertise it; different devices run in parallel, across workers and within one.
(The chain is kept here rather than as Dask dependencies: a dependency lost with a dead worker
would make Dask recompute a finished combination.)

A worker that dies (SIGKILL, a host powered off) drops its connection to the scheduler, which takes
its tasks back:

* if another worker advertises the same device (it moved hosts), the scheduler reruns the
  in-flight combination there, and the rest follow;
* if none does for ``[lab] worker_wait_s``, this host gives the device up: the combination that was
  running is ``failed`` (naming the worker), the others ``skipped``, the device ``failed``, and the
  run finishes with the other devices. A device no worker advertises from the start ends the same way.
* if it held the cluster's last copy of a model pair (Dask's memory manager drops the spare
  broadcast copies), the pair is scattered again and a combination cancelled for want of it is
  sent again, up to :data:`MAX_RESENDS` times.

A task that keeps killing its workers ends in Dask's ``KilledWorker`` after the scheduler's
``distributed.scheduler.allowed-failures`` (3 by default): that combination is ``failed``.
Everything already written stays: the history is only ever appended to or upserted.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from host.lab.config import DeviceConfig, ModelPair
from host.lab.dask_worker import (
    EVENT_TOPIC,
    ComboTask,
    SchedulerUnreachableError,
    TaskOutcome,
    close_run,
    import_distributed,
    resource,
    run_combination,
)
from host.lab.runner import DeviceDriver, DeviceOutcome, LabEvent, LabRunner

log = logging.getLogger(__name__)

#: Seconds between looks at the cluster (which workers advertise which devices) while waiting for
#: results: short next to a combination (seconds to minutes), cheap for the scheduler.
POLL_S = 0.5
#: Times one combination is sent again after the cluster lost its scattered model pair (every copy
#: was on workers that died): the pair is scattered anew each time.
MAX_RESENDS = 3


@dataclass
class _Chain:
    """One device's combinations, sent one after the other (the next when the previous is back)."""

    device: DeviceConfig
    outcome: DeviceOutcome  # the run's (LabRun.devices)
    todo: list[tuple[ModelPair, str]]  # the first is the one running
    future: Any = None
    index: int = -1
    last: DeviceOutcome | None = None  # the device's state in the last result back
    recorded: str = ""  # the status last written to lab_devices
    holders: set[str] = field(default_factory=set)  # workers last seen advertising the device
    missing_since: float | None = None
    stalled: bool = False  # its task was lost with the scheduler connection; resent if the client reconnects
    resends: int = 0  # of the running combination, after its model pair was lost (MAX_RESENDS)


class DaskExecutor:
    """A connection to the lab's Dask scheduler for one run.

    Args:
        address: the scheduler (``tcp://HOST:PORT``).
        connect_timeout_s: how long to wait for it.

    Raises:
        SchedulerUnreachableError: the scheduler does not answer in time.
        ConfigError: the lab extra (Dask distributed) is not installed.
    """

    def __init__(self, address: str, connect_timeout_s: float) -> None:
        distributed = import_distributed()
        self.address = address
        try:
            self.client = distributed.Client(address, timeout=connect_timeout_s, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise SchedulerUnreachableError(f"Dask scheduler {address}",
                                            f"cannot connect within {connect_timeout_s:g} s ([lab] executor): "
                                            f"{exc}") from None

    def __enter__(self) -> DaskExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    def run(self, runner: LabRunner, outcomes: list[DeviceOutcome]) -> None:
        """Run the runner's remaining combinations on the cluster and store each as it comes back."""
        self._runner = runner
        self._started: dict[str, str] = {}  # task key -> worker name, from the workers' combo_started events
        self._lock = threading.Lock()
        self.client.subscribe_topic(EVENT_TOPIC, self._on_event)
        self._chains = [_Chain(device, outcome, runner.todo(device))
                        for device, outcome in zip(runner.config.devices, outcomes)]
        self._finished: queue.Queue = queue.Queue()
        self._lost_since: float | None = None
        try:
            if not any(c.todo for c in self._chains):
                return
            try:  # scattering needs a worker to hold the data
                self.client.wait_for_workers(1, timeout=runner.config.worker_wait_s)
            except TimeoutError:
                for chain in self._chains:
                    if chain.todo:
                        self._give_up(runner, chain)
                return
            # broadcast: every worker gets a copy, so a dead worker never takes a model pair with it
            self._scattered = {name: self.client.scatter([data], hash=False, broadcast=True)[0]
                               for name, data in runner.models.items()}
            for chain in self._chains:
                self._submit_next(chain)
            self._collect(runner)
        finally:
            try:
                running = [c.future for c in self._chains if c.future is not None and not c.future.done()]
                if running:
                    self.client.cancel(running)
                self.client.run(close_run, runner.run_id)
                self.client.unsubscribe_topic(EVENT_TOPIC)
            except Exception:  # noqa: BLE001 - a worker or the scheduler gone at the end: nothing stored changes
                log.debug("closing run %s on the workers failed", runner.run_id, exc_info=True)

    def _submit_next(self, chain: _Chain) -> None:
        """Submit the chain's next combination (one at a time per device: the next goes when this one is back)."""
        chain.future = None
        if not chain.todo:
            return
        self._check_scheduler()
        pair, delegate = chain.todo[0]
        task = ComboTask(self._runner.run_id, self._runner.config, chain.device, pair, delegate)
        chain.index += 1
        chain.future = self.client.submit(
            run_combination, task, self._pair_data(pair.name),
            key=f"dflare-lab-{self._runner.run_id}-{chain.device.name}-{chain.index}",
            resources={resource(chain.device.name): 1}, pure=False, retries=0)
        chain.future.add_done_callback(self._finished.put)

    def _pair_data(self, name: str, lost: bool = False) -> Any:
        """The model pair's scattered future, scattered again when the cluster no longer holds it.

        Broadcasting puts a copy on every worker, but Dask's active memory manager drops the
        copies no task waits for, so the last one can die with its worker; a task that needs it is
        then cancelled (dask/distributed#3149). ``lost``: a task needing it was just cancelled.
        """
        data = self._scattered[name]
        if lost or data.status != "finished":
            log.info("run %s: the cluster lost model pair %s (%s); scattering it again", self._runner.run_id, name,
                     data.status)
            data = self._scattered[name] = self.client.scatter([self._runner.models[name]], hash=False,
                                                               broadcast=True)[0]
        return data

    # -- results ------------------------------------------------------------------------------
    def _collect(self, runner: LabRunner) -> None:
        by_key = {}
        while any(c.future is not None for c in self._chains):
            for chain in self._chains:
                if chain.future is not None:
                    by_key[chain.future.key] = chain
            done = []
            try:
                done.append(self._finished.get(timeout=POLL_S))
                while True:
                    done.append(self._finished.get_nowait())
            except queue.Empty:
                pass
            for future in done:
                chain = by_key.get(future.key)
                if chain is None or chain.future is None or chain.future.key != future.key:
                    continue  # given up on (cancelled) already
                if future.status != "finished" and self.client.status != "running":
                    chain.stalled = True  # lost with the scheduler connection: not the combination's failure
                    continue
                if future.status == "cancelled" and chain.resends < MAX_RESENDS and self._holders_gone(chain) is None:
                    # not by this client (it forgets what it cancels): the scheduler lost the task's model
                    # pair with a dead worker; the device is still served, so send the combination again
                    chain.resends += 1
                    self._pair_data(chain.todo[0][0].name, lost=True)
                    self._submit_next(chain)
                    continue
                self._store(runner, chain, future)
                chain.todo.pop(0)
                chain.resends = 0
                self._submit_next(chain)
            self._check_scheduler()
            if self.client.status == "running":
                for chain in self._chains:
                    if chain.stalled:  # the client reconnected (a restarted scheduler): send it again
                        chain.stalled = False
                        self._submit_next(chain)
            self._watch_devices(runner)

    def _fetch(self, chain: _Chain, future: Any) -> TaskOutcome | None:
        """A finished task's outcome, or None when it was lost with the worker holding it.

        Dask keeps a result on the worker until the client fetches it: a worker killed in between
        takes it along, and the scheduler runs the task again where the device's resource is. So
        wait while a worker still advertises the device, and give up when none does.
        """
        while True:
            try:
                return future.result(timeout=POLL_S)
            except TimeoutError:
                self._check_scheduler()
                if self._holders_gone(chain) is not None:
                    self.client.cancel([future])
                    return None
            except Exception:  # noqa: BLE001 - the task ran again and failed: its status and exception say how
                return None

    def _store(self, runner: LabRunner, chain: _Chain, future: Any) -> None:
        pair, delegate = chain.todo[0]
        fetched = future.status == "finished"
        got: TaskOutcome | None = self._fetch(chain, future) if fetched else None
        if got is not None:
            chain.last = got.device
            if chain.recorded != got.device.status:
                runner.record_device(got.device_row, chain.outcome, got.device)
                chain.recorded = got.device.status
            runner.store(got.result)
            runner.on_event(_result_event(got))
            return
        # "error" (the task raised, or KilledWorker), "cancelled" by the scheduler, or a result lost with its worker
        exc = future.exception() if future.status == "error" else None
        if exc is not None:
            why = _task_error(exc, chain.device.name)
        elif fetched:
            why = "its result was lost with it"
        else:
            why = f"the task was {future.status}"
        gone = self._holders_gone(chain)
        if gone is not None:  # the same words as when the device is given up, whichever the scheduler said first
            why = f"worker {gone} holding device {chain.device.name} left the Dask cluster ({self.address}) while " \
                  f"it ran ({why})"
        runner.store(self._row_maker(runner, chain.device).failed(pair, delegate, why, outcome=chain.last))

    def _watch_devices(self, runner: LabRunner) -> None:
        """Give up the devices that no worker has advertised for ``worker_wait_s``."""
        waiting = [c for c in self._chains if c.future is not None]
        if not waiting:
            return
        now = time.monotonic()
        if self.client.status != "running":  # reconnecting: the cluster's state is unknown, judge no device
            if self._lost_since is None:
                self._lost_since = now
            if now - self._lost_since >= runner.config.worker_wait_s:
                raise self._lost(f"client {self.client.status}")
            return
        try:
            advertised = self._advertised()
        except Exception as exc:  # noqa: BLE001 - CommClosedError, OSError, a closed client: the scheduler is gone
            self._check_scheduler()
            if self._lost_since is None:
                self._lost_since = now
            if now - self._lost_since >= runner.config.worker_wait_s:
                raise self._lost(f"{type(exc).__name__}: {exc}") from None
            return
        self._lost_since = None
        for chain in waiting:
            holders = advertised.get(chain.device.name)
            if holders:
                chain.holders = holders
                chain.missing_since = None
                continue
            if chain.missing_since is None:
                chain.missing_since = now
            if now - chain.missing_since >= runner.config.worker_wait_s:
                self._give_up(runner, chain)

    def _give_up(self, runner: LabRunner, chain: _Chain) -> None:
        """Fail the combination that was running, skip the rest, mark the device failed."""
        future, chain.future = chain.future, None
        if future is not None:
            self.client.cancel([future])
        name, wait_s = chain.device.name, runner.config.worker_wait_s
        worker = ", ".join(sorted(chain.holders)) or None
        if worker is not None:
            why = (f"worker {worker} holding device {name} left the Dask cluster ({self.address}) and no other "
                   f"worker advertised the device within {wait_s:g} s")
        else:
            why = (f"no worker of the Dask cluster {self.address} advertised device {name} within {wait_s:g} s: "
                   f"start `dflare lab worker --scheduler {self.address} --device {name}=URI` on its host")
        driver = self._row_maker(runner, chain.device)
        with self._lock:
            started = future is not None and str(future.key) in self._started
        for k, (pair, delegate) in enumerate(chain.todo):
            if k == 0 and started:
                runner.store(driver.failed(pair, delegate, f"{why}; it was running there", outcome=chain.last))
            else:
                runner.store(driver.skipped(pair, delegate, why))
        chain.todo = []
        gone = DeviceOutcome(name, chain.device.uri, "failed", why, dict(chain.last.info) if chain.last else {})
        row = driver.device_row()
        row.update(status="failed", error=why, worker=worker, uri=chain.last.uri if chain.last else chain.device.uri)
        runner.record_device(row, chain.outcome, gone)
        chain.recorded = "failed"
        runner.on_event(LabEvent("device_failed", name, message=why))

    def _check_scheduler(self) -> None:
        """Raise :class:`SchedulerUnreachableError` when the client gave up on the scheduler."""
        if self.client.status in ("closing", "closed"):
            raise self._lost("the client could not reconnect") from None

    def _lost(self, why: str) -> SchedulerUnreachableError:
        run_id = self._runner.run_id
        return SchedulerUnreachableError(
            f"Dask scheduler {self.address}",
            f"lost during run {run_id} ({why}); what finished is in the history: continue with "
            f"`dflare lab run LAB.toml --resume {run_id}`")

    def _holders_gone(self, chain: _Chain) -> str | None:
        """The workers last seen holding the chain's device when none of them advertises it any more, else None."""
        if not chain.holders:
            return None
        try:
            now = self._advertised().get(chain.device.name, set())
        except Exception:  # noqa: BLE001 - the scheduler is unreachable: _check_scheduler reports that
            return None
        return None if now & chain.holders else ", ".join(sorted(chain.holders))

    def _row_maker(self, runner: LabRunner, device: DeviceConfig) -> DeviceDriver:
        """A driver that only builds rows here (the lab host never connects to a worker's device)."""
        return DeviceDriver(runner.config, device, None, runner.models, runner.run_id, _no_open, runner.reference,
                            lambda event: None, runner.sleep)

    def _advertised(self) -> dict[str, set[str]]:
        """Device name -> names of the workers advertising it now."""
        try:
            workers = self.client.scheduler_info(n_workers=-1)["workers"]
        except TypeError:  # distributed before n_workers
            workers = self.client.scheduler_info()["workers"]
        out: dict[str, set[str]] = {}
        for address, info in workers.items():
            for res in info.get("resources", {}):
                if res.startswith("device:"):
                    out.setdefault(res[len("device:"):], set()).add(str(info.get("name", address)))
        return out

    def _on_event(self, event: tuple[float, dict[str, Any]]) -> None:
        _, msg = event
        if not isinstance(msg, dict) or msg.get("run_id") != self._runner.run_id:
            return
        if msg.get("kind") == "combo_started" and msg.get("key"):
            with self._lock:
                self._started[msg["key"]] = msg.get("lab_worker", "")
        if msg.get("kind") in ("combo_passed", "combo_failed", "combo_skipped"):
            return  # reported when the result is stored here (_result_event), so each is reported once
        message, worker = msg.get("message", ""), msg.get("lab_worker", "")
        where = f"{message} (on {worker})" if message else f"on {worker}"
        self._runner.on_event(LabEvent(msg.get("kind", ""), msg.get("device", ""), msg.get("model", ""),
                                       msg.get("delegate", ""), where))


def _result_event(got: TaskOutcome) -> LabEvent:
    row = got.result.row
    return LabEvent(f"combo_{row['status']}", row["device"], row["model"], row["delegate"],
                    f"{row['error']} (on {got.worker})" if row.get("error") else f"on {got.worker}")


def _task_error(exc: BaseException | None, device: str) -> str:
    name = type(exc).__name__ if exc is not None else "unknown"
    if name == "KilledWorker":
        return (f"the combination's Dask workers died while running it, as many times as the scheduler allows "
                f"(distributed.scheduler.allowed-failures): {exc}")
    return f"the task failed on the worker holding {device}: {name}: {exc}"


def _no_open(uri: str, token: str | None):
    raise AssertionError("the lab host does not open a worker's devices")
