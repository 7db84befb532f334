"""The routing classifier on coding outcomes it was not trained on: CRUXEval and SWE-bench Verified (train part).

    python bench/router_coding_eval.py [--data-dir ../shared/routing-data/code] [--repeats 10]
    python bench/router_coding_eval.py --train-shipped     # also rebuild the packaged model from both files

For each strong/weak pair, every prompt is scored by a classifier trained without it: 5 folds, the
training folds plus the whole other file (the shipped model's recipe), repeated over ``--repeats``
different fold splits. The 95 % intervals are taken over (fold split × bootstrap resample of prompts),
so they include the variance from how the folds fall, not only from which prompts were drawn. The
difference to prompt length is paired (the same split and resample for both). Writes
bench/results/router-coding.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenctl.routing import evaluate as ev
from tokenctl.routing.classifier import Classifier, coverage_floor, features, length_value, train_rows

ROOT = Path(__file__).resolve().parents[1]
FOLDS = 5
SHIPPED_MODEL = ROOT / "src" / "tokenctl" / "routing" / "model" / "router.json.gz"
# (file, strong, weak): a premium model against a small one, as a router would pair them
PAIRS = (
    ("cruxeval.csv", "gpt_4o", "deepseek_instruct_6.7b"),
    ("cruxeval.csv", "gpt_4o", "gpt_3.5_turbo_0613"),
    ("cruxeval.csv", "gpt_4_turbo_2024_04_09", "codellama_7b"),
    ("swebench_verified_2024systems_train.csv", "20240402_sweagent_gpt4", "20231010_rag_swellama13b"),
    ("swebench_verified_2024systems_train.csv", "20240628_autocoderover_v20240620", "20240402_rag_gpt4"),
)
SHIPPED_LABELS = {  # the pair whose outcomes label each file's prompts in the packaged model
    "cruxeval.csv": ("gpt_4o", "deepseek_instruct_6.7b"),
    "swebench_verified_2024systems_train.csv": ("20240402_sweagent_gpt4", "20231010_rag_swellama13b"),
}
Row = tuple[list[int], float, int]


@dataclass
class Table:
    prompts: list[str]
    columns: dict[str, list[float]]
    rows: list[tuple[list[int], float]]  # hashed features and length value per prompt, computed once

    def outcomes(self, strong: str, weak: str) -> ev.Outcomes:
        return ev.Outcomes(self.prompts, self.columns[strong], self.columns[weak])

    def labelled(self, strong: str, weak: str, picks: list[int] | range) -> list[Row]:
        s, w = self.columns[strong], self.columns[weak]
        return [(self.rows[i][0], self.rows[i][1], 1 if s[i] > w[i] else 0) for i in picks]


def read_table(path: Path) -> Table:
    csv.field_size_limit(1 << 30)
    with path.open(newline="", encoding="utf-8") as f:
        records = list(csv.DictReader(f))
    outcome_columns = [c for c in records[0] if c not in ("source", "task_id", "repo", "split", "prompt")]
    prompts = [r["prompt"] for r in records]
    columns = {c: [float(r[c]) for r in records] for c in outcome_columns}
    return Table(prompts, columns, [(features(p), length_value(p)) for p in prompts])


def out_of_fold(table: Table, strong: str, weak: str, other: list[Row], seed: int) -> list[float]:
    """Each prompt's score from a model trained on the other folds (and the other file)."""
    rng = random.Random(seed)
    fold_of = [rng.randrange(FOLDS) for _ in table.prompts]
    scores = [0.0] * len(table.prompts)
    for fold in range(FOLDS):
        train = [i for i, f in enumerate(fold_of) if f != fold]
        model = Classifier(train_rows(table.labelled(strong, weak, train) + other, seed=seed + 1))
        for i, f in enumerate(fold_of):
            if f == fold:
                scores[i] = model.score_features(*table.rows[i])
    return scores


def evaluate_pair(
    table: Table, strong: str, weak: str, other: list[Row], repeats: int, resamples: int
) -> dict[str, Any]:
    data = table.outcomes(strong, weak)
    n = len(data.prompts)
    lengths = [float(len(p)) for p in data.prompts]
    draws: dict[str, list[float]] = {"classifier": [], "prompt length": [], "random": [], "difference": []}
    point: dict[str, list[float]] = {"classifier": [], "prompt length": [], "random": []}
    for repeat in range(repeats):
        scores = out_of_fold(table, strong, weak, other, seed=100 + repeat)
        rng = random.Random(repeat)
        noise = [rng.random() for _ in range(n)]
        point["classifier"].append(ev.curve(scores, data.strong, data.weak).apgr())
        point["prompt length"].append(ev.curve(lengths, data.strong, data.weak, noise).apgr())
        point["random"].append(ev.curve(noise, data.strong, data.weak).apgr())
        for _ in range(resamples):
            picks = [rng.randrange(n) for _ in range(n)]
            strong_s, weak_s = [data.strong[i] for i in picks], [data.weak[i] for i in picks]
            tie = [rng.random() for _ in picks]
            ours = ev.curve([scores[i] for i in picks], strong_s, weak_s, tie).apgr()
            length = ev.curve([lengths[i] for i in picks], strong_s, weak_s, tie).apgr()
            draws["classifier"].append(ours)
            draws["prompt length"].append(length)
            draws["random"].append(ev.curve([rng.random() for _ in picks], strong_s, weak_s, tie).apgr())
            draws["difference"].append(ours - length)
    result: dict[str, Any] = {
        "data": None,  # the file name, set by the caller
        "strong": strong,
        "weak": weak,
        "prompts": n,
        "strong_quality": round(sum(data.strong) / n, 4),
        "weak_quality": round(sum(data.weak) / n, 4),
        "weak_wins_share": round(sum(1 for s, w in zip(data.strong, data.weak) if w > s) / n, 4),
    }
    for name in ("classifier", "prompt length", "random"):
        low, high = _interval(draws[name])
        result[name] = {"apgr": round(statistics.fmean(point[name]), 4), "ci95": [round(low, 4), round(high, 4)]}
    low, high = _interval(draws["difference"])
    result["classifier_minus_length"] = {"ci95": [round(low, 4), round(high, 4)]}
    result["verdict"] = _verdict(result)
    return result


def _interval(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return ordered[int(0.025 * (len(ordered) - 1))], ordered[int(0.975 * (len(ordered) - 1))]


def _verdict(r: dict[str, Any]) -> str:
    ours, length, rand = r["classifier"]["ci95"], r["prompt length"]["ci95"], r["random"]["ci95"]
    diff = r["classifier_minus_length"]["ci95"]
    beats_both = ours[0] > length[1] and ours[0] > rand[1]
    if beats_both:
        return "beats prompt length and random (intervals do not overlap)"
    if diff[0] > 0:
        return "better than prompt length (paired difference above 0), intervals overlap"
    if diff[1] < 0:
        return "worse than prompt length"
    return "not distinguishable from prompt length"


def train_shipped(tables: dict[str, Table], out: Path, premium_share: float = 0.3) -> dict[str, Any]:
    rows: list[Row] = []
    for name, table in tables.items():
        strong, weak = SHIPPED_LABELS[name]
        rows += table.labelled(strong, weak, range(len(table.prompts)))
    model = Classifier(train_rows(rows, seed=1))
    prompts = [p for t in tables.values() for p in t.prompts]
    judged = [model.judge(p) for p in prompts]
    scores = sorted(s for s, _, _ in judged)
    lengths = sorted(len(p) for p in prompts)
    at = int((1 - premium_share) * (len(scores) - 1))
    model.threshold = scores[at]
    model.meta = {
        "trained_on": {name: f"{s} vs {w}" for name, (s, w) in SHIPPED_LABELS.items()},
        "prompts": len(prompts),
        "premium_share_at_threshold": premium_share,
        "score_quantiles": [round(scores[int(q / 20 * (len(scores) - 1))], 5) for q in range(21)],
        "coverage_floor": round(coverage_floor(prompts, [label for _, _, label in rows]), 4),
        "length_threshold_chars": lengths[at],
        "evaluation": "bench/results/router-coding.json",
    }
    model.save(out)
    return model.meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "routing-data" / "code"))
    parser.add_argument("--repeats", type=int, default=10, help="fold splits (default 10)")
    parser.add_argument("--resamples", type=int, default=40, help="bootstrap resamples per split (default 40)")
    parser.add_argument("--pairs", type=int, default=len(PAIRS), help="evaluate only the first N pairs")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "router-coding.json"))
    parser.add_argument(
        "--train-shipped", action="store_true", help="rebuild src/tokenctl/routing/model/router.json.gz"
    )
    parser.add_argument("--only-train", action="store_true", help="rebuild the packaged model, keep the evaluation")
    args = parser.parse_args()
    started = time.perf_counter()
    names = sorted({name for name, _, _ in PAIRS})
    tables = {name: read_table(Path(args.data_dir) / name) for name in names}
    if args.only_train:
        report = json.loads(Path(args.out).read_text())
        report["shipped_model"] = train_shipped(tables, SHIPPED_MODEL)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {SHIPPED_MODEL} and {args.out}", file=sys.stderr)
        return
    results = []
    for name, strong, weak in PAIRS[: args.pairs]:
        other = [
            row
            for other_name, table in tables.items()
            if other_name != name
            for row in table.labelled(*SHIPPED_LABELS[other_name], range(len(table.prompts)))
        ]
        result = evaluate_pair(tables[name], strong, weak, other, args.repeats, args.resamples)
        result["data"] = name
        results.append(result)
        print(_line(result), file=sys.stderr, flush=True)
    report: dict[str, Any] = {
        "method": f"{FOLDS}-fold out-of-fold scores, trained on the other folds plus the other file; "
        f"{args.repeats} fold splits x {args.resamples} bootstrap resamples for the 95% intervals",
        "pairs": results,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if args.train_shipped:
        report["shipped_model"] = train_shipped(tables, SHIPPED_MODEL)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


def _line(r: dict[str, Any]) -> str:
    def show(name: str) -> str:
        x = r[name]
        return f"{name} {x['apgr']:.3f} [{x['ci95'][0]:.3f}, {x['ci95'][1]:.3f}]"

    diff = r["classifier_minus_length"]["ci95"]
    return (
        f"{r['data']}: {r['strong']} vs {r['weak']}: {show('classifier')}; {show('prompt length')}; "
        f"{show('random')}; classifier - length [{diff[0]:+.3f}, {diff[1]:+.3f}] -> {r['verdict']}"
    )


if __name__ == "__main__":
    main()
