"""Configuration: one YAML file, validated once at start-up into frozen dataclasses.

The file is optional. Without one, tokenctl serves Anthropic and OpenAI with
provider keys from ``ANTHROPIC_API_KEY`` and ``OPENAI_API_KEY`` and keeps its
ledger in ``./tokenctl.db``. See ``docs/configuration.md`` for every field.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

ProviderKind = Literal["anthropic", "openai", "openai-compatible"]
PROVIDER_KINDS: tuple[str, ...] = ("anthropic", "openai", "openai-compatible")

# genai-prices provider ids used for list prices when the config does not say.
_DEFAULT_PRICING_PROVIDER = {"anthropic": "anthropic", "openai": "openai", "openai-compatible": None}


class ConfigError(ValueError):
    """The configuration file is invalid; the message names the field."""


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

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None


@dataclass(frozen=True, slots=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8080
    ledger_path: str = "tokenctl.db"
    admin_key_env: str = "TOKENCTL_ADMIN_KEY"
    price_overrides_path: str | None = None
    max_body_bytes: int = 32 * 1024 * 1024
    tags_header: str = "x-tokenctl-tags"
    key_refresh_seconds: float = 2.0
    ledger_queue_max: int = 100_000
    ledger_batch_max: int = 2_000
    shutdown_grace_seconds: float = 30.0
    providers: tuple[ProviderConfig, ...] = ()
    aliases: dict[str, str] = field(default_factory=dict)
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


def parse_config(raw: dict[str, Any], *, source: str = "<dict>", base_dir: Path | None = None) -> Config:
    """Validate a config mapping (as read from YAML)."""
    _reject_unknown(raw, {"server", "ledger", "pricing", "providers", "aliases", "identity"}, "top level")
    server = _section(raw, "server")
    _reject_unknown(server, {"host", "port", "max_body_bytes", "shutdown_grace_seconds", "admin_key_env", "tags_header"}, "server")
    ledger = _section(raw, "ledger")
    _reject_unknown(ledger, {"path", "queue_max", "batch_max"}, "ledger")
    pricing = _section(raw, "pricing")
    _reject_unknown(pricing, {"overrides"}, "pricing")
    identity = _section(raw, "identity")
    _reject_unknown(identity, {"key_refresh_seconds"}, "identity")

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
        overrides = str(_resolve(base_dir, str(overrides)))
    ledger_path = ledger.get("path", "tokenctl.db")
    if ledger_path != ":memory:":
        ledger_path = str(_resolve(base_dir, str(ledger_path)))

    return Config(
        host=str(server.get("host", "127.0.0.1")),
        port=_int(server, "port", 8080, "server"),
        max_body_bytes=_int(server, "max_body_bytes", 32 * 1024 * 1024, "server"),
        shutdown_grace_seconds=_num(server, "shutdown_grace_seconds", 30.0, "server"),
        admin_key_env=str(server.get("admin_key_env", "TOKENCTL_ADMIN_KEY")),
        tags_header=str(server.get("tags_header", "x-tokenctl-tags")).lower(),
        ledger_path=ledger_path,
        ledger_queue_max=_int(ledger, "queue_max", 100_000, "ledger"),
        ledger_batch_max=_int(ledger, "batch_max", 2_000, "ledger"),
        price_overrides_path=overrides,
        key_refresh_seconds=_num(identity, "key_refresh_seconds", 2.0, "identity"),
        providers=providers,
        aliases=dict(aliases),
        source=source,
    )


def _parse_provider(raw: Any, index: int) -> ProviderConfig:
    where = f"providers[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a mapping")
    _reject_unknown(
        raw,
        {"name", "kind", "base_url", "api_key_env", "models", "pricing_provider", "timeout_seconds",
         "connect_timeout_seconds", "inject_stream_usage", "headers"},
        where,
    )
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
        timeout_seconds=_num(raw, "timeout_seconds", 600.0, where),
        connect_timeout_seconds=_num(raw, "connect_timeout_seconds", 10.0, where),
        inject_stream_usage=bool(raw.get("inject_stream_usage", True)),
        headers=tuple((str(k), str(v)) for k, v in headers.items()),
    )


def _section(raw: dict[str, Any], name: str) -> dict[str, Any]:
    value = raw.get(name, {}) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{name}: must be a mapping")
    return value


def _reject_unknown(raw: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def _int(raw: dict[str, Any], key: str, default: int, where: str) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where}.{key}: must be a non-negative integer")
    return value


def _num(raw: dict[str, Any], key: str, default: float, where: str) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"{where}.{key}: must be a non-negative number")
    return float(value)


def _resolve(base_dir: Path | None, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() or base_dir is None else base_dir / p
