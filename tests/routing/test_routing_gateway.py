"""Tiered routing through the gateway with the official SDKs: rules, classifier, header, sessions, fallbacks, savings."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import anthropic
import openai
import orjson
import pytest

from tokenctl.cli.main import main
from tokenctl.config import ConfigError, parse_config
from tokenctl.types import Usage

ROUTING = {
    "aliases": {"auto": "claude-sonnet-4-5"},
    "routing": {
        "routed_models": ["auto", "claude-sonnet-4-5", "gpt-5"],
        "tiers": {
            "economy": {"models": ["claude-haiku-4-5", "gpt-5-mini"], "escalate_to": "premium"},
            "premium": {"models": ["claude-sonnet-4-5", "gpt-5"]},
        },
        "rules": [
            {"tier": "economy", "kind": "title"},
            {"tier": "premium", "min_input_tokens": 4000},
            {"tier": "economy", "max_input_tokens": 400},
        ],
        "default_tier": "premium",
    },
}


def claude(live: Any, **kwargs: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=live.url, api_key=live.key, max_retries=0, **kwargs)


def ask(client: anthropic.Anthropic, text: str, model: str = "auto", **kwargs: Any) -> Any:
    return client.messages.create(model=model, max_tokens=200, messages=[{"role": "user", "content": text}], **kwargs)


def sent_model(live: Any, index: int = -1) -> str:
    return orjson.loads(live.fake.received[index].body)["model"]


def test_rules_pick_the_tier_and_the_ledger_says_why(make_gateway: Any) -> None:
    live = make_gateway(ROUTING)
    client = claude(live)
    ask(client, "What is 2 + 2?")
    assert sent_model(live) == "claude-haiku-4-5"
    ask(client, "Refactor this module. " + "def f(x): return x\n" * 900)
    assert sent_model(live) == "claude-sonnet-4-5"
    rows = live.wait_rows(2)
    assert rows[0]["requested_model"] == "auto" and rows[0]["model"] == "claude-haiku-4-5"
    assert rows[0]["policy"].startswith("route economy -> claude-haiku-4-5: rule input<=400")
    assert rows[0]["saving_source"] == "routing" and rows[0]["counterfactual_nanousd"] > rows[0]["cost_nanousd"]
    assert rows[1]["model"] == "claude-sonnet-4-5" and "rule input>=4000" in rows[1]["policy"]
    assert rows[1]["saving_source"] is None  # served what the alias names: nothing saved, nothing to compare


def test_title_requests_go_to_the_cheap_tier_from_openai_clients_too(make_gateway: Any) -> None:
    live = make_gateway(ROUTING)
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key=live.key, max_retries=0)
    client.responses.create(
        model="gpt-5",
        input="Fix the flaky test in ci.yml and explain. " * 30,
        text={
            "format": {
                "type": "json_schema",
                "name": "codex_output_schema",
                "strict": True,
                "schema": {"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]},
            }
        },
    )
    # economy's first deployment (Claude Haiku) cannot take a structured-output schema through translation:
    # it is skipped, and its next deployment, which speaks the Responses API, serves the request
    assert sent_model(live) == "gpt-5-mini"
    policy = live.wait_rows(1)[0]["policy"]
    assert "rule kind=title" in policy and "skipped claude-haiku-4-5: text.format 'json_schema'" in policy


def test_the_header_opts_out_or_picks_a_tier(make_gateway: Any) -> None:
    live = make_gateway(ROUTING)
    ask(claude(live, default_headers={"x-tokenctl-route": "off"}), "hi")
    assert sent_model(live) == "claude-sonnet-4-5"
    ask(claude(live, default_headers={"x-tokenctl-route": "premium"}), "hi")
    assert sent_model(live) == "claude-sonnet-4-5"
    rows = live.wait_rows(2)
    assert rows[0]["policy"] is None and "header x-tokenctl-route: premium" in rows[1]["policy"]


def test_a_session_keeps_its_first_tier(make_gateway: Any) -> None:
    live = make_gateway(ROUTING)
    session = {"x-claude-code-session-id": "5b1c0c52-7f55-4a3e-9d1e-000000000001"}
    client = claude(live, default_headers=session)
    ask(client, "short question")
    ask(client, "now a long one " + "context line\n" * 1500)  # the rule alone would send this to premium
    assert [sent_model(live, i) for i in (-2, -1)] == ["claude-haiku-4-5", "claude-haiku-4-5"]
    assert "the session stays on its tier" in live.wait_rows(2)[1]["policy"]
    ask(claude(live), "now a long one " + "context line\n" * 1500)  # no session: the rule applies
    assert sent_model(live) == "claude-sonnet-4-5"


def test_a_failing_deployment_falls_back_before_the_first_byte(make_gateway: Any) -> None:
    live = make_gateway(ROUTING)
    faults = {"x-fake-fault": "status:529", "x-fake-fault-model": "claude-haiku-4-5"}
    reply = ask(claude(live, default_headers=faults), "quick one", stream=False)
    assert reply.content[0].type == "text"
    # economy's next deployment is an OpenAI model: reached by translating the Anthropic request
    assert [orjson.loads(r.body)["model"] for r in live.fake.received] == ["claude-haiku-4-5", "gpt-5-mini"]
    assert live.fake.received[-1].path == "/v1/chat/completions"
    row = live.wait_rows(1)[0]
    assert row["status"] == 200 and row["model"] == "gpt-5-mini"
    assert "fallback: anthropic/claude-haiku-4-5 answered 529; trying gpt-5-mini" in row["policy"]
    assert "translated anthropic.messages -> openai.chat" in row["policy"]


def test_streams_fall_back_too_and_the_last_failure_reaches_the_client(make_gateway: Any) -> None:
    live = make_gateway(ROUTING)
    faults = {"x-fake-fault": "status:529", "x-fake-fault-model": "claude-haiku-4-5"}
    with claude(live, default_headers=faults).messages.stream(
        model="auto", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        assert "".join(stream.text_stream)
        final = stream.get_final_message()
    assert sent_model(live) == "gpt-5-mini" and final.stop_reason == "end_turn" and final.usage.output_tokens > 0
    tiers = {**ROUTING["routing"]["tiers"], "premium": {"models": ["claude-sonnet-4-5"]}}
    single = make_gateway({**ROUTING, "routing": {**ROUTING["routing"], "tiers": tiers}})
    long_prompt = "y" * 20_000  # premium by rule; its only deployment fails; no escalation tier
    with pytest.raises(anthropic.APIStatusError) as failed:
        ask(claude(single, default_headers={**faults, "x-fake-fault-model": "claude-sonnet-4-5"}), long_prompt)
    assert failed.value.status_code == 529


def test_routing_savings_reach_the_report(make_gateway: Any, capsys: pytest.CaptureFixture[str]) -> None:
    live = make_gateway(ROUTING)
    ask(claude(live, default_headers={"x-fake-usage": "input=300,output=400"}), "tiny")
    row = live.wait_rows(1)[0]
    prices, provider = live.gw.prices, live.gw.catalog.resolve("claude-sonnet-4-5", "anthropic.messages").provider
    usage = Usage(input_tokens=300, output_tokens=400)
    served, asked = (prices.cost(provider, m, usage).total for m in ("claude-haiku-4-5", "claude-sonnet-4-5"))
    assert Decimal(row["cost_usd"]) == served and row["counterfactual_nanousd"] == int(asked * 10**9)
    assert main(["report", "savings", "--ledger", live.db_path, "--format", "json"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert Decimal(report["routing_saved_usd"]) == asked - served
    assert report["by_team"][0]["group"] == "payments"
    assert Decimal(report["by_team"][0]["routing_saved_usd"]) == asked - served


def test_classifier_decides_when_no_rule_matches(make_gateway: Any) -> None:
    config = {
        **ROUTING,
        "routing": {
            **ROUTING["routing"],
            "rules": [],
            "classifier": {"cheap_tier": "economy", "premium_tier": "premium", "threshold": 1.0},
        },
    }
    live = make_gateway(config)
    ask(claude(live), "Refactor the payment module to use async IO and add retries to the HTTP client")
    assert sent_model(live) == "claude-haiku-4-5"
    assert "classifier" in live.wait_rows(1)[0]["policy"]
    strict = make_gateway(
        {
            **config,
            "routing": {
                **config["routing"],
                "classifier": {"cheap_tier": "economy", "premium_tier": "premium", "threshold": 0.0},
            },
        }
    )
    ask(claude(strict), "Refactor the payment module to use async IO and add retries to the HTTP client")
    assert sent_model(strict) == "claude-sonnet-4-5"


def test_models_and_teams_outside_routing_pass_through(make_gateway: Any) -> None:
    live = make_gateway({**ROUTING, "routing": {**ROUTING["routing"], "teams": ["web"]}})
    ask(claude(live), "hi")  # the standard key is team payments
    assert sent_model(live) == "claude-sonnet-4-5"
    other = make_gateway(ROUTING)
    ask(claude(other), "hi", model="claude-opus-4-5")
    assert sent_model(other) == "claude-opus-4-5"
    project = make_gateway(
        {**ROUTING, "routing": {**ROUTING["routing"], "projects": ["checkout"]}},
        keys={"mobile": {"user": "dan", "team": "payments", "project": "mobile"}},
    )
    ask(claude(project), "hi")  # the standard key's project is checkout: routed
    assert sent_model(project) == "claude-haiku-4-5"
    ask(anthropic.Anthropic(base_url=project.url, api_key=project.keys["mobile"], max_retries=0), "hi")
    assert sent_model(project) == "claude-sonnet-4-5"  # project mobile: served as asked


@pytest.mark.parametrize(
    "routing, message",
    [
        ({"tiers": {}}, "define at least one tier"),
        ({"tiers": {"a": {"models": ["x"]}}, "default_tier": "b"}, "routing.default_tier: no tier 'b'"),
        ({"tiers": {"a": {"models": []}}}, "routing.tiers.a.models: list at least one model"),
        ({"tiers": {"a": {"models": ["x"]}}, "rules": [{"tier": "a", "kind": "poem"}]}, "routing.rules[0].kind"),
        (
            {"tiers": {"a": {"models": ["x"]}}, "classifier": {"cheap_tier": "a", "premium_tier": "a", "threshold": 3}},
            "threshold: a number from 0 to 1",
        ),
    ],
)
def test_bad_routing_config_is_explained(routing: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_config({"routing": routing})


def test_a_session_moves_down_only_when_that_pays_for_its_lost_cache(make_gateway: Any) -> None:
    """Local llama at $0.10/M uncached is cheaper than Sonnet's $0.30/M cache reads: the move pays at once."""
    tiers = {"economy": {"models": ["local/llama-3.1-8b"]}, "premium": {"models": ["claude-sonnet-4-5"]}}
    rules = [{"tier": "economy", "kind": "title"}, {"tier": "premium", "min_input_tokens": 4000}]
    live = make_gateway({**ROUTING, "routing": {**ROUTING["routing"], "tiers": tiers, "rules": rules}})
    client = claude(live, default_headers={"x-claude-code-session-id": "5b1c0c52-7f55-4a3e-9d1e-000000000002"})
    context = "earlier turns\n" * 1500
    ask(client, context + "Refactor the parser.")
    assert sent_model(live) == "claude-sonnet-4-5"
    ask(
        client,
        context + "Name this conversation.",
        output_config={
            "format": {"type": "json_schema", "schema": {"type": "object", "properties": {"title": {"type": "string"}}}}
        },
    )
    assert sent_model(live) == "llama-3.1-8b"
    moved = live.wait_rows(2)[1]["policy"]
    assert "session moved from premium" in moved and "rule kind=title" in moved


def test_opted_in_keys_are_not_routed(make_gateway: Any) -> None:
    live = make_gateway(ROUTING, keys={"premium": {"user": "carol", "team": "payments", "opt_in": True}})
    ask(anthropic.Anthropic(base_url=live.url, api_key=live.keys["premium"], max_retries=0), "hi")
    assert sent_model(live) == "claude-sonnet-4-5"
