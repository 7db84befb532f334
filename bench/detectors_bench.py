"""What the loop detectors cost per request: µs of CPU for each, on Claude Code-shaped agent histories.

    python bench/detectors_bench.py

Each detector reads the request body the gateway has already parsed: the trailing run of identical tool
calls, the trailing run of near-identical answers, the turn boundary (for the unattended clock), the first
prompt's digest (Ralph loops), the routing trajectory signals and the prompt-cache prefix digests (cache
health). Timed over 2,000 bodies of 20, 100 and
400 steps, as the median and 99th percentile per call, beside the cost of parsing the body with orjson
(what every request already pays). Writes bench/results/detectors.json.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from tokenctl.metering.cache_health import CacheHealth
from tokenctl.policy.loops import first_prompt_digest, trailing_repeats, trailing_similar_answers
from tokenctl.policy.turns import at_turn_boundary
from tokenctl.routing.trajectory import read_signals

ROOT = Path(__file__).resolve().parents[1]
API = "anthropic.messages"


def history(steps: int, seed: int) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [{"role": "user", "content": [{"type": "text", "text": f"Task {seed}: fix it"}]}]
    for i in range(steps):
        call = {"type": "tool_use", "id": f"t{i}", "name": "Bash", "input": {"command": f"pytest tests/t{i % 7}.py"}}
        words = ("Running", "Reading", "Editing", "Checking", "Listing", "Fixing", "Building")
        text = {"type": "text", "text": f"{words[i % 7]} {i} of the {steps} steps for issue {seed}: file t{i}.py"}
        output = f"Exit code {i % 2}\n" + "tests/t.py ....F.... [100%]\n" * 10
        messages += [
            {"role": "assistant", "content": [text, call]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"t{i}", "content": output}]},
        ]
    return {"model": "claude-sonnet-4-5", "max_tokens": 32000, "messages": messages}


def per_call_us(bodies: list[dict[str, Any]], work: Callable[[dict[str, Any]], object]) -> dict[str, float]:
    times = []
    for body in bodies:
        started = time.perf_counter()
        work(body)
        times.append((time.perf_counter() - started) * 1e6)
    times.sort()
    return {"p50_us": round(times[len(times) // 2], 1), "p99_us": round(times[int(0.99 * (len(times) - 1))], 1)}


def main() -> None:
    health = CacheHealth()
    detectors: dict[str, Callable[[dict[str, Any]], object]] = {
        "repeated tool calls": lambda b: trailing_repeats(b, API),
        "near-identical answers (rule count 5)": lambda b: trailing_similar_answers(b, API, 5),
        "turn boundary (unattended)": lambda b: at_turn_boundary(b, API),
        "first prompt digest (Ralph)": lambda b: first_prompt_digest(b, API),
        "routing trajectory signals": lambda b: read_signals(b, API),
        "prompt-cache prefix digests": lambda b: health.prefix("session", b),
    }
    result: dict[str, Any] = {}
    for steps in (20, 100, 400):
        bodies = [history(steps, i) for i in range(2000)]
        raw = [orjson.dumps(b) for b in bodies[:500]]
        row = {"body_kb": round(len(raw[0]) / 1024, 1)}
        row["orjson parse (paid anyway)"] = per_call_us(raw, orjson.loads)  # type: ignore[arg-type]
        for name, work in detectors.items():
            row[name] = per_call_us(bodies, work)
        result[f"{steps} steps"] = row
    out = ROOT / "bench" / "results" / "detectors.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
