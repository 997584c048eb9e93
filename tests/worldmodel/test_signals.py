from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from pipeline.ingest.logs import LogColumns
from pipeline.ingest.metrics import metrics_tables
from pipeline.ingest.spans import spans_table
from pipeline.logs.templates import TemplateMiner
from pipeline.testing import BASE_NS, log_request, metric_request, span_request
from pipeline.worldmodel.signals import (
    MetricDeriver,
    histogram_quantile,
    log_signals,
    new_templates,
    span_signals,
)


def _value(frame: pl.DataFrame, entity: str, signal: str) -> list[float]:
    return (
        frame.filter((pl.col("entity") == entity) & (pl.col("signal") == signal))
        .sort("interval_start_unix_nano")["value"]
        .to_list()
    )


def test_span_signals_match_a_direct_computation() -> None:
    reqs = [span_request(seed, traces=30) for seed in range(5)]
    table = spans_table(reqs)
    frame = span_signals(table, interval_s=60)
    spans = [
        (rs.resource.attributes[0].value.string_value, s)
        for r in reqs
        for rs in r.resource_spans
        for ss in rs.scope_spans
        for s in ss.spans
    ]
    # server-side spans of "cart" (kind server, or roots) in the first minute
    cart = [s for svc, s in spans if svc == "cart" and (s.kind == 2 or not s.parent_span_id)]
    durations = np.array([(s.end_time_unix_nano - s.start_time_unix_nano) / 1e6 for s in cart])
    assert _value(frame, "service:cart", "span.rate_per_s") == pytest.approx([len(cart) / 60])
    assert _value(frame, "service:cart", "span.latency_p95_ms")[0] == pytest.approx(
        np.quantile(durations, 0.95)
    )
    errors = sum(1 for s in cart if s.status.code == 2)
    assert _value(frame, "service:cart", "span.error_ratio") == pytest.approx([errors / len(cart)])
    # the database nobody instrumented has edge signals from its callers
    edges = frame.filter(
        pl.col("signal").str.starts_with("edge.rate_per_s{peer=database:postgresql:")
    )
    assert edges.height > 0
    assert set(frame["entity"].str.split(":").list.first().unique()) == {"service", "operation"}


def test_intervals_split_by_event_time() -> None:
    table = spans_table(
        [
            span_request(1, traces=50, start_ns=BASE_NS),
            span_request(2, traces=50, start_ns=BASE_NS + 120 * 10**9),
        ]
    )
    frame = span_signals(table, interval_s=60)
    starts = sorted(frame["interval_start_unix_nano"].unique().to_list())
    assert starts == [BASE_NS, BASE_NS + 120 * 10**9]  # BASE_NS is on a minute boundary


def test_log_signals_and_new_templates() -> None:
    miner = TemplateMiner()
    builder = LogColumns(miner, 0)
    for seed in range(3):
        builder.add_request(log_request(seed, lines=30))
    table = builder.logs_table()
    frame = log_signals(table, interval_s=60)
    total = sum(
        _value(frame, e, "log.rate_per_s")[0]
        for e in ("service:frontend", "service:checkout", "service:cart")
    )
    assert total * 60 == pytest.approx(table.num_rows)
    errors = sum(
        sum(_value(frame, e, "log.error_rate_per_s"))
        for e in ("service:frontend", "service:checkout", "service:cart")
    )
    assert errors * 60 == pytest.approx(
        sum(1 for s in table["severity_number"].to_pylist() if s >= 17)
    )
    fresh = new_templates(table, known=set())
    assert {t for t, _, _ in fresh} == set(table["template_id"].to_pylist())
    assert new_templates(table, known={t for t, _, _ in fresh}) == []


def test_metric_rates_quantiles_and_resets() -> None:
    series, points = metrics_tables([metric_request(1, points=6)])
    deriver = MetricDeriver(interval_s=15)
    frame = deriver.derive(series, points)
    cpu = _value(frame, "service:cart", "process.cpu.utilization")
    assert len(cpu) == 6 and all(0 <= v <= 1 for v in cpu)
    rates = _value(frame, "service:cart", "http.server.request.count{http.route=/}.rate_per_s")
    assert len(rates) == 5 and all(r > 0 for r in rates)  # the first point only primes the counter
    p95 = _value(frame, "service:cart", "http.server.request.duration.p95")
    assert p95 and all(0 <= v <= 1.0 for v in p95)


def test_histogram_quantile_is_linear_within_buckets() -> None:
    assert histogram_quantile(0.5, [1.0, 2.0], (0, 10, 0)) == pytest.approx(1.5)
    assert histogram_quantile(0.99, [1.0, 2.0], (0, 0, 5)) == 2.0
    assert math.isnan(histogram_quantile(0.5, [1.0], (0, 0)))
