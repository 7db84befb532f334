"""Model access: a key with a model allowlist may only use the models (names or globs) on it.

Budgets, rate limits and model policies will live in this package too; for now it
holds the one decision the gateway makes about a known key.
"""

from __future__ import annotations

import fnmatch

from tokenctl.errors import PermissionDenied
from tokenctl.types import Principal, Route


def may_use(principal: Principal, model: str) -> bool:
    return not principal.models or any(fnmatch.fnmatchcase(model, pattern) for pattern in principal.models)


def authorize(principal: Principal, route: Route) -> None:
    """Raise PermissionDenied unless the key may use the requested model (alias or real name) or its target."""
    if may_use(principal, route.requested_model) or may_use(principal, route.upstream_model):
        return
    raise PermissionDenied(
        f"key {principal.key_id} may not use model {route.requested_model!r}; "
        f"allowed: {', '.join(principal.models)}"
    )
