"""OpenTelemetry export over OTLP/HTTP, when ``observability.otlp_endpoint`` is set (off by default: then no exporter
is loaded or built and a request pays one ``None`` check).

Each request becomes a span named by the GenAI semantic conventions (``chat claude-haiku-4-5``) with
``gen_ai.*`` attributes: operation, provider, request and response model, token usage (cache reads and writes
included), plus ``tokenctl.*`` ones: cost, outcome, request id. A client's ``traceparent`` makes the span its
child. The metrics are the conventions' client histograms, ``gen_ai.client.token.usage`` (by
``gen_ai.token.type``) and ``gen_ai.client.operation.duration``, and a ``tokenctl.cost`` counter in USD.
Spans are exported in batches off the request path; prompt text is never exported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from tokenctl.config import ObservabilityConfig
from tokenctl.ledger.record import LedgerEntry

_OPERATION = {
    "anthropic.messages": "chat",
    "openai.chat": "chat",
    "openai.responses": "chat",
    "openai.completions": "text_completion",
    "openai.embeddings": "embeddings",
    "anthropic.count_tokens": "count_tokens",
}
_PROVIDER = {"anthropic": "anthropic", "openai": "openai"}  # gen_ai.provider.name well-known values


class Telemetry:
    def __init__(self, settings: ObservabilityConfig, *, export_interval_ms: int = 10_000) -> None:
        assert settings.otlp_endpoint is not None
        resource = Resource.create({"service.name": settings.service_name})
        headers = dict(settings.otlp_headers)
        self.tracer_provider = TracerProvider(resource=resource)
        self.tracer_provider.add_span_processor(
            BatchSpanProcessor(
                OTLPSpanExporter(endpoint=f"{settings.otlp_endpoint}/v1/traces", headers=headers, timeout=10),
                schedule_delay_millis=min(export_interval_ms, 2_000),
            )
        )
        reader = PeriodicExportingMetricReader(
            OTLPMetricExporter(endpoint=f"{settings.otlp_endpoint}/v1/metrics", headers=headers, timeout=10),
            export_interval_millis=export_interval_ms,
        )
        self.meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
        self.tracer = self.tracer_provider.get_tracer("tokenctl")
        meter = self.meter_provider.get_meter("tokenctl")
        self.token_usage = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}", description="Tokens used per request, by type"
        )
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s", description="Request duration"
        )
        self.cost = meter.create_counter("tokenctl.cost", unit="USD", description="Spend recorded in the ledger")
        self._propagator = TraceContextTextMapPropagator()

    def request_done(self, entry: LedgerEntry, headers: Mapping[str, str]) -> None:
        attributes = _attributes(entry)
        operation = attributes["gen_ai.operation.name"]
        model = attributes.get("gen_ai.request.model")
        start_ns = int(entry.started_at * 1e9)
        end_ns = start_ns + int(entry.duration_ms * 1e6)
        parent = self._propagator.extract(headers) if "traceparent" in headers else None
        span = self.tracer.start_span(
            f"{operation} {model}" if model else str(operation),
            context=parent,
            kind=SpanKind.SERVER,
            start_time=start_ns,
            attributes=attributes,
        )
        if entry.status >= 400 or entry.outcome != "ok":
            span.set_status(Status(StatusCode.ERROR, entry.outcome))
        span.end(end_time=end_ns)
        common = {
            k: v
            for k, v in attributes.items()
            if k in ("gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model", "error.type")
        }
        self.duration.record(entry.duration_ms / 1000, common)
        usage = entry.usage
        if usage.input_tokens or usage.cache_read_tokens or usage.cache_write_tokens:
            self.token_usage.record(usage.input_total, {**common, "gen_ai.token.type": "input"})
        if usage.output_tokens:
            self.token_usage.record(usage.output_tokens, {**common, "gen_ai.token.type": "output"})
        if entry.cost is not None and entry.cost.total:
            self.cost.add(float(entry.cost.total), common)

    def shutdown(self) -> None:
        """Export what is still batched (called as the gateway stops)."""
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def _attributes(entry: LedgerEntry) -> dict[str, Any]:
    route = entry.route
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": _OPERATION.get(entry.api, entry.api),
        "http.response.status_code": entry.status,
        "tokenctl.request_id": entry.request_id,
        "tokenctl.outcome": entry.outcome,
        "tokenctl.api": entry.api,
    }
    if route is not None:
        attributes["gen_ai.provider.name"] = _PROVIDER.get(route.provider.kind, route.provider.name)
        attributes["gen_ai.request.model"] = entry.requested_model or route.requested_model
        attributes["tokenctl.upstream_model"] = route.upstream_model
    if entry.response_model:
        attributes["gen_ai.response.model"] = entry.response_model
    if entry.upstream_request_id:
        attributes["gen_ai.response.id"] = entry.upstream_request_id
    usage = entry.usage
    if entry.status < 400 or usage.output_tokens:
        attributes["gen_ai.usage.input_tokens"] = usage.input_total
        attributes["gen_ai.usage.output_tokens"] = usage.output_tokens
        attributes["gen_ai.usage.cache_read.input_tokens"] = usage.cache_read_tokens
        attributes["gen_ai.usage.cache_creation.input_tokens"] = usage.cache_write_tokens
    if entry.cost is not None:
        attributes["tokenctl.cost_usd"] = float(entry.cost.total)
    if entry.status >= 400:
        attributes["error.type"] = str(entry.status)
    return attributes
