"""Which requests the response cache may answer, and the key an answer is stored under.

The key is a digest of the canonical request: the caller's scope (key, team or org), the API, the model
that serves it, and the body with the fields that change from one identical request to the next left out
(``metadata``, ``user``, Codex's ``client_metadata``, prompt-cache hints). A request is cacheable when its
team, project and model are opted in and it is deterministic (temperature 0) or asks for it with
``x-tokenctl-cache: use``; never when it offers tools (an agent turn) unless ``tool_turns`` is set, nor when
it says ``Cache-Control: no-cache`` or ``x-tokenctl-cache: bypass``.
"""

from __future__ import annotations

import fnmatch
import hashlib
from typing import Any

import orjson

from tokenctl.cache.settings import CacheConfig
from tokenctl.types import Principal

CACHE_HEADER = "x-tokenctl-cache"
_VOLATILE = frozenset(
    {"metadata", "user", "client_metadata", "prompt_cache_key", "safety_identifier", "stream_options", "store"}
)


def cache_decision(
    config: CacheConfig, headers: Any, body: dict[str, Any], principal: Principal, model: str
) -> tuple[bool, str]:
    """(use the cache?, why not when not): the reason becomes the row's note when it says no."""
    asked = str(headers.get(CACHE_HEADER, "")).strip().lower()
    control = str(headers.get("cache-control", "")).lower()
    if asked == "bypass" or "no-cache" in control or "no-store" in control:
        return False, "the client asked not to use the cache"
    if config.teams and principal.team not in config.teams:
        return False, "team not opted in"
    if config.projects and principal.project not in config.projects:
        return False, "project not opted in"
    if config.models and not any(fnmatch.fnmatchcase(model, p) for p in config.models):
        return False, "model not opted in"
    if body.get("tools") and not config.tool_turns:
        return False, "an agent turn (tools offered)"
    if asked == "use":
        return True, ""
    if config.deterministic and body.get("temperature") == 0 and body.get("n", 1) in (1, None):
        return True, ""
    return False, "not deterministic (temperature 0) and not asked for (x-tokenctl-cache: use)"


def cache_key(config: CacheConfig, principal: Principal, api: str, model: str, body: dict[str, Any]) -> str:
    scope = {"key": principal.key_id, "team": f"team:{principal.team}", "org": "org"}[config.scope]
    kept = {k: v for k, v in body.items() if k not in _VOLATILE}
    kept["model"] = model
    canonical = orjson.dumps([scope, api, kept], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()
