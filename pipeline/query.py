"""Queries over the segment store: logs, traces, metric series.

Every query prunes first with the manifests (signal, time range, services), then scans only the
surviving Parquet files with polars, with the filters pushed down into the scan. Log queries
also prune by the template dictionary: a template or text query turns into a set of template ids
before any log row is read.

Template patterns are matched by polars (the Rust ``regex`` crate): its matching time is linear in
the text whatever the pattern, so a pattern such as ``(x+x+)+y`` cannot stall a query the way a
backtracking engine does; its syntax has no look-around and no back-references.

Results come in pages: ``After`` marks where a page ended (the sort key of its last row and how
many rows with that key were already returned), and the next page starts right after it.
"""

from __future__ import annotations

import binascii
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
class After:
    """Where a page ended: rows sorted by ``key`` resume after ``skip`` rows whose key is ``key``
    (rows can share a timestamp, so the key alone does not say where a page stopped)."""

    key: int
    skip: int


@dataclass(frozen=True)
class Page:
    rows: list[dict[str, Any]]
    next: After | None


def keyset_page(
    frame: pl.LazyFrame, key: str, after: After | None, limit: int | None
) -> tuple[pl.DataFrame, After | None]:
    """One page of ``frame`` in ``key`` order (stable: equal keys keep the scan's order), with
    where the next page starts, or None when this page reached the end (``limit`` None: all)."""
    if limit is not None and limit < 1:
        raise QueryError("limit must be at least 1")
    skip = 0
    if after is not None:
        frame = frame.filter(pl.col(key) >= after.key)
        skip = after.skip
    # one row more than the page, to know whether another page follows
    collected = (
        frame.sort(key, maintain_order=True)
        .slice(skip, None if limit is None else limit + 1)
        .collect()
    )
    if limit is None or collected.height <= limit:
        return collected, None
    page = collected.head(limit)
    last = int(page[key][-1])
    ties = int((page[key] == last).sum())
    return page, After(last, ties + (skip if after is not None and last == after.key else 0))


def list_page(
    rows: list[dict[str, Any]], key: str, after: After | None, limit: int | None
) -> tuple[list[dict[str, Any]], After | None]:
    """``keyset_page`` for rows already in memory, sorted by ``key``."""
    if limit is not None and limit < 1:
        raise QueryError("limit must be at least 1")
    start = 0
    if after is not None:
        start = next((i for i, r in enumerate(rows) if int(r[key]) >= after.key), len(rows))
        start += after.skip
    if limit is None:
        return rows[start:], None
    page = rows[start : start + limit]
    if start + limit >= len(rows):
        return page, None
    last = int(page[-1][key])
    ties = sum(1 for r in page if int(r[key]) == last)
    return page, After(last, ties + (after.skip if after is not None and last == after.key else 0))


def regex_matches(pattern: str, texts: list[str]) -> list[bool]:
    """Which texts ``pattern`` matches anywhere (polars' linear-time engine); QueryError if the
    pattern is not a valid regular expression or compiles too large."""
    try:
        found = pl.Series(["", *texts], dtype=pl.String).str.contains(pattern)
    except pl.exceptions.PolarsError as e:
        detail = str(e).split("\n\nThis error occurred", 1)[0]
        raise QueryError(
            f"template {pattern!r} is not a usable regular expression: {detail}"
        ) from None
    return [bool(v) for v in found.to_list()[1:]]


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
        return self.page(
            services=services,
            time=time,
            min_severity=min_severity,
            template=template,
            text=text,
            limit=limit,
        ).rows

    def page(
        self,
        *,
        services: list[str] | None = None,
        time: TimeRange | None = None,
        min_severity: str | int | None = None,
        template: str | None = None,
        text: str | None = None,
        limit: int = 100,
        after: After | None = None,
    ) -> Page:
        """Up to ``limit`` matching log rows in time order, from ``after`` on. A ``text`` query
        drops rows whose rebuilt line lacks the text after the page is cut, so a page can hold
        fewer rows and still have a next one."""
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
            if template is not None:
                ids = list(dictionary)
                matched = regex_matches(template, [dictionary[tid] for tid in ids])
                wanted = {tid for tid, hit in zip(ids, matched, strict=True) if hit}
                if not wanted:
                    return Page([], None)
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
            return Page([], None)
        for f in filters:
            scan = scan.filter(f)
        frame, following = keyset_page(scan, "time_unix_nano", after, limit)
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
        return Page(rows, following)


def trace(
    store: SegmentStore, trace_id: str, time: TimeRange | None = None
) -> list[dict[str, Any]]:
    """Every stored span of one trace, parents before children by start time."""
    return trace_page(store, trace_id, time, limit=None).rows


def trace_page(
    store: SegmentStore,
    trace_id: str,
    time: TimeRange | None = None,
    *,
    limit: int | None = 100,
    after: After | None = None,
) -> Page:
    """Up to ``limit`` spans of one trace by start time, from ``after`` on."""
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
        return Page([], None)
    frame, following = keyset_page(
        scan.filter(pl.col("trace_id") == raw), "start_unix_nano", after, limit
    )
    out = []
    for row in frame.iter_rows(named=True):
        for key in ("trace_id", "span_id", "parent_span_id"):
            if row[key] is not None:
                row[key] = row[key].hex()
        for key in ("attributes", "resource_attributes", "events", "links"):
            if row[key] is not None:
                row[key] = orjson.loads(row[key])
        out.append(row)
    return Page(out, following)


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
    return metric_page(
        store, name, labels=labels, time=time, step_s=step_s, agg=agg, limit=None
    ).rows


def metric_page(
    store: SegmentStore,
    name: str,
    *,
    labels: dict[str, str] | None = None,
    time: TimeRange | None = None,
    step_s: float = 60.0,
    agg: str = "mean",
    limit: int | None = 100,
    after: After | None = None,
) -> Page:
    """``metric_series`` a page at a time: up to ``limit`` matching series by series id, from
    ``after`` on (a series without points in the range is left out of its page)."""
    if agg not in AGGREGATIONS:
        raise QueryError(f"agg {agg!r}: use one of {', '.join(AGGREGATIONS)}")
    if step_s <= 0:
        raise QueryError("step must be > 0 seconds")
    labels = labels or {}
    time = time or TimeRange()
    series_scan = _scan(store, store.manifests("metric_series"))
    if series_scan is None:
        return Page([], None)
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
    candidates, following = list_page(
        sorted(chosen.values(), key=lambda c: int(c["series_id"])), "series_id", after, limit
    )
    chosen = {int(c["series_id"]): c for c in candidates}
    if not chosen:
        return Page([], following)
    points_scan = _scan(
        store,
        store.select(
            "metrics", start_unix_nano=time.start_unix_nano, end_unix_nano=time.end_unix_nano
        ),
    )
    if points_scan is None:
        return Page([], None)
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
    return Page([s for s in chosen.values() if s.get("points")], following)
