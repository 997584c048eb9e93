"""The simulator's realism modes: what each deployment kind delivers of the same incident."""

from __future__ import annotations

import pytest

from jobs.causal.alerts import SymptomMapper, parse_webhook
from jobs.evaluate.simulator import (
    COARSE_SCRAPE_S,
    TRACE_SAMPLE_EVERY,
    _alert_payload,
    realistic,
    sampled_spans,
    unobserved,
)
from jobs.simulator.simulation import Record

T0_MS = 1_795_000_000_000 - 1_795_000_000_000 % 3_600_000  # on the hour


def _records() -> list[Record]:
    out = []
    for second in range(0, 900, 15):
        t = T0_MS + second * 1000
        out.append(Record("otlp_metrics", None, b"m", t))
        if second % 30 == 0:
            out.append(Record("otlp_spans", None, b"s", t))
            out.append(Record("otlp_logs", None, b"l", t))
    out.append(Record("alerts", b"k", b"{}", T0_MS + 600_000))
    return out


def _topics(records: list[Record]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for r in records:
        out.setdefault(r.topic, []).append((r.timestamp_ms - T0_MS) // 1000)
    return out


def test_full_delivers_everything() -> None:
    records = _records()
    assert realistic(records, "full") == records


def test_metrics_only_drops_traces_and_logs() -> None:
    topics = _topics(realistic(_records(), "metrics-only"))
    assert set(topics) == {"otlp_metrics", "alerts"}
    assert len(topics["otlp_metrics"]) == 60


def test_trace_windows_keep_one_minute_in_three() -> None:
    topics = _topics(realistic(_records(), "trace-windows"))
    minutes = sorted({s // 60 for s in topics["otlp_spans"]})
    assert minutes == [0, 3, 6, 9, 12]
    assert len(topics["otlp_metrics"]) == 60 and len(topics["otlp_logs"]) == 30


@pytest.mark.parametrize(("mode", "kept"), [("metrics-60s", 15), ("metrics-300s", 3)])
def test_coarse_metrics_keep_one_scrape_per_period(mode: str, kept: int) -> None:
    topics = _topics(realistic(_records(), mode))
    every = COARSE_SCRAPE_S[mode]
    assert topics["otlp_metrics"] == [int(k * every) for k in range(kept)]
    assert len(topics["otlp_spans"]) == 30


def _spans(service: str, traces: range) -> bytes:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    from pipeline.testing import kv

    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.append(kv("service.name", service))
    scope = rs.scope_spans.add()
    for t in traces:
        scope.spans.add(trace_id=t.to_bytes(16, "big"), span_id=t.to_bytes(8, "big"), name="op")
    return request.SerializeToString()


def _trace_ids(value: bytes) -> set[int]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    request = ExportTraceServiceRequest()
    request.ParseFromString(value)
    return {
        int.from_bytes(span.trace_id, "big")
        for rs in request.resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    }


def test_sampled_traces_keep_one_trace_in_ten_whole() -> None:
    # two services export spans of the same 100 traces: both keep the same tenth
    front, back = _spans("front", range(100)), _spans("back", range(100))
    records = [Record("otlp_spans", None, front, T0_MS), Record("otlp_spans", None, back, T0_MS)]
    records.append(Record("otlp_metrics", None, b"m", T0_MS))
    sampled = realistic(records, "trace-sampled")
    kept = [_trace_ids(r.value) for r in sampled if r.topic == "otlp_spans"]
    assert kept[0] == kept[1] == {t for t in range(100) if t % TRACE_SAMPLE_EVERY == 0}
    assert sampled[-1] == records[-1]
    assert _trace_ids(sampled_spans(_spans("front", range(1, 10)))) == set()


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown realism"):
        realistic(_records(), "metrics-only-please")


def test_an_unobserved_alert_names_its_service_but_no_signal() -> None:
    payload = _alert_payload("checkout", T0_MS / 1000)
    known = {"service:checkout"}
    signals = {"service:checkout": ["span.latency_p95_ms", "span.error_ratio"]}
    mapper = SymptomMapper(known, lambda e: signals.get(e, []))
    [named] = parse_webhook(payload)
    assert mapper.map(named).signal == "span.latency_p95_ms"
    [probe] = parse_webhook(unobserved(payload))
    symptom = mapper.map(probe)
    assert symptom.entity == "service:checkout" and symptom.signal is None
    assert probe.starts_at_s == named.starts_at_s


def test_fine_metrics_are_simulated_at_their_scrape_interval() -> None:
    from jobs.evaluate.simulator import SuiteConfig

    assert SuiteConfig(realism="metrics-1s").run("normal", 1).scrape_interval_s == 1.0
    assert SuiteConfig(realism="full").run("normal", 1).scrape_interval_s == 15.0
    records = _records()
    assert realistic(records, "metrics-1s") == records


def _metrics_record(t_ms: int, resources: list[tuple[dict[str, str], str, float]]) -> Record:
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    request = ExportMetricsServiceRequest()
    for attrs, name, value in resources:
        rm = request.resource_metrics.add()
        rm.resource.attributes.extend(
            KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in attrs.items()
        )
        metric = rm.scope_metrics.add().metrics.add(name=name)
        metric.gauge.data_points.add(time_unix_nano=t_ms * 1_000_000, as_double=value)
    return Record("otlp_metrics", None, request.SerializeToString(), t_ms)


def test_node_metrics_on_pods_carry_each_nodes_metrics_in_its_pods() -> None:
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )

    pod = {"service.name": "cart", "k8s.pod.name": "cart-1", "k8s.node.name": "n1"}
    other = {"service.name": "ads", "k8s.pod.name": "ads-1", "k8s.node.name": "n2"}
    records = []
    for k, t in enumerate((T0_MS, T0_MS + 15_000)):
        records.append(_metrics_record(t, [(pod, "cpu", 0.1), (other, "cpu", 0.2)]))
        node = [
            ({"host.name": n, "k8s.node.name": n}, "system.cpu", 0.5 + k + i)
            for i, n in enumerate(("n1", "n2"))
        ]
        records.append(_metrics_record(t, node))
    out = realistic(records, "node-metrics-on-pods")
    assert len(out) == 2  # the nodes' own exports are gone
    seen = []
    for r in out:
        request = ExportMetricsServiceRequest()
        request.ParseFromString(r.value)
        for rm in request.resource_metrics:
            service = {kv.key: kv.value.string_value for kv in rm.resource.attributes}
            for m in rm.scope_metrics[0].metrics:
                seen.append((service["service.name"], m.name, m.gauge.data_points[0].as_double))
    assert seen == [
        ("cart", "cpu", 0.1),
        ("cart", "system.cpu", 0.5),
        ("ads", "cpu", 0.2),
        ("ads", "system.cpu", 1.5),
        ("cart", "cpu", 0.1),
        ("cart", "system.cpu", 1.5),
        ("ads", "cpu", 0.2),
        ("ads", "system.cpu", 2.5),
    ]


def test_pod_telemetry_names_pods_as_kubernetes_does_and_no_service() -> None:
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from pipeline.ingest.resource import service_of

    pod = {
        "service.name": "cart",
        "service.instance.id": "cart-1",
        "k8s.deployment.name": "cart",
        "k8s.pod.name": "cart-1",
        "k8s.node.name": "n1",
    }
    node = {"host.name": "n1", "k8s.node.name": "n1"}
    metrics = _metrics_record(T0_MS, [(pod, "cpu", 0.1), (node, "system.cpu", 0.5)])
    spans = ExportTraceServiceRequest()
    spans.resource_spans.add().resource.CopyFrom(
        ExportMetricsServiceRequest.FromString(metrics.value).resource_metrics[0].resource
    )
    records = [metrics, Record("otlp_spans", None, spans.SerializeToString(), T0_MS)]
    out = realistic(records, "pod-telemetry")

    def attrs(resource: object) -> dict[str, str]:
        return {kv.key: kv.value.string_value for kv in resource.attributes}  # type: ignore[attr-defined]

    pod_metrics, node_metrics = (
        attrs(rm.resource)
        for rm in ExportMetricsServiceRequest.FromString(out[0].value).resource_metrics
    )
    (pod_spans,) = (
        attrs(rs.resource)
        for rs in ExportTraceServiceRequest.FromString(out[1].value).resource_spans
    )
    assert node_metrics == node  # a node's own stay as they were
    assert set(pod_metrics) == {"k8s.pod.name", "k8s.node.name"}
    name = pod_metrics["k8s.pod.name"]
    assert (
        name != "cart-1" and name == pod_spans["k8s.pod.name"] == pod_spans["service.instance.id"]
    )
    assert pod_spans["service.name"] == "cart"  # the SDK still names its service
    # what ingest reads: the pod's Deployment, the service its traces name
    assert service_of(pod_metrics) == "cart"


def test_bare_spans_keep_names_kinds_parents_and_times_only() -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

    def export(service: str, spans: list[tuple[bytes, bytes, str, int]]) -> Record:
        request = ExportTraceServiceRequest()
        rs = request.resource_spans.add()
        attr = rs.resource.attributes.add()
        attr.key, attr.value.string_value = "service.name", service
        for span_id, parent, name, kind in spans:
            span = rs.scope_spans.add().spans.add()
            span.trace_id, span.span_id, span.parent_span_id = b"t" * 16, span_id, parent
            span.name, span.kind, span.start_time_unix_nano = name, kind, T0_MS * 10**6
            span.status.code = Status.STATUS_CODE_ERROR
            peer = span.attributes.add()
            peer.key, peer.value.string_value = "server.address", "somewhere"
        return Record("otlp_spans", None, request.SerializeToString(), T0_MS)

    client, server, internal = Span.SPAN_KIND_CLIENT, Span.SPAN_KIND_SERVER, Span.SPAN_KIND_INTERNAL
    records = [
        # the gateway calls orders (its child is an orders span) and a database (no child)
        export("gateway", [(b"g" * 8, b"", "/*", server), (b"c" * 8, b"g" * 8, "GET", client)]),
        export("gateway", [(b"d" * 8, b"g" * 8, "SELECT orders", client)]),
        export("orders", [(b"o" * 8, b"c" * 8, "/api/orders", server)]),
        Record("otlp_metrics", None, b"kept as it is", T0_MS),
    ]
    out = realistic(records, "bare-spans")
    assert out[3] == records[3]
    spans = [
        (span.name, span.kind, span.parent_span_id, span.start_time_unix_nano)
        for r in out[:3]
        for rs in ExportTraceServiceRequest.FromString(r.value).resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
        if not span.attributes and span.status.code == Status.STATUS_CODE_UNSET
    ]
    at = T0_MS * 10**6
    assert spans == [
        ("/*", server, b"", at),
        ("GET", client, b"g" * 8, at),
        ("SELECT orders", internal, b"g" * 8, at),  # no service answered it
        ("/api/orders", server, b"c" * 8, at),
    ]
