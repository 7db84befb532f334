"""What the loop detectors cost per request: µs of CPU for each, on Claude Code-shaped agent histories.

    python bench/detectors_bench.py

Each detector reads the request body the gateway has already parsed: the trailing run of identical tool
calls, the trailing run of near-identical answers, the turn boundary (for the unattended clock), the first
prompt's digest (Ralph loops), the routing trajectory signals and the prompt-cache prefix digests (cache
health), and the spend-per-hour counting of velocity rules. Timed over 2,000 bodies of 20, 100 and 400 steps,
as the median and 99th percentile per call, beside the cost of parsing the body with orjson (what every
request already pays). Then one round of the watcher (off the request path) over a 200,000-row ledger.
Writes bench/results/detectors.json.
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
from tokenctl.policy.store import MemoryStore
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


def _drive(coroutine: Any) -> Any:
    """Run a coroutine that never waits (the in-process store's) without an event loop's overhead."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    raise RuntimeError("the coroutine waited")


def spend_per_hour(store: MemoryStore) -> Callable[[dict[str, Any]], object]:
    """What a velocity rule adds to a request in one process: one read at admission, one add at settlement."""
    clock = iter(range(10**9))

    def work(body: dict[str, Any]) -> object:
        now = 1_800_000_000.0 + next(clock)
        _drive(store.window_sum("spend:session", 0, 60, now))
        return _drive(store.window_sum("spend:session", 1_000_000, 60, now))

    return work


def watcher_round(rows: int) -> dict[str, Any]:
    """One watcher round (anomalies, cache shares, cache-write spend, key hours) over a synthetic ledger of
    ``rows`` requests spread over 30 days: off the request path, in the watcher's own thread."""
    import tempfile

    from tokenctl.config import parse_config
    from tokenctl.ledger.writer import LedgerWriter
    from tokenctl.testing.synthetic import synthetic_entries
    from tokenctl.watch.watcher import Watcher

    folder = Path(tempfile.mkdtemp(prefix="tokenctl-watch-bench-"))
    path = str(folder / "ledger.db")
    now = 1_800_000_000.0
    writer = LedgerWriter(path)
    writer.start()
    for entry in synthetic_entries(rows, start=now - 30 * 86400, days=30 - 0.01):
        writer.record(entry)
    writer.close()
    loops = [{"name": "v", "spend_per_hour_x_baseline": 5}]
    config = parse_config(
        {"ledger": {"path": path}, "alerts": {"cache_write_usd_per_day": 1}, "loops": loops}, source="bench"
    )

    class _Clock:
        clock = staticmethod(lambda: now)

    watcher = Watcher(config, _Clock(), None, None, lambda event: None)  # type: ignore[arg-type]
    watcher.prices = _Prices()  # type: ignore[assignment]
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        alerts, baselines, _ = watcher._read(now)
        timings.append(time.perf_counter() - started)
    return {
        "ledger_rows": rows,
        "first_round_s": round(timings[0], 3),  # reads 14 days of key hours
        "later_round_s": round(min(timings[1:]), 3),
        "alerts_found": len(alerts),
        "keys_with_baseline": len(baselines or {}),
    }


class _Prices:
    def cost(self, provider: Any, model: str, usage: Any) -> Any:
        from tokenctl.testing.synthetic import price
        from tokenctl.types import Cost

        total = price(model, usage)
        return Cost(total, total, True, "synthetic")


def main() -> None:
    health = CacheHealth()
    detectors: dict[str, Callable[[dict[str, Any]], object]] = {
        "repeated tool calls": lambda b: trailing_repeats(b, API),
        "near-identical answers (rule count 5)": lambda b: trailing_similar_answers(b, API, 5),
        "turn boundary (unattended)": lambda b: at_turn_boundary(b, API),
        "first prompt digest (Ralph)": lambda b: first_prompt_digest(b, API),
        "routing trajectory signals": lambda b: read_signals(b, API),
        "prompt-cache prefix digests": lambda b: health.prefix("session", b),
        "spend per hour (in-process store)": spend_per_hour(MemoryStore()),
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
    result["watcher round"] = watcher_round(200_000)
    out = ROOT / "bench" / "results" / "detectors.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
