"""``tokenctl router eval|train``: measure a router on per-prompt outcomes, and rebuild the packaged classifier."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from tokenctl.cli.render import render_table
from tokenctl.config import Config
from tokenctl.ledger.db import connect
from tokenctl.ledger.feedback import FeedbackError, parse_outcome, record_feedback
from tokenctl.routing import evaluate as ev
from tokenctl.routing.classifier import Classifier, coverage_floor, features, length_value, train, train_rows
from tokenctl.routing.ledger_training import LedgerLabels, labels_from_ledger

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "routing" / "model" / "router.json.gz"


def add_router_commands(sub: Any, load: Callable[[argparse.Namespace], Config]) -> None:
    r = sub.add_parser("router", help="evaluate and train the routing classifier").add_subparsers(title="router")
    e = r.add_parser("eval", help="APGR and CPT with bootstrap intervals next to baselines, from a CSV of outcomes")
    _data_arguments(e)
    e.add_argument("--strong-cost", type=float, help="cost of one strong-model answer (any unit)")
    e.add_argument("--weak-cost", type=float, help="cost of one weak-model answer (same unit)")
    how = e.add_mutually_exclusive_group()
    how.add_argument(
        "--kfold",
        type=int,
        metavar="K",
        help="score each prompt with a model trained on the other folds of this file (in-benchmark)",
    )
    how.add_argument(
        "--train-on",
        metavar="CSV",
        help="train on another file with the same columns (leave-one-benchmark-out); its --drop is --train-drop",
    )
    how.add_argument("--model", help="a trained model file (default: the packaged one)")
    e.add_argument("--train-drop", metavar="JSONL", help="contaminated prompts to leave out of --train-on")
    e.add_argument("--resamples", type=int, default=200, help="bootstrap resamples for the 95%% intervals")
    e.add_argument("--plot", metavar="PNG", help="draw the quality–cost curve (needs matplotlib: tokenctl[plot])")
    e.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    e.set_defaults(run=_eval)
    t = r.add_parser("train", help="train the classifier on one or more CSVs and write a model file")
    _data_arguments(t, many=True)
    t.add_argument("--out", default=str(DEFAULT_MODEL), help="model file to write (default: the packaged one)")
    t.add_argument(
        "--premium-share",
        type=float,
        default=0.3,
        help="default threshold: send this share of the training prompts to premium",
    )
    t.add_argument(
        "--from-ledger",
        action="store_true",
        help="also learn from this deployment's routed turns: escalations, errors and feedback label them",
    )
    t.add_argument("--since", metavar="YYYY-MM-DD", help="with --from-ledger: only turns from this day on (UTC)")
    t.add_argument("--ledger", help="SQLite ledger file or postgresql:// URL (default: the config's ledger)")
    t.add_argument("--min-turns", type=int, default=50, help="with --from-ledger: refuse with fewer labelled turns")
    t.set_defaults(run=lambda args: _train(args, load))
    fb = r.add_parser("feedback", help="record whether a session's work was done (CI passed, PR merged)")
    fb.add_argument("--session", help="the session id")
    fb.add_argument("--request", help="or one request id of the session")
    fb.add_argument("--outcome", required=True, help="success | failure (or merged, passed, rejected, failed; or 0..1)")
    fb.add_argument("--source", default="cli", help="who says so (ci, review, …), kept with the feedback")
    fb.add_argument("--ledger", help="SQLite ledger file or postgresql:// URL (default: the config's ledger)")
    fb.set_defaults(run=lambda args: _feedback(args, load), ledger_mode="write")


def _data_arguments(p: argparse.ArgumentParser, many: bool = False) -> None:
    p.add_argument(
        "--data", required=not many, action="append" if many else "store", help="CSV with one row per prompt"
    )
    p.add_argument("--prompt-col", default="prompt", help="the CSV column with the prompt text")
    p.add_argument("--strong-col", required=not many, help="strong model's outcome: True/False or a score in 0..1")
    p.add_argument("--weak-col", required=not many, help="weak model's outcome, as above")
    p.add_argument(
        "--drop",
        action="append" if many else "store",
        metavar="JSONL",
        help="RouteLLM contaminated_prompts.jsonl: prompts to leave out",
    )


def _read(path: str, args: argparse.Namespace, drop: str | None) -> ev.Outcomes:
    return ev.read_outcomes(
        path, args.prompt_col, args.strong_col, args.weak_col, ev.contaminated(drop) if drop else None
    )


def _fit(texts: list[str], labels: list[int]) -> Callable[[str], float]:
    return Classifier(train(texts, labels)).score


def _eval(args: argparse.Namespace) -> int:
    data = _read(args.data, args, args.drop)
    if args.kfold:
        name, scores = f"tokenctl classifier ({args.kfold}-fold on this file)", ev.k_fold_scores(data, _fit, args.kfold)
    elif args.train_on:
        other = _read(args.train_on, args, args.train_drop)
        model = _fit(other.prompts, [ev.label(other, i) for i in range(len(other.prompts))])
        name, scores = f"tokenctl classifier (trained on {Path(args.train_on).name})", [model(p) for p in data.prompts]
    else:
        classifier = Classifier.load(args.model)
        trained_on = (classifier.meta or {}).get("trained_on", [])
        name = f"tokenctl classifier ({Path(args.model).name if args.model else 'packaged'})"
        if Path(args.data).name in trained_on:
            print(
                f"warning: the model was trained on {Path(args.data).name}: these figures are in-sample; "
                "use --kfold or --train-on for honest ones",
                file=sys.stderr,
            )
        scores = [classifier.score(p) for p in data.prompts]
    ours = ev.summarize(name, scores, data, resamples=args.resamples)
    summaries = [ours, *ev.baselines(data, args.resamples)]
    report = _report(data, summaries, args)
    if args.plot:
        _plot(
            args.plot,
            data,
            {s.name: sc for s, sc in ((ours, scores), (summaries[2], [float(len(p)) for p in data.prompts]))},
            args,
        )
        report["plot"] = args.plot
    _print(report, args.format)
    return 0


def _report(data: ev.Outcomes, summaries: list[ev.Summary], args: argparse.Namespace) -> dict[str, Any]:
    n = len(data.prompts)
    report: dict[str, Any] = {
        "data": args.data,
        "prompts": n,
        "weak_quality": round(sum(data.weak) / n, 4),
        "strong_quality": round(sum(data.strong) / n, 4),
        "routers": [s.as_dict() for s in summaries],
    }
    costs = args.strong_cost is not None and args.weak_cost is not None
    report["endpoints"] = ev.endpoints(data, args.strong_cost if costs else 1.0, args.weak_cost if costs else 0.0)
    if not costs:
        for row in report["endpoints"]:
            row.pop("cost_per_prompt")
    if costs:
        for row in report["routers"]:
            for key in ("cpt50", "cpt80"):
                share = row[key]
                cost = share * args.strong_cost + (1 - share) * args.weak_cost
                row[f"cost_at_{key}"] = round(cost, 6)
                row[f"saving_at_{key}"] = round(1 - cost / args.strong_cost, 4) if args.strong_cost else None
    return report


def _print(report: dict[str, Any], fmt: str) -> None:
    if fmt == "json":
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return
    print(
        f"{report['data']}: {report['prompts']:,} prompts; quality weak {report['weak_quality']:.3f}, "
        f"strong {report['strong_quality']:.3f}"
    )
    costs = "cost_at_cpt50" in report["routers"][0]
    header = ["router", "APGR [95% CI]", "CPT(50%) [95% CI]", "CPT(80%) [95% CI]"] + (
        ["saving at CPT(50%)", "at CPT(80%)"] if costs else []
    )
    rows = []
    for r in report["routers"]:
        ci = r["ci95"]
        row = [
            r["router"],
            f"{r['apgr']:.3f} [{ci['apgr'][0]:.3f}, {ci['apgr'][1]:.3f}]",
            f"{r['cpt50']:.1%} [{ci['cpt50'][0]:.1%}, {ci['cpt50'][1]:.1%}]",
            f"{r['cpt80']:.1%} [{ci['cpt80'][0]:.1%}, {ci['cpt80'][1]:.1%}]",
        ]
        if costs:
            row += [f"{r['saving_at_cpt50']:.1%}", f"{r['saving_at_cpt80']:.1%}"]
        rows.append(row)
    print(render_table(header, rows))
    for end in report["endpoints"]:
        cost = f", cost per prompt {end['cost_per_prompt']:g}" if "cost_per_prompt" in end else ""
        print(
            f"{end['router']}: quality {end['quality']:.3f}, {end['strong_calls']:.0%} strong calls, "
            f"PGR {end['strong_calls']:.0f}{cost}"
        )
    print(
        "Random: mean of 100 seeds, 95% range across seeds; others: 95% bootstrap intervals. "
        "Savings are against always-strong."
    )


def _plot(path: str, data: ev.Outcomes, scored: dict[str, list[float]], args: argparse.Namespace) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ValueError("--plot needs matplotlib: pip install 'tokenctl[plot]'") from exc
    costs = args.strong_cost is not None and args.weak_cost is not None
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    oracle = [s - w for s, w in zip(data.strong, data.weak)]
    for name, scores in [*scored.items(), ("oracle", oracle), ("random", ev.tiebreak_order(len(oracle), 99))]:
        c = ev.curve(scores, data.strong, data.weak)
        xs = [x * args.strong_cost + (1 - x) * args.weak_cost for x in c.calls] if costs else c.calls
        ax.plot(xs, c.quality, label=name, linewidth=1.5 if name != "random" else 1)
    ax.set_xlabel("cost per prompt" if costs else "share of prompts sent to the strong model")
    ax.set_ylabel("quality (mean outcome)")
    ax.set_title(Path(args.data).name)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _train(args: argparse.Namespace, load: Callable[[argparse.Namespace], Config]) -> int:
    if not args.data and not args.from_ledger:
        raise SystemExit("router train: give --data CSV (with --strong-col and --weak-col), --from-ledger, or both")
    if args.data and not (args.strong_col and args.weak_col):
        raise SystemExit("router train: --data needs --strong-col and --weak-col")
    drops = args.drop or []
    rows: list[tuple[list[int], float, int]] = []
    texts: list[str] = []
    for i, path in enumerate(args.data or []):
        data = _read(path, args, drops[i] if i < len(drops) else None)
        texts += data.prompts
        rows += [(features(p), length_value(p), ev.label(data, j)) for j, p in enumerate(data.prompts)]
    meta: dict[str, Any] = {"trained_on": [Path(p).name for p in args.data or []]}
    if args.from_ledger:
        labels = _ledger_labels(args, load)
        meta["trained_on"].append(f"ledger ({len(labels.rows)} turns, {labels.positives} needed premium)")
        meta["ledger_labels"] = labels.why
        rows += labels.rows
    weights = train_rows(rows)
    classifier = Classifier(weights)
    scores = sorted(classifier.score_features(f, length) for f, length, _ in rows)
    classifier.threshold = scores[int((1 - args.premium_share) * (len(scores) - 1))]
    meta.update(
        prompts=len(rows),
        premium_share_at_threshold=args.premium_share,
        score_quantiles=[round(scores[int(q / 20 * (len(scores) - 1))], 5) for q in range(21)],
    )
    if texts and not args.from_ledger:  # the out-of-domain check needs the training texts
        lengths = sorted(len(t) for t in texts)
        meta["coverage_floor"] = round(coverage_floor(texts, [label for _, _, label in rows]), 4)
        meta["length_threshold_chars"] = lengths[int((1 - args.premium_share) * (len(lengths) - 1))]
    else:
        packaged = Classifier.load().meta or {}
        meta["length_threshold_chars"] = packaged.get("length_threshold_chars")
    classifier.meta = meta
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    classifier.save(args.out)
    print(
        f"trained on {len(rows):,} prompts and turns; threshold {classifier.threshold:.4f} sends "
        f"{args.premium_share:.0%} of them to premium; wrote {args.out}",
        file=sys.stderr,
    )
    return 0


def _ledger_labels(args: argparse.Namespace, load: Callable[[argparse.Namespace], Config]) -> LedgerLabels:
    config = load(args)
    c = config.routing.classifier
    if c is None:
        raise SystemExit("router train --from-ledger: the config has no routing.classifier (which tier is cheap?)")
    db = connect(config.ledger_path)
    try:
        labels = labels_from_ledger(db, {c.cheap_tier}, args.since)
    finally:
        db.close()
    for reason, turns in sorted(labels.why.items(), key=lambda x: -x[1]):
        print(f"  {turns:>7,}  {reason}", file=sys.stderr)
    negatives = len(labels.rows) - labels.positives
    if len(labels.rows) < args.min_turns or not labels.positives or not negatives:
        raise SystemExit(
            f"router train --from-ledger: {len(labels.rows)} labelled turns ({labels.positives} needed premium, "
            f"{negatives} did not); need at least {args.min_turns} with both kinds. Route more traffic through the "
            "cheap tier (or a dry run plus feedback), or lower --min-turns"
        )
    return labels


def _feedback(args: argparse.Namespace, load: Callable[[argparse.Namespace], Config]) -> int:
    config = load(args)
    db = connect(config.ledger_path)
    try:
        result = record_feedback(
            db,
            session_id=args.session,
            request_id=args.request,
            outcome=parse_outcome(_number_or_word(args.outcome)),
            source=args.source,
            key_id="cli",
            now=time.time(),
        )
    except FeedbackError as exc:
        raise SystemExit(f"router feedback: {exc}") from exc
    finally:
        db.close()
    print(f"recorded {result['id']}: session {result['session_id']} outcome {result['outcome']:g}")
    return 0


def _number_or_word(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value
