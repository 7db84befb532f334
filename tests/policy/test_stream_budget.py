"""Stream-metered reservations: a stream reserves its input and a first step of output, grows its reservation
as the output arrives and is stopped mid-answer, with the dialect's in-stream error naming the budget, when
the budget has no room for the next step; so a small budget admits a short answer that a worst-case
reservation would have refused, and settled spend stays under the cap under concurrency, in both SDKs."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import anthropic
import httpx2 as httpx
import openai
import orjson
import pytest

from tests.conftest import LiveGateway
from tokenctl.policy.store import MemoryStore

CAP = {"budgets": [{"name": "team-cap", "scope": "team", "match": "payments", "limit_usd": "0.05"}]}
SONNET = "claude-sonnet-4-5"  # $3 / $15 per million: a 1,024-token step of output is $0.01536
LONG = {"x-fake-chunks": "200", "x-fake-word-bytes": "400", "x-fake-usage": "input=40"}  # 20,000 tokens: $0.30


def _settled(live: LiveGateway) -> Decimal:
    return sum((Decimal(r["cost_usd"]) for r in live.rows()), Decimal(0))


def _claude(live: LiveGateway, headers: dict[str, str] | None = None) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=live.url, api_key=live.key, max_retries=0, default_headers=headers or {})


def test_a_stream_that_outgrows_its_budget_is_stopped_mid_answer(make_gateway: Any) -> None:
    live = make_gateway(CAP)
    client = _claude(live, LONG)
    text = []
    with pytest.raises(anthropic.APIStatusError) as stopped:
        with client.messages.stream(
            model=SONNET, max_tokens=64_000, messages=[{"role": "user", "content": "write a long essay"}]
        ) as stream:
            for chunk in stream.text_stream:
                text.append(chunk)
    message = str(stopped.value)
    assert "budget 'team-cap'" in message and "so the answer was stopped here" in message
    assert 0 < len(text) < 200  # part of the answer arrived, then it stopped
    (row,) = live.wait_rows(1)
    assert row["outcome"] == "stream_failed" and row["partial"] == 1 and "team-cap" in row["error"]
    assert "stopped mid-stream: team-cap exhausted" in row["policy"]
    assert Decimal(row["reserved_usd"]) <= Decimal("0.05")
    assert Decimal(row["cost_usd"]) <= Decimal(row["reserved_usd"])  # the output it metered was covered
    assert _settled(live) <= Decimal("0.05")
    assert len(live.fake.received) == 1


def test_a_short_answer_passes_where_a_worst_case_reservation_blocked(make_gateway: Any) -> None:
    """Claude Code sends max_tokens 64,000: reserving all of it ($0.96 on Sonnet) would refuse "say hi" under a
    $0.05 budget. Streamed, or not streamed (then streamed upstream and assembled), it reserves its first step
    and passes. A model whose output cannot be followed (gpt-5 reasons without streaming it) still reserves its
    worst case, and the 402's own figures show it does not fit."""
    live = make_gateway(CAP)
    client = _claude(live)
    ask = {"model": SONNET, "max_tokens": 64_000, "messages": [{"role": "user", "content": "say hi"}]}
    with client.messages.stream(**ask) as stream:  # type: ignore[arg-type]
        assert stream.get_final_message().stop_reason == "end_turn"
    first = live.wait_rows(1)[0]
    assert first["status"] == 200 and Decimal(first["reserved_usd"]) < Decimal("0.02")
    answer = client.messages.create(**ask, timeout=30)  # type: ignore[arg-type]
    assert answer.stop_reason == "end_turn" and answer.content[0].text.startswith("word0")  # type: ignore[union-attr]
    assert orjson.loads(live.last_upstream().body)["stream"] is True
    chat = openai.OpenAI(base_url=f"{live.url}/v1", api_key=live.key, max_retries=0)
    with pytest.raises(openai.APIStatusError) as blocked:
        chat.chat.completions.create(
            model="gpt-5", max_completion_tokens=64_000, messages=[{"role": "user", "content": "say hi"}]
        )
    assert blocked.value.status_code == 402 and "needs up to $0.64" in str(blocked.value)


def test_a_non_streaming_answer_is_assembled_as_the_provider_would_send_it(make_gateway: Any) -> None:
    """Under a budget a non-streaming request is streamed upstream and put together: the same message, text,
    tool call and usage as the provider's own JSON answer (read without a budget)."""
    plain, capped = make_gateway(), make_gateway(CAP)
    script = {
        "x-fake-tool": "Bash",
        "x-fake-tool-input": '{"command": "ls -la"}',
        "x-fake-usage": "input=900,output=70",
    }
    ask = {"model": SONNET, "max_tokens": 64_000, "messages": [{"role": "user", "content": "list the files"}]}
    direct = _claude(plain, script).messages.create(**ask, timeout=30).model_dump()  # type: ignore[arg-type]
    assembled = _claude(capped, script).messages.create(**ask, timeout=30).model_dump()  # type: ignore[arg-type]
    for answer in (direct, assembled):
        answer.pop("id")
        for block in answer["content"]:
            block.pop("id", None)
    assert assembled == direct
    assert [b["type"] for b in assembled["content"]] == ["text", "tool_use"]
    assert assembled["content"][1]["input"] == {"command": "ls -la"} and assembled["usage"]["output_tokens"] == 70
    row = capped.wait_rows(1)[0]
    assert row["output_tokens"] == 70 and "streamed upstream and assembled" in row["policy"]


def test_a_non_streaming_request_whose_first_step_covers_its_output_is_sent_as_asked(make_gateway: Any) -> None:
    """``max_tokens`` within one step: its whole worst case is reserved at once, so there is nothing to grow and
    it goes to the provider as the client sent it (not streamed upstream, which costs the gateway CPU)."""
    live = make_gateway(CAP)
    answer = _claude(live).messages.create(
        model=SONNET, max_tokens=512, messages=[{"role": "user", "content": "say hi"}], timeout=30
    )
    assert answer.content[0].type == "text"
    (row,) = live.wait_rows(1)
    assert "assembled" not in (row["policy"] or "") and row["stream"] == 0 and row["status"] == 200
    assert orjson.loads(live.fake.received[-1].body).get("stream") in (None, False)
    assert Decimal(row["reserved_usd"]) >= Decimal(row["cost_usd"]) > 0


def test_a_non_streaming_answer_that_outgrows_its_budget_gets_the_402(make_gateway: Any) -> None:
    live = make_gateway(CAP)
    client = _claude(live, LONG)
    with pytest.raises(anthropic.APIStatusError) as stopped:
        client.messages.create(
            model=SONNET, max_tokens=64_000, messages=[{"role": "user", "content": "write a long essay"}], timeout=30
        )
    assert stopped.value.status_code == 402 and "so the answer was stopped here" in str(stopped.value)
    (row,) = live.wait_rows(1)
    assert row["partial"] == 1 and row["status"] == 402 and 0 < Decimal(row["cost_usd"]) <= Decimal(row["reserved_usd"])
    assert _settled(live) <= Decimal("0.05")


def test_the_real_input_count_is_checked_before_any_output_flows(make_gateway: Any) -> None:
    """A small body the provider counts as 20,000 input tokens ($0.06 on Sonnet, a document it fetched, dense
    text): message_start says so, the reservation cannot grow to it, and the stream ends before any text."""
    live = make_gateway(CAP)
    client = _claude(live, {"x-fake-usage": "input=20000", "x-fake-chunks": "20"})
    text = []
    with pytest.raises(anthropic.APIStatusError) as stopped:
        with client.messages.stream(
            model=SONNET, max_tokens=1_000, messages=[{"role": "user", "content": "summarise it"}]
        ) as stream:
            text.extend(stream.text_stream)
    assert text == [] and "budget 'team-cap'" in str(stopped.value)


def test_a_translated_chat_stream_is_stopped_with_the_chat_error(make_gateway: Any) -> None:
    live = make_gateway(CAP)
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key=live.key, max_retries=0, default_headers=LONG)
    got = []
    with pytest.raises(openai.APIError) as stopped:
        for chunk in client.chat.completions.create(
            model=SONNET,
            max_completion_tokens=64_000,
            stream=True,
            messages=[{"role": "user", "content": "write a long essay"}],
        ):
            got.extend(c.delta.content or "" for c in chunk.choices)
    assert got and "budget 'team-cap'" in str(stopped.value)
    assert _settled(live) <= Decimal("0.05")


def test_concurrent_streams_from_both_sdks_stay_under_the_cap(make_gateway: Any) -> None:
    """300 streams that would cost $0.06 each (from 20 keys, Anthropic SDK and OpenAI SDK through translation)
    against a $1 cap: each is admitted on its first step, grows as it goes, and the ones the budget cannot
    carry are stopped; settled spend never passes the cap."""
    keys = {f"k{i}": {"user": f"user{i}", "team": "payments"} for i in range(20)}
    budgets = {"budgets": [{"name": "team-cap", "scope": "team", "match": "payments", "limit_usd": 1}]}
    # 300 SDK clients share this process's GIL with the gateway: give Redis calls time to be answered
    live = make_gateway({**budgets, "store": {"timeout_ms": 10_000}}, keys=keys)
    script = {"x-fake-chunks": "40", "x-fake-word-bytes": "400", "x-fake-usage": "input=40", "x-fake-fault": "stall:5"}

    async def one(i: int) -> str:
        key = live.keys[f"k{i % 20}"]
        try:
            if i % 2:
                chat = openai.AsyncOpenAI(base_url=f"{live.url}/v1", api_key=key, max_retries=0, default_headers=script)
                async for _ in await chat.chat.completions.create(
                    model=SONNET, max_completion_tokens=8_000, stream=True, messages=[{"role": "user", "content": "go"}]
                ):
                    pass
            else:
                claude = anthropic.AsyncAnthropic(base_url=live.url, api_key=key, max_retries=0, default_headers=script)
                async with claude.messages.stream(
                    model=SONNET, max_tokens=8_000, messages=[{"role": "user", "content": "go"}]
                ) as stream:
                    await stream.get_final_message()
            return "complete"
        except (anthropic.APIStatusError, openai.APIError) as exc:
            return "blocked" if getattr(exc, "status_code", None) == 402 else "stopped"

    async def burst() -> list[str]:
        return await asyncio.gather(*(one(i) for i in range(300)))

    outcomes = asyncio.run(burst())
    rows = live.wait_rows(300, timeout=30)
    assert len(rows) == 300
    assert outcomes.count("stopped") > 0  # streams were admitted on their first step and stopped as they grew
    assert all(Decimal(r["cost_usd"]) <= Decimal(r["reserved_usd"] or 0) for r in rows)  # none past its reservation
    settled = _settled(live)
    assert settled <= Decimal(1), settled
    # Most of the budget was used: what is left is the unused part of the reservations that were running
    # ahead of their streams (at most a step each) when the last ones were refused.
    assert settled > Decimal("0.5")
    stopped_rows = [r for r in rows if r["outcome"] == "stream_failed"]
    assert len(stopped_rows) == outcomes.count("stopped")
    assert all("team-cap" in r["error"] for r in stopped_rows)


class _ExtendFails(MemoryStore):
    """Admits (reserve works) but cannot grow a reservation: the store went away mid-stream."""

    async def extend(self, *args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("store down")


def test_claude_codes_stream_stops_when_the_store_fails_mid_answer(make_gateway: Any) -> None:
    """Claude Code's captured request shape, streamed: the reservation cannot grow because the budget store
    failed, so the answer stops there (fail closed) with the in-stream error, instead of running unchecked."""
    from tests.policy.test_loops import _claude_code_turn

    live = make_gateway(CAP, store=_ExtendFails())
    body, headers = _claude_code_turn(0)
    body.update(model=SONNET, max_tokens=64_000, stream=True)
    with httpx.stream(
        "POST", f"{live.url}/v1/messages", json=body, headers={**headers, **LONG, "x-api-key": live.key}, timeout=30
    ) as response:
        assert response.status_code == 200
        text = b"".join(response.iter_bytes())
    assert b"event: error" in text and b"budget store unavailable" in text
    assert text.count(b"content_block_delta") < 200  # stopped, not the whole answer
    (row,) = live.wait_rows(1)
    assert row["outcome"] == "stream_failed" and Decimal(row["cost_usd"]) <= Decimal(row["reserved_usd"])
