"""Run every combination of a lab file: devices x model pairs x delegates.

One worker thread per device, at most ``max_parallel_devices`` at once. A worker connects and
health-checks its device (``health.check_health``), then runs its combinations one after the other.
Each step that fails with a target error is retried after a backoff that doubles (``backoff_s``,
``2 * backoff_s`` ...), reconnecting first; when the attempts run out:

* connect / health check: the device is marked ``failed`` (or ``unhealthy``: a golden mismatch is
  not retried) and its combinations ``skipped``;
* a combination: it is marked ``failed``; if the device cannot be reconnected either, it has
  disappeared: the device is marked ``failed`` and its remaining combinations ``skipped``.

Other devices carry on. Every finished combination is written to the history at once (one
transaction: its row and its seeds), with its triggering inputs in
``OUT/RUN/DEVICE/MODEL/DELEGATE/triggering.npz``. A resumed run (``run(run_id=...)``, ``dflare lab run
--resume RUN``) does not redo the combinations that passed already.

The per-device work (connect, health check, combinations with retries) is :class:`DeviceDriver`: a
thread of this host drives it, or, with ``[lab] executor = "dask://..."``, the Dask worker that holds
the device (``host.lab.dask_executor``); this host writes the history and the artifacts either way.

A combination runs the compressed model on the device with the delegate and the original model on
the host (``local:``, ``reference_delegate``): top-1 deviations on the seeds themselves, latency per
image on the device (``host.targets.latency.measure_session``), then the search (``host.search.run``) when
the budget allows queries.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import io
import json
import logging
import re
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from host import __version__
from host.errors import Error, HealthCheckError, TargetError
from host.figures import figures
from host.files import atomic_write
from host.lab.config import DeviceConfig, LabConfig, ModelPair
from host.lab.health import check_health
from host.lab.history import History
from host.seeds import load_seeds
from host.targets.base import ModelSpec, Target
from host.targets.latency import measure_session
from host.targets.options import resolve_token

log = logging.getLogger(__name__)

#: Untimed calls before the latency runs of a combination (see host.targets.latency.DEFAULT_WARMUP_RUNS).
WARMUP_RUNS = 2


@dataclass(frozen=True)
class LabEvent:
    """Progress of a run, for the CLI and for tests.

    Kinds: ``device_ready``, ``device_failed``, ``combo_started``, ``combo_passed``, ``combo_failed``,
    ``combo_skipped``, ``retry``.
    """

    kind: str
    device: str
    model: str = ""
    delegate: str = ""
    message: str = ""


@dataclass
class DeviceOutcome:
    name: str
    uri: str
    status: str = "pending"  # ok | failed | unhealthy
    error: str = ""
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class LabRun:
    """What ``run()`` returns: the run id, devices and combination rows (as stored)."""

    run_id: str
    lab: str
    devices: list[DeviceOutcome]
    combos: list[dict[str, Any]]
    out: Path

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.combos:
            out[c["status"]] = out.get(c["status"], 0) + 1
        return out


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


def new_run_id() -> str:
    """A run id that sorts by start time: ``YYYYmmddTHHMMSSffffffZ-xxxx``."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ") + "-" + secrets.token_hex(2)


def default_open_target(uri: str, token: str | None, connect_timeout_s: float | None = None,
                        tls_ca_file: Path | None = None, tls_server_name: str | None = None) -> Target:
    """Open a device target through ``host.targets.open_target`` with the token, connect timeout and TLS."""
    from host.targets import TargetOptions, open_target

    return open_target(uri, TargetOptions(token=token, connect_timeout_s=connect_timeout_s, tls_ca_file=tls_ca_file,
                                          tls_server_name=tls_server_name))


class _DeviceGone(Exception):
    """Internal: the device could not be reconnected after a failure; ``result`` is the failed combination."""

    def __init__(self, why: str, result: ComboResult) -> None:
        super().__init__(why)
        self.result = result


#: (original, compressed, seeds x, labels y or None) of a model pair, as loaded once per run.
LoadedPair = tuple[ModelSpec, ModelSpec, np.ndarray, "np.ndarray | None"]


@dataclass
class ComboResult:
    """One finished (or failed, or skipped) combination: its history row, per-seed rows and artifacts.

    ``artifacts`` maps a path relative to the run's folder to the file's bytes: a worker on another
    host computes them, the lab host writes them (``LabRunner.store``).
    """

    row: dict[str, Any]
    seeds: list[dict[str, Any]] = field(default_factory=list)
    artifacts: dict[str, bytes] = field(default_factory=dict)


def combo_folder(device: str, model: str, delegate: str) -> str:
    """A combination's folder inside the run's, relative: ``DEVICE/MODEL/DELEGATE`` (unsafe characters -> _)."""
    return "/".join(_SAFE_NAME_RE.sub("_", part) for part in (device, model, delegate))


_SAFE_NAME_RE = re.compile(r"[^A-Za-z0-9._-]")


class DeviceDriver:
    """One device through a run: its connection, health check and combinations, with retries.

    The lab host's thread for a device drives one; so does a ``dflare lab worker`` for each device
    it holds (``host.lab.dask_executor``). It keeps the agent connection between combinations, and
    remembers a device that failed its health check or disappeared, so that its later combinations
    are skipped at once.

    Args:
        config: the lab file.
        device: the device (its ``uri`` is where this driver connects).
        token: the agent token for it, or None.
        models: the run's loaded model pairs, by name.
        run_id: the run.
        open_target: ``(uri, token) -> Target``.
        reference: where original models run (this host).
        on_event: progress callback.
        sleep: the backoff sleep.
        worker: stored with every row: the Dask worker's name, or None on the lab host.
    """

    def __init__(self, config: LabConfig, device: DeviceConfig, token: str | None, models: dict[str, LoadedPair],
                 run_id: str, open_target: Callable[[str, str | None], Target], reference: Target,
                 on_event: Callable[[LabEvent], None], sleep: Callable[[float], None],
                 worker: str | None = None) -> None:
        self.config = config
        self.device = device
        self.token = token
        self.models = models
        self.run_id = run_id
        self.open_target = open_target
        self.reference = reference
        self.on_event = on_event
        self.sleep = sleep
        self.worker = worker
        self.outcome = DeviceOutcome(device.name, device.uri)
        self.target: Target | None = None
        self.disappeared = False

    @property
    def usable(self) -> bool:
        """Connected and healthy (combinations can run)."""
        return self.outcome.status == "ok" and self.target is not None

    def connect(self) -> bool:
        """Connect and health-check (once; later calls return the first answer). Returns :attr:`usable`."""
        if self.outcome.status != "pending":
            return self.usable
        try:
            self.target = self._connect()
        except HealthCheckError as exc:
            self.outcome.status, self.outcome.error = "unhealthy", str(exc)
        except Error as exc:
            self.outcome.status, self.outcome.error = "failed", str(exc)
        if self.target is None:
            self.on_event(LabEvent("device_failed", self.device.name, message=self.outcome.error))
            return False
        self.outcome.status = "ok"
        self.on_event(LabEvent("device_ready", self.device.name))
        return True

    def skipped(self, pair: ModelPair, delegate: str, why: str | None = None) -> ComboResult:
        """The row of a combination that is not run (the device failed or left)."""
        if why is None:
            why = self.outcome.error if self.disappeared else f"device {self.outcome.status}: {self.outcome.error}"
        row = self._row(DeviceOutcome(self.device.name, self.device.uri), pair, delegate, "skipped", why, 0,
                        time.monotonic())
        self.on_event(LabEvent("combo_skipped", self.device.name, pair.name, delegate, why))
        return ComboResult(row)

    def failed(self, pair: ModelPair, delegate: str, why: str, attempts: int = 1,
               outcome: DeviceOutcome | None = None) -> ComboResult:
        """The row of a combination that failed outside this driver (its Dask worker died, say)."""
        row = self._row(outcome or self.outcome, pair, delegate, "failed", why, attempts, time.monotonic())
        self.on_event(LabEvent("combo_failed", self.device.name, pair.name, delegate, why))
        return ComboResult(row)

    def run(self, pair: ModelPair, delegate: str) -> ComboResult:
        """Run one combination with retries (connecting first if needed).

        A device that failed or disappeared gives a skipped row; one that disappears during this
        combination gives a failed row and :attr:`outcome` becomes ``failed``.
        """
        if not self.connect():
            return self.skipped(pair, delegate)
        try:
            return self._combo_with_retries(pair, delegate)
        except _DeviceGone as gone:
            self.outcome.status, self.outcome.error = "failed", f"device disappeared: {gone}"
            self.target = None
            self.on_event(LabEvent("device_failed", self.device.name, message=self.outcome.error))
            self.disappeared = True
            return gone.result

    def close(self) -> None:
        if self.target is not None:
            _quietly_close(self.target)
            self.target = None

    def device_row(self) -> dict[str, Any]:
        """The device's history row (keys: ``host.lab.history.DEVICE_FIELDS``)."""
        info = self.outcome.info
        return {
            "run_id": self.run_id, "device": self.device.name, "uri": self.device.uri, "status": self.outcome.status,
            "error": self.outcome.error, "runtime": info.get("runtime"), "runtime_version": info.get("runtime_version"),
            "agent_version": info.get("agent_version"), "info_json": json.dumps(info, sort_keys=True, default=str),
            "worker": self.worker,
        }

    # -- connection ---------------------------------------------------------------------------
    def _connect(self) -> Target:
        """Open the target and health-check it, retrying target errors with backoff."""
        last: Error | None = None
        for attempt in range(self.config.retries + 1):
            if attempt:
                self._backoff(attempt, f"reconnecting after: {last}")
            target = None
            try:
                target = self.open_target(self.device.uri, self.token)
                self.outcome.info = check_health(target, self.config.health)
                return target
            except HealthCheckError:
                if target is not None:
                    _quietly_close(target)
                raise  # wrong outputs do not improve by retrying
            except TargetError as exc:
                last = exc
                if target is not None:
                    _quietly_close(target)
        assert last is not None
        raise last

    def _backoff(self, attempt: int, why: str) -> None:
        delay_s = self.config.backoff_s * (2 ** (attempt - 1))
        self.on_event(LabEvent("retry", self.device.name, message=f"attempt {attempt + 1} in {delay_s:.1f} s: {why}"))
        self.sleep(delay_s)

    def _combo_with_retries(self, pair: ModelPair, delegate: str) -> ComboResult:
        assert self.target is not None
        self.on_event(LabEvent("combo_started", self.device.name, pair.name, delegate))
        start = time.monotonic()
        last: Error | None = None
        for attempt in range(self.config.retries + 1):
            if attempt:
                self._backoff(attempt, f"{pair.name}/{delegate}: {last}")
                _quietly_close(self.target)
                try:
                    self.target = self._connect()
                except Error as exc:
                    row = self._row(self.outcome, pair, delegate, "failed", str(last), attempt, start)
                    self.on_event(LabEvent("combo_failed", self.device.name, pair.name, delegate, str(last)))
                    raise _DeviceGone(str(exc), ComboResult(row)) from None
            try:
                result = self._run_combo(pair, delegate)
            except TargetError as exc:
                last = exc
                continue
            except Error as exc:  # a model/config problem on this combination: retrying will not help
                last = exc
                break
            result.row.update(attempts=attempt + 1, seconds=time.monotonic() - start)
            self.on_event(LabEvent("combo_passed", self.device.name, pair.name, delegate))
            return result
        row = self._row(self.outcome, pair, delegate, "failed", str(last), self.config.retries + 1, start)
        self.on_event(LabEvent("combo_failed", self.device.name, pair.name, delegate, str(last)))
        return ComboResult(row)

    # -- one combination ----------------------------------------------------------------------
    def _run_combo(self, pair: ModelPair, delegate: str) -> ComboResult:
        assert self.target is not None
        original, compressed, x, y = self.models[pair.name]
        budget = self.config.budget
        cs = self.target.load(compressed.with_options(delegate=delegate))
        os_ = None
        try:
            os_ = self.reference.load(original.with_options(delegate=self.config.reference_delegate))
            probs_c, latency, _ = measure_session(cs, x, budget.batch_size, WARMUP_RUNS, budget.latency_runs)
            probs_o = np.concatenate([os_.infer(x[i : i + budget.batch_size])
                                      for i in range(0, len(x), budget.batch_size)])
            deviates = probs_o.argmax(1) != probs_c.argmax(1)
            results = self._search(os_, cs, x, y) if budget.search else []
        finally:
            cs.close()
            if os_ is not None:
                os_.close()
        by_seed = {r.seed_index: r for r in results}
        seeds = [{"seed_index": i, "deviates": int(deviates[i]),
                  "status": by_seed[i].status.value if i in by_seed else "",
                  "queries": by_seed[i].queries if i in by_seed else 0} for i in range(len(x))]
        row = self._row(self.outcome, pair, delegate, "passed", "", 1, time.monotonic())
        found = figures(results)
        row.update(
            seeds=len(x), seed_deviations=int(deviates.sum()), triggered=found.triggered, flaky=found.flaky,
            success_rate=found.success_rate if results else None, queries_per_trigger=found.queries_per_trigger,
            candidates_per_trigger=found.candidates_per_trigger,
            total_queries=found.total_queries, latency_source=latency.source, latency_mean_ms=latency.mean_ms,
            latency_p50_ms=latency.p50_ms, latency_p90_ms=latency.p90_ms, latency_p99_ms=latency.p99_ms,
        )
        return ComboResult(row, seeds, _triggering_artifact(self.device.name, pair.name, delegate, results))

    def _search(self, original, compressed, x: np.ndarray, y: np.ndarray | None) -> list:
        from host.search import Budget
        from host.search import run as search_run

        budget = self.config.budget
        labels = None if y is None else [int(v) for v in y]
        return list(search_run(original, compressed, x, algo=budget.algo,
                               budget=Budget(max_queries=budget.max_queries, max_seconds=budget.timeout_s),
                               rng_seed=budget.rng_seed, labels=labels))

    def _row(self, outcome: DeviceOutcome, pair: ModelPair, delegate: str, status: str, error: str, attempts: int,
             start: float) -> dict[str, Any]:
        original, compressed, _, _ = self.models[pair.name]
        info = outcome.info
        return {
            "run_id": self.run_id, "device": self.device.name, "model": pair.name, "delegate": delegate,
            "status": status, "error": error, "attempts": attempts, "seconds": max(0.0, time.monotonic() - start),
            "model_sha256": compressed.sha256, "original_sha256": original.sha256,
            "runtime": info.get("runtime"), "runtime_version": info.get("runtime_version"),
            "agent_version": info.get("agent_version") or (f"host {__version__}" if info else None),
            "worker": self.worker,
        }


def _triggering_artifact(device: str, model: str, delegate: str, results: list) -> dict[str, bytes]:
    """``DEVICE/MODEL/DELEGATE/triggering.npz`` (x: the triggering inputs as tested, seed_index,
    label_original, label_compressed), when the search found any."""
    found = sorted((r for r in results if r.triggered and r.image is not None), key=lambda r: r.seed_index)
    if not found:
        return {}
    buf = io.BytesIO()
    np.savez(buf, x=np.stack([np.asarray(r.image, dtype=np.uint8) for r in found]),
             seed_index=np.array([r.seed_index for r in found], dtype=np.int64),
             label_original=np.array([-1 if r.label_original is None else r.label_original for r in found]),
             label_compressed=np.array([-1 if r.label_compressed is None else r.label_compressed for r in found]))
    return {f"{combo_folder(device, model, delegate)}/{TRIGGERING_FILE}": buf.getvalue()}


#: A combination's triggering inputs, in its folder under the run's (``combo_folder``).
TRIGGERING_FILE = "triggering.npz"


class LabRunner:
    """Runs a lab file once and records it.

    Without ``[lab] executor`` the devices are driven from this host, one thread each (at most
    ``max_parallel_devices``); with ``executor = "dask://HOST:PORT"`` every combination goes to the
    Dask worker holding its device (``host.lab.dask_executor``). Either way this host writes the
    history and the artifacts, each combination as soon as it is back.

    Args:
        config: the parsed lab file.
        history: where runs are recorded.
        open_target: ``(uri, token) -> Target``; default: :func:`default_open_target` with the lab's
            ``connect_timeout_s``. Local threads only (a worker opens its own devices).
        reference_target: where original models run (default: a ``LocalTarget``). Local threads only.
        on_event: progress callback, called from worker threads.
        sleep: the backoff sleep (injected in tests).
    """

    def __init__(
        self,
        config: LabConfig,
        history: History,
        open_target: Callable[[str, str | None], Target] | None = None,
        reference_target: Target | None = None,
        on_event: Callable[[LabEvent], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        from host.targets.local import LocalTarget

        self.config = config
        self.history = history
        self.open_target = open_target or functools.partial(
            default_open_target, connect_timeout_s=config.connect_timeout_s, tls_ca_file=config.tls_ca_file,
            tls_server_name=config.tls_server_name)
        self.reference = reference_target or LocalTarget()
        self.on_event = on_event or (lambda event: None)
        self.sleep = sleep
        self.run_id = ""
        self.models: dict[str, LoadedPair] = {}
        self.done: set[tuple[str, str, str]] = set()
        self._rows: list[dict[str, Any]] = []
        self._rows_lock = threading.Lock()

    # -- the run ------------------------------------------------------------------------------
    def run(self, run_id: str | None = None) -> LabRun:
        """Run every combination; return when all are done.

        Args:
            run_id: resume this run: its passed combinations (in the history) are not redone.

        Raises:
            ConfigError: a model or seed file of the lab is unusable (checked before any device work).
            SchedulerUnreachableError: the lab's Dask scheduler does not answer (before any device work).
        """
        self._load_models()
        with contextlib.ExitStack() as stack:
            executor = None
            if self.config.executor:
                from host.lab.dask_executor import DaskExecutor

                executor = stack.enter_context(DaskExecutor(self.config.executor, self.config.connect_timeout_s))
            self.run_id = run_id or new_run_id()
            self.history.start_run(self.run_id, self.config.name, _now(), __version__, self.config.to_dict())
            self.done = self.history.passed_combos(self.run_id)
            with self._rows_lock:
                self._rows = [c for c in self.history.combos(self.run_id) if _combo_key(c) in self.done]
            devices = self._outcomes()
            status = "finished"
            try:
                if executor is not None:
                    executor.run(self, devices)
                else:
                    self._run_threads(devices)
            except BaseException:
                status = "interrupted"
                raise
            finally:
                self.history.finish_run(self.run_id, _now(), status)
        return LabRun(self.run_id, self.config.name, devices, sorted(self._rows, key=_combo_key),
                      self.config.out / self.run_id)

    def _outcomes(self) -> list[DeviceOutcome]:
        """The devices' outcomes to fill in; a resumed run starts from what its history says."""
        stored = {d["device"]: d for d in self.history.devices(self.run_id)}
        out = []
        for device in self.config.devices:
            row = stored.get(device.name)
            outcome = DeviceOutcome(device.name, device.uri)
            if row is not None:
                outcome.status, outcome.error = row["status"] or "pending", row["error"] or ""
                outcome.info = json.loads(row["info_json"] or "{}")
            out.append(outcome)
        return out

    def todo(self, device: DeviceConfig) -> list[tuple[ModelPair, str]]:
        """The device's combinations, in order, less those this run already passed."""
        return [(m, d) for m in self.config.models for d in self.config.delegates_for(device)
                if (device.name, m.name, d) not in self.done]

    def _run_threads(self, devices: list[DeviceOutcome]) -> None:
        with ThreadPoolExecutor(max_workers=self.config.max_parallel_devices, thread_name_prefix="lab-device") as pool:
            futures = [pool.submit(self._device_worker, d, o) for d, o in zip(self.config.devices, devices)]
            for future in futures:
                future.result()

    def _load_models(self) -> None:
        for pair in self.config.models:
            compressed = ModelSpec.from_path(pair.compressed)
            original = ModelSpec.from_path(pair.original)
            seed_set = load_seeds(pair.seeds)
            x, y = seed_set.x, seed_set.y
            limit = self.config.budget.seeds
            if limit is not None:
                x = x[:limit]
                y = None if y is None else y[:limit]
            self.models[pair.name] = (original, compressed, x, y)

    # -- one device, on this host -------------------------------------------------------------
    def _device_worker(self, device: DeviceConfig, outcome: DeviceOutcome) -> None:
        combos = self.todo(device)
        if not combos:
            return  # resumed run: all of this device's combinations passed already
        token = resolve_token(None, device.token_file or self.config.token_file)
        driver = DeviceDriver(self.config, device, token, self.models, self.run_id, self.open_target, self.reference,
                              self.on_event, self.sleep)
        try:
            driver.connect()
            self.record_device(driver.device_row(), outcome, driver.outcome)
            for k, (pair, delegate) in enumerate(combos):
                if not driver.usable:
                    for later_pair, later_delegate in combos[k:]:
                        self.store(driver.skipped(later_pair, later_delegate))
                    return
                self.store(driver.run(pair, delegate))
                if driver.outcome.status != "ok":  # disappeared during this combination
                    self.record_device(driver.device_row(), outcome, driver.outcome)
        finally:
            driver.close()

    # -- records (this host) ------------------------------------------------------------------
    def store(self, result: ComboResult) -> None:
        """Write one combination to the history (one transaction) and its artifacts to the run's folder."""
        if result.artifacts:
            folder = self.config.out / self.run_id
            for relative, content in result.artifacts.items():
                path = folder / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(path, content)
        self.history.record_combo(result.row, result.seeds)
        with self._rows_lock:
            self._rows = [r for r in self._rows if _combo_key(r) != _combo_key(result.row)] + [result.row]

    def record_device(self, row: dict[str, Any], outcome: DeviceOutcome, source: DeviceOutcome) -> None:
        """Write a device's row and copy its state into the run's :class:`DeviceOutcome`."""
        self.history.record_device(row)
        outcome.status, outcome.error, outcome.info = source.status, source.error, dict(source.info)


def _combo_key(row: dict[str, Any]) -> tuple[str, str, str]:
    return (row["device"], row["model"], row["delegate"])


def _quietly_close(target: Target) -> None:
    try:
        target.close()
    except Exception:  # noqa: BLE001 - a dead device may fail to close; the run goes on
        log.debug("closing %s failed", target, exc_info=True)
