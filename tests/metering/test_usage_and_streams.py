"""Usage normalisation per API, and usage read out of SSE streams however the bytes are chunked."""

from __future__ import annotations

import orjson

from tokenctl.metering import usage as extract
from tokenctl.metering.stream import AnthropicStreamMeter, ChatStreamMeter, ResponsesStreamMeter, event_data


def sse(event: str | None, payload: dict) -> bytes:
    data = b"data: " + orjson.dumps(payload) + b"\n\n"
    return (b"event: " + event.encode() + b"\n" + data) if event else data


def test_anthropic_exclusive_input_and_missing_ttl_split() -> None:
    u = extract.from_anthropic(
        {"input_tokens": 5, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 50, "output_tokens": 7}
    )
    assert (u.input_tokens, u.cache_write_5m_tokens, u.cache_write_1h_tokens, u.input_total) == (5, 100, 0, 155)


def test_openai_inclusive_input_is_split() -> None:
    u = extract.from_openai_responses(
        {
            "input_tokens": 100,
            "input_tokens_details": {"cached_tokens": 60, "cache_write_tokens": 10},
            "output_tokens": 3,
        }
    )
    assert (u.input_tokens, u.cache_read_tokens, u.cache_write_5m_tokens) == (30, 60, 10)


def test_garbage_usage_values_count_as_zero() -> None:
    u = extract.from_openai_chat({"prompt_tokens": "12", "completion_tokens": -4, "prompt_tokens_details": None})
    assert (u.input_tokens, u.output_tokens) == (0, 0)


def anthropic_stream() -> bytes:
    return b"".join(
        [
            sse(
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": "msg_1",
                        "model": "claude-x",
                        "usage": {
                            "input_tokens": 10,
                            "cache_read_input_tokens": 900,
                            "cache_creation_input_tokens": 40,
                            "output_tokens": 1,
                        },
                    },
                },
            ),
            sse(
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}},
            ),
            sse("ping", {"type": "ping"}),
            # server-tool iterations: the final message_delta is cumulative and carries updated input too
            sse(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn"},
                    "usage": {"output_tokens": 77, "cache_read_input_tokens": 1800, "input_tokens": None},
                },
            ),
            sse("message_stop", {"type": "message_stop"}),
        ]
    )


def test_anthropic_final_usage_is_start_overlaid_by_last_delta_at_any_chunking() -> None:
    stream = anthropic_stream()
    for size in (1, 7, 64, len(stream)):
        meter = AnthropicStreamMeter()
        pending = b""
        for i in range(0, len(stream), size):
            pending += stream[i : i + size]
            cut = pending.rfind(b"\n\n")
            if cut >= 0:
                assert meter.feed(pending[: cut + 2]) == pending[: cut + 2]
                pending = pending[cut + 2 :]
        assert meter.terminal and meter.output_known
        assert meter.raw_usage == {
            "input_tokens": 10,
            "cache_read_input_tokens": 1800,
            "cache_creation_input_tokens": 40,
            "output_tokens": 77,
        }
        assert meter.response_model == "claude-x" and meter.deltas == 1


def test_chat_meter_hides_only_the_usage_chunk_it_asked_for() -> None:
    chunks = (
        sse(None, {"model": "gpt-x", "choices": [{"delta": {"content": "a"}}]})
        + sse(None, {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}})
        + b"data: [DONE]\n\n"
    )
    hidden = ChatStreamMeter(drop_usage_chunk=True)
    out = hidden.feed(chunks)
    assert b"usage" not in out and out.endswith(b"data: [DONE]\n\n")
    assert hidden.raw_usage == {"prompt_tokens": 3, "completion_tokens": 1} and hidden.terminal
    kept = ChatStreamMeter(drop_usage_chunk=False)
    assert kept.feed(chunks) == chunks and kept.response_model == "gpt-x"


def test_responses_meter_reads_usage_from_completed_only() -> None:
    meter = ResponsesStreamMeter()
    meter.feed(
        sse("response.created", {"type": "response.created", "response": {"id": "r1", "model": "o3"}})
        + sse("response.output_text.delta", {"type": "response.output_text.delta", "delta": "x"})
    )
    assert meter.raw_usage is None and not meter.terminal and meter.deltas == 1
    meter.feed(
        sse(
            "response.completed",
            {
                "type": "response.completed",
                "response": {"id": "r1", "model": "o3", "usage": {"input_tokens": 5, "output_tokens": 2}},
            },
        )
    )
    assert meter.terminal and meter.raw_usage == {"input_tokens": 5, "output_tokens": 2}


def test_multi_line_data_fields_are_joined() -> None:
    assert event_data(b'event: x\ndata: {"a":\ndata: 1}') == b'{"a":\n1}'
