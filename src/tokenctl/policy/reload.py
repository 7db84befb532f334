"""Live rules: budget counters seeded from the ledger, and rules changed by the CLI or the admin API applied."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from tokenctl.config import Config
from tokenctl.ledger.writer import LedgerWriter
from tokenctl.policy.enforce import Enforcer
from tokenctl.policy.manage import combined_rules
from tokenctl.policy.seed import ledger_seeds
from tokenctl.policy.store import Seeder, Seeds, StoreUnavailable

log = logging.getLogger("tokenctl")


async def seed_budgets(enforcer: Enforcer, db: Any) -> None:
    """Budget counters for the current windows, from the ledger (set-if-absent in the store).

    A shared store that cannot be reached now seeds itself (``on_lost_state``) before it counts anything."""
    loop = asyncio.get_running_loop()
    now = enforcer.clock()
    settled, drops = await loop.run_in_executor(None, ledger_seeds, db, enforcer.budgets.rules, enforcer.tz, now)
    try:
        await enforcer.store.seed(settled, drops, now)
    except StoreUnavailable as exc:
        log.warning("budget store unavailable at start (%s): requests under budgets are refused until it is", exc)


def ledger_seeder(enforcer: Enforcer, db: Any, ledger: LedgerWriter) -> Seeder:
    """How a shared store that lost its counters rebuilds them: this replica's queued rows written first, then
    the current rules' windows read from the ledger."""

    async def seeds() -> tuple[Seeds, float]:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, ledger.flush)
        now = enforcer.clock()
        found = await loop.run_in_executor(None, ledger_seeds, db, enforcer.budgets.rules, enforcer.tz, now)
        return found, now

    return seeds


async def reload_rules(config: Config, enforcer: Enforcer, rules_db: Any) -> None:
    """The config's rules plus the live ones in the ledger database, seeded and applied at once.

    The new rules' counters are read from the ledger *before* the rules apply, then seeded and applied in
    one step of the event loop: no request can create a new budget's counter at $0 in between (which the
    set-if-absent seed would then keep, forgetting the spend already in the window)."""
    loop = asyncio.get_running_loop()
    rules = await loop.run_in_executor(None, combined_rules, config, rules_db)
    now = enforcer.clock()
    settled, drops = await loop.run_in_executor(None, ledger_seeds, rules_db, rules.budgets, enforcer.tz, now)
    await enforcer.store.seed(settled, drops, now)  # the in-process store seeds without yielding to requests
    enforcer.set_rules(rules)
