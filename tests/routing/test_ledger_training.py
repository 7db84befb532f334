"""Learning from the deployment's own outcomes: routed turns in the ledger (hashed features, never text),
escalations and explicit feedback label them; ``tokenctl router train --from-ledger`` retrains on them."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import anthropic
import httpx2 as httpx
import orjson
import pytest
import yaml

from tests.conftest import ADMIN_KEY
from tokenctl.cli.main import main
from tokenctl.routing.classifier import Classifier

ROUTED: dict[str, Any] = {
    "aliases": {"auto": "claude-sonnet-4-5"},
    "routing": {
        "routed_models": ["auto"],
        "tiers": {"economy": {"models": ["claude-haiku-4-5"]}, "premium": {"models": ["claude-sonnet-4-5"]}},
        "classifier": {"cheap_tier": "economy", "premium_tier": "premium", "threshold": 1.0},  # all cheap
        "escalation": {"to": "premium", "failing_tool_results": 2},
    },
}
HARD = "Migrate the billing database schema and backfill the invoices table with the ledger history"
EASY = "Fix the typo in the README heading and the spelling of colour in the docs index page"
FAILED = {"type": "tool_result", "tool_use_id": "t", "content": "Exit code 1\nTraceback (most recent call last):"}


def session(live: Any, sid: str, first: str, *, struggle: bool) -> None:
    client = anthropic.Anthropic(
        base_url=live.url, api_key=live.key, max_retries=0, default_headers={"x-claude-code-session-id": sid}
    )
    messages: list[Any] = [{"role": "user", "content": first}]
    client.messages.create(model="auto", max_tokens=50, messages=messages)
    if struggle:
        for i in range(2):
            call = {"type": "tool_use", "id": "t", "name": "Bash", "input": {"command": f"make migrate # {i}"}}
            messages += [{"role": "assistant", "content": [call]}, {"role": "user", "content": [FAILED]}]
            client.messages.create(model="auto", max_tokens=50, messages=messages)
    messages += [{"role": "assistant", "content": "Done."}, {"role": "user", "content": "Thanks, what next then?"}]
    client.messages.create(model="auto", max_tokens=50, messages=messages)


def write_config(live: Any, tmp_path: Path) -> Path:
    path = tmp_path / "tokenctl.yaml"
    where = str(live.config.ledger_path)
    ledger = {"url": where} if where.startswith("postgresql") else {"path": where}
    path.write_text(yaml.safe_dump({"ledger": ledger, "routing": ROUTED["routing"]}))
    return path


def test_turns_are_labelled_by_escalations_and_feedback_and_a_model_is_trained_on_them(
    make_gateway: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    live = make_gateway(ROUTED)
    for i in range(4):
        session(live, f"hard-{i}", f"{HARD} (part {i})", struggle=True)
        session(live, f"easy-{i}", f"{EASY} (part {i})", struggle=False)
    session(live, "said-no", f"{EASY} (last)", struggle=False)
    rows = live.wait_rows(4 * 4 + 4 * 2 + 2)
    scored = [r for r in rows if r["route_features"]]
    assert scored and all(set(r["route_features"]) <= set("0123456789,") for r in scored)  # numbers, not text
    assert not any("invoices" in str(r.values()) for r in rows)  # no prompt text in the ledger
    # CI says the last session's work failed, although nothing escalated
    reply = httpx.post(
        f"{live.url}/admin/feedback",
        json={"session_id": "said-no", "outcome": "failure", "source": "ci"},
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
    )
    assert reply.status_code == 200, reply.text
    bad = httpx.post(
        f"{live.url}/admin/feedback",
        json={"session_id": "nope", "outcome": "failure"},
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
    )
    assert bad.status_code == 400 and "no session 'nope'" in bad.text
    config = write_config(live, tmp_path)
    out = tmp_path / "model.json.gz"
    code = main(["router", "train", "--from-ledger", "--min-turns", "4", "--out", str(out), "--config", str(config)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "escalated before the next user turn" in err and "feedback: failed" in err
    meta = orjson.loads(gzip.decompress(out.read_bytes()))["meta"]
    assert meta["ledger_labels"]["escalated before the next user turn"] == 4
    assert meta["ledger_labels"]["feedback: failed"] == 2  # both of its turns were on the cheap tier
    assert meta["ledger_labels"]["the session went on without escalating"] == 4
    model = Classifier.load(out)
    assert model.score(f"{HARD} (part 9)") > model.score(f"{EASY} (part 9)")


def test_too_few_labelled_turns_are_refused_with_the_counts(
    make_gateway: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    live = make_gateway(ROUTED)
    session(live, "only", EASY, struggle=False)
    live.wait_rows(2)
    config = write_config(live, tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(["router", "train", "--from-ledger", "--out", str(tmp_path / "m.gz"), "--config", str(config)])
    assert "1 labelled turns (0 needed premium, 1 did not); need at least 50" in str(stop.value)


def test_cli_feedback_names_a_request_or_a_session(make_gateway: Any, tmp_path: Path) -> None:
    live = make_gateway(ROUTED)
    session(live, "s-1", EASY, struggle=False)
    request_id = live.wait_rows(2)[0]["request_id"]
    config = write_config(live, tmp_path)
    assert main(["router", "feedback", "--request", request_id, "--outcome", "merged", "--config", str(config)]) == 0
    with pytest.raises(SystemExit) as stop:
        main(["router", "feedback", "--session", "s-1", "--outcome", "maybe", "--config", str(config)])
    assert "outcome must be one of success" in str(stop.value)
