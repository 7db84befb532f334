"""Model access: dashboard viewer keys call no models; a key with an allowlist only the models on it."""

from __future__ import annotations

import fnmatch

from tokenctl.errors import PermissionDenied
from tokenctl.types import Principal, Route


def may_use(principal: Principal, model: str) -> bool:
    return not principal.models or any(fnmatch.fnmatchcase(model, pattern) for pattern in principal.models)


def check_caller(principal: Principal) -> None:
    """Viewer keys are for the dashboard only."""
    if principal.role != "client":
        raise PermissionDenied(
            f"key {principal.key_id} is a dashboard viewer key and cannot call models; "
            "use a client key (tokenctl keys create)"
        )


def authorize(principal: Principal, route: Route) -> None:
    """Raise PermissionDenied unless the key may use the requested model (alias or real name) or its target."""
    if may_use(principal, route.requested_model) or may_use(principal, route.upstream_model):
        return
    raise PermissionDenied(
        f"key {principal.key_id} may not use model {route.requested_model!r}; allowed: {', '.join(principal.models)}"
    )
