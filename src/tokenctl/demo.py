"""``tokenctl demo``: a full dashboard in one command, with no provider key.

The fake provider and a gateway run in one process over a ledger of synthetic but realistic requests dated
up to now: teams and users, Claude Code, Codex and Cursor sessions with prompt caching, budgets close to
their limits, a pending approval, routing and policy savings, and one runaway agent session. Every page
says that the data is synthetic.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path

import aiohttp
import orjson
import yaml
from aiohttp import web

from tokenctl.app import create_app, runner_settings
from tokenctl.config import ProviderConfig, load_config
from tokenctl.identity.keys import create_key
from tokenctl.ingress.server import GatewayRunner
from tokenctl.ledger.db import connect
from tokenctl.ledger.engine import Database
from tokenctl.ledger.record import LedgerEntry
from tokenctl.ledger.writer import LedgerWriter
from tokenctl.testing.fake_provider import FakeProvider
from tokenctl.testing.synthetic import price, synthetic_entries
from tokenctl.types import Attribution, Cost, Principal, Route, Usage

log = logging.getLogger("tokenctl")

BANNER = "Demo: synthetic data made by `tokenctl demo`. None of it is real spend."
DAYS = 45


@dataclass(frozen=True)
class Demo:
    folder: Path
    config_path: Path
    ledger_path: Path
    admin_key: str
    client_key: str
    requests: int


def prepare(folder: Path, rows: int, now: float, fake_url: str) -> Demo:
    """Write the demo's ledger, keys and config into ``folder`` (emptied first)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    ledger = folder / "ledger.db"
    writer = LedgerWriter(str(ledger))
    writer.start()
    count = 0
    for entry in _entries(rows, now):
        writer.record(entry)
        count += 1
    writer.close()
    db = connect(str(ledger))
    _, client_key = create_key(db, user="payments-dev0", team="payments", project="payments-a", name="demo client")
    budgets = _budgets_near_their_limits(db, now)
    db.close()
    admin_key = "tk-demo-" + secrets.token_urlsafe(12)
    config = folder / "tokenctl.yaml"
    config.write_text(
        "# Written by `tokenctl demo`: synthetic data, a fake provider, no real spend.\n"
        + yaml.safe_dump(_config(ledger, fake_url, budgets), sort_keys=False)
    )
    return Demo(folder, config, ledger, admin_key, client_key, count)


def _config(ledger: Path, fake_url: str, budgets: list[dict[str, object]]) -> dict[str, object]:
    return {
        "server": {"banner": BANNER},
        "ledger": {"path": str(ledger)},
        "providers": [
            {"name": "anthropic", "kind": "anthropic", "base_url": fake_url, "models": ["claude-*"]},
            {"name": "openai", "kind": "openai", "base_url": fake_url + "/v1", "models": ["gpt-*"]},
        ],
        "budgets": budgets,
        "approvals": [{"name": "big-prompts", "scope": "org", "above_input_tokens": 40_000}],
        "policies": [{"name": "org-defaults", "scope": "org", "max_effort": "high"}],
    }


def _entries(rows: int, now: float) -> Iterator[LedgerEntry]:
    """The synthetic ledger, with routing savings, and a runaway session in the last hours."""
    rng = random.Random(11)
    start = now - DAYS * 86400
    for entry in synthetic_entries(rows, start=start, days=DAYS - 0.02, teams=8, users_per_team=6):
        if (
            entry.route is not None
            and entry.route.upstream_model == "claude-sonnet-4-5"
            and entry.status == 200
            and entry.original_route is None
            and rng.random() < 0.15
        ):
            opus = Route(entry.route.provider, "team-default", "claude-opus-4-1")
            entry.original_route, entry.saving_source = opus, "routing"
            entry.policy = ["route premium -> claude-sonnet-4-5: classifier"]
            entry.counterfactual_cost = price("claude-opus-4-1", entry.usage)
        yield entry
    yield from _runaway(now, rng)


def _runaway(now: float, rng: random.Random) -> Iterator[LedgerEntry]:
    """An agent that loops: 240 Opus turns in 80 minutes, its context growing every turn."""
    provider = ProviderConfig("anthropic", "anthropic", "http://fake", None, ("claude-*",), "anthropic")
    context = 20_000
    for turn in range(240):
        context = min(190_000, context + rng.randint(300, 1_200))
        usage = Usage(
            input_tokens=rng.randint(200, 900),
            cache_read_tokens=int(context * 0.9),
            cache_write_5m_tokens=int(context * 0.1),
            output_tokens=rng.randint(300, 1_500),
        )
        entry = LedgerEntry(
            f"req_demo_loop_{turn:04d}",
            now - 80 * 60 + turn * 20,
            "anthropic.messages",
            stream=True,
            duration_ms=rng.uniform(4000, 15000),
            ttft_ms=rng.uniform(300, 900),
            status=200,
        )
        entry.principal = Principal("key_search-dev1", "search-dev1", "search", "search-a")
        entry.attribution = Attribution("claude-code", "2.1.330", "search-dev1-runaway", None, {"demo": "runaway"})
        entry.route = Route(provider, "claude-opus-4-1", "claude-opus-4-1")
        entry.requested_model = "claude-opus-4-1"
        entry.usage = usage
        cost = price("claude-opus-4-1", usage)
        entry.cost = Cost(cost, cost, True, "synthetic")
        entry.uncached_cost = price(
            "claude-opus-4-1", Usage(input_tokens=usage.input_total, output_tokens=usage.output_tokens)
        )
        yield entry


def _budgets_near_their_limits(db: Database, now: float) -> list[dict[str, object]]:
    """Limits set from the seeded spend, so the budgets page has some at 80–97 % of their limit."""
    week_ago = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now - 7 * 86400))
    teams = dict(
        db.execute("SELECT team, SUM(cost_nanousd) FROM requests WHERE ts >= ? GROUP BY team", (week_ago,)).fetchall()
    )
    top = max(teams.values() or [1])
    total = sum(teams.values() or [1])
    user, user_spend = db.execute(
        "SELECT user, SUM(cost_nanousd) FROM requests WHERE ts >= ? GROUP BY user ORDER BY 2 DESC LIMIT 1", (week_ago,)
    ).fetchone() or ("nobody", 1)
    return [
        {"name": "team-weekly", "scope": "team", "limit_usd": _usd(top / 0.93), "period": "rolling_7d"},
        {"name": "org-weekly", "scope": "org", "limit_usd": _usd(total / 0.8), "period": "rolling_7d"},
        {
            "name": f"{user}-weekly",
            "scope": "user",
            "match": user,
            "limit_usd": _usd(user_spend / 0.97),
            "period": "rolling_7d",
            "action": "notify",
        },
    ]


def _usd(nanos: float) -> float:
    return float((Decimal(int(nanos)) / Decimal(10**9)).quantize(Decimal("1")) + 1)


async def _hold_one_for_approval(url: str, key: str) -> None:
    """A request big enough for the approval rule: it waits in the approvals inbox."""
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1000,
        "messages": [{"role": "user", "content": "Review this repository dump: " + "x" * 200_000}],
    }
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01", "user-agent": "claude-cli/2.1.330 (demo)"}
    async with (
        aiohttp.ClientSession() as client,
        client.post(url + "/v1/messages", data=orjson.dumps(body), headers=headers) as response,
    ):
        await response.read()


async def run(folder: Path, host: str, port: int, rows: int) -> None:
    fake = web.AppRunner(FakeProvider(keep_requests=False).app(), access_log=None)
    await fake.setup()
    fake_site = web.TCPSite(fake, "127.0.0.1", 0)
    await fake_site.start()
    fake_port = fake_site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"tokenctl demo: writing {rows:,} synthetic requests over {DAYS} days up to now …", flush=True)
    demo = await asyncio.get_running_loop().run_in_executor(
        None, prepare, folder, rows, time.time(), f"http://127.0.0.1:{fake_port}"
    )
    os.environ["TOKENCTL_ADMIN_KEY"] = demo.admin_key
    config = load_config(demo.config_path)
    config = replace(config, host=host, port=port)
    gateway = GatewayRunner(create_app(config), handle_signals=False, **runner_settings(config))
    await gateway.setup()
    await web.TCPSite(gateway, host, port).start()
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    await _hold_one_for_approval(url, demo.client_key)
    print(_welcome(demo, url), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await gateway.cleanup()
    await fake.cleanup()


def _welcome(demo: Demo, url: str) -> str:
    return f"""
  SYNTHETIC DEMO DATA: none of it is real spend.

  Dashboard   {url}/ui/
  Sign in     {demo.admin_key}   (the demo's admin key)
  Ledger      {demo.ledger_path}  ({demo.requests:,} requests, {DAYS} days up to now)
  Config      {demo.config_path}

  Try a request (answered by the built-in fake provider):
    curl {url}/v1/messages -H 'x-api-key: {demo.client_key}' -H 'anthropic-version: 2023-06-01' \\
      -d '{{"model":"claude-haiku-4-5","max_tokens":50,"messages":[{{"role":"user","content":"hi"}}]}}'

  Ctrl-C stops the demo; `tokenctl report --config {demo.config_path}` works on its ledger meanwhile.
"""
