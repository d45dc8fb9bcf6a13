"""Run every combination of a lab file: devices x model pairs x delegates.

One worker thread per device, at most ``max_parallel_devices`` at once. A worker connects and
health-checks its device (``health.check_health``), then runs its combinations one after the other.
Each step that fails with a target error is retried after a backoff that doubles (``backoff_s``,
``2 * backoff_s`` ...), reconnecting first; when the attempts run out:

* connect / health check: the device is marked ``failed`` (or ``unhealthy``: a golden mismatch is
  not retried) and its combinations ``skipped``;
* a combination: it is marked ``failed``; if the device cannot be reconnected either, it has
  disappeared: the device is marked ``failed`` and its remaining combinations ``skipped``.

Other devices carry on. Every finished combination is written to the history at once.

A combination runs the compressed model on the device with the delegate and the original model on
the host (``local:``, ``reference_delegate``): top-1 deviations on the seeds themselves, latency per
image on the device (``host.targets.latency.measure_session``), then the search (``host.search.run``) when
the budget allows queries.
"""

from __future__ import annotations

import datetime as _dt
import functools
import logging
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
    """Internal: the device could not be reconnected after a failure."""


class LabRunner:
    """Runs a lab file once and records it.

    Args:
        config: the parsed lab file.
        history: where runs are recorded.
        open_target: ``(uri, token) -> Target``; default: :func:`default_open_target` with the lab's
            ``connect_timeout_s``.
        reference_target: where original models run (default: a ``LocalTarget``).
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
        self._models: dict[str, tuple[ModelSpec, ModelSpec, np.ndarray, np.ndarray | None]] = {}
        self._rows: list[dict[str, Any]] = []
        self._rows_lock = threading.Lock()

    # -- the run ------------------------------------------------------------------------------
    def run(self, run_id: str | None = None) -> LabRun:
        """Run every combination; return when all device workers are done.

        Raises:
            ConfigError: a model or seed file of the lab is unusable (checked before any device work).
        """
        self._load_models()
        self.run_id = run_id or new_run_id()
        self.history.start_run(self.run_id, self.config.name, _now(), __version__, self.config.to_dict())
        devices = [DeviceOutcome(d.name, d.uri) for d in self.config.devices]
        status = "finished"
        try:
            with ThreadPoolExecutor(max_workers=self.config.max_parallel_devices,
                                    thread_name_prefix="lab-device") as pool:
                futures = [pool.submit(self._device_worker, d, o) for d, o in zip(self.config.devices, devices)]
                for future in futures:
                    future.result()
        except BaseException:
            status = "interrupted"
            raise
        finally:
            self.history.finish_run(self.run_id, _now(), status)
        return LabRun(self.run_id, self.config.name, devices, sorted(self._rows, key=_combo_key),
                      self.config.out / self.run_id)

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
            self._models[pair.name] = (original, compressed, x, y)

    # -- one device ---------------------------------------------------------------------------
    def _device_worker(self, device: DeviceConfig, outcome: DeviceOutcome) -> None:
        combos = [(m, d) for m in self.config.models for d in self.config.delegates_for(device)]
        token = resolve_token(None, device.token_file or self.config.token_file)
        target: Target | None = None
        try:
            target = self._connect(device, token, outcome)
        except HealthCheckError as exc:
            outcome.status, outcome.error = "unhealthy", str(exc)
        except Error as exc:
            outcome.status, outcome.error = "failed", str(exc)
        if target is None:
            self._record_device(device, outcome)
            self.on_event(LabEvent("device_failed", device.name, message=outcome.error))
            for pair, delegate in combos:
                self._skip(device, pair, delegate, f"device {outcome.status}: {outcome.error}")
            return
        outcome.status = "ok"
        self._record_device(device, outcome)
        self.on_event(LabEvent("device_ready", device.name))
        try:
            for k, (pair, delegate) in enumerate(combos):
                try:
                    target = self._combo_with_retries(device, token, outcome, target, pair, delegate)
                except _DeviceGone as gone:
                    outcome.status, outcome.error = "failed", f"device disappeared: {gone}"
                    self._record_device(device, outcome)
                    self.on_event(LabEvent("device_failed", device.name, message=outcome.error))
                    for later_pair, later_delegate in combos[k + 1:]:
                        self._skip(device, later_pair, later_delegate, outcome.error)
                    target = None
                    return
        finally:
            if target is not None:
                _quietly_close(target)

    def _connect(self, device: DeviceConfig, token: str | None, outcome: DeviceOutcome) -> Target:
        """Open the target and health-check it, retrying target errors with backoff."""
        last: Error | None = None
        for attempt in range(self.config.retries + 1):
            if attempt:
                self._backoff(device, attempt, f"reconnecting after: {last}")
            target = None
            try:
                target = self.open_target(device.uri, token)
                outcome.info = check_health(target, self.config.health)
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

    def _backoff(self, device: DeviceConfig, attempt: int, why: str) -> None:
        delay_s = self.config.backoff_s * (2 ** (attempt - 1))
        self.on_event(LabEvent("retry", device.name, message=f"attempt {attempt + 1} in {delay_s:.1f} s: {why}"))
        self.sleep(delay_s)

    def _combo_with_retries(self, device: DeviceConfig, token: str | None, outcome: DeviceOutcome,
                            target: Target, pair: ModelPair, delegate: str) -> Target:
        self.on_event(LabEvent("combo_started", device.name, pair.name, delegate))
        start = time.monotonic()
        last: Error | None = None
        for attempt in range(self.config.retries + 1):
            if attempt:
                self._backoff(device, attempt, f"{pair.name}/{delegate}: {last}")
                _quietly_close(target)
                try:
                    target = self._connect(device, token, outcome)
                except Error as exc:
                    row = self._row(device, outcome, pair, delegate, "failed", str(last), attempt, start)
                    self._store(row, [])
                    self.on_event(LabEvent("combo_failed", device.name, pair.name, delegate, str(last)))
                    raise _DeviceGone(str(exc)) from None
            try:
                row, seeds = self._run_combo(target, device, outcome, pair, delegate)
            except TargetError as exc:
                last = exc
                continue
            except Error as exc:  # a model/config problem on this combination: retrying will not help
                last = exc
                break
            row.update(attempts=attempt + 1, seconds=time.monotonic() - start)
            self._store(row, seeds)
            self.on_event(LabEvent("combo_passed", device.name, pair.name, delegate))
            return target
        row = self._row(device, outcome, pair, delegate, "failed", str(last), self.config.retries + 1, start)
        self._store(row, [])
        self.on_event(LabEvent("combo_failed", device.name, pair.name, delegate, str(last)))
        return target

    # -- one combination ----------------------------------------------------------------------
    def _run_combo(self, target: Target, device: DeviceConfig, outcome: DeviceOutcome, pair: ModelPair,
                   delegate: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        original, compressed, x, y = self._models[pair.name]
        budget = self.config.budget
        cs = target.load(compressed.with_options(delegate=delegate))
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
        row = self._row(device, outcome, pair, delegate, "passed", "", 1, time.monotonic())
        found = figures(results)
        row.update(
            seeds=len(x), seed_deviations=int(deviates.sum()), triggered=found.triggered, flaky=found.flaky,
            success_rate=found.success_rate if results else None, queries_per_trigger=found.queries_per_trigger,
            candidates_per_trigger=found.candidates_per_trigger,
            total_queries=found.total_queries, latency_source=latency.source, latency_mean_ms=latency.mean_ms,
            latency_p50_ms=latency.p50_ms, latency_p90_ms=latency.p90_ms, latency_p99_ms=latency.p99_ms,
        )
        return row, seeds

    def _search(self, original, compressed, x: np.ndarray, y: np.ndarray | None) -> list:
        from host.search import Budget
        from host.search import run as search_run

        budget = self.config.budget
        labels = None if y is None else [int(v) for v in y]
        return list(search_run(original, compressed, x, algo=budget.algo,
                               budget=Budget(max_queries=budget.max_queries, max_seconds=budget.timeout_s),
                               rng_seed=budget.rng_seed, labels=labels))

    # -- records ------------------------------------------------------------------------------
    def _row(self, device: DeviceConfig, outcome: DeviceOutcome, pair: ModelPair, delegate: str, status: str,
             error: str, attempts: int, start: float) -> dict[str, Any]:
        original, compressed, _, _ = self._models[pair.name]
        info = outcome.info
        return {
            "run_id": self.run_id, "device": device.name, "model": pair.name, "delegate": delegate,
            "status": status, "error": error, "attempts": attempts, "seconds": max(0.0, time.monotonic() - start),
            "model_sha256": compressed.sha256, "original_sha256": original.sha256,
            "runtime": info.get("runtime"), "runtime_version": info.get("runtime_version"),
            "agent_version": info.get("agent_version") or (f"host {__version__}" if info else None),
        }

    def _skip(self, device: DeviceConfig, pair: ModelPair, delegate: str, why: str) -> None:
        row = self._row(device, DeviceOutcome(device.name, device.uri), pair, delegate, "skipped", why, 0,
                        time.monotonic())
        self._store(row, [])
        self.on_event(LabEvent("combo_skipped", device.name, pair.name, delegate, why))

    def _store(self, row: dict[str, Any], seeds: list[dict[str, Any]]) -> None:
        self.history.record_combo(row, seeds)
        with self._rows_lock:
            self._rows.append(row)

    def _record_device(self, device: DeviceConfig, outcome: DeviceOutcome) -> None:
        import json

        info = outcome.info
        self.history.record_device({
            "run_id": self.run_id, "device": device.name, "uri": device.uri, "status": outcome.status,
            "error": outcome.error, "runtime": info.get("runtime"), "runtime_version": info.get("runtime_version"),
            "agent_version": info.get("agent_version"), "info_json": json.dumps(info, sort_keys=True, default=str),
        })


def _combo_key(row: dict[str, Any]) -> tuple[str, str, str]:
    return (row["device"], row["model"], row["delegate"])


def _quietly_close(target: Target) -> None:
    try:
        target.close()
    except Exception:  # noqa: BLE001 - a dead device may fail to close; the run goes on
        log.debug("closing %s failed", target, exc_info=True)
