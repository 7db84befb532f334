"""Configuration: one YAML file, validated once at start-up into frozen dataclasses.

The file is optional. Without one, tokenctl serves Anthropic and OpenAI with
provider keys from ``ANTHROPIC_API_KEY`` and ``OPENAI_API_KEY`` and keeps its
ledger in ``./tokenctl.db``. ``tokenctl.example.yaml`` shows every field.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from tokenctl.cache.settings import CacheConfig, parse_cache
from tokenctl.policy.loops import LoopRule, parse_loops
from tokenctl.policy.rules import (
    ApprovalRule,
    BudgetRule,
    ModelPolicy,
    check_budget_links,
    parse_approval,
    parse_budget,
    parse_policy,
    parse_rule_list,
)
from tokenctl.routing.settings import RoutingConfig, parse_routing
from tokenctl.text import redact_url
from tokenctl.validate import ConfigError, boolean, integer, money, number, reject_unknown, resolve_path, section
from tokenctl.watch.settings import AlertsConfig, parse_alerts

__all__ = ["Config", "ConfigError", "ProviderConfig", "load_config", "parse_config"]

ProviderKind = Literal["anthropic", "openai", "openai-compatible"]
PROVIDER_KINDS: tuple[str, ...] = ("anthropic", "openai", "openai-compatible")

# genai-prices provider ids used for list prices when the config does not say.
_DEFAULT_PRICING_PROVIDER = {"anthropic": "anthropic", "openai": "openai", "openai-compatible": None}


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    name: str
    kind: ProviderKind
    base_url: str
    api_key_env: str | None
    models: tuple[str, ...]
    pricing_provider: str | None
    timeout_seconds: float = 600.0
    connect_timeout_seconds: float = 10.0
    inject_stream_usage: bool = True
    headers: tuple[tuple[str, str], ...] = ()
    chat_fields: frozenset[str] = frozenset()  # optional Chat fields it accepts in translated requests
    responses_api: bool = True  # it serves /v1/responses itself; False: Responses clients are translated to Chat

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None


@dataclass(frozen=True, slots=True)
class EnforcementConfig:
    """How budgets are enforced and where notifications go."""

    timezone: str = "UTC"
    reservation_ceiling_usd: Decimal = Decimal(5)  # the most one request reserves, whatever its max_tokens
    default_max_output_tokens: int = 16_384  # assumed when a request sets no output limit and the model's is unknown
    stream_step_tokens: int = 1024  # a followed stream reserves its output this many tokens at a time (0: all at once)
    reservation_ttl_seconds: float = 900.0  # a reservation not settled by then (crash) expires
    webhook_url: str | None = None  # Slack-compatible: POST {"text": ...}
    approvals_webhook_url: str | None = None  # defaults to webhook_url
    webhook_timeout_seconds: float = 5.0
    unpriced_models: str = "refuse"  # under a blocking budget: "refuse", "allow", or a model to price them as


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Where budget counters, reservations and rate buckets live: this process's memory, or a Redis that
    every replica shares."""

    redis_url: str | None = None  # e.g. redis://127.0.0.1:6379/0; None = in this process
    timeout_ms: int = 1000  # the longest any request waits for Redis before it is refused (fail closed)
    key_prefix: str = "tokenctl:"
    reseed_wait_seconds: float = 0.5  # after Redis lost its data: time for the ledger writers to catch up
    max_connections: int = 64  # per process; more concurrent store calls wait their turn


@dataclass(frozen=True, slots=True)
class ObservabilityConfig:
    """Metrics, traces and logs for operating a fleet."""

    metrics_public: bool = False  # GET /metrics without the admin key (a scraper on a private network)
    log_format: str = "text"  # or "json": one JSON object per line
    otlp_endpoint: str | None = None  # e.g. http://collector:4318: traces and metrics over OTLP/HTTP; None = off
    otlp_headers: tuple[tuple[str, str], ...] = ()
    service_name: str = "tokenctl"
    cache_alarm_misses: int = 0  # a session with this many prompt-cache misses ... (0: cache health off)
    cache_alarm_turns: int = 3  # ... among its last this many turns raises an alarm


@dataclass(frozen=True, slots=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8080
    ledger_path: str = "tokenctl.db"  # a SQLite file, or a postgresql:// URL (ledger.url)
    ledger_journal_path: str | None = None  # PostgreSQL: this process's local journal (``{it}.journal.N.jsonl``)
    admin_key_env: str = "TOKENCTL_ADMIN_KEY"
    price_overrides_path: str | None = None
    max_body_bytes: int = 32 * 1024 * 1024
    tags_header: str = "x-tokenctl-tags"
    key_refresh_seconds: float = 2.0
    ledger_queue_max: int = 100_000
    ledger_batch_max: int = 2_000
    ledger_fsync: bool = False
    ledger_write_interval_seconds: float = 0.1  # how often the writer thread writes what was recorded
    ledger_max_lag_seconds: float = 15.0
    ledger_max_lag_rows: int = 200_000
    shutdown_grace_seconds: float = 30.0
    idle_timeout_seconds: float = 75.0
    banner: str | None = None  # shown at the top of every dashboard page (the demo labels its data with it)
    body_timeout_seconds: float = 120.0
    providers: tuple[ProviderConfig, ...] = ()
    aliases: dict[str, str] = field(default_factory=dict)
    enforcement: EnforcementConfig = field(default_factory=lambda: EnforcementConfig())
    store: StoreConfig = field(default_factory=lambda: StoreConfig())
    observability: ObservabilityConfig = field(default_factory=lambda: ObservabilityConfig())
    budgets: tuple[BudgetRule, ...] = ()
    policies: tuple[ModelPolicy, ...] = ()
    approvals: tuple[ApprovalRule, ...] = ()
    loops: tuple[LoopRule, ...] = ()
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    source: str = "<defaults>"


DEFAULT_PROVIDERS: list[dict[str, Any]] = [
    {
        "name": "anthropic",
        "kind": "anthropic",
        "base_url": "https://api.anthropic.com",
        "api_key_env": "ANTHROPIC_API_KEY",
        "models": ["claude-*"],
    },
    {
        "name": "openai",
        "kind": "openai",
        "base_url": "https://api.openai.com/v1",
        "api_key_env": "OPENAI_API_KEY",
        "models": ["gpt-*", "o1*", "o3*", "o4*", "chatgpt-*", "codex-*"],
    },
]


# Every field the config file accepts, by section: the parser allows exactly these, and a test checks that
# tokenctl.example.yaml shows each of them.
SECTIONS: dict[str, set[str]] = {
    "top level": {
        "server",
        "ledger",
        "pricing",
        "providers",
        "aliases",
        "identity",
        "enforcement",
        "store",
        "observability",
        "budgets",
        "policies",
        "approvals",
        "loops",
        "routing",
        "cache",
        "alerts",
    },
    "server": {
        "host",
        "port",
        "max_body_bytes",
        "shutdown_grace_seconds",
        "admin_key_env",
        "tags_header",
        "idle_timeout_seconds",
        "body_timeout_seconds",
        "banner",
    },
    "ledger": {
        "path",
        "url",
        "url_env",
        "journal_dir",
        "queue_max",
        "batch_max",
        "fsync",
        "write_interval_seconds",
        "max_lag_seconds",
        "max_lag_rows",
    },
    "pricing": {"overrides"},
    "identity": {"key_refresh_seconds"},
    "providers[]": {
        "name",
        "kind",
        "base_url",
        "api_key_env",
        "models",
        "pricing_provider",
        "timeout_seconds",
        "connect_timeout_seconds",
        "inject_stream_usage",
        "headers",
        "chat_fields",
        "responses_api",
    },
    "store": {"redis_url", "timeout_ms", "key_prefix", "reseed_wait_seconds", "max_connections"},
    "observability": {
        "metrics_public",
        "log_format",
        "otlp_endpoint",
        "otlp_headers",
        "service_name",
        "cache_alarm_misses",
        "cache_alarm_turns",
    },
    "enforcement": {
        "timezone",
        "reservation_ceiling_usd",
        "default_max_output_tokens",
        "stream_step_tokens",
        "reservation_ttl_seconds",
        "webhook_url",
        "approvals_webhook_url",
        "webhook_timeout_seconds",
        "unpriced_models",
    },
}


def find_config_path(explicit: str | None) -> Path | None:
    """The config file to use: the explicit one, ``$TOKENCTL_CONFIG``, or ``./tokenctl.yaml`` if present."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("TOKENCTL_CONFIG")
    if env:
        return Path(env)
    local = Path("tokenctl.yaml")
    return local if local.exists() else None


def load_config(path: str | Path | None = None) -> Config:
    """Read and validate the YAML config; ``None`` gives the built-in defaults."""
    if path is None:
        return parse_config({}, source="<defaults>")
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {p}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: the top level must be a mapping")
    base = p.parent
    return parse_config(raw, source=str(p), base_dir=base)


def _write_interval(ledger: dict[str, Any], lag: float) -> float:
    """Longer cycles mean larger batches (less CPU per row) but rows reach the database, and with ``fsync``
    the disk, later; the writer must still cycle well within ``max_lag_seconds`` (``lag``)."""
    interval = number(ledger, "write_interval_seconds", 0.1, "ledger")
    if not 0 < interval <= 5 or interval * 2 > lag:
        raise ConfigError(
            f"ledger.write_interval_seconds: must be above 0 and at most 5 s, and at most half of "
            f"ledger.max_lag_seconds ({lag:g} s); got {interval:g}"
        )
    return interval


def _ledger_location(ledger: dict[str, Any], base_dir: Path | None) -> tuple[str, str | None]:
    """The ledger (a SQLite path or a PostgreSQL URL) and, for PostgreSQL, the local journal's path."""
    url = ledger.get("url")
    if ledger.get("url_env"):
        if url:
            raise ConfigError("ledger: give url or url_env, not both")
        url = os.environ.get(str(ledger["url_env"]))
        if not url:
            raise ConfigError(f"ledger.url_env: the environment variable {ledger['url_env']} is not set")
    if url is None:
        if "journal_dir" in ledger:
            raise ConfigError(
                "ledger.journal_dir: only for a PostgreSQL ledger (ledger.url); a SQLite ledger's "
                "journal is next to its file"
            )
        path = str(ledger.get("path", "tokenctl.db"))
        return (path if path == ":memory:" else str(resolve_path(base_dir, path))), None
    if "path" in ledger:
        raise ConfigError("ledger: give path (SQLite) or url (PostgreSQL), not both")
    url = str(url)
    if not url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"ledger.url: expected postgresql://user@host:5432/database, got {redact_url(url)!r}")
    journal = resolve_path(base_dir, str(ledger.get("journal_dir", "tokenctl-journal")))
    return url, str(journal / "ledger")


def parse_config(raw: dict[str, Any], *, source: str = "<dict>", base_dir: Path | None = None) -> Config:
    """Validate a config mapping (as read from YAML)."""
    reject_unknown(raw, SECTIONS["top level"], "top level")
    server = section(raw, "server")
    reject_unknown(server, SECTIONS["server"], "server")
    ledger = section(raw, "ledger")
    reject_unknown(ledger, SECTIONS["ledger"], "ledger")
    pricing = section(raw, "pricing")
    reject_unknown(pricing, SECTIONS["pricing"], "pricing")
    identity = section(raw, "identity")
    reject_unknown(identity, SECTIONS["identity"], "identity")

    providers_raw = raw.get("providers", DEFAULT_PROVIDERS)
    if not isinstance(providers_raw, list) or not providers_raw:
        raise ConfigError("providers: must be a non-empty list")
    providers = tuple(_parse_provider(p, i) for i, p in enumerate(providers_raw))
    names = [p.name for p in providers]
    if len(set(names)) != len(names):
        raise ConfigError(f"providers: duplicate provider names in {names}")

    aliases = raw.get("aliases", {}) or {}
    if not isinstance(aliases, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()):
        raise ConfigError("aliases: must map alias names to model names")

    overrides = pricing.get("overrides")
    if overrides is not None:
        overrides = str(resolve_path(base_dir, str(overrides)))
    ledger_path, journal_path = _ledger_location(ledger, base_dir)
    max_lag = number(ledger, "max_lag_seconds", 15.0, "ledger")

    budgets = parse_rule_list(raw.get("budgets"), "budgets", parse_budget)
    check_budget_links(budgets)
    config = Config(
        host=str(server.get("host", "127.0.0.1")),
        port=integer(server, "port", 8080, "server"),
        max_body_bytes=integer(server, "max_body_bytes", 32 * 1024 * 1024, "server"),
        shutdown_grace_seconds=number(server, "shutdown_grace_seconds", 30.0, "server"),
        idle_timeout_seconds=number(server, "idle_timeout_seconds", 75.0, "server"),
        banner=str(server["banner"]) if server.get("banner") else None,
        body_timeout_seconds=number(server, "body_timeout_seconds", 120.0, "server"),
        admin_key_env=str(server.get("admin_key_env", "TOKENCTL_ADMIN_KEY")),
        tags_header=str(server.get("tags_header", "x-tokenctl-tags")).lower(),
        ledger_path=ledger_path,
        ledger_journal_path=journal_path,
        ledger_queue_max=integer(ledger, "queue_max", 100_000, "ledger"),
        ledger_batch_max=integer(ledger, "batch_max", 2_000, "ledger"),
        ledger_fsync=boolean(ledger, "fsync", False, "ledger"),
        ledger_write_interval_seconds=_write_interval(ledger, max_lag),
        ledger_max_lag_seconds=max_lag,
        ledger_max_lag_rows=integer(ledger, "max_lag_rows", 200_000, "ledger"),
        price_overrides_path=overrides,
        key_refresh_seconds=number(identity, "key_refresh_seconds", 2.0, "identity"),
        providers=providers,
        aliases=dict(aliases),
        enforcement=_parse_enforcement(section(raw, "enforcement")),
        store=_parse_store(section(raw, "store")),
        observability=_parse_observability(section(raw, "observability")),
        budgets=budgets,
        policies=parse_rule_list(raw.get("policies"), "policies", parse_policy),
        approvals=parse_rule_list(raw.get("approvals"), "approvals", parse_approval),
        loops=parse_loops(raw.get("loops")),
        routing=parse_routing(section(raw, "routing")),
        cache=parse_cache(section(raw, "cache")),
        alerts=parse_alerts(section(raw, "alerts")),
        source=source,
    )
    if config.alerts.check_minutes == 0 and any(r.spend_per_hour_x_baseline for r in config.loops):
        raise ConfigError(
            "loops: spend_per_hour_x_baseline needs the keys' usual spend, read by the watcher: "
            "alerts.check_minutes must be above 0"
        )
    return config


def _parse_enforcement(raw: dict[str, Any]) -> EnforcementConfig:
    where = "enforcement"
    reject_unknown(raw, SECTIONS["enforcement"], where)
    tz = str(raw.get("timezone", "UTC"))
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(
            f"{where}.timezone: unknown time zone {tz!r} (use an IANA name such as Europe/Berlin)"
        ) from exc
    urls = {}
    for key in ("webhook_url", "approvals_webhook_url"):
        url = raw.get(key)
        if url is not None and (not isinstance(url, str) or not url.startswith(("http://", "https://"))):
            raise ConfigError(f"{where}.{key}: must be an http(s) URL")
        urls[key] = url
    ceiling = money(raw, "reservation_ceiling_usd", where)
    return EnforcementConfig(
        timezone=tz,
        reservation_ceiling_usd=Decimal(5) if ceiling is None else ceiling,
        default_max_output_tokens=integer(raw, "default_max_output_tokens", 16_384, where),
        stream_step_tokens=integer(raw, "stream_step_tokens", 1024, where),
        reservation_ttl_seconds=number(raw, "reservation_ttl_seconds", 900.0, where),
        webhook_url=urls["webhook_url"],
        approvals_webhook_url=urls["approvals_webhook_url"] or urls["webhook_url"],
        webhook_timeout_seconds=number(raw, "webhook_timeout_seconds", 5.0, where),
        unpriced_models=_unpriced_models(raw, where),
    )


def _parse_store(raw: dict[str, Any]) -> StoreConfig:
    where = "store"
    reject_unknown(raw, SECTIONS["store"], where)
    url = raw.get("redis_url")
    if url is not None and (not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://"))):
        raise ConfigError(f"{where}.redis_url: a redis://, rediss:// or unix:// URL (got {url!r})")
    prefix = raw.get("key_prefix", "tokenctl:")
    if not isinstance(prefix, str) or not prefix:
        raise ConfigError(f"{where}.key_prefix: a non-empty string")
    timeout = integer(raw, "timeout_ms", 1000, where)
    if timeout < 1:
        raise ConfigError(f"{where}.timeout_ms: at least 1")
    return StoreConfig(
        redis_url=url,
        timeout_ms=timeout,
        key_prefix=prefix,
        reseed_wait_seconds=number(raw, "reseed_wait_seconds", 0.5, where),
        max_connections=max(1, integer(raw, "max_connections", 64, where)),
    )


def _parse_observability(raw: dict[str, Any]) -> ObservabilityConfig:
    where = "observability"
    reject_unknown(raw, SECTIONS["observability"], where)
    log_format = raw.get("log_format", "text")
    if log_format not in ("text", "json"):
        raise ConfigError(f"{where}.log_format: 'text' or 'json' (got {log_format!r})")
    endpoint = raw.get("otlp_endpoint")
    if endpoint is not None and (not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://"))):
        raise ConfigError(f"{where}.otlp_endpoint: an http(s) URL of an OTLP/HTTP receiver, e.g. http://collector:4318")
    headers = raw.get("otlp_headers", {}) or {}
    if not isinstance(headers, dict):
        raise ConfigError(f"{where}.otlp_headers: a mapping of header names to values")
    return ObservabilityConfig(
        metrics_public=boolean(raw, "metrics_public", False, where),
        log_format=log_format,
        otlp_endpoint=endpoint.rstrip("/") if endpoint else None,
        otlp_headers=tuple((str(k), str(v)) for k, v in headers.items()),
        service_name=str(raw.get("service_name", "tokenctl")),
        cache_alarm_misses=integer(raw, "cache_alarm_misses", 0, where),
        cache_alarm_turns=max(1, integer(raw, "cache_alarm_turns", 3, where)),
    )


def _unpriced_models(raw: dict[str, Any], where: str) -> str:
    value = raw.get("unpriced_models", "refuse")
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}.unpriced_models: 'refuse', 'allow' or the name of a priced model to price them as")
    return value.strip()


def _parse_provider(raw: Any, index: int) -> ProviderConfig:
    where = f"providers[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a mapping")
    reject_unknown(raw, SECTIONS["providers[]"], where)
    name = raw.get("name")
    if not isinstance(name, str) or not name or "/" in name:
        raise ConfigError(f"{where}.name: required, a string without '/'")
    kind = raw.get("kind")
    if kind not in PROVIDER_KINDS:
        raise ConfigError(f"{where}.kind: must be one of {', '.join(PROVIDER_KINDS)} (got {kind!r})")
    base_url = raw.get("base_url")
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}.base_url: required, an http(s) URL")
    models = raw.get("models")
    if not isinstance(models, list) or not models or not all(isinstance(m, str) and m for m in models):
        raise ConfigError(f"{where}.models: required, a non-empty list of model names or glob patterns")
    headers = raw.get("headers", {}) or {}
    if not isinstance(headers, dict):
        raise ConfigError(f"{where}.headers: must be a mapping")
    return ProviderConfig(
        name=name,
        kind=kind,
        base_url=base_url.rstrip("/"),
        api_key_env=raw.get("api_key_env"),
        models=tuple(models),
        pricing_provider=raw.get("pricing_provider", _DEFAULT_PRICING_PROVIDER[kind]),
        timeout_seconds=number(raw, "timeout_seconds", 600.0, where),
        connect_timeout_seconds=number(raw, "connect_timeout_seconds", 10.0, where),
        inject_stream_usage=boolean(raw, "inject_stream_usage", True, where),
        headers=tuple((str(k), str(v)) for k, v in headers.items()),
        chat_fields=_chat_fields(raw, kind, where),
        # Chat Completions is what every OpenAI-compatible server speaks (llama.cpp, Ollama, most vLLM setups)
        responses_api=boolean(raw, "responses_api", kind == "openai", where),
    )


def _chat_fields(raw: dict[str, Any], kind: str, where: str) -> frozenset[str]:
    from tokenctl.translate.fit import OPTIONAL_FIELDS

    value = raw.get("chat_fields", list(OPTIONAL_FIELDS) if kind == "openai" else [])
    if not isinstance(value, list) or not all(v in OPTIONAL_FIELDS for v in value):
        raise ConfigError(f"{where}.chat_fields: a list of {', '.join(OPTIONAL_FIELDS)}")
    return frozenset(value)
