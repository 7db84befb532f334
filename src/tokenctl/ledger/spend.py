"""Settled spend per budget member, summed from the ledger: how budget counters are (re)built.

Counters are derived from ledger rows, never carried over by a job, so a restart, a new budget or
a changed period starts from exactly what the ledger says was spent in the current window.
"""

from __future__ import annotations

from tokenctl.ledger.engine import Database, epoch_seconds
from tokenctl.ledger.record import iso_utc

# The ledger column holding each scope's member.
SCOPE_COLUMNS = {
    "org": "'org'",
    "team": "team",
    "user": "user",
    "project": "project",
    "key": "key_id",
    "session": "session_id",
}


def spend_by_member(
    db: Database,
    scope: str,
    since: float,
    *,
    bucket_seconds: int | None = None,
    funding: str | None = None,
    not_funding: str | None = None,
    slice_by_user: bool = False,
) -> dict[tuple[str, str | None, int], int]:
    """{(member, user-or-None, bucket start): nano-USD} for rows started at or after ``since``."""
    member = SCOPE_COLUMNS[scope]
    user = "user" if slice_by_user else "NULL"
    bucket = f"({epoch_seconds(db, 'ts')} / {int(bucket_seconds)}) * {int(bucket_seconds)}" if bucket_seconds else "0"
    sql = (
        f"SELECT {member} AS m, {user} AS u, {bucket} AS b, SUM(cost_nanousd) FROM requests"
        f" WHERE ts >= ? AND {member} IS NOT NULL"
    )
    params: list[object] = [iso_utc(since)]
    if funding is not None:
        sql += " AND funding = ?"
        params.append(funding)
    if not_funding is not None:
        sql += " AND (funding IS NULL OR funding != ?)"
        params.append(not_funding)
    sql += " GROUP BY m, u, b"
    return {(m, u, int(b)): int(total or 0) for m, u, b, total in db.execute(sql, params)}
