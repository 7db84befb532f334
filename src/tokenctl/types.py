"""Values shared by the request-path stages. Stages exchange these, never raw dicts."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

from tokenctl.config import ProviderConfig

Api = Literal["anthropic.messages", "anthropic.count_tokens", "openai.chat", "openai.responses"]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the virtual key and the people and groups it belongs to."""

    key_id: str
    user: str | None
    team: str | None
    project: str | None
    models: tuple[str, ...] = ()  # allowlist of model names or globs; empty = any configured model
    opt_in: bool = False  # may use models that policies would rewrite to a cheaper default
    role: str = "client"  # "viewer" keys sign in to the dashboard and cannot call models


@dataclass(frozen=True, slots=True)
class Attribution:
    """What the request tells about its origin beyond the key."""

    tool: str
    tool_version: str | None
    session_id: str | None
    device_id: str | None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Route:
    """Where a request goes: the provider and the model name sent upstream."""

    provider: ProviderConfig
    requested_model: str
    upstream_model: str
    upstream_api: str | None = None  # set when the provider speaks another API: the request is translated

    @property
    def model_rewritten(self) -> bool:
        return self.requested_model != self.upstream_model


@dataclass(slots=True)
class Usage:
    """Token counts normalised across APIs.

    ``input_tokens`` is *uncached* input (Anthropic's convention); cache reads and
    writes are separate. ``output_tokens`` includes ``reasoning_tokens``.
    """

    input_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    web_search_requests: int = 0
    audio_input_tokens: int = 0  # of the uncached input, audio (OpenAI prompt_tokens_details.audio_tokens)
    audio_output_tokens: int = 0  # of the output, audio

    @property
    def cache_write_tokens(self) -> int:
        return self.cache_write_5m_tokens + self.cache_write_1h_tokens

    @property
    def input_total(self) -> int:
        return self.input_tokens + self.cache_read_tokens + self.cache_write_tokens


@dataclass(frozen=True, slots=True)
class Cost:
    """What a request cost, in USD, and where the price came from."""

    total: Decimal
    list_total: Decimal
    priced: bool
    source: str  # e.g. "genai-prices 0.2.3", "override", "unpriced"
    is_estimate: bool = False


ZERO_COST = Cost(total=Decimal(0), list_total=Decimal(0), priced=True, source="free")
