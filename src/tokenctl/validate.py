"""Reading fields out of a YAML/JSON mapping with errors that name the field.

Used by the config file, the budget and policy definitions, and the admin API, so
every one of them reports a bad value the same way: ``budgets[2].limit_usd: must be …``.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""


def section(raw: dict[str, Any], name: str) -> dict[str, Any]:
    value = raw.get(name, {}) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{name}: must be a mapping")
    return value


def reject_unknown(raw: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def boolean(raw: dict[str, Any], key: str, default: bool, where: str) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key}: must be true or false")
    return value


def integer(raw: dict[str, Any], key: str, default: int, where: str) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where}.{key}: must be a non-negative integer")
    return value


def optional_integer(raw: dict[str, Any], key: str, where: str, minimum: int = 0) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}.{key}: must be an integer >= {minimum}")
    return value


def number(raw: dict[str, Any], key: str, default: float, where: str) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"{where}.{key}: must be a non-negative number")
    return float(value)


def money(raw: dict[str, Any], key: str, where: str, *, required: bool = False) -> Decimal | None:
    """A USD amount as Decimal (parsed from its text, so 0.1 stays exactly 0.1)."""
    value = raw.get(key)
    if value is None:
        if required:
            raise ConfigError(f"{where}.{key}: required, an amount in USD")
        return None
    if isinstance(value, bool):
        raise ConfigError(f"{where}.{key}: must be an amount in USD, not {value!r}")
    try:
        amount = Decimal(str(value))
    except InvalidOperation as exc:
        raise ConfigError(f"{where}.{key}: must be an amount in USD, not {value!r}") from exc
    if not amount.is_finite() or amount < 0:
        raise ConfigError(f"{where}.{key}: must be a non-negative amount in USD")
    return amount


def string_list(raw: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = raw.get(key, []) or []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}.{key}: must be a list of non-empty strings")
    return tuple(value)


def choice(raw: dict[str, Any], key: str, options: tuple[str, ...], default: str | None, where: str) -> str:
    value = raw.get(key, default)
    if value not in options:
        raise ConfigError(f"{where}.{key}: must be one of {', '.join(options)} (got {value!r})")
    return value


def resolve_path(base_dir: Path | None, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() or base_dir is None else base_dir / p
