"""Event factories for tests and examples: small, deterministic OTLP export requests.

Not a simulator (that is ``jobs.simulator``): just enough varied, valid telemetry to drive the
ingest stages in tests, seeded so every run makes the same bytes.
"""

from __future__ import annotations

import random
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

SERVICES = ("frontend", "checkout", "cart", "payment", "inventory")
BASE_NS = 1_763_647_380_000_000_000
LOG_LINES = (
    ("INFO", 9, "request {rid} served in {ms} ms"),
    ("INFO", 9, "user {user} added item {item} to cart"),
    ("WARN", 13, "slow call to {peer} took {ms} ms"),
    ("ERROR", 17, "payment call failed after {n} retries: timeout after {ms} ms"),
)


def kv(key: str, value: Any) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=str(value)))


def span_request(seed: int, traces: int = 5, start_ns: int = BASE_NS) -> ExportTraceServiceRequest:
    """Traces of a client/server pair per hop plus a database client span, one resource each."""
    rng = random.Random(seed)
    req = ExportTraceServiceRequest()
    by_service: dict[str, Any] = {}

    def scope_for(service: str) -> Any:
        if service not in by_service:
            rs = req.resource_spans.add()
            rs.resource.attributes.extend(
                [
                    kv("service.name", service),
                    kv("service.version", "1.0.0"),
                    kv("host.name", f"node-{len(service) % 3}"),
                ]
            )
            by_service[service] = rs.scope_spans.add()
        return by_service[service]

    for _ in range(traces):
        trace_id = rng.randbytes(16)
        t = start_ns + rng.randrange(0, 60_000_000_000)
        caller, callee = rng.sample(SERVICES, 2)
        root, client, server, db = (rng.randbytes(8) for _ in range(4))
        duration = rng.randrange(1_000_000, 50_000_000)
        s = scope_for(caller).spans.add(
            trace_id=trace_id,
            span_id=root,
            name="GET /",
            kind=2,
            start_time_unix_nano=t,
            end_time_unix_nano=t + duration,
        )
        s.attributes.extend(
            [
                kv("http.request.method", "GET"),
                kv("http.route", "/"),
                kv("http.response.status_code", 200),
            ]
        )
        s = scope_for(caller).spans.add(
            trace_id=trace_id,
            span_id=client,
            parent_span_id=root,
            name=f"POST /{callee}",
            kind=3,
            start_time_unix_nano=t + 100_000,
            end_time_unix_nano=t + duration - 100_000,
        )
        s.attributes.extend([kv("http.request.method", "POST"), kv("server.address", callee)])
        s = scope_for(callee).spans.add(
            trace_id=trace_id,
            span_id=server,
            parent_span_id=client,
            name=f"POST /{callee}",
            kind=2,
            start_time_unix_nano=t + 200_000,
            end_time_unix_nano=t + duration - 200_000,
        )
        if rng.random() < 0.2:
            s.status.code = 2
            s.status.message = "internal error"
        s = scope_for(callee).spans.add(
            trace_id=trace_id,
            span_id=db,
            parent_span_id=server,
            name="SELECT items",
            kind=3,
            start_time_unix_nano=t + 300_000,
            end_time_unix_nano=t + 300_000 + rng.randrange(100_000, 5_000_000),
        )
        s.attributes.extend(
            [
                kv("db.system", "postgresql"),
                kv("db.name", f"{callee}-db"),
                kv("custom.tag", rng.randrange(9)),
            ]
        )
    return req


def log_request(seed: int, lines: int = 20, start_ns: int = BASE_NS) -> ExportLogsServiceRequest:
    rng = random.Random(seed)
    req = ExportLogsServiceRequest()
    for service in SERVICES[:3]:
        rl = req.resource_logs.add()
        rl.resource.attributes.append(kv("service.name", service))
        sl = rl.scope_logs.add()
        for _ in range(lines // 3 + 1):
            level, number, pattern = rng.choice(LOG_LINES)
            body = pattern.format(
                rid=rng.randrange(10**6),
                ms=rng.randrange(1, 3000),
                user=f"u{rng.randrange(1000)}",
                item=rng.randrange(100),
                peer=rng.choice(SERVICES),
                n=rng.randrange(1, 5),
            )
            rec = sl.log_records.add(
                time_unix_nano=start_ns + rng.randrange(0, 60_000_000_000),
                severity_number=number,
                severity_text=level,
                trace_id=rng.randbytes(16),
                span_id=rng.randbytes(8),
            )
            rec.body.string_value = body
    return req


def metric_request(
    seed: int, points: int = 4, start_ns: int = BASE_NS
) -> ExportMetricsServiceRequest:
    rng = random.Random(seed)
    req = ExportMetricsServiceRequest()
    for service in SERVICES[:3]:
        rm = req.resource_metrics.add()
        rm.resource.attributes.extend([kv("service.name", service), kv("host.name", "node-1")])
        sm = rm.scope_metrics.add()
        cpu = sm.metrics.add(name="process.cpu.utilization", unit="1")
        total = sm.metrics.add(name="http.server.request.count", unit="{request}")
        total.sum.aggregation_temporality = 2
        total.sum.is_monotonic = True
        hist = sm.metrics.add(name="http.server.request.duration", unit="s")
        hist.histogram.aggregation_temporality = 2
        count = 0
        for i in range(points):
            t = start_ns + i * 15_000_000_000
            cpu.gauge.data_points.add(time_unix_nano=t, as_double=rng.random())
            count += rng.randrange(10, 100)
            dp = total.sum.data_points.add(
                time_unix_nano=t, start_time_unix_nano=start_ns, as_int=count
            )
            dp.attributes.append(kv("http.route", "/"))
            buckets = [rng.randrange(10) for _ in range(4)]
            hist.histogram.data_points.add(
                time_unix_nano=t,
                start_time_unix_nano=start_ns,
                count=sum(buckets),
                sum=rng.random() * 10,
                bucket_counts=buckets,
                explicit_bounds=[0.01, 0.1, 1.0],
            )
    return req
