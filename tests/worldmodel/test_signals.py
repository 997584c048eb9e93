from __future__ import annotations

import math
from typing import Any

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
    histogram_quantile_step,
    log_signals,
    new_templates,
    request_outcome,
    sampling_resolution,
    span_signals,
)


def _value(frame: pl.DataFrame, entity: str, signal: str, column: str = "value") -> list[float]:
    return (
        frame.filter((pl.col("entity") == entity) & (pl.col("signal") == signal))
        .sort("interval_start_unix_nano")[column]
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
    # how precisely each value was measured: a ratio counted len(cart) requests, a rate per
    # second counted events over 60 s, a latency quantile of len(cart) spans is known to its
    # sampling error over them; nothing else has a resolution
    assert _value(frame, "service:cart", "span.error_ratio", "exposure") == [len(cart)]
    assert _value(frame, "service:cart", "span.rate_per_s", "exposure") == [60.0]
    assert _value(frame, "service:cart", "span.latency_p95_ms", "exposure") == [0.0]
    assert _value(frame, "service:cart", "span.latency_p95_ms", "resolution") == pytest.approx(
        [sampling_resolution(0.95, np.quantile(durations, 0.95), len(cart))]
    )
    latency = pl.col("signal").str.contains("latency_p")
    assert set(frame.filter(~latency)["resolution"].to_list()) == {0.0}
    assert frame.filter(latency)["resolution"].min() > 0
    edge_ratio = frame.filter(pl.col("signal").str.starts_with("edge.error_ratio"))
    edge_rate = frame.filter(pl.col("signal").str.starts_with("edge.rate_per_s"))
    joined = edge_ratio.join(
        edge_rate.with_columns(pl.col("signal").str.replace("rate_per_s", "error_ratio")),
        on=["interval_start_unix_nano", "entity", "signal"],
    )
    assert joined.height == edge_ratio.height > 0
    assert (joined["exposure"] == joined["value_right"] * 60).all()
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
    assert set(frame["exposure"].to_list()) == {60.0}  # every log signal is a counted rate
    fresh = new_templates(table, known=set())
    assert {t for t, _, _ in fresh} == set(table["template_id"].to_pylist())
    assert new_templates(table, known={t for t, _, _ in fresh}) == []


def test_raw_lines_without_a_severity_count_as_errors_when_they_say_so() -> None:
    # a filelog receiver without a severity parser: every line unspecified (0)
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    attribute = resource_logs.resource.attributes.add(key="k8s.pod.name")
    attribute.value.string_value = "cartservice-579f59597d-wc2lz"
    records = resource_logs.scope_logs.add().log_records
    lines = ["2022-08-22 03:54:00 ERROR charge failed", "2022-08-22 03:54:01 INFO cart read"] * 3
    for i, line in enumerate(lines):
        records.add(time_unix_nano=BASE_NS + i * 10**9).body.string_value = line
    builder = LogColumns(TemplateMiner(), 0)
    builder.add_request(request)
    table = builder.logs_table()
    assert table["severity_number"].to_pylist() == [17, 9] * 3
    frame = log_signals(table, interval_s=60)
    assert _value(frame, "service:cartservice", "log.error_rate_per_s") == [pytest.approx(3 / 60)]


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
    # a histogram's rate counts observations; its quantiles are known to a bucket's width; a
    # counter counts events when its unit says so ({request}: over the 15 s between its
    # points); a gauge is no count
    name = "http.server.request.duration"
    assert set(_value(frame, "service:cart", name + ".rate_per_s", "exposure")) == {15.0}
    widths = _value(frame, "service:cart", name + ".p95", "resolution")
    assert len(widths) == len(p95) and all(w > 0 for w in widths)
    assert set(_value(frame, "service:cart", name + ".p95", "exposure")) == {0.0}
    counter = "http.server.request.count{http.route=/}.rate_per_s"
    assert set(_value(frame, "service:cart", counter, "exposure")) == {15.0}
    assert set(_value(frame, "service:cart", "process.cpu.utilization", "resolution")) == {0.0}


def _sum_request(
    unit: str,
    temporality: int,
    values: list[float],
    start_s: float | None,
    monotonic: bool = True,
) -> Any:
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )

    from pipeline.testing import kv

    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    rm.resource.attributes.append(kv("service.name", "cart"))
    total = rm.scope_metrics.add().metrics.add(name="sent", unit=unit).sum
    total.aggregation_temporality = temporality
    total.is_monotonic = monotonic
    for i, v in enumerate(values):
        t = BASE_NS + (i + 1) * 60_000_000_000
        start = 0 if start_s is None else t - int(start_s * 1e9)
        total.data_points.add(time_unix_nano=t, start_time_unix_nano=start, as_double=v)
    return req


@pytest.mark.parametrize(
    ("unit", "events"), [("{request}", True), ("1", True), ("By", False), ("s", False), ("", False)]
)
def test_a_counter_counts_events_only_when_its_unit_says_so(unit: str, events: bool) -> None:
    # cumulative: the rate between points; the exposure is the 60 s it was counted over
    series, points = metrics_tables([_sum_request(unit, 2, [10.0, 40.0, 100.0], None)])
    frame = MetricDeriver(interval_s=60).derive(series, points)
    assert _value(frame, "service:cart", "sent.rate_per_s") == pytest.approx([0.5, 1.0])
    assert set(_value(frame, "service:cart", "sent.rate_per_s", "exposure")) == {
        60.0 if events else 0.0
    }


def test_an_up_down_counter_is_a_level_not_a_rate() -> None:
    # a thread count exported as a cumulative non-monotonic sum (an UpDownCounter): each
    # point is the current number, as a gauge's would be; its falls are no counter resets
    series, points = metrics_tables([_sum_request("{thread}", 2, [12.0, 13.0, 11.0], 0.0, False)])
    deriver = MetricDeriver(interval_s=60)
    frame = deriver.derive(series, points)
    assert _value(frame, "service:cart", "sent") == pytest.approx([12.0, 13.0, 11.0])
    assert _value(frame, "service:cart", "sent", "exposure") == [0.0, 0.0, 0.0]
    assert _value(frame, "service:cart", "sent.rate_per_s") == []
    # a number of threads is known to one thread; a level in bytes, exactly
    assert _value(frame, "service:cart", "sent", "resolution") == [1.0, 1.0, 1.0]
    series, points = metrics_tables([_sum_request("By", 2, [12.0, 13.0], 0.0, False)])
    frame = MetricDeriver(interval_s=60).derive(series, points)
    assert _value(frame, "service:cart", "sent", "resolution") == [0.0, 0.0]
    # fractions of an annotated unit are measured, not counted: exact
    series, points = metrics_tables([_sum_request("{millicore}", 2, [1.76, 2.0], 0.0, False)])
    frame = MetricDeriver(interval_s=60).derive(series, points)
    assert _value(frame, "service:cart", "sent", "resolution") == [0.0, 1.0]
    assert deriver.dropped["counter_reset"] == 0


def test_a_delta_sum_is_a_rate_over_its_own_period() -> None:
    # 5-minute deltas into a 60 s model: 300 requests in 300 s is 1 per second, counted over
    # 300 s (one event in it is a rate of 1/300); without a start time, the model's interval
    series, points = metrics_tables([_sum_request("{request}", 1, [300.0, 600.0], 300.0)])
    frame = MetricDeriver(interval_s=60).derive(series, points)
    assert _value(frame, "service:cart", "sent.rate_per_s") == pytest.approx([1.0, 2.0])
    assert set(_value(frame, "service:cart", "sent.rate_per_s", "exposure")) == {300.0}
    series, points = metrics_tables([_sum_request("{request}", 1, [300.0], None)])
    frame = MetricDeriver(interval_s=60).derive(series, points)
    assert _value(frame, "service:cart", "sent.rate_per_s") == pytest.approx([5.0])
    assert _value(frame, "service:cart", "sent.rate_per_s", "exposure") == [60.0]


def test_histogram_quantile_is_linear_within_buckets() -> None:
    assert histogram_quantile(0.5, [1.0, 2.0], (0, 10, 0)) == pytest.approx(1.5)
    assert histogram_quantile(0.99, [1.0, 2.0], (0, 0, 5)) == 2.0
    assert math.isnan(histogram_quantile(0.5, [1.0], (0, 0)))


def test_histogram_quantile_resolution_is_the_width_of_its_bucket() -> None:
    bounds = [0.01, 0.025, 0.05, 0.1]
    # median in (0.025, 0.05]: interpolated, known only to that bucket's width
    value, width = histogram_quantile_step(0.5, bounds, (0, 2, 6, 2, 0))
    assert value == pytest.approx(0.025 + 0.025 * (5 - 2) / 6)
    assert width == pytest.approx(0.025)
    assert histogram_quantile_step(0.1, bounds, (4, 0, 0, 0, 0)) == pytest.approx((0.001, 0.01))
    # in the +Inf bucket: pinned at the top bound, known no better than the last finite bucket
    assert histogram_quantile_step(0.99, bounds, (1, 0, 0, 0, 9)) == pytest.approx((0.1, 0.05))
    assert histogram_quantile_step(0.5, [], (3,))[1] == 0.0


def _summary_request(
    points: list[tuple[int, int, float, dict[float, float]]],
) -> Any:
    """One summary series: (start in s after BASE, count, sum, quantiles) per point, a minute
    apart."""
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )

    from pipeline.testing import kv

    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    rm.resource.attributes.append(kv("service.name", "cart"))
    summary = rm.scope_metrics.add().metrics.add(name="latency", unit="s").summary
    for i, (start_s, count, total, quantiles) in enumerate(points):
        point = summary.data_points.add(
            start_time_unix_nano=BASE_NS + start_s * 1_000_000_000 if start_s >= 0 else 0,
            time_unix_nano=BASE_NS + (i + 1) * 60_000_000_000,
            count=count,
            sum=total,
        )
        for q, v in quantiles.items():
            point.quantile_values.add(quantile=q, value=v)
    return req


def test_a_summary_gives_its_average_and_percentiles_known_to_their_sampling_error() -> None:
    # 100 requests averaging 0.2 s: the average and the percentiles, named as a histogram's
    # are, each known to its sampling error over 100 requests; the maximum (q 1) exactly
    # (a point with a start time of its own: the observations since then)
    series, points = metrics_tables(
        [_summary_request([(0, 100, 20.0, {0.5: 0.15, 0.9: 0.4, 1.0: 2.0})])]
    )
    frame = MetricDeriver(interval_s=60).derive(series, points)
    assert _value(frame, "service:cart", "latency.average") == pytest.approx([0.2])
    assert _value(frame, "service:cart", "latency.p50") == pytest.approx([0.15])
    assert _value(frame, "service:cart", "latency.p90") == pytest.approx([0.4])
    resolution = {
        signal: _value(frame, "service:cart", signal, "resolution")[0]
        for signal in ("latency.average", "latency.p50", "latency.p90", "latency.p100")
    }
    assert resolution == pytest.approx(
        {
            "latency.average": 0.2 / 10,
            "latency.p50": 0.15 * 1.4427 / 10,
            "latency.p90": 0.4 * 1.3029 / 10,
            "latency.p100": 0.0,
        },
        rel=1e-3,
    )
    # no count: the quantiles alone, known exactly as far as anyone can say
    series, points = metrics_tables([_summary_request([(0, 0, 0.0, {0.5: 0.15})])])
    frame = MetricDeriver(interval_s=60).derive(series, points)
    assert set(frame["signal"].to_list()) == {"latency.p50"}
    assert _value(frame, "service:cart", "latency.p50", "resolution") == [0.0]


def test_sampling_error_shrinks_with_the_square_root_of_the_count() -> None:
    # a median of 470 requests is known to 7 %, one of 5 requests to 64 %
    assert sampling_resolution(0.5, 1.0, 470) == pytest.approx(0.0666, abs=1e-3)
    assert sampling_resolution(0.5, 1.0, 5) == pytest.approx(0.645, abs=1e-3)
    assert sampling_resolution(0.99, 2.0, 100) == pytest.approx(2 * 2.161 / 10, abs=1e-3)
    assert sampling_resolution(None, -3.0, 9) == pytest.approx(1.0)
    assert sampling_resolution(0.5, 1.0, 0) == 0.0
    assert sampling_resolution(0.0, 1.0, 10) == 0.0


def test_a_cumulative_summary_gives_the_average_of_what_each_point_adds() -> None:
    # count and sum are cumulative since the start time: the first point, without a start
    # time, says nothing of its interval but its quantiles; then 100 requests adding 30 s
    # (0.3 s each), then a restart (a new start time): the point's own 10 requests, 1 s
    series, points = metrics_tables(
        [
            _summary_request(
                [
                    (-1, 1000, 200.0, {0.5: 0.1}),
                    (-1, 1100, 230.0, {0.5: 0.2}),
                    (150, 10, 10.0, {0.5: 0.9}),
                ]
            )
        ]
    )
    frame = MetricDeriver(interval_s=60).derive(series, points)
    assert _value(frame, "service:cart", "latency.p50") == pytest.approx([0.1, 0.2, 0.9])
    assert _value(frame, "service:cart", "latency.average") == pytest.approx([0.3, 1.0])
    assert _value(frame, "service:cart", "latency.average", "resolution") == pytest.approx(
        [0.3 / 10, 1.0 / math.sqrt(10)]
    )
    assert _value(frame, "service:cart", "latency.p50", "resolution")[0] == 0.0


def test_a_histogram_quantile_of_few_observations_is_known_to_its_sampling_error() -> None:
    # 4 observations in 10 ms buckets: the median is known to a bucket's width at best, and
    # no better than the median of 4 observations is (0.72 of its value)
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )

    from pipeline.testing import kv

    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    rm.resource.attributes.append(kv("service.name", "cart"))
    histogram = rm.scope_metrics.add().metrics.add(name="duration", unit="s").histogram
    histogram.aggregation_temporality = 1  # delta
    bounds = [0.01 * i for i in range(1, 21)]
    counts = [0] * 21
    counts[9] = 4  # all in (0.09, 0.10]
    histogram.data_points.add(
        time_unix_nano=BASE_NS + 60_000_000_000,
        count=4,
        explicit_bounds=bounds,
        bucket_counts=counts,
    )
    series, points = metrics_tables([req])
    frame = MetricDeriver(interval_s=60).derive(series, points)
    [median] = _value(frame, "service:cart", "duration.p50")
    [resolution] = _value(frame, "service:cart", "duration.p50", "resolution")
    assert resolution == pytest.approx(sampling_resolution(0.5, median, 4))
    assert resolution > 0.05 > 0.01


def _remote_write(
    series: list[tuple[dict[str, str], list[float]]], step_s: float = 60.0, start: int = 0
) -> Any:
    """A Prometheus remote_write request translated as the receiver does: one sample per
    scrape, every ``step_s``."""
    from pipeline.receivers import protos
    from pipeline.receivers.remote_write import to_otlp_metrics

    request = protos.WriteRequest()
    for labels, values in series:
        entry = request.timeseries.add()
        for name, value in sorted({"job": "shop", **labels}.items()):
            entry.labels.add(name=name, value=value)
        for i, v in enumerate(values):
            entry.samples.add(
                value=v, timestamp=BASE_NS // 1_000_000 + int((start + i) * step_s * 1000)
            )
    return to_otlp_metrics(request).request


def test_prometheus_histograms_summaries_and_counters_by_remote_write() -> None:
    # a classic histogram sent as its buckets, sum and count: three scrapes, 100 then 200
    # observations added, all under 0.02 s then all between 0.05 and 0.1 s
    name = "http_client_request_duration_seconds"
    buckets = {"0.02": [100, 200, 200], "0.05": [100, 200, 200], "0.1": [100, 200, 400]}
    buckets["+Inf"] = buckets["0.1"]
    labels = {"peer": "db"}
    series = [
        ({"__name__": name + "_bucket", "le": le, **labels}, [float(v) for v in counts])
        for le, counts in buckets.items()
    ]
    series += [
        ({"__name__": name + "_count", **labels}, [100.0, 200.0, 400.0]),
        ({"__name__": name + "_sum", **labels}, [1.0, 2.0, 17.0]),
        # a summary: its quantiles, sum and count
        ({"__name__": "rpc_seconds", "quantile": "0.5"}, [0.01, 0.01, 0.3]),
        ({"__name__": "rpc_seconds", "quantile": "0.99"}, [0.02, 0.02, 0.5]),
        ({"__name__": "rpc_seconds_count"}, [10.0, 20.0, 40.0]),
        ({"__name__": "rpc_seconds_sum"}, [0.1, 0.2, 6.2]),
        # a counter that resets, and one that counts seconds
        ({"__name__": "requests_total", "code": "500"}, [50.0, 110.0, 30.0]),
        ({"__name__": "process_cpu_seconds_total"}, [1.0, 31.0, 61.0]),
        ({"__name__": "goroutines"}, [12.0, 14.0, 13.0]),
    ]
    series_t, points = metrics_tables([_remote_write(series)])
    deriver = MetricDeriver(interval_s=60)
    frame = deriver.derive(series_t, points)
    signals = set(frame["signal"].to_list())
    # no bucket, quantile, sum or count is a series of its own
    assert not {s for s in signals if "_bucket" in s or "le=" in s or "quantile=" in s}
    assert not {
        s for s in signals if s.startswith((name + "_sum", name + "_count", "rpc_seconds_"))
    }
    hist = name + "{peer=db}"
    # the first scrape only primes the cumulative buckets
    assert _value(frame, "service:shop", hist + ".rate_per_s") == pytest.approx(
        [100 / 60, 200 / 60]
    )
    p50 = _value(frame, "service:shop", hist + ".p50")
    assert p50[0] <= 0.02 and 0.05 <= p50[1] <= 0.1
    assert _value(frame, "service:shop", hist + ".p50", "resolution")[1] >= 0.05
    # the summary: its quantiles, and the average of what each scrape added
    assert _value(frame, "service:shop", "rpc_seconds.p50") == pytest.approx([0.01, 0.01, 0.3])
    assert _value(frame, "service:shop", "rpc_seconds.p99") == pytest.approx([0.02, 0.02, 0.5])
    assert _value(frame, "service:shop", "rpc_seconds.average") == pytest.approx([0.01, 0.3])
    # counters: rates, a reset's new value is the increase since it; events only without a
    # unit in the name
    errors = "requests_total{code=500}.rate_per_s"
    assert _value(frame, "service:shop", errors) == pytest.approx([1.0, 0.5])
    assert set(_value(frame, "service:shop", errors, "exposure")) == {60.0}
    cpu = "process_cpu_seconds_total.rate_per_s"
    assert _value(frame, "service:shop", cpu) == pytest.approx([0.5, 0.5])
    assert set(_value(frame, "service:shop", cpu, "exposure")) == {0.0}
    # a gauge stays a gauge
    assert _value(frame, "service:shop", "goroutines") == pytest.approx([12.0, 14.0, 13.0])
    assert deriver.dropped["counter_reset"] == 1


def test_a_remote_write_histogram_keeps_its_state_across_batches() -> None:
    # cumulative buckets 10/20/20 per scrape: the second batch's first point is an increase
    # over the first batch's last, remembered under the family's own id
    series = [
        ({"__name__": "lat_seconds_bucket", "le": le}, [float(k * 10 * (i + 1)) for i in range(4)])
        for k, le in ((1, "0.1"), (2, "1"), (2, "+Inf"))
    ]
    deriver = MetricDeriver(interval_s=60)
    early = metrics_tables([_remote_write([(labels, v[:2]) for labels, v in series])])
    late = metrics_tables([_remote_write([(labels, v[2:]) for labels, v in series], start=2)])
    assert _value(deriver.derive(*early), "service:shop", "lat_seconds.rate_per_s") == (
        pytest.approx([20 / 60])
    )
    frame = deriver.derive(*late)
    assert _value(frame, "service:shop", "lat_seconds.rate_per_s") == pytest.approx([20 / 60] * 2)
    assert [k for k in deriver.last if k < 0]  # the family's state, never a stored series id


def _outcome_histograms(per_interval: list[tuple[int, int]]) -> Any:
    """OTel delta histograms of one route, split by outcome as the semantic conventions do:
    ``(succeeded, failed)`` requests per minute; failed ones carry ``error.type``."""
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )

    from pipeline.testing import kv

    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    rm.resource.attributes.append(kv("service.name", "cart"))
    hist = rm.scope_metrics.add().metrics.add(name="http.server.request.duration", unit="s")
    hist.histogram.aggregation_temporality = 1
    for i, (ok, failed) in enumerate(per_interval):
        t = BASE_NS + (i + 1) * 60_000_000_000
        for n, status in ((ok, "200"), (failed, "500")):
            if n == 0:
                continue  # an outcome without requests sends no point, as SDKs do
            dp = hist.histogram.data_points.add(
                time_unix_nano=t,
                start_time_unix_nano=t - 60_000_000_000,
                count=n,
                sum=0.05 * n,
                bucket_counts=[n, 0],
                explicit_bounds=[0.1],
            )
            dp.attributes.extend(
                [kv("http.route", "/cart"), kv("http.response.status_code", status)]
            )
            if status == "500":
                dp.attributes.append(kv("error.type", "500"))
    return req


def test_requests_split_by_outcome_give_their_error_ratio() -> None:
    series, points = metrics_tables([_outcome_histograms([(100, 0), (120, 0), (70, 30)])])
    frame = MetricDeriver(interval_s=60).derive(series, points)
    ratio = "http.server.request.duration{http.route=/cart}.error_ratio"
    # 0 while every request succeeds (no failed series exists yet), then the failed share,
    # counted over the group's requests
    assert _value(frame, "service:cart", ratio) == pytest.approx([0.0, 0.0, 0.3])
    assert _value(frame, "service:cart", ratio, "exposure") == pytest.approx([100, 120, 100])
    # the outcome-split series stay series of their own
    failed = "http.server.request.duration{error.type=500,http.response.status_code=500,"
    assert _value(frame, "service:cart", failed + "http.route=/cart}.rate_per_s") == [0.5]


def test_prometheus_status_labels_give_an_error_ratio() -> None:
    series = [
        ({"__name__": "http_requests_total", "code": "200", "path": "/a"}, [0.0, 90.0, 170.0]),
        ({"__name__": "http_requests_total", "code": "503", "path": "/a"}, [0.0, 10.0, 40.0]),
        ({"__name__": "http_requests_total", "code": "404", "path": "/a"}, [0.0, 0.0, 10.0]),
    ]
    series_t, points = metrics_tables([_remote_write(series)])
    frame = MetricDeriver(interval_s=60).derive(series_t, points)
    ratio = "http_requests_total{path=/a}.error_ratio"
    # a 404 is the client's error, not a failure of the service
    assert _value(frame, "service:shop", ratio) == pytest.approx([0.1, 30 / 120])
    assert _value(frame, "service:shop", ratio, "exposure") == pytest.approx([100.0, 120.0])


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("d{error.type=timeout,server.address=db}", ("d{server.address=db}", True)),
        ("d{http.response.status_code=503}", ("d", True)),
        ("d{http.response.status_code=404,x=1}", ("d{x=1}", False)),
        ("d{rpc.grpc.status_code=0}", ("d", False)),
        ("d{rpc.grpc.status_code=14}", ("d", True)),
        ("d{code=5xx}", ("d", True)),
        ("d{otel.status_code=ERROR}", ("d", True)),
        ("d{route=/a}", None),
        ("d", None),
    ],
)
def test_request_outcome(base: str, expected: tuple[str, bool] | None) -> None:
    assert request_outcome(base) == expected


def _export(service: str, spans: list[tuple[bytes, bytes, bytes, str, int, int]]) -> Any:
    """One service's span export: (trace id, span id, parent id, name, kind, start s)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    attr = rs.resource.attributes.add()
    attr.key, attr.value.string_value = "service.name", service
    ss = rs.scope_spans.add()
    for trace, span_id, parent, name, kind, start_s in spans:
        span = ss.spans.add()
        span.trace_id, span.span_id, span.parent_span_id = trace, span_id, parent
        span.name, span.kind = name, kind
        span.start_time_unix_nano = BASE_NS + start_s * 10**9
        span.end_time_unix_nano = span.start_time_unix_nano + 5_000_000
    return request


def test_a_client_span_naming_no_peer_is_known_by_the_span_that_answered_it() -> None:
    # traces rebuilt from span files: no attributes, client spans named by their HTTP verb;
    # the gateway calls two services with "GET", and "POST" only ever reaches orders
    gateway, orders, users = [], [], []
    for k in range(12):
        trace = k.to_bytes(16, "big")
        root, call = (100 + k).to_bytes(8, "big"), (200 + k).to_bytes(8, "big")
        gateway.append((trace, root, b"", "/*", 2, k))
        callee = orders if k % 3 else users
        verb = "POST" if k in (4, 8, 11) else "GET"
        gateway.append((trace, call, root, verb, 3, k))
        route = "/api/orders" if callee is orders else "/api/users"
        if k < 10:  # the last two calls' answers are not in the table (lost, or not yet in)
            callee.append((trace, (300 + k).to_bytes(8, "big"), call, route, 2, k))
    # a POST that ended long before the table's end, answered by nothing: the callee is not
    # instrumented (or its spans were lost), and another than orders may have answered it
    gateway.append((b"x" * 16, b"y" * 8, b"z" * 8, "POST", 3, 3))
    table = spans_table(
        [_export("gateway", gateway), _export("orders", orders), _export("users", users)]
    )
    frame = span_signals(table, interval_s=60)
    edges = {
        s: _value(frame, "service:gateway", s)[0] * 60
        for s in frame.filter(pl.col("signal").str.starts_with("edge.rate_per_s"))["signal"]
    }
    # k < 10: users answers k = 0, 3, 6, 9, orders the other six (POST at k = 4, 8); k = 10
    # (GET) has no answer in the table and the gateway's GETs have two: it stays a GET; k = 11
    # (POST) has none either, but it ends after the table's last start (its answer may come
    # after it), and every POST the table answers, orders did
    assert edges == {
        "edge.rate_per_s{peer=operation:users /api/users}": 4,
        "edge.rate_per_s{peer=operation:orders /api/orders}": 7,
        "edge.rate_per_s{peer=operation:GET}": 1,
        "edge.rate_per_s{peer=operation:POST}": 1,
    }


def test_a_call_instrumented_with_its_url_alone_names_the_urls_host() -> None:
    # OpenTracing and older conventions put the called URL in http.url, without server.address;
    # the URL's host is the peer (and the URL stays in the attributes)
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    attr = rs.resource.attributes.add()
    attr.key, attr.value.string_value = "service.name", "checkout"
    ss = rs.scope_spans.add()
    urls = [
        ("http.url", "http://payments.example.com:8443/v1/charge?id=1"),
        ("url.full", "https://key@api.stripe.com/v1/charges"),
        ("peer.hostname", "ledger"),  # OpenTracing's name of the peer's host
    ]
    for k, (key, url) in enumerate(urls):
        span = ss.spans.add()
        span.trace_id, span.span_id = bytes([k + 1]) * 16, bytes([k + 1]) * 8
        span.name, span.kind = "GET", 3
        span.start_time_unix_nano = BASE_NS + k * 10**9
        span.end_time_unix_nano = span.start_time_unix_nano + 5_000_000
        kv = span.attributes.add()
        kv.key, kv.value.string_value = key, url
    table = spans_table([request])
    assert table.column("server_address").to_pylist() == [
        "payments.example.com",
        "api.stripe.com",
        "ledger",
    ]
    assert "charge?id=1" in table.column("attributes")[0].as_py()
    frame = span_signals(table, interval_s=60)
    peers = set(frame.filter(pl.col("signal").str.starts_with("edge.rate_per_s"))["signal"])
    assert peers == {
        "edge.rate_per_s{peer=external:payments.example.com}",
        "edge.rate_per_s{peer=external:api.stripe.com}",
        "edge.rate_per_s{peer=external:ledger}",
    }
