"""The signals read from a session's history, on the request shapes the real CLIs send, and premium_share
calibrated on a stream of live scores."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import pytest

from tokenctl.policy.turns import at_turn_boundary
from tokenctl.routing.calibrate import LiveThreshold
from tokenctl.routing.catalog import Catalog
from tokenctl.routing.classifier import Classifier
from tokenctl.routing.router import Facts, Router, turn_text
from tokenctl.routing.settings import parse_routing
from tokenctl.routing.trajectory import read_signals
from tokenctl.types import Principal, Route

CAPTURES = Path(__file__).parents[1] / "data" / "captures"


def claude_code_tool_step() -> dict[str, Any]:
    capture = json.loads((CAPTURES / "claude-code-cc_tool.json").read_text())
    return copy.deepcopy(capture["requests"][1]["body"])


def test_claude_codes_tool_result_step_is_inside_the_turn_and_reads_as_a_success() -> None:
    body = claude_code_tool_step()
    assert not at_turn_boundary(body, "anthropic.messages")
    signals = read_signals(body, "anthropic.messages")
    assert signals.failing_results == 0 and not signals.gave_up and not signals.re_asked
    assert turn_text(body, "anthropic.messages") != ""  # the user's own words, not the tool output


def test_failures_count_in_a_row_from_is_error_or_the_output() -> None:
    body = claude_code_tool_step()
    result = body["messages"][-1]["content"][0]
    result["is_error"] = True
    assert read_signals(body, "anthropic.messages").failing_results == 1
    tool_use = body["messages"][-2]
    text_only = {k: v for k, v in result.items() if k != "is_error"}  # a client that does not flag errors
    for output in ("Traceback (most recent call last):\n  File ...", "npm ERR! 3 errors", "Exit code 2"):
        body["messages"] += [copy.deepcopy(tool_use), {"role": "user", "content": [dict(text_only, content=output)]}]
    assert read_signals(body, "anthropic.messages").failing_results == 4
    flagged_fine = dict(result, is_error=False, content="Error: this text is the file's content")
    body["messages"] += [copy.deepcopy(tool_use), {"role": "user", "content": [flagged_fine]}]
    assert read_signals(body, "anthropic.messages").failing_results == 0  # the client's own flag decides
    body["messages"] = body["messages"][:-2]
    body["messages"].append({"role": "user", "content": "please keep going"})  # the user's turn ends the run
    assert read_signals(body, "anthropic.messages").failing_results == 0


@pytest.mark.parametrize(
    "output",
    ["Exit code 0\nall good", "0 failed, 12 passed", "The word error in a sentence is fine", "Wrote 3 files"],
)
def test_ordinary_outputs_are_not_failures(output: str) -> None:
    body = {"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": output}]}]}
    assert read_signals(body, "anthropic.messages").failing_results == 0


def test_chat_tool_messages_and_reasking_are_read() -> None:
    messages: list[Any] = [
        {"role": "system", "content": "You are a coding agent"},
        {"role": "user", "content": "Why is the login page returning a 500 error?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "sh", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "bash: psql: command not found"},
    ]
    assert read_signals({"messages": messages}, "openai.chat").failing_results == 1
    messages += [
        {"role": "assistant", "content": "Done."},
        {"role": "user", "content": "why is the login page returning a 500 error"},
    ]
    assert read_signals({"messages": messages}, "openai.chat").re_asked


def test_live_threshold_sends_the_share_asked_for_of_the_deployments_own_scores() -> None:
    rng = random.Random(3)
    live = LiveThreshold(0.25, window=1000, warmup=200, before_warmup=lambda share: 0.9)
    assert live.value() == 0.9  # no live scores yet: the training quantile
    sent = []
    for _ in range(3000):  # this deployment's scores sit far above the training set's
        score = 0.6 + 0.3 * rng.random()
        sent.append(score >= live.value())
        live.observe(score)
    assert abs(sum(sent[1000:]) / 2000 - 0.25) < 0.03  # the training threshold (0.9) would send ~0 %
    for _ in range(1500):  # the traffic changes: the window follows it
        score = 0.1 * rng.random()
        sent.append(score >= live.value())
        live.observe(score)
    assert abs(sum(sent[-500:]) / 500 - 0.25) < 0.05


def test_the_router_calibrates_premium_share_and_falls_back_to_length_out_of_domain() -> None:
    settings = parse_routing(
        {
            "routed_models": ["auto"],
            "tiers": {"economy": {"models": ["m-cheap"]}, "premium": {"models": ["m-premium"]}},
            "classifier": {
                "cheap_tier": "economy",
                "premium_tier": "premium",
                "premium_share": 0.3,
                "calibration_window": 500,
                "calibration_warmup": 100,
            },
        }
    )
    packaged = Classifier.load()
    meta = {k: v for k, v in (packaged.meta or {}).items() if k != "coverage_floor"}  # calibration alone first
    router = Router(settings, _Catalog(), Classifier(packaged.weights, packaged.threshold, meta))
    principal = Principal(key_id="k", user="u", team="t", project=None)
    route = Route(None, "auto", "auto")  # type: ignore[arg-type]
    rng = random.Random(5)
    words = "parse the config file and fix the failing test in the module refactor function class".split()
    premium = 0
    for i in range(600):
        text = " ".join(rng.choice(words) for _ in range(rng.randrange(5, 60)))
        decision = router.choose(route, "anthropic.messages", Facts(principal, None, "chat", 100, text, None))
        assert decision is not None
        premium += i >= 300 and decision.tier == "premium"
    assert abs(premium / 300 - 0.3) < 0.08
    short = router.choose(route, "anthropic.messages", Facts(principal, None, "chat", 100, "go on", None))
    assert short is not None and "outside the classifier's domain (2 words)" in short.reason
    router = Router(settings, _Catalog(), packaged)
    blob = "ZXhhbXBsZSBiYXNlNjQgYmxv YiB0aGF0IG5vYm9keSB3 cml0ZXMgd2l0aCBzcGFjZXM " * 20  # base64: no words it knows
    odd = router.choose(route, "anthropic.messages", Facts(principal, None, "chat", 100, blob, None))
    assert odd is not None and odd.score is None
    assert f"coverage 0.45 < {packaged.coverage_floor:.2f}): prompt length 1400 >= 412 chars" in odd.reason
    assert odd.tier == "premium"
    code = "Fix the failing date test in tests/test_parser.py and refactor the helper function"
    known = router.choose(route, "anthropic.messages", Facts(principal, None, "chat", 100, code, None))
    assert known is not None and known.score is not None and known.reason.startswith("classifier ")


class _Catalog(Catalog):
    def __init__(self) -> None:
        pass

    def resolve(self, model: str, api: str) -> Any:
        return Route(None, model, model)  # type: ignore[arg-type]
