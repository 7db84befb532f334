"""Hard caps hold under concurrency, through a live gateway and a fake provider."""

from __future__ import annotations

import asyncio
import re
import time
from decimal import Decimal
from typing import Any

import httpx2 as httpx
import orjson
import pytest

from tests.conftest import LiveGateway
from tokenctl.ledger.db import connect
from tokenctl.policy.store import MemoryStore

_BLOCK = re.compile(
    r"spent \$(\d+(?:\.\d+)?) \+ \$(\d+(?:\.\d+)?) reserved for requests in flight of \$(\d+(?:\.\d+)?); "
    r"this request needs up to \$(\d+(?:\.\d+)?)"
)


def _messages_body(max_tokens: int = 2000, text: str = "hello") -> dict[str, Any]:
    return {"model": "claude-haiku-4-5", "max_tokens": max_tokens, "messages": [{"role": "user", "content": text}]}


def _headers(key: str, usage: str = "input=60,output=1000", fault: str | None = None) -> dict[str, str]:
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01", "x-fake-usage": usage}
    if fault:
        headers["x-fake-fault"] = fault
    return headers


def _settled(live: LiveGateway) -> Decimal:
    return sum((Decimal(r["cost_usd"]) for r in live.rows()), Decimal(0))


def test_200_concurrent_requests_from_many_keys_never_pass_a_1_dollar_cap(make_gateway: Any) -> None:
    keys = {f"k{i}": {"user": f"user{i}", "team": "payments"} for i in range(20)}
    budgets = {"budgets": [{"name": "team-cap", "scope": "team", "match": "payments", "limit_usd": 1}]}
    # 200 clients share this process's GIL with the gateway: give Redis calls time to be answered
    live = make_gateway({**budgets, "store": {"timeout_ms": 10_000}}, keys=keys)

    async def one(client: httpx.AsyncClient, i: int) -> httpx.Response:
        return await client.post(
            f"{live.url}/v1/messages",
            json=_messages_body(),
            headers=_headers(live.keys[f"k{i % 20}"], fault="slow:150"),
        )

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=250, max_keepalive_connections=250)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            return await asyncio.gather(*(one(client, i) for i in range(200)))

    responses = asyncio.run(burst())
    ok = [r for r in responses if r.status_code == 200]
    blocked = [r for r in responses if r.status_code == 402]
    assert len(ok) + len(blocked) == 200
    assert ok and blocked  # the cap was contended: some fit, some did not
    for r in blocked:  # nobody was turned away while the cap still had room for them
        spent, reserved, limit, needed = (Decimal(x) for x in _BLOCK.search(r.json()["error"]["message"]).groups())
        assert spent + reserved + needed > limit
        assert r.headers["x-should-retry"] == "false"
    rows = live.wait_rows(200)
    assert len(rows) == 200
    assert _settled(live) <= Decimal(1)

    # Keep going one at a time: requests are admitted until the next would not fit, never past the cap.
    with httpx.Client(timeout=30) as client:
        for i in range(400):
            r = client.post(f"{live.url}/v1/messages", json=_messages_body(), headers=_headers(live.keys["k0"]))
            if r.status_code == 402:
                spent, reserved, limit, needed = (
                    Decimal(x) for x in _BLOCK.search(r.json()["error"]["message"]).groups()
                )
                assert reserved == 0 and spent + needed > limit
                break
            assert r.status_code == 200
        else:
            pytest.fail("the cap never blocked")
    assert Decimal(1) - _settled(live) < Decimal("0.0102")  # stopped within one reservation of the cap
    assert _settled(live) <= Decimal(1)


def test_50_concurrent_requests_against_a_budget_that_fits_5_admit_exactly_5(make_gateway: Any) -> None:
    # haiku 4.5: $1/M input, $5/M output; max_tokens 2000 -> $0.01 output plus a small input share. Reserved
    # whole (stream_step_tokens 0), as answers tokenctl cannot follow are: the test counts exact admissions.
    live = make_gateway(
        {
            "budgets": [{"name": "tiny", "scope": "user", "match": "alice", "limit_usd": "0.0525"}],
            "enforcement": {"stream_step_tokens": 0},
        }
    )

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=60)) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        f"{live.url}/v1/messages", json=_messages_body(), headers=_headers(live.key, fault="slow:200")
                    )
                    for _ in range(50)
                )
            )

    statuses = sorted(r.status_code for r in asyncio.run(burst()))
    assert statuses == [200] * 5 + [402] * 45
    live.wait_rows(50)
    assert _settled(live) <= Decimal("0.0525")


def test_failed_and_cut_requests_release_their_reservations(make_gateway: Any) -> None:
    live = make_gateway({"budgets": [{"name": "cap", "scope": "org", "limit_usd": 1}]})
    with httpx.Client(timeout=30) as client:
        for fault in ("status:500", "status:429", "cut:0", "slow:5000"):
            client.post(f"{live.url}/v1/messages", json=_messages_body(), headers=_headers(live.key, fault=fault))
        with client.stream(
            "POST",
            f"{live.url}/v1/messages",
            json={**_messages_body(), "stream": True},
            headers=_headers(live.key, fault="stall:200"),
        ) as r:
            next(r.iter_bytes())  # the client walks away mid-stream
    live.wait_rows(5)

    async def open_reservations() -> int:
        return await live.gw.enforcer.store.open_reservations(live.gw.enforcer.clock())

    time.sleep(0.3)
    assert asyncio.run_coroutine_threadsafe(open_reservations(), live.server.loop).result(5) == 0


def test_a_principal_without_budgets_is_never_blocked(make_gateway: Any) -> None:
    live = make_gateway({"budgets": [{"name": "web-only", "scope": "team", "match": "web", "limit_usd": "0.000001"}]})
    with httpx.Client(timeout=30) as client:
        for _ in range(5):
            r = client.post(f"{live.url}/v1/messages", json=_messages_body(), headers=_headers(live.key))
            assert r.status_code == 200
        r = client.post(f"{live.url}/v1/messages", json=_messages_body(), headers=_headers(live.keys["limited"]))
        assert r.status_code == 402
        assert "web-only" in r.json()["error"]["message"]


def test_count_tokens_goes_through_the_budget_path_but_costs_nothing(make_gateway: Any) -> None:
    live = make_gateway({"budgets": [{"name": "cap", "scope": "org", "limit_usd": "0.015"}]})
    with httpx.Client(timeout=30) as client:
        body = {"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "hi"}]}
        for _ in range(3):
            r = client.post(f"{live.url}/v1/messages/count_tokens", json=body, headers=_headers(live.key))
            assert r.status_code == 200
    rows = live.wait_rows(3)
    assert all(r["cost_nanousd"] == 0 and r["reserved_usd"] == "0" for r in rows)


def test_spend_survives_a_restart_and_the_counter_equals_the_ledger(
    make_gateway: Any, fake: Any, tmp_path: Any
) -> None:
    from tests.conftest import ServerThread
    from tokenctl.app import create_app

    # Each request reserves ~$0.0101 and settles ~$0.0051: two fit in $0.02, a third only if spend were lost.
    budgets = {
        "budgets": [{"name": "cap", "scope": "user", "match": "alice", "limit_usd": "0.02"}],
        "enforcement": {"stream_step_tokens": 0},  # reserved whole, so the reservation sizes above hold
    }
    live = make_gateway(budgets)
    with httpx.Client(timeout=30) as client:
        for _ in range(2):
            assert (
                client.post(f"{live.url}/v1/messages", json=_messages_body(), headers=_headers(live.key)).status_code
                == 200
            )
    spent = _settled(live)
    live.server.stop()
    for _ in range(2):  # restarting twice (reseeding twice) must not double the counter
        server = ServerThread(create_app(live.config)).start()
        try:
            r = httpx.post(f"{server.url}/v1/messages", json=_messages_body(), headers=_headers(live.key), timeout=30)
            assert r.status_code == 402
            got_spent = Decimal(_BLOCK.search(r.json()["error"]["message"]).group(1))
            assert got_spent == spent.quantize(Decimal("0.000001"))
        finally:
            server.stop()
    live.server = ServerThread(create_app(live.config)).start()


def test_every_upstream_route_goes_through_budgets(make_gateway: Any) -> None:
    from tokenctl.ingress.http import PROXY_ROUTES

    live = make_gateway({"budgets": [{"name": "spent", "scope": "org", "limit_usd": "0.000000001"}]})
    bodies = {
        "anthropic.messages": _messages_body(),
        "anthropic.count_tokens": {**_messages_body(), "max_tokens": None},
        "openai.chat": {"model": "gpt-5", "max_completion_tokens": 100, "messages": [{"role": "user", "content": "q"}]},
        "openai.responses": {"model": "gpt-5", "input": "q", "max_output_tokens": 100},
    }
    with httpx.Client(timeout=30) as client:
        for _, ending, dialect in PROXY_ROUTES:
            body = {k: v for k, v in bodies[dialect.api].items() if v is not None}
            r = client.post(f"{live.url}{ending}", json=body, headers={"authorization": f"Bearer {live.key}"})
            if dialect.api == "anthropic.count_tokens":
                assert r.status_code == 200  # costs nothing, so a spent budget does not stop it
            else:
                assert r.status_code == 402, (ending, r.text)
    assert all(rec.path.endswith("count_tokens") for rec in live.fake.received)


class FailingStore(MemoryStore):
    async def reserve(self, *args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("store down")


def test_a_failing_budget_store_fails_closed_and_the_request_is_still_recorded(make_gateway: Any) -> None:
    live = make_gateway({"budgets": [{"name": "cap", "scope": "org", "limit_usd": 100}]}, store=FailingStore())
    r = httpx.post(f"{live.url}/v1/messages", json=_messages_body(), headers=_headers(live.key), timeout=30)
    assert r.status_code == 503 and "budget store unavailable" in r.json()["error"]["message"]
    assert len(live.fake.received) == 0
    assert live.wait_rows(1)[0]["status"] == 503


def test_pool_draws_are_recorded_and_reported_by_funding(make_gateway: Any, capsys: Any) -> None:
    from tokenctl.cli.main import main as cli

    live = make_gateway(
        {
            "budgets": [
                {"name": "allowance", "scope": "user", "limit_usd": "0.015", "overflow_to": "team-pool"},
                {"name": "team-pool", "scope": "team", "limit_usd": 1, "pool": True, "member_cap_usd": "0.02"},
            ]
        }
    )
    statuses = []
    with httpx.Client(timeout=30) as client:
        for _ in range(6):  # each reserves ~$0.0101 and settles ~$0.0051
            r = client.post(f"{live.url}/v1/messages", json=_messages_body(), headers=_headers(live.key))
            statuses.append(r.status_code)
    rows = live.wait_rows(6)
    funding = [r["funding"] for r in rows if r["status"] == 200]
    assert funding[0] is None and "team-pool" in funding  # own allowance first, then the pool
    assert statuses[-1] == 402 and "share of pool 'team-pool'" in live.rows()[-1]["error"]
    pool_spend = sum(Decimal(r["cost_usd"]) for r in rows if r["funding"] == "team-pool")
    assert pool_spend <= Decimal("0.02")
    capsys.readouterr()
    assert cli(["report", "--by", "funding", "--format", "json", "--ledger", live.db_path]) == 0
    report = orjson.loads(capsys.readouterr().out)
    groups = {g["group"]: g for g in report}
    assert "team-pool" in groups and "own budget" in groups


def test_status_shows_the_reservations_of_members_with_no_ledger_row_yet(make_gateway: Any) -> None:
    """A member's first request, still streaming: its reservation is in the status before any row exists."""
    import threading

    from tests.conftest import ADMIN_KEY

    live = make_gateway({"budgets": [{"name": "per-user", "scope": "user", "limit_usd": 50}]})
    body = {
        "model": "claude-haiku-4-5",
        "max_tokens": 100,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
    streaming = threading.Thread(
        target=lambda: httpx.post(
            live.url + "/v1/messages",
            json=body,
            timeout=30,
            headers={"x-api-key": live.key, "x-fake-chunks": "20", "x-fake-fault": "stall:60"},
        )
    )
    streaming.start()
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    try:
        deadline = time.monotonic() + 5
        rows: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            rows = httpx.get(live.url + "/admin/budgets/status", headers=admin).json()["data"]
            if any(r["member"] == "alice" for r in rows):
                break
            time.sleep(0.05)
        alice = next(r for r in rows if r["member"] == "alice")
        assert Decimal(alice["reserved_usd"]) > 0 and Decimal(alice["spent_usd"]) == 0
        assert live.rows() == []  # no ledger row yet
    finally:
        streaming.join(30)
    after = next(
        r for r in httpx.get(live.url + "/admin/budgets/status", headers=admin).json()["data"] if r["member"] == "alice"
    )
    assert Decimal(after["reserved_usd"]) == 0 and Decimal(after["spent_usd"]) > 0


def test_a_running_request_keeps_its_reservation_past_the_ttl(make_gateway: Any) -> None:
    """A request that runs longer than reservation_ttl_seconds (a long stream) is renewed while it runs: its
    reservation never expires, so requests arriving meanwhile cannot take its share and pass the cap."""
    import threading

    cap = Decimal("0.025")  # room for two of these requests in flight (each reserves and costs about $0.0101)
    live = make_gateway(
        {
            "budgets": [{"name": "cap", "scope": "user", "match": "alice", "limit_usd": str(cap)}],
            "enforcement": {"reservation_ttl_seconds": 1},
        }
    )
    usage = "input=60,output=2000"
    statuses: list[int] = []
    slow = threading.Thread(
        target=lambda: statuses.append(
            httpx.post(
                f"{live.url}/v1/messages",
                json=_messages_body(),
                timeout=30,
                headers=_headers(live.key, usage, fault="slow:2500"),
            ).status_code
        )
    )
    slow.start()
    time.sleep(1.5)  # past the TTL: without renewal the first request's reservation would be gone
    with httpx.Client(timeout=30) as client:
        for _ in range(3):
            statuses.append(
                client.post(
                    f"{live.url}/v1/messages", json=_messages_body(), headers=_headers(live.key, usage)
                ).status_code
            )
    slow.join(30)
    assert sorted(statuses) == [200, 200, 402, 402]
    assert _settled(live) <= cap


def test_a_budget_set_live_under_traffic_starts_from_the_spend_already_in_its_window(make_gateway: Any) -> None:
    """`budgets set` while requests flow, on a ledger with 60k rows: requests arriving while the new budget's
    counter is read from the ledger must not create it at $0 (the seed would then be skipped)."""
    import threading

    from tests.conftest import ADMIN_KEY
    from tokenctl.ledger.writer import LedgerWriter
    from tokenctl.testing.synthetic import synthetic_entries

    live = make_gateway()
    live.server.stop()  # one writer per ledger: fill it while the gateway is down, as history
    writer = LedgerWriter(live.db_path, journal_path=live.config.ledger_journal_path)
    writer.start()
    for entry in synthetic_entries(60_000, start=time.time() - 3 * 3600, days=0.1):
        writer.record(entry)
    writer.close()
    from tests.conftest import ServerThread
    from tokenctl.app import create_app

    live.server = ServerThread(create_app(live.config)).start()
    live.url = live.server.url
    db = connect(live.db_path, migrate_schema=False)
    history = Decimal(db.execute("SELECT SUM(cost_nanousd) FROM requests WHERE team = 'payments'").fetchone()[0])
    history /= 10**9
    db.close()
    assert history > 1
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                client.post(f"{live.url}/v1/messages", json=_messages_body(), headers=_headers(live.key))

    threads = [threading.Thread(target=traffic) for _ in range(8)]
    for t in threads:
        t.start()
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    try:
        time.sleep(0.3)
        put = httpx.put(
            f"{live.url}/admin/budgets/team-live",
            headers=admin,
            json={"scope": "team", "limit_usd": str(history * 10), "period": "lifetime"},
        )
        assert put.status_code == 200, put.text
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    rows = httpx.get(f"{live.url}/admin/budgets/status", headers=admin).json()["data"]
    spent = Decimal(next(r for r in rows if r["budget"] == "team-live" and r["member"] == "payments")["spent_usd"])
    assert spent >= history  # the window's spend before the budget existed, plus what came after


UNPRICED = "claude-unpriced-9"  # a model genai-prices does not know, served like any claude-*


def _unpriced_gateway(make_gateway: Any, policy: str | None) -> LiveGateway:
    extra: dict[str, Any] = {"budgets": [{"name": "team-cap", "scope": "team", "limit_usd": 1}]}
    if policy is not None:
        extra["enforcement"] = {"unpriced_models": policy}
    return make_gateway(extra)


def test_an_unpriced_model_is_refused_under_a_blocking_budget_by_default(make_gateway: Any) -> None:
    live = _unpriced_gateway(make_gateway, None)
    response = httpx.post(
        f"{live.url}/v1/messages", json={**_messages_body(), "model": UNPRICED}, headers=_headers(live.key)
    )
    assert response.status_code == 403
    message = response.json()["error"]["message"]
    assert UNPRICED in message and "team-cap" in message and "pricing.overrides" in message
    assert live.fake.received == []  # never sent
    priced = httpx.post(f"{live.url}/v1/messages", json=_messages_body(), headers=_headers(live.key))
    assert priced.status_code == 200


def test_without_a_blocking_budget_an_unpriced_model_is_served_and_flagged(
    make_gateway: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from tokenctl.cli.main import main

    live = make_gateway()
    response = httpx.post(
        f"{live.url}/v1/messages", json={**_messages_body(), "model": UNPRICED}, headers=_headers(live.key)
    )
    assert response.status_code == 200
    row = live.row(response.headers["request-id"])
    assert (row["priced"], row["cost_usd"]) == (0, "0")
    assert main(["report", "--ledger", live.db_path]) == 0
    assert "1 request(s) used models without a price" in capsys.readouterr().err


def test_an_unpriced_model_can_be_priced_as_a_stand_in(make_gateway: Any) -> None:
    live = _unpriced_gateway(make_gateway, "claude-opus-4-1")
    response = httpx.post(
        f"{live.url}/v1/messages",
        json={**_messages_body(), "model": UNPRICED},
        headers=_headers(live.key, "input=1000,output=1000"),
    )
    assert response.status_code == 200
    row = live.row(response.headers["request-id"])
    assert row["priced"] == 0 and row["cost_source"] == "priced as claude-opus-4-1"
    assert Decimal(row["cost_usd"]) == Decimal("0.09")  # opus: $15 in + $75 out per million
    assert Decimal(row["reserved_usd"]) > 0  # reserved at the stand-in's price, so the cap holds


def test_unpriced_models_can_be_allowed_explicitly(make_gateway: Any) -> None:
    live = _unpriced_gateway(make_gateway, "allow")
    response = httpx.post(
        f"{live.url}/v1/messages", json={**_messages_body(), "model": UNPRICED}, headers=_headers(live.key)
    )
    assert response.status_code == 200


def fallback_config(limit: str) -> dict[str, Any]:
    return {
        "aliases": {"auto": "claude-haiku-4-5"},
        "routing": {
            "routed_models": ["auto"],
            "tiers": {"economy": {"models": ["claude-haiku-4-5", "claude-opus-4-1"]}},
            "rules": [{"tier": "economy"}],
            "default_tier": "economy",
        },
        "budgets": [{"name": "team-cap", "scope": "team", "limit_usd": limit}],
        "enforcement": {"stream_step_tokens": 0},  # worst cases reserved whole: the prices compared here
    }


def test_a_fallback_to_a_dearer_deployment_is_admitted_at_its_own_price(make_gateway: Any) -> None:
    """Haiku answers 529, Opus would serve: Opus's worst case (~$0.15) must fit the budget, not Haiku's (~$0.01)."""
    faults = {"x-fake-fault": "status:529", "x-fake-fault-model": "claude-haiku-4-5"}
    tight = make_gateway(fallback_config("0.05"))
    refused = httpx.post(
        f"{tight.url}/v1/messages",
        json={**_messages_body(), "model": "auto"},
        headers={**_headers(tight.key), **faults},
    )
    assert refused.status_code == 402 and "team-cap" in refused.json()["error"]["message"]
    assert [orjson.loads(r.body)["model"] for r in tight.fake.received] == ["claude-haiku-4-5"]  # opus never sent
    roomy = make_gateway(fallback_config("1"))
    served = httpx.post(
        f"{roomy.url}/v1/messages",
        json={**_messages_body(), "model": "auto"},
        headers={**_headers(roomy.key), **faults},
    )
    assert served.status_code == 200
    row = roomy.row(served.headers["request-id"])
    assert row["model"] == "claude-opus-4-1" and Decimal(row["reserved_usd"]) > Decimal("0.1")
    assert _settled(roomy) <= Decimal(1)


def test_input_the_body_does_not_show_reserves_the_ceiling(make_gateway: Any) -> None:
    """previous_response_id (server-held context) and documents fetched by URL can be 100k+ tokens from a
    250-byte body: they reserve the stated worst case, reservation_ceiling_usd."""
    live = make_gateway(
        {
            "budgets": [{"name": "user-cap", "scope": "user", "limit_usd": "0.5"}],
            "enforcement": {"reservation_ceiling_usd": "0.4"},
        }
    )
    continued = {
        "model": "gpt-5-mini",
        "input": "and then?",
        "previous_response_id": "resp_abc",
        "max_output_tokens": 50,
    }
    linked = {
        **_messages_body(max_tokens=50),
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "document", "source": {"type": "url", "url": "https://example.com/big.pdf"}},
                    {"type": "text", "text": "summarise"},
                ],
            }
        ],
    }
    first = httpx.post(
        f"{live.url}/v1/responses",
        json=continued,
        headers={"authorization": f"Bearer {live.key}", "x-fake-usage": "input=10,output=5"},
    )
    assert first.status_code == 200
    assert Decimal(live.row(first.headers["request-id"])["reserved_usd"]) == Decimal("0.4")
    second = httpx.post(f"{live.url}/v1/messages", json=linked, headers=_headers(live.key, "input=10,output=5"))
    assert second.status_code == 200 and Decimal(live.row(second.headers["request-id"])["reserved_usd"]) == Decimal(
        "0.4"
    )
    plain = httpx.post(f"{live.url}/v1/messages", json=_messages_body(max_tokens=50), headers=_headers(live.key))
    assert Decimal(live.row(plain.headers["request-id"])["reserved_usd"]) < Decimal("0.01")


def test_chat_n_choices_reserve_each_choices_output() -> None:
    from tokenctl.policy import estimate

    body = {"model": "gpt-5-mini", "messages": [], "max_completion_tokens": 1000, "n": 8}
    assert estimate.output_limit(body, "openai.chat", 16384) == 8000
    assert estimate.output_limit({**body, "n": 1}, "openai.chat", 16384) == 1000
    assert estimate.output_limit({"messages": [], "n": 3}, "openai.chat", 100) == 300


def test_codex_gets_a_budget_stop_as_a_400_it_shows_once_and_the_ledger_keeps_the_402(make_gateway: Any) -> None:
    """Codex 0.171 retries a 402 five times but shows a 400's message once (measured with the real CLI:
    tests/e2e/test_real_clis.py); other clients keep the 402."""
    live = make_gateway({"budgets": [{"name": "tiny", "scope": "user", "match": "alice", "limit_usd": "0.0001"}]})
    body = {"model": "gpt-4.1-mini", "input": "hi", "stream": True}
    codex = {
        "authorization": f"Bearer {live.key}",
        "user-agent": "codex_exec/0.171.0 (Debian 12.0.0; x86_64) dumb (codex_exec; 0.171.0)",
        "originator": "codex_exec",
    }
    r = httpx.post(f"{live.url}/v1/responses", json=body, headers=codex, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "budget_exceeded"
    assert "budget 'tiny'" in r.json()["error"]["message"] and r.headers["x-should-retry"] == "false"
    sdk = httpx.post(f"{live.url}/v1/responses", json=body, headers={"authorization": f"Bearer {live.key}"}, timeout=10)
    assert sdk.status_code == 402
    rows = live.wait_rows(2)
    assert [r["status"] for r in rows] == [402, 402]  # block counts and reports see the stop as what it is
    assert "answered 400 instead of 402" in (rows[0]["policy"] or "")


def test_a_request_without_an_output_limit_reserves_the_models_own(make_gateway: Any) -> None:
    """gpt-5-mini can write 128,000 tokens when the request sets no limit: the reservation covers that, so an
    answer far longer than the old 16,384-token assumption settles within what was reserved."""
    live = make_gateway({"budgets": [{"name": "user-cap", "scope": "user", "limit_usd": "2"}]})
    headers = {"authorization": f"Bearer {live.key}", "x-fake-usage": "input=50,output=60000"}
    body = {"model": "gpt-5-mini", "messages": [{"role": "user", "content": "write a lot"}]}
    answer = httpx.post(f"{live.url}/v1/chat/completions", json=body, headers=headers)
    assert answer.status_code == 200
    row = live.row(answer.headers["request-id"])
    reserved, cost = Decimal(row["reserved_usd"]), Decimal(row["cost_usd"])
    assert cost > Decimal("0.1")  # 60,000 output tokens at $2 per million
    assert reserved >= Decimal("0.256") > cost  # 128,000 output tokens at $2 per million, plus the input
    limited = httpx.post(f"{live.url}/v1/chat/completions", json={**body, "max_tokens": 500}, headers=headers)
    assert Decimal(live.row(limited.headers["request-id"])["reserved_usd"]) < Decimal("0.002")  # its own limit


def test_openai_service_tiers_are_reserved_and_recorded_at_their_own_prices(make_gateway: Any) -> None:
    """priority costs 1.8x the standard price for gpt-5-mini and flex half: the tier the provider says it
    served (answer, Chat stream, Responses stream) is what the row costs, and a priority request reserves at
    the priority price."""
    from tokenctl.metering.pricing import PriceBook
    from tokenctl.types import Usage

    live = make_gateway({"budgets": [{"name": "user-cap", "scope": "user", "limit_usd": "5"}]})
    headers = {"authorization": f"Bearer {live.key}", "x-fake-usage": "input=1000,output=500"}
    chat = {"model": "gpt-5-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 600}
    provider = live.gw.catalog.resolve("gpt-5-mini", "openai.chat").provider
    prices, usage = PriceBook(), Usage(input_tokens=1000, output_tokens=500)
    standard = prices.cost(provider, "gpt-5-mini", usage).total
    calls = [
        ("/v1/chat/completions", {**chat, "service_tier": "priority"}, "priority"),
        ("/v1/chat/completions", {**chat, "service_tier": "priority", "stream": True}, "priority"),
        ("/v1/responses", {"model": "gpt-5-mini", "input": "hi", "service_tier": "flex", "stream": True}, "flex"),
        ("/v1/chat/completions", chat, None),
    ]
    rows = []
    for path, body, tier in calls:
        answer = httpx.post(f"{live.url}{path}", json=body, headers=headers)
        assert answer.status_code == 200, answer.text
        rows.append((live.row(answer.headers["request-id"]), tier))
    for row, tier in rows:
        expected = prices.cost(provider, "gpt-5-mini", usage, tier).total
        assert Decimal(row["cost_usd"]) == expected, tier
        assert (f"service_tier {tier}" in (row["policy"] or "")) == (tier is not None)
    assert Decimal(rows[0][0]["cost_usd"]) == standard * Decimal("1.8")
    assert Decimal(rows[2][0]["cost_usd"]) == standard / 2
    assert Decimal(rows[0][0]["reserved_usd"]) > Decimal(rows[3][0]["reserved_usd"]) * Decimal("1.7")  # priority


def test_a_request_for_audio_output_reserves_at_the_audio_price(make_gateway: Any) -> None:
    """gpt-audio writes audio at $64 per million tokens against $10 for text: a request asking for audio
    (``modalities``) reserves its output at the audio price."""
    live = make_gateway({"budgets": [{"name": "user-cap", "scope": "user", "limit_usd": "5"}]})
    headers = {"authorization": f"Bearer {live.key}"}
    body = {"model": "gpt-audio", "messages": [{"role": "user", "content": "say hi"}], "max_tokens": 2000}
    text = httpx.post(f"{live.url}/v1/chat/completions", json=body, headers=headers)
    spoken = httpx.post(
        f"{live.url}/v1/chat/completions", json={**body, "modalities": ["text", "audio"]}, headers=headers
    )
    assert text.status_code == spoken.status_code == 200
    as_text = Decimal(live.row(text.headers["request-id"])["reserved_usd"])
    as_audio = Decimal(live.row(spoken.headers["request-id"])["reserved_usd"])
    audio_premium = Decimal(2000) * (Decimal(64) - Decimal(10)) / 10**6  # $0.108 for the output
    assert audio_premium <= as_audio - as_text < audio_premium + Decimal("0.0001")  # + the longer body's input
