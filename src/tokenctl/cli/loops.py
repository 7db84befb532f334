"""``tokenctl loops list|resume``: sessions the loop rules paused or flagged, and letting one go on."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable
from typing import Any

import orjson

from tokenctl.cli.render import render_table
from tokenctl.config import Config
from tokenctl.ledger.audit import AuditEvent, read_audit, write_audit
from tokenctl.ledger.db import connect
from tokenctl.ledger.loop_resumes import resume, resumes

_COUNT = re.compile(r"called (\d+) times")


class LoopsError(LookupError):
    pass


def add_loop_commands(sub: Any, load: Callable[[argparse.Namespace], Config]) -> None:
    loops = sub.add_parser("loops", help="sessions paused or flagged by loop rules: list, resume").add_subparsers(
        title="loops commands"
    )
    ls = loops.add_parser("list", help="the latest detection per session and rule, newest first")
    ls.add_argument("--limit", type=int, default=50, help="most sessions to show")
    ls.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    ls.set_defaults(run=lambda args: _list(args, load))
    rs = loops.add_parser("resume", help="let a paused session go on (paused again after as many repeats more)")
    rs.add_argument("subject", help="the session id (or key:<key id>) from the pause message or `loops list`")
    rs.add_argument("--rule", help="the loop rule (default: the one that paused it last)")
    rs.add_argument("--by", default=os.environ.get("USER", "cli"), help="who resumed it, recorded in the audit log")
    rs.set_defaults(run=lambda args: _resume(args, load), ledger_mode="write")


def detections(db: Any, limit: int) -> list[dict[str, Any]]:
    """The latest pause or alert per (session, rule), with how often it fired and whether it was resumed."""
    events = read_audit(db, limit=10_000, action="loop_*")
    resumed = resumes(db)
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for event in events:  # newest first
        if event["action"] not in ("loop_pause", "loop_alert"):
            continue
        key = (event["subject"], event["rule"])
        if key not in latest:
            latest[key] = {**event, "times": 0}
        latest[key]["times"] += 1
    out = []
    for (subject, rule), event in latest.items():
        count = _COUNT.search(event["detail"] or "")
        allowed = resumed.get((subject, rule))
        out.append(
            {
                "subject": subject,
                "rule": rule,
                "action": event["action"].removeprefix("loop_"),
                "repeats": int(count.group(1)) if count else None,
                "last_seen": event["ts"],
                "times": event["times"],
                "resumed": allowed is not None and count is not None and allowed >= int(count.group(1)),
                "evidence": event["detail"],
            }
        )
    return out[:limit]


def _list(args: argparse.Namespace, load: Callable[[argparse.Namespace], Config]) -> int:
    db = connect(load(args).ledger_path)
    try:
        rows = detections(db, args.limit)
    finally:
        db.close()
    if args.format == "json":
        print(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return 0
    cols = ["subject", "rule", "action", "repeats", "times", "resumed", "last_seen"]
    print(
        render_table(
            cols, [["yes" if r[c] is True else "no" if r[c] is False else str(r[c]) for c in cols] for r in rows]
        )
    )
    return 0


def _resume(args: argparse.Namespace, load: Callable[[argparse.Namespace], Config]) -> int:
    config = load(args)
    db = connect(config.ledger_path)
    try:
        paused = [d for d in detections(db, 10_000) if d["subject"] == args.subject and d["action"] == "pause"]
        if args.rule:
            paused = [d for d in paused if d["rule"] == args.rule]
        if not paused:
            raise LoopsError(f"no loop rule paused {args.subject!r} (see `tokenctl loops list`)")
        found = paused[0]
        rule = next((r for r in config.loops if r.name == found["rule"]), None)
        step = rule.repeated_tool_calls if rule is not None else 1
        allowed = (found["repeats"] or 0) + step - 1  # paused again once it repeats `step` more times
        resume(db, args.subject, found["rule"], allowed, args.by)
        write_audit(
            db, AuditEvent(args.by, "loop_resume", found["rule"], args.subject, None, f"up to {allowed} repeats")
        )
    finally:
        db.close()
    print(f"resumed {args.subject} under {found['rule']}: paused again beyond {allowed} repeats")
    return 0
