"""``tokenctl report overview|concentration|savings|sessions|routing|cache|loops``: the dashboard's views.

The same queries as ``/ui`` (dashboard/queries.py over the rollups), printed as a table, CSV or JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from tokenctl.cli.progress import Progress
from tokenctl.cli.render import render_table
from tokenctl.config import Config
from tokenctl.dashboard import queries
from tokenctl.dashboard.anomalies import find_anomalies
from tokenctl.dashboard.budgets import budget_board
from tokenctl.dashboard.health import cache_report
from tokenctl.dashboard.overview import overview
from tokenctl.ledger.db import connect, transaction
from tokenctl.ledger.loop_resumes import detections
from tokenctl.ledger.migrations import SMALL_ROLLUPS, rebuild_daily, rebuild_sessions, rebuild_small_rollups
from tokenctl.policy.budget import Budgets
from tokenctl.policy.manage import combined_rules
from tokenctl.policy.period import current_window
from tokenctl.policy.seed import ledger_seeds
from tokenctl.policy.store import MemoryStore

VIEWS = ("breakdown", "overview", "concentration", "savings", "sessions", "routing", "cache", "loops", "anomalies")


def add_view_arguments(r: argparse.ArgumentParser) -> None:
    r.add_argument(
        "view",
        nargs="?",
        choices=VIEWS,
        default="breakdown",
        help="breakdown (default, by --by), or the dashboard's overview, concentration, savings, sessions, routing, "
        "cache, loops, anomalies",
    )
    r.add_argument(
        "--start",
        help="first day, YYYY-MM-DD, in the reporting time zone (default: breakdown all time, views this month)",
    )
    r.add_argument("--end", help="last day, YYYY-MM-DD, inclusive (default: today)")
    for name in queries.FILTERS:
        r.add_argument(f"--{name}", help=f"only this {name}")


# Options that only the breakdown has, and the views that have no date range (they show fixed periods).
_BREAKDOWN_ONLY = ("by", "since", "until")
_UNDATED_VIEWS = ("overview",)


def check_breakdown_arguments(args: argparse.Namespace) -> None:
    """The breakdown takes a day range or a moment range, not both (they would disagree about time zones)."""
    if (args.start or args.end) and (args.since or args.until):
        raise ValueError("use either --start/--end (days) or --since/--until (moments), not both")
    for flag in ("start", "end"):
        parse_day(getattr(args, flag))


def _check_view_arguments(args: argparse.Namespace) -> None:
    """Every option either applies to the view asked for or is refused: none is ignored silently."""
    for name in _BREAKDOWN_ONLY:
        if getattr(args, name) is not None:
            raise ValueError(
                f"--{name} applies to the breakdown (`tokenctl report --{name} …`), not to "
                f"`report {args.view}`; use --start/--end for its days"
            )
    if args.view in _UNDATED_VIEWS and (args.start or args.end):
        raise ValueError(
            f"`report {args.view}` always shows today, this month and last month; --start/--end do not apply to it"
        )
    if args.view == "loops":
        given = [f"--{n}" for n in ("start", "end", *queries.FILTERS) if getattr(args, n, None) is not None]
        if given:
            raise ValueError(
                f"`report loops` lists the latest detection per session and rule; {', '.join(given)} do not apply"
            )
    if args.view == "anomalies":
        given = [f"--{n}" for n in ("start", *queries.FILTERS) if getattr(args, n, None) is not None]
        if given:
            raise ValueError(
                f"`report anomalies` looks at every user and team over the 7 days up to --end (default today); "
                f"{', '.join(given)} do not apply"
            )


def run_view(args: argparse.Namespace, config: Config) -> int:
    _check_view_arguments(args)
    tz = ZoneInfo(config.enforcement.timezone)
    now = datetime.fromtimestamp(args.clock(), tz)
    view = queries.View(
        filters={n: getattr(args, n) for n in queries.FILTERS if getattr(args, n) is not None},
        start=parse_day(args.start) or now.date().replace(day=1),
        end=parse_day(args.end) or now.date(),
    )
    db = connect(config.ledger_path)
    try:
        data = _VIEWS[args.view](db, view, now, config)
    finally:
        db.close()
    _print(data, args.format)
    return 0


def parse_day(value: str | None) -> date | None:
    """A ``--start``/``--end`` value as a date (None when not given); a clear error for anything else."""
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(f"expected a date like 2026-11-01, got {value!r}") from exc


def _overview(db: Any, view: queries.View, now: datetime, config: Config) -> dict[str, Any]:
    data = overview(db, queries.View(filters=view.filters), now)
    rules = combined_rules(config, db)
    budgets = Budgets(rules.budgets, ZoneInfo(config.enforcement.timezone), MemoryStore(), 0)
    stamp = now.timestamp()
    settled, drops = ledger_seeds(db, budgets.rules, budgets.tz, stamp)

    async def board() -> list[dict[str, Any]]:
        await budgets.store.seed(settled, drops, stamp)
        return await budget_board(budgets, _direct(db), queries.View(), stamp)

    data["budgets"] = asyncio.run(board())
    return data


def _direct(db: Any) -> Callable[[Callable[[Any], Any]], Any]:
    async def run(work: Callable[[Any], Any]) -> Any:
        return work(db)

    return run


_VIEWS: dict[str, Callable[[Any, queries.View, datetime, Config], Any]] = {
    "overview": _overview,
    "concentration": lambda db, view, now, config: queries.concentration(db, view),
    "savings": lambda db, view, now, config: queries.savings(db, view),
    "sessions": lambda db, view, now, config: queries.sessions(db, view),
    "routing": lambda db, view, now, config: queries.routing(db, view),
    "cache": lambda db, view, now, config: cache_report(db, view),
    "loops": lambda db, view, now, config: detections(db, 200),
    "anomalies": lambda db, view, now, config: find_anomalies(db, view.end or now.date()),
}

# -- output -----------------------------------------------------------------------------------------


def _print(data: Any, fmt: str) -> None:
    if fmt == "json":
        print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        return
    sections = _sections(data)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        if not any(rows for _, rows in sections):
            writer.writerow(["section"])  # an empty report is still a CSV with its header
        for title, rows in sections:
            if rows:
                writer.writerow(["section", *rows[0]])
                for row in rows:
                    writer.writerow([title, *(_cell(v) for v in row.values())])
        sys.stdout.write(buf.getvalue())
        return
    for title, rows in sections:
        print(f"\n{title}")
        if rows:
            columns = list(rows[0])
            print(render_table(columns, [[_cell(r.get(c)) for c in columns] for r in rows]))
        else:
            print("(no rows)")


def _sections(data: Any) -> list[tuple[str, list[dict[str, Any]]]]:
    """A view's scalar fields as one key/value section, and each list of rows as its own section."""
    if isinstance(data, list):
        return [("rows", data)]
    scalars = [{"metric": k, "value": v} for k, v in data.items() if not isinstance(v, (list, dict))]
    lists = [(k, [_flat(r) for r in v]) for k, v in data.items() if isinstance(v, list) and k != "curve"]
    return [("summary", scalars), *lists]


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not isinstance(v, (list, dict)) and k != "cost_nanousd"}


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


# -- rebuilding rollups -----------------------------------------------------------------------------


def rebuild_rollups(config: Config) -> int:
    """Recompute the rollups from the requests table, a month at a time, with a progress bar."""
    db = connect(config.ledger_path)
    try:
        months = [
            m for (m,) in db.execute("SELECT DISTINCT substr(day, 1, 7) FROM requests WHERE day IS NOT NULL ORDER BY 1")
        ]
        progress = Progress("rebuild rollups", len(months) + 1)
        with transaction(db):
            for table in ("rollup_daily", *SMALL_ROLLUPS, "rollup_sessions"):
                db.execute(f"DELETE FROM {table}")
            for month in months:
                rebuild_daily(db, "AND r.day >= ? AND r.day < ?", (f"{month}-01", f"{month}-32"))
                progress.advance()
            rebuild_small_rollups(db)
            rebuild_sessions(db)
            progress.finish()
        print(f"rebuilt rollups for {len(months)} month(s)", file=sys.stderr)
    finally:
        db.close()
    return 0


# -- retention --------------------------------------------------------------------------------------


def _check_budget_windows(config: Config, db: Any, cutoff: str, tz: ZoneInfo, now: float) -> None:
    """Budget counters are rebuilt from request rows: never prune inside a budget's current window."""
    for rule in combined_rules(config, db).budgets:
        start = datetime.fromtimestamp(current_window(rule.period, now, tz).start, tz).date().isoformat()
        if cutoff > start:
            raise ValueError(
                f"budget {rule.name!r} ({rule.period.label}) still counts spend since {start}; "
                f"pruning before {cutoff} would make it forget that spend after a restart"
            )


def _days_before(db: Any, cutoff: date, tz: ZoneInfo) -> list[tuple[str, str]]:
    """UTC ``ts`` bounds of each local day from the oldest row to the cutoff day itself (rows whose ``day``
    was computed in another time zone may start there), oldest first."""
    oldest = db.execute("SELECT MIN(ts) FROM requests").fetchone()[0]
    if oldest is None:
        return []
    first = datetime.fromisoformat(oldest.replace("Z", "+00:00")).astimezone(tz).date() - timedelta(days=1)
    bounds = []
    day = first
    while day <= cutoff:
        bounds.append((_utc_start(day, tz), _utc_start(day + timedelta(days=1), tz)))
        day += timedelta(days=1)
    bounds[0] = ("", bounds[0][1])
    return bounds


def _utc_start(day: date, tz: ZoneInfo) -> str:
    start = datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(UTC)
    return start.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def prune_requests(config: Config, older_than_days: int, vacuum: bool, now: float) -> int:
    """Delete request rows older than N days, a day at a time; the rollups (and so the dashboard) keep them."""
    if older_than_days < 1:
        raise ValueError("--older-than-days: at least 1")
    tz = ZoneInfo(config.enforcement.timezone)
    cutoff = (datetime.fromtimestamp(now, tz).date() - timedelta(days=older_than_days)).isoformat()
    db = connect(config.ledger_path)
    try:
        _check_budget_windows(config, db, cutoff, tz, now)
        days = _days_before(db, date.fromisoformat(cutoff), tz)
        progress = Progress("prune", max(len(days), 1))
        deleted = 0
        for start, end in days:  # a day at a time, found through the ts index (10 M rows: no full scans)
            with transaction(db):
                deleted += db.execute(
                    "DELETE FROM requests WHERE ts >= ? AND ts < ? AND (day < ? OR day IS NULL)", (start, end, cutoff)
                ).rowcount
            progress.advance()
        progress.finish()
        if vacuum:
            db.execute("VACUUM")
        print(f"deleted {deleted:,} request rows from before {cutoff}; rollups kept", file=sys.stderr)
    finally:
        db.close()
    return 0
