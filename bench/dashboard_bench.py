"""The dashboard at scale: a synthetic ledger of N requests (10 million by default), then timed API calls.

    python bench/dashboard_bench.py [--rows 10000000] [--keep FILE]
    python bench/dashboard_bench.py --url postgresql://postgres@127.0.0.1:5432/test [--schema bench_10m]

With ``--url`` the ledger is PostgreSQL (a schema of its own, kept for ``--reuse``; rows loaded with COPY) and
the results go to bench/results/dashboard-postgresql.json.

Steps, each measured:
1. generate N requests and insert them (rollups not added per batch), then build the rollups in one pass, as an
   upgrade does (``rebuild``);
2. the rollups' cost on the write path: the same 100k rows inserted with and without them (a ratio);
3. a live gateway on that ledger: wall time of each dashboard API call (median and worst of 15) as the
   admin and as a team viewer, and, for comparison, the overview's month total computed from the
   requests table instead of the rollup.
Results go to bench/results/dashboard.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx2 as httpx
from tests.conftest import ServerThread

from tokenctl.app import create_app
from tokenctl.cli.progress import Progress
from tokenctl.config import parse_config
from tokenctl.identity.keys import create_key
from tokenctl.ledger.db import connect, is_postgres, serialize_writers, transaction
from tokenctl.ledger.migrations import (
    SMALL_ROLLUPS,
    add_to_rollups,
    rebuild_daily,
    rebuild_sessions,
    rebuild_small_rollups,
)
from tokenctl.ledger.record import COLUMNS, INSERT_SQL, to_row
from tokenctl.testing.synthetic import synthetic_entries

NOW = datetime(2026, 11, 20, 15, 0, tzinfo=UTC).timestamp()
DAYS = 120
BATCH = 20_000
ADMIN = "bench-admin-key"


def fill(path: str, rows: int) -> dict[str, float]:
    db = connect(path)
    progress = Progress("insert requests", rows)
    started = time.monotonic()
    batch = []
    insert = _copy if is_postgres(path) else _insert
    for entry in synthetic_entries(rows, start=NOW - DAYS * 86400, days=DAYS - 0.01, teams=20, users_per_team=50):
        batch.append(to_row(entry))
        if len(batch) == BATCH:
            insert(db, batch)
            progress.advance(len(batch))
            batch.clear()
    if batch:
        insert(db, batch)
    progress.finish()
    inserted = time.monotonic() - started
    started = time.monotonic()
    with transaction(db):
        for table in ("rollup_daily", *SMALL_ROLLUPS, "rollup_sessions"):
            db.execute(f"DELETE FROM {table}")
        rebuild_daily(db)
        rebuild_small_rollups(db)
        rebuild_sessions(db)
    rebuilt = time.monotonic() - started
    db.execute("ANALYZE")
    counts = db.execute("SELECT (SELECT COUNT(*) FROM rollup_daily), (SELECT COUNT(*) FROM rollup_sessions)").fetchone()
    size = _size(db, path)
    db.close()
    return {
        "insert_seconds": round(inserted, 1),
        "rollup_rebuild_seconds": round(rebuilt, 1),
        "rollup_daily_rows": counts[0],
        "rollup_session_rows": counts[1],
        "ledger_bytes": size,
    }


def _insert(db: Any, batch: list[tuple[Any, ...]]) -> None:
    with transaction(db):
        db.executemany(INSERT_SQL, batch)


def _copy(db: Any, batch: list[tuple[Any, ...]]) -> None:
    """PostgreSQL: the bulk load a migration from SQLite would use (the writer's own path is measured apart)."""
    conn = db._connection()
    columns = ", ".join(f'"{c}"' for c in COLUMNS)
    with conn.cursor() as cursor, cursor.copy(f"COPY requests ({columns}) FROM STDIN") as copy:
        for row in batch:
            copy.write_row(row)


def _size(db: Any, path: str) -> int:
    if is_postgres(path):
        return int(
            db.execute(
                "SELECT SUM(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n"
                " ON n.oid = c.relnamespace WHERE n.nspname = current_schema() AND c.relkind = 'r'"
            ).fetchone()[0]
        )
    return os.path.getsize(path)


def rollup_cost(folder: str, rows: int = 100_000, url: str | None = None) -> dict[str, float]:
    """The rollups' cost on the write path: the writer's batches with and without adding them (a ratio)."""
    data = [to_row(e) for e in synthetic_entries(rows, start=NOW - 30 * 86400, days=30, teams=20, users_per_team=50)]
    seconds: dict[bool, list[float]] = {}
    for with_rollups in (False, True, False, True):
        scratch = f"rollups_{with_rollups}_{sum(map(len, seconds.values()))}".lower()
        path = _scratch(url, scratch) if url else os.path.join(folder, f"{scratch}.db")
        db = connect(path)
        started = time.monotonic()
        for i in range(0, len(data), 2000):  # the ledger writer's batch size
            with transaction(db):
                serialize_writers(db)
                last = db.execute("SELECT COALESCE(MAX(rowid), 0) FROM requests").fetchone()[0]
                db.executemany(INSERT_SQL, data[i : i + 2000])
                if with_rollups:
                    add_to_rollups(db, last)
        seconds.setdefault(with_rollups, []).append(time.monotonic() - started)
        db.close()
        if url:
            _drop(url, scratch)
    plain, rolled = min(seconds[False]), min(seconds[True])
    return {
        "rows": rows,
        "rows_per_second_without_rollups": round(rows / plain),
        "rows_per_second_with_rollups": round(rows / rolled),
        "rollup_slowdown": round(rolled / plain, 2),
    }


def _scratch(url: str, schema: str) -> str:
    """A URL on ``url``'s server whose tables live in an emptied schema of that name."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        conn.execute(f"CREATE SCHEMA {schema}")
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


def _drop(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def time_calls(path: str) -> dict[str, object]:
    db = connect(path)
    _, viewer = create_key(db, team="payments", role="viewer")
    db.close()
    os.environ["TOKENCTL_ADMIN_KEY"] = ADMIN
    ledger = {"url": path, "journal_dir": tempfile.mkdtemp()} if is_postgres(path) else {"path": path}
    config = parse_config(
        {
            "ledger": ledger,
            "providers": [
                {"name": "anthropic", "kind": "anthropic", "base_url": "http://127.0.0.1:9", "models": ["*"]}
            ],
            "budgets": [
                {"name": "team-monthly", "scope": "team", "limit_usd": 20000, "period": "monthly"},
                {"name": "user-weekly", "scope": "user", "limit_usd": 500, "period": "weekly"},
            ],
        },
        source="bench",
    )
    started = time.monotonic()
    server = ServerThread(create_app(config, clock=lambda: NOW)).start()
    startup = time.monotonic() - started
    calls = [
        "overview",
        "breakdown?by=team",
        "breakdown?by=user",
        "breakdown?by=model",
        "breakdown?by=project",
        "breakdown?by=tool",
        "concentration",
        "savings",
        "sessions",
        "requests",
        "budgets",
    ]
    out: dict[str, object] = {"gateway_startup_seconds": round(startup, 2)}
    for who, key in (("admin", ADMIN), ("viewer", viewer)):
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as client:
            for call in calls:
                times = []
                for _ in range(15):
                    t = time.perf_counter()
                    response = client.get(f"/ui/api/{call}")
                    times.append((time.perf_counter() - t) * 1000)
                    assert response.status_code == 200, response.text
                out[f"{who} {call}"] = {"median_ms": round(statistics.median(times), 1), "max_ms": round(max(times), 1)}
    server.stop()
    db = connect(path, migrate_schema=False)
    t = time.perf_counter()
    db.execute("SELECT SUM(cost_nanousd), COUNT(*) FROM requests WHERE ts >= '2026-11-01'").fetchone()
    out["month total from the requests table (ms)"] = round((time.perf_counter() - t) * 1000, 1)
    t = time.perf_counter()
    db.execute("SELECT SUM(cost_nanousd), SUM(requests) FROM rollup_daily WHERE day >= '2026-11-01'").fetchone()
    out["month total from the rollup (ms)"] = round((time.perf_counter() - t) * 1000, 1)
    return out


def _pg_ledger(url: str, schema: str, reuse: bool) -> str:
    if not reuse:
        return _scratch(url, schema)
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--keep", help="ledger file to create (kept afterwards); default: a temporary file")
    parser.add_argument("--url", help="a PostgreSQL server to run on instead of SQLite")
    parser.add_argument("--schema", default="bench_dashboard", help="with --url: the schema holding the ledger")
    parser.add_argument("--reuse", action="store_true", help="with --url: keep the schema's ledger if it is there")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=ROOT / "bench") as folder:
        if args.url:
            path = _pg_ledger(args.url, args.schema, args.reuse)
            reuse = args.reuse and connect(path).execute("SELECT COUNT(*) FROM requests").fetchone()[0] > 0
        else:
            path = args.keep or os.path.join(folder, "ledger.db")
            reuse = bool(args.keep) and os.path.exists(path)
        fill_stats = fill(path, args.rows) if not reuse else {"reused": args.schema if args.url else path}
        result = {
            "measured": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": platform.platform(),
            "cpus": os.cpu_count(),
            "engine": "postgresql" if args.url else "sqlite",
            "rows": args.rows,
            "days": DAYS,
            "fill": fill_stats,
            "write_path": rollup_cost(folder, url=args.url),
            "api": time_calls(path),
        }
    out = ROOT / "bench" / "results" / ("dashboard-postgresql.json" if args.url else "dashboard.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
