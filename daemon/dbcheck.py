"""Opening the history database with a check first: a damaged file (a corrupt header or
pages, or one cut to zero bytes) is never lost and never stops tbhud. It is kept aside,
one line says what is wrong and what to do, and a new history starts."""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

log = logging.getLogger("tbhud.store")


def connect(path: Path) -> sqlite3.Connection:
    # The daemon is single-threaded trio; check_same_thread guards nothing for us.
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False)


def open_checked(path: Path) -> sqlite3.Connection:
    """`path` opened after `PRAGMA quick_check`; a damaged file is renamed aside first."""
    problem = _problem(path)
    if problem is None:
        return connect(path)
    aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    for suffix in ("", "-wal", "-shm"):  # the journal belongs with its database
        part = Path(str(path) + suffix)
        if part.exists():
            part.rename(Path(str(aside) + suffix))
    log.warning("%s is damaged (%s): kept as %s (try `sqlite3 %s .recover`); the history "
                "starts anew", path, problem, aside, aside)
    return connect(path)


def _problem(path: Path) -> str | None:
    """What is wrong with the database at `path`, or None (also when there is none yet)."""
    if not path.exists():
        return None
    if path.stat().st_size == 0:
        return "it is empty: 0 bytes"
    try:
        db = connect(path)
        try:
            rows = db.execute("PRAGMA quick_check").fetchall()
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        return str(exc)
    if rows != [("ok",)]:
        return "; ".join(str(row[0]) for row in rows[:3])
    return None
