"""Lab run history: every run, device and combination, with runtime/agent/model versions.

A plain path (or ``sqlite:///path``) uses the standard library's sqlite3. Any other URL
(``postgresql://lab@db/dflare``, ``mysql+pymysql://...``) goes through SQLAlchemy, installed with
the ``lab`` extra (``pip install dflare-edge[lab]``). The SQL is the portable subset both accept:
named parameters, ``VARCHAR``/``TEXT``/``INTEGER``/``DOUBLE PRECISION``, text keys (run ids sort by
start time), no autoincrement.

Writes are serialized by a lock, so the lab's device workers record each combination as it
finishes: a run killed halfway keeps everything finished before.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterable

from host.errors import ConfigError

#: Incrementing this means older histories need migrating (``_MIGRATIONS``); stored in lab_meta.
#: 2: ``candidates_per_trigger`` added; ``queries_per_trigger`` and ``success_rate`` follow
#: ``host.figures`` (the mean over triggered seeds, over searched seeds) instead of total queries over
#: triggered seeds and triggered over all seeds.
SCHEMA_VERSION = 2

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS lab_meta (key VARCHAR(64) PRIMARY KEY, value TEXT)""",
    """CREATE TABLE IF NOT EXISTS lab_runs (
        run_id VARCHAR(64) PRIMARY KEY, lab VARCHAR(200) NOT NULL, started_at VARCHAR(40) NOT NULL,
        finished_at VARCHAR(40), status VARCHAR(20) NOT NULL, host_version VARCHAR(40), config_json TEXT)""",
    """CREATE TABLE IF NOT EXISTS lab_devices (
        run_id VARCHAR(64) NOT NULL, device VARCHAR(200) NOT NULL, uri VARCHAR(500), status VARCHAR(20),
        error TEXT, runtime VARCHAR(100), runtime_version VARCHAR(100), agent_version VARCHAR(100),
        info_json TEXT, PRIMARY KEY (run_id, device))""",
    """CREATE TABLE IF NOT EXISTS lab_combos (
        run_id VARCHAR(64) NOT NULL, device VARCHAR(200) NOT NULL, model VARCHAR(200) NOT NULL,
        delegate VARCHAR(300) NOT NULL, status VARCHAR(20) NOT NULL, error TEXT, attempts INTEGER,
        seconds DOUBLE PRECISION, model_sha256 VARCHAR(64), original_sha256 VARCHAR(64),
        runtime VARCHAR(100), runtime_version VARCHAR(100), agent_version VARCHAR(100),
        seeds INTEGER, seed_deviations INTEGER, triggered INTEGER, flaky INTEGER,
        success_rate DOUBLE PRECISION, queries_per_trigger DOUBLE PRECISION,
        candidates_per_trigger DOUBLE PRECISION, total_queries INTEGER,
        latency_source VARCHAR(20), latency_mean_ms DOUBLE PRECISION, latency_p50_ms DOUBLE PRECISION,
        latency_p90_ms DOUBLE PRECISION, latency_p99_ms DOUBLE PRECISION,
        PRIMARY KEY (run_id, device, model, delegate))""",
    """CREATE TABLE IF NOT EXISTS lab_seeds (
        run_id VARCHAR(64) NOT NULL, device VARCHAR(200) NOT NULL, model VARCHAR(200) NOT NULL,
        delegate VARCHAR(300) NOT NULL, seed_index INTEGER NOT NULL, deviates INTEGER NOT NULL,
        status VARCHAR(20), queries INTEGER, PRIMARY KEY (run_id, device, model, delegate, seed_index))""",
)

COMBO_FIELDS = (
    "run_id", "device", "model", "delegate", "status", "error", "attempts", "seconds", "model_sha256",
    "original_sha256", "runtime", "runtime_version", "agent_version", "seeds", "seed_deviations", "triggered",
    "flaky", "success_rate", "queries_per_trigger", "candidates_per_trigger", "total_queries", "latency_source",
    "latency_mean_ms",
    "latency_p50_ms", "latency_p90_ms", "latency_p99_ms",
)
_SAME_COMBO = ("s.run_id = lab_combos.run_id AND s.device = lab_combos.device AND s.model = lab_combos.model "
               "AND s.delegate = lab_combos.delegate")
#: From version N to N + 1: statements in the portable SQL subset, recomputing stored figures from
#: the per-seed rows (``lab_seeds``) so that old and new runs compare.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "ALTER TABLE lab_combos ADD COLUMN candidates_per_trigger DOUBLE PRECISION",
        "UPDATE lab_combos SET queries_per_trigger = (SELECT AVG(s.queries) FROM lab_seeds s WHERE "
        f"{_SAME_COMBO} AND s.status = 'triggered')",
        "UPDATE lab_combos SET candidates_per_trigger = queries_per_trigger / 2",
        "UPDATE lab_combos SET success_rate = (SELECT CAST(SUM(CASE WHEN s.status = 'triggered' THEN 1 ELSE 0 END) "
        "AS DOUBLE PRECISION) / COUNT(*) FROM lab_seeds s WHERE "
        f"{_SAME_COMBO} AND s.status NOT IN ('', 'skipped')) WHERE success_rate IS NOT NULL",
    ),
}
DEVICE_FIELDS = ("run_id", "device", "uri", "status", "error", "runtime", "runtime_version", "agent_version",
                 "info_json")


class _SqliteBackend:
    def __init__(self, path: str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(path, check_same_thread=False, timeout=30)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open lab history {path}: {exc}") from None
        self.conn.row_factory = sqlite3.Row

    def execute(self, sql: str, rows: Iterable[dict[str, Any]]) -> None:
        rows = list(rows)
        with self.conn:
            if rows:
                self.conn.executemany(sql, rows)
            else:
                self.conn.execute(sql)

    def execute_all(self, statements: Iterable[str]) -> None:
        """Run statements (DDL included) in one transaction: all or none."""
        self.conn.execute("BEGIN")
        try:
            for statement in statements:
                self.conn.execute(statement)
        except BaseException:
            self.conn.rollback()
            raise
        self.conn.commit()

    def query(self, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        return [dict(r) for r in self.conn.execute(sql, params).fetchall()]

    def close(self) -> None:
        self.conn.close()


class _SqlAlchemyBackend:
    def __init__(self, url: str) -> None:
        try:
            import sqlalchemy
        except ImportError:
            raise ConfigError(
                f"lab history {url!r} is a database URL, which needs SQLAlchemy: pip install 'dflare-edge[lab]' "
                "(or give a file path to use SQLite)"
            ) from None
        self._text = sqlalchemy.text
        try:
            self.engine = sqlalchemy.create_engine(url)
        except Exception as exc:  # noqa: BLE001 - bad URLs and missing drivers raise various types
            raise ConfigError(f"cannot open lab history {url!r}: {exc}") from None

    def execute(self, sql: str, rows: Iterable[dict[str, Any]]) -> None:
        rows = list(rows)
        with self.engine.begin() as conn:
            if rows:
                conn.execute(self._text(sql), rows)
            else:
                conn.execute(self._text(sql))

    def execute_all(self, statements: Iterable[str]) -> None:
        """Run statements in one transaction (PostgreSQL's DDL is transactional too)."""
        with self.engine.begin() as conn:
            for statement in statements:
                conn.execute(self._text(statement))

    def query(self, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(self._text(sql), params)]

    def close(self) -> None:
        self.engine.dispose()


def _backend(url: str):
    if url.startswith("sqlite:///"):
        try:
            import sqlalchemy  # noqa: F401
        except ImportError:
            return _SqliteBackend(url[len("sqlite:///"):])
        return _SqlAlchemyBackend(url)
    if "://" in url:
        return _SqlAlchemyBackend(url)
    return _SqliteBackend(url)


class History:
    """The lab history database.

    Args:
        url: a file path (SQLite) or an SQLAlchemy URL.

    Raises:
        ConfigError: the database cannot be opened, or a URL needs SQLAlchemy and it is missing.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._db = _backend(url)
        self._lock = threading.Lock()
        for statement in _SCHEMA:
            self._db.execute(statement, [])
        meta = self._db.query("SELECT value FROM lab_meta WHERE key = :key", {"key": "schema_version"})
        if not meta:
            self._db.execute("INSERT INTO lab_meta (key, value) VALUES (:key, :value)",
                             [{"key": "schema_version", "value": str(SCHEMA_VERSION)}])
        else:
            self._migrate(int(meta[0]["value"]))

    def _migrate(self, version: int) -> None:
        """Bring a history of an older schema version up to :data:`SCHEMA_VERSION`, one step at a time."""
        if version > SCHEMA_VERSION:
            raise ConfigError(f"lab history {self.url} has schema version {version}, this dflare reads "
                              f"{SCHEMA_VERSION}: use a new history file or upgrade dflare-edge")
        while version < SCHEMA_VERSION:
            version += 1
            self._db.execute_all([*_MIGRATIONS[version - 1],
                                  f"UPDATE lab_meta SET value = '{version}' WHERE key = 'schema_version'"])

    # -- writes -------------------------------------------------------------------------------
    def _write(self, sql: str, rows: list[dict[str, Any]]) -> None:
        with self._lock:
            self._db.execute(sql, rows)

    def start_run(self, run_id: str, lab: str, started_at: str, host_version: str, config: dict[str, Any]) -> None:
        self._write("INSERT INTO lab_runs (run_id, lab, started_at, status, host_version, config_json) "
                    "VALUES (:run_id, :lab, :started_at, 'running', :host_version, :config_json)",
                    [{"run_id": run_id, "lab": lab, "started_at": started_at, "host_version": host_version,
                      "config_json": json.dumps(config, sort_keys=True)}])

    def finish_run(self, run_id: str, finished_at: str, status: str) -> None:
        self._write("UPDATE lab_runs SET finished_at = :finished_at, status = :status WHERE run_id = :run_id",
                    [{"run_id": run_id, "finished_at": finished_at, "status": status}])

    def record_device(self, row: dict[str, Any]) -> None:
        """Insert or replace one device's row (keys: :data:`DEVICE_FIELDS`)."""
        row = {k: row.get(k) for k in DEVICE_FIELDS}
        with self._lock:
            self._db.execute("DELETE FROM lab_devices WHERE run_id = :run_id AND device = :device", [row])
            self._db.execute(f"INSERT INTO lab_devices ({', '.join(DEVICE_FIELDS)}) "
                             f"VALUES ({', '.join(':' + k for k in DEVICE_FIELDS)})", [row])

    def record_combo(self, row: dict[str, Any], seeds: list[dict[str, Any]]) -> None:
        """Insert one combination (keys: :data:`COMBO_FIELDS`) and its per-seed rows."""
        row = {k: row.get(k) for k in COMBO_FIELDS}
        key = {k: row[k] for k in ("run_id", "device", "model", "delegate")}
        with self._lock:
            self._db.execute("INSERT INTO lab_combos ({}) VALUES ({})".format(
                ", ".join(COMBO_FIELDS), ", ".join(":" + k for k in COMBO_FIELDS)), [row])
            if seeds:
                self._db.execute(
                    "INSERT INTO lab_seeds (run_id, device, model, delegate, seed_index, deviates, status, queries) "
                    "VALUES (:run_id, :device, :model, :delegate, :seed_index, :deviates, :status, :queries)",
                    [{**key, **s} for s in seeds])

    # -- reads --------------------------------------------------------------------------------
    def runs(self, lab: str | None = None) -> list[dict[str, Any]]:
        """Runs, oldest first (optionally of one lab)."""
        if lab is None:
            return self._db.query("SELECT * FROM lab_runs ORDER BY started_at, run_id", {})
        return self._db.query("SELECT * FROM lab_runs WHERE lab = :lab ORDER BY started_at, run_id", {"lab": lab})

    def run(self, run_id: str) -> dict[str, Any]:
        """One run by id (a unique prefix is enough).

        Raises:
            ConfigError: no run, or an ambiguous prefix.
        """
        rows = self._db.query("SELECT * FROM lab_runs WHERE run_id LIKE :prefix ORDER BY run_id",
                              {"prefix": run_id.replace("%", "") + "%"})
        exact = [r for r in rows if r["run_id"] == run_id]
        if exact:
            return exact[0]
        if len(rows) != 1:
            known = ", ".join(r["run_id"] for r in self.runs()[-5:]) or "none"
            what = "no run" if not rows else f"{len(rows)} runs"
            raise ConfigError(f"{what} matching {run_id!r} in {self.url} (latest: {known})")
        return rows[0]

    def previous_run(self, run_id: str) -> dict[str, Any] | None:
        """The latest finished run of the same lab started before ``run_id``."""
        current = self.run(run_id)
        rows = self._db.query(
            "SELECT * FROM lab_runs WHERE lab = :lab AND run_id <> :run_id AND status = 'finished' "
            "AND (started_at < :started_at OR (started_at = :started_at AND run_id < :run_id)) "
            "ORDER BY started_at DESC, run_id DESC",
            {"lab": current["lab"], "run_id": current["run_id"], "started_at": current["started_at"]})
        return rows[0] if rows else None

    def devices(self, run_id: str) -> list[dict[str, Any]]:
        return self._db.query("SELECT * FROM lab_devices WHERE run_id = :run_id ORDER BY device", {"run_id": run_id})

    def combos(self, run_id: str) -> list[dict[str, Any]]:
        return self._db.query("SELECT * FROM lab_combos WHERE run_id = :run_id ORDER BY device, model, delegate",
                              {"run_id": run_id})

    def seeds(self, run_id: str) -> list[dict[str, Any]]:
        return self._db.query(
            "SELECT * FROM lab_seeds WHERE run_id = :run_id ORDER BY device, model, delegate, seed_index",
            {"run_id": run_id})

    def close(self) -> None:
        self._db.close()
