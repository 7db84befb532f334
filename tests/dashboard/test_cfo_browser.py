"""The dashboard a finance lead reads: every budget with its burn-down, forecast and honest wording; bars that
reach 100 %; ISO dates in the pickers; charts with a scale and today's partial day marked; big numbers
humanised with the exact one on hover; savings split between the provider's cache and tokenctl; sessions and
requests searchable; a session's failed turns drawn as markers, its running cost and its duration."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx2 as httpx
import pytest

from tests.conftest import ADMIN_KEY
from tests.dashboard.conftest import NOW, Seeded
from tests.dashboard.test_ui_browser import Page, exact


@pytest.fixture(scope="module")
def ledger_engine() -> str:
    return "sqlite"


def test_every_budget_has_its_burn_down_forecast_and_wording(seeded: Seeded, browser: Any) -> None:
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    tiny = {"scope": "team", "match": "payments", "limit_usd": 20, "period": "monthly"}  # payments spent $27
    assert httpx.put(f"{seeded.url}/admin/budgets/tiny", json=tiny, headers=admin, timeout=10).status_code == 200
    try:
        _check_budget_page(seeded, browser)
    finally:
        httpx.delete(f"{seeded.url}/admin/budgets/tiny", headers=admin, timeout=10)


def _check_budget_page(seeded: Seeded, browser: Any) -> None:
    tab = Page(browser, seeded.url, ADMIN_KEY)
    page = tab.open("budgets")
    api = page.request.get(f"{seeded.url}/ui/api/budgets").json()["rows"]
    rows = page.locator("#budgets-table tbody tr")
    assert rows.count() == len(api) > 1
    month_start = datetime(2026, 11, 1, tzinfo=UTC).timestamp()
    resets = datetime(2026, 12, 1, tzinfo=UTC).timestamp()
    for i, budget in enumerate(api):
        text = rows.nth(i).inner_text()
        assert budget["burn_down"], budget  # every budget, not only the fullest
        spent = Decimal(budget["spent_usd"]) + Decimal(budget["reserved_usd"])
        at_reset = spent * Decimal(resets - month_start) / Decimal(NOW - month_start)
        assert abs(Decimal(budget["forecast"]["at_reset_usd"]) - at_reset) < Decimal("0.001")
        assert budget["forecast"]["text"] in text
        if Decimal(budget["limit_usd"]) < at_reset:
            assert "on track to exceed by $" in text
        if budget["used_percent"] >= 100:
            assert "exhausted" in text
        else:
            assert f"{budget['used_percent']}%" in text
            bar = rows.nth(i).locator(".sharebar")
            track, fill = bar.locator(".track").bounding_box(), bar.locator(".fill").bounding_box()
            assert abs(fill["width"] / track["width"] - budget["used_percent"] / 100) < 0.03  # no cap at ~67 %
    exhausted = rows.filter(has_text="tiny").first.inner_text()
    assert "exhausted" in exhausted and "on track to exceed by $" in exhausted
    tab.shot("admin-budgets-forecast")
    only_org = tab.open("budgets?scope=org")
    assert only_org.locator("#budgets-table tbody tr").count() == 1
    assert f"1 of {len(api)} budget rows" in only_org.locator("#budget-filter").inner_text()
    tab.close()


def test_pickers_take_iso_dates_and_charts_have_a_scale(seeded: Seeded, browser: Any) -> None:
    tab = Page(browser, seeded.url, ADMIN_KEY)
    page = tab.open("overview")
    assert page.locator("#start").get_attribute("placeholder") == "YYYY-MM-DD"
    assert page.locator("#start").input_value() == "2026-11-01"
    page.fill("#start", "11/01/2026")  # not ISO: the range does not move
    page.locator("#start").dispatch_event("change")
    assert "start=" not in page.url
    page.fill("#start", "2026-10-01")
    page.fill("#end", "2026-10-31")
    page.locator("#end").dispatch_event("change")
    page.wait_for_url("**start=2026-10-01&end=2026-10-31")
    page.wait_for_selector("main[data-page='overview'][aria-busy='false']")
    chart = page.locator("#trend-30d svg.chart")
    assert "max $" in (chart.text_content() or "") and len(chart.locator("line.gridline").all()) == 2
    today = chart.locator("rect.bar.partial")
    assert today.count() == 1 and "(today so far)" in (today.locator("title").text_content() or "")
    shown = page.evaluate("(() => { const e = bigMoney('12345.678'); return [e.textContent, e.title]; })()")
    assert shown == ["$12.3K", "$12,345.68"]
    assert page.evaluate("bigMoney('999.5').textContent") == "$999.50"
    concentration = tab.open("concentration")
    axes = concentration.locator("svg.chart").text_content() or ""
    assert "100% of spend" in axes and "100% of users" in axes
    tab.close()


def test_savings_separate_the_providers_cache_from_tokenctl(seeded: Seeded, browser: Any) -> None:
    tab = Page(browser, seeded.url, ADMIN_KEY)
    page = tab.open("savings")

    def amount(card: str) -> Decimal:
        return Decimal(page.locator(f"#{card} .usd").get_attribute("data-usd"))

    policy = seeded.sql(
        "SELECT SUM(counterfactual_nanousd - cost_nanousd) FROM requests WHERE ts >= '2026-11-01'"
        " AND saving_source IS NOT NULL"
    )[0][0]
    assert amount("sav-tokenctl") == exact(policy or 0) + amount("sav-response-cache")  # policies, routing, cache hits
    assert amount("sav-tokenctl") + amount("sav-cache") == amount("sav-total")
    assert "not tokenctl's" in page.locator("#sav-cache").inner_text()
    asked = dict(
        seeded.sql(
            "SELECT requested_model, SUM(counterfactual_nanousd - cost_nanousd) FROM requests"
            " WHERE ts >= '2026-11-01' AND saving_source IS NOT NULL GROUP BY requested_model"
        )
    )
    assert "claude-opus-4-1" in asked  # the synthetic ledger's downgrades: asked for Opus, served on Sonnet
    opus = page.locator("#savings-asked tbody tr", has_text="claude-opus-4-1").first
    assert Decimal(opus.locator("td[data-col=saved] .usd").get_attribute("data-usd")) == exact(asked["claude-opus-4-1"])
    tab.close()


def test_sessions_and_requests_can_be_searched(seeded: Seeded, browser: Any) -> None:
    session, user = seeded.sql(
        "SELECT session_id, user FROM requests WHERE ts >= '2026-11-01' GROUP BY session_id, user"
        " ORDER BY SUM(cost_nanousd) DESC LIMIT 1"
    )[0]
    request_id = seeded.sql("SELECT request_id FROM requests WHERE session_id = ? LIMIT 1", session)[0][0]
    tab = Page(browser, seeded.url, ADMIN_KEY)
    page = tab.open("sessions")
    page.fill("form.search input[name=find]", session)
    page.click("form.search button")
    page.wait_for_url(f"**find={session}")
    page.wait_for_selector("main[data-page='sessions'][aria-busy='false']")
    assert page.locator("#sessions-table tbody tr").all_inner_texts()[0].startswith(session)
    assert page.locator("#sessions-table tbody tr").count() == 1
    by_user = tab.open(f"sessions?find={user}")
    users = by_user.locator("#sessions-table tbody tr td:nth-child(2)").all_inner_texts()
    assert users and set(users) == {user}
    found = tab.open(f"requests?start=2026-10-01&find={request_id}")
    assert found.locator("#requests-table tbody tr").count() == 1
    refused = page.request.get(f"{seeded.url}/ui/api/sessions?key=key_x")
    assert refused.status == 400 and "cannot be filtered by key" in refused.json()["error"]["message"]
    tab.close()


def test_a_session_shows_failed_turns_running_cost_and_duration(seeded: Seeded, browser: Any) -> None:
    session = seeded.sql(
        "SELECT session_id FROM requests WHERE status >= 400 AND ts >= '2026-11-01' GROUP BY session_id"
        " ORDER BY COUNT(*) DESC LIMIT 1"
    )[0][0]
    turns = seeded.sql(
        "SELECT status, outcome, cost_nanousd, ts, duration_ms FROM requests WHERE session_id = ? ORDER BY ts", session
    )
    failed = sum(1 for status, outcome, *_ in turns if status >= 400 or outcome != "ok")
    tab = Page(browser, seeded.url, ADMIN_KEY)
    page = tab.open(f"sessions/{session}?start=2026-10-01")
    assert page.locator("circle.failed-turn").count() == failed > 0
    last = page.locator("#requests-table tbody tr").last.locator("td").nth(8)  # the running total
    assert Decimal(last.locator(".usd").get_attribute("data-usd")) == exact(sum(t[2] for t in turns))
    assert "to" in page.locator("#session-duration").inner_text()
    tab.shot("admin-session-failed-turns")
    tab.close()


def test_spend_over_time_is_stacked_and_compared_with_the_previous_period(seeded: Seeded, browser: Any) -> None:
    by_model = dict(
        seeded.sql(
            "SELECT model, SUM(cost_nanousd) FROM requests WHERE day >= '2026-11-01' AND day <= '2026-11-20'"
            " GROUP BY model"
        )
    )
    now = sum(by_model.values())
    before = seeded.sql("SELECT SUM(cost_nanousd) FROM requests WHERE day >= '2026-10-12' AND day <= '2026-10-31'")[0][
        0
    ]
    tab = Page(browser, seeded.url, ADMIN_KEY)
    page = tab.open("overview")
    data = page.request.get(f"{seeded.url}/ui/api/stacked?by=model&start=2026-11-01&end=2026-11-20").json()
    assert len(data["days"]) == 20 and data["previous_start"] == "2026-10-12"
    for series in data["series"]:  # five models: no "other" needed, each summing to the ledger's figure
        assert sum(Decimal(v) for v in series["usd"]) == exact(by_model[series["group"]])
    assert page.locator("#stacked-spend rect.seg").count() > 20
    expected = (now - before) / before * 100
    assert f"{'+' if expected > 0 else ''}{expected:.1f}%" in page.locator("#stack-change").inner_text()
    page.click("#stack-tabs a:has-text('team')")
    page.wait_for_url("**stack=team")
    page.wait_for_selector("main[data-page='overview'][aria-busy='false']")
    assert "payments" in page.locator("#stacked-spend .legend").inner_text()
    web_now, web_before = (
        seeded.sql(
            "SELECT SUM(cost_nanousd) FROM requests WHERE team = 'search' AND day >= ? AND day <= ?", start, end
        )[0][0]
        for start, end in (("2026-11-01", "2026-11-20"), ("2026-10-12", "2026-10-31"))
    )
    breakdown = tab.open("breakdown?by=team")
    assert breakdown.locator("#breakdown-stacked rect.seg").count() > 20
    row = breakdown.locator("#breakdown-table tbody tr", has_text="search").first.inner_text()
    change = (web_now - web_before) / web_before * 100
    assert f"{'+' if change > 0 else ''}{change:.1f}%" in row
    tab.shot("admin-overview-stacked")
    tab.close()
