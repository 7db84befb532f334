"""Provider adapters: where a request goes upstream and with which headers and body.

All three provider kinds share one shape; they differ in the endpoint path, how the
provider key is sent and whether Chat streams are asked for usage. Bodies are
forwarded as received, byte for byte, unless the model name must change (an alias)
or usage must be requested for a Chat stream; then the parsed body is re-serialised
with every unknown field kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from tokenctl.config import ProviderConfig
from tokenctl.errors import UpstreamError
from tokenctl.types import Route

ENDPOINTS = {
    ("anthropic", "anthropic.messages"): "/v1/messages",
    ("anthropic", "anthropic.count_tokens"): "/v1/messages/count_tokens",
    ("openai", "openai.chat"): "/chat/completions",
    ("openai", "openai.responses"): "/responses",
    ("openai-compatible", "openai.chat"): "/chat/completions",
    ("openai-compatible", "openai.responses"): "/responses",
}

# Client headers that are not forwarded: hop-by-hop, client credentials, body framing, and our own.
_DROP_REQUEST_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
        "authorization",
        "x-api-key",
        "api-key",
        "accept-encoding",
        "cookie",
        "expect",
        "content-encoding",  # aiohttp decoded the body; what goes upstream is the plain one
        "x-tokenctl-route",  # tokenctl's own routing hint
    }
)
# Upstream headers that are not relayed to the client: framing and identifiers we set ourselves.
DROP_RESPONSE_HEADERS = frozenset(
    {
        "content-length",
        "content-encoding",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "date",
        "server",
        "request-id",
        "x-request-id",
        "set-cookie",
        "alt-svc",
        "via",
        "trailer",
        "upgrade",
    }
)


class ProviderKeyMissing(UpstreamError):
    """The provider needs a key and its environment variable is not set on the gateway."""

    retryable = False


@dataclass(slots=True)
class UpstreamRequest:
    url: str
    headers: dict[str, str]
    body: bytes
    injected_stream_usage: bool
    timeout: aiohttp.ClientTimeout

    def release(self) -> None:
        """Sent and answered: the body is not needed any more."""
        self.body = b""


class Upstream:
    """One configured provider."""

    def __init__(self, config: ProviderConfig, drop_headers: frozenset[str] = frozenset()) -> None:
        self.config = config
        self._drop = _DROP_REQUEST_HEADERS | drop_headers
        self._key = config.api_key()
        self._static_headers = dict(config.headers)
        # client_headers are the request's (case-insensitive) headers: only a request without the header needs it
        self._add_version = config.kind == "anthropic" and not any(
            k.lower() == "anthropic-version" for k in self._static_headers
        )
        self.timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=config.connect_timeout_seconds, sock_read=config.timeout_seconds
        )

    def prepare(
        self,
        api: str,
        client_headers: Any,
        raw_body: bytes,
        body: dict[str, Any],
        route: Route,
        *,
        body_changed: bool = False,
    ) -> UpstreamRequest:
        url = self.config.base_url + ENDPOINTS[(self.config.kind, api)]
        headers = {k: v for k, v in client_headers.items() if k.lower() not in self._drop}
        headers.update(self._static_headers)
        headers["accept-encoding"] = "identity"
        if self._add_version and ("anthropic-version" not in client_headers or "anthropic-version" in self._drop):
            headers["anthropic-version"] = "2023-06-01"  # a translated OpenAI request has none
        self._authorize(headers)
        changed = body_changed
        if route.model_rewritten:
            body["model"] = route.upstream_model
            changed = True
        injected = False
        if api == "openai.chat" and body.get("stream") is True and self.config.inject_stream_usage:
            injected = _ask_for_stream_usage(body)
            changed = changed or injected
        if changed:
            raw_body = orjson.dumps(body)
            headers["content-type"] = "application/json"
        return UpstreamRequest(url, headers, raw_body, injected, self.timeout)

    def _authorize(self, headers: dict[str, str]) -> None:
        if self.config.api_key_env is None:
            return
        if not self._key:
            raise ProviderKeyMissing(
                f"provider {self.config.name!r} has no API key: set {self.config.api_key_env} "
                f"in the gateway's environment"
            )
        if self.config.kind == "anthropic":
            headers["x-api-key"] = self._key
        else:
            headers["authorization"] = f"Bearer {self._key}"


def _ask_for_stream_usage(body: dict[str, Any]) -> bool:
    """Turn on ``stream_options.include_usage`` unless the client already did. True if we changed it."""
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return False
    body["stream_options"] = (
        {**options, "include_usage": True} if isinstance(options, dict) else {"include_usage": True}
    )
    return True
