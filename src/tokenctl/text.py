"""Text from outside made safe to keep: header values decoded as their bytes arrived, strings the ledger can
always store (valid UTF-8, bounded), whatever a client or provider sent."""

from __future__ import annotations

import re
from typing import Any

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_REPLACEMENT = "\ufffd"


def header_text(value: str | None, limit: int = 256) -> str | None:
    """A header value as text, at most ``limit`` characters.

    aiohttp hands header bytes that are not UTF-8 over as lone surrogates (``\\udce9`` for the byte ``\\xe9``,
    as Node's fetch sends ``é``). They are decoded here as the bytes arrived: UTF-8 when valid, else Latin-1,
    HTTP's historical header charset (so ``caf\\xe9`` reads ``café``). Control characters are dropped.
    """
    if value is None:
        return None
    if value.isascii() and value.isprintable():  # the usual header: no bytes to decode, no control characters
        value = value.strip()
        return value[:limit] if value else None
    if not value.isascii():
        raw = value.encode("utf-8", "surrogateescape")
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            value = raw.decode("latin-1")
    value = _CONTROL.sub("", value).strip()
    return value[:limit] if value else None


def storable(value: str) -> str:
    """``value`` with anything that cannot be encoded as UTF-8 (lone surrogates), and NUL (which PostgreSQL
    text cannot hold), replaced by U+FFFD."""
    if "\x00" in value:
        value = value.replace("\x00", _REPLACEMENT)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "".join(_REPLACEMENT if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in value)
    return value


def storable_json(value: Any) -> Any:
    """A JSON-like value with every string made storable and integers kept in 64 bits."""
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else str(value)
    if isinstance(value, dict):
        return {storable(str(k)): storable_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [storable_json(v) for v in value]
    return storable(str(value))


def redact_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)
