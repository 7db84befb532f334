"""The one exception tree of tokenctl.

Every error a client can see is a ``GatewayError``. Each class carries the HTTP
``status`` and a dialect-neutral ``kind``; ``ingress.dialect`` renders it as an
Anthropic or OpenAI error body. Nothing else decides status codes.

    GatewayError
    ├── BadRequest            400  malformed JSON, wrong types, missing fields
    ├── AuthError             401  missing, unknown or revoked virtual key
    ├── PermissionDenied      403  key may not use this model
    ├── NotFound              404  unknown model or endpoint
    ├── PayloadTooLarge       413  body above the configured limit
    ├── UnsupportedRoute      400  model served by a provider of another API dialect
    └── UpstreamError         502  provider unreachable or broke the protocol
        └── UpstreamTimeout   504  provider did not answer in time

Status choices follow how Claude Code, Codex and the SDKs react (see the
README's "Errors" section): budget-style stops must never be 400 (Claude
Code's beta-stripping retry ladder) and never 500 (Codex retries 30 times).
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base class: an error tokenctl itself answers with."""

    status: int = 500
    kind: str = "api_error"
    retryable: bool = True  # False adds ``x-should-retry: false`` so SDKs and Claude Code stop retrying

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(GatewayError):
    """The request body or headers are not what the API accepts."""

    status = 400
    kind = "invalid_request_error"
    retryable = False


class UnsupportedRoute(BadRequest):
    """The model resolves to a provider that speaks a different API dialect."""


class AuthError(GatewayError):
    """No virtual key, an unknown key, or a revoked key."""

    status = 401
    kind = "authentication_error"


class PermissionDenied(GatewayError):
    """The key exists but may not do this (for example use this model)."""

    status = 403
    kind = "permission_error"


class NotFound(GatewayError):
    """Unknown model or endpoint."""

    status = 404
    kind = "not_found_error"


class PayloadTooLarge(GatewayError):
    """The request body is larger than ``max_body_bytes``."""

    status = 413
    kind = "request_too_large"


class UpstreamError(GatewayError):
    """The provider could not be reached or broke the protocol."""

    status = 502
    kind = "api_error"


class UpstreamTimeout(UpstreamError):
    """The provider did not answer within the configured timeout."""

    status = 504
    kind = "timeout_error"
