"""Every gateway test under policy/ runs twice: budgets, rate buckets and notification markers in the process,
and in Redis (the machine's, under a fresh key prefix) as a fleet keeps them."""

from __future__ import annotations

import uuid
from typing import Any

import pytest


@pytest.fixture(params=["memory", "redis"])
def make_gateway(request: pytest.FixtureRequest, make_gateway: Any) -> Any:
    """The hard-cap, approval, notification and policy cases must hold the same on both stores."""
    if request.param == "memory":
        return make_gateway
    store = {"store": {"redis_url": "redis://127.0.0.1:6379/0", "key_prefix": f"t{uuid.uuid4().hex[:10]}:"}}

    def make(extra: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        extra = extra or {}
        return make_gateway({**extra, "store": {**store["store"], **extra.get("store", {})}}, **kwargs)

    return make
