"""The ``cache:`` section of the config: which requests the response cache may answer, and how much it keeps.

cache:
  enabled: true
  ttl_seconds: 3600            # an answer is replayed for this long after it was stored
  max_entries: 10000           # least recently used answers go first ...
  max_mb: 64                   # ... when either bound is reached (memory store; Redis uses its own eviction)
  scope: key                   # key | team | org: whose requests may share answers
  teams: [docs]                # opt-in: only these teams' (and projects', models') requests; empty: all
  projects: []
  models: ["claude-haiku-*"]
  deterministic: true          # temperature 0 requests are cached without asking (otherwise only on request)
  tool_turns: false            # requests that offer tools (agent turns) are never cached unless true
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenctl.validate import ConfigError, boolean, choice, integer, reject_unknown, string_list

CACHE_FIELDS = {
    "enabled",
    "ttl_seconds",
    "max_entries",
    "max_mb",
    "scope",
    "teams",
    "projects",
    "models",
    "deterministic",
    "tool_turns",
}
SCOPES = ("key", "team", "org")


@dataclass(frozen=True, slots=True)
class CacheConfig:
    enabled: bool = False
    ttl_seconds: int = 3600
    max_entries: int = 10_000
    max_bytes: int = 64 << 20
    scope: str = "key"
    teams: tuple[str, ...] = ()
    projects: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    deterministic: bool = True
    tool_turns: bool = False


def parse_cache(raw: dict[str, object]) -> CacheConfig:
    where = "cache"
    reject_unknown(raw, CACHE_FIELDS, where)
    if not raw:
        return CacheConfig()
    config = CacheConfig(
        boolean(raw, "enabled", True, where),
        integer(raw, "ttl_seconds", 3600, where),
        integer(raw, "max_entries", 10_000, where),
        integer(raw, "max_mb", 64, where) << 20,
        choice(raw, "scope", SCOPES, "key", where),
        string_list(raw, "teams", where),
        string_list(raw, "projects", where),
        string_list(raw, "models", where),
        boolean(raw, "deterministic", True, where),
        boolean(raw, "tool_turns", False, where),
    )
    if config.enabled and (config.ttl_seconds < 1 or config.max_entries < 1 or config.max_bytes < 1):
        raise ConfigError(f"{where}: ttl_seconds, max_entries and max_mb must be at least 1")
    return config
