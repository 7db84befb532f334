"""The Health page in Chromium: the prompt cache's read share, its misses by cause and the money lost, a caught
loop resumed with one click, the spend anomaly and the alert the watcher raised; the figures equal the ledger;
a team viewer sees their own team only; no page-wide overflow at phone width."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx2 as httpx

from tests.conftest import ADMIN_KEY, ledger_query
from tests.dashboard.conftest import SHOTS
from tests.dashboard.test_anomalies import TODAY
from tests.dashboard.test_anomalies import ledger as anomaly_ledger
from tests.dashboard.test_ui_browser import Page, exact
from tests.policy.test_loops import LOOPS, _claude_code_turn, _send
from tests.watch.test_alerts import EVENING, _day_of_turns
from tokenctl.ledger.writer import LedgerWriter


def _health_gateway(make_gateway: Any, tmp_path: Path) -> Any:
    path = anomaly_ledger(tmp_path)  # bob's runaway day: an anomaly and its alert
    writer = LedgerWriter(path)
    writer.start()
    for back in range(1, 8):
        _day_of_turns(writer, TODAY - timedelta(days=back), "k-cold", "web", 270_000, 10_000)
    _day_of_turns(writer, TODAY, "k-cold", "web", 30_000, 250_000, misses=6)
    writer.close()
    live = make_gateway(
        {"ledger": {"path": path}, **LOOPS},
        clock=lambda: EVENING,
        keys={"viewer_web": {"team": "web", "role": "viewer"}},
    )
    body, headers = _claude_code_turn(4)  # alice's agent repeats one tool call: paused
    assert _send(live, body, headers).status_code == 402
    live.wait_rows(1)
    return live


def test_the_health_page_shows_cache_misses_loops_and_anomalies(
    make_gateway: Any, tmp_path: Path, browser: Any
) -> None:
    live = _health_gateway(make_gateway, tmp_path)
    tab = Page(browser, live.url, ADMIN_KEY)
    page = tab.open(f"health?start={TODAY - timedelta(days=7)}&end={TODAY}")
    lost = ledger_query(
        live.db_path, "SELECT COUNT(*) AS n, SUM(cache_miss_nanousd) AS lost FROM requests WHERE cache_miss IS NOT NULL"
    )[0]
    assert page.locator("#health-misses .card-value").inner_text() == str(lost["n"]) == "6"
    cause = page.locator("#health-causes tbody tr").first
    assert "the system prompt changed" in cause.inner_text()
    assert Decimal(cause.locator(".usd").get_attribute("data-usd")) == exact(lost["lost"])
    assert "keep it stable" in cause.inner_text()
    for table, member in (("teams", "web"), ("users", "k-cold-user"), ("keys", "k-cold")):
        row = page.locator(f"#health-{table} tbody tr", has_text=member).first
        assert "the system prompt changed" in row.inner_text() and "$0.0750" in row.inner_text()
    tab.shot("admin-health")
    anomalies = page.locator("#health-anomalies").inner_text()
    assert "user bob" in anomalies and "bob-runaway" in anomalies
    assert "spend anomaly" in page.locator("#health-alerts").inner_text()
    loop = page.locator("#health-loops-table tbody tr", has_text="sess-loop-1")
    assert "same-tool" in loop.inner_text() and page.locator("#health-loops .card-value").inner_text() == "1"
    tab.shot("admin-health")
    page.on("dialog", lambda dialog: dialog.accept())
    loop.locator("button.resume").click()
    page.wait_for_selector("#health-loops-table tbody tr:has-text('resumed')")
    assert page.locator("#health-loops .card-value").inner_text() == "0"
    resumed = ledger_query(live.db_path, "SELECT subject, rule, resumed_by FROM loop_resumes")
    assert resumed == [{"subject": "sess-loop-1", "rule": "same-tool", "resumed_by": "admin (dashboard)"}]
    body, headers = _claude_code_turn(4)
    assert _send(live, body, headers).status_code == 200  # resumed in this gateway at once
    tab.close()

    viewer = Page(browser, live.url, live.keys["viewer_web"])
    mine = viewer.open(f"health?start={TODAY - timedelta(days=7)}&end={TODAY}")
    assert [t.strip() for t in mine.locator("#health-teams tbody tr td:first-child").all_inner_texts()] == ["web"]
    assert "bob" not in mine.locator("#health-anomalies").inner_text()  # bob is in team data
    assert mine.locator("button.resume").count() == 0
    viewer.close()
    resume = httpx.post(f"{live.url}/ui/api/loops/sess-loop-1/resume", headers={"x-csrf-token": "x"}, timeout=10)
    assert resume.status_code == 401  # not signed in


def test_the_health_page_fits_a_phone(make_gateway: Any, tmp_path: Path, browser: Any) -> None:
    live = _health_gateway(make_gateway, tmp_path)
    ctx = browser.new_context(viewport={"width": 390, "height": 844})
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{live.url}/ui/")
    page.fill("#key", ADMIN_KEY)
    page.click("button[type=submit]")
    page.wait_for_url(live.url + "/ui/")
    page.goto(f"{live.url}/ui/#/health?start={TODAY - timedelta(days=7)}&end={TODAY}")
    page.wait_for_selector("main[data-page='health'][aria-busy='false']")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(SHOTS / "phone-health.png"), full_page=True)
    ctx.close()
    assert not errors
