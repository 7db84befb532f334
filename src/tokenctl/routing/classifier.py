"""The routing classifier: does this prompt need the premium model? CPU only, no network, well under 1 ms.

A logistic regression over hashed word and word-pair features of the prompt plus a few shape
features (length, digits, maths symbols, answer options). The score is the estimated probability
that the weak model gets the prompt wrong; a threshold turns it into a tier. The weights ship in
the package (``routing/model/router.json.gz``) and are rebuilt by ``tokenctl router train``.
"""

from __future__ import annotations

import gzip
import math
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import orjson

BUCKETS = 1 << 16
LENGTH = BUCKETS  # a real-valued feature past the hashed ones: log2 of the prompt length, scaled
MAX_CHARS = 1600  # the start and end of long prompts: enough signal, bounded time (decision p99 < 1 ms)
_WORD = re.compile(rb"[a-z]+|\d+")
_DIGITS = tuple(bytes([c]) for c in b"0123456789")
_MATHS = tuple(bytes([c]) for c in b"=+*/^<>%$\\")
_NUMBER, _DIGIT = b"<num>", b"<digit>"
_PUNCTUATION = frozenset(b"!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


def features(text: str) -> list[int]:
    """Hashed feature indices present in ``text`` (sorted, no repeats); ``length_value`` is the one real value.

    Works on the UTF-8 bytes (one regex pass, CRC-32 per feature) to stay far below a millisecond.
    """
    return sorted(_features(text)[0])


def _features(text: str) -> tuple[set[int], frozenset[int]]:
    """(all feature indices, the word and word-pair ones among them)."""
    if len(text) > MAX_CHARS:
        text = text[: MAX_CHARS // 2] + " " + text[-MAX_CHARS // 2 :]
    raw = text.lower().encode("utf-8", "replace")
    words = [_NUMBER if w.isdigit() and len(w) > 1 else (_DIGIT if w.isdigit() else w) for w in _WORD.findall(raw)]
    crc, mask = zlib.crc32, BUCKETS - 1
    found = {crc(b"w:" + w) & mask for w in words}
    prefixes = [crc(b"b:" + w + b" ") for w in words]  # CRC-32 continues from a prefix's value
    found.update(crc(b, p) & mask for p, b in zip(prefixes, words[1:]))
    lexical = frozenset(found)
    shape = (
        ("len", min(12, int(math.log2(len(text) + 1)))),
        ("words", min(10, int(math.log2(len(words) + 1)))),
        ("digits", min(8, int(math.log2(sum(map(raw.count, _DIGITS)) + 1)))),
        ("maths", min(6, int(math.log2(sum(raw.count(c) for c in _MATHS) + 1)))),
        ("lines", min(6, int(math.log2(text.count("\n") + 1)))),
    )
    found.update(crc(f"{name}:{value}".encode()) & mask for name, value in shape)
    found.update(crc(b"p:" + bytes([c])) & mask for c in _PUNCTUATION.intersection(raw))
    found.add(crc(b"bias") & mask)
    return found, lexical


def length_value(text: str) -> float:
    return math.log2(len(text) + 1) / 10 - 0.8


@dataclass
class Classifier:
    weights: dict[int, float]
    threshold: float = 0.5
    meta: dict[str, Any] | None = None

    def score(self, text: str) -> float:
        """Estimated probability that the premium model does better on this prompt (higher: needs premium)."""
        return self.judge(text)[0]

    def judge(self, text: str) -> tuple[float, float, list[int]]:
        """(score, coverage, feature indices): coverage is the share of the text's words and word pairs that
        the model learned a weight for; a text far from anything it was trained on has a low coverage."""
        found, lexical = _features(text)
        weights = self.weights
        z = sum(weights.get(i, 0.0) for i in found) + weights.get(LENGTH, 0.0) * length_value(text)
        known = sum(1 for i in lexical if i in weights)
        coverage = known / len(lexical) if lexical else 0.0
        return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z)))), coverage, sorted(found)

    def score_features(self, found: Iterable[int], length: float) -> float:
        z = sum(self.weights.get(i, 0.0) for i in found) + self.weights.get(LENGTH, 0.0) * length
        return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))

    @property
    def coverage_floor(self) -> float:
        """Below this coverage a text is outside what the model knows (the training prompts' 2nd percentile)."""
        return float((self.meta or {}).get("coverage_floor", 0.0))

    @property
    def length_threshold_chars(self) -> int | None:
        """The prompt length that splits the training prompts at the default premium share (the fallback rule)."""
        value = (self.meta or {}).get("length_threshold_chars")
        return int(value) if value is not None else None

    def threshold_for_share(self, premium_share: float) -> float:
        """The threshold that sent ``premium_share`` of the training prompts to premium (from stored quantiles)."""
        quantiles = (self.meta or {}).get("score_quantiles") or []
        if len(quantiles) != 21:
            raise ValueError("this router model has no score quantiles; set a threshold instead of premium_share")
        position = (1 - premium_share) * 20
        low = int(position)
        if low >= 20:
            return float(quantiles[20])
        return float(quantiles[low] + (quantiles[low + 1] - quantiles[low]) * (position - low))

    def needs_premium(self, text: str) -> bool:
        return self.score(text) >= self.threshold

    # -- artifact ---------------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        data = {
            "format": "tokenctl-router-1",
            "buckets": BUCKETS,
            "threshold": self.threshold,
            "meta": self.meta or {},
            "weights": {str(i): round(w, 5) for i, w in self.weights.items() if abs(w) >= 1e-4},
        }
        Path(path).write_bytes(gzip.compress(orjson.dumps(data, option=orjson.OPT_SORT_KEYS), mtime=0))

    @classmethod
    def load(cls, path: str | Path | None = None) -> Classifier:
        raw = (
            Path(path).read_bytes()
            if path
            else (resources.files("tokenctl.routing") / "model" / "router.json.gz").read_bytes()
        )
        data = orjson.loads(gzip.decompress(raw))
        if data.get("format") != "tokenctl-router-1" or data.get("buckets") != BUCKETS:
            raise ValueError(f"{path or 'the packaged router model'} is not a tokenctl router model of this version")
        return cls({int(k): float(v) for k, v in data["weights"].items()}, float(data["threshold"]), data["meta"])


def train(
    texts: Iterable[str], labels: Iterable[int], *, epochs: int = 4, rate: float = 0.02, l2: float = 1e-3, seed: int = 0
) -> dict[int, float]:
    """Logistic regression by AdaGrad over the hashed features; deterministic for a given seed."""
    rows = [(features(t), length_value(t), y) for t, y in zip(texts, labels)]
    return train_rows(rows, epochs=epochs, rate=rate, l2=l2, seed=seed)


def coverage_floor(texts: list[str], labels: list[int], *, percentile: float = 0.02) -> float:
    """The coverage held-out prompts of the training data reach (their 2nd percentile, by default).

    In-sample every word has a weight, so the floor is read on a fifth of the prompts left out of training."""
    train_texts = [t for i, t in enumerate(texts) if i % 5]
    train_labels = [y for i, y in enumerate(labels) if i % 5]
    held_out = [t for i, t in enumerate(texts) if not i % 5]
    if not held_out or not train_texts:
        return 0.0
    model = Classifier(train(train_texts, train_labels))
    ordered = sorted(model.judge(t)[1] for t in held_out)
    return ordered[int(percentile * (len(ordered) - 1))]


def train_rows(
    rows: list[tuple[list[int], float, int]], *, epochs: int = 4, rate: float = 0.02, l2: float = 1e-3, seed: int = 0
) -> dict[int, float]:
    """The same, from (feature indices, length value, label) rows: what the ledger keeps of routed turns."""
    order = list(range(len(rows)))
    weights: dict[int, float] = {}
    squares: dict[int, float] = {}
    state = seed or 1
    for _ in range(epochs):
        state = _shuffle(order, state)
        for index in order:
            active, length, label = rows[index]
            z = sum(weights.get(i, 0.0) for i in active) + weights.get(LENGTH, 0.0) * length
            gradient = 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z)))) - label
            for i, x in ((i, 1.0) for i in active):
                _step(weights, squares, i, gradient * x, l2, rate)
            _step(weights, squares, LENGTH, gradient * length, l2, rate)
    return weights


def _step(
    weights: dict[int, float], squares: dict[int, float], i: int, gradient: float, l2: float, rate: float
) -> None:
    w = weights.get(i, 0.0)
    g = gradient + l2 * w
    squares[i] = squares.get(i, 0.0) + g * g
    weights[i] = w - rate * g / math.sqrt(squares[i] + 1e-8)


def _shuffle(items: list[int], state: int) -> int:
    """Fisher-Yates with a small LCG, so training does not depend on Python's random module's version."""
    for i in range(len(items) - 1, 0, -1):
        state = (state * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        j = (state >> 33) % (i + 1)
        items[i], items[j] = items[j], items[i]
    return state
