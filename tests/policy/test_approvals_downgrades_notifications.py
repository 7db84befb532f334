"""Approvals round trip, cache-preserving downgrades, threshold webhooks, block messages seen through the SDKs,
and management through the admin API and the CLI."""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

import anthropic
import httpx2 as httpx
import openai
import orjson
import pytest

from tests.conftest import ADMIN_KEY, LiveGateway
from tokenctl.cli.main import main as cli

ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


def _hooks(fake: Any) -> dict[str, Any]:
    return {
        "enforcement": {
            "webhook_url": f"{fake.url}/hooks/spend",
            "approvals_webhook_url": f"{fake.url}/hooks/approvers",
        }
    }


def _wait(predicate: Any, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    return predicate()


# -- approvals -----------------------------------------------------------------------------------


def test_an_expensive_request_is_held_approved_from_the_cli_and_passes_on_retry(
    make_gateway: Any, fake: Any, capsys: Any
) -> None:
    fake.hooks.clear()
    live = make_gateway({**_hooks(fake), "approvals": [{"name": "big", "scope": "org", "above_usd": "0.5"}]})
    client = anthropic.Anthropic(base_url=live.url, api_key=live.key, max_retries=0)
    big = "refactor all of it: " + "y" * 150_000  # 50,000 input tokens at up to $10/M, + 4,096 expected out: $0.60
    ask = {"model": "claude-opus-4-5", "max_tokens": 60_000, "messages": [{"role": "user", "content": big}]}
    with pytest.raises(anthropic.APIStatusError) as held:
        client.messages.create(**ask, stream=True).close()
    assert held.value.status_code == 402
    approval_id = held.value.response.headers["x-tokenctl-approval-id"]
    assert f"It is held as {approval_id}" in held.value.message
    assert len(live.fake.received) == 0
    hook = _wait(lambda: [t for name, t in fake.hooks if name == "approvers"])
    assert approval_id in hook[0] and "claude-opus-4-5" in hook[0]

    with pytest.raises(anthropic.APIStatusError) as again:  # retrying before a decision: same approval, no duplicate
        client.messages.create(**ask, stream=True).close()
    assert again.value.response.headers["x-tokenctl-approval-id"] == approval_id

    assert cli(["--config", _config_file(live), "approvals", "list", "--format", "json"]) == 0
    listed = orjson.loads(capsys.readouterr().out)
    assert [a["approval_id"] for a in listed] == [approval_id]
    assert cli(["--config", _config_file(live), "approvals", "approve", approval_id, "--by", "dana"]) == 0

    with client.messages.stream(**ask) as stream:  # the same request now goes through, once
        assert stream.get_final_message().content
    row = live.wait_rows(3)[-1]
    assert row["approval_id"] == approval_id and row["status"] == 200
    with pytest.raises(anthropic.APIStatusError, match="needs approval"):
        client.messages.create(**ask, stream=True)  # an approval for one request is used up

    small = client.messages.create(
        model="claude-haiku-4-5", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    )
    assert small.content  # below the threshold: never held


def test_a_user_grant_lets_later_requests_through_until_its_amount_is_used(make_gateway: Any) -> None:
    live = make_gateway({"approvals": [{"name": "big", "scope": "user", "match": "alice", "above_usd": "0.05"}]})
    answers = {"x-fake-usage": "output=4096"}  # the key's usual answer, which approvals expect of it
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key=live.key, max_retries=0, default_headers=answers)
    plan = "plan the migration " + "x" * 120_000  # gpt-5: 40,000 input tokens, $0.05, + 4,096 out at $10/M: $0.091
    ask = {"model": "gpt-5", "input": plan, "max_output_tokens": 100_000}
    with pytest.raises(openai.APIStatusError) as held:
        client.responses.create(**ask)
    assert held.value.status_code == 402 and held.value.body["code"] == "approval_required"
    approval_id = held.value.response.headers["x-tokenctl-approval-id"]
    decided = httpx.post(
        f"{live.url}/admin/approvals/{approval_id}/approve",
        headers=ADMIN,
        json={"by": "dana", "for_user_hours": 2, "for_user_usd": "0.25"},
    ).json()["data"]
    assert decided["grant_scope"] == "user" and decided["status"] == "approved"
    assert client.responses.create(**ask).status == "completed"
    assert client.responses.create(**{**ask, "input": plan + " another question"}).status == "completed"
    with pytest.raises(openai.APIStatusError, match="needs approval"):  # $0.25 covers two $0.091 requests, not three
        client.responses.create(**{**ask, "input": plan + " a third one"})


def test_a_denied_request_is_told_so_and_deciding_twice_is_a_conflict(make_gateway: Any) -> None:
    live = make_gateway({"approvals": [{"name": "long", "scope": "org", "above_input_tokens": 1000}]})
    client = anthropic.Anthropic(base_url=live.url, api_key=live.key, max_retries=0)
    ask = {"model": "claude-haiku-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "y" * 6000}]}
    with pytest.raises(anthropic.APIStatusError) as held:
        client.messages.create(**ask)
    approval_id = held.value.response.headers["x-tokenctl-approval-id"]
    r = httpx.post(
        f"{live.url}/admin/approvals/{approval_id}/deny", headers=ADMIN, json={"by": "dana", "note": "too big"}
    )
    assert r.status_code == 200
    assert httpx.post(f"{live.url}/admin/approvals/{approval_id}/approve", headers=ADMIN).status_code == 409
    with pytest.raises(anthropic.PermissionDeniedError, match="denied by dana: too big"):
        client.messages.create(**ask)


# -- downgrades ----------------------------------------------------------------------------------


def _turn(live: LiveGateway, session: str, messages: list[dict[str, Any]]) -> str:
    body = {"model": "claude-sonnet-4-5", "max_tokens": 1000, "messages": messages}
    headers = {"x-api-key": live.key, "x-claude-code-session-id": session, "x-fake-usage": "input=1000,output=1000"}
    r = httpx.post(f"{live.url}/v1/messages", json=body, headers=headers, timeout=30)
    assert r.status_code == 200
    return orjson.loads(live.last_upstream().body)["model"]


def test_a_downgrade_waits_for_the_sessions_next_turn_and_then_sticks(make_gateway: Any) -> None:
    # sonnet 4.5: $3/M in, $15/M out -> ~$0.018 per request; downgrade from 50 % of $0.05.
    live = make_gateway(
        {
            "budgets": [
                {
                    "name": "soft",
                    "scope": "team",
                    "match": "payments",
                    "limit_usd": "0.05",
                    "action": "downgrade",
                    "downgrade_to": "claude-haiku-4-5",
                    "downgrade_at_percent": 50,
                }
            ]
        }
    )
    user = {"role": "user", "content": "fix the bug"}
    tool_use = {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Bash", "input": {}}]}
    tool_result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]}
    assert _turn(live, "s1", [user]) == "claude-sonnet-4-5"  # $0.018: 36 %
    assert _turn(live, "s1", [user, tool_use, tool_result]) == "claude-sonnet-4-5"  # 36 % at admission
    assert _turn(live, "s1", [user, tool_use, tool_result, tool_use, tool_result]) == "claude-sonnet-4-5"  # mid-turn
    next_turn = [
        user,
        tool_use,
        tool_result,
        {"role": "assistant", "content": "done"},
        {"role": "user", "content": "now the tests"},
    ]
    assert _turn(live, "s1", next_turn) == "claude-haiku-4-5"
    assert _turn(live, "s1", next_turn + [tool_use, tool_result]) == "claude-haiku-4-5"  # stays on the cheaper model
    rows = live.wait_rows(5)
    assert "downgrade_deferred" in (rows[2]["policy"] or "")
    assert rows[3]["requested_model"] == "claude-sonnet-4-5" and rows[3]["model"] == "claude-haiku-4-5"
    assert "downgrade: claude-sonnet-4-5->claude-haiku-4-5" in rows[3]["policy"]


def test_a_downgrade_rule_fires_at_its_threshold_not_before(make_gateway: Any) -> None:
    live = make_gateway(
        {
            "budgets": [
                {
                    "name": "soft",
                    "scope": "org",
                    "limit_usd": "0.1",
                    "action": "downgrade",
                    "downgrade_to": "claude-haiku-4-5",
                    "downgrade_at_percent": 80,
                }
            ]
        }
    )
    models = [_turn(live, f"new-{i}", [{"role": "user", "content": "q"}]) for i in range(6)]
    spent_before_switch = 0.018 * models.index("claude-haiku-4-5")
    assert models[:4] == ["claude-sonnet-4-5"] * 4  # 4 x $0.018 = $0.072 < $0.08
    assert spent_before_switch >= 0.08 - 0.018 - 1e-9 and models[5] == "claude-haiku-4-5"


# -- notifications and block messages ------------------------------------------------------------


def test_thresholds_notify_once_each_and_blocks_are_shown_by_both_sdks(make_gateway: Any, fake: Any) -> None:
    fake.hooks.clear()
    live = make_gateway({**_hooks(fake), "budgets": [{"name": "team-monthly", "scope": "team", "limit_usd": "0.05"}]})
    a = anthropic.Anthropic(base_url=live.url, api_key=live.key, max_retries=3)
    o = openai.OpenAI(base_url=f"{live.url}/v1", api_key=live.key, max_retries=3)
    blocked = None
    for _ in range(10):
        try:
            a.messages.create(
                model="claude-sonnet-4-5",
                max_tokens=1000,
                messages=[{"role": "user", "content": "q"}],
                extra_headers={"x-fake-usage": "input=1000,output=1000"},
            )
        except anthropic.APIStatusError as exc:
            blocked = exc
            break
    assert blocked is not None and blocked.status_code == 402
    assert isinstance(blocked, anthropic.APIStatusError) and blocked.body["error"]["type"] == "billing_error"
    message = blocked.message
    assert "budget 'team-monthly' (team payments, monthly) is exhausted" in message and "resets at" in message
    with pytest.raises(openai.APIStatusError) as via_openai:
        o.chat.completions.create(
            model="gpt-5", max_completion_tokens=5000, messages=[{"role": "user", "content": "q"}]
        )
    assert via_openai.value.status_code == 402 and via_openai.value.body["code"] == "budget_exceeded"
    assert "team-monthly" in via_openai.value.message
    assert len([r for r in live.wait_rows(1) if r["status"] == 402]) == 2  # SDK retries: x-should-retry false held
    texts = _wait(lambda: [t for name, t in fake.hooks if name == "spend" and "reached" in t] or None)
    reached = sorted(int(t.split("reached ")[1].split("%")[0]) for t in texts)
    assert reached == [50]  # $0.036 settled of $0.05: 50 % crossed once, 80 % not yet
    assert _wait(lambda: any("is blocking requests" in t for name, t in fake.hooks if name == "spend"))


# -- management ----------------------------------------------------------------------------------


def _config_file(live: LiveGateway) -> str:
    path = os.path.join(tempfile.mkdtemp(prefix="tokenctl-cli-"), "tokenctl.yaml")  # the ledger may be a URL
    with open(path, "w") as f:
        f.write(f"ledger: {live.ledger_yaml()}\nserver: {{port: {live.server.port}}}\n")
    return path


def test_budgets_set_live_through_the_admin_api_and_status_from_the_cli(make_gateway: Any, capsys: Any) -> None:
    live = make_gateway()
    assert httpx.get(f"{live.url}/admin/budgets").status_code == 401
    assert httpx.get(f"{live.url}/admin/budgets", headers={"authorization": "Bearer wrong"}).status_code == 401
    r = httpx.put(
        f"{live.url}/admin/budgets/alice-daily",
        headers=ADMIN,
        json={"scope": "user", "match": "alice", "limit_usd": "0.02", "period": "daily"},
    )
    assert r.status_code == 200, r.text
    bad = httpx.put(f"{live.url}/admin/budgets/x", headers=ADMIN, json={"scope": "galaxy", "limit_usd": 1})
    assert bad.status_code == 400 and "scope" in bad.json()["error"]["message"]
    client = anthropic.Anthropic(base_url=live.url, api_key=live.key, max_retries=0)
    ask = {
        "model": "claude-haiku-4-5",
        "max_tokens": 2000,
        "messages": [{"role": "user", "content": "q"}],
        "extra_headers": {"x-fake-usage": "input=60,output=1500"},
    }  # ~$0.0101 reserved, ~$0.0076 settled
    client.messages.create(**ask)
    client.messages.create(**ask)
    with pytest.raises(anthropic.APIStatusError, match="alice-daily"):
        client.messages.create(**ask)
    status = httpx.get(f"{live.url}/admin/budgets/status", headers=ADMIN).json()["data"]
    assert [(s["budget"], s["member"], s["limit_usd"]) for s in status] == [("alice-daily", "alice", "0.02")]
    assert float(s := status[0]["spent_usd"]) > 0.01, s

    capsys.readouterr()
    assert cli(["--config", _config_file(live), "budgets", "status", "--format", "json"]) == 0
    out = orjson.loads(capsys.readouterr().out)
    assert out["source"].startswith("live from the gateway") and out["data"] == status

    assert httpx.delete(f"{live.url}/admin/budgets/alice-daily", headers=ADMIN).status_code == 200
    assert client.messages.create(**ask).content  # no budget left: never blocked
    audit = httpx.get(f"{live.url}/admin/audit?action=budget.*", headers=ADMIN).json()["data"]
    assert [a["action"] for a in audit] == ["budget.delete", "budget.create"]


def test_config_budgets_are_read_only_from_the_cli(make_gateway: Any, capsys: Any, tmp_path: Any) -> None:
    live = make_gateway()
    path = tmp_path / "c.yaml"
    path.write_text(f"ledger: {live.ledger_yaml()}\nbudgets:\n  - {{name: org, scope: org, limit_usd: 100}}\n")
    assert cli(["--config", str(path), "budgets", "delete", "org"]) == 2
    assert "defined in" in capsys.readouterr().err


def test_editing_a_budget_keeps_its_spend_and_never_blocks_under_the_new_limit(make_gateway: Any) -> None:
    live = make_gateway()

    def put(**f: Any) -> Any:
        return httpx.put(
            f"{live.url}/admin/budgets/alice", headers=ADMIN, json={"scope": "user", "match": "alice", **f}
        )

    assert put(limit_usd="0.02").status_code == 200
    client = anthropic.Anthropic(base_url=live.url, api_key=live.key, max_retries=0)
    ask = {
        "model": "claude-haiku-4-5",
        "max_tokens": 2000,
        "messages": [{"role": "user", "content": "q"}],
        "extra_headers": {"x-fake-usage": "input=60,output=1500"},
    }
    client.messages.create(**ask)
    client.messages.create(**ask)
    spent = httpx.get(f"{live.url}/admin/budgets/status", headers=ADMIN).json()["data"][0]["spent_usd"]
    with pytest.raises(anthropic.APIStatusError):
        client.messages.create(**ask)
    assert put(limit_usd="1").status_code == 200  # a higher limit: same spend, admitted again
    status = httpx.get(f"{live.url}/admin/budgets/status", headers=ADMIN).json()["data"][0]
    assert status["spent_usd"] == spent and status["limit_usd"] == "1"
    assert client.messages.create(**ask).content
    live.wait_rows(4)
    assert put(limit_usd="1", period="daily").status_code == 200  # a new period: spend of today from the ledger
    status = httpx.get(f"{live.url}/admin/budgets/status", headers=ADMIN).json()["data"][0]
    assert status["period"] == "daily" and float(status["spent_usd"]) > float(spent)
