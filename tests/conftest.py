"""Shared fixtures: a fake provider and a live gateway, each a real HTTP server on loopback.

Both run in background threads with their own event loops, so tests can use the official
synchronous SDK clients exactly as users do.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.ledgers import MADE, ON_POSTGRES, drop_pg_schema, ledger_section
from tokenctl.app import CONFIG, create_app, runner_settings
from tokenctl.config import Config, parse_config
from tokenctl.gateway import GATEWAY, Gateway
from tokenctl.identity.keys import create_key
from tokenctl.ingress.server import GatewayRunner
from tokenctl.ledger.db import connect
from tokenctl.testing.fake_provider import FakeProvider


def _travel_in_time() -> None:
    """``TOKENCTL_TEST_NOW=2031-07-15T12:00:00Z pytest`` runs the whole suite, child processes included, under
    that wall clock (ticking from there): proof that no test depends on today's date."""
    when = os.environ.get("TOKENCTL_TEST_NOW")
    if not when:
        return
    import time_machine

    time_machine.travel(when, tick=True).start()
    here = str(Path(__file__).parent / "timetravel")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)


_travel_in_time()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """An aiohttp application served on 127.0.0.1 from a thread with its own event loop."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> ServerThread:
        self._thread.start()
        self._ready.wait(15)
        if self._error:
            raise self._error
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        config = self.app.get(CONFIG)
        settings = {**runner_settings(config), "shutdown_timeout": 5} if config else {"access_log": None}
        self.runner = (GatewayRunner if config else web.AppRunner)(self.app, **settings)
        try:
            self.loop.run_until_complete(self.runner.setup())
            self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
        except BaseException as exc:  # surfaced to the test
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()

    def stop(self) -> None:
        if self.loop.is_closed():
            return  # stopped already (a test restarting a gateway stops the first one itself)
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture(scope="session", autouse=True)
def _drop_test_schemas() -> Iterator[None]:
    yield
    if MADE:
        drop_pg_schema(*sorted(MADE))


@pytest.fixture(scope="session")
def fake() -> Iterator[FakeProvider]:
    provider = FakeProvider()
    server = ServerThread(provider.app()).start()
    provider.url = server.url  # type: ignore[attr-defined]
    yield provider
    server.stop()


def gateway_config(fake_url: str, tmp: Path, **extra: Any) -> Config:
    prices = tmp / "prices.yaml"
    prices.write_text(
        "models:\n  - {match: 'llama-3.1-8b', provider: local, input_per_mtok: 0.10, output_per_mtok: 0.20}\n"
    )
    raw: dict[str, Any] = {
        "ledger": ledger_section(tmp),
        "pricing": {"overrides": str(prices)},
        "identity": {"key_refresh_seconds": 0.2},
        "providers": [
            {
                "name": "anthropic",
                "kind": "anthropic",
                "base_url": fake_url,
                "api_key_env": "FAKE_ANTHROPIC_KEY",
                "models": ["claude-*"],
                "timeout_seconds": 3,
            },
            {
                "name": "openai",
                "kind": "openai",
                "base_url": fake_url + "/v1",
                "api_key_env": "FAKE_OPENAI_KEY",
                "models": ["gpt-*", "o3*", "o4-mini"],
                "timeout_seconds": 3,
            },
            {"name": "local", "kind": "openai-compatible", "base_url": fake_url + "/v1", "models": ["llama-3.1-8b"]},
        ],
        "aliases": {"team-default": "claude-sonnet-4-5", "cheap": "local/llama-3.1-8b"},
    }
    for section, value in extra.items():  # a section given in part keeps the test defaults for the rest
        where = {"path", "url"}
        whole = section == "ledger" and isinstance(value, dict) and bool(where & value.keys())
        raw[section] = (
            {**raw[section], **value}
            if isinstance(raw.get(section), dict) and isinstance(value, dict) and not whole
            else value
        )
    return parse_config(raw, source="test")


def ledger_rows(target: str) -> list[dict[str, Any]]:
    """Every row of a ledger (a SQLite file or a PostgreSQL URL), oldest first."""
    return ledger_query(target, "SELECT * FROM requests ORDER BY ts, rowid")


def ledger_query(target: str, sql: str, *params: Any) -> list[dict[str, Any]]:
    """Rows of a query on a ledger, as dicts."""
    db = connect(target, migrate_schema=False)
    try:
        cursor = db.execute(sql, params)
        names = [c[0] for c in cursor.description]
        return [{k: v for k, v in zip(names, row, strict=True) if k != "rowid" or not ON_POSTGRES} for row in cursor]
    finally:
        db.close()


@dataclass
class LiveGateway:
    url: str
    key: str
    config: Config
    server: ServerThread
    fake: FakeProvider
    db_path: str
    keys: dict[str, str] = field(default_factory=dict)

    @property
    def gw(self) -> Gateway:
        return self.server.app[GATEWAY]

    def rows(self) -> list[dict[str, Any]]:
        """Every ledger row, after the writer has flushed what was recorded."""
        assert self.gw.ledger.flush(10)
        return ledger_rows(self.db_path)

    def wait_rows(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The ledger rows once at least ``count`` exist (a request is recorded when its handler ends)."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.rows()
            if len(rows) >= count or time.monotonic() > deadline:
                return rows
            time.sleep(0.02)

    def row(self, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """The request's ledger row, waiting for it: a streamed answer is recorded after its last byte reached
        the client, so the row may land a moment after the client returns."""
        deadline = time.monotonic() + timeout
        while True:
            matches = [r for r in self.rows() if r["request_id"] == request_id]
            if matches or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert len(matches) == 1, f"expected one ledger row for {request_id}, found {len(matches)}"
        return matches[0]

    def ledger_yaml(self) -> str:
        """The ledger section of a config file for a CLI run against this gateway's ledger (YAML flow style)."""
        if self.config.ledger_journal_path is None:
            return f"{{path: '{self.db_path}'}}"
        return f"{{url: '{self.db_path}'}}"

    def last_upstream(self) -> Any:
        return self.fake.received[-1]


ADMIN_KEY = "tk-admin-test-secret"


def start_gateway(
    fake: FakeProvider,
    tmp: Path,
    extra: dict[str, Any] | None = None,
    keys: dict[str, dict[str, Any]] | None = None,
    **app_args: Any,
) -> LiveGateway:
    """A gateway on a fresh ledger with the standard keys plus ``keys`` (name -> create_key arguments)."""
    config = gateway_config(fake.url, tmp, **(extra or {}))  # type: ignore[attr-defined]
    db = connect(config.ledger_path)
    _, key = create_key(db, user="alice", team="payments", project="checkout")
    _, limited = create_key(db, user="bob", team="web", project="site", models=("claude-haiku-*",))
    made = {"limited": limited}
    for name, kwargs in (keys or {}).items():
        made[name] = create_key(db, **kwargs)[1]
    db.close()
    server = ServerThread(create_app(config, **app_args)).start()
    fake.received.clear()
    return LiveGateway(server.url, key, config, server, fake, config.ledger_path, made)


@pytest.fixture
def provider_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_ANTHROPIC_KEY", "sk-ant-provider-secret")
    monkeypatch.setenv("FAKE_OPENAI_KEY", "sk-openai-provider-secret")
    monkeypatch.setenv("TOKENCTL_ADMIN_KEY", ADMIN_KEY)


@pytest.fixture
def gateway(fake: FakeProvider, tmp_path: Path, provider_env: None) -> Iterator[LiveGateway]:
    live = start_gateway(fake, tmp_path)
    yield live
    live.server.stop()


@pytest.fixture
def make_gateway(fake: FakeProvider, tmp_path: Path, provider_env: None) -> Iterator[Any]:
    """A factory: ``make_gateway(extra_config, keys=…)`` starts a gateway, stopped after the test."""
    started: list[LiveGateway] = []

    def make(
        extra: dict[str, Any] | None = None, keys: dict[str, dict[str, Any]] | None = None, **app_args: Any
    ) -> LiveGateway:
        sub = tmp_path / f"gw{len(started)}"
        sub.mkdir()
        live = start_gateway(fake, sub, extra, keys, **app_args)
        started.append(live)
        return live

    yield make
    for live in started:
        live.server.stop()
