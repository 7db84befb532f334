"""Read-only spend queries for the dashboard and ``tokenctl report``: rollups first, detail rows only for drill-down.

Every query takes a ``View``: what the caller may see (the admin sees all teams, a viewer one) and
which drill-down filters apply. Amounts leave here as exact decimal strings of USD.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from tokenctl.ledger.engine import Database
from tokenctl.ledger.migrations import SMALL_ROLLUPS
from tokenctl.ledger.report import FILTER_COLUMNS

# Breakdown dimensions: the rollup column for each.
DIMENSIONS = {**FILTER_COLUMNS, "day": "day"}
FILTERS = tuple(FILTER_COLUMNS)
NONE = ""  # the rollups store a missing team/user/… as ''; shown as "(none)"

_NANO = Decimal(10**9)


def usd(nanos: int | None) -> str:
    """Nano-USD (the ledger's integer sums) as an exact decimal string of dollars."""
    return str((Decimal(nanos or 0) / _NANO).normalize() if nanos else Decimal(0))


@dataclass(frozen=True, slots=True)
class View:
    """What a query may return: ``team`` set for a team viewer; ``filters`` narrow it (drill-down)."""

    team: str | None = None
    filters: dict[str, str] = field(default_factory=dict)
    start: date | None = None  # first day, inclusive
    end: date | None = None  # last day, inclusive

    def narrowed(self) -> dict[str, str]:
        filters = {k: v for k, v in self.filters.items() if k in FILTERS}
        if self.team is not None:
            filters["team"] = self.team  # a viewer's own team, whatever was asked
        return filters

    def table(self, by: str | None = None) -> str:
        """The smallest rollup that has every dimension this query filters or groups by."""
        needed = set(self.narrowed()) | ({by} if by and by != "day" else set())
        for table, columns in SMALL_ROLLUPS.items():
            if needed <= set(columns):
                return table
        return "rollup_daily"

    def rollup_where(self) -> tuple[str, list[Any]]:
        """WHERE clause over rollup_daily (dimensions stored with '' for none)."""
        clauses, params = ["1 = 1"], []
        if self.start:
            clauses.append("day >= ?")
            params.append(self.start.isoformat())
        if self.end:
            clauses.append("day <= ?")
            params.append(self.end.isoformat())
        for name, value in self.narrowed().items():
            clauses.append(f"{DIMENSIONS[name]} = ?")
            params.append(value)
        return " AND ".join(clauses), params

    def requests_where(self) -> tuple[str, list[Any]]:
        """WHERE clause over requests (missing dimensions are NULL there)."""
        clauses, params = ["1 = 1"], []
        if self.start:  # ts (indexed, UTC) brackets the range; day (local) makes it exact
            clauses += ["ts >= ?", "day >= ?"]
            params += [(self.start - timedelta(days=1)).isoformat(), self.start.isoformat()]
        if self.end:
            clauses += ["ts < ?", "day <= ?"]
            params += [(self.end + timedelta(days=2)).isoformat(), self.end.isoformat()]
        for name, value in self.narrowed().items():
            column = DIMENSIONS[name]
            if value == NONE:
                clauses.append(f"{column} IS NULL")
            else:
                clauses.append(f"{column} = ?")
                params.append(value)
        return " AND ".join(clauses), params


_SUMS = """SUM(requests), SUM(errors), SUM(input_tokens), SUM(cache_read_tokens), SUM(cache_write_tokens),
           SUM(output_tokens), SUM(reasoning_tokens), SUM(cost_nanousd), SUM(uncached_nanousd),
           SUM(policy_saved_nanousd), SUM(routing_saved_nanousd), SUM(unpriced), SUM(blocked), SUM(duration_ms)"""


def _measures(raw: tuple[Any, ...]) -> dict[str, Any]:
    values = tuple(v or 0 for v in raw)
    (
        requests,
        errors,
        inp,
        read,
        write,
        out,
        reasoning,
        cost,
        uncached,
        policy,
        routing,
        unpriced,
        blocked,
        duration,
    ) = values
    prompt = inp + read + write
    return {
        "requests": requests,
        "errors": errors,
        "blocked": blocked,
        "unpriced_requests": unpriced,
        "input_tokens": inp,
        "cache_read_tokens": read,
        "cache_write_tokens": write,
        "output_tokens": out,
        "reasoning_tokens": reasoning,
        "cache_read_share": round(read / prompt, 4) if prompt else 0.0,
        "cost_usd": usd(cost),
        "cost_nanousd": cost,
        "cache_saved_usd": usd(uncached - cost),
        "policy_saved_usd": usd(policy),
        "routing_saved_usd": usd(routing),
        "avg_latency_ms": round(duration / requests, 1) if requests else 0.0,
        "_sums": values,  # the raw column sums, so rows can be added up exactly
    }


def totals(db: Database, view: View) -> dict[str, Any]:
    where, params = view.rollup_where()
    return _measures(db.execute(f"SELECT {_SUMS} FROM {view.table()} WHERE {where}", params).fetchone())


def breakdown(db: Database, view: View, by: str, limit: int = 500) -> list[dict[str, Any]]:
    """Spend grouped by one dimension, highest cost first."""
    if by not in DIMENSIONS:
        raise ValueError(f"by: one of {', '.join(DIMENSIONS)}")
    column = DIMENSIONS[by]
    where, params = view.rollup_where()
    order = "grp" if by == "day" else "SUM(cost_nanousd) DESC, grp"
    sql = f"SELECT {column} AS grp, {_SUMS} FROM {view.table(by)} WHERE {where} GROUP BY grp ORDER BY {order} LIMIT ?"
    return [{"group": row[0], **_measures(row[1:])} for row in db.execute(sql, [*params, limit])]


def breakdown_with_total(db: Database, view: View, by: str, limit: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The breakdown and its total; the total is summed from the rows when none were cut off."""
    rows = breakdown(db, view, by, limit + 1)
    if len(rows) <= limit:
        return rows, _sum_rows(rows)
    return rows[:limit], totals(db, view)


def _sum_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    width = len(_SUMS.split(","))
    return _measures(tuple(sum(r["_sums"][i] for r in rows) for i in range(width)))


def public(row: dict[str, Any]) -> dict[str, Any]:
    """A row without its internal fields."""
    return {k: v for k, v in row.items() if not k.startswith("_")}


def daily(db: Database, view: View) -> dict[str, dict[str, Any]]:
    """{day: measures} for every day with traffic in the view."""
    return {row["group"]: row for row in breakdown(db, view, "day", limit=10_000)}


STACK_BY = ("model", "team", "tool", "provider", "project")


def previous(view: View) -> View:
    """The period of the same length just before the view's (for "change against the previous period")."""
    assert view.start is not None and view.end is not None
    days = (view.end - view.start).days + 1
    return View(view.team, view.filters, view.start - timedelta(days=days), view.start - timedelta(days=1))


def stacked(db: Database, view: View, by: str, top: int = 5) -> dict[str, Any]:
    """Spend per day of the view split by ``by``: its ``top`` groups by spend, the rest summed as "other"; and
    what the same-length period before cost."""
    if by not in STACK_BY:
        raise ValueError(f"by: one of {', '.join(STACK_BY)}")
    assert view.start is not None and view.end is not None
    column = DIMENSIONS[by]
    where, params = view.rollup_where()
    rows = db.execute(
        f"SELECT day, {column}, SUM(cost_nanousd) FROM {view.table(by)} WHERE {where} GROUP BY day, {column}", params
    ).fetchall()
    by_group: dict[str, int] = {}
    for _, group, nanos in rows:
        by_group[group] = by_group.get(group, 0) + int(nanos or 0)
    leaders = [g for g, _ in sorted(by_group.items(), key=lambda item: (-item[1], item[0]))[:top]]
    days = [(view.start + timedelta(days=i)).isoformat() for i in range((view.end - view.start).days + 1)]
    index = {d: i for i, d in enumerate(days)}
    names = [*leaders, "other"] if len(by_group) > top else leaders
    series = {g: [0] * len(days) for g in names}
    for day, group, nanos in rows:
        name = group if group in series else "other"
        series[name][index[day]] += int(nanos or 0)
    before = previous(view)
    earlier = totals(db, before)["cost_nanousd"]
    now = sum(by_group.values())
    return {
        "by": by,
        "days": days,
        "series": [{"group": g, "usd": [usd(n) for n in series[g]]} for g in names],
        "total_usd": usd(now),
        "previous_usd": usd(earlier),
        "previous_start": str(before.start),
        "previous_end": str(before.end),
        "change": round((now - earlier) / earlier, 4) if earlier else None,
    }


def concentration(db: Database, view: View, top: int = 10) -> dict[str, Any]:
    """How concentrated spend is across users: the top 20 %'s share, the Lorenz curve and a leaderboard.

    Spend of keys without a user is not one more "user": it is reported beside, as ``unattributed``."""
    where, params = view.rollup_where()
    every = db.execute(
        f"SELECT user, MAX(team), SUM(requests), SUM(cost_nanousd) FROM {view.table('user')} WHERE {where}"
        " GROUP BY user ORDER BY SUM(cost_nanousd) DESC, user",
        params,
    ).fetchall()
    rows = [r for r in every if r[0] != NONE]
    unattributed = next((r for r in every if r[0] == NONE), None)
    total = sum(r[3] or 0 for r in rows)
    top_count = max(1, -(-len(rows) // 5)) if rows else 0  # ceil(20 %)
    top_spend = sum(r[3] or 0 for r in rows[:top_count])
    curve, running = [], 0
    for i, row in enumerate(rows, 1):
        running += row[3] or 0
        curve.append({"users_share": round(i / len(rows), 4), "spend_share": round(running / total, 4) if total else 0})
    return {
        "users": len(rows),
        "top_users": top_count,
        "top_share": round(top_spend / total, 4) if total else 0.0,
        "total_usd": usd(total),
        "top_usd": usd(top_spend),
        "unattributed_usd": usd(unattributed[3] if unattributed else 0),
        "unattributed_requests": unattributed[2] if unattributed else 0,
        "curve": curve if len(curve) <= 200 else curve[:: max(1, len(curve) // 200)] + curve[-1:],
        "leaderboard": [
            {
                "rank": i,
                "user": r[0],
                "team": r[1],
                "requests": r[2],
                "cost_usd": usd(r[3]),
                "share": round((r[3] or 0) / total, 4) if total else 0.0,
            }
            for i, r in enumerate(rows[:top], 1)
        ],
    }


def savings(db: Database, view: View) -> dict[str, Any]:
    """What caching, policies and routing saved against the counterfactual, with the split by team and model."""
    whole = totals(db, view)
    hits, avoided = _response_cache_hits(db, view)
    saved = sum(Decimal(whole[k]) for k in ("cache_saved_usd", "policy_saved_usd", "routing_saved_usd"))
    saved += Decimal(usd(avoided))
    return {
        "cost_usd": whole["cost_usd"],
        "counterfactual_usd": str(Decimal(whole["cost_usd"]) + saved),
        "saved_usd": str(saved),
        "tokenctl_saved_usd": str(saved - Decimal(whole["cache_saved_usd"])),  # policies, routing, response cache
        "cache_saved_usd": whole["cache_saved_usd"],
        "policy_saved_usd": whole["policy_saved_usd"],
        "routing_saved_usd": whole["routing_saved_usd"],
        "response_cache_saved_usd": usd(avoided),
        "response_cache_hits": hits,
        "blocked_requests": whole["blocked"],
        "cache_read_share": whole["cache_read_share"],
        "by_team": [_saving_row(r) for r in breakdown(db, view, "team", limit=50)],
        "by_model": [_saving_row(r) for r in breakdown(db, view, "model", limit=50)],
        "by_model_asked": savings_by_model_asked(db, view),
    }


def savings_by_model_asked(db: Database, view: View) -> list[dict[str, Any]]:
    """What policies and routing saved, credited to the model the client asked for (a downgrade from Opus to
    Sonnet saved money on Opus), and what it cost on the model that served it instead."""
    where, params = view.requests_where()
    rows = db.execute(
        f"SELECT requested_model, saving_source, COUNT(*), SUM(counterfactual_nanousd - cost_nanousd),"
        f" SUM(cost_nanousd) FROM requests WHERE saving_source IS NOT NULL AND {where}"
        " GROUP BY requested_model, saving_source ORDER BY 4 DESC",
        params,
    ).fetchall()
    out: dict[str, dict[str, Any]] = {}
    for model, source, n, saved, spent in rows:
        row = out.setdefault(
            model or "", {"model_asked": model or "", "requests": 0, "policy": 0, "routing": 0, "served_cost": 0}
        )
        row["requests"] += int(n)
        row[str(source) if source in ("policy", "routing") else "policy"] += int(saved or 0)
        row["served_cost"] += int(spent or 0)
    return [
        {
            "model_asked": r["model_asked"],
            "requests": r["requests"],
            "policy_saved_usd": usd(r["policy"]),
            "routing_saved_usd": usd(r["routing"]),
            "saved_usd": usd(r["policy"] + r["routing"]),
            "served_cost_usd": usd(r["served_cost"]),
        }
        for r in sorted(out.values(), key=lambda r: -(r["policy"] + r["routing"]))
    ]


def _response_cache_hits(db: Database, view: View) -> tuple[int, int]:
    """(hits, nano-dollars their answers cost when made) in the view: read from the requests (a partial index
    holds only the hits), as the rollups do not carry them."""
    where, params = view.requests_where()
    row = db.execute(
        f"SELECT COUNT(*), SUM(cache_avoided_nanousd) FROM requests WHERE response_cache = 'hit' AND {where}", params
    ).fetchone()
    return int(row[0] or 0), int(row[1] or 0)


def cache(db: Database, view: View) -> dict[str, Any]:
    """Prompt caching and the response cache per team: read share, what prompt caching saved, cache hits."""
    where, params = view.requests_where()
    hits = {
        team: (int(n), int(saved or 0))
        for team, n, saved in db.execute(
            f"SELECT team, COUNT(*), SUM(cache_avoided_nanousd) FROM requests"
            f" WHERE response_cache = 'hit' AND {where} GROUP BY team",
            params,
        )
    }
    teams = []
    for row in breakdown(db, view, "team", limit=200):
        n, saved = hits.get(row["group"], (0, 0))
        teams.append(
            {
                "team": row["group"],
                "requests": row["requests"],
                "cache_read_share": row["cache_read_share"],
                "prompt_cache_saved_usd": row["cache_saved_usd"],
                "response_cache_hits": n,
                "response_cache_saved_usd": usd(saved),
            }
        )
    whole = totals(db, view)
    all_hits, all_saved = _response_cache_hits(db, view)
    return {
        "cache_read_share": whole["cache_read_share"],
        "prompt_cache_saved_usd": whole["cache_saved_usd"],
        "response_cache_hits": all_hits,
        "response_cache_saved_usd": usd(all_saved),
        "by_team": teams,
    }


def routing(db: Database, view: View) -> dict[str, Any]:
    """What routing did, per tier: requests, turns the classifier judged, escalations, and for a dry run what
    the same usage would have cost where routing would have sent it (read from the requests, not rollups)."""
    where, params = view.requests_where()
    sql = f"""SELECT route_tier, COUNT(*), SUM(CASE WHEN route_score IS NOT NULL THEN 1 ELSE 0 END),
                     SUM(CASE WHEN route_escalation IS NOT NULL THEN 1 ELSE 0 END),
                     SUM(CASE WHEN route_dry_run = 1 THEN 1 ELSE 0 END), SUM(cost_nanousd),
                     SUM(CASE WHEN route_dry_run = 1 AND would_nanousd IS NOT NULL THEN cost_nanousd ELSE 0 END),
                     SUM(CASE WHEN route_dry_run = 1 AND would_nanousd IS NOT NULL THEN would_nanousd ELSE 0 END)
              FROM requests WHERE {where} AND route_tier IS NOT NULL GROUP BY route_tier ORDER BY route_tier"""
    tiers, served, would = [], 0, 0
    for tier, count, scored, escalations, dry, cost, dry_cost, dry_would in db.execute(sql, params):
        served, would = served + int(dry_cost or 0), would + int(dry_would or 0)
        tiers.append(
            {
                "tier": tier,
                "requests": int(count),
                "turns_scored": int(scored or 0),
                "escalations": int(escalations or 0),
                "dry_run_requests": int(dry or 0),
                "cost_usd": usd(cost),
                "dry_run_would_cost_usd": usd(dry_would) if dry else None,
            }
        )
    return {
        "dry_run_cost_usd": usd(served),
        "dry_run_would_cost_usd": usd(would),
        "dry_run_would_save_usd": usd(served - would),
        "by_tier": tiers,
    }


def _saving_row(row: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "group",
        "cost_usd",
        "cache_saved_usd",
        "policy_saved_usd",
        "routing_saved_usd",
        "blocked",
        "cache_read_share",
    )
    return {k: row[k] for k in keys}


_SESSION_COLUMNS = (
    "session_id",
    "team",
    "user",
    "project",
    "tool",
    "model",
    "first_ts",
    "last_ts",
    "requests",
    "errors",
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "output_tokens",
    "cost_nanousd",
    "duration_ms",
)


def _like_prefix(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def sessions(db: Database, view: View, limit: int = 100, find: str | None = None) -> list[dict[str, Any]]:
    """The most expensive sessions active in the view's days; ``find``: a session id's start, or a user."""
    unknown = sorted(set(view.filters) - {"team", "user", "project", "tool", "model"})
    if unknown:
        raise ValueError(
            f"sessions cannot be filtered by {', '.join(unknown)} (sessions are kept per team, user, "
            "project, tool and model)"
        )
    clauses, params = ["1 = 1"], []
    if find:
        clauses.append("(session_id LIKE ? ESCAPE '\\' OR user = ?)")
        params += [_like_prefix(find), find]
    if view.start:
        clauses.append("last_day >= ?")
        params.append(view.start.isoformat())
    if view.end:
        clauses.append("first_day <= ?")
        params.append(view.end.isoformat())
    for name, value in view.narrowed().items():
        if name in ("team", "user", "project", "tool", "model"):
            clauses.append(f"COALESCE({name}, '') = ?")
            params.append(value)
    sql = (
        f"SELECT {', '.join(_SESSION_COLUMNS)} FROM rollup_sessions WHERE {' AND '.join(clauses)}"
        " ORDER BY cost_nanousd DESC LIMIT ?"
    )
    return [_session_dict(dict(zip(_SESSION_COLUMNS, row))) for row in db.execute(sql, [*params, limit])]


def _session_dict(row: dict[str, Any]) -> dict[str, Any]:
    prompt = row["input_tokens"] + row["cache_read_tokens"] + row["cache_write_tokens"]
    row["cache_read_share"] = round(row["cache_read_tokens"] / prompt, 4) if prompt else 0.0
    row["cost_usd"] = usd(row.pop("cost_nanousd"))
    return row


REQUEST_COLUMNS = (
    "request_id",
    "ts",
    "day",
    "duration_ms",
    "ttft_ms",
    "api",
    "stream",
    "status",
    "outcome",
    "partial",
    "error",
    "key_id",
    "user",
    "team",
    "project",
    "tool",
    "session_id",
    "provider",
    "requested_model",
    "model",
    "input_tokens",
    "cache_read_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_usd",
    "cost_is_estimate",
    "priced",
    "reserved_usd",
    "funding",
    "policy",
    "approval_id",
    "uncached_nanousd",
    "counterfactual_nanousd",
    "saving_source",
    "cost_nanousd",
)  # never prompt or response text: the ledger does not hold it


def requests(db: Database, view: View, limit: int = 100, find: str | None = None) -> list[dict[str, Any]]:
    """The latest requests in the view, newest first; ``find``: a request id, a session id or a user."""
    where, params = view.requests_where()
    if find:
        where += " AND (request_id = ? OR session_id = ? OR user = ?)"
        params = [*params, find, find, find]
    sql = f"SELECT {', '.join(REQUEST_COLUMNS)} FROM requests WHERE {where} ORDER BY ts DESC LIMIT ?"
    return [_request_dict(row) for row in db.execute(sql, [*params, limit])]


def request_detail(db: Database, view: View, request_id: str) -> dict[str, Any] | None:
    row = db.execute(
        f"SELECT {', '.join(REQUEST_COLUMNS)} FROM requests WHERE request_id = ?", (request_id,)
    ).fetchone()
    if row is None:
        return None
    found = _request_dict(row)
    return found if view.team is None or found["team"] == view.team else None


def _request_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    r = dict(zip(REQUEST_COLUMNS, row))
    prompt = r["input_tokens"] + r["cache_read_tokens"] + r["cache_write_5m_tokens"] + r["cache_write_1h_tokens"]
    r["prompt_tokens"] = prompt
    r["cache_read_share"] = round(r["cache_read_tokens"] / prompt, 4) if prompt else 0.0
    cost = r.pop("cost_nanousd")
    uncached, counterfactual = r.pop("uncached_nanousd"), r.pop("counterfactual_nanousd")
    r["cache_saved_usd"] = usd(uncached - cost) if uncached is not None else "0"
    r["model_saved_usd"] = usd(counterfactual - cost) if counterfactual is not None else "0"
    return r


def session_detail(db: Database, view: View, session_id: str) -> dict[str, Any] | None:
    """Every request of a session in order, and why it cost what it did: context growth, caching, retries."""
    rows = db.execute(
        f"SELECT {', '.join(REQUEST_COLUMNS)} FROM requests WHERE session_id = ? ORDER BY ts LIMIT 5000",
        (session_id,),
    ).fetchall()
    turns = [_request_dict(r) for r in rows]
    if not turns or (view.team is not None and any(t["team"] != view.team for t in turns)):
        return None
    prompt = sum(t["prompt_tokens"] for t in turns)
    read = sum(t["cache_read_tokens"] for t in turns)
    failed = [t for t in turns if t["status"] >= 400 or t["outcome"] != "ok"]
    ok = [t for t in turns if t not in failed]
    running = Decimal(0)
    for turn in turns:  # what the session had cost by the end of each turn
        running += Decimal(turn["cost_usd"])
        turn["running_usd"] = str(running)
        turn["failed"] = turn in failed
    last = turns[-1]
    ended = datetime.fromisoformat(last["ts"].replace("Z", "+00:00")) + timedelta(milliseconds=last["duration_ms"])
    started = datetime.fromisoformat(turns[0]["ts"].replace("Z", "+00:00"))
    return {
        "session_id": session_id,
        "team": turns[0]["team"],
        "user": turns[0]["user"],
        "tool": turns[0]["tool"],
        "projects": sorted({t["project"] for t in turns if t["project"]}),
        "started": turns[0]["ts"],
        "ended": ended.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "duration_s": round((ended - started).total_seconds(), 1),
        "requests": len(turns),
        "cost_usd": str(sum((Decimal(t["cost_usd"]) for t in turns), Decimal(0))),
        "cache_read_share": round(read / prompt, 4) if prompt else 0.0,
        "retries": len(failed),
        "failed_cost_usd": str(sum((Decimal(t["cost_usd"]) for t in failed), Decimal(0))),
        "first_context_tokens": ok[0]["prompt_tokens"] if ok else 0,
        "last_context_tokens": ok[-1]["prompt_tokens"] if ok else 0,
        "max_context_tokens": max((t["prompt_tokens"] for t in turns), default=0),
        "models": sorted({t["model"] for t in turns if t["model"]}),
        "turns": turns,
    }


def has_rollups(db: Database) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE name = 'rollup_daily'").fetchone() is not None
