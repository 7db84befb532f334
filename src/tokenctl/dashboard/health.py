"""The Health page: is the prompt cache working (read share per day, team and key, the misses and their
causes, the money they lost), which loops were caught (with Resume for the admin), which days were anomalous,
and the alerts raised. Every part honours the page's range and filters; a team viewer sees their team."""

from __future__ import annotations

from collections import Counter
from datetime import date
from typing import Any

from tokenctl.dashboard.anomalies import find_anomalies
from tokenctl.dashboard.queries import View, breakdown, cache, usd
from tokenctl.ledger.engine import Database
from tokenctl.ledger.loop_resumes import detections
from tokenctl.watch.alerts_log import recent_alerts
from tokenctl.watch.checks import ADVICE

_MAX_MISSES = 200_000  # rows read for the causes (a partial index holds only the misses)


def health(db: Database, view: View, today: date, *, admin: bool) -> dict[str, Any]:
    misses = _misses(db, view)
    return {
        "start": str(view.start),
        "end": str(view.end),
        "days": [_cache_row(r, "day", None) for r in breakdown(db, view, "day", limit=10_000)],
        "teams": [_cache_row(r, "team", misses["by_team"]) for r in breakdown(db, view, "team", limit=200)],
        "users": [_cache_row(r, "user", misses["by_user"]) for r in breakdown(db, view, "user", limit=50)],
        "keys": [_cache_row(r, "key", misses["by_key"]) for r in breakdown(db, view, "key", limit=50)],
        "causes": misses["causes"],
        "misses_cut": misses["cut"],
        "loops": _loops(db, view, admin),
        "can_resume": admin,
        "anomalies": _anomalies(db, view, today),
        "alerts": recent_alerts(db, 50, view.team),
    }


def cache_report(db: Database, view: View) -> dict[str, Any]:
    """``tokenctl report cache``: prompt caching and the response cache per team, plus the read share, misses
    and money lost per team, user and key, and the misses by cause."""
    data = cache(db, view)
    misses = _misses(db, view)
    lost = {r["team"]: r for r in (_cache_row(t, "team", misses["by_team"]) for t in breakdown(db, view, "team", 200))}
    for row in data["by_team"]:
        extra = lost.get(row["team"], {})
        row.update(
            misses=extra.get("misses", 0), lost_usd=extra.get("lost_usd", "0"), top_cause=extra.get("top_cause", "")
        )
    data["by_user"] = [_cache_row(r, "user", misses["by_user"]) for r in breakdown(db, view, "user", limit=50)]
    data["by_key"] = [_cache_row(r, "key", misses["by_key"]) for r in breakdown(db, view, "key", limit=50)]
    data["causes"] = misses["causes"]
    return data


def _cache_row(
    row: dict[str, Any], name: str, misses: dict[str, tuple[int, int, Counter[str]]] | None
) -> dict[str, Any]:
    out = {
        name: row["group"],
        "requests": row["requests"],
        "prompt_tokens": row["input_tokens"] + row["cache_read_tokens"] + row["cache_write_tokens"],
        "cache_read_share": row["cache_read_share"],
        "cache_write_tokens": row["cache_write_tokens"],
        "prompt_cache_saved_usd": row["cache_saved_usd"],
    }
    if misses is not None:
        count, lost, causes = misses.get(row["group"], (0, 0, Counter()))
        out.update(misses=count, lost_usd=usd(lost), top_cause=causes.most_common(1)[0][0] if causes else "")
    return out


def _misses(db: Database, view: View) -> dict[str, Any]:
    """Prompt-cache misses in the view by cause, and per team and key (what the watcher and alarms name)."""
    where, params = view.requests_where()
    rows = db.execute(
        f"SELECT cache_miss, team, user, key_id, cache_miss_nanousd FROM requests WHERE cache_miss IS NOT NULL"
        f" AND {where}"
        " LIMIT ?",
        (*params, _MAX_MISSES),
    ).fetchall()
    causes: dict[str, list[int]] = {}
    by_team: dict[str, tuple[int, int, Counter[str]]] = {}
    by_user: dict[str, tuple[int, int, Counter[str]]] = {}
    by_key: dict[str, tuple[int, int, Counter[str]]] = {}
    for text, team, user, key, nanos in rows:
        cause = str(text).split(" (")[0]
        cell = causes.setdefault(cause, [0, 0])
        cell[0] += 1
        cell[1] += int(nanos or 0)
        for table, member in ((by_team, team or ""), (by_user, user or ""), (by_key, key or "")):
            count, lost, counter = table.get(member, (0, 0, Counter()))
            counter[cause] += 1
            table[member] = (count + 1, lost + int(nanos or 0), counter)
    ordered = sorted(causes.items(), key=lambda item: -item[1][1])
    return {
        "causes": [
            {
                "cause": cause,
                "turns": n,
                "lost_usd": usd(lost),
                "advice": next((a for c, a in ADVICE.items() if cause.startswith(c)), ""),
            }
            for cause, (n, lost) in ordered
        ],
        "by_team": by_team,
        "by_user": by_user,
        "by_key": by_key,
        "cut": len(rows) >= _MAX_MISSES,
    }


def _loops(db: Database, view: View, admin: bool) -> list[dict[str, Any]]:
    """Loop detections; a team viewer sees those of their team's sessions."""
    found = detections(db, 200)
    if admin:
        return found
    sessions = [d["subject"] for d in found if not str(d["subject"]).startswith("key:")]
    if not sessions or view.team is None:
        return []
    marks = ", ".join("?" * len(sessions))
    mine = {
        row[0]
        for row in db.execute(
            f"SELECT session_id FROM rollup_sessions WHERE team = ? AND session_id IN ({marks})", (view.team, *sessions)
        )
    }
    return [d for d in found if d["subject"] in mine]


def _anomalies(db: Database, view: View, today: date) -> list[dict[str, Any]]:
    """Anomalous days in the week up to the range's end; a team viewer sees their team and its users."""
    found = find_anomalies(db, min(view.end or today, today))
    if view.team is None:
        return found
    users = {row[0] for row in db.execute("SELECT DISTINCT user FROM rollup_user_daily WHERE team = ?", (view.team,))}
    return [
        a
        for a in found
        if (a["kind"], a["member"]) == ("team", view.team) or (a["kind"] == "user" and a["member"] in users)
    ]
