"""Run ``tokenctl serve`` with the request path's stages timed in place (used by ``stages_bench.py``).

Each stage below is wrapped where the request path calls it and charged the thread CPU time it takes
(``time.thread_time_ns``), so the numbers are what the stage costs inside the running gateway: caches shared
with every other request in flight, not a loop over one function. On SIGUSR2 the µs per request of each
stage since the last SIGUSR2 are written as JSON to ``$STAGES_OUT``. The async enforcer stages are timed
across their ``await``; with the in-memory store they never suspend, so nothing else runs inside them.

    STAGES_OUT=out.json python bench/stage_timer.py --config tokenctl.yaml serve
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import tokenctl.gateway as gateway
import tokenctl.identity.authenticate as authenticate
import tokenctl.observe.metrics as metrics
import tokenctl.pipeline as pipeline
import tokenctl.policy.enforce as enforce
import tokenctl.providers.relay as relay
import tokenctl.providers.upstream as upstream
import tokenctl.routing.catalog as catalog
import tokenctl.routing.router as router
from tokenctl.cli.main import main
from tokenctl.ledger.writer import LedgerWriter

_cpu_ns: Counter[str] = Counter()
_calls: Counter[str] = Counter()
_clock = time.thread_time_ns

# (where the request path looks the function up, its name there, the stage's label)
SYNC_STAGES: tuple[tuple[Any, str, str], ...] = (
    (pipeline, "client_key", "identity: key from headers"),
    (authenticate, "_hash_of_recent", "identity: key hash"),
    (pipeline, "parse_body", "ingress: parse body"),
    (pipeline, "decided_body", "ingress: duplicate-key check"),
    (pipeline, "attribute", "identity: attribution"),
    (catalog.Catalog, "resolve", "routing: catalog resolve"),
    (pipeline, "authorize", "policy: model access"),
    (pipeline, "_route", "routing: whole stage"),
    (pipeline, "_facts", "routing: facts"),
    (router.Router, "choose", "routing: choose tier"),
    (pipeline, "_prepare", "provider: prepare request"),
    (upstream.Upstream, "prepare", "provider: build headers and body"),
    (relay, "response_headers", "provider: response headers"),
    (relay, "_load_object", "provider: parse answer"),
    (gateway.Call, "__init__", "call: new request"),
    (gateway.Call, "answer_started", "call: drop the body"),
    (gateway, "settle", "metering: usage and price"),
    (LedgerWriter, "record", "ledger: row and journal"),
    (metrics.Metrics, "request_done", "metrics"),
)
ASYNC_STAGES: tuple[tuple[Any, str, str], ...] = (
    (enforce.Enforcer, "check", "policy: loops and model policies"),
    (enforce.Enforcer, "reserve", "budgets: reserve"),
    (enforce.Enforcer, "settle", "budgets: settle"),
)
REQUEST_STAGE = "call: new request"  # called once per request: the count of requests


def _timed(function: Callable[..., Any], label: str) -> Callable[..., Any]:
    @functools.wraps(function)
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = _clock()
        try:
            return function(*args, **kwargs)
        finally:
            _cpu_ns[label] += _clock() - started
            _calls[label] += 1

    return timed


def _timed_async(function: Callable[..., Any], label: str) -> Callable[..., Any]:
    @functools.wraps(function)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        started = _clock()
        try:
            return await function(*args, **kwargs)
        finally:
            _cpu_ns[label] += _clock() - started
            _calls[label] += 1

    return timed


def _install() -> None:
    for owner, name, label in SYNC_STAGES:
        setattr(owner, name, _timed(getattr(owner, name), label))
    for owner, name, label in ASYNC_STAGES:
        setattr(owner, name, _timed_async(getattr(owner, name), label))


def _report(_signum: int, _frame: Any) -> None:
    requests = _calls[REQUEST_STAGE] or 1
    stages = {
        label: {
            "us_per_request": round(_cpu_ns[label] / requests / 1e3, 2),
            "calls_per_request": _calls[label] / requests,
        }
        for label in sorted(_cpu_ns, key=lambda k: -_cpu_ns[k])
    }
    with open(os.environ["STAGES_OUT"], "w") as out:
        json.dump({"requests": _calls[REQUEST_STAGE], "stages": stages}, out, indent=1)
    _cpu_ns.clear()
    _calls.clear()


if __name__ == "__main__":
    _install()
    signal.signal(signal.SIGUSR2, _report)
    sys.argv = ["tokenctl", *sys.argv[1:]]
    sys.exit(main())
