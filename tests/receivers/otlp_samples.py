"""Small OTLP export requests for the receiver tests, built field by field."""

from __future__ import annotations

from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

T0 = 1_700_000_000_000_000_000


def _attributes(target: Any, values: dict[str, str]) -> None:
    for key, value in values.items():
        attribute = target.add(key=key)
        attribute.value.string_value = value


def traces(
    spans: int = 3, service: str = "checkout", attributes: int = 1, pad: str = ""
) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    _attributes(resource_spans.resource.attributes, {"service.name": service})
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = "tests"
    for index in range(spans):
        span = scope_spans.spans.add(
            trace_id=bytes([index % 256] * 16),
            span_id=(index + 1).to_bytes(8, "big"),
            name=f"GET /item/{index}{pad}",
            kind=2,
            start_time_unix_nano=T0 + index,
            end_time_unix_nano=T0 + index + 1000,
        )
        _attributes(span.attributes, {f"attr.{a}": str(a) for a in range(attributes)})
    return request


def metrics(
    points: int = 3, service: str = "checkout", attributes: int = 1, metric_count: int = 1
) -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    resource_metrics = request.resource_metrics.add()
    _attributes(resource_metrics.resource.attributes, {"service.name": service})
    scope_metrics = resource_metrics.scope_metrics.add()
    for metric_index in range(metric_count):
        suffix = f".{metric_index}" if metric_count > 1 else ""
        metric = scope_metrics.metrics.add(name=f"http.server.duration{suffix}", unit="ms")
        for index in range(points):
            point = metric.gauge.data_points.add(time_unix_nano=T0 + index, as_double=index / 2)
            _attributes(point.attributes, {f"attr.{a}": str(a) for a in range(attributes)})
    return request


def logs(
    records: int = 3, service: str = "checkout", attributes: int = 1
) -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    _attributes(resource_logs.resource.attributes, {"service.name": service})
    scope_logs = resource_logs.scope_logs.add()
    for index in range(records):
        record = scope_logs.log_records.add(
            time_unix_nano=T0 + index, severity_number=9, severity_text="INFO"
        )
        record.body.string_value = f"user {index} logged in"
        _attributes(record.attributes, {f"attr.{a}": str(a) for a in range(attributes)})
    return request
