"""Lab run history: every run, device and combination, with runtime/agent/model versions.

A plain path (or ``sqlite:///path``) uses the standard library's sqlite3: the single-host default.
Any other URL goes through SQLAlchemy, installed with the ``lab`` extra (``pip install
'dflare-edge[lab]'``); ``postgresql+psycopg://lab@db/dflare`` is the tested setup for a lab shared
by several hosts (docs/lab.md). The SQL is the subset SQLite and PostgreSQL both accept: named
parameters, ``VARCHAR``/``TEXT``/``INTEGER``/``DOUBLE PRECISION``, text keys (run ids sort by start
time), no autoincrement, and ``INSERT ... ON CONFLICT`` for the upserts.

Every write is one transaction: a combination's row and its per-seed rows land together or not at
all, so a process killed halfway leaves no half-written combination, and everything finished before
stays. Rows are keyed (primary keys), and writes are upserts: several writers (lab hosts, or two
attempts at the same combination) never make a duplicate. A ``passed`` combination is final: a later
write of the same key does not replace it, which is what makes a resumed run idempotent.

Opening a history creates the schema or migrates it (``SCHEMA_VERSION``) in one transaction; on
PostgreSQL under an advisory lock, so hosts opening the same new database at once do not race.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

from host.errors import ConfigError

#: Incrementing this means older histories need migrating (``_MIGRATIONS``); stored in lab_meta.
#: 2: ``candidates_per_trigger`` added; ``queries_per_trigger`` and ``success_rate`` follow
#: ``host.figures`` (the mean over triggered seeds, over searched seeds) instead of total queries over
#: triggered seeds and triggered over all seeds.
#: 3: ``worker`` (the Dask worker that ran it; empty for the lab host's own threads) on combinations
#: and devices.
SCHEMA_VERSION = 3

#: Key of the PostgreSQL advisory lock taken while creating or migrating the schema (any constant
#: works; this one is "dflare" in ASCII, unlikely to collide with another application's lock).
_PG_SCHEMA_LOCK_KEY = 0x64666C617265

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS lab_meta (key VARCHAR(64) PRIMARY KEY, value TEXT)""",
    """CREATE TABLE IF NOT EXISTS lab_runs (
        run_id VARCHAR(64) PRIMARY KEY, lab VARCHAR(200) NOT NULL, started_at VARCHAR(40) NOT NULL,
        finished_at VARCHAR(40), status VARCHAR(20) NOT NULL, host_version VARCHAR(40), config_json TEXT)""",
    """CREATE TABLE IF NOT EXISTS lab_devices (
        run_id VARCHAR(64) NOT NULL, device VARCHAR(200) NOT NULL, uri VARCHAR(500), status VARCHAR(20),
        error TEXT, runtime VARCHAR(100), runtime_version VARCHAR(100), agent_version VARCHAR(100),
        info_json TEXT, worker VARCHAR(200), PRIMARY KEY (run_id, device))""",
    """CREATE TABLE IF NOT EXISTS lab_combos (
        run_id VARCHAR(64) NOT NULL, device VARCHAR(200) NOT NULL, model VARCHAR(200) NOT NULL,
        delegate VARCHAR(300) NOT NULL, status VARCHAR(20) NOT NULL, error TEXT, attempts INTEGER,
        seconds DOUBLE PRECISION, model_sha256 VARCHAR(64), original_sha256 VARCHAR(64),
        runtime VARCHAR(100), runtime_version VARCHAR(100), agent_version VARCHAR(100),
        seeds INTEGER, seed_deviations INTEGER, triggered INTEGER, flaky INTEGER,
        success_rate DOUBLE PRECISION, queries_per_trigger DOUBLE PRECISION,
        candidates_per_trigger DOUBLE PRECISION, total_queries INTEGER,
        latency_source VARCHAR(20), latency_mean_ms DOUBLE PRECISION, latency_p50_ms DOUBLE PRECISION,
        latency_p90_ms DOUBLE PRECISION, latency_p99_ms DOUBLE PRECISION, worker VARCHAR(200),
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
    "latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "worker",
)
COMBO_KEY = ("run_id", "device", "model", "delegate")
_SAME_COMBO = ("s.run_id = lab_combos.run_id AND s.device = lab_combos.device AND s.model = lab_combos.model "
               "AND s.delegate = lab_combos.delegate")
#: From version N to N + 1: statements in the portable SQL subset, recomputing stored figures from
#: the per-seed rows (``lab_seeds``) so that old and new runs compare, or columns to add.
_MIGRATIONS: dict[int, tuple[str | tuple[str, str, str], ...]] = {
    1: (
        "ALTER TABLE lab_combos ADD COLUMN candidates_per_trigger DOUBLE PRECISION",
        "UPDATE lab_combos SET queries_per_trigger = (SELECT AVG(s.queries) FROM lab_seeds s WHERE "
        f"{_SAME_COMBO} AND s.status = 'triggered')",
        "UPDATE lab_combos SET candidates_per_trigger = queries_per_trigger / 2",
        "UPDATE lab_combos SET success_rate = (SELECT CAST(SUM(CASE WHEN s.status = 'triggered' THEN 1 ELSE 0 END) "
        "AS DOUBLE PRECISION) / COUNT(*) FROM lab_seeds s WHERE "
        f"{_SAME_COMBO} AND s.status NOT IN ('', 'skipped')) WHERE success_rate IS NOT NULL",
    ),
    2: (
        ("lab_combos", "worker", "VARCHAR(200)"),  # (table, column, type): added unless it is there already
        ("lab_devices", "worker", "VARCHAR(200)"),
    ),
}
DEVICE_FIELDS = ("run_id", "device", "uri", "status", "error", "runtime", "runtime_version", "agent_version",
                 "info_json", "worker")


def _upsert(table: str, fields: tuple[str, ...], key: tuple[str, ...], keep_if: str | None = None) -> str:
    """``INSERT ... ON CONFLICT (key) DO UPDATE`` of every non-key field (SQLite >= 3.24 and PostgreSQL).

    ``keep_if``: a condition on the stored row under which it is kept as it is.
    """
    updates = ", ".join(f"{f} = excluded.{f}" for f in fields if f not in key)
    where = f" WHERE NOT ({keep_if})" if keep_if else ""
    return (f"INSERT INTO {table} ({', '.join(fields)}) VALUES ({', '.join(':' + f for f in fields)}) "
            f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}{where}")


_SEED_FIELDS = ("run_id", "device", "model", "delegate", "seed_index", "deviates", "status", "queries")
_UPSERT_COMBO = _upsert("lab_combos", COMBO_FIELDS, COMBO_KEY, keep_if="lab_combos.status = 'passed'")
_UPSERT_DEVICE = _upsert("lab_devices", DEVICE_FIELDS, ("run_id", "device"))
_DELETE_SEEDS = ("DELETE FROM lab_seeds WHERE run_id = :run_id AND device = :device AND model = :model "
                 "AND delegate = :delegate")
_INSERT_SEEDS = (f"INSERT INTO lab_seeds ({', '.join(_SEED_FIELDS)}) "
                 f"VALUES ({', '.join(':' + f for f in _SEED_FIELDS)})")


class _SqliteTx:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def run(self, sql: str, params: dict[str, Any] | list[dict[str, Any]] | None = None) -> int:
        """Execute (a list of parameter rows: once per row); return the rows changed."""
        if isinstance(params, list):
            return self._conn.executemany(sql, params).rowcount if params else 0
        return self._conn.execute(sql, params or {}).rowcount

    def rows(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return [dict(r) for r in self._conn.execute(sql, params or {}).fetchall()]


class _SqliteBackend:
    dialect = "sqlite"

    def __init__(self, path: str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            # isolation_level=None: no implicit transactions, so the BEGIN/COMMIT below are the only ones.
            self.conn = sqlite3.connect(path, check_same_thread=False, timeout=30, isolation_level=None)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open lab history {path}: {exc}") from None
        self.conn.row_factory = sqlite3.Row

    @contextlib.contextmanager
    def transaction(self) -> Iterator[_SqliteTx]:
        """One transaction, taking the write lock up front (two writers never deadlock on a lock upgrade).

        Leaving the block normally commits; an exception rolls everything back.
        """
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield _SqliteTx(self.conn)
        except BaseException:
            self.conn.rollback()
            raise
        self.conn.commit()

    def query(self, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        return [dict(r) for r in self.conn.execute(sql, params).fetchall()]

    def close(self) -> None:
        self.conn.close()


class _SqlAlchemyTx:
    def __init__(self, conn: Any, text: Callable[[str], Any]) -> None:
        self._conn = conn
        self._text = text

    def run(self, sql: str, params: dict[str, Any] | list[dict[str, Any]] | None = None) -> int:
        if isinstance(params, list) and not params:
            return 0
        return self._conn.execute(self._text(sql), params or {}).rowcount

    def rows(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return [dict(r._mapping) for r in self._conn.execute(self._text(sql), params or {})]


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
            # pool_pre_ping: a connection the database server dropped overnight is replaced, not reused.
            self.engine = sqlalchemy.create_engine(url, pool_pre_ping=True)
        except Exception as exc:  # noqa: BLE001 - bad URLs and missing drivers raise various types
            raise ConfigError(f"cannot open lab history {safe_url(url)}: {exc}") from None
        self.dialect = self.engine.dialect.name

    @contextlib.contextmanager
    def transaction(self) -> Iterator[_SqlAlchemyTx]:
        """One transaction (PostgreSQL's DDL is transactional too): commit on success, else roll back."""
        with self.engine.begin() as conn:
            yield _SqlAlchemyTx(conn, self._text)

    def query(self, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(self._text(sql), params)]

    def close(self) -> None:
        self.engine.dispose()


def safe_url(url: str) -> str:
    """The history URL without its password, for messages and reports."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


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
        ConfigError: the database cannot be opened or reached, a URL needs SQLAlchemy and it is missing,
            or the schema is newer than this dflare reads.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._db = _backend(url)
        self._lock = threading.Lock()
        try:
            self._open_schema()
        except ConfigError:
            self._db.close()
            raise
        except Exception as exc:  # noqa: BLE001 - sqlite3, SQLAlchemy and driver errors (refused, auth ...)
            self._db.close()
            raise ConfigError(f"cannot open lab history {safe_url(url)}: {exc}") from None

    def _open_schema(self) -> None:
        """Create the tables, or migrate older ones up to :data:`SCHEMA_VERSION` one step at a time: one transaction."""
        with self._db.transaction() as tx:
            if self._db.dialect == "postgresql":
                tx.rows(f"SELECT pg_advisory_xact_lock({_PG_SCHEMA_LOCK_KEY})")
            for statement in _SCHEMA:
                tx.run(statement)
            meta = tx.rows("SELECT value FROM lab_meta WHERE key = 'schema_version'")
            if not meta:
                tx.run("INSERT INTO lab_meta (key, value) VALUES ('schema_version', :value)",
                       {"value": str(SCHEMA_VERSION)})
                return
            version = int(meta[0]["value"])
            if version > SCHEMA_VERSION:
                raise ConfigError(f"lab history {safe_url(self.url)} has schema version {version}, this dflare "
                                  f"reads {SCHEMA_VERSION}: use a new history file or upgrade dflare-edge")
            while version < SCHEMA_VERSION:
                for statement in _MIGRATIONS[version]:
                    if isinstance(statement, tuple):
                        table, column, kind = statement
                        if column not in self._columns(tx, table):
                            tx.run(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
                    else:
                        tx.run(statement)
                version += 1
                tx.run("UPDATE lab_meta SET value = :value WHERE key = 'schema_version'", {"value": str(version)})

    def _columns(self, tx: Any, table: str) -> set[str]:
        if self._db.dialect == "sqlite":
            return {r["name"] for r in tx.rows(f"PRAGMA table_info({table})")}
        return {r["column_name"] for r in tx.rows(
            "SELECT column_name FROM information_schema.columns WHERE table_name = :table "
            "AND table_schema = current_schema()", {"table": table})}

    # -- writes -------------------------------------------------------------------------------
    def start_run(self, run_id: str, lab: str, started_at: str, host_version: str, config: dict[str, Any]) -> None:
        """Record a run as running; an existing run of that id (a resumed run) is set running again."""
        with self._lock, self._db.transaction() as tx:
            tx.run("INSERT INTO lab_runs (run_id, lab, started_at, status, host_version, config_json) "
                   "VALUES (:run_id, :lab, :started_at, 'running', :host_version, :config_json) "
                   "ON CONFLICT (run_id) DO UPDATE SET status = 'running', finished_at = NULL",
                   {"run_id": run_id, "lab": lab, "started_at": started_at, "host_version": host_version,
                    "config_json": json.dumps(config, sort_keys=True)})

    def finish_run(self, run_id: str, finished_at: str, status: str) -> None:
        with self._lock, self._db.transaction() as tx:
            tx.run("UPDATE lab_runs SET finished_at = :finished_at, status = :status WHERE run_id = :run_id",
                   {"run_id": run_id, "finished_at": finished_at, "status": status})

    def record_device(self, row: dict[str, Any]) -> None:
        """Insert or replace one device's row (keys: :data:`DEVICE_FIELDS`)."""
        with self._lock, self._db.transaction() as tx:
            tx.run(_UPSERT_DEVICE, {k: row.get(k) for k in DEVICE_FIELDS})

    def record_combo(self, row: dict[str, Any], seeds: list[dict[str, Any]]) -> bool:
        """Write one combination (keys: :data:`COMBO_FIELDS`) and its per-seed rows in one transaction.

        A stored ``passed`` row of the same key is kept as it is (its seeds too).

        Returns:
            Whether this row was written (False: the key had passed already).
        """
        row = {k: row.get(k) for k in COMBO_FIELDS}
        key = {k: row[k] for k in COMBO_KEY}
        with self._lock, self._db.transaction() as tx:
            if not tx.run(_UPSERT_COMBO, row):
                return False
            tx.run(_DELETE_SEEDS, key)
            tx.run(_INSERT_SEEDS, [{**key, **{k: s.get(k) for k in _SEED_FIELDS if k not in key}} for s in seeds])
        return True

    def passed_combos(self, run_id: str) -> set[tuple[str, str, str]]:
        """(device, model, delegate) of the run's passed combinations: what a resumed run does not redo."""
        rows = self._db.query("SELECT device, model, delegate FROM lab_combos WHERE run_id = :run_id "
                              "AND status = 'passed'", {"run_id": run_id})
        return {(r["device"], r["model"], r["delegate"]) for r in rows}

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
