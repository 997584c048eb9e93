"""Metrics: OTLP ExportMetricsServiceRequest -> series and points tables.

Schema-less: every metric whatever its name becomes series (identity = name, kind, unit,
temporality, resource attributes and point attributes) and points. Gauges and sums keep their
value; histograms keep count, sum, bucket counts and bounds; exponential histograms are turned
into explicit bounds (base 2^(2^-scale)); summaries keep their quantiles. Cumulative sums stay
cumulative here: rates are derived by the world model, which knows the previous point.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import orjson
import pyarrow as pa
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from pipeline.ingest.resource import service_of
from pipeline.ingest.spans import any_value
from schemas.segments import METRIC_POINTS, METRIC_SERIES


def series_id(identity: list[Any]) -> int:
    """Stable 64-bit id of a series identity (same on every worker and every run)."""
    digest = hashlib.blake2b(
        orjson.dumps(identity, option=orjson.OPT_SORT_KEYS), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big")


class MetricColumns:
    """Column builders for the points of some requests, and the series they belong to."""

    def __init__(self) -> None:
        self.points: dict[str, list[Any]] = {f.name: [] for f in METRIC_POINTS}
        # the series' rows as columns, and each series id's row: a row as a dict per series
        # would take several times the memory in a batch of many new series
        self.series: dict[str, list[Any]] = {f.name: [] for f in METRIC_SERIES}
        self.series_row: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.points["series_id"])

    def _series(
        self,
        name: str,
        kind: str,
        unit: str,
        temporality: int | None,
        monotonic: bool | None,
        resource: dict[str, Any],
        attrs: dict[str, Any],
        resource_json: str,
        time_unix_nano: int,
    ) -> int:
        sid = series_id([name, kind, unit, temporality, resource, attrs])
        columns = self.series
        row = self.series_row.get(sid)
        if row is not None:
            first = columns["first_seen_unix_nano"]
            first[row] = min(first[row], time_unix_nano)
            return sid
        self.series_row[sid] = len(columns["series_id"])
        for column, value in (
            ("series_id", sid),
            ("first_seen_unix_nano", time_unix_nano),
            ("name", name),
            ("kind", kind),
            ("unit", unit or None),
            ("temporality", temporality),
            ("monotonic", monotonic),
            ("service", service_of(resource)),
            ("attributes", orjson.dumps(attrs, option=orjson.OPT_SORT_KEYS).decode()),
            ("resource_attributes", resource_json),
        ):
            columns[column].append(value)
        return sid

    def _point(self, sid: int, dp: Any, **values: Any) -> None:
        p = self.points
        p["series_id"].append(sid)
        p["time_unix_nano"].append(dp.time_unix_nano)
        p["start_unix_nano"].append(getattr(dp, "start_time_unix_nano", 0) or None)
        for col in (
            "value",
            "count",
            "sum",
            "bucket_counts",
            "explicit_bounds",
            "quantiles",
            "quantile_values",
        ):
            p[col].append(values.get(col))

    def add_request(self, request: ExportMetricsServiceRequest) -> int:
        added = 0
        for rm in request.resource_metrics:
            resource = {kv.key: any_value(kv.value) for kv in rm.resource.attributes}
            resource_json = orjson.dumps(resource, option=orjson.OPT_SORT_KEYS).decode()
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    added += self._add_metric(metric, resource, resource_json)
        return added

    def _add_metric(self, metric: Any, resource: dict[str, Any], resource_json: str) -> int:
        kind = metric.WhichOneof("data")
        if kind is None:
            return 0
        data = getattr(metric, kind)
        temporality = getattr(data, "aggregation_temporality", None)
        monotonic = getattr(data, "is_monotonic", None) if kind == "sum" else None
        n = 0
        for dp in data.data_points:
            attrs = {kv.key: any_value(kv.value) for kv in dp.attributes}
            sid = self._series(
                metric.name,
                kind,
                metric.unit,
                temporality,
                monotonic,
                resource,
                attrs,
                resource_json,
                dp.time_unix_nano,
            )
            if kind in ("gauge", "sum"):
                which = dp.WhichOneof("value")
                value = (
                    float(dp.as_int)
                    if which == "as_int"
                    else dp.as_double
                    if which == "as_double"
                    else None
                )
                self._point(sid, dp, value=value)
            elif kind == "histogram":
                self._point(
                    sid,
                    dp,
                    count=dp.count,
                    sum=dp.sum if dp.HasField("sum") else None,
                    bucket_counts=list(dp.bucket_counts),
                    explicit_bounds=list(dp.explicit_bounds),
                )
            elif kind == "exponential_histogram":
                bounds, counts = _exponential_to_explicit(dp)
                self._point(
                    sid,
                    dp,
                    count=dp.count,
                    sum=dp.sum if dp.HasField("sum") else None,
                    bucket_counts=counts,
                    explicit_bounds=bounds,
                )
            elif kind == "summary":
                self._point(
                    sid,
                    dp,
                    count=dp.count,
                    sum=dp.sum,
                    quantiles=[q.quantile for q in dp.quantile_values],
                    quantile_values=[q.value for q in dp.quantile_values],
                )
            n += 1
        return n

    def tables(self) -> tuple[pa.Table, pa.Table]:
        """Series by id, points by (series, time): runs of one id, small time steps."""
        series = pa.Table.from_pydict(self.series, schema=METRIC_SERIES)
        points = pa.Table.from_pydict(self.points, schema=METRIC_POINTS)
        if series.num_rows > 1:
            series = series.sort_by("series_id")
        if points.num_rows > 1:
            points = points.sort_by([("series_id", "ascending"), ("time_unix_nano", "ascending")])
        return series, points


def _exponential_to_explicit(dp: Any) -> tuple[list[float], list[int]]:
    """Explicit upper bounds and counts of an exponential histogram point (negatives first)."""
    base = 2.0 ** (2.0**-dp.scale)
    neg = list(dp.negative.bucket_counts)
    pos = list(dp.positive.bucket_counts)
    bounds: list[float] = []
    counts: list[int] = []
    # negative buckets, most negative first: bucket i covers (-base^(off+i+1), -base^(off+i)]
    for i in reversed(range(len(neg))):
        bounds.append(-(base ** (dp.negative.offset + i)))
        counts.append(neg[i])
    bounds.append(0.0)
    counts.append(dp.zero_count)
    for i in range(len(pos)):
        bounds.append(base ** (dp.positive.offset + i + 1))
        counts.append(pos[i])
    counts.append(0)  # OTLP explicit histograms have len(bounds)+1 buckets
    return bounds, counts


def metrics_tables(requests: Iterable[ExportMetricsServiceRequest]) -> tuple[pa.Table, pa.Table]:
    builder = MetricColumns()
    for request in requests:
        builder.add_request(request)
    return builder.tables()
