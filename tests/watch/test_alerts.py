"""The watcher's alerts, read from a real ledger by a running gateway: a spend spike raises one anomaly alert
(audit + webhook) naming the session behind it, once, across checks and restarts; a key whose prompt cache went
cold today is named with the cause of its misses and advice; cache-write spend above the threshold alerts."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx2 as httpx

from tests.conftest import ADMIN_KEY
from tests.dashboard.test_anomalies import TODAY
from tests.dashboard.test_anomalies import ledger as anomaly_ledger
from tokenctl.config import ProviderConfig
from tokenctl.ledger.record import LedgerEntry
from tokenctl.ledger.writer import LedgerWriter
from tokenctl.types import Attribution, Cost, Principal, Route, Usage

ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
EVENING = datetime(TODAY.year, TODAY.month, TODAY.day, 18, tzinfo=UTC).timestamp()
ANTHROPIC = ProviderConfig("anthropic", "anthropic", "https://api.anthropic.com", None, (), "anthropic")


def _check(live: Any) -> list[dict[str, Any]]:
    response = httpx.post(f"{live.url}/admin/alerts/check", headers=ADMIN, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["data"]


def _alerts(live: Any) -> list[dict[str, Any]]:
    assert live.gw.ledger.flush(10)
    return httpx.get(f"{live.url}/admin/alerts", headers=ADMIN, timeout=10).json()["data"]


def _wait_hooks(fake: Any, count: int) -> list[str]:
    deadline = time.monotonic() + 5
    while len(fake.hooks) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return [text for name, text in fake.hooks if name == "alerts"]


def test_a_spend_spike_raises_one_anomaly_alert_with_its_session(make_gateway: Any, fake: Any, tmp_path: Path) -> None:
    path = anomaly_ledger(tmp_path)  # seven ordinary weeks, then bob's $180 runaway session today
    extra = {"ledger": {"path": path}, "enforcement": {"webhook_url": f"{fake.url}/hooks/alerts"}}
    fake.hooks.clear()
    live = make_gateway(extra, clock=lambda: EVENING)
    raised = _check(live)  # the watcher already checked at start: nothing new
    first = _alerts(live)
    assert sorted(a["subject"] for a in first) == ["team data", "user bob"]
    assert raised == []
    bob = next(a for a in first if a["subject"] == "user bob")
    assert bob["action"] == "spend_anomaly" and bob["detail"].startswith(f"{TODAY}: spent $182.50")
    assert "top sessions: bob-runaway ($180.00, 30 requests)" in bob["detail"]
    hooks = _wait_hooks(fake, 2)
    assert len(hooks) == 2 and any("spend anomaly for user bob" in h and "bob-runaway" in h for h in hooks)
    assert _check(live) == []  # checked again: nothing raised twice
    live.server.stop()
    again = make_gateway(extra, clock=lambda: EVENING + 600)  # a restart reads what it already raised
    assert _check(again) == []
    assert len(_alerts(again)) == 2
    time.sleep(0.2)
    assert len(_wait_hooks(fake, 2)) == 2


def _day_of_turns(
    writer: LedgerWriter, day: date, key: str, team: str, read: int, written: int, misses: int = 0
) -> None:
    noon = datetime(day.year, day.month, day.day, 12, tzinfo=UTC).timestamp()
    for i in range(10):
        usage = Usage(input_tokens=2_000, cache_read_tokens=read // 10, cache_write_5m_tokens=written // 10)
        writer.record(
            LedgerEntry(
                request_id=f"{key}-{day}-{i}",
                started_at=noon + i * 60,
                api="anthropic.messages",
                status=200,
                principal=Principal(key_id=key, user=f"{key}-user", team=team, project=None),
                attribution=Attribution(tool="claude-code", tool_version=None, session_id=f"{key}-s", device_id=None),
                route=Route(ANTHROPIC, "claude-sonnet-4-5", "claude-sonnet-4-5"),
                usage=usage,
                cost=Cost(Decimal("0.01"), Decimal("0.01"), True, "test"),
                cache_miss="the system prompt changed" if i < misses else None,
                cache_miss_cost=Decimal("0.0125") if i < misses else None,
            )
        )


def test_a_key_whose_prompt_cache_went_cold_is_named_with_the_cause(
    make_gateway: Any, fake: Any, tmp_path: Path
) -> None:
    path = str(tmp_path / "cache.db")
    writer = LedgerWriter(path)
    writer.start()
    for back in range(1, 15):  # two weeks at 90 % of prompt tokens read from the cache
        day = TODAY - timedelta(days=back)
        _day_of_turns(writer, day, "k-cold", "web", 270_000, 10_000)
        _day_of_turns(writer, day, "k-warm", "data", 270_000, 10_000)
    _day_of_turns(writer, TODAY, "k-cold", "web", 30_000, 250_000, misses=6)  # today: 10 %, writing instead
    _day_of_turns(writer, TODAY, "k-warm", "data", 270_000, 10_000)
    writer.close()
    alerts = {"cache_write_usd_per_day": "0.5", "spend_anomalies": False}
    extra = {"ledger": {"path": path}, "alerts": alerts, "enforcement": {"webhook_url": f"{fake.url}/hooks/alerts"}}
    fake.hooks.clear()
    live = make_gateway(extra, clock=lambda: EVENING)
    _check(live)  # returns once the watcher's own check at start (which holds the same lock) has recorded its alerts
    found = {(a["action"], a["subject"]): a["detail"] for a in _alerts(live)}
    assert set(found) == {
        ("cache_share", "key k-cold"),
        ("cache_share", "team web"),
        ("cache_write_spend", "key k-cold"),
        ("cache_write_spend", "team web"),
    }
    cold = found[("cache_share", "key k-cold")]
    assert "read 10% of its 300,000 prompt tokens from the cache today against a usual 90% (median of 14 days)" in cold
    assert "misses: the system prompt changed (6 turns); lost to misses $0.08" in cold
    assert "Advice: something in the system prompt changes every turn" in cold
    spend = found[("cache_write_spend", "key k-cold")]
    assert spend.startswith(f"{TODAY}: cache writes cost $0.94 today (threshold $0.5), 250,000 tokens written")
    assert len(_wait_hooks(fake, 4)) == 4
    assert _check(live) == []


def test_report_cache_names_misses_per_team_user_and_key(tmp_path: Path, capsys: Any) -> None:
    import orjson

    from tokenctl.cli.main import main

    path = str(tmp_path / "report.db")
    writer = LedgerWriter(path)
    writer.start()
    _day_of_turns(writer, TODAY, "k-cold", "web", 30_000, 250_000, misses=6)
    _day_of_turns(writer, TODAY, "k-warm", "data", 270_000, 10_000)
    writer.close()
    day = TODAY.isoformat()
    assert main(["report", "cache", "--ledger", path, "--start", day, "--end", day, "--format", "json"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    web = next(t for t in report["by_team"] if t["team"] == "web")
    assert (web["misses"], web["lost_usd"], web["top_cause"]) == (6, "0.075", "the system prompt changed")
    cold = next(k for k in report["by_key"] if k["key"] == "k-cold")
    assert cold["misses"] == 6 and cold["cache_read_share"] == 0.1
    warm = next(u for u in report["by_user"] if u["user"] == "k-warm-user")
    assert warm["misses"] == 0 and warm["cache_read_share"] == 0.9
    assert report["causes"][0]["cause"] == "the system prompt changed" and report["causes"][0]["turns"] == 6
