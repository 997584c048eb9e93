"""OTLP payloads: the fast span encoder equals the protobuf reference; everything decodes."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from google.protobuf.message import Message
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from jobs.simulator.engine import SpanBatch
from jobs.simulator.simulation import RunConfig, Simulation
from jobs.simulator.telemetry import MAX_RECORD_BYTES, encode_spans_reference
from pipeline import otlp, topics
from tests.simulator.simulated_runs import START_S, RunSummary, run_summary

TYPES = {
    "otlp_spans": topics.OTLP_TRACES,
    "otlp_metrics": topics.OTLP_METRICS,
    "otlp_logs": topics.OTLP_LOGS,
}


def attributes(kvs: Iterable[KeyValue]) -> dict[str, object]:
    out: dict[str, object] = {}
    for kv in kvs:
        which = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, which) if which else None
    return out


def decode(topic: str, value: bytes) -> Message:
    return otlp.from_proto(value, TYPES[topic])


def test_fast_span_encoder_equals_protobuf_reference() -> None:
    sim = Simulation(RunConfig(start_s=START_S, seed=3, services=12, warmup_s=20.0, duration_s=5.0))
    (result,) = list(sim.slices())[-1:]
    batch = result.spans.take(np.arange(min(len(result.spans), 1500)))
    assert len(batch) > 500
    fast = sim.span_encoder.encode(batch, sim.versions)
    slow = encode_spans_reference(sim.span_encoder, batch, sim.versions)
    assert [s for s, _ in fast] == [s for s, _ in slow]
    assert [v for _, v in fast] == [v for _, v in slow]


def test_large_batches_split_below_the_record_limit() -> None:
    sim = Simulation(
        RunConfig(
            start_s=START_S, seed=3, services=12, warmup_s=5.0, duration_s=0.0, peak_rate=3000.0
        )
    )
    (result,) = list(sim.slices())
    records = sim.span_encoder.encode(result.spans, sim.versions)
    assert max(len(v) for _, v in records) <= MAX_RECORD_BYTES < 1024 * 1024
    spans = 0
    for _, value in records:
        request = decode("otlp_spans", value)
        spans += sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
    assert spans == len(result.spans)


def test_every_payload_decodes_and_round_trips(normal_run: RunSummary) -> None:
    seen = set()
    for record in normal_run.records:
        if record.topic in TYPES:
            message = decode(record.topic, record.value)
            assert message.SerializeToString() == record.value
            assert message.ByteSize() < 1024 * 1024
            seen.add(record.topic)
            assert record.key is None
    assert seen == set(TYPES)


def test_spans_carry_semantic_conventions_and_hidden_dependencies(normal_run: RunSummary) -> None:
    kinds, client_attrs, versions = set(), set(), set()
    parents: dict[bytes, int] = {}
    for record in normal_run.records[: len(normal_run.records) // 3]:
        if record.topic != "otlp_spans":
            continue
        request = decode(record.topic, record.value)
        for rs in request.resource_spans:
            resource = attributes(rs.resource.attributes)
            assert {"service.name", "service.version", "k8s.pod.name", "host.name"} <= set(resource)
            versions.add((resource["service.name"], resource["service.version"]))
            for ss in rs.scope_spans:
                for span in ss.spans:
                    assert len(span.trace_id) == 16 and len(span.span_id) == 8
                    assert span.end_time_unix_nano >= span.start_time_unix_nano >= START_S * 1e9
                    kinds.add(span.kind)
                    attrs = attributes(span.attributes)
                    if span.kind in (Span.SPAN_KIND_CLIENT, Span.SPAN_KIND_PRODUCER):
                        client_attrs |= {
                            k
                            for k in (
                                "db.system",
                                "peer.service",
                                "messaging.system",
                                "server.address",
                            )
                            if k in attrs
                        }
                    if span.status.code == span.status.STATUS_CODE_ERROR:
                        assert "error.type" in attrs
                    parents[span.span_id] = span.kind
    assert {
        Span.SPAN_KIND_SERVER,
        Span.SPAN_KIND_CLIENT,
        Span.SPAN_KIND_PRODUCER,
        Span.SPAN_KIND_CONSUMER,
    } <= kinds
    assert client_attrs == {"db.system", "peer.service", "messaging.system", "server.address"}
    assert len(parents) > 1000


def test_metrics_have_expected_names_types_and_resources(normal_run: RunSummary) -> None:
    names: dict[str, str] = {}
    histogram_counts: dict[tuple[str, str, str], list[int]] = {}
    for record in normal_run.records:
        if record.topic != "otlp_metrics":
            continue
        request = decode(record.topic, record.value)
        for rm in request.resource_metrics:
            resource = attributes(rm.resource.attributes)
            assert "host.name" in resource
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    names[metric.name] = metric.WhichOneof("data")
                    if metric.name == "http.server.request.duration":
                        for dp in metric.histogram.data_points:
                            assert sum(dp.bucket_counts) == dp.count
                            assert len(dp.bucket_counts) == len(dp.explicit_bounds) + 1
                            key = (
                                str(resource["k8s.pod.name"]),
                                str(attributes(dp.attributes)["http.route"]),
                                str(attributes(dp.attributes)["http.response.status_code"]),
                            )
                            histogram_counts.setdefault(key, []).append(dp.count)
    assert names["http.server.request.duration"] == "histogram"
    assert names["process.cpu.utilization"] == "gauge"
    assert names["process.memory.usage"] == "gauge"
    assert names["db.client.connections.usage"] == "gauge"
    assert names["k8s.container.restarts"] == "sum"
    assert names["system.cpu.utilization"] == "gauge"
    assert names["messaging.kafka.consumer.lag"] == "gauge"
    # a runtime's series: a rare counter, an up-down thread count, a queue empty nearly always
    assert names["dotnet.gc.collections"] == "sum"
    assert names["dotnet.thread_pool.thread.count"] == "sum"
    assert names["dotnet.thread_pool.queue.length"] == "sum"
    for client_side in (
        "http.client.request.duration",
        "db.client.operation.duration",
        "messaging.client.operation.duration",
        "messaging.process.duration",
    ):
        assert names[client_side] == "histogram"
    scrapes = sorted({r.timestamp_ms for r in normal_run.records if r.topic == "otlp_metrics"})
    assert set(np.diff(scrapes).tolist()) == {15_000}, "one scrape every 15 s"
    # cumulative: counts never go down between scrapes of the same series
    assert all(np.all(np.diff(v) >= 0) for v in histogram_counts.values())


def log_bodies(run: RunSummary) -> dict[str, int]:
    """Log body -> count, checking trace context on request logs."""
    counts: dict[str, int] = {}
    for record in run.records:
        if record.topic != "otlp_logs":
            continue
        for rl in decode(record.topic, record.value).resource_logs:
            for sl in rl.scope_logs:
                for log in sl.log_records:
                    assert log.body.string_value and log.severity_text
                    if log.trace_id:
                        assert len(log.trace_id) == 16 and len(log.span_id) == 8
                    counts[log.body.string_value] = counts.get(log.body.string_value, 0) + 1
    return counts


def test_logs_carry_trace_context_and_new_error_templates_appear_under_faults(
    normal_run: RunSummary,
) -> None:
    faulty = run_summary("endpoint-errors", 7, 30.0)
    (fault,) = faulty.sim.faults
    normal = log_bodies(normal_run)
    errors = log_bodies(faulty)
    assert sum(normal.values()) > 100
    new = [body for body in errors if "IndexError: list index out of range" in body]
    assert new and not [body for body in normal if "IndexError" in body]
    assert sum(errors[b] for b in new) > 20
    assert fault.active(faulty.sim.config.onset_s)


def test_empty_batch_encodes_to_nothing() -> None:
    sim = Simulation(RunConfig(start_s=START_S, seed=1, services=10, warmup_s=5.0, duration_s=0.0))
    assert sim.span_encoder.encode(SpanBatch.empty(), sim.versions) == []


def test_database_fault_is_visible_in_client_metrics_alone(database_run: RunSummary) -> None:
    """A metrics-only view (cumulative histograms, no traces) also shows the slow database."""
    (fault,) = database_run.sim.faults
    address = database_run.sim.topology.dependencies[fault.database].address  # type: ignore[attr-defined]
    onset_ms = database_run.sim.config.onset_s * 1000
    scrapes: dict[int, list[float]] = {}
    for record in database_run.records:
        if record.topic != "otlp_metrics":
            continue
        for rm in decode(record.topic, record.value).resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name != "db.client.operation.duration":
                        continue
                    for dp in metric.histogram.data_points:
                        if attributes(dp.attributes).get("server.address") == address:
                            at = scrapes.setdefault(record.timestamp_ms, [0.0, 0])
                            at[0] += dp.sum
                            at[1] += dp.count
    totals: dict[bool, list[tuple[float, int]]] = {False: [], True: []}
    for ts in sorted(scrapes):
        totals[ts > onset_ms].append((scrapes[ts][0], int(scrapes[ts][1])))
    # cumulative series: the mean over a window is the difference of sums over the difference of counts
    (s0, c0), (s1, c1) = totals[False][0], totals[False][-1]
    (s2, c2), (s3, c3) = totals[True][0], totals[True][-1]
    before_ms = 1000 * (s1 - s0) / max(c1 - c0, 1)
    after_ms = 1000 * (s3 - s2) / max(c3 - c2, 1)
    assert after_ms > 3 * before_ms


def test_a_scrape_counts_the_requests_ended_by_its_instant() -> None:
    """At 1 s scrapes (slices of 10 s), a request counter advances every second: each scrape
    counts the server spans that ended by then, not those ending later in the slice."""
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    config = RunConfig(
        start_s=START_S,
        seed=5,
        services=10,
        warmup_s=60.0,
        duration_s=0.0,
        slice_s=10.0,
        scrape_interval_s=1.0,
        peak_rate=20.0,
    )
    ends: list[int] = []
    counts: dict[int, int] = {}
    for record in Simulation(config).records():
        if record.topic == "otlp_spans":
            traces = ExportTraceServiceRequest.FromString(record.value)
            for rs in traces.resource_spans:
                if attributes(rs.resource.attributes).get("service.name") != "edge-gateway":
                    continue
                ends += [
                    s.end_time_unix_nano
                    for ss in rs.scope_spans
                    for s in ss.spans
                    if s.kind == Span.SPAN_KIND_SERVER
                ]
        elif record.topic == "otlp_metrics":
            metrics = ExportMetricsServiceRequest.FromString(record.value)
            for rm in metrics.resource_metrics:
                if attributes(rm.resource.attributes).get("service.name") != "edge-gateway":
                    continue
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        if m.name == "http.server.request.duration":
                            for dp in m.histogram.data_points:
                                t = dp.time_unix_nano
                                counts[t] = counts.get(t, 0) + dp.count
    assert len(counts) >= 50 and ends
    ended = np.sort(np.array(ends))
    for t, count in counts.items():
        assert count == int(np.searchsorted(ended, t, side="right")), t
    # the counter moves between slice boundaries, as a live one does
    within = [t for t, c in counts.items() if (t // 10**9) % 10 and c != counts.get(t - 10**9)]
    assert len(within) >= 20
