"""The campaign store: one SQLite file (WAL mode) per output directory, the source of truth for reports.

What it holds: the campaign config (canonical JSON), the two models' sha256 digests, the seed set's
digest, the targets' device info, the list of requested seeds (written first, so an interrupted
campaign still says what was asked, as Mobly's summary writer does), every finished seed's outcome,
and each triggering input's full record (mutation trace, both probability vectors, labels, queries,
seconds, reproduced count, the exact image bytes and its seed's bytes).

Each finished seed is written in ONE transaction (outcome + its inputs), with ``synchronous=FULL``,
so a killed process loses no finished seed and never leaves half a seed. Opening a store made by a
different campaign (another config or model) raises :class:`host.errors.CampaignError` naming what
changed, unless ``force_new`` moves the old files to ``archive/<timestamp>/`` and starts afresh.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from host.errors import CampaignError
from host.records import (
    CampaignIdentity,
    InputRecord,
    MinimizedRecord,
    RequestedSeed,
    SeedRecord,
    canonical_json,
)
from host.search.results import MutationStep, SeedResult, SeedStatus

#: Bumped when the tables change incompatibly; an older store is then refused with a clear message.
#: Tables added later (``minimized``, issue 10) are created on open, so stores written before them
#: resume unchanged (their inputs are minimized on resume when minimization is on), and older
#: dflare-edge versions ignore them: an additive change, no bump.
SCHEMA_VERSION = 1

STORE_NAME = "campaign.sqlite"

#: Files and folders of a campaign that ``force_new`` archives together with the store.
ARTIFACT_NAMES = ("inputs", "summary.json", "junit.xml", "report.html", "explain.json", "explain.html")

#: How long a writer waits for another connection's lock before failing (a reader such as
#: ``dflare report`` may hold it briefly while the campaign runs).
BUSY_TIMEOUT_MS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS requested (
    seed_index INTEGER PRIMARY KEY,
    label INTEGER,
    name TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outcomes (
    seed_index INTEGER PRIMARY KEY REFERENCES requested(seed_index),
    status TEXT NOT NULL,
    seed_label INTEGER,
    queries INTEGER NOT NULL,
    seconds REAL NOT NULL,
    algo TEXT NOT NULL,
    exit_reason TEXT NOT NULL,
    label_original INTEGER,
    label_compressed INTEGER,
    extra TEXT NOT NULL,
    run_id INTEGER,
    finished_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS inputs (
    seed_index INTEGER NOT NULL REFERENCES outcomes(seed_index),
    n INTEGER NOT NULL,
    status TEXT NOT NULL,
    trace TEXT NOT NULL,
    probs_original TEXT NOT NULL,
    probs_compressed TEXT NOT NULL,
    label_original INTEGER NOT NULL,
    label_compressed INTEGER NOT NULL,
    seed_label INTEGER,
    queries INTEGER NOT NULL,
    seconds REAL NOT NULL,
    reproduced INTEGER NOT NULL,
    shape TEXT NOT NULL,
    image BLOB NOT NULL,
    seed_image BLOB,
    PRIMARY KEY (seed_index, n)
);
CREATE TABLE IF NOT EXISTS minimized (
    seed_index INTEGER NOT NULL,
    n INTEGER NOT NULL,
    probs_original TEXT NOT NULL,
    probs_compressed TEXT NOT NULL,
    label_original INTEGER NOT NULL,
    label_compressed INTEGER NOT NULL,
    queries INTEGER NOT NULL,
    verify_queries INTEGER NOT NULL,
    reproduced INTEGER NOT NULL,
    seconds REAL NOT NULL,
    info TEXT NOT NULL,
    image BLOB NOT NULL,
    PRIMARY KEY (seed_index, n),
    FOREIGN KEY (seed_index, n) REFERENCES inputs(seed_index, n)
);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at REAL NOT NULL,
    ended_at REAL,
    status TEXT NOT NULL,
    argv TEXT NOT NULL,
    targets TEXT NOT NULL
);
"""


class CampaignStore:
    """One campaign's SQLite store. Build it with :meth:`create_or_resume` or :meth:`open_existing`."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn
        self.run_id: int | None = None

    # -- opening ------------------------------------------------------------------------------
    @classmethod
    def create_or_resume(
        cls,
        out_dir: str | Path,
        config: CampaignIdentity,
        model_digests: dict[str, str],
        seeds_digest: str,
        force_new: bool = False,
    ) -> CampaignStore:
        """Open ``out_dir/campaign.sqlite`` for this campaign, creating it if absent.

        Args:
            out_dir: the campaign's output directory (created if needed).
            config: the campaign's settings; its identity must match a stored campaign's.
            model_digests: sha256 per role, ``{"original": ..., "compressed": ...}``.
            seeds_digest: sha256 of the seed images and labels.
            force_new: when the stored campaign differs, archive it instead of refusing.

        Raises:
            CampaignError: the directory holds a different campaign (the message names what changed)
                or a store this version cannot read.
        """
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / STORE_NAME
        wanted = {
            "config": config.identity(),
            "models": dict(model_digests),
            "seeds_sha256": seeds_digest,
        }
        if path.exists():
            store = cls._connect(path)
            store._check_schema()
            if store.meta("config") is None:  # created, then killed before its first write: adopt it
                store._initialize(config, wanted)
                return store
            differences = store._differences(wanted)
            if not differences:
                return store
            store.close()
            if not force_new:
                raise CampaignError(
                    f"{path} holds a different campaign: {'; '.join(differences)}. Rerun with the same "
                    "settings and models to resume it, use another --out, or pass --force-new to archive "
                    "it and start over"
                )
            archive_campaign(out_dir)
        store = cls._connect(path)
        store._initialize(config, wanted)
        return store

    @classmethod
    def open_existing(cls, out_dir: str | Path) -> CampaignStore:
        """Open a campaign directory's store for reading (``dflare report``).

        Raises:
            CampaignError: there is no store in the directory, or it is from another schema version.
        """
        path = Path(out_dir) / STORE_NAME
        if not path.exists():
            raise CampaignError(f"no campaign store at {path}: run `dflare run --out {out_dir}` first")
        store = cls._connect(path)
        store._check_schema()
        return store

    @classmethod
    def _connect(cls, path: Path) -> CampaignStore:
        try:
            conn = sqlite3.connect(str(path), isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # a finished seed survives power loss, not just SIGKILL
            conn.execute("PRAGMA foreign_keys=ON")
            conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise CampaignError(f"{path} is not a readable campaign store ({exc}); move it away or use --force-new"
                                ) from None
        return cls(path, conn)

    def _check_schema(self) -> None:
        version = self.meta("schema_version")
        if version is not None and int(version) != SCHEMA_VERSION:
            raise CampaignError(
                f"{self.path} has store schema {version}, this dflare-edge reads schema {SCHEMA_VERSION}; "
                "use the dflare-edge version that wrote it, or --force-new to start over"
            )

    def _differences(self, wanted: dict[str, Any]) -> list[str]:
        diffs: list[str] = []
        stored_cfg = json.loads(self.meta("config_identity") or "{}")
        for key in sorted(set(stored_cfg) | set(wanted["config"])):
            old, new = stored_cfg.get(key), wanted["config"].get(key)
            if old != new:
                diffs.append(f"{key} changed from {old!r} to {new!r}")
        stored_models = json.loads(self.meta("models") or "{}")
        for role in sorted(set(stored_models) | set(wanted["models"])):
            old, new = stored_models.get(role), wanted["models"].get(role)
            if old != new:
                diffs.append(f"the {role} model changed (sha256 {_short(old)} -> {_short(new)})")
        old_seeds = self.meta("seeds_sha256")
        if old_seeds != wanted["seeds_sha256"]:
            diffs.append(f"the seed set changed (sha256 {_short(old_seeds)} -> {_short(wanted['seeds_sha256'])})")
        return diffs

    def _initialize(self, config: CampaignIdentity, wanted: dict[str, Any]) -> None:
        from host import __version__

        with self._transaction():
            for key, value in {
                "schema_version": str(SCHEMA_VERSION),
                "config": canonical_json(config.to_dict()),
                "config_identity": canonical_json(wanted["config"]),
                "models": canonical_json(wanted["models"]),
                "seeds_sha256": wanted["seeds_sha256"],
                "created_at": repr(time.time()),
                "tool_version": __version__,
            }.items():
                self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # -- writing ------------------------------------------------------------------------------
    def _transaction(self) -> _Transaction:
        return _Transaction(self._conn)

    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON value under ``key`` (replacing any previous one)."""
        with self._transaction():
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, canonical_json(value)))

    def begin_run(self, argv: Sequence[str], targets: dict[str, Any]) -> int:
        """Record the start of one ``dflare run`` process and the targets it uses; returns the run id.

        A run still marked ``running`` was killed before it could end itself (the caller holds the
        directory's lock, so no other process runs): it becomes ``interrupted``, ended at its last
        finished seed (or its start when it finished none).
        """
        with self._transaction():
            self._conn.execute(
                "UPDATE runs SET status = 'interrupted', ended_at = COALESCE("
                "(SELECT MAX(finished_at) FROM outcomes WHERE outcomes.run_id = runs.run_id), started_at) "
                "WHERE status = 'running'")
            cur = self._conn.execute(
                "INSERT INTO runs (started_at, status, argv, targets) VALUES (?, 'running', ?, ?)",
                (time.time(), json.dumps(list(argv)), canonical_json(targets)),
            )
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('targets', ?)", (canonical_json(targets),))
        self.run_id = int(cur.lastrowid)
        return self.run_id

    def end_run(self, status: str) -> None:
        """Mark the current run finished (``completed``, ``interrupted`` or ``failed``)."""
        if self.run_id is None:
            return
        with self._transaction():
            self._conn.execute("UPDATE runs SET ended_at = ?, status = ? WHERE run_id = ?",
                               (time.time(), status, self.run_id))

    def record_requested(self, seeds: Iterable[RequestedSeed]) -> None:
        """Record the requested seed list once, before any search; later calls leave it unchanged."""
        with self._transaction():
            self._conn.executemany(
                "INSERT OR IGNORE INTO requested VALUES (?, ?, ?)",
                [(s.seed_index, s.label, s.name) for s in seeds],
            )

    def record_result(self, result: SeedResult, seed_image: np.ndarray | None = None) -> SeedRecord:
        """Write one finished seed (its outcome and any deviating input) in a single transaction.

        Args:
            result: the seed's result from the search engine.
            seed_image: the seed's uint8 HWC image, kept next to the deviating input for reports.

        Returns:
            The stored record.

        Raises:
            CampaignError: the seed was not requested, or is already finished (results are never duplicated).
        """
        finished_at = time.time()
        extra = _jsonable(result.extra)
        record = SeedRecord(result.seed_index, result.status, result.seed_label, int(result.queries),
                            float(result.seconds), result.algo, result.exit_reason, _opt_int(result.label_original),
                            _opt_int(result.label_compressed), extra, self.run_id, finished_at)
        try:
            with self._transaction():
                self._conn.execute(
                    "INSERT INTO outcomes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (record.seed_index, record.status.value, record.seed_label, record.queries, record.seconds,
                     record.algo, record.exit_reason, record.label_original, record.label_compressed,
                     canonical_json(extra), self.run_id, finished_at),
                )
                if result.image is not None and result.status in (SeedStatus.triggered, SeedStatus.flaky):
                    self._insert_input(result, 0, seed_image)
        except sqlite3.IntegrityError as exc:
            raise CampaignError(
                f"seed {result.seed_index} cannot be recorded in {self.path}: {exc} (already finished, "
                "or not in the requested seed list)"
            ) from None
        return record

    def _insert_input(self, result: SeedResult, n: int, seed_image: np.ndarray | None) -> None:
        image = np.ascontiguousarray(result.image, dtype=np.uint8)
        if result.probs_original is None or result.probs_compressed is None:
            raise CampaignError(f"seed {result.seed_index}: a deviating input needs both probability vectors")
        seed_blob = None
        if seed_image is not None:
            seed_blob = np.ascontiguousarray(seed_image, dtype=np.uint8).reshape(image.shape).tobytes()
        self._conn.execute(
            "INSERT INTO inputs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (result.seed_index, n, result.status.value, json.dumps([s.to_dict() for s in result.trace]),
             _vector_json(result.probs_original), _vector_json(result.probs_compressed),
             int(_label(result.label_original, result.probs_original)),
             int(_label(result.label_compressed, result.probs_compressed)),
             result.seed_label, int(result.queries), float(result.seconds), int(result.reproduced),
             json.dumps(list(image.shape)), image.tobytes(), seed_blob),
        )

    def record_minimized(self, record: MinimizedRecord) -> None:
        """Store (or replace) the minimized version of one stored input, in one transaction.

        Raises:
            CampaignError: the raw input it minimizes is not in the store.
        """
        image = np.ascontiguousarray(record.image, dtype=np.uint8)
        try:
            with self._transaction():
                self._conn.execute(
                    "INSERT OR REPLACE INTO minimized VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (record.seed_index, record.n, _vector_json(record.probs_original),
                     _vector_json(record.probs_compressed), int(record.label_original), int(record.label_compressed),
                     int(record.queries), int(record.verify_queries), int(record.reproduced), float(record.seconds),
                     canonical_json(_jsonable(record.info)), image.tobytes()),
                )
        except sqlite3.IntegrityError as exc:
            raise CampaignError(f"input {record.seed_index}_{record.n} cannot be minimized in {self.path}: {exc} "
                                "(the raw input is not stored)") from None

    # -- reading ------------------------------------------------------------------------------
    def minimized(self) -> dict[tuple[int, int], MinimizedRecord]:
        """Every minimized input, keyed by its raw input's ``(seed_index, n)``."""
        rows = self._conn.execute(
            "SELECT m.seed_index, m.n, m.probs_original, m.probs_compressed, m.label_original, m.label_compressed, "
            "m.queries, m.verify_queries, m.reproduced, m.seconds, m.info, m.image, i.shape FROM minimized m "
            "JOIN inputs i ON i.seed_index = m.seed_index AND i.n = m.n ORDER BY m.seed_index, m.n"
        )
        out = {}
        for i, n, po, pc, lo, lc, q, vq, rep, sec, info, img, shape in rows:
            out[(int(i), int(n))] = MinimizedRecord(
                int(i), int(n), np.asarray(json.loads(po), np.float32), np.asarray(json.loads(pc), np.float32),
                int(lo), int(lc), int(q), int(vq), int(rep), float(sec), json.loads(info),
                np.frombuffer(img, np.uint8).reshape(tuple(json.loads(shape))),
            )
        return out

    def meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def meta_json(self, key: str, default: Any = None) -> Any:
        value = self.meta(key)
        return default if value is None else json.loads(value)

    def config_dict(self) -> dict[str, Any]:
        """The full config the campaign was created with (JSON view)."""
        return self.meta_json("config", {})

    def model_digests(self) -> dict[str, str]:
        return self.meta_json("models", {})

    def targets(self) -> dict[str, Any]:
        """The targets' device info as last recorded (``{"compressed": {...}, "original": {...}}``)."""
        return self.meta_json("targets", {})

    def requested(self) -> list[RequestedSeed]:
        rows = self._conn.execute("SELECT seed_index, label, name FROM requested ORDER BY seed_index")
        return [RequestedSeed(int(i), None if y is None else int(y), str(n)) for i, y, n in rows]

    def finished_indices(self) -> set[int]:
        return {int(r[0]) for r in self._conn.execute("SELECT seed_index FROM outcomes")}

    def outcomes(self) -> list[SeedRecord]:
        """Every finished seed, in order of completion."""
        rows = self._conn.execute(
            "SELECT seed_index, status, seed_label, queries, seconds, algo, exit_reason, label_original, "
            "label_compressed, extra, run_id, finished_at FROM outcomes ORDER BY finished_at, seed_index"
        )
        return [
            SeedRecord(int(i), SeedStatus(s), _opt_int(y), int(q), float(sec), str(a), str(e), _opt_int(lo),
                       _opt_int(lc), json.loads(x), _opt_int(r), float(f))
            for i, s, y, q, sec, a, e, lo, lc, x, r, f in rows
        ]

    def inputs(self) -> list[InputRecord]:
        """Every deviating input, by seed index."""
        return self._inputs("", ())

    def inputs_of(self, seed_index: int) -> list[InputRecord]:
        """The deviating inputs of one seed."""
        return self._inputs("WHERE seed_index = ?", (seed_index,))

    def _inputs(self, where: str, params: tuple) -> list[InputRecord]:
        rows = self._conn.execute(
            "SELECT seed_index, n, status, trace, probs_original, probs_compressed, label_original, "
            "label_compressed, seed_label, queries, seconds, reproduced, shape, image, seed_image "
            f"FROM inputs {where} ORDER BY seed_index, n", params
        )
        out = []
        for i, n, st, tr, po, pc, lo, lc, sl, q, sec, rep, shape, img, seed_img in rows:
            shape_t = tuple(json.loads(shape))
            out.append(InputRecord(
                int(i), int(n), SeedStatus(st), [MutationStep.from_dict(d) for d in json.loads(tr)],
                np.asarray(json.loads(po), np.float32), np.asarray(json.loads(pc), np.float32), int(lo), int(lc),
                None if sl is None else int(sl), int(q), float(sec), int(rep),
                np.frombuffer(img, np.uint8).reshape(shape_t),
                None if seed_img is None else np.frombuffer(seed_img, np.uint8).reshape(shape_t),
            ))
        return out

    def runs(self) -> list[dict[str, Any]]:
        rows = self._conn.execute("SELECT run_id, started_at, ended_at, status, argv FROM runs ORDER BY run_id")
        return [{"run_id": r, "started_at": s, "ended_at": e, "status": st, "argv": json.loads(a)}
                for r, s, e, st, a in rows]

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> CampaignStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error) on an autocommit connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self._conn.execute("COMMIT")
        else:
            self._conn.execute("ROLLBACK")


def archive_campaign(out_dir: str | Path) -> Path | None:
    """Move a campaign's store and artifacts to ``out_dir/archive/<timestamp>/``; return that folder.

    The store must be closed (SQLite folds the WAL into the main file on the last close).
    """
    out_dir = Path(out_dir)
    names = [STORE_NAME, STORE_NAME + "-wal", STORE_NAME + "-shm", *ARTIFACT_NAMES]
    present = [name for name in names if (out_dir / name).exists()]
    if not present:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = out_dir / "archive" / stamp
    suffix = 1
    while dest.exists():
        suffix += 1
        dest = out_dir / "archive" / f"{stamp}-{suffix}"
    dest.mkdir(parents=True)
    for name in present:
        shutil.move(str(out_dir / name), str(dest / name))
    return dest


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _short(digest: str | None) -> str:
    return "none" if not digest else digest[:12]


def _label(label: int | None, probs: np.ndarray | None) -> int:
    if label is not None:
        return int(label)
    return int(np.argmax(np.asarray(probs)))


def _vector_json(vector: np.ndarray) -> str:
    # float32 -> Python float is exact, and JSON keeps the shortest round-tripping repr.
    return json.dumps([float(v) for v in np.asarray(vector, np.float32).ravel()])


def _jsonable(value: Any) -> Any:
    """Turn numpy scalars/arrays inside ``extra`` into plain JSON values."""
    return json.loads(json.dumps(value, default=_default))


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    return str(obj)
