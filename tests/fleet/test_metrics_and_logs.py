"""``/metrics`` against the ledger it summarises, its access rule and label bounds; JSON logs from a real
``tokenctl serve``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ADMIN_KEY, free_port
from tokenctl.testing.fake_provider import FakeProvider

ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
MESSAGES = {"model": "claude-haiku-4-5", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _sum(samples: dict[Any, float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and all((k, w) in ls for k, w in labels.items()))


def test_metrics_match_the_ledger_and_carry_no_user_labels(make_gateway: Any) -> None:
    live = make_gateway(
        {
            "budgets": [{"name": "org-cap", "scope": "org", "limit_usd": "0.03"}],
            "enforcement": {"stream_step_tokens": 0},  # worst cases reserved whole: the 402 below needs it
        }
    )
    anthropic = {"x-api-key": live.key, "anthropic-version": "2023-06-01", "x-fake-usage": "input=100,output=40"}
    with httpx.Client(timeout=10) as client:
        for _ in range(3):
            assert client.post(f"{live.url}/v1/messages", json=MESSAGES, headers=anthropic).status_code == 200
        r = client.post(
            f"{live.url}/v1/chat/completions",
            json={  # an output limit: without one, gpt-4.1-mini's own (32,768 tokens) would not fit the cap
                "model": "gpt-4.1-mini",
                "messages": [{"role": "user", "content": "hi"}],
                "stream": True,
                "max_tokens": 200,
            },
            headers={"authorization": f"Bearer {live.key}", "x-fake-usage": "input=30,output=20"},
        )
        assert r.status_code == 200
        r = client.post(f"{live.url}/v1/messages", json=MESSAGES, headers={**anthropic, "x-fake-fault": "status:529"})
        assert r.status_code == 529
        big = {**MESSAGES, "max_tokens": 64000}  # reserves more than the cap has left
        assert client.post(f"{live.url}/v1/messages", json=big, headers=anthropic).status_code == 402
        assert client.get(f"{live.url}/metrics").status_code == 401  # spend by model is not public by default
        scraped = client.get(f"{live.url}/metrics", headers=ADMIN)
    assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
    samples = _samples(scraped.text)
    rows = live.wait_rows(6)

    assert _sum(samples, "tokenctl_requests_total") == len(rows) == 6
    assert _sum(samples, "tokenctl_requests_total", status="200", provider="anthropic", model="claude-haiku-4-5") == 3
    assert _sum(samples, "tokenctl_requests_total", status="402", outcome="rejected") == 1
    assert _sum(samples, "tokenctl_upstream_errors_total", provider="anthropic", status="529") == 1
    assert _sum(samples, "tokenctl_tokens_total", kind="input") == sum(r["input_tokens"] for r in rows)
    assert _sum(samples, "tokenctl_tokens_total", kind="output") == sum(r["output_tokens"] for r in rows) == 140
    ledger_cost = sum((Decimal(r["cost_usd"]) for r in rows if r["cost_usd"]), Decimal(0))
    assert _sum(samples, "tokenctl_cost_usd_total") == pytest.approx(float(ledger_cost), rel=1e-9)
    assert _sum(samples, "tokenctl_request_duration_seconds_count") == 6
    spent = _sum(samples, "tokenctl_budget_spent_usd", budget="org-cap", member="org")
    assert spent == pytest.approx(float(ledger_cost), rel=1e-6)
    assert _sum(samples, "tokenctl_budget_used_ratio", budget="org-cap") == pytest.approx(spent / 0.03, rel=1e-6)
    assert _sum(samples, "tokenctl_reservations_open") == 0
    assert ("tokenctl_ledger_pending_rows", ()) in samples and ("tokenctl_ledger_lag_seconds", ()) in samples
    labels = {k for (_, ls) in samples for k, _ in ls}
    assert not labels & {"user", "team", "key", "key_id", "session", "project"}


def test_model_labels_stay_bounded_whatever_names_clients_send(make_gateway: Any) -> None:
    from tokenctl.observe.metrics import MAX_MODELS

    live = make_gateway({"observability": {"metrics_public": True}})
    gw = live.gw
    from tokenctl.ledger.record import LedgerEntry

    for i in range(MAX_MODELS + 50):  # as if each request named a new model
        entry = LedgerEntry(request_id=f"r{i}", started_at=time.time(), api="anthropic.messages", status=404)
        entry.route = gw.catalog.resolve(f"claude-made-up-{i}", "anthropic.messages")
        gw.metrics.request_done(entry)
    text = httpx.get(f"{live.url}/metrics").text  # metrics_public: no key needed
    models = {dict(ls).get("model") for (n, ls) in _samples(text) if n == "tokenctl_requests_total"}
    assert len(models) <= MAX_MODELS + 1 and "other" in models


def test_metrics_show_the_store_and_still_answer_when_redis_is_down(
    make_gateway: Any, redis_server: Any, prefix: str
) -> None:
    live = make_gateway(
        {
            "store": {"redis_url": redis_server.url, "key_prefix": prefix, "timeout_ms": 300},
            "budgets": [{"name": "org-cap", "scope": "org", "limit_usd": 5}],
        }
    )
    headers = {"x-api-key": live.key, "anthropic-version": "2023-06-01"}
    assert httpx.post(f"{live.url}/v1/messages", json=MESSAGES, headers=headers, timeout=10).status_code == 200
    samples = _samples(httpx.get(f"{live.url}/metrics", headers=ADMIN).text)
    assert _sum(samples, "tokenctl_store_seconds_count", op="reserve") == 1
    assert _sum(samples, "tokenctl_store_seconds_count", op="settle") == 1
    assert _sum(samples, "tokenctl_store_up") == 1
    redis_server.kill()
    scraped = httpx.get(f"{live.url}/metrics", headers=ADMIN, timeout=10)
    assert scraped.status_code == 200
    assert _sum(_samples(scraped.text), "tokenctl_store_up") == 0


def test_json_logs_are_one_object_per_line(fake: FakeProvider, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "tokenctl.yaml"
    config.write_text(
        f"server: {{port: {port}}}\nledger: {{path: {tmp_path / 'l.db'}}}\nobservability: {{log_format: json}}\n"
        f"providers:\n  - {{name: a, kind: anthropic, base_url: '{fake.url}', models: ['claude-*']}}\n"  # type: ignore[attr-defined]
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokenctl", "--config", str(config), "serve"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        for _ in range(200):
            try:
                httpx.get(f"http://127.0.0.1:{port}/health")
                break
            except httpx.TransportError:
                time.sleep(0.05)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert lines and all({"ts", "level", "logger", "message"} <= set(line) for line in lines)
    assert any("listening on" in line["message"] for line in lines)


class OtlpReceiver:
    """A small OTLP/HTTP collector: decodes what the exporter posts to /v1/traces and /v1/metrics."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.metrics: list[Any] = []

    def app(self) -> Any:
        from aiohttp import web

        async def traces(request: web.Request) -> web.Response:
            from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

            message = ExportTraceServiceRequest.FromString(await self._body(request))
            for resource in message.resource_spans:
                service = {a.key: a.value.string_value for a in resource.resource.attributes}["service.name"]
                for scope in resource.scope_spans:
                    self.spans += [(service, span) for span in scope.spans]
            return web.Response(status=200, content_type="application/x-protobuf")

        async def metrics(request: web.Request) -> web.Response:
            from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

            message = ExportMetricsServiceRequest.FromString(await self._body(request))
            for resource in message.resource_metrics:
                for scope in resource.scope_metrics:
                    self.metrics += list(scope.metrics)
            return web.Response(status=200, content_type="application/x-protobuf")

        app = web.Application()
        app.router.add_post("/v1/traces", traces)
        app.router.add_post("/v1/metrics", metrics)
        return app

    @staticmethod
    async def _body(request: Any) -> bytes:
        import gzip

        raw = await request.read()
        return gzip.decompress(raw) if request.headers.get("content-encoding") == "gzip" else raw


def test_otlp_export_sends_gen_ai_spans_and_metrics_to_a_collector(
    fake: FakeProvider, tmp_path: Path, provider_env: None
) -> None:
    from tests.conftest import ServerThread, start_gateway

    receiver = OtlpReceiver()
    collector = ServerThread(receiver.app()).start()
    live = start_gateway(
        fake,
        tmp_path,
        {"observability": {"otlp_endpoint": collector.url, "service_name": "tk-test", "otlp_headers": {"x-t": "1"}}},
    )
    parent_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    try:
        headers = {"x-api-key": live.key, "anthropic-version": "2023-06-01", "x-fake-usage": "input=100,output=40"}
        traced = {**headers, "traceparent": f"00-{parent_trace}-00f067aa0ba902b7-01"}
        with httpx.Client(timeout=10) as client:
            secret = {**MESSAGES, "messages": [{"role": "user", "content": "the secret plan"}]}
            assert client.post(f"{live.url}/v1/messages", json=secret, headers=traced).status_code == 200
            failed = {**headers, "x-fake-fault": "status:529"}
            assert client.post(f"{live.url}/v1/messages", json=MESSAGES, headers=failed).status_code == 529
    finally:
        live.server.stop()  # the gateway's shutdown exports what is still batched
        collector.stop()
    assert len(receiver.spans) == 2
    by_status = {}
    for service, span in receiver.spans:
        assert service == "tk-test" and span.name == "chat claude-haiku-4-5"
        attrs = {a.key: a.value for a in span.attributes}
        by_status[attrs["http.response.status_code"].int_value] = (span, attrs)
    span, attrs = by_status[200]
    assert span.trace_id.hex() == parent_trace  # the client's trace continues through the gateway
    assert attrs["gen_ai.provider.name"].string_value == "anthropic"
    assert attrs["gen_ai.usage.input_tokens"].int_value == 100
    assert attrs["gen_ai.usage.output_tokens"].int_value == 40
    assert attrs["tokenctl.cost_usd"].double_value == pytest.approx(100 * 1e-6 + 40 * 5e-6)
    assert "secret plan" not in str(span)  # no prompt text
    failed_span, failed_attrs = by_status[529]
    assert failed_attrs["error.type"].string_value == "529" and failed_span.status.code == 2  # ERROR
    names = {m.name for m in receiver.metrics}
    assert {"gen_ai.client.token.usage", "gen_ai.client.operation.duration", "tokenctl.cost"} <= names
    usage = [m for m in receiver.metrics if m.name == "gen_ai.client.token.usage"][-1]
    by_type = {
        {a.key: a.value.string_value for a in p.attributes}["gen_ai.token.type"]: p.sum
        for p in usage.histogram.data_points
    }
    assert by_type == {"input": 100, "output": 40}


def test_without_an_otlp_endpoint_no_exporter_is_built_or_loaded(gateway: Any) -> None:
    assert gateway.gw.telemetry is None  # the request path pays one None check
    code = (
        "import sys\n"
        "from tokenctl.app import create_app\n"
        "from tokenctl.config import parse_config\n"
        "create_app(parse_config({}))\n"
        "print([m for m in sys.modules if m.startswith(('opentelemetry.exporter', 'tokenctl.observe.otel'))])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_requests_noted_in_bulk_are_all_counted_and_never_held_without_bound() -> None:
    """Requests are applied to Prometheus in batches: every one counts at the scrape, with exact token and cost
    sums, and what waits between scrapes stays under the batch size however many requests go by."""
    from prometheus_client import generate_latest

    from tokenctl.observe.metrics import Metrics
    from tokenctl.testing.synthetic import synthetic_entries

    metrics = Metrics()
    entries = list(synthetic_entries(4_500, start=time.time() - 3_600, days=1))
    for entry in entries:
        metrics.request_done(entry)
        assert len(metrics._done) < 2_000
    metrics.apply()
    samples = _samples(generate_latest(metrics.registry).decode())
    assert _sum(samples, "tokenctl_requests_total") == 4_500
    assert _sum(samples, "tokenctl_tokens_total", kind="output") == sum(e.usage.output_tokens for e in entries)
    total = sum((e.cost.total for e in entries if e.cost is not None), Decimal(0))
    assert _sum(samples, "tokenctl_cost_usd_total") == pytest.approx(float(total), rel=1e-9)
    assert _sum(samples, "tokenctl_request_duration_seconds_count") == 4_500
