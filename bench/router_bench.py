"""Routing decision time: p50 / p99 / max per request, for the classifier alone and for the whole decision.

    python bench/router_bench.py [--data-dir ../shared/routing-data/code]

"classifier" times ``Classifier.score`` on the CRUXEval and SWE-bench prompts. "whole decision" times what
the routing stage does per request of an agent session: the turn boundary, the trajectory signals read
from the history, the turn's text, and ``Router.choose`` (rules, the classifier with a live premium_share
threshold, the session's tier, escalation), on Claude Code-shaped bodies of 40 steps and ~50 KB, both
for a new user turn and for a tool-result step. Writes bench/results/router.json. Target: p99 <= 1 ms.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tokenctl.policy.turns import at_turn_boundary
from tokenctl.routing.catalog import Catalog
from tokenctl.routing.classifier import Classifier
from tokenctl.routing.router import Facts, Router, turn_text
from tokenctl.routing.settings import parse_routing
from tokenctl.routing.trajectory import read_signals
from tokenctl.types import Principal, Route

ROOT = Path(__file__).resolve().parents[1]
API = "anthropic.messages"


def prompts(data_dir: Path) -> list[str]:
    csv.field_size_limit(1 << 30)
    found = []
    for name in ("cruxeval.csv", "swebench_verified_2024systems_train.csv"):
        with (data_dir / name).open(newline="", encoding="utf-8") as f:
            found += [row["prompt"] for row in csv.DictReader(f)]
    return found


def agent_body(task: str, steps: int, *, new_turn: bool) -> dict[str, Any]:
    """A Claude Code-shaped conversation: the task, then ``steps`` tool calls with ~1 KB outputs."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": [{"type": "text", "text": task}]}]
    for i in range(steps):
        call = {
            "type": "tool_use",
            "id": f"toolu_{i}",
            "name": "Bash",
            "input": {"command": f"pytest -x tests/t{i}.py"},
        }
        output = f"Exit code {i % 2}\n" + ("collected 14 items\ntests/t.py ........F..  [100%]\n" * 20)
        messages += [
            {"role": "assistant", "content": [{"type": "text", "text": "Running the tests."}, call]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"toolu_{i}", "content": output}]},
        ]
    if new_turn:
        messages.append({"role": "user", "content": [{"type": "text", "text": "Now do the same for the parser."}]})
    return {"model": "auto", "max_tokens": 32000, "messages": messages}


class _Catalog(Catalog):
    def __init__(self) -> None:
        pass

    def resolve(self, model: str, api: str) -> Any:
        return Route(None, model, model)  # type: ignore[arg-type]


def router() -> Router:
    settings = parse_routing(
        {
            "routed_models": ["auto"],
            "tiers": {"economy": {"models": ["cheap"]}, "premium": {"models": ["premium"]}},
            "rules": [{"tier": "economy", "kind": "title"}],
            "classifier": {"cheap_tier": "economy", "premium_tier": "premium", "premium_share": 0.3},
            "escalation": {"to": "premium"},
        }
    )
    return Router(settings, _Catalog(), Classifier.load())


def timed(items: list[Any], work: Callable[[Any], object]) -> dict[str, float]:
    times = []
    gc.collect()
    for item in items:
        started = time.perf_counter()
        work(item)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {
        "requests": len(times),
        "p50_ms": round(times[len(times) // 2], 4),
        "p99_ms": round(times[int(0.99 * (len(times) - 1))], 4),
        "max_ms": round(times[-1], 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "routing-data" / "code"))
    args = parser.parse_args()
    texts = prompts(Path(args.data_dir))
    classifier = Classifier.load()
    routing = router()
    principal = Principal(key_id="k", user="u", team="t", project=None)
    requested = Route(None, "auto", "auto")  # type: ignore[arg-type]

    def decide(item: tuple[int, dict[str, Any]]) -> object:
        i, body = item
        facts = Facts(
            principal,
            None,
            "agent",
            50_000 // 4,
            turn_text(body, API),
            None,
            new_turn=at_turn_boundary(body, API),
            signals=read_signals(body, API),
            session=f"s{i % 300}",
        )
        return routing.choose(requested, API, facts)

    user_turns = [(i, agent_body(texts[i % len(texts)], 40, new_turn=True)) for i in range(1000)]
    tool_steps = [(i, agent_body(texts[i % len(texts)], 40, new_turn=False)) for i in range(1000)]
    result = {
        "body_bytes": len(json.dumps(user_turns[0][1])),
        "classifier on coding prompts": timed(texts, classifier.score),
        "whole decision, new user turn (40-step history)": timed(user_turns, decide),
        "whole decision, tool-result step (40-step history)": timed(tool_steps, decide),
    }
    out = ROOT / "bench" / "results" / "router.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
