"""The real Claude Code and Codex CLIs (from npm, installed by ``.ci/run``) through ``tokenctl serve`` to the fake
provider, inside a network namespace with nothing but loopback: each answers, each request is metered and
attributed to its tool, and a budget stop reaches each CLI's user, once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
CLI_DIR = Path(os.environ.get("TOKENCTL_CLI_DIR", Path.home() / ".cache" / "tokenctl-clis")) / "node_modules" / ".bin"


def _need(condition: bool, why: str) -> None:
    """In CI the CLIs are installed by .ci/run, so a missing one fails; elsewhere the test is skipped."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    _need(
        (CLI_DIR / "claude").exists() and (CLI_DIR / "codex").exists(),
        f"the CLIs are not installed in {CLI_DIR} (see .ci/run)",
    )
    _need(os.geteuid() == 0 and shutil.which("unshare") is not None, "needs root and unshare for a network namespace")
    work = tmp_path_factory.mktemp("real-clis")
    done = subprocess.run(
        ["unshare", "-n", sys.executable, str(HERE / "real_clis_run.py"), str(CLI_DIR), str(work)],
        capture_output=True,
        text=True,
        timeout=600,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(HERE.parents[1] / "src"), os.environ.get("PYTHONPATH", "")]),
        },
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_claude_code_answers_through_tokenctl_and_is_metered(run: dict[str, Any]) -> None:
    claude = run["claude"]
    assert claude["rc"] == 0, claude["err"]
    assert "word0" in claude["out"]  # the fake provider's answer, printed by Claude Code
    rows = [r for r in run["rows"] if r["tool"] == "claude-code" and r["status"] == 200]
    assert rows and all(r["api"] == "anthropic.messages" and r["user"] == "dev" for r in rows)
    assert all(r["input_tokens"] > 1000 and r["output_tokens"] > 0 and float(r["cost_usd"]) > 0 for r in rows)
    assert rows[0]["tool_version"]  # the CLI's version, from its user-agent
    assert rows[0]["session_id"]  # Claude Code's session id, for per-session reports


def test_a_claude_code_tool_loop_runs_the_tool_and_sends_its_result_back(run: dict[str, Any]) -> None:
    tool = run["claude_tool"]
    assert tool["rc"] == 0, tool["err"]
    assert "got: tool-ran-ok" in tool["out"]  # the fake echoes the tool result Claude Code sent back
    sessions: dict[str, int] = {}
    for r in run["rows"]:
        if r["tool"] == "claude-code" and r["user"] == "dev" and r["status"] == 200:
            sessions[r["session_id"]] = sessions.get(r["session_id"], 0) + 1
    assert max(sessions.values()) >= 2  # the tool call and the turn with its result, one session


def test_a_budget_stop_reaches_the_claude_code_user_once(run: dict[str, Any]) -> None:
    blocked = run["claude_blocked"]
    assert blocked["rc"] != 0
    shown = blocked["out"] + blocked["err"]
    assert "402" in shown and "budget 'tiny'" in shown  # tokenctl's own message, verbatim
    stops = [r for r in run["rows"] if r["user"] == "broke" and r["tool"] == "claude-code"]
    assert [r["status"] for r in stops] == [402]  # not retried


def test_claude_code_shows_the_402_better_than_a_429_billing_error(run: dict[str, Any]) -> None:
    """Why tokenctl answers Claude Code's budget stops with 402: the current Claude Code shows both once, but a
    429 ``billing_error`` (with ``x-should-retry: false``) as "Request rejected (429)", rate-limit wording for
    a spent budget, where the 402 is shown as "API Error: 402" with tokenctl's message alone."""
    assert run["claude_version"].startswith("2.1.332")  # the version .ci/run installs
    rejected = run["claude_billing_429"]
    shown_429 = rejected["out"] + rejected["err"]
    assert rejected["rc"] != 0 and rejected["requests"] == 1  # shown once, not retried
    assert "Request rejected (429)" in shown_429 and "budget 'tiny'" in shown_429
    blocked = run["claude_blocked"]
    shown_402 = blocked["out"] + blocked["err"]
    assert "API Error: 402 tokenctl: budget 'tiny'" in shown_402 and "429" not in shown_402


def test_codex_answers_through_tokenctl_and_is_metered(run: dict[str, Any]) -> None:
    codex = run["codex"]
    assert codex["rc"] == 0, codex["err"]
    assert "word0" in codex["out"] + codex["err"]
    rows = [r for r in run["rows"] if r["tool"] == "codex" and r["status"] == 200]
    assert rows and all(r["api"] == "openai.responses" and "CLI-1" in (r["tags"] or "") for r in rows)
    assert all(r["priced"] == 1 for r in rows)  # a local model too, at its override price
    assert all(r["input_tokens"] > 1000 and float(r["cost_usd"]) > 0 for r in rows)


def test_a_budget_stop_reaches_the_codex_user_once(run: dict[str, Any]) -> None:
    blocked = run["codex_blocked"]
    assert blocked["rc"] != 0
    assert "budget 'tiny'" in blocked["out"] + blocked["err"]  # tokenctl's message, shown
    stops = [r for r in run["rows"] if r["user"] == "broke" and r["tool"] == "codex"]
    assert [r["status"] for r in stops] == [402]  # one request: answered as a 400, which Codex does not retry


def _turns(run: dict[str, Any], model: str) -> list[dict[str, Any]]:
    return [r for r in run["rows"] if r["tool"] == "codex" and r["requested_model"] == model and r["user"] == "dev"]


def test_codex_answers_from_claude_through_translation(run: dict[str, Any]) -> None:
    codex = run["codex_claude"]
    assert codex["rc"] == 0, codex["err"]
    assert "word0" in codex["out"] + codex["err"]
    rows = [r for r in _turns(run, "claude-sonnet-4-5") if r["status"] == 200]
    assert rows and all(r["provider"] == "anthropic" and r["api"] == "openai.responses" for r in rows)
    assert all("translated openai.responses -> anthropic.messages" in r["policy"] for r in rows)


def test_codex_runs_a_tool_that_claude_asked_for_and_sends_its_output_back(run: dict[str, Any]) -> None:
    codex = run["codex_claude_tool"]
    assert codex["rc"] == 0, codex["err"]
    assert "got: " in codex["out"] and "tool-ran-ok" in codex["out"]  # the fake echoes the tool output it got
    sessions = {r["session_id"] for r in _turns(run, "claude-sonnet-4-5") if r["status"] == 200}
    assert any(sum(1 for r in _turns(run, "claude-sonnet-4-5") if r["session_id"] == s) >= 2 for s in sessions)


def test_codex_runs_a_tool_loop_on_a_chat_only_local_model(run: dict[str, Any]) -> None:
    codex = run["codex_local_tool"]
    assert codex["rc"] == 0, codex["err"]
    assert "got: " in codex["out"] and "tool-ran-ok" in codex["out"]
    rows = [r for r in _turns(run, "qwen3-coder") if r["status"] == 200]
    assert len(rows) >= 2 and all(r["provider"] == "local" for r in rows)
    assert all("translated openai.responses -> openai.chat" in r["policy"] for r in rows)


def test_codex_default_model_shape_is_served_by_claude(run: dict[str, Any]) -> None:
    """gpt-6.2-sol (Codex's default) sends its tools as an additional_tools item with a namespace and a
    freeform tool; aliased to Claude here, every request of the run is translated and answered."""
    codex = run["codex_default_on_claude"]
    assert codex["rc"] == 0, codex["err"]
    assert "word0" in codex["out"] + codex["err"]
    rows = _turns(run, "gpt-6.2-sol")
    assert rows and all(r["status"] == 200 and r["model"] == "claude-sonnet-4-5" for r in rows)
