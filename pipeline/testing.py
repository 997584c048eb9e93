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


# ---------------------------------------------------------------- realistic workloads
# Shaped like production telemetry, for the storage benchmark: the factories above are
# random-valued, real traces and scrapes are far more regular.

_TRACE_SERVICES: dict[str, tuple[str, ...]] = {
    "frontend": ("GET /", "GET /product/{id}", "POST /cart", "GET /cart", "POST /checkout"),
    "cart": ("GetCart", "AddItem", "EmptyCart"),
    "checkout": ("PlaceOrder",),
    "payment": ("Charge",),
    "currency": ("Convert", "GetSupportedCurrencies"),
    "shipping": ("GetQuote", "ShipOrder"),
    "catalog": ("ListProducts", "GetProduct", "SearchProducts"),
    "recommendation": ("ListRecommendations",),
    "ad": ("GetAds",),
    "email": ("SendOrderConfirmation",),
    "quote": ("calculate-quote",),
    "fraud": ("CheckOrder",),
}
_DATABASES = {
    "cart": ("redis", "cart"),
    "catalog": ("postgresql", "catalog"),
    "payment": ("postgresql", "payments"),
}


def trace_requests(
    requests: int, traces_per_request: int = 20, seed: int = 0, start_ns: int = BASE_NS
) -> list[ExportTraceServiceRequest]:
    """Export requests of whole traces with realistic fan-out, as a Collector batch would send.

    10-30 spans per trace across a dozen services with a few pods each; client/server pairs
    for every remote call (http for the frontend, grpc behind it, a database client span
    where the service has one); child spans start after their parent and end within it;
    durations log-normal; 2 % errors; trace and span ids random (they are, in real traces).
    """
    rng = random.Random(seed)
    services = list(_TRACE_SERVICES)
    pods = {
        s: [f"{s}-{rng.randbytes(3).hex()}-{rng.randbytes(3).hex()[:5]}" for _ in range(3)]
        for s in services
    }
    out: list[ExportTraceServiceRequest] = []
    t = start_ns
    for _ in range(requests):
        req = ExportTraceServiceRequest()
        scopes: dict[tuple[str, str], Any] = {}

        def scope(service: str, pod: str, req: Any = req, scopes: dict[Any, Any] = scopes) -> Any:
            key = (service, pod)
            if key not in scopes:
                rs = req.resource_spans.add()
                rs.resource.attributes.extend(
                    [
                        kv("service.name", service),
                        kv("service.version", "2.3.1"),
                        kv("k8s.pod.name", pod),
                        kv("host.name", f"node-{hash(pod) % 4}"),
                        kv("telemetry.sdk.language", "python" if len(service) % 2 else "go"),
                        kv("telemetry.sdk.name", "opentelemetry"),
                    ]
                )
                ss = rs.scope_spans.add()
                ss.scope.name = "opentelemetry.instrumentation"
                scopes[key] = ss
            return scopes[key]

        for _ in range(traces_per_request):
            t += int(rng.expovariate(1 / 50_000_000))  # ~20 traces/s
            trace_id = rng.randbytes(16)
            target = rng.randint(10, 30)
            spans: list[tuple[Any, ...]] = []  # (service, pod, span_id, start, end)

            def add(
                service: str,
                parent: bytes,
                start: int,
                budget: int,
                depth: int,
                _trace_id: bytes = trace_id,
                _target: int = target,
                _spans: list[Any] = spans,
            ) -> None:
                pod = rng.choice(pods[service])
                span_id = rng.randbytes(8)
                duration = min(budget, max(20_000, int(rng.lognormvariate(17.0 - depth, 0.8))))
                name = rng.choice(_TRACE_SERVICES[service])
                error = rng.random() < 0.02
                s = scope(service, pod).spans.add(
                    trace_id=_trace_id,
                    span_id=span_id,
                    parent_span_id=parent,
                    name=name,
                    kind=2,
                    start_time_unix_nano=start,
                    end_time_unix_nano=start + duration,
                )
                if service == "frontend":
                    s.attributes.extend(
                        [
                            kv("http.request.method", "POST" if name.startswith("POST") else "GET"),
                            kv("http.route", name.split(" ", 1)[1]),
                            kv("http.response.status_code", 500 if error else 200),
                            kv(
                                "url.path",
                                name.split(" ", 1)[1].replace("{id}", str(rng.randrange(10_000))),
                            ),
                            kv(
                                "user_agent.original",
                                rng.choice(
                                    (
                                        "Mozilla/5.0 (X11; Linux x86_64)",
                                        "curl/8.5.0",
                                        "python-requests/2.31",
                                    )
                                ),
                            ),
                        ]
                    )
                else:
                    s.attributes.extend(
                        [
                            kv("rpc.system", "grpc"),
                            kv("rpc.service", f"oteldemo.{service.title()}Service"),
                            kv("rpc.method", name),
                            kv("rpc.grpc.status_code", 2 if error else 0),
                        ]
                    )
                if error:
                    s.status.code = 2
                    s.status.message = "upstream failed"
                _spans.append(span_id)
                cursor = start + duration // 20
                if service in _DATABASES and len(_spans) < _target:
                    system, db = _DATABASES[service]
                    d = s.start_time_unix_nano
                    dur = max(10_000, int(rng.lognormvariate(13.0, 0.8)))
                    c = scope(service, pod).spans.add(
                        trace_id=_trace_id,
                        span_id=rng.randbytes(8),
                        parent_span_id=span_id,
                        name=f"SELECT {db}" if system == "postgresql" else "HGET",
                        kind=3,
                        start_time_unix_nano=max(d, cursor),
                        end_time_unix_nano=max(d, cursor) + dur,
                    )
                    c.attributes.extend(
                        [
                            kv("db.system", system),
                            kv("db.name", db),
                            kv("server.address", f"{db}-db"),
                            kv("server.port", 5432 if system == "postgresql" else 6379),
                        ]
                    )
                    _spans.append(c.span_id)
                    cursor += dur
                while len(_spans) < _target and depth < 4 and rng.random() < 0.9:
                    callee = rng.choice(services[1:])
                    client_id = rng.randbytes(8)
                    remaining = start + duration - cursor
                    if remaining < 100_000:
                        break
                    call = min(remaining, max(50_000, int(rng.lognormvariate(15.0 - depth, 0.8))))
                    c = scope(service, pod).spans.add(
                        trace_id=_trace_id,
                        span_id=client_id,
                        parent_span_id=span_id,
                        name=f"oteldemo.{callee.title()}Service/{rng.choice(_TRACE_SERVICES[callee])}",
                        kind=3,
                        start_time_unix_nano=cursor,
                        end_time_unix_nano=cursor + call,
                    )
                    c.attributes.extend(
                        [
                            kv("rpc.system", "grpc"),
                            kv("server.address", callee),
                            kv("server.port", 8080),
                        ]
                    )
                    _spans.append(client_id)
                    add(
                        callee,
                        client_id,
                        cursor + rng.randrange(20_000, 200_000),
                        max(20_000, call - 200_000),
                        depth + 1,
                    )
                    cursor += call + rng.randrange(5_000, 50_000)

            add("frontend", b"", t, 2_000_000_000, 0)
        out.append(req)
    return out


def scrape_requests(
    scrapes: int = 240, targets: int = 20, seed: int = 0, start_ns: int = BASE_NS
) -> tuple[list[ExportMetricsServiceRequest], list[list[tuple[int, float]]]]:
    """Regular Prometheus-style scrapes as a Collector would export them: one request per 15 s.

    Per target 100 sample series: 40 counters (Poisson increments, rates log-uniform from
    almost idle to busy), 34 gauges (a quarter each: integer-valued random walks like memory
    bytes, values with 3 decimals, full-precision floats drifting smoothly with small noise,
    and near-constant limits/sizes/info series) and 2 histograms of 11 cumulative buckets plus sum and count. Each target is
    scraped on the 15 s grid at its own fixed offset (ms precision, like Prometheus).
    Returns the requests and every sample series as (unix ms, value) lists for references.
    """
    rng = random.Random(seed)
    interval_ms = 15_000
    bounds = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]
    state: list[dict[str, Any]] = []
    for target in range(targets):
        service = f"svc-{target // 2}"
        instance = f"10.0.{target}.{rng.randrange(2, 250)}:9100"
        counters = []
        for i in range(40):
            counters.append(
                [
                    f"requests_total_{i // 8}",
                    {"code": str(200 + (i % 8))},
                    rng.choice((0.0, 0.0, float(rng.randrange(10**6)))),
                    10 ** rng.uniform(-2, 2.5),
                ]
            )
        gauges = []
        for i in range(34):
            style = i % 4
            level = (
                float(rng.randrange(1, 10**6))
                if style == 3
                else rng.uniform(1e6, 1e9)
                if style == 0
                else rng.uniform(0, 100)
            )
            gauges.append(
                [f"gauge_{i}", {"style": ("int", "dec3", "float", "const")[style]}, level, style]
            )
        hists = []
        for i in range(2):
            hists.append(
                [
                    f"request_duration_seconds_{i}",
                    {"handler": f"/api/{i}"},
                    [0] * 11,
                    0.0,
                    10 ** rng.uniform(0, 2),
                ]
            )
        state.append(
            {
                "service": service,
                "instance": instance,
                "offset_ms": rng.randrange(interval_ms),
                "counters": counters,
                "gauges": gauges,
                "hists": hists,
            }
        )
    samples: list[list[tuple[int, float]]] = [[] for _ in range(targets * 100)]
    base_ms = start_ns // 1_000_000
    out = []
    for k in range(scrapes):
        req = ExportMetricsServiceRequest()
        for ti, st in enumerate(state):
            ts_ms = base_ms + k * interval_ms + st["offset_ms"]
            ts = ts_ms * 1_000_000
            start = (base_ms + st["offset_ms"]) * 1_000_000
            rm = req.resource_metrics.add()
            rm.resource.attributes.extend(
                [
                    kv("service.name", st["service"]),
                    kv("service.instance.id", st["instance"]),
                    kv("server.address", st["instance"].split(":")[0]),
                    kv("server.port", "9100"),
                    kv("url.scheme", "http"),
                ]
            )
            sm = rm.scope_metrics.add()
            sm.scope.name = "otelcol/prometheusreceiver"
            sample = ti * 100
            by_name: dict[str, Any] = {}
            for c in st["counters"]:
                c[2] += _poisson(rng, c[3])
                m = by_name.get(c[0])
                if m is None:
                    m = by_name[c[0]] = sm.metrics.add(name=c[0])
                    m.sum.aggregation_temporality = 2
                    m.sum.is_monotonic = True
                dp = m.sum.data_points.add(
                    time_unix_nano=ts, start_time_unix_nano=start, as_double=c[2]
                )
                dp.attributes.extend(kv(a, b) for a, b in c[1].items())
                samples[sample].append((ts_ms, c[2]))
                sample += 1
            for g in st["gauges"]:
                style = g[3]
                if style == 3:  # limits, sizes, info and up series: change rarely
                    if rng.random() < 0.01:
                        g[2] = float(rng.randrange(1, 10**6))
                    value = g[2]
                elif style == 0:
                    g[2] = float(max(0, int(g[2] + rng.gauss(0, 2e5))))
                    value = g[2]
                else:
                    g[2] += rng.gauss(0, 0.05)
                    value = round(g[2], 3) if style == 1 else g[2] + rng.gauss(0, 0.01)
                m = sm.metrics.add(name=g[0])
                dp = m.gauge.data_points.add(time_unix_nano=ts, as_double=value)
                dp.attributes.extend(kv(a, b) for a, b in g[1].items())
                samples[sample].append((ts_ms, value))
                sample += 1
            for h in st["hists"]:
                n = _poisson(rng, h[4])
                for _ in range(int(n)):
                    latency = rng.lognormvariate(-3.0, 1.0)
                    h[3] += latency
                    for b, bound in enumerate(bounds):
                        if latency <= bound:
                            h[2][b] += 1
                            break
                    else:
                        h[2][-1] += 1
                m = sm.metrics.add(name=h[0], unit="s")
                m.histogram.aggregation_temporality = 2
                cumulative = 0
                for b in range(11):
                    cumulative += h[2][b]
                    samples[sample + b].append((ts_ms, float(cumulative)))
                samples[sample + 11].append((ts_ms, h[3]))
                samples[sample + 12].append((ts_ms, float(cumulative)))
                sample += 13
                dp = m.histogram.data_points.add(
                    time_unix_nano=ts,
                    start_time_unix_nano=start,
                    count=cumulative,
                    sum=h[3],
                    bucket_counts=h[2],
                    explicit_bounds=bounds,
                )
                dp.attributes.extend(kv(a, b) for a, b in h[1].items())
        out.append(req)
    return out, samples


def _poisson(rng: random.Random, lam: float) -> float:
    """A Poisson draw (Knuth for small rates, normal approximation for large)."""
    if lam > 30:
        return float(max(0, round(rng.gauss(lam, lam**0.5))))
    limit, k, p = pow(2.718281828459045, -lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return float(k)
        k += 1


def fill_store(store: Any, requests_per_topic: int, now: Any) -> None:
    """Seal one segment per OTLP topic holding ``requests_per_topic`` factory requests (seeds
    0..n-1, partition 0), through the ingest core, as a small store for query and read tests."""
    from pipeline.ingest.core import KafkaRecord, SegmentIngestor, codec_for

    makers = (
        ("otlp_spans", span_request),
        ("otlp_logs", log_request),
        ("otlp_metrics", metric_request),
    )
    for topic, make in makers:
        ingestor = SegmentIngestor(store, codec_for(topic, store))
        records = [
            KafkaRecord(topic, 0, i, make(i).SerializeToString()) for i in range(requests_per_topic)
        ]
        ingestor.seal(ingestor.decode(records), now)
