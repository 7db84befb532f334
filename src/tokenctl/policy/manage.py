"""Budgets, policies and approval rules managed live (CLI and admin API), next to those in the YAML file.

Rules in the config file are code: they are read-only here (edit the file and restart). Rules created
live are kept in the ``rules`` table; a running gateway picks changes up within
``identity.key_refresh_seconds``. Every change is written to the audit log.

Editing a budget keeps its spend when only the limit or actions change; a new period starts from
what the ledger says was spent in the new period's current window.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from tokenctl.config import Config
from tokenctl.ledger.audit import AuditEvent, write_audit
from tokenctl.ledger.engine import Database
from tokenctl.ledger.migrations import transaction
from tokenctl.policy.enforce import RuleSet
from tokenctl.policy.rules import (
    check_budget_links,
    check_unique_names,
    parse_approval,
    parse_budget,
    parse_policy,
)
from tokenctl.validate import ConfigError

PARSERS = {"budget": parse_budget, "policy": parse_policy, "approval": parse_approval}
_SECTIONS = {"budget": "budgets", "policy": "policies", "approval": "approvals"}


class RuleError(ValueError):
    """A live rule change was refused; the message says why."""


def load_live(db: Database) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {"budget": [], "policy": [], "approval": []}
    rows = db.execute("SELECT kind, name, definition FROM rules WHERE deleted = 0 ORDER BY kind, name").fetchall()
    for kind, name, definition in rows:
        try:
            out[kind].append(PARSERS[kind](orjson.loads(definition), f"{kind} {name}", "api"))
        except (ConfigError, orjson.JSONDecodeError, KeyError):
            continue  # validated when written; a rule from a newer version is skipped rather than fatal
    return out


def last_change(db: Database) -> tuple[Any, ...]:
    """A fingerprint of the live rules that any change alters, whichever clock stamped it: replicas on one
    PostgreSQL ledger see a rule set on another host even if that host's clock is behind theirs."""
    return tuple(
        db.execute("SELECT COUNT(*), COALESCE(SUM(updated_at), 0), COALESCE(MAX(updated_at), 0) FROM rules").fetchone()
    )


def combined_rules(config: Config, db: Database | None) -> RuleSet:
    live: dict[str, list[Any]] = load_live(db) if db is not None else {"budget": [], "policy": [], "approval": []}
    taken = {kind: {r.name for r in _configured(config, kind)} for kind in PARSERS}
    budgets = config.budgets + tuple(r for r in live["budget"] if r.name not in taken["budget"])
    try:
        check_budget_links(budgets)
    except ConfigError:
        budgets = config.budgets + tuple(
            r for r in live["budget"] if r.name not in taken["budget"] and not r.overflow_to
        )
    return RuleSet(
        budgets=budgets,
        policies=config.policies + tuple(r for r in live["policy"] if r.name not in taken["policy"]),
        approvals=config.approvals + tuple(r for r in live["approval"] if r.name not in taken["approval"]),
    )


def _configured(config: Config, kind: str) -> tuple[Any, ...]:
    return getattr(config, _SECTIONS[kind])


def put_rule(db: Database, config: Config, kind: str, definition: dict[str, Any], actor: str) -> Any:
    """Create or replace a live rule. Returns the parsed rule; raises RuleError or ConfigError."""
    if kind not in PARSERS:
        raise RuleError(f"unknown rule kind {kind!r}")
    rule: Any = PARSERS[kind](definition, _SECTIONS[kind][:-1] if kind != "policy" else "policy", "api")
    if any(r.name == rule.name for r in _configured(config, kind)):
        raise RuleError(f"{kind} {rule.name!r} is defined in {config.source}; change it there")
    current = combined_rules(config, db)
    if kind == "budget":
        others = tuple(b for b in current.budgets if b.name != rule.name) + (rule,)
        check_unique_names(others, "budgets")
        check_budget_links(others)
    existed = (
        db.execute("SELECT 1 FROM rules WHERE kind = ? AND name = ? AND deleted = 0", (kind, rule.name)).fetchone()
        is not None
    )
    now = time.time()
    with transaction(db):
        db.execute(
            "INSERT INTO rules (kind, name, definition, updated_at, deleted) VALUES (?, ?, ?, ?, 0)"
            " ON CONFLICT (kind, name) DO UPDATE SET definition = excluded.definition,"
            " updated_at = excluded.updated_at, deleted = 0",
            (kind, rule.name, orjson.dumps(definition).decode(), now),
        )
    action = f"{kind}.{'update' if existed else 'create'}"
    write_audit(db, AuditEvent(actor, action, rule.name, None, None, orjson.dumps(definition).decode(), now))
    return rule


def delete_rule(db: Database, config: Config, kind: str, name: str, actor: str) -> None:
    if any(r.name == name for r in _configured(config, kind)):
        raise RuleError(f"{kind} {name!r} is defined in {config.source}; remove it there")
    if kind == "budget" and any(b.overflow_to == name for b in combined_rules(config, db).budgets):
        raise RuleError(f"budget {name!r} is a pool other budgets overflow to; change those first")
    now = time.time()
    with transaction(db):
        cur = db.execute(
            "UPDATE rules SET deleted = 1, updated_at = ? WHERE kind = ? AND name = ? AND deleted = 0",
            (now, kind, name),
        )
    if cur.rowcount == 0:
        raise RuleError(f"no live {kind} named {name!r}")
    write_audit(db, AuditEvent(actor, f"{kind}.delete", name, None, None, None, now))
