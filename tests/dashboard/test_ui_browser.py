"""The dashboard in a real browser (Debian's Chromium driven by Playwright) against a live gateway.

Checks: every page loads without console errors; the numbers shown equal sums computed straight
from the ledger's ``requests`` table (not from the rollups the page reads); approving from the page
works; a team viewer sees only its team. Screenshots go to ``test-artifacts/screenshots``.
"""

from __future__ import annotations

import os
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ADMIN_KEY
from tests.dashboard.conftest import CHROMIUM, SHOTS, Seeded
from tokenctl.ledger import approvals
from tokenctl.ledger.approvals import HeldRequest
from tokenctl.ledger.db import connect

PAGES = ["overview", "breakdown", "concentration", "savings", "sessions", "requests", "budgets", "approvals", "audit"]

sync_api = pytest.importorskip("playwright.sync_api")
if not os.path.exists(CHROMIUM):
    if os.environ.get("CI"):
        raise RuntimeError(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium for the browser tests")
    pytest.skip("Debian chromium is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def ledger_engine() -> str:
    """What the pages show is the same JSON on either engine (test_access and test_cli_parity check both)."""
    return "sqlite"


class Page:
    """A signed-in browser tab that fails the test on any console error or failed page script."""

    def __init__(self, browser: Any, base: str, key: str) -> None:
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.base = base
        self.page.goto(base + "/ui/")
        assert self.page.url.endswith("/ui/login")
        self.page.fill("#key", key)
        self.page.click("button[type=submit]")
        self.page.wait_for_url(base + "/ui/")

    def open(self, fragment: str) -> Any:
        self.page.goto(f"{self.base}/ui/#/{fragment}")
        page_name = fragment.split("?")[0].split("/")[0]
        self.page.wait_for_selector(f"main[data-page='{page_name}'][aria-busy='false']")
        if self.page.locator("main .error").count():
            raise AssertionError(self.page.locator("main .error").first.inner_text())
        return self.page

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

    def close(self) -> None:
        self.context.close()
        assert not self.errors, f"console errors: {self.errors}"


def cents(nanos: int) -> str:
    """How the page shows an amount: dollars with two decimals (four below one dollar)."""
    amount = Decimal(nanos) / Decimal(10**9)
    digits = Decimal("0.01") if amount == 0 or abs(amount) >= 1 else Decimal("0.0001")
    return f"${amount.quantize(digits, rounding=ROUND_HALF_UP):,}"


def exact(nanos: int) -> Decimal:
    return Decimal(nanos) / Decimal(10**9)


def test_every_page_loads_without_console_errors(seeded: Seeded, browser: Any) -> None:
    tab = Page(browser, seeded.url, ADMIN_KEY)
    for name in PAGES:
        tab.open(name)
        tab.shot(f"admin-{name}")
    session = seeded.sql(
        "SELECT session_id FROM requests WHERE session_id IS NOT NULL"
        " GROUP BY session_id ORDER BY SUM(cost_nanousd) DESC LIMIT 1"
    )[0][0]
    tab.open(f"sessions/{session}")
    tab.shot("admin-session-detail")
    request_id = seeded.sql("SELECT request_id FROM requests WHERE session_id = ? ORDER BY ts DESC", session)[0][0]
    tab.open(f"requests/{request_id}")
    tab.shot("admin-request-detail")
    tab.close()


def test_overview_numbers_equal_the_ledger_sums(seeded: Seeded, browser: Any) -> None:
    today = seeded.sql("SELECT COALESCE(SUM(cost_nanousd), 0) FROM requests WHERE ts >= '2026-11-20'")[0][0]
    month = seeded.sql("SELECT COALESCE(SUM(cost_nanousd), 0) FROM requests WHERE ts >= '2026-11-01'")[0][0]
    last_month = seeded.sql("SELECT SUM(cost_nanousd) FROM requests WHERE ts >= '2026-10-01' AND ts < '2026-11-01'")
    assert today > 0 and month > today
    tab = Page(browser, seeded.url, ADMIN_KEY)
    page = tab.open("overview")
    for card, nanos in (("#kpi-today", today), ("#kpi-month", month), ("#kpi-last-month", last_month[0][0])):
        shown = page.locator(f"{card} .usd")
        assert Decimal(shown.get_attribute("data-usd")) == exact(nanos)
        assert shown.inner_text() == cents(nanos)
    tab.close()


def test_breakdown_table_equals_the_ledger_grouped_by_team(seeded: Seeded, browser: Any) -> None:
    expected = dict(
        seeded.sql(
            "SELECT team, SUM(cost_nanousd) FROM requests WHERE ts >= '2026-10-01' AND ts < '2026-11-01' GROUP BY team"
        )
    )
    tab = Page(browser, seeded.url, ADMIN_KEY)
    page = tab.open("breakdown?by=team&start=2026-10-01&end=2026-10-31")
    rows = page.locator("#breakdown-table tbody tr")
    shown = {
        rows.nth(i).locator("td").first.inner_text(): rows.nth(i).locator("td[data-col=cost] .usd")
        for i in range(rows.count())
    }
    assert set(shown) == set(expected)
    for team, cell in shown.items():
        assert Decimal(cell.get_attribute("data-usd")) == exact(expected[team]), team
        assert cell.inner_text() == cents(expected[team])
    total = page.locator("#breakdown-total .usd")
    assert Decimal(total.get_attribute("data-usd")) == exact(sum(expected.values()))
    # drill down: a team row opens its users
    rows.first.click()
    page.wait_for_url("**by=user**")
    page.wait_for_selector("main[aria-busy='false'] #breakdown-table")
    first_team = max(expected, key=lambda t: expected[t])
    users = dict(
        seeded.sql(
            "SELECT user, SUM(cost_nanousd) FROM requests WHERE team = ? AND ts >= '2026-10-01'"
            " AND ts < '2026-11-01' GROUP BY user",
            first_team,
        )
    )
    cells = page.locator("#breakdown-table tbody tr td[data-col=cost] .usd")
    assert cells.count() == len(users)
    assert sorted(Decimal(cells.nth(i).get_attribute("data-usd")) for i in range(cells.count())) == sorted(
        exact(v) for v in users.values()
    )
    tab.shot("admin-drilldown-users")
    tab.close()


def test_concentration_matches_the_ledger(seeded: Seeded, browser: Any) -> None:
    spend = [
        v
        for (v,) in seeded.sql(
            "SELECT SUM(cost_nanousd) FROM requests WHERE ts >= '2026-11-01' GROUP BY user ORDER BY 1 DESC"
        )
    ]
    top = -(-len(spend) // 5)
    share = sum(spend[:top]) / sum(spend)
    tab = Page(browser, seeded.url, ADMIN_KEY)
    page = tab.open("concentration")
    assert page.locator("#top-share").inner_text() == f"{share * 100:.1f}%"
    first = page.locator("#leaderboard tbody tr").first.locator("td[data-col=cost] .usd")
    assert Decimal(first.get_attribute("data-usd")) == exact(spend[0])
    tab.close()


def test_approve_from_the_page(seeded: Seeded, browser: Any) -> None:
    db = connect(seeded.live.db_path)
    held = approvals.create_pending(
        db,
        HeldRequest(
            rule="big-requests",
            fingerprint="f" * 64,
            key_id="key_x",
            user="payments-dev1",
            team="payments",
            project="payments-a",
            model="claude-opus-4-1",
            estimated_usd=Decimal("42.50"),
            input_tokens=900_000,
            reason="estimated $42.50 is above $25",
        ),
    )
    denied = approvals.create_pending(
        db,
        HeldRequest(
            rule="big-requests",
            fingerprint="e" * 64,
            key_id="key_y",
            user="search-dev2",
            team="search",
            project="search-a",
            model="claude-opus-4-1",
            estimated_usd=Decimal("30"),
            input_tokens=700_000,
            reason="estimated $30.00 is above $25",
        ),
    )
    tab = Page(browser, seeded.url, ADMIN_KEY)
    page = tab.open("approvals")
    tab.shot("admin-approvals-pending")
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.accept()))
    row = page.locator("#approvals-table tr", has_text=held["approval_id"])
    row.locator("input.note").fill("ok for the migration")
    row.locator("select.grant").select_option("8")
    row.locator("input.up-to").fill("40")
    row.locator("button.approve").click()
    page.wait_for_selector(f"#approvals-table >> text={held['approval_id']}", state="detached")
    page.locator("#approvals-table tr", has_text=denied["approval_id"]).locator("button.deny").click()
    page.wait_for_selector(f"text={denied['approval_id']}", state="detached")
    assert approvals.get_approval(db, held["approval_id"])["status"] == "approved"
    assert approvals.get_approval(db, denied["approval_id"])["status"] == "denied"
    decided = approvals.get_approval(db, held["approval_id"])
    assert decided["decided_by"] == "admin (dashboard)" and decided["grant_scope"] == "user"
    assert Decimal(decided["grant_usd"]) == 40 and decided["note"] == "ok for the migration"
    assert "for 8 h up to $40" in dialogs[0]  # the confirmation says what the grant does
    page = tab.open("audit")
    audit_row = page.locator("#audit-table tr", has_text=held["approval_id"]).first
    assert "ok for the migration" in audit_row.inner_text() and " UTC" in audit_row.inner_text()
    db.close()
    tab.close()


def test_team_viewer_sees_only_its_team(seeded: Seeded, browser: Any) -> None:
    mine = seeded.sql("SELECT SUM(cost_nanousd) FROM requests WHERE team = 'payments' AND ts >= '2026-11-01'")[0][0]
    tab = Page(browser, seeded.url, seeded.viewer_payments)
    page = tab.open("breakdown?by=team&team=search")  # asking for another team is ignored
    teams = page.locator("#breakdown-table tbody tr td:first-child")
    assert [teams.nth(i).inner_text() for i in range(teams.count())] == ["payments"]
    assert Decimal(page.locator("#breakdown-total .usd").get_attribute("data-usd")) == exact(mine)
    page = tab.open("overview")
    assert Decimal(page.locator("#kpi-month .usd").get_attribute("data-usd")) == exact(mine)
    tab.shot("viewer-overview")
    page = tab.open("sessions")
    assert page.locator("#sessions-table tbody tr").count() > 0
    assert page.locator("#sessions-table tbody tr", has_text="search-dev").count() == 0
    assert not page.locator("nav a[data-page=audit]").is_visible()
    other = seeded.sql("SELECT request_id FROM requests WHERE team = 'search' LIMIT 1")[0][0]
    response = page.request.get(f"{seeded.url}/ui/api/requests/{other}")
    assert response.status == 404
    tab.close()


def test_unpriced_requests_are_flagged_not_shown_as_plain_zero(make_gateway: Any, browser: Any) -> None:
    import httpx2 as httpx

    live = make_gateway()
    body = {"max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
    for model in ("claude-unpriced-9", "claude-unpriced-9", "claude-haiku-4-5"):
        assert (
            httpx.post(
                live.url + "/v1/messages", json={**body, "model": model}, headers={"x-api-key": live.key}
            ).status_code
            == 200
        )
    live.wait_rows(3)
    tab = Page(browser, live.url, ADMIN_KEY)
    page = tab.open("breakdown?by=model")
    row = page.locator("tr", has_text="claude-unpriced-9")
    assert row.locator(".unpriced").inner_text() == "⚠ 2 unpriced"
    assert page.locator("tr", has_text="claude-haiku-4-5").locator(".unpriced").count() == 0
    overview = tab.open("overview")
    assert "2 without a price" in overview.locator("#kpi-month").inner_text()
    assert overview.locator("tr", has_text="claude-unpriced-9").locator(".unpriced").inner_text() == "⚠ 2 unpriced"
    tab.shot("unpriced-breakdown")
    tab.close()


def test_tables_sort_by_any_column_and_export_csv_with_exact_amounts(seeded: Seeded, browser: Any) -> None:
    import csv
    import io

    expected = dict(
        seeded.sql(
            "SELECT team, SUM(cost_nanousd) FROM requests WHERE ts >= '2026-10-01' AND ts < '2026-11-01' GROUP BY team"
        )
    )
    tab = Page(browser, seeded.url, ADMIN_KEY)
    page = tab.open("breakdown?by=team&start=2026-10-01&end=2026-10-31")
    grid = page.locator("#breakdown-table")

    def costs() -> list[Decimal]:
        cells = grid.locator("tbody td[data-col=cost] .usd")
        return [Decimal(cells.nth(i).get_attribute("data-usd")) for i in range(cells.count())]

    def teams() -> list[str]:
        cells = grid.locator("tbody tr td:first-child")
        return [cells.nth(i).inner_text() for i in range(cells.count())]

    cost_header = grid.locator("th", has_text="cost")
    cost_header.click()
    assert costs() == sorted(costs()) and cost_header.get_attribute("aria-sort") == "ascending"
    cost_header.click()
    assert costs() == sorted(costs(), reverse=True)
    grid.locator("th").first.click()
    assert teams() == sorted(teams())
    with page.expect_download() as download:
        page.locator(".table-wrap", has=grid).locator("button.csv").click()
    rows = list(csv.reader(io.StringIO(Path(download.value.path()).read_text())))
    header, body = rows[0], rows[1:]
    assert header[0] == "team" and "cost" in header
    exported = {r[0]: Decimal(r[header.index("cost")]) for r in body}
    assert exported == {team: exact(nanos) for team, nanos in expected.items()}
    tab.close()


def test_token_counts_are_humanised_with_the_exact_count_for_hover_sorting_and_csv(
    seeded: Seeded, browser: Any
) -> None:
    import csv
    import io
    import re

    expected = dict(
        seeded.sql(
            "SELECT team, SUM(input_tokens) FROM requests WHERE ts >= '2026-10-01' AND ts < '2026-11-01' GROUP BY team"
        )
    )
    assert max(expected.values()) >= 10_000  # at least one count is big enough to be shortened
    tab = Page(browser, seeded.url, ADMIN_KEY)
    page = tab.open("breakdown?by=team&start=2026-10-01&end=2026-10-31")
    grid = page.locator("#breakdown-table")
    column = [c.inner_text() for c in grid.locator("thead th").all()].index("input")

    def shown() -> dict[str, tuple[str, str | None, int]]:
        out = {}
        for row in grid.locator("tbody tr").all():
            cell = row.locator("td").nth(column)
            exact_span = cell.locator("[data-value]")
            if exact_span.count():
                value = int(exact_span.get_attribute("data-value"))
                out[row.locator("td").first.inner_text()] = (
                    cell.inner_text(),
                    exact_span.get_attribute("title"),
                    value,
                )
            else:
                text = cell.inner_text()
                out[row.locator("td").first.inner_text()] = (text, None, int(text.replace(",", "")))
        return out

    cells = shown()
    assert {team: value for team, (_, _, value) in cells.items()} == expected
    for team, (text, title, value) in cells.items():
        if value >= 10_000:
            assert re.fullmatch(r"\d+(\.\d)?[KMBT]", text), text  # e.g. 48.2K, 2.7B
            assert title == f"{value:,} exactly"
        else:
            assert text == f"{value:,}" and title is None
    grid.locator("thead th").nth(column).click()
    assert [v for _, _, v in shown().values()] == sorted(expected.values())
    with page.expect_download() as download:
        page.locator(".table-wrap", has=grid).locator("button.csv").click()
    rows = list(csv.reader(io.StringIO(Path(download.value.path()).read_text())))
    assert {r[0]: int(r[column]) for r in rows[1:]} == expected
    tab.close()


def test_a_cut_list_says_so(seeded: Seeded, browser: Any) -> None:
    sessions = seeded.sql("SELECT COUNT(*) FROM rollup_sessions WHERE last_day >= '2026-10-01'")[0][0]
    assert sessions > 100  # the seeded ledger has more sessions than a page shows
    tab = Page(browser, seeded.url, ADMIN_KEY)
    page = tab.open("sessions?start=2026-10-01&end=2026-11-20")
    assert page.locator("#sessions-table tbody tr").count() == 100
    assert "Showing the first 100 sessions only" in page.locator(".cut-note").inner_text()
    few = tab.open("sessions?start=2026-11-20&end=2026-11-20&team=payments")
    assert few.locator(".cut-note").count() == 0
    tab.close()


def _context_page(browser: Any, base: str, **context: Any) -> tuple[Any, Any, list[str]]:
    ctx = browser.new_context(**context)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return ctx, page, errors


def _sign_in(page: Any, base: str, fragment: str = "") -> None:
    page.goto(f"{base}/ui/{fragment}")
    page.wait_for_url("**/ui/login**")
    page.fill("#key", ADMIN_KEY)
    page.click("button[type=submit]")


def test_a_shared_link_survives_sign_in(seeded: Seeded, browser: Any) -> None:
    ctx, page, errors = _context_page(browser, seeded.url, viewport={"width": 1440, "height": 900})
    _sign_in(page, seeded.url, "#/breakdown?by=model&start=2026-10-01&end=2026-10-31")
    page.wait_for_selector("main[data-page='breakdown'][aria-busy='false']")
    assert page.url.endswith("/ui/#/breakdown?by=model&start=2026-10-01&end=2026-10-31")
    assert page.locator("#breakdown-table").count() == 1
    ctx.close()
    assert not errors
    forged = httpx_post_login(seeded.url, "https://evil.example/")
    assert forged == "/ui/"  # anything but a dashboard page link is dropped


def httpx_post_login(base: str, next_value: str) -> str:
    import httpx2 as httpx

    response = httpx.post(
        f"{base}/ui/login",
        data={"key": ADMIN_KEY, "next": next_value},
        headers={"origin": base},
        follow_redirects=False,
    )
    return response.headers["location"]


PHONE_PAGES = ["overview", "breakdown?by=team", "concentration", "savings", "sessions", "requests", "budgets"]
PHONE_PAGES += ["approvals", "audit", "health", "sessions/{session}"]


@pytest.mark.parametrize("page_name", PHONE_PAGES)
def test_phone_width_has_a_menu_and_no_page_wide_overflow(seeded: Seeded, browser: Any, page_name: str) -> None:
    ctx, page, errors = _context_page(browser, seeded.url, viewport={"width": 390, "height": 844})
    _sign_in(page, seeded.url)
    page.wait_for_url(seeded.url + "/ui/")
    if "{session}" in page_name:  # the session with the most turns
        top = seeded.sql("SELECT session_id FROM requests GROUP BY session_id ORDER BY COUNT(*) DESC LIMIT 1")
        page_name = page_name.format(session=top[0][0]) + "?start=2026-10-01"
    page.goto(f"{seeded.url}/ui/#/{page_name}")
    page.wait_for_selector(f"main[data-page='{page_name.split('?')[0].split('/')[0]}'][aria-busy='false']")
    wide = page.evaluate("""[...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > 391
        && !e.closest('.table-wrap, .panel')).map(e => e.tagName + '.' + e.className).slice(0, 5)""")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, wide
    assert not page.locator("#nav").is_visible()
    page.screenshot(path=str(SHOTS / f"phone-{page_name.split('?')[0].replace('/', '-')[:40]}.png"), full_page=True)
    page.click("#menu")
    assert page.locator("#nav").is_visible() and page.locator("#menu").get_attribute("aria-expanded") == "true"
    page.locator("#nav a[data-page='savings']").click()
    page.wait_for_selector("main[data-page='savings'][aria-busy='false']")
    assert not page.locator("#nav").is_visible()  # the menu closes once a page is chosen
    ctx.close()
    assert not errors


def test_dark_mode_follows_the_system_setting(seeded: Seeded, browser: Any) -> None:
    backgrounds = {}
    for scheme in ("light", "dark"):
        ctx, page, errors = _context_page(
            browser, seeded.url, color_scheme=scheme, viewport={"width": 1440, "height": 900}
        )
        _sign_in(page, seeded.url)
        page.wait_for_selector("main[data-page='overview'][aria-busy='false']")
        backgrounds[scheme] = page.evaluate("getComputedStyle(document.documentElement).backgroundColor")
        if scheme == "dark":
            page.screenshot(path=str(SHOTS / "dark-overview.png"))
        ctx.close()
        assert not errors
    assert backgrounds["light"] == "rgb(246, 247, 249)" and backgrounds["dark"] == "rgb(15, 19, 27)"


def test_the_overview_follows_the_date_range(seeded: Seeded, browser: Any) -> None:
    (october,) = seeded.sql("SELECT SUM(cost_nanousd) FROM requests WHERE day >= '2026-10-01' AND day <= '2026-10-31'")
    tab = Page(browser, seeded.url, ADMIN_KEY)
    page = tab.open("overview?start=2026-10-01&end=2026-10-31")
    card = page.locator("#kpi-range")
    assert "2026-10-01 to 2026-10-31" in card.inner_text().lower()
    assert Decimal(card.locator(".usd").get_attribute("data-usd")) == exact(october[0])
    page.click("[data-preset='last-month']")  # the picker's presets change it too
    page.wait_for_selector("main[data-page='overview'][aria-busy='false']")
    assert "2026-10-01 to 2026-10-31" in page.locator("#kpi-range").inner_text().lower()
    tab.close()


def test_request_detail_shows_durations_and_flags_in_words(seeded: Seeded, browser: Any) -> None:
    request_id, duration_ms, stream = seeded.sql(
        "SELECT request_id, duration_ms, stream FROM requests WHERE duration_ms BETWEEN 1500 AND 59000 AND status = 200"
        " LIMIT 1"
    )[0]
    tab = Page(browser, seeded.url, ADMIN_KEY)
    page = tab.open(f"requests/{request_id}")
    shown = page.locator("#request-detail dd[data-field=duration_ms]")
    assert shown.inner_text() == f"{duration_ms / 1000:.1f} s"
    assert float(shown.get_attribute("data-value")) == duration_ms  # the exact value stays on the element
    assert page.locator("#request-detail dd[data-field=stream]").inner_text() == ("yes" if stream else "no")
    tab.close()
