"""``tokenctl loops list|resume``: sessions the loop rules paused or flagged, and letting one go on."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

import orjson

from tokenctl.cli.render import render_table
from tokenctl.config import Config
from tokenctl.ledger.db import connect
from tokenctl.ledger.loop_resumes import detections, resume_paused


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
        found, allowed = resume_paused(db, config.loops, args.subject, args.rule, args.by)
    finally:
        db.close()
    print(f"resumed {args.subject} under {found}: paused again beyond {allowed} repeats")
    return 0
