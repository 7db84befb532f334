"""The router's metrics, the evaluation command and training, on small CSVs whose right answers are known."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import orjson
import pytest

from tokenctl.cli.main import main
from tokenctl.routing import evaluate as ev
from tokenctl.routing.classifier import Classifier


def test_oracle_and_reverse_oracle_bound_the_curve() -> None:
    strong = [1.0, 1.0, 0.0, 1.0]
    weak = [0.0, 1.0, 0.0, 1.0]  # only prompt 0 gains from the strong model
    best = ev.curve([1.0, 0.0, 0.0, 0.0], strong, weak)
    assert best.quality == [0.5, 0.75, 0.75, 0.75, 0.75]
    assert best.cpt(0.5) == 0.25 and best.cpt(1.0) == 0.25
    assert best.apgr() == pytest.approx(1 - 0.125)  # PGR 1 from a quarter of the calls on; half a step before
    worst = ev.curve([0.0, 1.0, 1.0, 1.0], strong, weak)
    assert worst.cpt(0.5) == 1.0 and worst.apgr() == pytest.approx(0.125)


def test_random_routing_recovers_half_the_gap_on_average() -> None:
    rng = random.Random(3)
    strong = [float(rng.random() < 0.8) for _ in range(2000)]
    weak = [float(rng.random() < 0.6) for _ in range(2000)]
    data = ev.Outcomes([str(i) for i in range(2000)], strong, weak)
    baseline = ev.random_baseline(data, seeds=100)
    assert baseline.apgr == pytest.approx(0.5, abs=0.02)
    assert baseline.ci["apgr"][0] < 0.5 < baseline.ci["apgr"][1]


def write_outcomes(path: Path, n: int = 600, seed: int = 5) -> None:
    """Prompts about topology are hard for the weak model; length carries no signal."""
    rng = random.Random(seed)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["question", "big", "small"])
        for i in range(n):
            hard = rng.random() < 0.3
            topic = "compact hausdorff topology" if hard else "simple arithmetic sum"
            filler = " ".join(rng.choice(["alpha", "beta", "gamma"]) for _ in range(rng.randint(3, 40)))
            strong_ok = rng.random() < 0.9
            weak_ok = rng.random() < (0.1 if hard else 0.85)
            writer.writerow([f"Q{i}: {topic} {filler}?", strong_ok, weak_ok])


def test_eval_command_beats_the_baselines_on_a_learnable_signal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "outcomes.csv"
    write_outcomes(data)
    plot = tmp_path / "curve.png"
    code = main(
        [
            "router",
            "eval",
            "--data",
            str(data),
            "--prompt-col",
            "question",
            "--strong-col",
            "big",
            "--weak-col",
            "small",
            "--kfold",
            "3",
            "--strong-cost",
            "10",
            "--weak-cost",
            "1",
            "--resamples",
            "50",
            "--plot",
            str(plot),
            "--format",
            "json",
        ]
    )
    assert code == 0
    report = orjson.loads(capsys.readouterr().out)
    routers = {r["router"].split(" (")[0]: r for r in report["routers"]}
    ours, length, rand = routers["tokenctl classifier"], routers["prompt length"], routers["random"]
    assert ours["apgr"] > length["apgr"] + 0.1 and ours["apgr"] > rand["apgr"] + 0.1
    assert ours["ci95"]["apgr"][0] <= ours["apgr"] <= ours["ci95"]["apgr"][1]
    assert ours["cpt80"] < rand["cpt80"]
    assert ours["saving_at_cpt50"] == pytest.approx(1 - (ours["cpt50"] * 10 + (1 - ours["cpt50"])) / 10, abs=1e-3)
    assert report["endpoints"][0] == {
        "router": "always weak",
        "quality": report["weak_quality"],
        "strong_calls": 0.0,
        "cost_per_prompt": 1.0,
    }
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_writes_a_deterministic_model_that_routes_the_hard_prompts(tmp_path: Path) -> None:
    data = tmp_path / "outcomes.csv"
    write_outcomes(data)
    first, second = tmp_path / "a.json.gz", tmp_path / "b.json.gz"
    for out in (first, second):
        assert (
            main(
                [
                    "router",
                    "train",
                    "--data",
                    str(data),
                    "--prompt-col",
                    "question",
                    "--strong-col",
                    "big",
                    "--weak-col",
                    "small",
                    "--premium-share",
                    "0.3",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
    assert first.read_bytes() == second.read_bytes()
    model = Classifier.load(first)
    assert model.needs_premium("Q9: compact hausdorff topology alpha?")
    assert not model.needs_premium("Q9: simple arithmetic sum alpha?")
    assert model.meta and model.meta["trained_on"] == ["outcomes.csv"]


def test_eval_explains_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "outcomes.csv"
    data.write_text("prompt,s,w\nhello,True,maybe\n")
    assert main(["router", "eval", "--data", str(data), "--strong-col", "s", "--weak-col", "nope"]) == 2
    assert "no column 'nope'" in capsys.readouterr().err
    assert main(["router", "eval", "--data", str(data), "--strong-col", "s", "--weak-col", "w"]) == 2
    assert "neither True/False nor a number" in capsys.readouterr().err


def test_the_packaged_model_loads_and_scores() -> None:
    model = Classifier.load()
    assert 0.0 < model.threshold < 1.0
    assert set(model.meta["trained_on"]) == {"cruxeval.csv", "swebench_verified_2024systems_train.csv"}
    assert 0.3 < model.coverage_floor < 1.0 and model.length_threshold_chars
    quantiles = model.meta["score_quantiles"]
    assert quantiles[14] - 1e-5 <= model.threshold <= quantiles[15]  # the 70th percentile: 30 % go to premium
    assert all(0.0 < model.score(p) < 1.0 for p in ("hi", "x" * 100_000, "Prove that √2 is irrational."))


def test_premium_share_picks_the_threshold_from_the_models_quantiles() -> None:
    model = Classifier.load()
    quantiles = model.meta["score_quantiles"]
    assert model.threshold_for_share(0.5) == pytest.approx(quantiles[10])
    assert model.threshold_for_share(0.25) == pytest.approx(quantiles[15])
    assert quantiles[5] < model.threshold_for_share(0.7) < quantiles[7]
    assert model.threshold_for_share(0.0) == quantiles[20]
