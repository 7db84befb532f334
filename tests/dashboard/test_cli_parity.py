"""``tokenctl report`` shows what the dashboard shows: the same numbers from the same ledger."""

from __future__ import annotations

from typing import Any

import httpx2 as httpx
import orjson
import pytest

from tests.conftest import ADMIN_KEY
from tests.dashboard.conftest import NOW, Seeded
from tokenctl.cli.main import main as real_main
from tokenctl.ledger.db import connect


def main(args: list[str]) -> int:
    """The CLI on the seeded gateway's fixed clock, whatever today's date is."""
    return real_main(args, clock=lambda: NOW)


def cli_json(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    assert main(list(args)) == 0
    return orjson.loads(capsys.readouterr().out)


def api(seeded: Seeded, path: str) -> Any:
    return httpx.get(f"{seeded.url}/ui/api/{path}", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()


@pytest.mark.parametrize("view", ["savings", "concentration"])
def test_report_views_equal_the_dashboard_api(seeded: Seeded, capsys: pytest.CaptureFixture[str], view: str) -> None:
    dates = ["--start", "2026-10-01", "--end", "2026-10-31"]
    from_cli = cli_json(capsys, "report", view, "--ledger", seeded.live.db_path, *dates, "--format", "json")
    from_api = api(seeded, f"{view}?start=2026-10-01&end=2026-10-31")
    assert from_cli == {k: v for k, v in from_api.items() if k not in ("start", "end")}


def test_report_overview_has_the_overview_numbers(seeded: Seeded, capsys: pytest.CaptureFixture[str]) -> None:
    from_cli = cli_json(capsys, "report", "overview", "--ledger", seeded.live.db_path, "--format", "json")
    from_api = api(seeded, "overview")
    # the CLI and the gateway run on the same injected clock
    for key in ("month_usd", "last_month_usd", "top_teams", "top_models"):
        assert from_cli[key] == from_api[key], key
    assert {"forecast_usd", "trend", "budgets", "today_usd"} <= set(from_cli)


def test_report_as_table_and_csv(seeded: Seeded, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "savings", "--ledger", seeded.live.db_path, "--start", "2026-10-01"]) == 0
    table = capsys.readouterr().out
    assert "cache_saved_usd" in table and "by_team" in table
    assert main(["report", "sessions", "--ledger", seeded.live.db_path, "--team", "payments", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("section,session_id,team")
    assert len(lines) > 1 and all(",payments," in line for line in lines[1:])


def test_rebuilding_rollups_gives_the_same_rollups(seeded: Seeded, capsys: pytest.CaptureFixture[str]) -> None:
    def snapshot() -> list[tuple[Any, ...]]:
        db = connect(seeded.live.db_path, migrate_schema=False)
        try:
            return db.execute("SELECT * FROM rollup_daily ORDER BY 1, 2, 3, 4, 5, 6, 7, 8").fetchall()
        finally:
            db.close()

    assert seeded.live.gw.ledger.flush(10)
    before = snapshot()
    assert main(["rebuild-rollups", "--ledger", seeded.live.db_path]) == 0
    assert "rebuilt rollups" in capsys.readouterr().err
    assert snapshot() == before and before
