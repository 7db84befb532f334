"""A cached answer replayed: the same bytes the client got the first time, with the usage counts set to zero
(nothing was billed this time), in the client's own shape: a JSON document or its SSE events."""

from __future__ import annotations

from typing import Any

import orjson


def zero_usage(body: bytes, stream: bool) -> bytes:
    if not stream:
        parsed = _loads(body)
        return orjson.dumps(_zeroed(parsed)) if parsed is not None else body
    out = []
    for line in body.split(b"\n"):
        if line.startswith(b"data:") and b'"usage"' in line:
            parsed = _loads(line[5:])
            if parsed is not None:
                line = b"data: " + orjson.dumps(_zeroed(parsed))
        out.append(line)
    return b"\n".join(out)


def _loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def _zeroed(value: Any, in_usage: bool = False) -> Any:
    """Every count under a ``usage`` object set to 0 (nested details too); everything else untouched."""
    if isinstance(value, dict):
        return {k: _zeroed(v, in_usage or k in ("usage", "usageMetadata")) for k, v in value.items()}
    if isinstance(value, list):
        return [_zeroed(v, in_usage) for v in value]
    if in_usage and isinstance(value, (int, float)) and not isinstance(value, bool):
        return 0
    return value
