"""Which provider serves a model: aliases, ``provider/model`` names, and each provider's model patterns.

Resolution of the ``model`` a client sends:
1. an alias from the config (``team-default: anthropic/claude-sonnet-4-5``) is replaced by its target;
2. ``<provider>/<model>`` picks that provider explicitly;
3. otherwise the first provider, in config order, whose ``models`` list matches (names or globs)
   and that speaks the request's API dialect; else the first one that can be reached by translation
   (Anthropic Messages ⇄ OpenAI Chat Completions, Responses → Anthropic; see ``translate/``); a match only on an API
   that cannot be translated to is refused with a clear 400; no match at all is a 404.
"""

from __future__ import annotations

import fnmatch

from tokenctl.config import Config, ProviderConfig
from tokenctl.errors import BadRequest, NotFound, UnsupportedRoute
from tokenctl.types import Route

# What a client API is translated to, per provider kind that does not speak it.
TRANSLATIONS = {
    ("anthropic.messages", "openai"): "openai.chat",
    ("anthropic.messages", "openai-compatible"): "openai.chat",
    ("openai.chat", "anthropic"): "anthropic.messages",
    ("openai.responses", "anthropic"): "anthropic.messages",
    ("openai.responses", "openai"): "openai.chat",  # a provider with responses_api: false
    ("openai.responses", "openai-compatible"): "openai.chat",
}

# The API dialects each provider kind speaks.
DIALECTS = {
    "anthropic": frozenset({"anthropic.messages", "anthropic.count_tokens"}),
    "openai": frozenset({"openai.chat", "openai.responses"}),
    "openai-compatible": frozenset({"openai.chat", "openai.responses"}),
}


def speaks(provider: ProviderConfig) -> frozenset[str]:
    """The APIs a provider serves itself (the rest reach it by translation, where one exists)."""
    apis = DIALECTS[provider.kind]
    return apis if provider.responses_api else apis - {"openai.responses"}


def serves(provider: ProviderConfig, model: str) -> bool:
    return any(fnmatch.fnmatchcase(model, pattern) for pattern in provider.models)


class Catalog:
    def __init__(self, config: Config) -> None:
        self.providers = {p.name: p for p in config.providers}
        self._ordered = config.providers
        self.aliases = dict(config.aliases)
        self._cache: dict[tuple[str, str], Route] = {}

    def resolve(self, model: str, api: str) -> Route:
        cached = self._cache.get((model, api))
        if cached is not None:
            return cached
        route = self._resolve(model, api)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[(model, api)] = route
        return route

    def _resolve(self, requested: str, api: str) -> Route:
        target = self.aliases.get(requested, requested)
        provider_name, slash, rest = target.partition("/")
        if slash and provider_name in self.providers:
            provider = self.providers[provider_name]
            if not rest:
                raise BadRequest(f"model {requested!r}: nothing after the provider name")
            return Route(provider, requested, rest, self._upstream_api(provider, requested, api))
        matches = [p for p in self._ordered if serves(p, target)]
        for provider in matches:
            if api in speaks(provider):
                return Route(provider=provider, requested_model=requested, upstream_model=target)
        for provider in matches:
            if (api, provider.kind) in TRANSLATIONS:
                return Route(provider, requested, target, TRANSLATIONS[(api, provider.kind)])
        if matches:
            self._check_dialect(matches[0], requested, api)
        raise NotFound(
            f"model {requested!r} is not served by this gateway; "
            f"ask your administrator to add it to a provider's models list or an alias"
        )

    @classmethod
    def _upstream_api(cls, provider: ProviderConfig, requested: str, api: str) -> str | None:
        if api in speaks(provider):
            return None
        if (api, provider.kind) in TRANSLATIONS:
            return TRANSLATIONS[(api, provider.kind)]
        cls._check_dialect(provider, requested, api)
        return None

    @staticmethod
    def _check_dialect(provider: ProviderConfig, requested: str, api: str) -> None:
        if api not in speaks(provider):
            raise UnsupportedRoute(
                f"model {requested!r} is served by provider {provider.name!r} ({provider.kind}), "
                f"which does not speak the {api} API; call it through its own API"
            )

    def listed_models(self) -> list[tuple[str, str]]:
        """(model id, owner) for every concrete model name and alias; glob patterns cannot be listed."""
        seen: dict[str, str] = {}
        for provider in self._ordered:
            for pattern in provider.models:
                if not any(ch in pattern for ch in "*?["):
                    seen.setdefault(pattern, provider.name)
        for alias in self.aliases:
            seen.setdefault(alias, "tokenctl")
        return list(seen.items())
