"""The ingest core without Kafka: records in, segments and dead letters out, exactly once."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import orjson
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

import schemas
from pipeline.ingest.core import KafkaRecord, Limits, SegmentIngestor, codec_for, record_order
from pipeline.ingest.logs import MinerStates
from pipeline.ingest.metrics import MetricColumns
from pipeline.segments.audit import row_digests
from pipeline.segments.store import SegmentStore
from pipeline.testing import BASE_NS, kv, log_request, metric_request, span_request

NOW = dt.datetime(2026, 11, 20, 14, 0, tzinfo=dt.UTC)


def _records(
    topic: str, payloads: list[bytes], partition: int = 0, first: int = 0
) -> list[KafkaRecord]:
    return [KafkaRecord(topic, partition, first + i, p) for i, p in enumerate(payloads)]


def _ingest(
    store: SegmentStore, topic: str, records: list[KafkaRecord], limits: Limits | None = None
) -> SegmentIngestor:
    ingestor = SegmentIngestor(store, codec_for(topic, store), limits)
    batch = ingestor.decode(records)
    ingestor.seal(batch, NOW)
    return ingestor


def _rows(store: SegmentStore, signal: str) -> pa.Table:
    return pa.concat_tables([store.read(m) for m in store.manifests(signal)])


def test_spans_in_equal_spans_stored(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path)
    reqs = [span_request(seed) for seed in range(6)]
    ingestor = _ingest(
        store, "otlp_spans", _records("otlp_spans", [r.SerializeToString() for r in reqs])
    )
    produced = sum(len(ss.spans) for r in reqs for rs in r.resource_spans for ss in rs.scope_spans)
    table = _rows(store, "spans")
    assert table.num_rows == produced == ingestor.counters["items_stored"]
    ids = {
        (bytes(t), bytes(s))
        for t, s in zip(table["trace_id"].to_pylist(), table["span_id"].to_pylist(), strict=True)
    }
    expected = {
        (s.trace_id, s.span_id)
        for r in reqs
        for rs in r.resource_spans
        for ss in rs.scope_spans
        for s in ss.spans
    }
    assert ids == expected
    assert set(table["db_system"].drop_null().to_pylist()) == {"postgresql"}
    # attributes not promoted to columns are kept
    assert any("custom.tag" in (a or "") for a in table["attributes"].to_pylist())


def test_otlp_json_records_are_accepted(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path)
    payload = orjson.dumps(schemas.examples("otlp_spans")[0])
    _ingest(store, "otlp_spans", _records("otlp_spans", [payload]))
    table = _rows(store, "spans")
    assert table["trace_id"][0].as_py().hex() == "4bf92f3577b34da6a3ce929d0e0e4736"


def test_a_broker_that_numbers_its_records_anew_is_not_a_redelivery(tmp_path: Path) -> None:
    """After the broker lost its records (a new epoch), offsets 0.. are new data; within one
    epoch they are re-deliveries and skipped."""
    store = SegmentStore(tmp_path / "live")
    first = [span_request(seed).SerializeToString() for seed in range(6)]
    second = [span_request(seed).SerializeToString() for seed in range(100, 104)]
    ingestor = SegmentIngestor(store, codec_for("otlp_spans", store), epoch="aaaa")
    ingestor.seal(ingestor.decode(_records("otlp_spans", first)), NOW)

    restarted = SegmentIngestor(SegmentStore(tmp_path / "live"), codec_for("otlp_spans", store))
    new_life = _records("otlp_spans", second)
    restarted.set_epoch("bbbb")
    assert restarted.redeliveries(new_life) == 0
    manifests = restarted.seal(restarted.decode(new_life), NOW)
    assert [m.source.epoch for m in manifests] == ["bbbb"]
    assert restarted.counters["redelivered_skipped"] == 0
    assert restarted.counters["records_stored"] == len(second)
    # a genuine re-delivery within the new epoch is still skipped
    assert restarted.redeliveries(new_life) == len(second)
    restarted.seal(restarted.decode(new_life), NOW)
    assert restarted.counters["redelivered_skipped"] == len(second)

    stored = SegmentStore(tmp_path / "live")
    reference = SegmentStore(tmp_path / "reference")
    _ingest(reference, "otlp_spans", _records("otlp_spans", first + second))
    # nothing lost, nothing twice: the same rows as one uninterrupted life
    assert row_digests(_rows(stored, "spans")) == row_digests(_rows(reference, "spans"))
    assert stored.durable_offsets("spans", "otlp_spans", "aaaa") == {0: 5}
    assert stored.durable_offsets("spans", "otlp_spans", "bbbb") == {0: 3}


def test_bad_records_are_dead_lettered_with_reasons(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path)
    good = span_request(1).SerializeToString()
    payloads = [
        good,
        good[: len(good) // 2],
        b"",
        b"{not json",
        b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"spanId": "zz"}]}]}]}',
        good * 3,
    ]
    ingestor = SegmentIngestor(
        store, codec_for("otlp_spans", store), Limits(max_record_bytes=len(good) * 2)
    )
    batch = ingestor.decode(_records("otlp_spans", payloads, partition=3, first=100))
    reasons = [d.reason for d in batch.deadletters]
    assert reasons == [
        "otlp_decode_error",
        "empty_record",
        "otlp_json_decode_error",
        "otlp_decode_error",
        "record_too_large",
    ]
    for letter in batch.deadletters:
        doc = letter.to_json(NOW)
        schemas.validate("deadletter.schema.json", doc)
        assert doc["source"]["topic"] == "otlp_spans" and doc["source"]["partition"] == 3
    assert [d.record.offset for d in batch.deadletters] == [101, 102, 103, 104, 105]
    [manifest] = ingestor.seal(batch, NOW)
    assert (manifest.source.first_offset, manifest.source.last_offset) == (100, 105)
    assert ingestor.counters["records_stored"] == 1
    assert sum(v for k, v in ingestor.counters.items() if k.startswith("refused_")) == 5


def test_redelivered_records_are_skipped(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path / "live")
    payloads = [span_request(seed).SerializeToString() for seed in range(10)]
    records = _records("otlp_spans", payloads)
    _ingest(store, "otlp_spans", records[:6])
    # a restarted worker gets everything again from an older committed offset
    again = _ingest(SegmentStore(tmp_path / "live"), "otlp_spans", records[2:])
    assert again.counters["redelivered_skipped"] == 4
    full = SegmentStore(tmp_path / "reference")
    _ingest(full, "otlp_spans", records)
    assert _rows(SegmentStore(tmp_path / "live"), "spans").num_rows == _rows(full, "spans").num_rows


def test_metrics_series_and_points(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path)
    reqs = [metric_request(seed, points=4) for seed in range(3)]
    _ingest(store, "otlp_metrics", _records("otlp_metrics", [r.SerializeToString() for r in reqs]))
    points = _rows(store, "metrics")
    series = _rows(store, "metric_series")
    # per request: 3 services x 3 metrics x 4 points
    assert points.num_rows == 3 * 3 * 3 * 4
    # the same series across requests share an id
    assert series.num_rows == 3 * 3
    assert set(points["series_id"].to_pylist()) == set(series["series_id"].to_pylist())
    hist = [p for p in points.to_pylist() if p["bucket_counts"] is not None]
    assert all(sum(p["bucket_counts"]) == p["count"] for p in hist)
    kinds = dict(zip(series["name"].to_pylist(), series["kind"].to_pylist(), strict=True))
    assert (
        kinds["http.server.request.count"] == "sum" and kinds["process.cpu.utilization"] == "gauge"
    )


def test_logs_store_templates_and_rebuild_every_line(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path)
    reqs = [log_request(seed, lines=30) for seed in range(4)]
    _ingest(
        store,
        "otlp_logs",
        _records("otlp_logs", [r.SerializeToString() for r in reqs], partition=2),
    )
    logs = _rows(store, "logs")
    bodies = [
        r.body.string_value
        for req in reqs
        for rl in req.resource_logs
        for sl in rl.scope_logs
        for r in sl.log_records
    ]
    assert logs.num_rows == len(bodies)
    states = MinerStates(store.state_dir(), "otlp_logs")  # a fresh reader, from the stored state
    rebuilt = [
        states.reconstruct(t, p)
        for t, p in zip(logs["template_id"].to_pylist(), logs["params"].to_pylist(), strict=True)
    ]
    assert sorted(rebuilt) == sorted(bodies)
    templates = _rows(store, "log_templates")
    assert 4 <= templates.num_rows <= 8  # four event kinds in the factory
    assert all(t >> 20 == 2 for t in templates["template_id"].to_pylist())  # partition in the id
    assert any("<*>" in t for t in templates["template"].to_pylist())


def test_log_miner_resumes_after_restart(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path / "live")
    records = _records("otlp_logs", [log_request(seed).SerializeToString() for seed in range(6)])
    _ingest(store, "otlp_logs", records[:3])
    _ingest(SegmentStore(tmp_path / "live"), "otlp_logs", records)  # restart: first three skipped
    reference = SegmentStore(tmp_path / "reference")
    _ingest(reference, "otlp_logs", records)
    a = _rows(SegmentStore(tmp_path / "live"), "logs").sort_by("time_unix_nano")
    b = _rows(reference, "logs").sort_by("time_unix_nano")
    assert a["template_id"].to_pylist() == b["template_id"].to_pylist()
    assert a["params"].to_pylist() == b["params"].to_pylist()


@settings(max_examples=60, derandomize=True, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash_the_decoder(data: bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        store = SegmentStore(d)
        for topic in ("otlp_spans", "otlp_metrics", "otlp_logs"):
            ingestor = SegmentIngestor(store, codec_for(topic, store))
            batch = ingestor.decode([KafkaRecord(topic, 0, 0, data)])
            accepted = ingestor.counters["records_stored"]
            assert accepted + len(batch.deadletters) == 1
            ingestor.seal(batch, NOW)


@pytest.mark.parametrize("topic", ["otlp_spans", "otlp_metrics", "otlp_logs"])
def test_truncations_of_valid_payloads_are_refused_or_stored(tmp_path: Path, topic: str) -> None:
    make = {"otlp_spans": span_request, "otlp_metrics": metric_request, "otlp_logs": log_request}[
        topic
    ]
    data = make(7).SerializeToString()
    store = SegmentStore(tmp_path)
    ingestor = SegmentIngestor(store, codec_for(topic, store))
    cuts = list(range(1, len(data), max(1, len(data) // 40)))
    batch = ingestor.decode([KafkaRecord(topic, 0, i, data[:cut]) for i, cut in enumerate(cuts)])
    assert ingestor.counters["records_stored"] + len(batch.deadletters) == len(cuts)
    assert len(batch.deadletters) >= len(cuts) // 2
    assert {d.reason for d in batch.deadletters} == {"otlp_decode_error"}


def test_span_attributes_over_the_limit_are_dropped_and_counted(tmp_path: Path) -> None:
    from pipeline.testing import kv

    req = span_request(3, traces=1)
    span = req.resource_spans[0].scope_spans[0].spans[0]
    span.attributes.extend([kv(f"extra.{i}", i) for i in range(20)])
    store = SegmentStore(tmp_path)
    limits = Limits(max_attributes_per_item=5)
    ingestor = SegmentIngestor(store, codec_for("otlp_spans", store, limits), limits)
    ingestor.seal(ingestor.decode([KafkaRecord("otlp_spans", 0, 0, req.SerializeToString())]), NOW)
    assert ingestor.counters["attributes_dropped_over_limit"] == len(span.attributes) - 5
    assert _rows(store, "spans").num_rows == 4


def _new_series(first: int, count: int) -> bytes:
    """One gauge point for each of ``count`` series never seen before (a ``user.id`` each)."""
    request = ExportMetricsServiceRequest()
    rm = request.resource_metrics.add()
    rm.resource.attributes.append(kv("service.name", "storm"))
    metric = rm.scope_metrics.add().metrics.add(name="session.bytes", unit="By")
    for user in range(first, first + count):
        point = metric.gauge.data_points.add(time_unix_nano=BASE_NS, as_double=float(user))
        point.attributes.append(kv("user.id", str(user)))
    return request.SerializeToString()


def test_a_batch_of_new_series_is_decoded_and_sealed_at_most_max_items_at_a_time(
    tmp_path: Path,
) -> None:
    """Ten records of 300 new series each against a cap of 1,000 items: each decode stops at
    the record that reaches the cap, so the builders never hold more than 1,200 series; every
    point and series is stored, once, and a re-delivery of the whole batch is skipped."""
    store = SegmentStore(tmp_path)
    ingestor = SegmentIngestor(store, codec_for("otlp_metrics", store))
    records = [
        KafkaRecord("otlp_metrics", 0, offset, _new_series(300 * offset, 300))
        for offset in reversed(range(10))
    ]
    pending = sorted(records, key=record_order)
    held: list[tuple[int, int, int]] = []
    while pending:
        batch = ingestor.decode(pending, max_items=1000)
        [part] = batch.partitions
        assert isinstance(part.builder, MetricColumns)
        held.append((batch.consumed, batch.items, len(part.builder.series_row)))
        pending = pending[batch.consumed :]
        ingestor.seal(batch, NOW)
    assert held == [(4, 1200, 1200), (4, 1200, 1200), (2, 600, 600)]
    assert ingestor.counters["item_cap_splits"] == 2
    series = _rows(store, "metric_series")
    assert series.num_rows == len(set(series["series_id"].to_pylist())) == 3000
    assert _rows(store, "metrics").num_rows == ingestor.counters["items_stored"] == 3000
    ranges = sorted(
        (m.source.first_offset, m.source.last_offset) for m in store.manifests("metrics")
    )
    assert ranges == [(0, 3), (4, 7), (8, 9)]
    again = ingestor.decode(records, max_items=1000)
    assert again.consumed == 10 and not again.partitions
    assert ingestor.counters["redelivered_skipped"] == 10
