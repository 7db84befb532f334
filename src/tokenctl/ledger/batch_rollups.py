"""A batch's rows added to the rollups from the rows in hand: summed in Python, one upsert per distinct cell.

The rollups' SQL form (``migrations.BATCH_ROLLUP_SQL``) reads the batch back from ``requests`` four times,
grouping it with SQLite's sorter each time; that was 40 % of what writing a row cost. Summing the rows the
writer already holds and upserting the cells gives exactly the same sums (every measure is an integer, and
durations are whole milliseconds rounded as SQLite's ``ROUND`` does), so a rebuild still matches. It only
applies when every row of the batch was inserted: a replayed row (``ON CONFLICT DO NOTHING``) must not be
counted twice, and which rows those were only the database knows, so such a batch takes the SQL form.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import itemgetter
from typing import Any

from tokenctl.ledger.migrations import (
    ROLLUP_DIMENSIONS,
    ROLLUP_MEASURES,
    SESSION_COLUMNS,
    SESSION_CONFLICT,
    SESSION_MEASURES,
    SMALL_ROLLUPS,
    cell_conflict_sql,
)
from tokenctl.ledger.record import COLUMNS

Row = Sequence[Any]
Cells = dict[tuple[str, ...], list[Any]]

_AT = {column: index for index, column in enumerate(COLUMNS)}
_DIMENSIONS = itemgetter(*(_AT[d] for d in ROLLUP_DIMENSIONS))
_DAY, _TS, _SESSION = _AT["day"], _AT["ts"], _AT["session_id"]
_LATEST = itemgetter(*(_AT[c] for c in ("team", "user", "project", "tool", "model")))
_SESSION_PART = itemgetter(*(ROLLUP_MEASURES.index(m) for m in SESSION_MEASURES))
_BLOCKING = (402, 403, 429)


def _upsert_sql(table: str, columns: tuple[str, ...]) -> str:
    names = (*columns, *ROLLUP_MEASURES)
    values = ", ".join("?" * len(names))
    return f"INSERT INTO {table} ({', '.join(names)}) VALUES ({values}) {cell_conflict_sql(table, columns)}"


_CELL_TABLES = {"rollup_daily": ROLLUP_DIMENSIONS, **SMALL_ROLLUPS}
_CELL_SQL = {table: _upsert_sql(table, columns) for table, columns in _CELL_TABLES.items()}
_PROJECTIONS = {
    table: itemgetter(*(ROLLUP_DIMENSIONS.index(c) for c in columns)) for table, columns in SMALL_ROLLUPS.items()
}
_SESSION_SQL = (
    f"INSERT INTO rollup_sessions ({', '.join(SESSION_COLUMNS)}) VALUES ({', '.join('?' * len(SESSION_COLUMNS))})"
    f" {SESSION_CONFLICT}"
)


def sql_round(value: float) -> float:
    """SQLite's ``ROUND(x)``: half away from zero, computed the way SQLite computes it."""
    return float(int(value + (-0.5 if value < 0 else 0.5)))


# What the measures are computed from, in the order ``measures`` unpacks them.
_MEASURE_COLUMNS = """status outcome cost_nanousd saving_source uncached_nanousd counterfactual_nanousd input_tokens
    cache_read_tokens cache_write_5m_tokens cache_write_1h_tokens output_tokens reasoning_tokens priced duration_ms"""
_MEASURE_INPUTS = itemgetter(*(_AT[c] for c in _MEASURE_COLUMNS.split()))


def measures(row: Row) -> tuple[Any, ...]:
    """The rollup measures of one requests row, in ``ROLLUP_MEASURES`` order (as ``_measure_values`` in SQL)."""
    status, outcome, cost, source, uncached, counterfactual, tokens_in, read, write_5m, write_1h, tokens_out, reasoning, priced, duration = _MEASURE_INPUTS(row)  # fmt: skip
    saved = counterfactual - cost if source in ("policy", "routing") else 0
    return (
        1,
        1 if status >= 400 or outcome != "ok" else 0,
        tokens_in,
        read,
        write_5m + write_1h,
        tokens_out,
        reasoning,
        cost,
        cost if uncached is None else uncached,
        saved if source == "policy" else 0,
        saved if source == "routing" else 0,
        1 - priced,
        1 if status in _BLOCKING and outcome == "rejected" else 0,
        sql_round(duration),
    )


def _summed(groups: dict[Any, list[Any]]) -> dict[Any, list[Any]]:
    """Each group's measures summed column by column (in C: ``zip`` and ``sum``)."""
    return {key: list(map(sum, zip(*members))) for key, members in groups.items()}


def daily_cells(rows: Sequence[Row]) -> tuple[Cells, dict[str, list[Any]]]:
    """The batch summed by rollup_daily cell, and by session: [first_ts, last_ts, first_day, last_day, the
    session's latest row, its measures summed]."""
    cells: dict[tuple[str, ...], list[Any]] = {}
    sessions: dict[str, list[Any]] = {}
    for row in rows:
        if row[_DAY] is None:
            continue
        values = measures(row)
        key = _DIMENSIONS(row)
        if None in key:
            key = tuple("" if v is None else v for v in key)
        cells.setdefault(key, []).append(values)
        session = row[_SESSION]
        if session is not None:
            _add_to_session(sessions, session, row, values)
    for kept in sessions.values():
        kept[5] = list(map(sum, zip(*kept[5])))
    return _summed(cells), sessions


def _add_to_session(sessions: dict[str, list[Any]], session: str, row: Row, values: tuple[Any, ...]) -> None:
    ts, day = row[_TS], row[_DAY]
    kept = sessions.get(session)
    if kept is None:
        sessions[session] = [ts, ts, day, day, row, [values]]
        return
    kept[0], kept[2] = min(kept[0], ts), min(kept[2], day)
    if ts >= kept[1]:  # the latest request so far (a later row wins a tie, as rowid order does in SQL)
        kept[1], kept[4] = ts, row
    kept[3] = max(kept[3], day)
    kept[5].append(values)


def rollup_upserts(rows: Sequence[Row]) -> list[tuple[str, list[tuple[Any, ...]]]] | None:
    """The upserts that add ``rows`` to every rollup, for ``executemany``; None if a row holds a value the
    sums cannot take (the SQL form then adds the batch, with SQLite's own conversions)."""
    try:
        cells, sessions = daily_cells(rows)
    except (TypeError, ValueError, OverflowError):
        return None
    upserts = [(_CELL_SQL["rollup_daily"], [(*key, *values) for key, values in cells.items()])]
    for table, project in _PROJECTIONS.items():
        small: dict[tuple[str, ...], list[Any]] = {}
        for key, values in cells.items():
            small.setdefault(project(key), []).append(values)
        upserts.append((_CELL_SQL[table], [(*key, *values) for key, values in _summed(small).items()]))
    if sessions:
        upserts.append((_SESSION_SQL, [_session_values(session, kept) for session, kept in sessions.items()]))
    return [(sql, params) for sql, params in upserts if params]


def _session_values(session: str, kept: list[Any]) -> tuple[Any, ...]:
    first_ts, last_ts, first_day, last_day, latest, values = kept
    return (session, *_LATEST(latest), first_ts, last_ts, first_day, last_day, *_SESSION_PART(values))
