"""Live rules: budget counters seeded from the ledger, and rules changed by the CLI or the admin API applied."""

from __future__ import annotations

import asyncio
from typing import Any

from tokenctl.config import Config
from tokenctl.policy.enforce import Enforcer
from tokenctl.policy.manage import combined_rules
from tokenctl.policy.seed import ledger_seeds


async def seed_budgets(enforcer: Enforcer, db: Any) -> None:
    """Budget counters for the current windows, from the ledger (set-if-absent in the store)."""
    loop = asyncio.get_running_loop()
    settled, drops = await loop.run_in_executor(
        None, ledger_seeds, db, enforcer.budgets.rules, enforcer.tz, enforcer.clock()
    )
    await enforcer.store.seed(settled, drops)


async def reload_rules(config: Config, enforcer: Enforcer, rules_db: Any) -> None:
    """The config's rules plus the live ones in the ledger database, seeded and applied at once.

    The new rules' counters are read from the ledger *before* the rules apply, then seeded and applied in
    one step of the event loop: no request can create a new budget's counter at $0 in between (which the
    set-if-absent seed would then keep, forgetting the spend already in the window)."""
    loop = asyncio.get_running_loop()
    rules = await loop.run_in_executor(None, combined_rules, config, rules_db)
    settled, drops = await loop.run_in_executor(
        None, ledger_seeds, rules_db, rules.budgets, enforcer.tz, enforcer.clock()
    )
    await enforcer.store.seed(settled, drops)  # the in-process store seeds without yielding to requests
    enforcer.set_rules(rules)
