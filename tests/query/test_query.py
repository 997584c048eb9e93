from __future__ import annotations

import datetime as dt

import pytest

from pipeline.ingest.core import KafkaRecord, SegmentIngestor, codec_for
from pipeline.query import LogQuery, QueryError, TimeRange, metric_series, trace
from pipeline.segments.store import SegmentStore
from pipeline.testing import BASE_NS, log_request, metric_request, span_request

NOW = dt.datetime(2026, 11, 20, 14, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> SegmentStore:
    root = tmp_path_factory.mktemp("store")
    store = SegmentStore(root)
    for topic, make in (
        ("otlp_spans", span_request),
        ("otlp_logs", log_request),
        ("otlp_metrics", metric_request),
    ):
        ingestor = SegmentIngestor(store, codec_for(topic, store))
        for chunk in range(3):  # three segments per partition
            records = [
                KafkaRecord(
                    topic, p, chunk * 10 + i, make(chunk * 100 + p * 10 + i).SerializeToString()
                )
                for p in range(2)
                for i in range(5)
            ]
            ingestor.seal(ingestor.decode(records), NOW)
    return store


def test_trace_by_id_returns_the_whole_trace(store: SegmentStore) -> None:
    req = span_request(103)  # chunk 1, partition 0, record 3 of the fixture
    trace_id = req.resource_spans[0].scope_spans[0].spans[0].trace_id.hex()
    spans = trace(store, trace_id)
    expected = [
        s
        for rs in req.resource_spans
        for ss in rs.scope_spans
        for s in ss.spans
        if s.trace_id.hex() == trace_id
    ]
    assert len(spans) == len(expected) == 4
    assert {s["span_id"] for s in spans} == {s.span_id.hex() for s in expected}
    assert spans[0]["parent_span_id"] is None  # the root starts first
    assert trace(store, "0" * 32) == []
    with pytest.raises(QueryError, match="32 hex"):
        trace(store, "abcd")


def test_logs_by_service_severity_template_and_text(store: SegmentStore) -> None:
    q = LogQuery(store)
    errors = q.run(min_severity="error", limit=1000)
    assert errors and all(r["severity_number"] >= 17 for r in errors)
    assert all(r["line"].startswith("payment call failed") for r in errors)
    by_template = q.run(template=r"^slow call to", limit=1000)
    assert by_template and all(r["line"].startswith("slow call to ") for r in by_template)
    carts = q.run(services=["cart"], limit=1000)
    assert carts and {r["service"] for r in carts} == {"cart"}
    text = q.run(text="took 17 ms", limit=1000)
    assert all("took 17 ms" in r["line"] for r in text)
    in_params = q.run(text="u42", limit=1000)
    assert all("u42" in r["line"] for r in in_params)
    window = q.run(time=TimeRange(BASE_NS, BASE_NS + 10_000_000_000), limit=1000)
    assert window and all(
        BASE_NS <= r["time_unix_nano"] <= BASE_NS + 10_000_000_000 for r in window
    )
    assert q.run(template="no such template", limit=10) == []
    with pytest.raises(QueryError, match="severity"):
        q.run(min_severity="loud")


def test_template_dictionary_lists_every_template(store: SegmentStore) -> None:
    templates = LogQuery(store).templates()
    assert any(t.startswith("payment call failed after") for t in templates.values())
    assert {tid >> 20 for tid in templates} == {0, 1}


def test_metric_series_with_labels_and_steps(store: SegmentStore) -> None:
    out = metric_series(
        store, "process.cpu.utilization", labels={"service.name": "cart"}, step_s=30, agg="max"
    )
    assert len(out) == 1
    points = out[0]["points"]
    assert all(0.0 <= v <= 1.0 for _, v in points)
    assert [b for b, _ in points] == sorted(b for b, _ in points)
    assert all(b % 30_000_000_000 == 0 for b, _ in points)
    counts = metric_series(store, "http.server.request.duration", step_s=3600, agg="count")
    assert len(counts) == 3  # one series per service
    assert metric_series(store, "nope") == []
    with pytest.raises(QueryError):
        metric_series(store, "x", agg="median")


def test_pruning_skips_segments_outside_the_range(store: SegmentStore) -> None:
    assert store.select("logs", start_unix_nano=BASE_NS * 2) == []
    assert store.select("spans", services=["nobody"]) == []


def test_every_span_is_stored(store: SegmentStore) -> None:
    assert sum(m.rows for m in store.manifests("spans")) == 3 * 2 * 5 * 5 * 4
