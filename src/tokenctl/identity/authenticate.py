"""Who is calling: the client key from the headers, checked against the in-memory key cache.

When both ``x-api-key`` and ``Authorization: Bearer`` are sent (Claude Code does when
``ANTHROPIC_API_KEY`` and ``ANTHROPIC_AUTH_TOKEN`` are both set), the one that is a
tokenctl key (``tkc_…``) wins; if both are, ``x-api-key`` wins.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from tokenctl.errors import AuthError
from tokenctl.identity.keys import KeyCache, hash_key, looks_like_virtual_key
from tokenctl.types import Principal

# The hashes of the keys presented most recently: a client sends the same key on every request, and hashing
# it each time was ~5 us of CPU per request in the running gateway. Bounded, so a flood of made-up keys only
# turns the cache over.
_hash_of_recent = functools.lru_cache(maxsize=4096)(hash_key)


def client_key(headers: Any) -> str | None:
    api_key = headers.get("x-api-key") or None
    auth = headers.get("authorization") or ""
    bearer = None
    if auth[:7].lower() == "bearer ":
        bearer = auth[7:].strip() or None
    if api_key and bearer and looks_like_virtual_key(bearer) and not looks_like_virtual_key(api_key):
        return bearer
    return api_key or bearer


async def authenticate(keys: KeyCache, secret: str | None) -> Principal:
    if not secret:
        raise AuthError("missing API key: send your tokenctl key in the x-api-key or Authorization: Bearer header")
    key_hash = _hash_of_recent(secret)
    principal = keys.lookup(key_hash)
    if principal is not None:
        return principal
    if not keys.is_revoked(key_hash) and not keys.recently_missed(key_hash):
        principal = await asyncio.get_running_loop().run_in_executor(None, keys.load_one, key_hash)
        if principal is not None:
            return principal
    if keys.is_revoked(key_hash):
        raise AuthError("this tokenctl API key has been revoked; ask your administrator for a new one")
    raise AuthError("invalid API key: this is not a tokenctl key known to this gateway")
