"""The ``tokenctl`` command: serve, keys, report, budgets, policies, approvals, audit, migrate, fake-provider."""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import orjson
from aiohttp import web

from tokenctl.app import create_app, runner_settings
from tokenctl.cli.governance import GovernanceError, add_governance_commands
from tokenctl.cli.listen import ListenError, bind_listener
from tokenctl.cli.parsing import finish_parser
from tokenctl.cli.render import render_table
from tokenctl.cli.reports import (
    add_view_arguments,
    check_breakdown_arguments,
    parse_day,
    prune_requests,
    rebuild_rollups,
    run_view,
)
from tokenctl.cli.router import add_router_commands
from tokenctl.cli.workers import Supervisor, check_workers, write_left_journals
from tokenctl.config import Config, ConfigError, find_config_path, load_config
from tokenctl.identity.keys import KeyInfo, KeyNotFound, create_key, list_keys, revoke_key
from tokenctl.ingress.server import GatewayRunner
from tokenctl.ledger.db import UNAVAILABLE, connect, is_postgres
from tokenctl.ledger.journal import LedgerInUse
from tokenctl.ledger.migrations import applied, migrate
from tokenctl.ledger.report import FILTER_COLUMNS, GROUPINGS, ReportRow, spend_report, total
from tokenctl.metering.pricing import PriceFileError
from tokenctl.observe.logs import configure_logging
from tokenctl.runtime import raise_fd_limit, tune_for_many_streams
from tokenctl.text import redact_url


def main(argv: Sequence[str] | None = None, *, clock: Callable[[], float] = time.time) -> int:
    """Run one command. ``clock`` is "now" for every command (reports, budget windows, retention)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    args.clock = clock
    try:
        return args.run(args) or 0
    except (ConfigError, PriceFileError, ValueError, KeyNotFound, LookupError, GovernanceError) as exc:
        print(f"tokenctl: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `tokenctl report | head`: the reader has all it wanted
        _silence_stdout()
        return 0
    except UNAVAILABLE as exc:  # the PostgreSQL server down, a SQLite file locked too long
        print(f"tokenctl: error: the ledger cannot be reached: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1


def _silence_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null so the interpreter's final flush does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tokenctl", description="Spend control plane for AI coding tools.")
    sub = p.add_subparsers(title="commands")

    s = sub.add_parser("serve", help="run the gateway in the foreground (Ctrl-C or SIGTERM stops it)")
    s.add_argument("--host", help="address to listen on (default: the config's server.host, 127.0.0.1)")
    s.add_argument("--port", type=int, help="port to listen on (default: the config's server.port, 8080)")
    s.add_argument("--ledger", help=LEDGER_HELP)
    s.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    s.add_argument(
        "--workers",
        type=int,
        default=1,
        help="gateway processes sharing the port, each with its own event loop (default: 1; more needs "
        "store.redis_url)",
    )
    s.set_defaults(run=_serve, ledger_mode="create")

    k = sub.add_parser("keys", help="create, list and revoke virtual keys").add_subparsers(title="keys commands")
    kc = k.add_parser("create", help="create a key; the secret is printed once")
    kc.add_argument("--user", help="the person the key's requests are attributed to")
    kc.add_argument("--team", help="the team the key's spend counts against")
    kc.add_argument("--project", help="the project the key's spend is attributed to")
    kc.add_argument("--name", help="a label for the key (shown in lists and the dashboard)")
    kc.add_argument("--models", default="", help="comma-separated allowlist of models or globs (default: any)")
    kc.add_argument(
        "--opt-in",
        action="store_true",
        help="may use models that policies would otherwise rewrite to a cheaper default",
    )
    kc.add_argument(
        "--viewer",
        action="store_true",
        help="a dashboard viewer key: signs in to /ui to see its --team's spend; cannot call models",
    )
    kc.add_argument("--ledger", help=LEDGER_HELP)
    kc.set_defaults(run=_keys_create, ledger_mode="write")
    kl = k.add_parser("list", help="list keys (never their secrets)")
    kl.add_argument("--all", action="store_true", help="include revoked keys")
    kl.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    kl.add_argument("--ledger", help=LEDGER_HELP)
    kl.set_defaults(run=_keys_list)
    kr = k.add_parser("revoke", help="revoke a key by id")
    kr.add_argument("key_id", help="the key's id (key_…), from `tokenctl keys list`")
    kr.add_argument("--ledger", help=LEDGER_HELP)
    kr.set_defaults(run=_keys_revoke, ledger_mode="write")

    r = sub.add_parser(
        "report", help="spend by team, user, …; or the dashboard's overview, concentration, savings, sessions"
    )
    add_view_arguments(r)
    r.add_argument("--by", choices=sorted(GROUPINGS), help="breakdown: the column to group by (default: team)")
    r.add_argument("--since", help="breakdown: from this moment on: 7d, 24h, 30m, 2026-11-01 or an ISO time")
    r.add_argument("--until", help="breakdown: before this moment (same forms as --since)")
    r.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output format")
    r.add_argument("--ledger", help=LEDGER_HELP)
    r.set_defaults(run=_report)

    rb = sub.add_parser("rebuild-rollups", help="recompute the dashboard rollups from the requests table")
    rb.add_argument("--ledger", help=LEDGER_HELP)
    rb.set_defaults(run=lambda a: rebuild_rollups(_config(a)))

    pr = sub.add_parser("prune", help="delete old request rows; the dashboard's daily rollups keep their totals")
    pr.add_argument("--older-than-days", type=int, required=True, help="delete rows from before this many days ago")
    pr.add_argument("--vacuum", action="store_true", help="give the space back to the file system afterwards")
    pr.add_argument("--ledger", help=LEDGER_HELP)
    pr.set_defaults(run=lambda a: prune_requests(_config(a), a.older_than_days, a.vacuum, a.clock()))

    m = sub.add_parser("migrate", help="create the ledger or bring its schema up to date; list applied migrations")
    m.add_argument("--ledger", help=LEDGER_HELP)
    m.set_defaults(run=_migrate, ledger_mode="create")

    add_governance_commands(sub, _config)
    add_router_commands(sub, _config)

    dm = sub.add_parser("demo", help="a full dashboard on synthetic data, with the fake provider: no provider key")
    dm.add_argument("--dir", default="tokenctl-demo", help="folder for the demo's ledger and config (emptied first)")
    dm.add_argument("--host", default="127.0.0.1", help="address to listen on")
    dm.add_argument("--port", type=int, default=8080, help="port to listen on")
    dm.add_argument("--rows", type=int, default=30_000, help="synthetic requests to generate")
    dm.set_defaults(run=_demo)

    f = sub.add_parser("fake-provider", help="run the fake LLM provider (tests, demos, benchmarks)")
    f.add_argument("--host", default="127.0.0.1", help="address to listen on")
    f.add_argument("--port", type=int, default=9090, help="port to listen on")
    f.set_defaults(run=_fake_provider)
    finish_parser(p, CONFIG_HELP)
    return p


CONFIG_HELP = "YAML config file (default: $TOKENCTL_CONFIG, else ./tokenctl.yaml if present)"
LEDGER_HELP = "SQLite ledger file or postgresql:// URL (default: the config's ledger, else ./tokenctl.db)"


def _config(args: argparse.Namespace) -> Config:
    config = load_config(find_config_path(getattr(args, "config", None)))
    overrides: dict[str, object] = {}
    if getattr(args, "ledger", None):
        overrides["ledger_path"] = args.ledger
    if getattr(args, "host", None):
        overrides["host"] = args.host
    if getattr(args, "port", None):
        overrides["port"] = args.port
    if overrides:
        config = replace(config, **overrides)  # type: ignore[arg-type]
    _check_ledger(config, args)
    return config


def _check_ledger(config: Config, args: argparse.Namespace) -> None:
    """Commands use the ledger the gateway uses: a missing one is created only where that was clearly asked for.

    ``serve`` and ``migrate`` create it; commands that write (``keys create``, ``budgets set`` …) create it
    when the path was given (``--ledger`` or a config file); every other command refuses, naming where it looked.
    """
    path = config.ledger_path
    mode = getattr(args, "ledger_mode", "read")
    if path == ":memory:" or is_postgres(path) or mode == "create" or Path(path).exists():
        return
    explicit = bool(getattr(args, "ledger", None)) or config.source != "<defaults>"
    if mode == "write" and explicit:
        return
    if getattr(args, "ledger", None):
        origin = "from --ledger"
    elif config.source != "<defaults>":
        origin = f"ledger.path in {config.source}"
    else:
        origin = f"the default: no --config given, $TOKENCTL_CONFIG not set, no tokenctl.yaml in {Path.cwd()}"
    raise ConfigError(
        f"no ledger at {path} ({origin}). Run this where the gateway's tokenctl.yaml is, pass "
        "--config or --ledger, or create a new ledger here with `tokenctl migrate`"
    )


# -- serve ------------------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    config = _config(args)
    configure_logging(args.log_level, config.observability.log_format)
    _install_uvloop()
    raise_fd_limit()
    try:
        if args.workers == 1:
            asyncio.run(_run_server(config))
            return 0
        check_workers(config, args.workers)
        sock = bind_listener(config.host, config.port)  # before the workers: a taken port is one clear line
        return Supervisor(config, args.workers, sock, lambda c: _serve_worker(c, sock)).run()
    except (ListenError, LedgerInUse) as exc:
        print(f"tokenctl: error: {exc}", file=sys.stderr)
        return 1


def _serve_worker(config: Config, sock: socket.socket) -> int:
    try:
        asyncio.run(_run_server(config, sock))
    except LedgerInUse as exc:
        print(f"tokenctl: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _log_dashboard(config: Config) -> None:
    log = logging.getLogger("tokenctl")
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::", "") else config.host
    log.info("dashboard: http://%s:%d/ui/", host, config.port)
    if not os.environ.get(config.admin_key_env):
        log.warning(
            "%s is not set: the admin API and the dashboard's admin sign-in are off (viewer keys still "
            "sign in); set it to a long random secret and restart to enable them",
            config.admin_key_env,
        )


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _run_server(config: Config, sock: socket.socket | None = None) -> None:
    if sock is None:  # bound before anything is created: a taken port changes nothing
        sock = bind_listener(config.host, config.port)
    # Handled from the first moment, so a SIGTERM while starting (a supervisor stopping a worker it has just
    # restarted) still closes the ledger and its journal cleanly instead of killing the process mid-start.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = GatewayRunner(create_app(config), handle_signals=False, **runner_settings(config))
    await runner.setup()
    if stop.is_set():
        await _stop_server(runner, config)
        return
    tune_for_many_streams()
    await web.SockSite(runner, sock, backlog=2048).start()
    log = logging.getLogger("tokenctl")
    log.info(
        "tokenctl listening on http://%s:%d (pid %d, config %s, ledger %s)",
        config.host,
        config.port,
        os.getpid(),
        config.source,
        redact_url(config.ledger_path),
    )
    _log_dashboard(config)
    for provider in config.providers:
        log.info(
            "provider %s (%s) → %s, models %s",
            provider.name,
            provider.kind,
            provider.base_url,
            ", ".join(provider.models),
        )
    await stop.wait()
    await _stop_server(runner, config)


async def _stop_server(runner: web.AppRunner, config: Config) -> None:
    log = logging.getLogger("tokenctl")
    log.info(
        "shutting down: finishing in-flight requests (up to %gs) and flushing the ledger", config.shutdown_grace_seconds
    )
    await runner.cleanup()
    log.info("stopped; ledger flushed")


# -- keys -------------------------------------------------------------------------------------------


def _keys_create(args: argparse.Namespace) -> int:
    db = connect(_config(args).ledger_path)
    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    info, secret = create_key(
        db,
        user=args.user,
        team=args.team,
        project=args.project,
        name=args.name,
        models=models,
        opt_in=args.opt_in,
        role="viewer" if args.viewer else "client",
    )
    print(secret)
    print(
        f"created {info.role} key {info.key_id} (user={info.user} team={info.team} project={info.project}); "
        "the key above is shown only now: store it safely",
        file=sys.stderr,
    )
    return 0


def _key_dict(k: KeyInfo) -> dict[str, object]:
    return {
        "key_id": k.key_id,
        "prefix": k.prefix,
        "name": k.name,
        "user": k.user,
        "team": k.team,
        "project": k.project,
        "models": list(k.models),
        "role": k.role,
        "created_at": k.created_at,
        "revoked_at": k.revoked_at,
    }


def _keys_list(args: argparse.Namespace) -> int:
    keys = list_keys(connect(_config(args).ledger_path), include_revoked=args.all)
    if args.format == "json":
        print(orjson.dumps([_key_dict(k) for k in keys], option=orjson.OPT_INDENT_2).decode())
        return 0
    header = ["key_id", "prefix", "role", "user", "team", "project", "models", "status"]
    rows = [
        [
            k.key_id,
            k.prefix + "…",
            k.role,
            k.user or "",
            k.team or "",
            k.project or "",
            ",".join(k.models) or "any",
            "revoked" if k.revoked_at else "active",
        ]
        for k in keys
    ]
    print(render_table(header, rows))
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    info = revoke_key(connect(_config(args).ledger_path), args.key_id)
    print(f"revoked {info.key_id}; a running gateway refuses it within its key refresh interval")
    return 0


# -- report -----------------------------------------------------------------------------------------


def _report(args: argparse.Namespace) -> int:
    if args.view != "breakdown":
        return run_view(args, _config(args))
    check_breakdown_arguments(args)
    config = _config(args)
    now = datetime.fromtimestamp(args.clock(), UTC)
    filters = {name: value for name in FILTER_COLUMNS if (value := getattr(args, name)) is not None}
    args.by = args.by or "team"
    rows = spend_report(
        connect(config.ledger_path),
        args.by,
        args.since,
        args.until,
        filters=filters,
        start=parse_day(args.start),
        end=parse_day(args.end),
        now=now,
    )
    if args.format == "json":
        print(orjson.dumps([r.as_dict() for r in rows], option=orjson.OPT_INDENT_2).decode())
    elif args.format == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        fields = list(ReportRow.FIELDS)
        writer.writerow([args.by if f == "group" else f for f in fields])
        for row in rows:
            writer.writerow(row.as_dict().values())
        sys.stdout.write(buf.getvalue())
    else:
        header = [args.by, "requests", "input", "cache read", "cache write", "output", "reasoning", "cost (USD)"]
        body = [_table_row(r) for r in rows]
        print(render_table(header, body, footer=_table_row(total(rows)) if rows else None))
    unpriced = sum(r.unpriced_requests for r in rows)
    if unpriced:  # in every format, on stderr so CSV and JSON stay clean
        print(
            f"warning: {unpriced} request(s) used models without a price (counted at $0, or at the stand-in of "
            "enforcement.unpriced_models); add the models to the price override file",
            file=sys.stderr,
        )
    return 0


def _table_row(r: ReportRow) -> list[str]:
    return [
        r.group if r.group is not None else "(none)",
        f"{r.requests:,}",
        f"{r.input_tokens:,}",
        f"{r.cache_read_tokens:,}",
        f"{r.cache_write_tokens:,}",
        f"{r.output_tokens:,}",
        f"{r.reasoning_tokens:,}",
        f"${r.cost_usd:,.4f}",
    ]


# -- other ------------------------------------------------------------------------------------------


def _migrate(args: argparse.Namespace) -> int:
    config = _config(args)
    db = connect(config.ledger_path, migrate_schema=False)
    newly = migrate(db)
    for name in applied(db):
        print(f"{name}{'  (applied now)' if name in newly else ''}")
    db.close()
    for line in write_left_journals(config):
        print(line, file=sys.stderr)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from tokenctl.demo import run

    configure_logging("WARNING")
    _install_uvloop()
    try:
        bind_listener(args.host, args.port).close()  # a taken port is one clear line, before any work
    except ListenError as exc:
        print(f"tokenctl: error: {exc}", file=sys.stderr)
        return 1
    asyncio.run(run(Path(args.dir), args.host, args.port, args.rows))
    return 0


def _fake_provider(args: argparse.Namespace) -> int:
    from tokenctl.testing.fake_provider import serve

    _install_uvloop()
    print(
        f"fake provider on http://{args.host}:{args.port} (Anthropic base URL; OpenAI base URL …/v1)", file=sys.stderr
    )
    try:
        asyncio.run(serve(args.host, args.port))
    except KeyboardInterrupt:
        pass
    return 0
