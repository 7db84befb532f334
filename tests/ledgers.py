"""Where a test's ledger lives: a SQLite file in its temporary directory, or, with
``TOKENCTL_TEST_LEDGER=postgresql``, a schema of its own in the local PostgreSQL (``TOKENCTL_TEST_PG``,
default ``postgresql://postgres@127.0.0.1:5432/test``), so any gateway test can run on either engine."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import psycopg

PG_SERVER = os.environ.get("TOKENCTL_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
ON_POSTGRES = os.environ.get("TOKENCTL_TEST_LEDGER", "sqlite") == "postgresql"


MADE: set[str] = set()  # schemas this test run created: dropped at its end (tests/conftest.py)


def pg_schema_url(name: str, *, fresh: bool = True) -> str:
    """A URL whose tables live in schema ``name`` (emptied first when ``fresh``)."""
    MADE.add(name)
    with psycopg.connect(PG_SERVER, autocommit=True) as conn:
        if fresh:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{name}"')
    separator = "&" if "?" in PG_SERVER else "?"
    return f"{PG_SERVER}{separator}options=-csearch_path%3D{name}"


def drop_pg_schema(*names: str) -> None:
    with psycopg.connect(PG_SERVER, autocommit=True) as conn:
        for name in names:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
            MADE.discard(name)


def schema_for(tmp: Path) -> str:
    return "t_" + hashlib.sha1(str(tmp.resolve()).encode()).hexdigest()[:16]


def ledger_section(tmp: Path, engine: str | None = None) -> dict[str, Any]:
    """The ``ledger`` config section for a test whose files live in ``tmp`` (``engine``: sqlite or postgresql;
    by default the one ``TOKENCTL_TEST_LEDGER`` names)."""
    if (engine or ("postgresql" if ON_POSTGRES else "sqlite")) == "sqlite":
        return {"path": str(tmp / "ledger.db")}
    return {"url": pg_schema_url(schema_for(tmp), fresh=False), "journal_dir": str(tmp / "journal")}


def ledger_target(tmp: Path, engine: str | None = None) -> str:
    """What ``connect()`` takes for that ledger."""
    section = ledger_section(tmp, engine)
    return str(section.get("url") or section["path"])
