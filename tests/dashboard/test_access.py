"""Who sees what on the dashboard, sign-in and sign-out, CSRF, and what is never shown."""

from __future__ import annotations

import time

import httpx2 as httpx
import pytest

from tests.conftest import ADMIN_KEY
from tests.dashboard.conftest import Seeded
from tests.ledgers import ON_POSTGRES
from tokenctl.identity.keys import create_key, revoke_key
from tokenctl.ledger.db import connect


def signed_in(seeded: Seeded, key: str) -> tuple[httpx.Client, str]:
    """A client holding a session cookie from the login form, and the session's CSRF token."""
    client = httpx.Client(base_url=seeded.url, follow_redirects=False)
    response = client.post("/ui/login", data={"key": key}, headers={"Origin": seeded.url})
    assert response.status_code == 303 and response.headers["location"] == "/ui/"
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/ui" in cookie
    me = client.get("/ui/api/me").json()
    return client, me["csrf"]


def test_pages_need_a_session(seeded: Seeded) -> None:
    with httpx.Client(base_url=seeded.url) as client:
        assert client.get("/ui/", follow_redirects=False).headers["location"] == "/ui/login"
        response = client.get("/ui/api/overview")
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"
        assert client.get("/ui/api/overview", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_login_form_rejects_wrong_and_client_keys(seeded: Seeded) -> None:
    with httpx.Client(base_url=seeded.url) as client:
        wrong = client.post("/ui/login", data={"key": "tkc_wrong"})
        assert wrong.status_code == 401 and "Sign-in failed" in wrong.text and "set-cookie" not in wrong.headers
        client_key = client.post("/ui/login", data={"key": seeded.live.key})
        assert client_key.status_code == 401 and "viewer key" in client_key.text
        cross = client.post("/ui/login", data={"key": ADMIN_KEY}, headers={"Origin": "https://evil.example"})
        assert cross.status_code == 403 and "set-cookie" not in cross.headers


def test_admin_sees_every_team_and_viewer_only_its_own(seeded: Seeded) -> None:
    all_teams = {t for (t,) in seeded.sql("SELECT DISTINCT team FROM requests WHERE ts >= '2026-11-01'")}
    admin, _ = signed_in(seeded, ADMIN_KEY)
    rows = admin.get("/ui/api/breakdown", params={"by": "team"}).json()["rows"]
    assert {r["group"] for r in rows} == all_teams and len(all_teams) > 3
    viewer, _ = signed_in(seeded, seeded.viewer_payments)
    for params in ({"by": "team"}, {"by": "team", "team": "search"}, {"by": "user", "team": ""}):
        rows = viewer.get("/ui/api/breakdown", params=params).json()["rows"]
        assert {r["group"] for r in rows} <= {"payments"} | {
            r["group"] for r in rows if r["group"].startswith("payments-")
        }
        assert not any(r["group"].startswith("search") for r in rows)
    users = viewer.get("/ui/api/concentration").json()["leaderboard"]
    assert users and all(u["team"] == "payments" for u in users)
    sessions = viewer.get("/ui/api/sessions").json()["rows"]
    assert sessions and all(s["team"] == "payments" for s in sessions)
    budgets = viewer.get("/ui/api/budgets").json()["rows"]
    assert [b["member"] for b in budgets] == ["payments"]  # no org budget, no other team
    other_session = seeded.sql("SELECT session_id FROM requests WHERE team = 'search' LIMIT 1")[0][0]
    assert viewer.get(f"/ui/api/sessions/{other_session}").status_code == 404
    assert admin.get(f"/ui/api/sessions/{other_session}").status_code == 200
    assert viewer.get("/ui/api/audit").status_code == 403


def test_bearer_token_works_without_a_cookie(seeded: Seeded) -> None:
    with httpx.Client(base_url=seeded.url) as client:
        me = client.get("/ui/api/me", headers={"Authorization": f"Bearer {seeded.viewer_search}"}).json()
        assert me == {**me, "role": "viewer", "team": "search", "csrf": None}


def test_state_changes_need_the_csrf_token_and_same_origin(seeded: Seeded) -> None:
    admin, csrf = signed_in(seeded, ADMIN_KEY)
    url = "/ui/api/approvals/apr_missing/approve"
    assert admin.post(url, json={}).status_code == 403
    assert admin.post(url, json={}, headers={"X-CSRF-Token": "forged"}).status_code == 403
    cross = admin.post(url, json={}, headers={"X-CSRF-Token": csrf, "Origin": "https://evil.example"})
    assert cross.status_code == 403
    assert admin.post(url, json={}, headers={"X-CSRF-Token": csrf}).status_code == 404  # allowed; no such approval
    viewer, viewer_csrf = signed_in(seeded, seeded.viewer_payments)
    denied = viewer.post(url, json={}, headers={"X-CSRF-Token": viewer_csrf})
    assert denied.status_code == 403 and "admin" in denied.json()["error"]["message"]


def test_tampered_cookie_and_logout(seeded: Seeded) -> None:
    admin, csrf = signed_in(seeded, ADMIN_KEY)
    cookie = admin.cookies.get("tokenctl_ui")
    body, _, signature = cookie.partition(".")
    forged = httpx.Client(base_url=seeded.url, cookies={"tokenctl_ui": body[:-2] + "xx." + signature})
    assert forged.get("/ui/api/me").status_code == 401
    out = admin.post("/ui/logout", headers={"X-CSRF-Token": csrf})
    assert out.status_code == 204 and 'tokenctl_ui=""' in out.headers["set-cookie"]


def test_revoking_a_viewer_key_ends_its_session(seeded: Seeded) -> None:
    db = connect(seeded.live.db_path)
    info, secret = create_key(db, team="payments", role="viewer")
    viewer, _ = signed_in(seeded, secret)
    assert viewer.get("/ui/api/me").status_code == 200
    revoke_key(db, info.key_id)
    deadline = time.monotonic() + 5
    while viewer.get("/ui/api/me").status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert viewer.get("/ui/api/me").status_code == 401
    db.close()


def test_viewer_keys_cannot_call_models(seeded: Seeded) -> None:
    response = httpx.post(
        f"{seeded.url}/v1/messages",
        headers={"x-api-key": seeded.viewer_payments},
        json={"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert response.status_code == 403
    assert response.json()["error"]["type"] == "permission_error"
    assert "viewer key" in response.json()["error"]["message"]


def test_request_detail_never_carries_prompt_text(seeded: Seeded) -> None:
    request_id = seeded.sql("SELECT request_id FROM requests WHERE team = 'payments' LIMIT 1")[0][0]
    detail = httpx.get(
        f"{seeded.url}/ui/api/requests/{request_id}", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    ).json()
    assert detail["request_id"] == request_id
    assert not {"messages", "prompt", "content", "raw_usage", "tags"} & set(detail)


@pytest.mark.parametrize("query", ["start=2026-13-01", "limit=lots", "by=planet", "start=2026-11-10&end=2026-11-01"])
def test_bad_parameters_are_400s(seeded: Seeded, query: str) -> None:
    response = httpx.get(f"{seeded.url}/ui/api/breakdown?{query}", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_responses_carry_a_strict_content_security_policy(seeded: Seeded) -> None:
    page = httpx.get(f"{seeded.url}/ui/login")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    assert httpx.get(f"{seeded.url}/ui/static/app.js").headers["content-type"].startswith("text/javascript")
    assert httpx.get(f"{seeded.url}/ui/static/../views.py").status_code == 404


def test_rollups_equal_the_requests_table(seeded: Seeded) -> None:
    assert seeded.live.gw.ledger.flush(10)
    db = connect(seeded.live.db_path, migrate_schema=False)
    db.execute(
        "BEGIN ISOLATION LEVEL REPEATABLE READ" if ON_POSTGRES else "BEGIN"
    )  # one snapshot for both sides, whatever the writer does meanwhile
    by_detail = db.execute(
        "SELECT day, COALESCE(team, ''), COALESCE(model, ''), SUM(cost_nanousd), COUNT(*),"
        " SUM(cache_read_tokens)"
        " FROM requests GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    ).fetchall()
    by_rollup = db.execute(
        "SELECT day, team, model, SUM(cost_nanousd), SUM(requests), SUM(cache_read_tokens)"
        " FROM rollup_daily GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    ).fetchall()
    assert by_detail == by_rollup
    sessions = db.execute(
        "SELECT session_id, SUM(cost_nanousd), COUNT(*) FROM requests WHERE session_id IS NOT NULL"
        " GROUP BY 1 ORDER BY 1"
    )
    rolled = db.execute("SELECT session_id, cost_nanousd, requests FROM rollup_sessions ORDER BY 1")
    assert sessions.fetchall() == rolled.fetchall()
    db.close()


@pytest.mark.parametrize(
    "table, columns",
    [
        ("rollup_team_daily", ("team", "model")),
        ("rollup_team_daily", ("project", "tool")),
        ("rollup_user_daily", ("team", "user")),
    ],
)
def test_the_small_rollups_equal_the_requests_table(seeded: Seeded, table: str, columns: tuple[str, str]) -> None:
    db = connect(seeded.live.db_path, migrate_schema=False)
    a, b = columns
    detail = db.execute(
        f"SELECT day, COALESCE({a}, ''), COALESCE({b}, ''), SUM(cost_nanousd), COUNT(*),"
        f" SUM(output_tokens) FROM requests GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    ).fetchall()
    rolled = db.execute(
        f"SELECT day, {a}, {b}, SUM(cost_nanousd), SUM(requests), SUM(output_tokens) FROM {table}"
        " GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    )
    assert detail == rolled.fetchall()
    db.close()
