"""CLI for budgets, policies, approvals and the audit log.

Changes go straight to the ledger database; a running gateway picks them up within
``identity.key_refresh_seconds``. ``budgets status`` asks the running gateway (so reservations in
flight are included) and falls back to the ledger when no gateway answers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from tokenctl.cli.loops import add_loop_commands
from tokenctl.cli.render import render_table
from tokenctl.config import Config
from tokenctl.ledger import approvals as approval_store
from tokenctl.ledger.audit import read_audit
from tokenctl.ledger.db import connect
from tokenctl.policy.budget import Budgets
from tokenctl.policy.decisions import decide_approval
from tokenctl.policy.manage import RuleError, combined_rules, delete_rule, put_rule
from tokenctl.policy.status import offline_status
from tokenctl.policy.store import MemoryStore

ConfigLoader = Callable[[argparse.Namespace], Config]


class GovernanceError(Exception):
    pass


def add_governance_commands(sub: Any, load: ConfigLoader) -> None:
    _budget_commands(sub, load)
    _policy_commands(sub, load)
    _approval_commands(sub, load)
    add_loop_commands(sub, load)
    a = sub.add_parser("audit", help="the audit log: policy decisions and changes, newest first")
    a.add_argument("--limit", type=int, default=50, help="most events to show")
    a.add_argument("--action", help="only this action, e.g. block, downgrade, clamp, approval.*, budget.*")
    _common(a)
    a.set_defaults(run=lambda args: _audit(args, load))


def _budget_commands(sub: Any, load: ConfigLoader) -> None:
    b = sub.add_parser("budgets", help="list, set, delete budgets; status of every budget").add_subparsers(
        title="budgets commands"
    )
    bl = b.add_parser("list", help="budgets from the config file and live ones")
    _common(bl)
    bl.set_defaults(run=lambda args: _list_rules(args, load, "budgets"))
    bs = b.add_parser("set", help="create or replace a live budget")
    bs.add_argument("name", help="the budget's name (replaces a live budget of that name)")
    _scoped_args(bs)
    bs.add_argument("--limit-usd", required=True, help="the limit in US dollars per period")
    bs.add_argument("--period", default="monthly", help="daily, weekly, monthly, lifetime, rolling_24h …")
    bs.add_argument(
        "--action", default="block", choices=("block", "downgrade", "notify"), help="what happens at the limit"
    )
    bs.add_argument("--downgrade-to", help="model for action downgrade")
    bs.add_argument("--downgrade-at", type=float, help="percent of the limit at which to downgrade (default 100)")
    bs.add_argument("--notify-at", help="comma-separated percentages (default 50,80,100)")
    bs.add_argument("--pool", action="store_true", help="a pool other budgets overflow into")
    bs.add_argument("--member-cap-usd", help="pools: most one member may draw per period")
    bs.add_argument("--overflow-to", help="pool to draw on when this budget is used up")
    _ledger(bs)
    bs.set_defaults(run=lambda args: _set_rule(args, load, "budget", _budget_definition(args)), ledger_mode="write")
    bd = b.add_parser("delete", help="delete a live budget")
    bd.add_argument("name", help="the live budget's name")
    _ledger(bd)
    bd.set_defaults(run=lambda args: _delete_rule(args, load, "budget"), ledger_mode="write")
    st = b.add_parser("status", help="spent / reserved / limit / resets-at per budget")
    _common(st)
    st.add_argument("--url", help="running gateway (default: the config's host and port)")
    st.set_defaults(run=lambda args: _status(args, load))


def _policy_commands(sub: Any, load: ConfigLoader) -> None:
    p = sub.add_parser("policies", help="list, set, delete model policies").add_subparsers(title="policies commands")
    pl = p.add_parser("list", help="policies from the config file and live ones")
    _common(pl)
    pl.set_defaults(run=lambda args: _list_rules(args, load, "policies"))
    ps = p.add_parser("set", help="create or replace a live model policy")
    ps.add_argument("name", help="the policy's name (replaces a live policy of that name)")
    _scoped_args(ps)
    ps.add_argument("--allow-models", help="comma-separated models or globs")
    ps.add_argument("--deny-models", help="comma-separated models or globs")
    ps.add_argument(
        "--rewrite",
        action="append",
        default=[],
        metavar="FROM=TO",
        help="default-model rewrite, e.g. 'claude-opus-*=claude-sonnet-4-5' (repeatable)",
    )
    for flag in (
        "max-tokens",
        "max-thinking-tokens",
        "max-request-bytes",
        "max-input-tokens",
        "requests-per-minute",
        "tokens-per-minute",
    ):
        ps.add_argument(
            f"--{flag}",
            type=int,
            help=f"the most {flag.removeprefix('max-').replace('-', ' ')} allowed"
            if flag.startswith("max-")
            else f"rate limit: {flag.replace('-', ' ')}",
        )
    ps.add_argument("--max-effort", help="none, minimal, low, medium, high, xhigh, max")
    _ledger(ps)
    ps.set_defaults(run=lambda args: _set_rule(args, load, "policy", _policy_definition(args)), ledger_mode="write")
    pd = p.add_parser("delete", help="delete a live model policy")
    pd.add_argument("name", help="the live policy's name")
    _ledger(pd)
    pd.set_defaults(run=lambda args: _delete_rule(args, load, "policy"), ledger_mode="write")


def _approval_commands(sub: Any, load: ConfigLoader) -> None:
    a = sub.add_parser("approvals", help="requests held for approval: list, approve, deny").add_subparsers(
        title="approvals commands"
    )
    al = a.add_parser("list", help="approval requests, pending ones by default")
    al.add_argument("--status", default="pending", help="pending, approved, denied, used or all")
    _common(al)
    al.set_defaults(run=lambda args: _approvals_list(args, load))
    for verb in ("approve", "deny"):
        c = a.add_parser(verb, help=f"{verb} a held request")
        c.add_argument("approval_id", help="the approval's id (apr_…), from `tokenctl approvals list`")
        c.add_argument("--note", help="why, recorded in the audit log")
        c.add_argument("--by", default=os.environ.get("USER", "cli"), help="who decided, recorded in the audit log")
        if verb == "approve":
            c.add_argument("--for-user-hours", type=float, help="let the user's held requests through for this long")
            c.add_argument("--for-user-usd", help="… up to this amount in total")
            c.add_argument(
                "--only-request",
                action="store_true",
                help="only this request, retried (default: a request of an agent session lets that session's "
                "next turns through for 12 h)",
            )
        _ledger(c)
        c.set_defaults(run=lambda args, v=verb: _decide(args, load, v == "approve"), ledger_mode="write")


def _ledger(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ledger", help="SQLite ledger file (default: the config's ledger.path, else ./tokenctl.db)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    _ledger(p)


def _scoped_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--scope",
        required=True,
        choices=("org", "team", "user", "project", "key", "session"),
        help="who the rule applies to",
    )
    p.add_argument("--match", help="one team/user/…; omit to give every member its own")


def _budget_definition(args: argparse.Namespace) -> dict[str, Any]:
    d: dict[str, Any] = {
        "name": args.name,
        "scope": args.scope,
        "limit_usd": args.limit_usd,
        "period": args.period,
        "action": args.action,
    }
    optional = {
        "match": args.match,
        "downgrade_to": args.downgrade_to,
        "downgrade_at_percent": args.downgrade_at,
        "member_cap_usd": args.member_cap_usd,
        "overflow_to": args.overflow_to,
    }
    d.update({k: v for k, v in optional.items() if v is not None})
    if args.pool:
        d["pool"] = True
    if args.notify_at:
        d["notify_at_percent"] = [int(x) for x in args.notify_at.split(",") if x.strip()]
    return d


def _policy_definition(args: argparse.Namespace) -> dict[str, Any]:
    d: dict[str, Any] = {"name": args.name, "scope": args.scope}
    if args.match:
        d["match"] = args.match
    for field in ("allow_models", "deny_models"):
        if getattr(args, field):
            d[field] = [m.strip() for m in getattr(args, field).split(",") if m.strip()]
    if args.rewrite:
        pairs = [r.split("=", 1) for r in args.rewrite]
        if any(len(p) != 2 for p in pairs):
            raise GovernanceError("--rewrite: use FROM=TO")
        d["rewrite"] = dict(pairs)
    for field in (
        "max_tokens",
        "max_thinking_tokens",
        "max_request_bytes",
        "max_input_tokens",
        "requests_per_minute",
        "tokens_per_minute",
        "max_effort",
    ):
        if getattr(args, field) is not None:
            d[field] = getattr(args, field)
    return d


def _change_rules(args: argparse.Namespace, load: ConfigLoader, change: Callable[..., Any]) -> Config:
    """Run ``change(db, config, actor)`` on the ledger database; refusals become CLI errors."""
    config = load(args)
    db = connect(config.ledger_path)
    try:
        change(db, config, f"cli:{os.environ.get('USER', 'unknown')}")
    except RuleError as exc:
        raise GovernanceError(str(exc)) from exc
    finally:
        db.close()
    return config


def _set_rule(args: argparse.Namespace, load: ConfigLoader, kind: str, definition: dict[str, Any]) -> int:
    config = _change_rules(args, load, lambda db, config, actor: put_rule(db, config, kind, definition, actor))
    print(f"{kind} {args.name} saved; a running gateway applies it within {config.key_refresh_seconds:g} s")
    return 0


def _delete_rule(args: argparse.Namespace, load: ConfigLoader, kind: str) -> int:
    _change_rules(args, load, lambda db, config, actor: delete_rule(db, config, kind, args.name, actor))
    print(f"{kind} {args.name} deleted")
    return 0


def _list_rules(args: argparse.Namespace, load: ConfigLoader, section: str) -> int:
    config = load(args)
    db = connect(config.ledger_path)
    try:
        rules = [r.to_dict() for r in getattr(combined_rules(config, db), section)]
    finally:
        db.close()
    if args.format == "json":
        print(orjson.dumps(rules, option=orjson.OPT_INDENT_2).decode())
        return 0
    keys = sorted({k for r in rules for k in r}, key=lambda k: (k != "name", k != "scope", k != "match", k))
    print(render_table(keys, [[_cell(r.get(k)) for k in keys] for r in rules]))
    return 0


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return orjson.dumps(value).decode()
    return str(value)


def _status(args: argparse.Namespace, load: ConfigLoader) -> int:
    config = load(args)
    rows, source = _status_from_gateway(config, args.url)
    if rows is None:
        db = connect(config.ledger_path)
        try:
            rules = combined_rules(config, db)
            budgets = Budgets(rules.budgets, ZoneInfo(config.enforcement.timezone), MemoryStore(), 0)
            rows = asyncio.run(offline_status(budgets, db, args.clock()))
        finally:
            db.close()
    if args.format == "json":
        print(orjson.dumps({"source": source, "data": rows}, option=orjson.OPT_INDENT_2).decode())
        return 0
    cols = [
        "budget",
        "scope",
        "member",
        "period",
        "action",
        "spent_usd",
        "reserved_usd",
        "limit_usd",
        "used_percent",
        "resets_at",
    ]
    print(render_table(cols, [[_cell(r[c]) for c in cols] for r in rows]))
    print(f"({source})", file=sys.stderr)
    return 0


def _status_from_gateway(config: Config, url: str | None) -> tuple[list[dict[str, Any]] | None, str]:
    admin_key = os.environ.get(config.admin_key_env)
    if not admin_key:
        return None, f"from the ledger; {config.admin_key_env} is not set, so reservations in flight are not shown"
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host
    base = (url or f"http://{host}:{config.port}").rstrip("/")
    request = urllib.request.Request(f"{base}/admin/budgets/status", headers={"authorization": f"Bearer {admin_key}"})
    try:
        with urllib.request.urlopen(request, timeout=3) as resp:
            return orjson.loads(resp.read())["data"], f"live from the gateway at {base}"
    except (urllib.error.URLError, OSError, ValueError, KeyError):
        return None, f"from the ledger; no gateway answered at {base}, so reservations in flight are not shown"


def _approvals_list(args: argparse.Namespace, load: ConfigLoader) -> int:
    db = connect(load(args).ledger_path)
    try:
        rows = approval_store.list_approvals(db, None if args.status == "all" else args.status)
    finally:
        db.close()
    if args.format == "json":
        print(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return 0
    cols = ["approval_id", "status", "user", "team", "model", "estimated_usd", "input_tokens", "rule", "reason"]
    print(render_table(cols, [[_cell(r[c]) for c in cols] for r in rows]))
    return 0


def _decide(args: argparse.Namespace, load: ConfigLoader, approve: bool) -> int:
    body: dict[str, Any] = {"by": args.by, "note": args.note}
    if approve:
        if args.for_user_hours is not None:
            body["for_user_hours"] = args.for_user_hours
        if args.for_user_usd is not None:
            body["for_user_usd"] = args.for_user_usd
        body["only_request"] = args.only_request
    db = connect(load(args).ledger_path)
    try:
        result = decide_approval(db, args.approval_id, approve, body)
    except approval_store.ApprovalStateError as exc:
        raise GovernanceError(str(exc)) from exc
    finally:
        db.close()
    print(
        f"{result['approval_id']} {result['status']}"
        + (f" for user {result['user']} ({result['grant_scope']} grant)" if result["grant_scope"] == "user" else "")
    )
    return 0


def _audit(args: argparse.Namespace, load: ConfigLoader) -> int:
    db = connect(load(args).ledger_path)
    try:
        rows = read_audit(db, limit=args.limit, action=args.action)
    finally:
        db.close()
    if args.format == "json":
        print(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return 0
    cols = ["ts", "actor", "action", "rule", "subject", "detail"]
    print(render_table(cols, [[_cell(r[c])[:80] for c in cols] for r in rows]))
    return 0
