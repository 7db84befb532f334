"""Fuzzing every proxied endpoint in both dialects, raw header bytes included: tokenctl never answers 5xx for
what a client sends, stays up, and records one ledger row for every answer that carries a request id."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ADMIN_KEY, LiveGateway, start_gateway
from tokenctl.testing.fake_provider import FakeProvider

ENDPOINTS = {
    "/v1/messages": {"model": "claude-haiku-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]},
    "/v1/messages/count_tokens": {"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "hi"}]},
    "/v1/chat/completions": {"model": "gpt-5-mini", "messages": [{"role": "user", "content": "hi"}]},
    "/v1/responses": {"model": "gpt-5-mini", "input": "hi"},
}
TRANSLATED = {
    "/v1/chat/completions": "claude-haiku-4-5",
    "/v1/responses": "claude-haiku-4-5",
    "/v1/messages": "llama-3.1-8b",
}
HEADERS = [
    "x-tokenctl-tags",
    "x-claude-code-session-id",
    "session-id",
    "anthropic-beta",
    "user-agent",
    "originator",
    "x-tokenctl-route",
    "anthropic-version",
    "content-encoding",
]
FIELDS = [
    "model",
    "stream",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "messages",
    "input",
    "metadata",
    "stream_options",
    "thinking",
    "tools",
    "tool_choice",
    "system",
    "n",
    "reasoning",
    "reasoning_effort",
    "service_tier",
    "temperature",
    "previous_response_id",
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["role", "content", "type", "text", "include_usage", "user_id"]), inner, max_size=3
        )
    ),
    max_leaves=8,
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, dict[bytes, bytes], bytes]:
    path = draw(st.sampled_from(sorted(ENDPOINTS)))
    body: Any = dict(ENDPOINTS[path])
    if path in TRANSLATED and draw(st.booleans()):
        body["model"] = TRANSLATED[path]
    for field in draw(st.lists(st.sampled_from(FIELDS), max_size=3)):
        body[field] = draw(json_values)
    raw = json.dumps(body).encode() if draw(st.integers(0, 9)) else draw(st.binary(max_size=64))
    headers = {
        name.encode(): draw(st.binary(min_size=1, max_size=30).filter(lambda b: b"\r" not in b and b"\n" not in b))
        for name in draw(st.lists(st.sampled_from(HEADERS), max_size=3, unique=True))
    }
    return path, headers, raw


@pytest.fixture(scope="module")
def live(fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    env = {"FAKE_ANTHROPIC_KEY": "sk-ant", "FAKE_OPENAI_KEY": "sk-oai", "TOKENCTL_ADMIN_KEY": ADMIN_KEY}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    budgets = {
        "budgets": [{"name": "big", "scope": "team", "limit_usd": 1000}],
        "policies": [{"name": "clamp", "scope": "org", "max_tokens": 5000}],
    }
    gateway = start_gateway(fake, tmp, budgets)
    gateway.fake.keep_requests = False  # type: ignore[attr-defined]
    yield gateway
    gateway.fake.keep_requests = True  # type: ignore[attr-defined]
    gateway.server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def send(live: LiveGateway, path: str, headers: dict[bytes, bytes], body: bytes) -> tuple[int, str | None]:
    host, port = live.url.removeprefix("http://").split(":")
    head = [
        b"POST " + path.encode() + b" HTTP/1.1",
        b"Host: gw",
        b"x-api-key: " + live.key.encode(),
        b"Content-Length: %d" % len(body),
        b"Connection: close",
    ]
    head += [name + b": " + value.strip() for name, value in headers.items()]
    with socket.create_connection((host, int(port)), timeout=15) as sock:
        sock.sendall(b"\r\n".join(head) + b"\r\n\r\n" + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    request_id = next(
        (
            line.split(b":", 1)[1].strip().decode()
            for line in rest.split(b"\r\n\r\n")[0].split(b"\r\n")
            if line.lower().startswith(b"request-id:")
        ),
        None,
    )
    return int(status_line.split(b" ")[1]), request_id


ANSWERED: list[tuple[int, str | None]] = []


@settings(
    max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(request=requests())
def test_no_5xx_for_anything_a_client_sends(live: LiveGateway, request: tuple[str, dict[bytes, bytes], bytes]) -> None:
    status, request_id = send(live, *request)
    ANSWERED.append((status, request_id))
    assert status < 500, request


def test_every_answer_with_a_request_id_has_its_ledger_row(live: LiveGateway) -> None:
    assert ANSWERED, "runs after the fuzzing test"
    statuses = {status for status, _ in ANSWERED}
    assert 200 in statuses and 400 in statuses  # the fuzzing reached the provider and the validators both
    ids = {rid for _, rid in ANSWERED if rid}
    assert len(ids) == len(ANSWERED)  # every answer carried an id
    rows = {r["request_id"] for r in live.wait_rows(len(ids), timeout=15)}
    assert ids <= rows
