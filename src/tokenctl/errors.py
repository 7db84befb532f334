"""The one exception tree of tokenctl.

Every error a client can see is a ``GatewayError``. Each class carries the HTTP
``status`` and a dialect-neutral ``kind``; ``ingress.dialect`` renders it as an
Anthropic or OpenAI error body. Nothing else decides status codes.

    GatewayError
    ├── BadRequest            400  malformed JSON, wrong types, missing fields
    ├── AuthError             401  missing, unknown or revoked virtual key
    ├── PermissionDenied      403  key may not use this model
    │   └── PolicyDenied      403  a model policy forbids this request (model, size)
    ├── BudgetExceeded        402  a hard budget cannot take this request's worst-case cost
    ├── ApprovalRequired      402  the request is held until an approver lets it through
    ├── LoopPaused            402  a loop rule paused this session (same tool call repeated)
    ├── RateLimited           429  requests/tokens per minute; Retry-After says when to retry
    ├── BudgetStoreUnavailable 503 budgets cannot be checked: fail closed, never unmetered
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

import math


class GatewayError(Exception):
    """Base class: an error tokenctl itself answers with."""

    status: int = 500
    kind: str = "api_error"
    code: str | None = None  # OpenAI ``error.code``; None = derived from ``kind``
    retryable: bool = True  # False adds ``x-should-retry: false`` so SDKs and Claude Code stop retrying

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def headers(self) -> dict[str, str]:
        """Extra response headers (Retry-After, approval id…)."""
        return {}


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
    retryable = False


class PermissionDenied(GatewayError):
    """The key exists but may not do this (for example use this model)."""

    status = 403
    kind = "permission_error"
    retryable = False


class NotFound(GatewayError):
    """Unknown model or endpoint."""

    status = 404
    kind = "not_found_error"
    retryable = False


class PayloadTooLarge(GatewayError):
    """The request body is larger than ``max_body_bytes``."""

    status = 413
    kind = "request_too_large"
    retryable = False


class UpstreamError(GatewayError):
    """The provider could not be reached or broke the protocol."""

    status = 502
    kind = "api_error"


class UpstreamTimeout(UpstreamError):
    """The provider did not answer within the configured timeout."""

    status = 504
    kind = "timeout_error"


class PolicyDenied(PermissionDenied):
    """A model policy forbids the request: a denied model, or a request above a size limit."""


class BudgetExceeded(GatewayError):
    """A blocking budget cannot take the request's worst-case cost. 402: shown once by Claude Code, not retried."""

    status = 402
    kind = "billing_error"
    code = "budget_exceeded"
    retryable = False

    def __init__(
        self,
        message: str,
        *,
        budget: str,
        limit: object,
        spent: object,
        reserved: object,
        needed: object,
        resets_at: float | None,
    ) -> None:
        super().__init__(message)
        self.budget = budget
        self.limit, self.spent, self.reserved, self.needed = limit, spent, reserved, needed
        self.resets_at = resets_at

    def headers(self) -> dict[str, str]:
        return {"x-tokenctl-budget": self.budget}


class ApprovalRequired(GatewayError):
    """The request's estimated cost or size is above an approval threshold; it is held under ``approval_id``."""

    status = 402
    kind = "billing_error"
    code = "approval_required"
    retryable = False

    def __init__(self, message: str, approval_id: str) -> None:
        super().__init__(message)
        self.approval_id = approval_id

    def headers(self) -> dict[str, str]:
        return {"x-tokenctl-approval-id": self.approval_id}


class LoopPaused(GatewayError):
    """A loop rule paused the session: shown once by Claude Code (402), not retried by the SDKs."""

    status = 402
    kind = "billing_error"
    code = "loop_paused"
    retryable = False

    def __init__(self, message: str, *, rule: str) -> None:
        super().__init__(message)
        self.rule = rule

    def headers(self) -> dict[str, str]:
        return {"x-tokenctl-loop-rule": self.rule}


class RateLimited(GatewayError):
    """A requests- or tokens-per-minute limit; ``Retry-After`` is when the request would be admitted."""

    status = 429
    kind = "rate_limit_error"
    code = "rate_limit_exceeded"
    retryable = True

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"retry-after": str(max(1, math.ceil(self.retry_after)))}


class RequestTimeout(BadRequest):
    """The client did not send its whole request body in time."""

    status = 408
    retryable = False


class UnpricedModel(GatewayError):
    """A budget that blocks cannot be enforced on a model without a price: refused, never let through at $0."""

    status = 403
    kind = "permission_error"
    code = "model_unpriced"
    retryable = False


class ClientGone(GatewayError):
    """The client closed the connection before its request was read or answered (nobody sees this answer)."""

    status = 499
    kind = "api_error"
    retryable = False


class LedgerUnavailable(GatewayError):
    """The ledger cannot record spend right now; requests are refused rather than served unmetered."""

    status = 503
    kind = "api_error"
    code = "ledger_unavailable"
    retryable = True


class BudgetStoreUnavailable(GatewayError):
    """The budget store failed; requests under budgets are refused rather than let through unchecked."""

    status = 503
    kind = "api_error"
    code = "budget_store_unavailable"
    retryable = True
