"""Which prompt features carry routing signal on coding outcomes? The exploration behind the packaged router.

    pip install numpy scipy scikit-learn wordllama==0.4.0.post1   # not tokenctl dependencies
    python bench/router_feature_exploration.py [--data-dir ../shared/routing-data/code] [--seeds 3]

Out-of-fold APGR (5 folds, mean over ``--seeds`` fold splits) of logistic regressions on: tokenctl's hashed
n-grams, structural code features, WordLlama's 256-dimensional static embeddings (the weights and tokenizer
ship in its PyPI wheel; loaded from the wheel's files, no download), embeddings plus structure, and, as a
ceiling for any text-free difficulty estimate, the oracle "mean pass rate of every model in the file".
Prints one line per strong/weak pair; the README quotes the ranges.
"""

from __future__ import annotations

import argparse
import csv
import math
import random
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
from scipy.sparse import csr_matrix
from sklearn.linear_model import LogisticRegression

from tokenctl.routing import evaluate as ev
from tokenctl.routing.classifier import BUCKETS, features

sys.path.insert(0, str(Path(__file__).parent))
from router_coding_eval import PAIRS

ROOT = Path(__file__).resolve().parents[1]
KEYWORDS = (
    "for ",
    "while ",
    "if ",
    "return",
    "sort",
    "split",
    "join",
    "replace",
    "[::",
    "count",
    "index",
    "pop",
    "append",
    "dict",
    "set(",
    "lambda",
    "%",
    "//",
    "**",
    "range(",
    "len(",
    "str",
    "isdigit",
    "upper",
    "lower",
    "find",
    "zip",
    "enumerate",
    "try",
    "elif",
    "else",
)


def hashed(texts: list[str]) -> Any:
    indices: list[int] = []
    pointers = [0]
    for text in texts:
        indices += features(text)
        pointers.append(len(indices))
    return csr_matrix(([1.0] * len(indices), indices, pointers), shape=(len(texts), BUCKETS))


def structure(texts: list[str]) -> Any:
    rows = []
    for text in texts:
        code = text.split("```")[1] if "```" in text else text
        row = [
            math.log1p(len(text)),
            math.log1p(len(code)),
            math.log1p(code.count("\n")),
            math.log1p(len(re.findall(r"\w+", code))),
        ]
        row += [math.log1p(code.count(k)) for k in KEYWORDS]
        depth = max((len(line) - len(line.lstrip()) for line in code.split("\n")), default=0) / 4
        row += [
            float("containing the output" in text),
            math.log1p(text.count("```")),
            math.log1p(text.count("Traceback")),
            depth,
        ]
        rows.append(row)
    return np.array(rows)


def embeddings() -> Any:
    import wordllama
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    home = Path(wordllama.__file__).parent
    tokenizer = Tokenizer.from_file(str(home / "tokenizers" / "l2_supercat_tokenizer_config.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    table = load_file(str(home / "weights" / "l2_supercat_256.safetensors"))["embedding.weight"].astype(np.float32)

    def embed(texts: list[str]) -> Any:
        out = []
        for text in texts:
            ids = tokenizer.encode(text[:4000], add_special_tokens=False).ids or [0]
            v = table[ids].mean(0)
            out.append(v / (np.linalg.norm(v) + 1e-9))
        return np.array(out)

    return embed


def out_of_fold(x: Any, y: Any, seed: int, c: float) -> list[float]:
    n = x.shape[0]
    rng = random.Random(seed)
    fold = np.array([rng.randrange(5) for _ in range(n)])
    dense = not hasattr(x, "tocsr")
    scores = np.zeros(n)
    for k in range(5):
        train, test = fold != k, fold == k
        xs = x
        if dense:
            mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
            xs = (x - mu) / sd
        model = LogisticRegression(C=c, max_iter=2000).fit(xs[train], y[train])
        scores[test] = model.predict_proba(xs[test])[:, 1]
    return list(scores)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "routing-data" / "code"))
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    csv.field_size_limit(1 << 30)
    embed = embeddings()
    cache: dict[str, dict[str, Any]] = {}
    for name, strong, weak in PAIRS:
        with (Path(args.data_dir) / name).open(newline="", encoding="utf-8") as f:
            records = list(csv.DictReader(f))
        texts = [r["prompt"] for r in records]
        if name not in cache:
            e, s = embed(texts), structure(texts)
            cache[name] = {
                "hashed": (hashed(texts), 0.3),
                "structure": (s, 1.0),
                "embeddings": (e, 1.0),
                "embeddings+structure": (np.hstack([e, s]), 0.3),
            }
        data = ev.Outcomes(texts, [float(r[strong]) for r in records], [float(r[weak]) for r in records])
        y = np.array([ev.label(data, i) for i in range(len(texts))])
        line = {}
        for feature, (x, c) in cache[name].items():
            apgrs = [ev.curve(out_of_fold(x, y, seed, c), data.strong, data.weak).apgr() for seed in range(args.seeds)]
            line[feature] = round(float(np.mean(apgrs)), 3)
        models = [k for k in records[0] if k not in ("source", "task_id", "repo", "split", "prompt")]
        difficulty = [1 - np.mean([float(r[m]) for m in models]) for r in records]
        line["oracle difficulty"] = round(ev.curve(difficulty, data.strong, data.weak).apgr(), 3)
        print(f"{name} {strong} vs {weak}: {line}", flush=True)


if __name__ == "__main__":
    main()
