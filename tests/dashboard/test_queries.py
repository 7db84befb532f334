"""Dashboard queries over a real ledger: what each number counts."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path

from tokenctl.dashboard import queries
from tokenctl.ledger.db import connect
from tokenctl.ledger.writer import LedgerWriter
from tokenctl.testing.synthetic import synthetic_entries
from tokenctl.types import Principal


def test_keys_without_a_user_are_not_counted_as_a_user(tmp_path: Path) -> None:
    path = str(tmp_path / "l.db")
    writer = LedgerWriter(path)
    writer.start()
    entries = list(synthetic_entries(400, start=time.time() - 86400, days=0.9))
    for i, e in enumerate(entries):
        if i % 5 == 0 and e.principal is not None:  # a service key: no user
            e.principal = Principal(e.principal.key_id + "-svc", None, e.principal.team, None)
        writer.record(e)
    writer.close()
    db = connect(path)
    result = queries.concentration(db, queries.View())
    detail = connect(path, migrate_schema=False)
    users = detail.execute("SELECT COUNT(DISTINCT user) FROM requests WHERE user IS NOT NULL").fetchone()[0]
    without = detail.execute("SELECT COUNT(*), SUM(cost_nanousd) FROM requests WHERE user IS NULL").fetchone()
    assert result["users"] == users and "" not in [r["user"] for r in result["leaderboard"]]
    assert result["unattributed_requests"] == without[0] > 0
    assert Decimal(result["unattributed_usd"]) == Decimal(without[1]) / 10**9
    with_user = detail.execute("SELECT SUM(cost_nanousd) FROM requests WHERE user IS NOT NULL").fetchone()[0]
    assert Decimal(result["total_usd"]) == Decimal(with_user) / 10**9
