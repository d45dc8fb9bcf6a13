"""The lab file (``lab.toml``): devices, model pairs, delegates, budgets, health check, history.

Relative paths are relative to the file. Every problem is a :class:`host.errors.ConfigError` that
names the table and key. Example (docs/lab.md has a longer one)::

    [lab]
    name = "nightly"
    history = "lab-history.sqlite"   # a path (SQLite) or an SQLAlchemy URL: postgresql+psycopg://lab@db/dflare
    # executor = "dask://lab1:8786"  # combinations on the dflare lab workers holding the devices
    delegates = ["cpu", "xnnpack"]
    max_parallel_devices = 4
    retries = 2
    backoff_s = 2.0

    [budget]
    seeds = 20
    max_queries = 500

    [[device]]
    name = "pixel7"
    adb_serial = "28031FDH2000AB"

    [[device]]
    name = "rpi4"
    uri = "grpc://10.0.0.7:50051"
    token_file = "rpi4.token"

    [[model]]
    name = "digits28-int8"
    original = "models/digits28-float32.tflite"
    compressed = "models/digits28-int8.tflite"
    seeds = "seeds/digits28.npz"
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from host.errors import ConfigError
from host.targets.base import DEFAULT_CONNECT_TIMEOUT_S
from host.toml_file import read_toml, resolve_path, unknown_key_hint

#: Devices worked on at once: one worker per device; a lab server with many boards still bounds
#: its own CPU and network use.
DEFAULT_MAX_PARALLEL_DEVICES = 4
#: Extra attempts after a failure (connect, health check, or a combination), with doubling backoff.
DEFAULT_RETRIES = 2
#: First backoff in seconds: long enough for an agent restart or a USB re-enumeration.
DEFAULT_BACKOFF_S = 2.0
#: A p50 latency this many times the baseline's is a regression (1.5: beyond run-to-run noise
#: on phones with thermal throttling, yet catching a delegate silently falling back to CPU).
DEFAULT_LATENCY_RATIO = 1.5
#: Latency changes smaller than this are never regressions (timer and scheduler noise).
DEFAULT_LATENCY_MIN_DELTA_MS = 0.05
#: With a Dask executor: how long the lab host waits for some worker to advertise a device that has
#: combinations left (none at the start, or its worker died) before it gives the device up. Long
#: enough for a worker restarted by systemd or a device moved to another host; short enough that a
#: nightly run does not hang on a host that is down.
DEFAULT_WORKER_WAIT_S = 60.0
#: Golden-output tolerance: max |expected - actual| over the probabilities. Catches a broken device
#: or runtime, not the last-bit differences between CPU kernels on different ISAs.
DEFAULT_HEALTH_ATOL = 1e-2

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class DeviceConfig:
    """One device: a target URI (or an adb serial), optional token file and delegate override."""

    name: str
    uri: str
    token_file: Path | None = None
    delegates: tuple[str, ...] | None = None  # None: the lab's delegates


@dataclass(frozen=True)
class ModelPair:
    """An original/compressed model pair and the seeds to test them on."""

    name: str
    original: Path
    compressed: Path
    seeds: Path


@dataclass(frozen=True)
class CombinationBudget:
    """What one combination spends: seeds, search budget, latency runs."""

    algo: str = "dflare"
    seeds: int | None = 20  # the first N seeds of the file; None: all
    max_queries: int | None = 500  # per seed; 0 disables the search (seed comparison + latency only)
    timeout_s: float | None = None  # per seed
    rng_seed: int = 0
    latency_runs: int = 20
    batch_size: int = 8

    @property
    def search(self) -> bool:
        return self.max_queries != 0


@dataclass(frozen=True)
class HealthCheck:
    """A golden inference: ``model`` on ``inputs`` must give ``expected`` within ``atol`` (same top-1)."""

    model: Path
    inputs: Path
    expected: Path
    delegate: str = "cpu"
    atol: float = DEFAULT_HEALTH_ATOL


@dataclass(frozen=True)
class LabConfig:
    """A whole lab file."""

    path: Path
    name: str
    history: str
    out: Path
    devices: tuple[DeviceConfig, ...]
    models: tuple[ModelPair, ...]
    delegates: tuple[str, ...] = ("cpu",)
    reference_delegate: str = "cpu"
    max_parallel_devices: int = DEFAULT_MAX_PARALLEL_DEVICES
    retries: int = DEFAULT_RETRIES
    backoff_s: float = DEFAULT_BACKOFF_S
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    token_file: Path | None = None
    tls_ca_file: Path | None = None  # verifies grpcs:// (and TLS grpc://) agents' certificates
    tls_server_name: str | None = None
    budget: CombinationBudget = field(default_factory=CombinationBudget)
    health: HealthCheck | None = None
    latency_ratio: float = DEFAULT_LATENCY_RATIO
    latency_min_delta_ms: float = DEFAULT_LATENCY_MIN_DELTA_MS
    executor: str | None = None  # None: this host's threads; "tcp://HOST:PORT": a Dask scheduler
    worker_wait_s: float = DEFAULT_WORKER_WAIT_S

    def delegates_for(self, device: DeviceConfig) -> tuple[str, ...]:
        return device.delegates if device.delegates is not None else self.delegates

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view, stored with every run in the history."""
        def plain(value: Any) -> Any:
            if isinstance(value, Path):
                return str(value)
            if isinstance(value, tuple):
                return [plain(v) for v in value]
            if hasattr(value, "__dataclass_fields__"):
                return {k: plain(getattr(value, k)) for k in value.__dataclass_fields__}
            return value

        return plain(self)


def load_lab_config(path: str | Path) -> LabConfig:
    """Read and validate a lab file.

    Raises:
        ConfigError: the file is missing or not TOML, a table or key is unknown, a value has the wrong
            type, names repeat, or there are no devices or models.
    """
    path = Path(path)
    data = read_toml(path, "lab file")
    return _LabParser(path, data).parse()


class _LabParser:
    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.base = path.parent
        self.data = data

    def fail(self, where: str, msg: str) -> ConfigError:
        return ConfigError(f"{self.path}: {where}: {msg}")

    def keys(self, table: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
        for key in table:
            if key not in allowed:
                raise self.fail(where, f"unknown key {key!r}{unknown_key_hint(key, allowed)}")

    def path_value(self, value: Any, where: str) -> Path:
        if not isinstance(value, str) or not value:
            raise self.fail(where, f"expected a file path, got {value!r}")
        return resolve_path(value, self.base)

    def number(self, table: dict, key: str, where: str, default: Any, kind: type, minimum: float) -> Any:
        value = table.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and isinstance(value, float)):
            raise self.fail(f"{where}.{key}", f"expected {'an integer' if kind is int else 'a number'}, got {value!r}")
        if value < minimum:
            raise self.fail(f"{where}.{key}", f"must be at least {minimum}, got {value!r}")
        return kind(value)

    def text(self, table: dict, key: str, where: str) -> str | None:
        value = table.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise self.fail(f"{where}.{key}", f"expected a non-empty string, got {value!r}")
        return value

    def delegates(self, value: Any, where: str) -> tuple[str, ...]:
        from device_agent.runtime import parse_delegate

        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise self.fail(where, f"expected a list of delegate names, got {value!r}")
        for v in value:
            try:
                parse_delegate(v)
            except ValueError as exc:
                raise self.fail(where, str(exc)) from None
        return tuple(value)

    def parse(self) -> LabConfig:
        self.keys(self.data, ("lab", "budget", "health", "regression", "device", "model"), "top level")
        lab = self.data.get("lab", {})
        self.keys(lab, ("name", "history", "out", "delegates", "reference_delegate", "max_parallel_devices",
                        "retries", "backoff_s", "connect_timeout_s", "token_file", "tls_ca_file", "tls_server_name",
                        "executor", "worker_wait_s"),
                  "[lab]")
        name = lab.get("name", self.path.stem)
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise self.fail("[lab].name", f"use letters, digits, '.', '_' or '-', got {name!r}")
        history = lab.get("history", f"{name}-history.sqlite")
        if not isinstance(history, str) or not history:
            raise self.fail("[lab].history", f"expected a path or a database URL, got {history!r}")
        if "://" not in history:
            history = str(self.path_value(history, "[lab].history"))
        out = self.path_value(lab.get("out", f"{name}-runs"), "[lab].out")
        executor = self.executor(lab.get("executor"))
        devices = self.parse_devices(executor is not None)
        models = self.parse_models()
        reference = lab.get("reference_delegate", "cpu")
        return LabConfig(
            path=self.path,
            name=name,
            history=history,
            out=out,
            devices=devices,
            models=models,
            delegates=self.delegates(lab.get("delegates", ["cpu"]), "[lab].delegates"),
            reference_delegate=self.delegates(reference, "[lab].reference_delegate")[0],
            max_parallel_devices=self.number(lab, "max_parallel_devices", "[lab]", DEFAULT_MAX_PARALLEL_DEVICES,
                                             int, 1),
            retries=self.number(lab, "retries", "[lab]", DEFAULT_RETRIES, int, 0),
            backoff_s=self.number(lab, "backoff_s", "[lab]", DEFAULT_BACKOFF_S, float, 0),
            connect_timeout_s=self.number(lab, "connect_timeout_s", "[lab]", DEFAULT_CONNECT_TIMEOUT_S, float, 0.1),
            token_file=self.path_value(lab["token_file"], "[lab].token_file") if "token_file" in lab else None,
            tls_ca_file=self.path_value(lab["tls_ca_file"], "[lab].tls_ca_file") if "tls_ca_file" in lab else None,
            tls_server_name=self.text(lab, "tls_server_name", "[lab]"),
            budget=self.parse_budget(),
            health=self.parse_health(),
            executor=executor,
            worker_wait_s=self.number(lab, "worker_wait_s", "[lab]", DEFAULT_WORKER_WAIT_S, float, 0.1),
            **self.parse_regression(),
        )

    def executor(self, value: Any) -> str | None:
        """``[lab].executor``: absent or "local" for this host's threads, ``dask://HOST:PORT`` (or a Dask
        address, ``tcp://`` / ``tls://``) for a Dask scheduler; returned as the scheduler's address."""
        if value is None or value == "local":
            return None
        if isinstance(value, str):
            for prefix, scheme in (("dask://", "tcp://"), ("tcp://", "tcp://"), ("tls://", "tls://")):
                rest = value[len(prefix):] if value.startswith(prefix) else None
                if rest and re.match(r"^[^:/\s]+:\d+$", rest):
                    return scheme + rest
        raise self.fail("[lab].executor", f'expected "local" or "dask://HOST:PORT" (a Dask scheduler), got {value!r}')

    def parse_devices(self, executor: bool = False) -> tuple[DeviceConfig, ...]:
        raw = self.data.get("device", [])
        if not isinstance(raw, list) or not raw:
            raise self.fail("[[device]]", "list at least one device ([[device]] with name and uri or adb_serial)")
        devices: list[DeviceConfig] = []
        for i, table in enumerate(raw):
            where = f"[[device]] #{i + 1}"
            self.keys(table, ("name", "uri", "adb_serial", "token_file", "delegates"), where)
            if "uri" in table and "adb_serial" in table or not (executor or "uri" in table or "adb_serial" in table):
                raise self.fail(where, "give exactly one of uri (local:, grpc://HOST:PORT) or adb_serial")
            if "uri" not in table and "adb_serial" not in table:
                # With an executor, the worker holding the device knows where it is (--device NAME=URI).
                if "name" not in table:
                    raise self.fail(where, "name the device (with an executor, its worker gives the uri)")
                uri = ""
            else:
                uri = table.get("uri") or f"adb://{table['adb_serial']}"
            if not isinstance(uri, str) or uri and not uri.startswith(("local", "grpc://", "grpcs://", "adb://")):
                raise self.fail(where, f"uri must be local:, grpc://HOST:PORT, grpcs://HOST:PORT or adb://SERIAL, "
                                       f"got {uri!r}")
            name = table.get("name", uri)
            if not isinstance(name, str) or not _NAME_RE.match(name) and executor:
                raise self.fail(where, f"with an executor, device names are letters, digits, '.', '_' or '-' "
                                       f"(they name Dask resources), got {name!r}")
            if not isinstance(name, str) or not name:
                raise self.fail(where, f"name must be a non-empty string, got {name!r}")
            if any(d.name == name for d in devices):
                raise self.fail(where, f"device name {name!r} is used twice")
            token = self.path_value(table["token_file"], f"{where}.token_file") if "token_file" in table else None
            delegates = self.delegates(table["delegates"], f"{where}.delegates") if "delegates" in table else None
            devices.append(DeviceConfig(name, uri, token, delegates))
        return tuple(devices)

    def parse_models(self) -> tuple[ModelPair, ...]:
        raw = self.data.get("model", [])
        if not isinstance(raw, list) or not raw:
            raise self.fail("[[model]]", "list at least one model pair ([[model]] with original, compressed, seeds)")
        models: list[ModelPair] = []
        for i, table in enumerate(raw):
            where = f"[[model]] #{i + 1}"
            self.keys(table, ("name", "original", "compressed", "seeds"), where)
            missing = [k for k in ("original", "compressed", "seeds") if k not in table]
            if missing:
                raise self.fail(where, f"missing {', '.join(missing)}")
            compressed = self.path_value(table["compressed"], f"{where}.compressed")
            name = table.get("name", compressed.stem)
            if not isinstance(name, str) or not name:
                raise self.fail(where, f"name must be a non-empty string, got {name!r}")
            if any(m.name == name for m in models):
                raise self.fail(where, f"model name {name!r} is used twice")
            models.append(ModelPair(name, self.path_value(table["original"], f"{where}.original"), compressed,
                                    self.path_value(table["seeds"], f"{where}.seeds")))
        return tuple(models)

    def parse_budget(self) -> CombinationBudget:
        table = self.data.get("budget", {})
        self.keys(table, ("algo", "seeds", "max_queries", "timeout_s", "rng_seed", "latency_runs", "batch_size"),
                  "[budget]")
        algo = table.get("algo", "dflare")
        from host.search import ALGORITHMS

        if algo not in ALGORITHMS:
            raise self.fail("[budget].algo", f"unknown algorithm {algo!r}; choose one of {', '.join(ALGORITHMS)}")
        budget = CombinationBudget(
            algo=algo,
            seeds=self.number(table, "seeds", "[budget]", 20, int, 1),
            max_queries=self.number(table, "max_queries", "[budget]", 500, int, 0),
            timeout_s=self.number(table, "timeout_s", "[budget]", None, float, 0.001),
            rng_seed=self.number(table, "rng_seed", "[budget]", 0, int, 0),
            latency_runs=self.number(table, "latency_runs", "[budget]", 20, int, 1),
            batch_size=self.number(table, "batch_size", "[budget]", 8, int, 1),
        )
        if budget.search and budget.max_queries is None and budget.timeout_s is None:
            raise self.fail("[budget]", "the search needs max_queries or timeout_s (max_queries = 0 turns it off)")
        return budget

    def parse_health(self) -> HealthCheck | None:
        table = self.data.get("health")
        if table is None:
            return None
        self.keys(table, ("model", "inputs", "expected", "delegate", "atol"), "[health]")
        missing = [k for k in ("model", "inputs", "expected") if k not in table]
        if missing:
            raise self.fail("[health]", f"missing {', '.join(missing)} (record expected with `dflare lab golden`)")
        return HealthCheck(
            self.path_value(table["model"], "[health].model"),
            self.path_value(table["inputs"], "[health].inputs"),
            self.path_value(table["expected"], "[health].expected"),
            self.delegates(table.get("delegate", "cpu"), "[health].delegate")[0],
            self.number(table, "atol", "[health]", DEFAULT_HEALTH_ATOL, float, 0),
        )

    def parse_regression(self) -> dict[str, float]:
        table = self.data.get("regression", {})
        self.keys(table, ("latency_ratio", "latency_min_delta_ms"), "[regression]")
        return {
            "latency_ratio": self.number(table, "latency_ratio", "[regression]", DEFAULT_LATENCY_RATIO, float, 1.0),
            "latency_min_delta_ms": self.number(table, "latency_min_delta_ms", "[regression]",
                                                DEFAULT_LATENCY_MIN_DELTA_MS, float, 0),
        }
