"""Judging a router on per-prompt outcomes of a strong and a weak model (RouteLLM's metrics).

A router ranks prompts by score; sending the top k to the strong model gives a quality
(mean score: the strong model's outcome for routed prompts, the weak one's for the rest).

- PGR(k): share of the weak→strong quality gap recovered with k strong calls.
- APGR: area under PGR over the strong-call share from 0 to 100 % (random routing: 0.5).
- CPT(x): the smallest strong-call share that reaches PGR x.

Ties in score are broken by a fixed pseudo-random order (so a constant score behaves like random
routing, not like the file order). Confidence intervals come from bootstrap resampling of prompts.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Outcomes:
    prompts: list[str]
    strong: list[float]
    weak: list[float]


@dataclass(frozen=True, slots=True)
class Curve:
    calls: list[float]  # strong-call share, 0..1, one point per k
    quality: list[float]  # mean outcome at that share
    pgr: list[float]

    def apgr(self) -> float:
        area = 0.0
        for i in range(1, len(self.calls)):
            area += (self.calls[i] - self.calls[i - 1]) * (self.pgr[i] + self.pgr[i - 1]) / 2
        return area

    def cpt(self, target: float) -> float:
        return next((c for c, p in zip(self.calls, self.pgr) if p >= target - 1e-12), 1.0)


def read_outcomes(
    path: str | Path, prompt_col: str, strong_col: str, weak_col: str, drop: set[str] | None = None
) -> Outcomes:
    """Read a CSV of prompts and per-prompt outcomes (True/False or numbers); ``drop`` removes prompts."""
    csv.field_size_limit(1 << 30)
    prompts, strong, weak = [], [], []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in (prompt_col, strong_col, weak_col) if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: no column {', '.join(map(repr, missing))}; columns: {reader.fieldnames}")
        for line, row in enumerate(reader, 2):
            if drop and row[prompt_col].strip() in drop:
                continue
            prompts.append(row[prompt_col])
            strong.append(_outcome(row[strong_col], path, line))
            weak.append(_outcome(row[weak_col], path, line))
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return Outcomes(prompts, strong, weak)


def _outcome(value: str, path: str | Path, line: int) -> float:
    v = value.strip().lower()
    if v in ("true", "false"):
        return 1.0 if v == "true" else 0.0
    try:
        return float(v)
    except ValueError as exc:
        raise ValueError(f"{path}:{line}: outcome {value!r} is neither True/False nor a number") from exc


def contaminated(path: str | Path) -> set[str]:
    """Prompts listed in a RouteLLM ``contaminated_prompts.jsonl`` (its ``eval_prompt`` field)."""
    found = set()
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            found.add(json.loads(line)["eval_prompt"].strip())
    return found


def curve(
    scores: Sequence[float], strong: Sequence[float], weak: Sequence[float], tiebreak: Sequence[float] | None = None
) -> Curve:
    n = len(scores)
    tiebreak = tiebreak or tiebreak_order(n)
    order = sorted(range(n), key=lambda i: (-scores[i], tiebreak[i]))
    total_weak, total_strong = sum(weak), sum(strong)
    gap = (total_strong - total_weak) / n
    quality, running = [total_weak / n], total_weak
    for i in order:
        running += strong[i] - weak[i]
        quality.append(running / n)
    pgr = [(q - total_weak / n) / gap if gap else 0.0 for q in quality]
    return Curve([k / n for k in range(n + 1)], quality, pgr)


def tiebreak_order(n: int, seed: int = 12345) -> list[float]:
    rng = random.Random(seed)
    return [rng.random() for _ in range(n)]


@dataclass(frozen=True, slots=True)
class Summary:
    name: str
    apgr: float
    cpt50: float
    cpt80: float
    ci: dict[str, tuple[float, float]]  # 95 % bootstrap interval per metric

    def as_dict(self) -> dict[str, Any]:
        return {
            "router": self.name,
            "apgr": round(self.apgr, 4),
            "cpt50": round(self.cpt50, 4),
            "cpt80": round(self.cpt80, 4),
            "ci95": {k: [round(a, 4), round(b, 4)] for k, (a, b) in self.ci.items()},
        }


def summarize(name: str, scores: Sequence[float], data: Outcomes, *, resamples: int = 200, seed: int = 1) -> Summary:
    whole = curve(scores, data.strong, data.weak)
    rng = random.Random(seed)
    n = len(scores)
    draws: dict[str, list[float]] = {"apgr": [], "cpt50": [], "cpt80": []}
    for _ in range(resamples):
        picks = [rng.randrange(n) for _ in range(n)]
        c = curve(
            [scores[i] for i in picks],
            [data.strong[i] for i in picks],
            [data.weak[i] for i in picks],
            [rng.random() for _ in picks],
        )
        draws["apgr"].append(c.apgr())
        draws["cpt50"].append(c.cpt(0.5))
        draws["cpt80"].append(c.cpt(0.8))
    return Summary(name, whole.apgr(), whole.cpt(0.5), whole.cpt(0.8), {k: _interval(v) for k, v in draws.items()})


def _interval(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return ordered[int(0.025 * (len(ordered) - 1))], ordered[int(0.975 * (len(ordered) - 1))]


def random_baseline(data: Outcomes, seeds: int = 100) -> Summary:
    """Random routing, over ``seeds`` random orders: the mean, and the 2.5–97.5 % range across seeds."""
    n = len(data.prompts)
    results: dict[str, list[float]] = {"apgr": [], "cpt50": [], "cpt80": []}
    for seed in range(seeds):
        rng = random.Random(1000 + seed)
        c = curve([rng.random() for _ in range(n)], data.strong, data.weak)
        results["apgr"].append(c.apgr())
        results["cpt50"].append(c.cpt(0.5))
        results["cpt80"].append(c.cpt(0.8))
    mean = {k: sum(v) / len(v) for k, v in results.items()}
    return Summary(
        f"random ({seeds} seeds)",
        mean["apgr"],
        mean["cpt50"],
        mean["cpt80"],
        {k: _interval(v) for k, v in results.items()},
    )


def baselines(data: Outcomes, resamples: int) -> list[Summary]:
    """Prompt length (longer → strong), oracle, and random. Always-weak / always-strong are the curve's ends."""
    oracle = [s - w for s, w in zip(data.strong, data.weak)]
    return [
        random_baseline(data),
        summarize("prompt length", [float(len(p)) for p in data.prompts], data, resamples=resamples),
        summarize("oracle", oracle, data, resamples=resamples),
    ]


def endpoints(data: Outcomes, strong_cost: float, weak_cost: float) -> list[dict[str, Any]]:
    n = len(data.prompts)
    return [
        {
            "router": "always weak",
            "quality": round(sum(data.weak) / n, 4),
            "strong_calls": 0.0,
            "cost_per_prompt": weak_cost,
        },
        {
            "router": "always strong",
            "quality": round(sum(data.strong) / n, 4),
            "strong_calls": 1.0,
            "cost_per_prompt": strong_cost,
        },
    ]


def k_fold_scores(
    data: Outcomes, fit: Callable[[list[str], list[int]], Callable[[str], float]], folds: int = 5, seed: int = 7
) -> list[float]:
    """Out-of-fold scores: each prompt scored by a model trained without it."""
    rng = random.Random(seed)
    fold_of = [rng.randrange(folds) for _ in data.prompts]
    scores = [0.0] * len(data.prompts)
    for fold in range(folds):
        train = [i for i, f in enumerate(fold_of) if f != fold]
        model = fit([data.prompts[i] for i in train], [label(data, i) for i in train])
        for i, f in enumerate(fold_of):
            if f == fold:
                scores[i] = model(data.prompts[i])
    return scores


def label(data: Outcomes, i: int) -> int:
    """What the classifier learns: the strong model does better than the weak one on this prompt.

    (Learning "the weak model fails" instead scored lower: APGR 0.565 vs 0.583 on GSM8K, 5-fold.)
    """
    return 1 if data.strong[i] > data.weak[i] else 0
