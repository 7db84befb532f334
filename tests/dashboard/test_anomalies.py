"""Spend anomalies: a day far above a member's usual same-weekday spend is found, with the sessions behind it;
ordinary variation is not; the report refuses options it cannot apply."""

from __future__ import annotations

import sqlite3
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from tokenctl.cli.main import main
from tokenctl.dashboard.anomalies import find_anomalies, is_anomaly
from tokenctl.ledger.record import LedgerEntry
from tokenctl.ledger.writer import LedgerWriter
from tokenctl.types import Attribution, Cost, Principal

TODAY = date(2031, 3, 12)  # any date: nothing here reads the wall clock


def spend(writer: LedgerWriter, day: date, user: str, team: str, usd: str, session: str, n: int) -> None:
    noon = datetime(day.year, day.month, day.day, 12, tzinfo=UTC).timestamp()
    for i in range(n):
        writer.record(
            LedgerEntry(
                request_id=f"{session}-{day}-{i}",
                started_at=noon + i,
                api="anthropic.messages",
                status=200,
                principal=Principal(key_id=f"k-{user}", user=user, team=team, project=None),
                attribution=Attribution(tool=None, tool_version=None, session_id=session, device_id=None),
                cost=Cost(Decimal(usd) / n, Decimal(usd) / n, True, "test"),
            )
        )


def ledger(tmp_path: Path) -> str:
    path = str(tmp_path / "anomalies.db")
    writer = LedgerWriter(path)
    writer.start()
    for back in range(1, 50):  # seven weeks of ordinary days: $20-$24 for alice, $3-$4 for bob
        day = TODAY.fromordinal(TODAY.toordinal() - back)
        spend(writer, day, "alice", "web", str(20 + back % 5), f"alice-{back}", 2)
        spend(writer, day, "bob", "data", str(3 + back % 2), f"bob-{back}", 1)
    spend(writer, TODAY, "alice", "web", "31", "alice-today", 2)  # a busy day, within her range of variation
    spend(writer, TODAY, "bob", "data", "2.5", "bob-today", 1)
    spend(writer, TODAY, "bob", "data", "180", "bob-runaway", 30)  # a runaway agent
    writer.close()
    return path


def test_a_spike_is_found_with_its_sessions_and_ordinary_days_are_not(tmp_path: Path) -> None:
    db = sqlite3.connect(ledger(tmp_path))
    found = find_anomalies(db, TODAY)  # type: ignore[arg-type]
    assert [(a["kind"], a["member"], a["day"]) for a in found] == [
        ("team", "data", TODAY.isoformat()),
        ("user", "bob", TODAY.isoformat()),
    ]
    bob = found[1]
    assert Decimal(bob["spend_usd"]) == Decimal("182.5") and bob["top_sessions"].startswith("bob-runaway ($180.00")
    assert bob["times_usual"] > 40


def test_the_rule_itself() -> None:
    usual = [20_000, 21_000, 19_000, 20_500, 20_000]
    assert is_anomaly(200_000, usual, 3.5, 0)[0]
    assert not is_anomaly(22_000, usual, 3.5, 0)[0]  # within 3.5 robust deviations (threshold 22,594)
    assert not is_anomaly(200_000, usual, 3.5, 500_000)[0]  # below the floor: too small to alert on
    assert is_anomaly(5, [0, 0, 0, 0], 3.5, 0)[0]  # a member that never spent, spending


def test_report_anomalies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = ledger(tmp_path)
    assert main(["report", "anomalies", "--end", TODAY.isoformat(), "--ledger", path, "--format", "json"]) == 0
    rows = orjson.loads(capsys.readouterr().out)
    assert {r["member"] for r in rows} == {"bob", "data"}
    assert main(["report", "anomalies", "--team", "web", "--ledger", path]) == 2
    assert "--team do not apply" in capsys.readouterr().err
