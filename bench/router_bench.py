"""Routing classifier decision time: p50 / p99 / max per prompt on real prompts and on 50 KB agent bodies.

    python bench/router_bench.py [--data ../shared/routing-data/routellm-evals/mmlu_responses.csv]

Writes bench/results/router.json. The target is p99 <= 1 ms on one core.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

from tokenctl.routing.classifier import Classifier

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(ROOT.parent / "shared/routing-data/routellm-evals/mmlu_responses.csv"))
    args = parser.parse_args()
    csv.field_size_limit(1 << 30)
    with open(args.data, newline="", encoding="utf-8") as f:
        prompts = [row["prompt"] for row in csv.DictReader(f)]
    agent_bodies = [("You are a coding agent. " * 2000) + p for p in prompts[:500]]  # ~50 KB each
    classifier = Classifier.load()
    result = {}
    for name, batch in (("benchmark prompts", prompts), ("50 KB agent prompts", agent_bodies)):
        times = []
        for text in batch:
            started = time.perf_counter()
            classifier.score(text)
            times.append((time.perf_counter() - started) * 1000)
        times.sort()
        result[name] = {
            "prompts": len(times),
            "p50_ms": round(times[len(times) // 2], 4),
            "p99_ms": round(times[int(0.99 * (len(times) - 1))], 4),
            "max_ms": round(times[-1], 4),
        }
    out = ROOT / "bench" / "results" / "router.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
