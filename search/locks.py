"""The driver lock: one process at a time changes which tickets a study holds.

A driver (`unipetl search` / `resume`, `run_study`) reads a study and then writes tickets:
it creates the study or checks the stored one, tops the tickets up to the trial budget, and
enqueues the extra seeds. Two drivers started together on one study (the same command on every
node of a cluster job, as with Optuna's `load_if_exists`) both saw the study missing and both
created it (one failed with "already exists", or deleted the other's half-written study as
abandoned), or both saw three tickets missing and enqueued six. Each such read-then-write step
runs under `study_lock`, which every process that reaches the storage shares:

- PostgreSQL: a session advisory lock (`pg_advisory_lock`) on a 64-bit key from the study name,
  held on a connection of its own; it is released when that connection closes, so a killed
  driver never leaves it held;
- MySQL: `GET_LOCK` on a name from the study name (same lifetime);
- an SQLite file: an exclusive file lock beside the database file (`<db>.driver.lock`, one for
  all its studies; SQLite databases live on one machine's disk);
- in-memory SQLite: a process lock.

Workers take it only where they add a ticket too (a failed trial's replacement, re-queueing a
dead worker's trial); claiming a ticket is atomic on its own (`optuna_ext.claim_waiting`).
The lock is reentrant within a thread (creating a study tops it up while holding it).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

logger = logging.getLogger(__name__)
_LOCAL = threading.local()
_MEMORY: dict[str, threading.Lock] = {}
_MEMORY_GUARD = threading.Lock()
_ENGINES: dict[str, Any] = {}


def lock_key(study_name: str) -> int:
    """A signed 64-bit key for a study name (what `pg_advisory_lock` takes), stable across
    processes and machines (Python's `hash` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(f"unipetl:{study_name}".encode(), digest_size=8).digest(), "big", signed=True)


@contextmanager
def study_lock(url: str | None, study_name: str) -> Iterator[None]:
    """Hold the driver lock of study `study_name` in the storage at `url` (a SQLAlchemy URL;
    None, for a storage that is not a database, holds nothing). Blocks until it is free."""
    if url is None:
        yield
        return
    target = _target(url, study_name)
    held: dict[tuple[str, ...], int] = _LOCAL.__dict__.setdefault("held", {})
    # a thread that holds it already (under any spelling of the URL) enters again without waiting
    with nullcontext() if held.get(target) else _acquire(url, target):
        held[target] = held.get(target, 0) + 1
        try:
            yield
        finally:
            held[target] -= 1


def sqlite_place(url: str) -> tuple[str, str] | None:
    """Where an SQLite storage lives, the same for every spelling of it: ("memory", url) for an
    in-memory database, ("file", the database file's real path: symlinks and relative parts
    resolved) for a file; None when `url` is not SQLite. The file locks beside a database (this
    module's driver lock, `optuna_ext.claim_waiting`'s claim lock) are named from it, so two
    spellings of one file share one lock."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    db = parsed.database
    if not db or db == ":memory:" or db.startswith("file::memory:"):
        return ("memory", url)
    return ("file", os.path.realpath(db))


def _target(url: str, study_name: str) -> tuple[str, ...]:
    """What the lock is on, equal for two spellings of one storage: (kind, where) for SQLite (one
    lock for all studies of a file: its sections are milliseconds), (kind, where, study name) for
    a database server."""
    from sqlalchemy.engine import make_url

    place = sqlite_place(url)
    if place is not None:
        return place
    parsed = make_url(url)
    return (parsed.get_backend_name(), f"{parsed.host or ''}:{parsed.port or ''}/{parsed.database or ''}", study_name)


@contextmanager
def _acquire(url: str, target: tuple[str, ...]) -> Iterator[None]:
    kind, where = target[:2]
    if kind == "memory":
        with _MEMORY_GUARD:
            lock = _MEMORY.setdefault("\0".join(target), threading.Lock())
        with lock:
            yield
        return
    if kind == "file":
        from filelock import FileLock

        with FileLock(where + ".driver.lock"):
            yield
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    study_name = target[2]
    if kind == "postgresql":
        take, give, arg = "SELECT pg_advisory_lock(:k)", "SELECT pg_advisory_unlock(:k)", lock_key(study_name)
    elif kind == "mysql":  # lock names are server-wide: the database is part of the key
        take, give, arg = "SELECT GET_LOCK(:k, -1)", "SELECT RELEASE_LOCK(:k)", f"unipetl:{lock_key(where + chr(0) + study_name) & (2**64 - 1):x}"
    else:  # pragma: no cover - check_storage_url admits only sqlite, postgresql and mysql
        raise ValueError(f"no driver lock for storage scheme {kind!r}")
    with _MEMORY_GUARD:  # one engine per URL and process; each hold opens its own connection (NullPool)
        engine = _ENGINES.get(url) or _ENGINES.setdefault(url, create_engine(url, poolclass=NullPool))
    with engine.connect() as conn:
        got = conn.execute(text(take), {"k": arg}).scalar()
        conn.commit()  # the lock belongs to the session, not to this transaction
        if kind == "mysql" and got != 1:
            raise RuntimeError(f"MySQL GET_LOCK({arg!r}) returned {got!r}, not 1")
        try:
            yield
        finally:
            try:
                conn.execute(text(give), {"k": arg})
                conn.commit()
            except Exception:  # noqa: BLE001 - a lost connection released the lock already; keep the body's error
                logger.warning("driver lock of study %s: unlock failed; closing its connection releases it", study_name)


__all__ = ["lock_key", "sqlite_place", "study_lock"]
