"""The response cache through the gateway with the official SDKs: an exact repeat is replayed (JSON and SSE, in
the Anthropic and OpenAI dialects) with zero usage, billed nothing, and counted as saved; what must not be
cached is not: another key's answers, tool turns, failed answers, requests that say no-cache, expired ones."""

from __future__ import annotations

import asyncio
from typing import Any

import anthropic
import openai
import orjson
import pytest

from tokenctl.cache.store import Cached, MemoryResponseCache, RedisResponseCache
from tokenctl.cli.main import main

CACHE = {"cache": {"enabled": True, "ttl_seconds": 600}}
QUESTION = [{"role": "user", "content": "What does HTTP 418 mean?"}]
DETERMINISTIC = {"temperature": 0}  # the current Anthropic SDK has no temperature argument; the API takes it


def claude(live: Any, key: str | None = None, **headers: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=live.url, api_key=key or live.key, max_retries=0, default_headers=headers)


def ask(client: anthropic.Anthropic, **kwargs: Any) -> Any:
    return client.messages.with_raw_response.create(
        model="claude-haiku-4-5",
        max_tokens=100,
        extra_body=DETERMINISTIC,
        messages=QUESTION,
        **kwargs,  # type: ignore[arg-type]
    )


def test_a_repeat_is_replayed_with_zero_usage_billed_nothing_and_counted_as_saved(
    make_gateway: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    live = make_gateway(CACHE)
    first, second = ask(claude(live)), ask(claude(live))
    assert first.headers["x-tokenctl-cache"] == "miss" and second.headers["x-tokenctl-cache"] == "hit"
    assert len(live.fake.received) == 1  # the provider saw the question once
    a, b = first.parse(), second.parse()
    assert b.content[0].text == a.content[0].text and b.model == a.model
    assert a.usage.input_tokens > 0 and b.usage.input_tokens == 0 and b.usage.output_tokens == 0
    rows = live.wait_rows(2)
    assert rows[0]["response_cache"] == "miss" and rows[0]["cost_nanousd"] > 0
    assert rows[1]["response_cache"] == "hit" and rows[1]["cost_nanousd"] == 0 and rows[1]["status"] == 200
    assert rows[1]["cache_avoided_nanousd"] == rows[0]["cost_nanousd"]
    assert "response cache hit" in rows[1]["policy"]
    capsys.readouterr()
    assert main(["report", "savings", "--ledger", str(live.config.ledger_path), "--format", "json"]) == 0
    savings = orjson.loads(capsys.readouterr().out)
    assert savings["response_cache_hits"] == 1
    assert round(float(savings["response_cache_saved_usd"]) * 1e9) == rows[0]["cost_nanousd"]


def test_streams_are_replayed_as_streams_in_both_dialects(make_gateway: Any) -> None:
    live = make_gateway(CACHE)
    texts = []
    for _ in range(2):
        with claude(live).messages.stream(
            model="claude-haiku-4-5",
            max_tokens=100,
            extra_body=DETERMINISTIC,
            messages=QUESTION,  # type: ignore[arg-type]
        ) as stream:
            texts.append(stream.get_final_text())
            final = stream.get_final_message()
    assert texts[0] == texts[1] and final.usage.output_tokens == 0
    chat = openai.OpenAI(base_url=f"{live.url}/v1", api_key=live.key, max_retries=0)
    replies = []
    for _ in range(2):
        chunks = list(
            chat.chat.completions.create(
                model="gpt-5-mini",
                extra_body=DETERMINISTIC,
                messages=QUESTION,  # type: ignore[arg-type]
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        replies.append(("".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks[-1].usage))
    assert replies[0][0] == replies[1][0] and replies[0][1].prompt_tokens > 0 and replies[1][1].prompt_tokens == 0
    assert len(live.fake.received) == 2  # one Anthropic and one OpenAI request reached the provider
    rows = live.wait_rows(4)
    assert [r["response_cache"] for r in rows] == ["miss", "hit", "miss", "hit"]
    assert all(r["stream"] == 1 for r in rows)


def test_what_must_not_be_cached_is_not(make_gateway: Any) -> None:
    live = make_gateway(CACHE, keys={"other": {"user": "carol", "team": "payments", "project": "checkout"}})
    ask(claude(live))
    assert ask(claude(live, live.keys["other"])).headers["x-tokenctl-cache"] == "miss"  # scope: key
    skipped = ask(claude(live, **{"cache-control": "no-cache"}))
    assert skipped.headers["x-tokenctl-cache"] == "bypass"
    tools = [{"name": "Bash", "description": "run", "input_schema": {"type": "object"}}]
    assert ask(claude(live), tools=tools).headers["x-tokenctl-cache"] == "bypass"  # an agent turn
    warm = claude(live).messages.with_raw_response.create(
        model="claude-haiku-4-5", max_tokens=100, messages=[{"role": "user", "content": "a poem"}]
    )
    assert warm.headers["x-tokenctl-cache"] == "bypass"  # not deterministic, not asked for
    asked = claude(live, **{"x-tokenctl-cache": "use"})
    for _ in range(2):
        reply = asked.messages.with_raw_response.create(
            model="claude-haiku-4-5", max_tokens=100, messages=[{"role": "user", "content": "a poem"}]
        )
    assert reply.headers["x-tokenctl-cache"] == "hit"
    failing = claude(live, **{"x-fake-fault": "status:500"})
    with pytest.raises(anthropic.InternalServerError):
        failing.messages.create(
            model="claude-haiku-4-5",
            max_tokens=9,
            extra_body=DETERMINISTIC,
            messages=[{"role": "user", "content": "x"}],
        )
    sent = len(live.fake.received)
    claude(live).messages.create(
        model="claude-haiku-4-5", max_tokens=9, extra_body=DETERMINISTIC, messages=[{"role": "user", "content": "x"}]
    )
    assert len(live.fake.received) == sent + 1  # the failure was not kept
    rows = live.wait_rows(10)
    assert "response cache bypassed: an agent turn (tools offered)" in rows[3]["policy"]


def test_team_scope_shares_answers_and_they_expire(make_gateway: Any) -> None:
    now = [1_800_000_000.0]
    live = make_gateway(
        {"cache": {"enabled": True, "ttl_seconds": 300, "scope": "team"}},
        keys={"other": {"user": "carol", "team": "payments", "project": "checkout"}},
        clock=lambda: now[0],
    )
    ask(claude(live))
    assert ask(claude(live, live.keys["other"])).headers["x-tokenctl-cache"] == "hit"  # same team
    assert ask(claude(live, live.keys["limited"])).headers["x-tokenctl-cache"] == "miss"  # team web
    now[0] += 301
    assert ask(claude(live)).headers["x-tokenctl-cache"] == "miss"


def test_the_memory_store_is_bounded_by_entries_and_bytes() -> None:
    async def run() -> None:
        cache = MemoryResponseCache(60, max_entries=3, max_bytes=100, clock=lambda: 0.0)
        for i in range(5):
            await cache.put(f"k{i}", Cached(b"x" * 10, "application/json", False, 1, "m", 0.0))
        assert len(cache) == 3 and await cache.get("k0") is None and await cache.get("k4") is not None
        await cache.put("big", Cached(b"y" * 90, "application/json", False, 1, "m", 0.0))
        assert cache.bytes <= 100 and await cache.get("big") is not None
        await cache.put("huge", Cached(b"z" * 101, "application/json", False, 1, "m", 0.0))
        assert await cache.get("huge") is None  # larger than the whole cache: not kept

    asyncio.run(run())


def test_the_redis_store_keeps_answers_for_every_replica_and_a_dead_redis_is_a_miss() -> None:
    async def run() -> None:
        answer = Cached(b'{"a":1}', "application/json", False, 42, "claude-haiku-4-5", 5.0)
        one = RedisResponseCache("redis://127.0.0.1:6379/0", 60, "tokenctl-test-cache:", 1.0, lambda: 5.0)
        two = RedisResponseCache("redis://127.0.0.1:6379/0", 60, "tokenctl-test-cache:", 1.0, lambda: 5.0)
        await one.put("k", answer)
        assert await two.get("k") == answer
        assert 0 < await one.redis.ttl("tokenctl-test-cache:cache:k") <= 60
        await one.redis.delete("tokenctl-test-cache:cache:k")
        await one.close()
        await two.close()
        dead = RedisResponseCache("redis://127.0.0.1:1/0", 60, "p:", 0.2, lambda: 0.0)
        assert await dead.get("k") is None
        await dead.put("k", answer)  # logged, not raised
        await dead.close()

    asyncio.run(run())


def test_report_cache_splits_hits_and_prompt_caching_by_team(
    make_gateway: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    live = make_gateway(CACHE)
    ask(claude(live))
    ask(claude(live))
    rows = live.wait_rows(2)
    capsys.readouterr()
    assert main(["report", "cache", "--ledger", str(live.config.ledger_path), "--format", "json"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["response_cache_hits"] == 1
    (team,) = report["by_team"]
    assert team["team"] == "payments" and team["requests"] == 2 and team["response_cache_hits"] == 1
    assert round(float(team["response_cache_saved_usd"]) * 1e9) == rows[0]["cost_nanousd"]
