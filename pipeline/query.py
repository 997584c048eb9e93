"""Queries over the segment store: logs, traces, metric series.

Every query prunes first with the manifests (signal, time range, services), then scans only the
surviving Parquet files with polars, with the filters pushed down into the scan. Log queries
also prune by the template dictionary: a template or text query turns into a set of template ids
before any log row is read.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass
from typing import Any

import orjson
import polars as pl

from pipeline.ingest.logs import MinerStates, split_template_id
from pipeline.segments.store import Manifest, SegmentStore

SEVERITY_NAMES = {
    "trace": 1,
    "debug": 5,
    "info": 9,
    "warn": 13,
    "warning": 13,
    "error": 17,
    "fatal": 21,
}


class QueryError(ValueError):
    """A query argument is invalid; the message says which and why."""


@dataclass(frozen=True)
class TimeRange:
    start_unix_nano: int | None = None
    end_unix_nano: int | None = None


def _scan(store: SegmentStore, manifests: list[Manifest]) -> pl.LazyFrame | None:
    files = [store.uri(m) for m in manifests if m.rows > 0]
    if not files:
        return None
    if not store.local:
        raise QueryError("queries read a local segment root for now")
    return pl.scan_parquet(files)


def severity_number(value: str | int | None) -> int | None:
    if value is None or isinstance(value, int):
        return value
    if value.isdigit():
        return int(value)
    try:
        return SEVERITY_NAMES[value.lower()]
    except KeyError:
        raise QueryError(
            f"severity {value!r}: use a number 1-24 or one of {', '.join(SEVERITY_NAMES)}"
        ) from None


class LogQuery:
    """Logs by service, time, severity, template and text, rebuilt to their original lines."""

    def __init__(self, store: SegmentStore, topic: str = "otlp_logs") -> None:
        self.store = store
        self.states = MinerStates(store.state_dir(), topic)

    def templates(self) -> dict[int, str]:
        """The template dictionary: every template id seen in the store with its text."""
        out: dict[int, str] = {}
        for m in self.store.manifests("log_templates"):
            table = self.store.read(m)
            for tid, text in zip(
                table["template_id"].to_pylist(), table["template"].to_pylist(), strict=True
            ):
                out[int(tid)] = str(text)  # later segments hold the generalised text
        return out

    def run(
        self,
        *,
        services: list[str] | None = None,
        time: TimeRange | None = None,
        min_severity: str | int | None = None,
        template: str | None = None,
        text: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        time = time or TimeRange()
        manifests = self.store.select(
            "logs",
            start_unix_nano=time.start_unix_nano,
            end_unix_nano=time.end_unix_nano,
            services=services,
        )
        filters: list[pl.Expr] = []
        if template is not None or text is not None:
            dictionary = self.templates()
            pattern = re.compile(template) if template is not None else None
            if pattern is not None:
                wanted = {tid for tid, t in dictionary.items() if pattern.search(t)}
                if not wanted:
                    return []
                filters.append(pl.col("template_id").is_in(sorted(wanted)))
            if text is not None:
                in_template = sorted(tid for tid, t in dictionary.items() if text in t)
                in_params = (
                    pl.col("params")
                    .list.eval(pl.element().str.contains(text, literal=True))
                    .list.any()
                )
                filters.append(pl.col("template_id").is_in(in_template) | in_params)
        if time.start_unix_nano is not None:
            filters.append(pl.col("time_unix_nano") >= time.start_unix_nano)
        if time.end_unix_nano is not None:
            filters.append(pl.col("time_unix_nano") <= time.end_unix_nano)
        if services:
            filters.append(pl.col("service").cast(pl.String).is_in(services))
        sev = severity_number(min_severity)
        if sev is not None:
            filters.append(pl.col("severity_number") >= sev)
        scan = _scan(self.store, manifests)
        if scan is None:
            return []
        for f in filters:
            scan = scan.filter(f)
        frame = scan.sort("time_unix_nano").head(limit).collect()
        rows = []
        for row in frame.iter_rows(named=True):
            params = list(row["params"])
            line = self.states.reconstruct(row["template_id"], params)
            if text is not None and text not in line:
                continue
            rows.append(
                {
                    "time_unix_nano": row["time_unix_nano"],
                    "service": row["service"],
                    "severity_number": row["severity_number"],
                    "severity_text": row["severity_text"],
                    "template_id": row["template_id"],
                    "template": self.states.template_text(row["template_id"]),
                    "partition": split_template_id(row["template_id"])[0],
                    "line": line,
                    "trace_id": row["trace_id"].hex() if row["trace_id"] else None,
                    "span_id": row["span_id"].hex() if row["span_id"] else None,
                }
            )
        return rows


def trace(
    store: SegmentStore, trace_id: str, time: TimeRange | None = None
) -> list[dict[str, Any]]:
    """Every stored span of one trace, parents before children by start time."""
    try:
        raw = binascii.unhexlify(trace_id)
    except (binascii.Error, ValueError):
        raise QueryError(f"trace id {trace_id!r} is not hex") from None
    if len(raw) != 16:
        raise QueryError(f"trace id must be 32 hex characters, got {len(trace_id)}")
    time = time or TimeRange()
    scan = _scan(
        store,
        store.select(
            "spans", start_unix_nano=time.start_unix_nano, end_unix_nano=time.end_unix_nano
        ),
    )
    if scan is None:
        return []
    frame = scan.filter(pl.col("trace_id") == raw).sort("start_unix_nano").collect()
    out = []
    for row in frame.iter_rows(named=True):
        for key in ("trace_id", "span_id", "parent_span_id"):
            if row[key] is not None:
                row[key] = row[key].hex()
        for key in ("attributes", "resource_attributes", "events", "links"):
            if row[key] is not None:
                row[key] = orjson.loads(row[key])
        out.append(row)
    return out


AGGREGATIONS = ("mean", "max", "min", "sum", "last", "count")


def metric_series(
    store: SegmentStore,
    name: str,
    *,
    labels: dict[str, str] | None = None,
    time: TimeRange | None = None,
    step_s: float = 60.0,
    agg: str = "mean",
) -> list[dict[str, Any]]:
    """Series of one metric matching labels (point or resource attributes), aggregated per step.

    Gauges and sums aggregate their value; histograms and summaries their count.
    """
    if agg not in AGGREGATIONS:
        raise QueryError(f"agg {agg!r}: use one of {', '.join(AGGREGATIONS)}")
    if step_s <= 0:
        raise QueryError("step must be > 0 seconds")
    labels = labels or {}
    time = time or TimeRange()
    series_scan = _scan(store, store.manifests("metric_series"))
    if series_scan is None:
        return []
    series = (
        series_scan.filter(pl.col("name").cast(pl.String) == name).unique("series_id").collect()
    )
    chosen: dict[int, dict[str, Any]] = {}
    for row in series.iter_rows(named=True):
        attrs = orjson.loads(row["attributes"] or "{}")
        resource = orjson.loads(row["resource_attributes"] or "{}")
        merged = {**resource, **attrs}
        if all(str(merged.get(k)) == v for k, v in labels.items()):
            chosen[int(row["series_id"])] = {
                "series_id": int(row["series_id"]),
                "kind": row["kind"],
                "service": row["service"],
                "labels": merged,
            }
    if not chosen:
        return []
    points_scan = _scan(
        store,
        store.select(
            "metrics", start_unix_nano=time.start_unix_nano, end_unix_nano=time.end_unix_nano
        ),
    )
    if points_scan is None:
        return []
    step_ns = int(step_s * 1e9)
    scan = points_scan.filter(pl.col("series_id").is_in(sorted(chosen)))
    if time.start_unix_nano is not None:
        scan = scan.filter(pl.col("time_unix_nano") >= time.start_unix_nano)
    if time.end_unix_nano is not None:
        scan = scan.filter(pl.col("time_unix_nano") <= time.end_unix_nano)
    value = pl.coalesce(pl.col("value"), pl.col("count").cast(pl.Float64))
    agg_expr = {
        "mean": value.mean(),
        "max": value.max(),
        "min": value.min(),
        "sum": value.sum(),
        "last": value.sort_by("time_unix_nano").last(),
        "count": value.count().cast(pl.Float64),
    }[agg]
    frame = (
        scan.with_columns(((pl.col("time_unix_nano") // step_ns) * step_ns).alias("bucket"))
        .group_by("series_id", "bucket")
        .agg(agg_expr.alias("value"))
        .sort("series_id", "bucket")
        .collect()
    )
    for sid, bucket, v in frame.iter_rows():
        chosen[int(sid)].setdefault("points", []).append([int(bucket), v])
    return [s for s in chosen.values() if s.get("points")]
