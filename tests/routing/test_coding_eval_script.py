"""bench/router_coding_eval.py, the script behind the README's coding numbers, on synthetic outcomes whose
answer is known: a learnable signal must come out as beating prompt length and random, and labels that have
nothing to do with the text must come out as indistinguishable."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path
from types import ModuleType

from tokenctl.routing.classifier import features, length_value

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "router_coding_eval.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("router_coding_eval", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def table(script: ModuleType, learnable: bool, n: int = 400) -> object:
    rng = random.Random(11)
    prompts, strong, weak = [], [], []
    for i in range(n):
        hard = rng.random() < 0.4
        topic = "concurrency deadlock in the scheduler" if hard else "typo in the readme heading"
        prompts.append(f"Issue {i}: {topic}. " + "Some context words. " * rng.randrange(1, 30))
        needs_premium = hard if learnable else rng.random() < 0.4
        strong.append(1.0)
        weak.append(0.0 if needs_premium else 1.0)
    rows = [(features(p), length_value(p)) for p in prompts]
    return script.Table(prompts, {"s": strong, "w": weak}, rows)


def test_a_signal_in_the_text_beats_prompt_length_and_random() -> None:
    script = load_script()
    result = script.evaluate_pair(table(script, learnable=True), "s", "w", [], repeats=2, resamples=10)
    assert result["verdict"] == "beats prompt length and random (intervals do not overlap)"
    assert result["classifier"]["apgr"] > 0.8 and result["classifier_minus_length"]["ci95"][0] > 0


def test_labels_unrelated_to_the_text_are_not_called_a_win() -> None:
    script = load_script()
    result = script.evaluate_pair(table(script, learnable=False), "s", "w", [], repeats=2, resamples=10)
    assert result["verdict"] in ("not distinguishable from prompt length", "worse than prompt length")
    low, high = result["classifier"]["ci95"]
    assert low < 0.5 < high + 0.05
