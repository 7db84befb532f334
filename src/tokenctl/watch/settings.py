"""The ``alerts:`` section of the config: what the watcher reads from the ledger and when it raises an alert.

alerts:
  check_minutes: 10              # how often the ledger is read (0: never)
  spend_anomalies: true          # a user's or team's day far above its usual days (dashboard/anomalies.py)
  anomaly_k: 3.5                 # ... above median + k x 1.4826 x MAD of the same weekday in earlier weeks
  anomaly_min_usd: 5             # ... and above this many dollars
  cache_share_drop: 0.5          # a key or team reading from the prompt cache under half its usual share today
  cache_min_prompt_tokens: 200000  # ... once it sent this many prompt tokens today (and on its usual days)
  cache_write_usd_per_day: 0     # a key or team whose cache writes cost more than this today (0: off)

Each alert is raised once per member and day: an audit entry (the dashboard's Health page lists them) and
the enforcement webhook.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from tokenctl.validate import ConfigError, boolean, integer, money, number, reject_unknown

ALERT_FIELDS = {
    "check_minutes",
    "spend_anomalies",
    "anomaly_k",
    "anomaly_min_usd",
    "cache_share_drop",
    "cache_min_prompt_tokens",
    "cache_write_usd_per_day",
}


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    check_minutes: int = 10
    spend_anomalies: bool = True
    anomaly_k: float = 3.5
    anomaly_min_usd: Decimal = Decimal(5)
    cache_share_drop: float = 0.5  # 0: no cache-share alerts
    cache_min_prompt_tokens: int = 200_000
    cache_write_usd_per_day: Decimal = Decimal(0)  # 0: no cache-write spend alerts


def parse_alerts(raw: dict[str, Any]) -> AlertsConfig:
    where = "alerts"
    reject_unknown(raw, ALERT_FIELDS, where)
    drop = number(raw, "cache_share_drop", 0.5, where)
    if drop >= 1:
        raise ConfigError(f"{where}.cache_share_drop: a share of the usual one, below 1 (0.5 = half)")
    return AlertsConfig(
        check_minutes=integer(raw, "check_minutes", 10, where),
        spend_anomalies=boolean(raw, "spend_anomalies", True, where),
        anomaly_k=number(raw, "anomaly_k", 3.5, where),
        anomaly_min_usd=_amount(raw, "anomaly_min_usd", Decimal(5), where),
        cache_share_drop=drop,
        cache_min_prompt_tokens=integer(raw, "cache_min_prompt_tokens", 200_000, where),
        cache_write_usd_per_day=_amount(raw, "cache_write_usd_per_day", Decimal(0), where),
    )


def _amount(raw: dict[str, Any], key: str, default: Decimal, where: str) -> Decimal:
    value = money(raw, key, where)
    return default if value is None else value
