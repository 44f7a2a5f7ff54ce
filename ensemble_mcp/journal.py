"""The journal of submitted ensembles: SQLite in WAL mode, in the server's state directory.

One row per ensemble (id, tool, plan, counts, times, size) and one per ended task (its entry,
exactly as ``ensemble_results`` shows it), all JSON text, never a pickle. Each write is one
transaction: a task's entry lands together with the counts it changes, so a reader never sees
half a record, and a server killed mid-write comes back to the last commit.

::

    directory   Server(state_dir=...), else $ENSEMBLE_MCP_STATE_DIR/<name>,
                else $XDG_STATE_HOME/ensemble-mcp/<name> (XDG_STATE_HOME: ~/.local/state)
    files       journal.sqlite3 (+ -wal), lock        directory 0700, files 0600
    one owner   the lock file is flock-ed while the journal is open: a second server on the
                same directory is refused, naming the pid that holds it

``synchronous=NORMAL``: a commit survives the server's death (SIGKILL, OOM); an operating-system
crash may lose the last commits, never the database. ``locking_mode=EXCLUSIVE`` keeps SQLite off
shared memory, so the directory may be on a network file system (one host at a time).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import ConfigError

__all__ = (
    "STATE_DIR_ENV",
    "EntryBatch",
    "Journal",
    "StoredEnsemble",
    "default_state_dir",
)

STATE_DIR_ENV = "ENSEMBLE_MCP_STATE_DIR"
SCHEMA_VERSION = 1
DB_NAME = "journal.sqlite3"
_WAL_LIMIT = 64 * 2**20
_SCHEMA = """
CREATE TABLE ensembles (
    id TEXT PRIMARY KEY,
    tool TEXT NOT NULL,
    plan TEXT NOT NULL,
    total INTEGER NOT NULL,
    created REAL NOT NULL,
    finished REAL,
    done INTEGER NOT NULL DEFAULT 0,
    lost INTEGER NOT NULL DEFAULT 0,
    counts TEXT NOT NULL DEFAULT '{}',
    bytes INTEGER NOT NULL
);
CREATE INDEX ensembles_finished ON ensembles (finished);
CREATE TABLE tasks (
    ensemble TEXT NOT NULL,
    idx INTEGER NOT NULL,
    entry TEXT NOT NULL,
    PRIMARY KEY (ensemble, idx)
);
"""


def default_state_dir(server_name: str, environ: Mapping[str, str] = os.environ) -> Path:
    """The state directory of a server named ``server_name`` when none is given.

    ``$ENSEMBLE_MCP_STATE_DIR/<name>``, else ``$XDG_STATE_HOME/ensemble-mcp/<name>`` (with
    ``XDG_STATE_HOME`` defaulting to ``~/.local/state``). Characters other than letters, digits,
    ``.``, ``_`` and ``-`` in the name become ``_``.
    """
    root = environ.get(STATE_DIR_ENV)
    if not root:
        home = environ.get("HOME") or str(Path.home())
        xdg = environ.get("XDG_STATE_HOME") or str(Path(home) / ".local" / "state")
        root = str(Path(xdg) / "ensemble-mcp")
    name = re.sub(r"[^A-Za-z0-9._-]", "_", server_name).strip(".") or "_"
    return Path(root).expanduser() / name


@dataclass(frozen=True)
class StoredEnsemble:
    """What the journal holds about one ensemble.

    Attributes:
        ensemble_id: its id.
        tool: the ensemble tool it runs.
        plan: ``relation``, ``lengths``, ``broadcast``, ``total`` and ``arguments`` (the lists
            as given, in JSON form).
        created: when it was submitted (seconds since the epoch).
        finished: when its last task ended, or it was cut by a server stop; None while running.
        done: tasks whose entry is journaled.
        lost: tasks cut by a server stop: no entry will ever come for them.
        counts: journaled entries per status.
        nbytes: the JSON text it holds (plan and entries).
    """

    ensemble_id: str
    tool: str
    plan: dict[str, Any]
    created: float
    finished: float | None
    done: int
    lost: int
    counts: dict[str, int]
    nbytes: int

    @property
    def total(self) -> int:
        """The number of tasks."""
        return int(self.plan["total"])


@dataclass(frozen=True)
class EntryBatch:
    """Entries of one ensemble to write, and its state once they are written.

    Attributes:
        ensemble_id: the ensemble.
        rows: ``(task index, entry as JSON text)``.
        done: the ensemble's journaled entries after this batch.
        counts: its entries per status after this batch.
        finished: when it finished, if this batch holds its last entries.
    """

    ensemble_id: str
    rows: Sequence[tuple[int, str]]
    done: int
    counts: Mapping[str, int]
    finished: float | None = None


class Journal:
    """The journal in one state directory, open for this process alone (see the module doc).

    Safe to use from several threads: one connection, one lock, one transaction per call.
    Use ``Journal.open``.
    """

    def __init__(self, directory: Path, connection: sqlite3.Connection, lock_fd: int) -> None:
        self.directory = directory
        self._db = connection
        self._lock_fd = lock_fd
        self._lock = threading.Lock()

    @classmethod
    def open(cls, directory: Path, *, clock: Callable[[], float] = time.time) -> Journal:
        """Open (or create) the journal in ``directory``, and mark what a stop cut as lost.

        Every ensemble that was not finished when the last server stopped gets ``finished``
        now and its tasks without an entry count as ``lost``.

        Raises:
            ConfigError: the directory cannot be made or used (not ours, open to other users),
                another server holds it, or the journal in it cannot be read.
        """
        _prepare(directory)
        lock_fd = _take_lock(directory)
        try:
            connection = _connect(directory / DB_NAME)
        except BaseException:
            os.close(lock_fd)
            raise
        journal = cls(directory, connection, lock_fd)
        journal._cut_unfinished(clock())
        return journal

    @property
    def path(self) -> Path:
        """The database file."""
        return self.directory / DB_NAME

    def close(self) -> None:
        """Close the database and release the directory (idempotent)."""
        with self._lock:
            if self._lock_fd < 0:
                return
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1

    # -- writes -------------------------------------------------------------------------------

    def add(self, ensemble_id: str, tool: str, plan: Mapping[str, Any], created: float) -> None:
        """Record a submitted ensemble (one transaction)."""
        text = _dumps(plan)
        with self._transaction() as db:
            db.execute(
                "INSERT INTO ensembles (id, tool, plan, total, created, bytes) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (ensemble_id, tool, text, int(plan["total"]), created, len(text)),
            )

    def record(self, batches: Iterable[EntryBatch]) -> None:
        """Write entries of several ensembles, each with its new counts, in one transaction."""
        with self._transaction() as db:
            for batch in batches:
                db.executemany(
                    "INSERT INTO tasks (ensemble, idx, entry) VALUES (?, ?, ?)",
                    [(batch.ensemble_id, idx, text) for idx, text in batch.rows],
                )
                db.execute(
                    "UPDATE ensembles SET done = ?, counts = ?, finished = ?, "
                    "bytes = bytes + ? WHERE id = ?",
                    (
                        batch.done,
                        _dumps(dict(batch.counts)),
                        batch.finished,
                        sum(len(text) for _, text in batch.rows),
                        batch.ensemble_id,
                    ),
                )

    def delete(self, ensemble_ids: Sequence[str]) -> None:
        """Delete ensembles and their entries, then give the freed pages back."""
        if not ensemble_ids:
            return
        with self._transaction() as db:
            for ensemble_id in ensemble_ids:
                db.execute("DELETE FROM tasks WHERE ensemble = ?", (ensemble_id,))
                db.execute("DELETE FROM ensembles WHERE id = ?", (ensemble_id,))
        with self._lock:
            self._db.execute("PRAGMA incremental_vacuum")

    def _cut_unfinished(self, now: float) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE ensembles SET lost = total - done, finished = ? WHERE finished IS NULL",
                (now,),
            )

    # -- reads --------------------------------------------------------------------------------

    def get(self, ensemble_id: str) -> StoredEnsemble | None:
        """The ensemble with this id, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT id, tool, plan, created, finished, done, lost, counts, bytes "
                "FROM ensembles WHERE id = ?",
                (ensemble_id,),
            ).fetchone()
        if row is None:
            return None
        return StoredEnsemble(
            row[0], row[1], json.loads(row[2]), row[3], row[4], row[5], row[6],
            json.loads(row[7]), row[8],
        )  # fmt: skip

    def entries(self, ensemble_id: str, start: int, stop: int) -> dict[int, dict[str, Any]]:
        """The journaled entries of tasks ``start <= index < stop``, by index."""
        with self._lock:
            rows = self._db.execute(
                "SELECT idx, entry FROM tasks WHERE ensemble = ? AND idx >= ? AND idx < ? "
                "ORDER BY idx",
                (ensemble_id, start, stop),
            ).fetchall()
        return {idx: json.loads(text) for idx, text in rows}

    def busy_seconds(self, ensemble_id: str) -> float:
        """The run times of the ensemble's journaled entries, added up."""
        with self._lock:
            row = self._db.execute(
                "SELECT SUM(json_extract(entry, '$.duration_s')) FROM tasks WHERE ensemble = ?",
                (ensemble_id,),
            ).fetchone()
        return float(row[0] or 0.0)

    def finished(self) -> list[tuple[str, float, int]]:
        """``(id, finished, bytes)`` of every finished ensemble, the oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, finished, bytes FROM ensembles WHERE finished IS NOT NULL "
                "ORDER BY finished, rowid"
            ).fetchall()
        return [(r[0], r[1], r[2]) for r in rows]

    def size(self) -> tuple[int, int]:
        """How many ensembles the journal holds, and their bytes of JSON text."""
        with self._lock:
            count, nbytes = self._db.execute(
                "SELECT count(*), coalesce(sum(bytes), 0) FROM ensembles"
            ).fetchone()
        return int(count), int(nbytes)

    @contextlib.contextmanager
    def _transaction(self) -> Any:
        with self._lock:
            if self._lock_fd < 0:
                raise sqlite3.ProgrammingError("the journal is closed")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                if self._db.in_transaction:  # SQLite rolls back by itself on some errors
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _prepare(directory: Path) -> None:
    """Make ``directory`` (0700) or check that an existing one is ours and closed to others."""
    how = f"(set Server(state_dir=...) or ${STATE_DIR_ENV} to use another)"
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = directory.stat()
    except OSError as exc:
        raise ConfigError(
            f"cannot make the state directory {directory}: {exc.strerror} {how}"
        ) from None
    if info.st_uid != os.getuid():
        raise ConfigError(f"the state directory {directory} belongs to another user {how}")
    if info.st_mode & 0o077:
        raise ConfigError(
            f"the state directory {directory} is open to other users (mode "
            f"{info.st_mode & 0o777:04o}) and the journal in it holds task results: "
            f"run chmod 700 {directory}, or {how[1:-1]}"
        )


def _take_lock(directory: Path) -> int:
    path = directory / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise ConfigError(
            f"the state directory {directory} is in use by another server (pid {holder}); "
            f"give each server its own: Server(state_dir=...) or ${STATE_DIR_ENV}"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _connect(path: Path) -> sqlite3.Connection:
    if not path.exists():
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
    try:
        db = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
        try:
            _configure(db)
        except BaseException:
            db.close()
            raise
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc):
            raise ConfigError(f"the journal {path} cannot be used: {exc}") from None
        raise ConfigError(
            f"the journal {path} is open in another program ({exc}); close that and start "
            "the server again"
        ) from None
    except sqlite3.DatabaseError as exc:
        raise ConfigError(
            f"the journal {path} cannot be used: {exc}; move it away (the server then starts "
            "with an empty journal, and the ensembles in it are no longer readable)"
        ) from None
    return db


def _configure(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA locking_mode=EXCLUSIVE")  # before WAL: no shared-memory index
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version == 0:
        db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # before the first table
    mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode != "wal":
        raise sqlite3.DatabaseError(f"WAL mode is not available here (got {mode})")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT}")
    if version == 0:
        # One transaction: a server killed here leaves version 0 and no tables, not half.
        db.executescript(f"BEGIN; {_SCHEMA} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")
    elif version != SCHEMA_VERSION:
        raise sqlite3.DatabaseError(
            f"it has schema version {version}, this server reads version {SCHEMA_VERSION}"
        )
