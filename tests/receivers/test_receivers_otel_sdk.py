"""The OpenTelemetry Python SDK's OTLP/HTTP exporters deliver spans, metrics and logs to worldline."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest
from conftest import ReceiverHarness

from pipeline import otlp
from pipeline.receivers.otlp_export import LOGS, METRICS, TRACES

pytestmark = pytest.mark.integration

sdk_trace = pytest.importorskip("opentelemetry.sdk.trace", reason="opentelemetry-sdk not installed")
http_exporter = pytest.importorskip(
    "opentelemetry.exporter.otlp.proto.http",
    reason="opentelemetry-exporter-otlp-proto-http not installed",
)


def _resource(service: str) -> Any:
    from opentelemetry.sdk.resources import Resource

    return Resource.create({"service.name": service, "service.version": "1.2.3"})


def _decoded(receiver: ReceiverHarness, logical: str, type_name: str) -> list[Any]:
    return [
        otlp.from_proto(record.value or b"", type_name)
        for record in receiver.take(logical, 1, settle=0.3)
    ]


def _resource_attributes(resource: Any) -> dict[str, Any]:
    return {kv.key: kv.value.string_value for kv in resource.attributes}


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_sdk_spans_arrive(receiver: ReceiverHarness, compression: str) -> None:
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    service = f"sdk-spans-{uuid.uuid4().hex[:6]}"
    exporter = OTLPSpanExporter(
        endpoint=f"{receiver.url}/v1/traces",
        compression=Compression.Gzip if compression == "gzip" else Compression.NoCompression,
        timeout=10,
    )
    provider = sdk_trace.TracerProvider(resource=_resource(service))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("worldline.tests")
    with tracer.start_as_current_span("checkout") as parent:
        parent.set_attribute("http.request.method", "POST")
        with tracer.start_as_current_span("charge card") as child:
            child_context = child.get_span_context()
    provider.shutdown()

    records = receiver.take("otlp_spans", 2, settle=0.3)
    spans = {
        span.name: (span, _resource_attributes(rs.resource))
        for record in records
        for rs in otlp.from_proto(record.value or b"", TRACES.message_type).resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    }
    assert set(spans) == {"checkout", "charge card"}
    child_span, resource = spans["charge card"]
    assert resource["service.name"] == service
    assert child_span.trace_id == child_context.trace_id.to_bytes(16, "big")
    assert child_span.span_id == child_context.span_id.to_bytes(8, "big")
    assert child_span.parent_span_id == spans["checkout"][0].span_id
    assert {kv.key: kv.value.string_value for kv in spans["checkout"][0].attributes} == {
        "http.request.method": "POST"
    }


def test_sdk_metrics_arrive(receiver: ReceiverHarness) -> None:
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    service = f"sdk-metrics-{uuid.uuid4().hex[:6]}"
    reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=f"{receiver.url}/v1/metrics", timeout=10),
        export_interval_millis=3_600_000,
    )
    provider = MeterProvider(resource=_resource(service), metric_readers=[reader])
    meter = provider.get_meter("worldline.tests")
    requests = meter.create_counter("http.server.requests", unit="{request}")
    latency = meter.create_histogram("http.server.duration", unit="ms")
    requests.add(3, {"http.route": "/cart"})
    requests.add(2, {"http.route": "/pay"})
    for value in (5.0, 15.0, 250.0):
        latency.record(value, {"http.route": "/cart"})
    provider.shutdown()

    (request,) = _decoded(receiver, "otlp_metrics", METRICS.message_type)
    (resource_metrics,) = request.resource_metrics
    assert _resource_attributes(resource_metrics.resource)["service.name"] == service
    metrics = {m.name: m for sm in resource_metrics.scope_metrics for m in sm.metrics}
    counter = metrics["http.server.requests"].sum
    assert counter.is_monotonic
    by_route = {p.attributes[0].value.string_value: p.as_int for p in counter.data_points}
    assert by_route == {"/cart": 3, "/pay": 2}
    (histogram_point,) = metrics["http.server.duration"].histogram.data_points
    assert (histogram_point.count, histogram_point.sum) == (3, 270.0)


def test_sdk_logs_arrive(receiver: ReceiverHarness) -> None:
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor

    service = f"sdk-logs-{uuid.uuid4().hex[:6]}"
    provider = LoggerProvider(resource=_resource(service))
    provider.add_log_record_processor(
        SimpleLogRecordProcessor(OTLPLogExporter(endpoint=f"{receiver.url}/v1/logs", timeout=10))
    )
    handler = LoggingHandler(level=logging.INFO, logger_provider=provider)
    log = logging.getLogger(f"worldline.tests.{service}")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    try:
        log.warning("payment for order %s failed", "o-17")
    finally:
        log.removeHandler(handler)
        provider.shutdown()

    (request,) = _decoded(receiver, "otlp_logs", LOGS.message_type)
    (resource_logs,) = request.resource_logs
    assert _resource_attributes(resource_logs.resource)["service.name"] == service
    (record,) = [r for sl in resource_logs.scope_logs for r in sl.log_records]
    assert record.body.string_value == "payment for order o-17 failed"
    assert record.severity_text == "WARN" or record.severity_text == "WARNING"
    assert record.severity_number == 13
