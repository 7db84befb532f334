"""Never unmetered: raw header bytes, bad bodies, disconnects, slow clients and a stuck ledger, through a live
gateway. Every request with an id gets its ledger row; tokenctl never answers 5xx for the client's mistakes."""

from __future__ import annotations

import gzip
import shutil
import socket
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx
import orjson
import pytest

from tests.conftest import LiveGateway
from tests.ledgers import ON_POSTGRES

MESSAGES = {"model": "claude-haiku-4-5", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
CHAT = {"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "hi"}]}


def raw_request(
    live: LiveGateway, head: bytes, body: bytes = b"", close_after: bool = False, timeout: float = 10
) -> bytes:
    """Send exact bytes (headers are not re-encoded by any client library) and read the whole answer."""
    host, port = live.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head + body)
        if close_after:
            return b""
        chunks = []
        while True:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)


def messages_head(live: LiveGateway, body: bytes, *extra: bytes) -> bytes:
    lines = [
        b"POST /v1/messages HTTP/1.1",
        b"Host: gw",
        b"Content-Type: application/json",
        b"anthropic-version: 2023-06-01",
        b"x-api-key: " + live.key.encode(),
        b"Content-Length: %d" % len(body),
        b"Connection: close",
        *extra,
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def test_non_utf8_header_bytes_are_recorded_and_metering_goes_on(gateway: LiveGateway) -> None:
    """Node's fetch sends 'é' as the single byte 0xE9: that once killed the ledger writer for everybody."""
    body = orjson.dumps(MESSAGES)
    head = messages_head(
        gateway,
        body,
        b"x-tokenctl-tags: team=caf\xe9, owner=j\xf6rg",
        b"x-claude-code-session-id: sess-\xe9\xff",
        b"anthropic-beta: beta-\xe9",
        b"user-agent: claude-cli/2.1.0 (\xe9)",
    )
    answer = raw_request(gateway, head, body)
    assert status_of(answer) == 200
    request_id = next(
        line.split(b": ")[1].decode() for line in answer.split(b"\r\n") if line.lower().startswith(b"request-id:")
    )
    row = gateway.row(request_id)
    assert orjson.loads(row["tags"]) == {"team": "café", "owner": "jörg"}
    assert row["session_id"] == "sess-éÿ" and row["anthropic_beta"] == "beta-é" and row["tool"] == "claude-code"
    for _ in range(20):  # the writer is alive: later requests are recorded too
        assert (
            httpx.post(gateway.url + "/v1/messages", json=MESSAGES, headers={"x-api-key": gateway.key}).status_code
            == 200
        )
    assert len(gateway.wait_rows(21)) == 21


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_header_as_nodes_fetch_sends_it(gateway: LiveGateway, tmp_path: Path) -> None:
    script = tmp_path / "send.mjs"
    script.write_text(
        "const r = await fetch(process.argv[2] + '/v1/messages', {method: 'POST', headers: {"
        "'content-type': 'application/json', 'anthropic-version': '2023-06-01', 'x-api-key': process.argv[3],"
        "'x-tokenctl-tags': 'team=café'}, body: JSON.stringify({model: 'claude-haiku-4-5', max_tokens: 5,"
        "messages: [{role: 'user', content: 'hi'}]})});\n"
        "console.log(r.status, r.headers.get('request-id'));\n"
    )
    done = subprocess.run(["node", str(script), gateway.url, gateway.key], capture_output=True, text=True, timeout=60)
    status, request_id = done.stdout.split()
    assert status == "200", done.stderr
    assert orjson.loads(gateway.row(request_id)["tags"]) == {"team": "café"}


def test_gzip_bodies_are_decoded_and_forwarded_plain_and_broken_ones_are_400(gateway: LiveGateway) -> None:
    plain = orjson.dumps(MESSAGES)
    packed = gzip.compress(plain)
    answer = raw_request(gateway, messages_head(gateway, packed, b"Content-Encoding: gzip"), packed)
    assert status_of(answer) == 200
    upstream = gateway.last_upstream()
    assert "content-encoding" not in {k.lower() for k in upstream.headers} and upstream.body == plain
    broken = b"\x1f\x8b not really gzip"
    answer = raw_request(gateway, messages_head(gateway, broken, b"Content-Encoding: gzip"), broken)
    assert status_of(answer) == 400 and b"Content-Encoding" in answer and b"invalid_request_error" in answer
    rows = gateway.wait_rows(2)
    assert [r["status"] for r in rows] == [200, 400]


@pytest.mark.parametrize("field, value", [("stream_options", "x"), ("metadata", [1]), ("thinking", "deep")])
def test_malformed_objects_are_the_clients_400(gateway: LiveGateway, field: str, value: Any) -> None:
    for path, body in (("/v1/chat/completions", CHAT), ("/v1/messages", MESSAGES)):
        response = httpx.post(
            gateway.url + path, json={**body, "stream": True, field: value}, headers={"x-api-key": gateway.key}
        )
        assert response.status_code == 400, response.text
        assert f"'{field}' must be an object" in response.text


def test_a_field_named_twice_is_forwarded_as_tokenctl_read_it(gateway: LiveGateway) -> None:
    """A haiku-only key must not get opus by naming the model twice: tokenctl reads the last value, and the
    provider (which might read the first) gets the body with that value only."""
    raw = (
        b'{"model":"claude-opus-4-1","max_tokens":5,"messages":[{"role":"user","content":"say \\"model\\""}],'
        b'"model":"claude-haiku-4-5"}'
    )
    response = httpx.post(
        gateway.url + "/v1/messages",
        content=raw,
        headers={"x-api-key": gateway.keys["limited"], "content-type": "application/json"},
    )
    assert response.status_code == 200
    forwarded = gateway.last_upstream().body
    assert forwarded.count(b'"model"') == 1 and orjson.loads(forwarded)["model"] == "claude-haiku-4-5"
    assert gateway.row(response.headers["request-id"])["model"] == "claude-haiku-4-5"
    refused = httpx.post(
        gateway.url + "/v1/messages",
        content=raw.replace(b"haiku-4-5", b"opus-4-1x"),
        headers={"x-api-key": gateway.keys["limited"]},
    )
    assert refused.status_code == 403  # the value tokenctl read is the one authorised


def test_compact_bodies_go_upstream_byte_for_byte(gateway: LiveGateway) -> None:
    compact = orjson.dumps({**MESSAGES, "unknown_field": {"kept": [1, 2.5, "é"]}})
    spaced = b'{"model": "claude-haiku-4-5", "max_tokens": 5,\n "messages": [{"role": "user", "content": "hi"}]}'
    for raw in (compact, spaced):
        assert (
            httpx.post(gateway.url + "/v1/messages", content=raw, headers={"x-api-key": gateway.key}).status_code == 200
        )
        forwarded = gateway.last_upstream().body
        assert forwarded == raw if raw is compact else orjson.loads(forwarded) == orjson.loads(raw)


def test_a_client_that_leaves_during_upload_is_recorded_as_gone(
    gateway: LiveGateway, caplog: pytest.LogCaptureFixture
) -> None:
    body = orjson.dumps(MESSAGES)
    head = messages_head(gateway, body + b" " * 1000)  # announces more than it sends
    raw_request(gateway, head, body, close_after=True)
    (row,) = gateway.wait_rows(1)
    assert (row["status"], row["outcome"]) == (499, "client_disconnected")
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_a_client_that_leaves_before_the_first_stream_byte(
    gateway: LiveGateway, caplog: pytest.LogCaptureFixture
) -> None:
    body = orjson.dumps({**MESSAGES, "stream": True})
    raw_request(gateway, messages_head(gateway, body, b"x-fake-fault: slow:300"), body, close_after=True)
    (row,) = gateway.wait_rows(1, timeout=10)
    assert row["outcome"] == "client_disconnected" and row["status"] == 200
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_endpoints_without_a_handler_are_recorded(gateway: LiveGateway) -> None:
    missing = httpx.get(gateway.url + "/v1/files")
    wrong = httpx.get(gateway.url + "/v1/messages")
    ws = httpx.get(gateway.url + "/v1/responses", headers={"upgrade": "websocket", "connection": "upgrade"})
    assert [missing.status_code, wrong.status_code, ws.status_code] == [404, 405, 426]
    rows = {r["request_id"]: r for r in gateway.wait_rows(3)}
    for response in (missing, wrong, ws):
        row = rows[response.headers["request-id"]]
        assert row["status"] == response.status_code and row["outcome"] == "rejected"


def test_viewer_keys_cannot_list_models_and_the_route_header_stays_home(make_gateway: Any) -> None:
    live = make_gateway(keys={"viewer": {"team": "payments", "role": "viewer"}})
    listing = httpx.get(live.url + "/v1/models", headers={"authorization": f"Bearer {live.keys['viewer']}"})
    assert listing.status_code == 403
    ok = httpx.post(
        live.url + "/v1/messages",
        json=MESSAGES,
        headers={"x-api-key": live.key, "x-tokenctl-route": "economy", "x-tokenctl-tags": "a=b"},
    )
    assert ok.status_code == 200
    forwarded = {k.lower() for k in live.last_upstream().headers}
    assert "x-tokenctl-route" not in forwarded and "x-tokenctl-tags" not in forwarded


def test_an_upstream_error_that_echoes_the_prompt_keeps_it_out_of_the_ledger(gateway: LiveGateway) -> None:
    secret = "the merger with Initech closes on Friday"
    body = {**MESSAGES, "messages": [{"role": "user", "content": secret}]}
    response = httpx.post(
        gateway.url + "/v1/messages", json=body, headers={"x-api-key": gateway.key, "x-fake-fault": "echo:400"}
    )
    assert response.status_code == 400 and secret in response.text  # the client sees its own error in full
    row = gateway.row(response.headers["request-id"])
    assert secret not in (row["error"] or "") and row["error"].startswith("upstream 400 invalid_request_error")


def test_slow_clients_are_cut_off(make_gateway: Any) -> None:
    live = make_gateway({"server": {"idle_timeout_seconds": 1, "body_timeout_seconds": 1}})
    host, port = live.url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=10) as slowloris:
        slowloris.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: gw\r\nx-a: ")  # never finishes its head
        assert slowloris.recv(100) == b""  # closed by the gateway
    assert time.monotonic() - started < 5
    with socket.create_connection((host, int(port)), timeout=10) as endless:
        endless.sendall(
            b"POST /v1/messages HTTP/1.1\r\nHost: gw\r\nx-api-key: "
            + live.key.encode()
            + b'\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"a":\r\n'
        )  # and never the rest
        answer = endless.recv(4096)
    assert status_of(answer) == 408 and b"not received within 1 s" in answer
    assert time.monotonic() - started < 8
    (row,) = live.wait_rows(1)
    assert row["status"] == 408


BUDGET = {"budgets": [{"name": "team-cap", "scope": "team", "limit_usd": 100}], "ledger": {"max_lag_seconds": 0.5}}


@pytest.mark.skipif(ON_POSTGRES, reason="locks the SQLite file; tests/ledger/test_postgres.py locks the table")
def test_a_stuck_ledger_fails_budgeted_requests_closed_and_recovers(make_gateway: Any) -> None:
    live = make_gateway(BUDGET)
    headers = {"x-api-key": live.key}
    assert httpx.post(live.url + "/v1/messages", json=MESSAGES, headers=headers).status_code == 200
    assert httpx.get(live.url + "/ready").status_code == 200
    live.wait_rows(1)
    # Waits out a write the writer may have under way; from then on the writer cannot write: it falls behind.
    locker = sqlite3.connect(live.db_path, timeout=5, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        httpx.post(live.url + "/v1/messages", json=MESSAGES, headers=headers)  # recorded, not written
        time.sleep(0.8)
        refused = httpx.post(live.url + "/v1/messages", json=MESSAGES, headers=headers)
        assert refused.status_code == 503 and refused.json()["error"]["type"] == "api_error"
        assert "cannot record spend" in refused.json()["error"]["message"]
        ready = httpx.get(live.url + "/ready")
        assert ready.status_code == 503 and "behind" in ready.json()["reason"]
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    deadline = time.monotonic() + 40  # the writer's busy timeout ends, it retries and catches up
    while httpx.get(live.url + "/ready").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert httpx.post(live.url + "/v1/messages", json=MESSAGES, headers=headers).status_code == 200
    rows = live.wait_rows(4)
    assert [r["status"] for r in rows] == [200, 200, 503, 200]


def test_a_long_stream_does_not_keep_its_request_body(gateway: LiveGateway) -> None:
    """Once the provider answers, nothing in tokenctl holds the client's body (2 MB here) for the stream's life."""
    import tracemalloc

    body = orjson.dumps({**MESSAGES, "stream": True, "messages": [{"role": "user", "content": "x" * 2_000_000}]})
    gateway.fake.keep_requests = False  # type: ignore[attr-defined]
    tracemalloc.start(30)
    try:
        host, port = gateway.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=20) as sock:
            sock.sendall(messages_head(gateway, body, b"x-fake-chunks: 30", b"x-fake-fault: stall:60") + body)
            del body
            assert b"text/event-stream" in sock.recv(4096)  # the answer has started
            time.sleep(0.3)  # mid-stream
            big = [
                s
                for s in tracemalloc.take_snapshot().statistics("traceback")
                if s.size >= 1_000_000 and not any("fake_provider" in frame.filename for frame in s.traceback)
            ]  # the provider's copy
            while sock.recv(65536):
                pass
    finally:
        tracemalloc.stop()
        gateway.fake.keep_requests = True  # type: ignore[attr-defined]
    assert big == [], [str(s.traceback) for s in big]


@pytest.mark.parametrize(
    "path, body, last",
    [
        ("/v1/messages", {**MESSAGES, "stream": True}, b"message_stop"),
        ("/v1/responses", {"model": "gpt-5-mini", "input": "hi", "stream": True}, b"response.completed"),
    ],
)
def test_a_client_that_closes_on_the_final_event_is_a_complete_answer(
    gateway: LiveGateway, caplog: pytest.LogCaptureFixture, path: str, body: dict[str, Any], last: bytes
) -> None:
    """Codex closes as soon as it has response.completed: the request is recorded complete, without a traceback."""
    raw = orjson.dumps(body)
    head = messages_head(gateway, raw).replace(b"POST /v1/messages", b"POST " + path.encode())
    host, port = gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head + raw)
        seen = b""
        while last not in seen:
            chunk = sock.recv(65536)
            assert chunk, "the stream ended before its final event"
            seen += chunk
    (row,) = gateway.wait_rows(1)
    assert (row["status"], row["outcome"], row["partial"]) == (200, "ok", 0)
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
