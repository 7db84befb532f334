"""Named, append-only schema migrations for the ledger, on SQLite and PostgreSQL alike.

Never edit a migration that has shipped: add a new ``mNNN_<what>`` function and
append it to ``MIGRATIONS``. Applied names are kept in ``_migrations``. The statements are SQLite's; on
PostgreSQL they are translated (``ledger/postgres.py``), and the few steps that differ say so.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tokenctl.ledger.engine import Database, dialect

Migration = Callable[[Database], None]


def m001_create_keys(db: Database) -> None:
    db.execute(
        """
        CREATE TABLE keys (
            key_id      TEXT PRIMARY KEY,
            key_hash    TEXT NOT NULL UNIQUE,   -- sha256 of the secret; the secret is never stored
            prefix      TEXT NOT NULL,          -- first characters, to recognise a key in listings
            name        TEXT,
            user        TEXT,
            team        TEXT,
            project     TEXT,
            models      TEXT NOT NULL DEFAULT '', -- comma-separated allowlist; empty = any
            created_at  REAL NOT NULL,
            revoked_at  REAL,
            updated_at  REAL NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX keys_updated_at ON keys (updated_at)")


def m002_create_requests(db: Database) -> None:
    db.execute(
        """
        CREATE TABLE requests (
            request_id            TEXT PRIMARY KEY,
            ts                    TEXT NOT NULL,     -- start, UTC ISO-8601 with milliseconds and Z
            duration_ms           REAL NOT NULL,
            ttft_ms               REAL,
            api                   TEXT NOT NULL,     -- anthropic.messages | openai.chat | openai.responses | …
            stream                INTEGER NOT NULL,
            status                INTEGER NOT NULL,  -- HTTP status the client received
            outcome               TEXT NOT NULL,     -- ok | upstream_error | rejected | client_disconnected | stream_failed
            partial               INTEGER NOT NULL DEFAULT 0,
            error                 TEXT,
            key_id                TEXT,
            user                  TEXT,
            team                  TEXT,
            project               TEXT,
            tool                  TEXT,
            tool_version          TEXT,
            session_id            TEXT,
            device_id             TEXT,
            tags                  TEXT,              -- JSON object
            provider              TEXT,
            requested_model       TEXT,
            model                 TEXT,              -- model sent upstream
            response_model        TEXT,              -- model the provider said it used
            upstream_request_id   TEXT,
            input_tokens          INTEGER NOT NULL DEFAULT 0,  -- uncached input
            cache_read_tokens     INTEGER NOT NULL DEFAULT 0,
            cache_write_5m_tokens INTEGER NOT NULL DEFAULT 0,
            cache_write_1h_tokens INTEGER NOT NULL DEFAULT 0,
            output_tokens         INTEGER NOT NULL DEFAULT 0,  -- includes reasoning
            reasoning_tokens      INTEGER NOT NULL DEFAULT 0,
            cost_usd              TEXT NOT NULL DEFAULT '0',   -- exact Decimal
            cost_nanousd          INTEGER NOT NULL DEFAULT 0,  -- for SQL sums
            list_cost_usd         TEXT NOT NULL DEFAULT '0',
            cost_source           TEXT,
            cost_is_estimate      INTEGER NOT NULL DEFAULT 0,
            priced                INTEGER NOT NULL DEFAULT 1,
            price_version         TEXT,
            anthropic_beta        TEXT,
            raw_usage             TEXT               -- provider usage JSON as received, for re-metering
        )
        """
    )
    if dialect(db) == "postgresql":  # SQLite numbers rows itself: batches add to the rollups by this order
        db.execute("ALTER TABLE requests ADD COLUMN rowid BIGSERIAL")
        db.execute("CREATE UNIQUE INDEX requests_rowid ON requests (rowid)")


def m003_index_requests(db: Database) -> None:
    db.execute("CREATE INDEX requests_ts ON requests (ts)")
    for column in ("team", "user", "project", "key_id", "session_id"):
        db.execute(f"CREATE INDEX requests_{column} ON requests ({column}, ts)")


def m004_enforcement(db: Database) -> None:
    """Budgets, policies and approvals: ledger columns, the audit log, live rules, approvals, key opt-in."""
    for column, kind in (("reserved_usd", "TEXT"), ("funding", "TEXT"), ("policy", "TEXT"), ("approval_id", "TEXT")):
        db.execute(f"ALTER TABLE requests ADD COLUMN {column} {kind}")
    db.execute("CREATE INDEX requests_funding ON requests (funding, ts)")
    db.execute("ALTER TABLE keys ADD COLUMN opt_in INTEGER NOT NULL DEFAULT 0")
    db.execute(
        """
        CREATE TABLE audit_log (
            id          INTEGER PRIMARY KEY,
            ts          TEXT NOT NULL,      -- UTC ISO-8601
            actor       TEXT NOT NULL,      -- key id for request decisions; 'admin', 'cli' or a name for changes
            action      TEXT NOT NULL,      -- block | downgrade | rewrite | clamp | rate_limit | deny | approval.* | budget.* | policy.* | notify
            rule        TEXT,               -- the budget or policy that decided
            subject     TEXT,               -- who or what it was about (team payments, user alice, apr_…)
            request_id  TEXT,
            detail      TEXT                -- one line of text
        )
        """
    )
    db.execute("CREATE INDEX audit_log_ts ON audit_log (ts)")
    db.execute(
        """
        CREATE TABLE rules (
            kind        TEXT NOT NULL,      -- budget | policy | approval
            name        TEXT NOT NULL,
            definition  TEXT NOT NULL,      -- JSON, the same fields as in the YAML file
            updated_at  REAL NOT NULL,
            deleted     INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (kind, name)
        )
        """
    )
    db.execute(
        """
        CREATE TABLE approvals (
            approval_id      TEXT PRIMARY KEY,
            created_at       REAL NOT NULL,
            status           TEXT NOT NULL,  -- pending | approved | denied | used | expired
            rule             TEXT NOT NULL,
            fingerprint      TEXT NOT NULL,  -- sha256 of key id and body: the same request retried
            key_id           TEXT,
            user             TEXT,
            team             TEXT,
            project          TEXT,
            model            TEXT,
            estimated_usd    TEXT NOT NULL,
            input_tokens     INTEGER NOT NULL,
            reason           TEXT NOT NULL,
            decided_by       TEXT,
            decided_at       REAL,
            note             TEXT,
            grant_scope      TEXT,           -- request | user
            grant_until      REAL,           -- user grants: valid until
            grant_usd        TEXT,           -- user grants: amount they cover
            grant_used_usd   TEXT NOT NULL DEFAULT '0'
        )
        """
    )
    db.execute("CREATE INDEX approvals_fingerprint ON approvals (fingerprint)")
    db.execute("CREATE INDEX approvals_status ON approvals (status, created_at)")


# Dimensions the daily rollup keeps; missing values are stored as '' so the primary key can match them.
ROLLUP_DIMENSIONS = ("day", "team", "user", "project", "model", "tool", "key_id", "provider")
ROLLUP_MEASURES = (
    "requests",
    "errors",
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_nanousd",
    "uncached_nanousd",
    "policy_saved_nanousd",
    "routing_saved_nanousd",
    "unpriced",
    "blocked",
    "duration_ms",
)
SESSION_MEASURES = (
    "requests",
    "errors",
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "output_tokens",
    "cost_nanousd",
    "duration_ms",
)


def _measure_values(row: str) -> dict[str, str]:
    """SQL for each rollup measure of one requests row (``row`` is NEW in the trigger, a table alias otherwise)."""
    return {
        "requests": "1",
        "errors": f"CASE WHEN {row}.status >= 400 OR {row}.outcome NOT IN ('ok') THEN 1 ELSE 0 END",
        "input_tokens": f"{row}.input_tokens",
        "cache_read_tokens": f"{row}.cache_read_tokens",
        "cache_write_tokens": f"{row}.cache_write_5m_tokens + {row}.cache_write_1h_tokens",
        "output_tokens": f"{row}.output_tokens",
        "reasoning_tokens": f"{row}.reasoning_tokens",
        "cost_nanousd": f"{row}.cost_nanousd",
        "uncached_nanousd": f"COALESCE({row}.uncached_nanousd, {row}.cost_nanousd)",
        "policy_saved_nanousd": f"CASE WHEN {row}.saving_source = 'policy'"
        f" THEN {row}.counterfactual_nanousd - {row}.cost_nanousd ELSE 0 END",
        "routing_saved_nanousd": f"CASE WHEN {row}.saving_source = 'routing'"
        f" THEN {row}.counterfactual_nanousd - {row}.cost_nanousd ELSE 0 END",
        "unpriced": f"1 - {row}.priced",
        "blocked": f"CASE WHEN {row}.status IN (402, 403, 429) AND {row}.outcome = 'rejected' THEN 1 ELSE 0 END",
        "duration_ms": f"ROUND({row}.duration_ms)",  # whole ms: sums of integers are exact in any order
    }


def _dimension_values(row: str) -> dict[str, str]:
    return {d: f"COALESCE({row}.{d}, '')" for d in ROLLUP_DIMENSIONS}


def _daily_trigger_sql() -> str:
    """Add one new requests row (NEW) to its rollup_daily cell."""
    values = [*_dimension_values("NEW").values(), *_measure_values("NEW").values()]
    updates = ", ".join(f"{m} = {m} + excluded.{m}" for m in ROLLUP_MEASURES)
    return (
        f"INSERT INTO rollup_daily ({', '.join((*ROLLUP_DIMENSIONS, *ROLLUP_MEASURES))})"
        f" VALUES ({', '.join(values)}) ON CONFLICT ({', '.join(ROLLUP_DIMENSIONS)}) DO UPDATE SET {updates}"
    )


def rebuild_daily(db: Database, where: str = "", params: tuple[object, ...] = ()) -> None:
    """Fill rollup_daily from the requests rows matching ``where`` (into cells those rows alone make up)."""
    dims = list(_dimension_values("r").values())
    sums = [f"SUM({v})" for v in _measure_values("r").values()]
    db.execute(
        f"INSERT INTO rollup_daily ({', '.join((*ROLLUP_DIMENSIONS, *ROLLUP_MEASURES))})"
        f" SELECT {', '.join(dims + sums)} FROM requests r WHERE r.day IS NOT NULL {where}"
        f" GROUP BY {', '.join(dims)}",
        params,
    )


def m005_rollups(db: Database) -> None:
    """Dashboard rollups kept up to date by triggers as rows arrive, plus the columns savings are computed from.

    ``day`` is the request's local date in the reporting timezone (set by the writer).
    ``uncached_nanousd`` is what the same usage would have cost without prompt caching;
    ``counterfactual_nanousd`` what the model the client asked for would have cost for the same usage,
    when a policy or the router served another (``saving_source`` says which).
    """
    for column, kind in (
        ("day", "TEXT"),
        ("uncached_nanousd", "INTEGER"),
        ("counterfactual_nanousd", "INTEGER"),
        ("saving_source", "TEXT"),
    ):
        db.execute(f"ALTER TABLE requests ADD COLUMN {column} {kind}")
    db.execute("ALTER TABLE keys ADD COLUMN role TEXT NOT NULL DEFAULT 'client'")  # client | viewer
    db.execute("UPDATE requests SET day = substr(ts, 1, 10)")  # rows from before: their UTC date
    dims = ", ".join(f"{d} TEXT NOT NULL" for d in ROLLUP_DIMENSIONS)
    measures = ", ".join(
        f"{m} {'REAL' if m == 'duration_ms' else 'INTEGER'} NOT NULL DEFAULT 0" for m in ROLLUP_MEASURES
    )
    db.execute(
        f"CREATE TABLE rollup_daily ({dims}, {measures}, PRIMARY KEY ({', '.join(ROLLUP_DIMENSIONS)})) WITHOUT ROWID"
    )
    session_measures = ", ".join(
        f"{m} {'REAL' if m == 'duration_ms' else 'INTEGER'} NOT NULL DEFAULT 0" for m in SESSION_MEASURES
    )
    db.execute(
        f"""CREATE TABLE rollup_sessions (
            session_id TEXT PRIMARY KEY, team TEXT, user TEXT, project TEXT, tool TEXT, model TEXT,
            first_ts TEXT NOT NULL, last_ts TEXT NOT NULL, first_day TEXT, last_day TEXT, {session_measures})"""
    )
    db.execute("CREATE INDEX rollup_sessions_last_day ON rollup_sessions (last_day, cost_nanousd)")
    db.execute("CREATE INDEX rollup_sessions_team ON rollup_sessions (team, last_day)")
    if dialect(db) == "sqlite":  # replaced by batch rollups in m007; PostgreSQL never had the trigger
        db.execute(
            f"CREATE TRIGGER requests_rollup AFTER INSERT ON requests WHEN NEW.day IS NOT NULL BEGIN"
            f" {_daily_trigger_sql()}; {_session_trigger_sql()}; END"
        )
    rebuild_daily(db)
    rebuild_sessions(db)


# Small rollups for the pages everyone opens: {table: its dimensions}. The all-dimension rollup_daily grows
# to millions of rows (users × keys × …); these to about teams × projects × tools × models, and users, a day.
SMALL_ROLLUPS = {
    "rollup_team_daily": ("day", "team", "project", "tool", "provider", "model"),
    "rollup_user_daily": ("day", "team", "user"),
}


def _small_trigger_sql(table: str) -> str:
    """Add one new requests row (NEW) to its cell of a small rollup."""
    dims, columns = _dimension_values("NEW"), SMALL_ROLLUPS[table]
    values = [*(dims[d] for d in columns), *_measure_values("NEW").values()]
    updates = ", ".join(f"{m} = {m} + excluded.{m}" for m in ROLLUP_MEASURES)
    return (
        f"INSERT INTO {table} ({', '.join((*columns, *ROLLUP_MEASURES))})"
        f" VALUES ({', '.join(values)}) ON CONFLICT ({', '.join(columns)}) DO UPDATE SET {updates}"
    )


def m006_small_rollups(db: Database) -> None:
    """Rollups without users and keys (overview, breakdowns, savings, team budgets) and by user (per-user views)."""
    measures = ", ".join(
        f"{m} {'REAL' if m == 'duration_ms' else 'INTEGER'} NOT NULL DEFAULT 0" for m in ROLLUP_MEASURES
    )
    for table, columns in SMALL_ROLLUPS.items():
        dims = ", ".join(f"{d} TEXT NOT NULL" for d in columns)
        db.execute(f"CREATE TABLE {table} ({dims}, {measures}, PRIMARY KEY ({', '.join(columns)})) WITHOUT ROWID")
    rebuild_small_rollups(db)
    if dialect(db) != "sqlite":
        return
    db.execute("DROP TRIGGER requests_rollup")
    small = "; ".join(_small_trigger_sql(t) for t in SMALL_ROLLUPS)
    db.execute(
        f"CREATE TRIGGER requests_rollup AFTER INSERT ON requests WHEN NEW.day IS NOT NULL BEGIN"
        f" {_daily_trigger_sql()}; {small}; {_session_trigger_sql()}; END"
    )


def rebuild_small_rollups(db: Database) -> None:
    """Fill the small rollups from rollup_daily (which must be complete)."""
    sums = ", ".join(f"SUM({m})" for m in ROLLUP_MEASURES)
    for table, columns in SMALL_ROLLUPS.items():
        db.execute(
            f"INSERT INTO {table} ({', '.join((*columns, *ROLLUP_MEASURES))})"
            f" SELECT {', '.join(columns)}, {sums} FROM rollup_daily GROUP BY {', '.join(columns)}"
        )


SESSION_COLUMNS = (
    "session_id",
    "team",
    "user",
    "project",
    "tool",
    "model",
    "first_ts",
    "last_ts",
    "first_day",
    "last_day",
    *SESSION_MEASURES,
)


def _earliest(column: str) -> str:
    kept = f"rollup_sessions.{column}"
    return f"{column} = CASE WHEN excluded.{column} < {kept} THEN excluded.{column} ELSE {kept} END"


def _latest(column: str) -> str:
    kept = f"rollup_sessions.{column}"
    return f"{column} = CASE WHEN excluded.{column} > {kept} THEN excluded.{column} ELSE {kept} END"


# A session's first and last request, kept when a batch adds to it (portable: no two-argument min and max).
_SESSION_SPAN = ", ".join((_earliest("first_ts"), _earliest("first_day"), _latest("last_ts"), _latest("last_day")))


def _session_trigger_sql() -> str:
    """Add one new requests row (NEW) to its session's rollup_sessions row."""
    row = "NEW"
    m = _measure_values(row)
    cols = SESSION_COLUMNS
    values = [
        f"{row}.session_id",
        f"{row}.team",
        f"{row}.user",
        f"{row}.project",
        f"{row}.tool",
        f"{row}.model",
        f"{row}.ts",
        f"{row}.ts",
        f"{row}.day",
        f"{row}.day",
        *(m[k] for k in SESSION_MEASURES),
    ]
    sums = ", ".join(f"{k} = {k} + excluded.{k}" for k in SESSION_MEASURES)
    return (
        f"INSERT INTO rollup_sessions ({', '.join(cols)}) SELECT {', '.join(values)}"
        f" WHERE {row}.session_id IS NOT NULL"
        f" ON CONFLICT (session_id) DO UPDATE SET {sums},"
        f" {_SESSION_SPAN}, model = CASE WHEN excluded.last_ts >= rollup_sessions.last_ts"
        " THEN excluded.model ELSE rollup_sessions.model END"
    )


def rebuild_sessions(db: Database) -> None:
    db.execute(_sessions_sql("", upsert=False))


def _sessions_sql(where: str, *, upsert: bool) -> str:
    """Sessions of the requests rows matching ``where``. Team, user, project, tool and model are those of the
    session's latest request (an agent that changes model mid-session shows the one it uses now)."""
    m = _measure_values("r")
    sums = ", ".join(f"SUM({m[k]}) AS {k}" for k in SESSION_MEASURES)
    latest = (
        "(SELECT r2.rowid FROM requests r2 WHERE r2.session_id = r.session_id AND r2.day IS NOT NULL"
        f" {where.replace('r.', 'r2.')} ORDER BY r2.ts DESC, r2.rowid DESC LIMIT 1)"
    )
    # The rows to add are taken first, by rowid: grouped straight from requests, both engines would rather walk
    # the whole session index (no sort needed), which grows with the ledger (300 us per row at 300k rows).
    rows = f"WITH batch AS MATERIALIZED (SELECT * FROM requests r WHERE true {where}) " if where else ""
    source = "batch r" if where else "requests r"
    grouped = (
        f"SELECT r.session_id, min(r.ts) AS first_ts, max(r.ts) AS last_ts, min(r.day) AS first_day,"
        f" max(r.day) AS last_day, {sums}, {latest} AS latest FROM {source}"
        f" WHERE r.session_id IS NOT NULL AND r.day IS NOT NULL GROUP BY r.session_id"
    )
    sql = (
        f"{rows}INSERT INTO rollup_sessions ({', '.join(SESSION_COLUMNS)})"
        f" SELECT g.session_id, l.team, l.user, l.project, l.tool, l.model, g.first_ts, g.last_ts, g.first_day,"
        f" g.last_day, {', '.join('g.' + k for k in SESSION_MEASURES)} FROM ({grouped}) g"
        " JOIN requests l ON l.rowid = g.latest WHERE true"
    )
    return f"{sql} {SESSION_CONFLICT}" if upsert else sql


def _session_conflict_sql() -> str:
    """What a session already in rollup_sessions keeps when a batch adds to it: sums added, the span widened,
    team, user, project, tool and model taken from whichever request is later."""
    t = "rollup_sessions"
    added = ", ".join(f"{k} = {t}.{k} + excluded.{k}" for k in SESSION_MEASURES)
    newer = ", ".join(
        f"{c} = CASE WHEN excluded.last_ts >= {t}.last_ts THEN excluded.{c} ELSE {t}.{c} END"
        for c in ("team", "user", "project", "tool", "model")
    )
    return f"ON CONFLICT (session_id) DO UPDATE SET {added}, {newer}, {_SESSION_SPAN}"


SESSION_CONFLICT = _session_conflict_sql()


def _cells_sql(table: str, columns: tuple[str, ...], where: str) -> str:
    """Add the requests rows matching ``where`` to ``table``: one upsert per distinct cell, not per row."""
    dims = _dimension_values("r")
    values = [dims[c] for c in columns]
    sums = [f"SUM({v})" for v in _measure_values("r").values()]
    return (
        f"INSERT INTO {table} ({', '.join((*columns, *ROLLUP_MEASURES))})"
        f" SELECT {', '.join(values + sums)} FROM requests r WHERE r.day IS NOT NULL {where}"
        f" GROUP BY {', '.join(values)} {cell_conflict_sql(table, columns)}"
    )


def cell_conflict_sql(table: str, columns: tuple[str, ...]) -> str:
    """A rollup cell already there gets the new measures added."""
    added = ", ".join(f"{m} = {table}.{m} + excluded.{m}" for m in ROLLUP_MEASURES)
    return f"ON CONFLICT ({', '.join(columns)}) DO UPDATE SET {added}"


_NEW_ROWS = "AND r.rowid > ?1"
BATCH_ROLLUP_SQL: tuple[str, ...] = (
    _cells_sql("rollup_daily", ROLLUP_DIMENSIONS, _NEW_ROWS),
    *(_cells_sql(table, columns, _NEW_ROWS) for table, columns in SMALL_ROLLUPS.items()),
    _sessions_sql(_NEW_ROWS, upsert=True),
)


def add_to_rollups(db: Database, after_rowid: int) -> None:
    """Add every requests row inserted after ``after_rowid`` to the rollups (inside the inserting transaction)."""
    for sql in BATCH_ROLLUP_SQL:
        db.execute(sql, (after_rowid,))


def m007_batch_rollups(db: Database) -> None:
    """Rollups are added once per batch by the writer (``add_to_rollups``), one upsert per distinct cell, instead
    of by a trigger per row; a session's model is the one it used last; durations are summed in whole
    milliseconds, so batches and a rebuild give identical sums. The rollups are rebuilt once."""
    if dialect(db) == "sqlite":
        db.execute("DROP TRIGGER IF EXISTS requests_rollup")
    for table in ("rollup_daily", *SMALL_ROLLUPS, "rollup_sessions"):  # durations now summed as whole ms
        db.execute(f"DELETE FROM {table}")
    rebuild_daily(db)
    rebuild_small_rollups(db)
    rebuild_sessions(db)


def m008_loop_resumes(db: Database) -> None:
    """Sessions an operator let go on after a loop rule paused them (``tokenctl loops resume``)."""
    db.execute(
        """
        CREATE TABLE loop_resumes (
            subject         TEXT NOT NULL,      -- a session id, or key:<key id> for requests without one
            rule            TEXT NOT NULL,
            repeats_allowed INTEGER NOT NULL,   -- paused again only beyond this many repeats
            resumed_at      REAL NOT NULL,
            resumed_by      TEXT,
            PRIMARY KEY (subject, rule)
        )
        """
    )


def m009_routing_decisions(db: Database) -> None:
    """What routing decided per request, for dry runs, escalations and training on the deployment's own traffic.

    ``route_tier`` the tier chosen (in a dry run: the tier it would have chosen); ``route_dry_run`` 1 when the
    model asked for was served instead; ``would_model`` / ``would_nanousd`` the dry run's model and what the
    same usage would have cost on it; ``route_escalation`` why the session moved to the escalation tier on
    this request; ``route_score`` the classifier's score and ``route_features`` the hashed feature ids it
    judged (numbers, not text), for ``tokenctl router train --from-ledger``."""
    for column, kind in (
        ("route_tier", "TEXT"),
        ("route_dry_run", "INTEGER"),  # NULL in rows replayed from an older version's journal
        ("would_model", "TEXT"),
        ("would_nanousd", "INTEGER"),
        ("route_escalation", "TEXT"),
        ("route_score", "REAL"),
        ("route_features", "TEXT"),
    ):
        db.execute(f"ALTER TABLE requests ADD COLUMN {column} {kind}")
    db.execute(
        """
        CREATE TABLE feedback (
            id          TEXT PRIMARY KEY,
            ts          REAL NOT NULL,
            session_id  TEXT,
            request_id  TEXT,
            outcome     REAL NOT NULL,      -- 1 the work was done (tests passed, PR merged), 0 it was not
            source      TEXT,               -- who said so: ci, review, a person
            key_id      TEXT                -- the key that sent the feedback
        )
        """
    )
    db.execute("CREATE INDEX feedback_session ON feedback (session_id)")


def m010_response_cache(db: Database) -> None:
    """``response_cache`` hit | miss | bypass for requests the cache looked at; ``cache_avoided_nanousd`` what a
    hit's answer cost when it was made (what replaying it avoided). Hits are few beside all requests, so a
    partial index keeps the savings query off the rest of the table."""
    db.execute("ALTER TABLE requests ADD COLUMN response_cache TEXT")
    db.execute("ALTER TABLE requests ADD COLUMN cache_avoided_nanousd INTEGER")
    db.execute("CREATE INDEX requests_cache_hits ON requests (ts) WHERE response_cache = 'hit'")


def m011_prompt_cache_misses(db: Database) -> None:
    """``cache_miss``: why a turn wrote the prompt cache instead of reading it (the prefix part that changed, the
    lifetime running out, no cache_control); ``cache_miss_nanousd``: what the written tokens cost above
    reading them."""
    db.execute("ALTER TABLE requests ADD COLUMN cache_miss TEXT")
    db.execute("ALTER TABLE requests ADD COLUMN cache_miss_nanousd INTEGER")


def m012_cache_miss_index(db: Database) -> None:
    """Misses are a few turns among many: a partial index keeps the Health page and the watcher's cause lookups
    off the rest of the table."""
    db.execute("CREATE INDEX requests_cache_misses ON requests (ts) WHERE cache_miss IS NOT NULL")


def m013_session_approvals(db: Database) -> None:
    """``session_id`` of a held request: approving it lets that session's next turns and retries through (an
    agent's next turn is a new request, so approving "this request once" would hold it again)."""
    db.execute("ALTER TABLE approvals ADD COLUMN session_id TEXT")
    db.execute("CREATE INDEX approvals_session ON approvals (key_id, session_id)")


def m014_savings_index(db: Database) -> None:
    """Requests a policy or the router served on another model (a share of all): a partial index lets the
    Savings page credit what they saved to the model the client asked for without reading the rest."""
    db.execute("CREATE INDEX requests_savings ON requests (ts) WHERE saving_source IS NOT NULL")


def m015_partial_null_indexes(db: Database) -> None:
    """``funding`` is empty on nearly every row (only a pool draw sets it) and ``session_id`` on every request
    without a session: their indexes now leave those rows out, one B-tree insert fewer per such row (a row
    with neither cost the writer 32 -> 24 us). Every query on them names a value (``= ?``, ``IS NOT NULL``),
    which a partial index serves; neither is a dashboard filter that can ask for "(none)"."""
    for column in ("funding", "session_id"):
        db.execute(f"DROP INDEX requests_{column}")
        db.execute(f"CREATE INDEX requests_{column} ON requests ({column}, ts) WHERE {column} IS NOT NULL")


@contextmanager
def transaction(db: Database) -> Iterator[Database]:
    """BEGIN IMMEDIATE … COMMIT on an autocommit connection, rolled back on error."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


MIGRATIONS: list[Migration] = [
    m001_create_keys,
    m002_create_requests,
    m003_index_requests,
    m004_enforcement,
    m005_rollups,
    m006_small_rollups,
    m007_batch_rollups,
    m008_loop_resumes,
    m009_routing_decisions,
    m010_response_cache,
    m011_prompt_cache_misses,
    m012_cache_miss_index,
    m013_session_approvals,
    m014_savings_index,
    m015_partial_null_indexes,
]


def applied(db: Database) -> list[str]:
    numbered = ", rowid BIGSERIAL" if dialect(db) == "postgresql" else ""
    db.execute(f"CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL{numbered})")
    return [row[0] for row in db.execute("SELECT name FROM _migrations ORDER BY rowid")]


def migrate(db: Database, migrations: list[Migration] | None = None) -> list[str]:
    """Apply pending migrations in order, each in its own transaction. Returns the names applied now.

    On PostgreSQL, replicas starting together take turns (an advisory lock): each migration runs once."""
    if dialect(db) == "postgresql":
        db.execute("SELECT pg_advisory_lock(7261707)")
        try:
            return _migrate(db, migrations)
        finally:
            db.execute("SELECT pg_advisory_unlock(7261707)")
    return _migrate(db, migrations)


def _migrate(db: Database, migrations: list[Migration] | None) -> list[str]:
    done = set(applied(db))
    newly: list[str] = []
    for migration in migrations if migrations is not None else MIGRATIONS:
        name = migration.__name__
        if name in done:
            continue
        with transaction(db):
            migration(db)
            db.execute("INSERT INTO _migrations (name, applied_at) VALUES (?, ?)", (name, time.time()))
        newly.append(name)
    return newly
