"""A live gateway over a seeded ledger, with a fixed clock, budgets, viewer keys and a held approval."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ADMIN_KEY, LiveGateway, start_gateway
from tests.ledgers import ledger_section, ledger_target
from tokenctl.ledger.db import connect
from tokenctl.ledger.writer import LedgerWriter
from tokenctl.testing.fake_provider import FakeProvider
from tokenctl.testing.synthetic import synthetic_entries

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
NOW = datetime(2026, 11, 20, 15, 0, tzinfo=UTC).timestamp()
SEEDED_REQUESTS = 3000
BUDGETS = {
    "budgets": [
        {"name": "team-monthly", "scope": "team", "limit_usd": 150, "period": "monthly"},
        {"name": "org-monthly", "scope": "org", "limit_usd": 2000, "period": "monthly"},
    ],
}


@dataclass
class Seeded:
    live: LiveGateway
    viewer_payments: str
    viewer_search: str

    @property
    def url(self) -> str:
        return self.live.url

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        db = connect(self.live.db_path, migrate_schema=False)
        try:
            return db.execute(query, params).fetchall()
        finally:
            db.close()


def seed_ledger(path: str, n: int = SEEDED_REQUESTS, journal: str | None = None) -> None:
    writer = LedgerWriter(path, journal_path=journal)
    writer.start()
    for entry in synthetic_entries(n, start=NOW - 50 * 86400, days=50 - 0.01):
        writer.record(entry)
    writer.close()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def ledger_engine(request: pytest.FixtureRequest) -> str:
    """The dashboard's queries run on both engines (tests/dashboard/test_ui_browser.py keeps to one)."""
    return str(request.param)


@pytest.fixture(scope="module")
def seeded(fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory, ledger_engine: str) -> Iterator[Seeded]:
    env = {
        "FAKE_ANTHROPIC_KEY": "sk-ant-provider-secret",
        "FAKE_OPENAI_KEY": "sk-openai-provider-secret",
        "TOKENCTL_ADMIN_KEY": ADMIN_KEY,
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    tmp: Path = tmp_path_factory.mktemp("dashboard")
    seed_ledger(ledger_target(tmp, ledger_engine), journal=str(tmp / "seed" / "ledger"))
    live = start_gateway(
        fake,
        tmp,
        {**BUDGETS, "ledger": ledger_section(tmp, ledger_engine)},
        keys={
            "viewer_payments": {"team": "payments", "role": "viewer", "name": "payments viewer"},
            "viewer_search": {"team": "search", "role": "viewer"},
        },
        clock=lambda: NOW,
    )
    try:
        yield Seeded(live, live.keys["viewer_payments"], live.keys["viewer_search"])
    finally:
        live.server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def _fresh_screenshots() -> None:
    """Screenshots of this run only (every browser test module writes there)."""
    shutil.rmtree(SHOTS, ignore_errors=True)


@pytest.fixture(scope="module")
def browser(_fresh_screenshots: None) -> Iterator[Any]:
    """Debian's Chromium driven by Playwright (the browser tests skip where neither is installed, outside CI)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            raise RuntimeError(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium for the browser tests")
        pytest.skip("Debian chromium is not installed")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox"])
        yield b
        b.close()
