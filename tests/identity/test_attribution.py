"""Attribution signals: tool from the User-Agent, session ids, device ids, tags; key precedence."""

from __future__ import annotations

import pytest

from tokenctl.identity.attribution import attribute, detect_tool, parse_claude_user_id, parse_tags
from tokenctl.identity.authenticate import client_key


@pytest.mark.parametrize(
    ("user_agent", "originator", "expected"),
    [
        ("claude-cli/2.1.330 (external, sdk-cli)", None, ("claude-code", "2.1.330")),
        ("codex_exec/0.169.0 (Debian 12.0.0; x86_64) dumb (codex_exec; 0.169.0)", "codex_exec", ("codex", "0.169.0")),
        ("codex-tui/0.169.0 (Mac OS 15)", None, ("codex", "0.169.0")),
        ("Anthropic/Python 2.12.0", None, ("anthropic-sdk-python", "2.12.0")),
        ("AsyncOpenAI/Python 3.54.0", None, ("openai-sdk-python", "3.54.0")),
        ("OpenAI/JS 5.1.0", None, ("openai-sdk-js", "5.1.0")),
        ("Cursor/1.7", None, ("cursor", "1.7")),
        ("curl/8.0", None, ("other", None)),
        ("", None, ("other", None)),
    ],
)
def test_tool_detection(user_agent: str, originator: str | None, expected: tuple[str, str | None]) -> None:
    assert detect_tool(user_agent, originator) == expected


def test_claude_code_user_id_json_and_legacy_forms() -> None:
    assert parse_claude_user_id('{"device_id":"d1","account_uuid":"","session_id":"s1"}') == ("d1", "s1")
    assert parse_claude_user_id("user_abc123_account_acc-1_session_11111111-2222") == ("abc123", "11111111-2222")
    assert parse_claude_user_id("{broken") == (None, None)
    assert parse_claude_user_id(42) == (None, None)


def test_ten_sessions_from_one_key_stay_one_principal_with_distinct_sessions() -> None:
    sessions = {
        attribute({}, {"metadata": {"user_id": f'{{"device_id":"d","session_id":"s{i}"}}'}}, "x-tags").session_id
        for i in range(10)
    }
    assert sessions == {f"s{i}" for i in range(10)}


def test_header_session_wins_over_body_and_tags_are_bounded() -> None:
    a = attribute(
        {"x-claude-code-session-id": "hdr", "x-tags": "a=1, b , =x"},
        {"metadata": {"user_id": '{"session_id":"body"}'}},
        "x-tags",
    )
    assert a.session_id == "hdr" and a.tags == {"a": "1", "b": ""}
    assert len(parse_tags(",".join(f"k{i}=v" for i in range(100)))) == 20


def test_key_precedence_when_both_headers_are_sent() -> None:
    assert client_key({"x-api-key": "tkc_a", "authorization": "Bearer tkc_b"}) == "tkc_a"
    assert client_key({"x-api-key": "sk-ant-real", "authorization": "Bearer tkc_b"}) == "tkc_b"
    assert client_key({"authorization": "bearer tkc_c"}) == "tkc_c"
    assert client_key({"authorization": "Basic abc"}) is None
