"""Sessions an operator let go on after a loop rule paused them (``tokenctl loops resume``)."""

from __future__ import annotations

import sqlite3
import time

from tokenctl.ledger.migrations import transaction


def resume(db: sqlite3.Connection, subject: str, rule: str, repeats_allowed: int, by: str) -> None:
    """Let ``subject`` (a session id, or ``key:<id>``) run up to ``repeats_allowed`` repeats under ``rule``."""
    with transaction(db):
        db.execute(
            "INSERT INTO loop_resumes (subject, rule, repeats_allowed, resumed_at, resumed_by) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (subject, rule) DO UPDATE SET repeats_allowed = excluded.repeats_allowed,"
            " resumed_at = excluded.resumed_at, resumed_by = excluded.resumed_by",
            (subject, rule, repeats_allowed, time.time(), by),
        )


def resumes(db: sqlite3.Connection) -> dict[tuple[str, str], int]:
    rows = db.execute("SELECT subject, rule, repeats_allowed FROM loop_resumes").fetchall()
    return {(subject, rule): allowed for subject, rule, allowed in rows}
