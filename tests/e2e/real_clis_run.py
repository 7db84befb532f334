"""Runs inside ``unshare -n`` (only loopback exists): the fake provider, ``tokenctl serve`` and the real Claude Code
and Codex CLIs, as a user would point them at tokenctl. Prints one JSON object with what each CLI printed and
what the ledger recorded. Used by ``test_real_clis.py``; run by hand with
``unshare -n python3 tests/e2e/real_clis_run.py CLI_DIR WORKDIR``.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

FAKE_PORT, GATEWAY_PORT, STANDIN_PORT = 18301, 18300, 18302


def _wait(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def _tokenctl(config: Path, *args: str) -> str:
    command = [sys.executable, "-m", "tokenctl", "--config", str(config), *args]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()


def _run(command: list[str], env: dict[str, str]) -> dict[str, object]:
    """A CLI run to its end, non-interactive: exit code, what it printed, the tail of its stderr."""
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=180, stdin=subprocess.DEVNULL)
    return {"rc": done.returncode, "out": done.stdout, "err": done.stderr[-3000:]}


def _claude(
    cli: Path, home: Path, key: str, prompt: str, *extra: str, headers: str = "", port: int = GATEWAY_PORT
) -> dict[str, object]:
    env = {
        **os.environ,
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{port}",
        "ANTHROPIC_API_KEY": key,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "ANTHROPIC_CUSTOM_HEADERS": headers,
    }
    return _run([str(cli / "claude"), "-p", prompt, "--model", "claude-haiku-4-5", *extra], env)


def _codex(
    cli: Path, home: Path, key: str, prompt: str, model: str = "gpt-5-codex", headers: dict[str, str] | None = None
) -> dict[str, object]:
    """``codex exec`` through tokenctl; ``headers`` script the fake provider (a tool call, say)."""
    codex_home = home / ".codex"
    codex_home.mkdir(parents=True, exist_ok=True)
    sent = ", ".join(f"\"{k}\" = '{v}'" for k, v in {"x-tokenctl-tags": "ticket=CLI-1", **(headers or {})}.items())
    (codex_home / "config.toml").write_text(
        f'model_provider = "gateway"\nmodel = "{model}"\n[model_providers.gateway]\nname = "tokenctl"\n'
        f'base_url = "http://127.0.0.1:{GATEWAY_PORT}/v1"\nenv_key = "TOKENCTL_KEY"\nwire_api = "responses"\n'
        f"http_headers = {{ {sent} }}\n"
    )
    env = {**os.environ, "HOME": str(home), "CODEX_HOME": str(codex_home), "TOKENCTL_KEY": key}
    flags = ["--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox"]
    return _run([str(cli / "codex"), "exec", *flags, prompt], env)


EXEC_TOOL = {"x-fake-tool": "exec_command", "x-fake-tool-input": '{"cmd": "echo tool-ran-ok"}'}


def main() -> None:
    cli, work = Path(sys.argv[1]), Path(sys.argv[2])
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    work.mkdir(parents=True, exist_ok=True)
    ledger = work / "ledger.db"
    config = work / "tokenctl.yaml"
    prices = work / "prices.yaml"  # a self-hosted model's price: what its GPU hours cost per token
    prices.write_text("models:\n  - {match: 'qwen*', provider: local, input_per_mtok: 0.05, output_per_mtok: 0.10}\n")
    config.write_text(
        f"server: {{port: {GATEWAY_PORT}}}\nledger: {{path: {ledger}}}\npricing: {{overrides: {prices}}}\nproviders:\n"
        f"  - {{name: anthropic, kind: anthropic, base_url: 'http://127.0.0.1:{FAKE_PORT}', models: ['claude-*']}}\n"
        f"  - {{name: openai, kind: openai, base_url: 'http://127.0.0.1:{FAKE_PORT}/v1', models: ['gpt-*']}}\n"
        f"  - {{name: local, kind: openai-compatible, base_url: 'http://127.0.0.1:{FAKE_PORT}/v1', models: ['qwen*']}}\n"
        "aliases: {gpt-6.2-sol: anthropic/claude-sonnet-4-5}\n"  # Codex's default model, served by Claude
        "budgets:\n  - {name: tiny, scope: user, match: broke, limit_usd: 0.0001}\n"
    )
    logs = (work / "services.log").open("ab")
    fake = subprocess.Popen(
        [sys.executable, "-m", "tokenctl", "fake-provider", "--port", str(FAKE_PORT)], stdout=logs, stderr=logs
    )
    key = _tokenctl(config, "keys", "create", "--user", "dev", "--team", "web").splitlines()[0]
    broke = _tokenctl(config, "keys", "create", "--user", "broke", "--team", "web").splitlines()[0]
    gateway = subprocess.Popen(
        [sys.executable, "-m", "tokenctl", "--config", str(config), "serve"], stdout=logs, stderr=logs
    )
    standin_count = work / "standin-requests"
    standin = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("billing_standin.py")), str(STANDIN_PORT), str(standin_count)],
        stdout=logs,
        stderr=logs,
    )
    try:
        _wait(FAKE_PORT)
        _wait(GATEWAY_PORT)
        _wait(STANDIN_PORT)
        billing_429 = _claude(cli, work / "home-claude-429", broke, "say hi", port=STANDIN_PORT)
        billing_429["requests"] = int(standin_count.read_text())
        result = {
            "claude": _claude(cli, work / "home-claude", key, "say hi"),
            "claude_blocked": _claude(cli, work / "home-claude-broke", broke, "say hi"),
            "claude_tool": _claude(  # the fake asks for a Bash call; Claude Code runs it and sends the result back
                cli,
                work / "home-claude-tool",
                key,
                "run the check",
                "--allowedTools",
                "Bash(echo:*)",
                headers='x-fake-tool: Bash\nx-fake-tool-input: {"command": "echo tool-ran-ok", "description": "check"}',
            ),
            "codex": _codex(cli, work / "home-codex", key, "say hi"),
            "codex_blocked": _codex(cli, work / "home-codex-broke", broke, "say hi"),
            # Codex on models that do not speak Responses: Claude (Anthropic Messages) and a local Chat model
            "codex_claude": _codex(cli, work / "home-codex-claude", key, "say hi", "claude-sonnet-4-5"),
            "codex_claude_tool": _codex(
                cli, work / "home-codex-claude-tool", key, "run the check", "claude-sonnet-4-5", EXEC_TOOL
            ),
            "codex_local_tool": _codex(cli, work / "home-codex-local", key, "run the check", "qwen3-coder", EXEC_TOOL),
            # the default model's own shape: tools in an additional_tools item, a namespace, a freeform tool
            "codex_default_on_claude": _codex(cli, work / "home-codex-default", key, "say hi", "gpt-6.2-sol"),
            "claude_billing_429": billing_429,
            "claude_version": subprocess.run([str(cli / "claude"), "--version"], capture_output=True, text=True).stdout,
        }
    finally:
        standin.terminate()
        standin.wait(10)
        gateway.terminate()
        gateway.wait(30)
        fake.terminate()
        fake.wait(10)
    db = sqlite3.connect(ledger)
    db.row_factory = sqlite3.Row
    result["rows"] = [dict(r) for r in db.execute("SELECT * FROM requests ORDER BY ts")]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
