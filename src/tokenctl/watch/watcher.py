"""The watcher's loop: every ``alerts.check_minutes`` it reads the ledger in a worker thread, raises each alert
once (an audit entry, which the Health page lists, and the webhook) and hands the keys' usual spend per hour
to the enforcer. Several replicas sharing a ledger raise an alert once between them: a marker in the budget
store (Redis for a fleet) decides which one sends it, and the audit log keeps a restart from sending it again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from tokenctl.config import Config
from tokenctl.ledger.audit import AuditEvent
from tokenctl.ledger.db import connect
from tokenctl.ledger.engine import Database
from tokenctl.ledger.record import iso_utc
from tokenctl.metering.pricing import PriceBook
from tokenctl.policy.enforce import Enforcer
from tokenctl.policy.notify import Notifier
from tokenctl.types import Usage
from tokenctl.watch import checks
from tokenctl.watch.checks import ALERT_ACTIONS, Alert
from tokenctl.watch.velocity import HourlySpend

log = logging.getLogger("tokenctl.watch")


class Watcher:
    def __init__(
        self,
        config: Config,
        enforcer: Enforcer,
        prices: PriceBook,
        notifier: Notifier,
        record: Callable[[Any], None],
    ) -> None:
        self.settings = config.alerts
        self.path = config.ledger_path
        self.enforcer = enforcer
        self.prices = prices
        self.providers = {p.name: p for p in config.providers}
        self.notifier = notifier
        self.webhook = config.enforcement.webhook_url
        self.record = record
        self.tz = ZoneInfo(config.enforcement.timezone)
        self.hourly = HourlySpend() if any(r.spend_per_hour_x_baseline for r in config.loops) else None
        self._db: Database | None = None
        self._raised: set[str] | None = None  # markers already sent (read from the audit log once)
        self._lock = asyncio.Lock()
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="tokenctl-watch")  # owns the connection

    async def run(self) -> None:
        """Check at once (baselines are needed from the start), then every ``check_minutes``."""
        while True:
            try:
                await self.check()
            except Exception:  # a locked or unreachable ledger must not stop the watcher
                log.exception("reading the ledger for alerts failed; trying again at the next check")
            await asyncio.sleep(self.settings.check_minutes * 60)

    async def check(self) -> list[Alert]:
        """One round: the alerts raised by it (those already raised are not raised again)."""
        async with self._lock:
            now = self.enforcer.clock()
            read = asyncio.wrap_future(self._thread.submit(self._read, now))
            alerts, baselines, raised = await read
            if baselines is not None:
                self.enforcer.velocity_baselines = baselines
            sent = []
            for alert in alerts:
                if alert.marker in raised:
                    continue
                raised.add(alert.marker)
                if not await self.enforcer.store.first_crossing(alert.marker):
                    continue  # another replica sent it
                self.record(AuditEvent("tokenctl", alert.action, None, alert.subject, None, _detail(alert), now))
                self.notifier.send(self.webhook, alert.text)
                sent.append(alert)
            return sent

    async def close(self) -> None:
        """After the loop's task is cancelled: a read still running in the thread ends before its connection
        is closed (closing it under the read would crash the process)."""
        await asyncio.get_running_loop().run_in_executor(None, self._thread.shutdown)
        if self._db is not None:
            self._db.close()

    # -- in the worker thread ---------------------------------------------------------------------

    def _read(self, now: float) -> tuple[list[Alert], dict[str, int] | None, set[str]]:
        if self._db is None:
            self._db = connect(self.path)
        db = self._db
        local = datetime.fromtimestamp(now, self.tz)
        today = local.date()
        since = iso_utc(datetime.combine(today, datetime.min.time(), self.tz).timestamp())
        if self._raised is None:
            self._raised = _already_raised(db, today)
        alerts: list[Alert] = []
        if self.settings.spend_anomalies:
            alerts += checks.spend_anomalies(db, today, self.settings)
        alerts += checks.cache_share_drops(db, today, since, self.settings)
        alerts += checks.cache_write_spend(db, today, since, self.settings, self._price)
        baselines = None
        if self.hourly is not None:
            self.hourly.refresh(db, now)
            baselines = self.hourly.baselines(now)
        return alerts, baselines, self._raised

    def _price(self, provider: str, model: str, usage: Usage) -> Decimal | None:
        config = self.providers.get(provider)
        if config is None:
            return None
        cost = self.prices.cost(config, model, usage)
        return cost.total if cost.priced else None


def _detail(alert: Alert) -> str:
    return f"{alert.day}: {alert.detail}"  # the day first: a restarted watcher reads its markers back from it


def _already_raised(db: Database, today: date) -> set[str]:
    since = (today - timedelta(days=3)).isoformat()  # ts is UTC ISO text: a day's margin for any time zone
    marks = ", ".join("?" * len(ALERT_ACTIONS))
    rows = db.execute(
        f"SELECT action, subject, detail FROM audit_log WHERE action IN ({marks}) AND ts >= ?",
        (*ALERT_ACTIONS, since),
    ).fetchall()
    return {Alert(action, subject, str(detail)[:10], "").marker for action, subject, detail in rows}
