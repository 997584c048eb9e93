"""Derived signals: per interval of event time, the numbers the baselines learn and the search reads.

Every function takes a segment table and returns rows ``(interval_start_unix_nano, entity,
signal, value, exposure, resolution)`` as a polars DataFrame. ``entity`` is ``"<kind>:<name>"`` (``service:checkout``,
``operation:checkout POST /pay``, ``host:node-3``) and ``signal`` names the number, with the
qualifiers that make a series unique in braces (``edge.latency_p95_ms{peer=postgresql:orders}``).
``exposure`` and ``resolution`` say how precisely the value was measured (0 when they do not
apply), for the baselines' noise floors: ``value * exposure`` is the number of events the value
counted (a rate per second: the interval's length; an error ratio: its request count), and
``resolution`` is the step in which the value is known (a quantile from histogram buckets: the
width of the bucket it fell in; a statistic of few observations, a span latency quantile, a
histogram's or a summary's: its sampling error over them, ``sampling_resolution``, when wider).

- Spans: per service and per operation (server-side spans: kind server/consumer, or roots):
  request rate, error ratio, latency p50/p95/p99; per caller and callee (client-side spans):
  the same, so a dependency nobody instrumented still has signals.
- Logs: per service, line rate and error-level rate; per template, its rate; templates seen
  for the first time are reported by ``new_templates``.
- Metrics: every numeric series whatever its name. Gauges give their mean; cumulative
  monotonic sums (counters) become rates (resets handled), cumulative up-down counters are
  levels as gauges are, and a whole number of things (its unit a UCUM annotation,
  ``{thread}``) is known to one of them; delta sums become rates; histograms give p50/p95/p99 from the
  bucket increments; summaries their quantiles (``p50``, ``p90``, ... as histograms name them)
  and the average of the observations each point adds (count and sum are cumulative since the
  start time), each known to its sampling error over those observations. Cumulative series
  need the previous point, which ``MetricDeriver`` keeps per series (bounded, counted,
  snapshot-able). Series that count requests split by outcome (OpenTelemetry's
  ``error.type`` and status code attributes, Prometheus' ``code`` / ``status`` labels) also
  give their group's ``error_ratio``: the share of the group's requests that failed, with the
  request count as exposure, 0 in an interval where requests succeeded. Without it an error
  shows only as a series that never existed before.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import orjson
import polars as pl
import pyarrow as pa

from pipeline.ingest.resource import is_unnamed, service_of
from pipeline.worldmodel.graph import dependency_key_expr

SERVER_KINDS = (2, 5)  # OTLP SpanKind server, consumer
CLIENT_KINDS = (3, 4)  # client, producer
ERROR_STATUS = 2
ERROR_SEVERITY = 17
QUANTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
RATIOS = ("error_ratio",)  # request stats that are proportions of the interval's requests

SIGNAL_COLUMNS = {
    "interval_start_unix_nano": pl.Int64,
    "entity": pl.String,
    "signal": pl.String,
    "value": pl.Float64,
    "exposure": pl.Float64,
    "resolution": pl.Float64,
}
_COUNT = "__count"  # hidden per-group event count behind ratios


def empty_signals() -> pl.DataFrame:
    return pl.DataFrame(schema=SIGNAL_COLUMNS)


def _bucket(col: str, interval_ns: int) -> pl.Expr:
    return ((pl.col(col) // interval_ns) * interval_ns).alias("interval_start_unix_nano")


def _melt(
    frame: pl.DataFrame, prefix: str, interval_s: float, ratios: tuple[str, ...] = ()
) -> pl.DataFrame:
    """Wide per-group stats -> long signal rows. Stats named ``*rate_per_s`` are counts over the
    interval (exposure ``interval_s``); ``ratios`` are proportions of the group's ``__count``
    events (exposure that count)."""
    keys = ("interval_start_unix_nano", "entity", "qualifier", _COUNT)
    value_columns = [c for c in frame.columns if c not in keys]
    long = frame.unpivot(
        index=[c for c in keys if c in frame.columns],
        on=value_columns,
        variable_name="stat",
        value_name="value",
    )
    name = pl.lit(prefix + ".") + pl.col("stat")
    if "qualifier" in long.columns:
        name = name + pl.col("qualifier")
    count = pl.col(_COUNT) if _COUNT in long.columns else pl.lit(0.0)
    exposure = (
        pl.when(pl.col("stat").str.ends_with("rate_per_s"))
        .then(pl.lit(float(interval_s)))
        .when(pl.col("stat").is_in(list(ratios)))
        .then(count)
        .otherwise(0.0)
    )
    # a latency quantile of the group's ``__count`` spans: known to its sampling error
    resolution: pl.Expr = pl.lit(0.0, pl.Float64)
    for quantile_name, q in QUANTILES:
        resolution = (
            pl.when(pl.col("stat") == f"latency_{quantile_name}_ms")
            .then(pl.col("value").abs() * sampling_factor(q) / count.cast(pl.Float64).sqrt())
            .otherwise(resolution)
        )
    return long.select(
        pl.col("interval_start_unix_nano").cast(pl.Int64),
        pl.col("entity"),
        name.alias("signal"),
        pl.col("value").cast(pl.Float64),
        exposure.cast(pl.Float64).alias("exposure"),
        resolution.fill_nan(0.0).fill_null(0.0).cast(pl.Float64).alias("resolution"),
    )


def _request_stats(interval_s: float) -> list[pl.Expr]:
    ms = pl.col("duration_ns") / 1e6
    return [
        pl.len().alias(_COUNT),
        (pl.len() / interval_s).alias("rate_per_s"),
        (pl.col("status_code") == ERROR_STATUS).mean().alias("error_ratio"),
        *[ms.quantile(q, "linear").alias(f"latency_{name}_ms") for name, q in QUANTILES],
    ]


PEER_COLUMNS = (
    "peer_service",
    "db_system",
    "db_name",
    "messaging_system",
    "messaging_destination",
    "server_address",
    "rpc_service",
    "name",
)


def default_callee(frame: pl.DataFrame, spans: pl.DataFrame | None = None) -> pl.Series:
    """Entity key of what each client span of ``frame`` calls.

    A span that names its peer (``peer.service``, an address, a database, a queue) calls that,
    named as the dependency graph names it. One that names none is known by who answered it:
    the operation (``operation:<service> <name>``) of the span of another service that is its
    child among ``spans``, the table it came in with; else, when its answer may lie beyond the
    table's end, the one operation that answered every paired span of the same caller and name
    there. A client span's name alone may say
    what it calls (an RPC method) or not (``GET``, ``HTTP POST``, whatever a caller calls with
    it), so only when no span of the table answers it, nor any of its caller's spans of the
    same name, is it known by its name (``operation:<name>``)."""
    frame = frame.with_columns(
        [pl.col(c).cast(pl.String) for c in PEER_COLUMNS if c in frame.columns]
    )
    named = dependency_key_expr()
    by_name = pl.lit("operation:") + pl.col("name")
    plain = frame.select(pl.coalesce(named, by_name).alias("callee")).to_series()
    unnamed = frame.select(named.is_null().any()).item()
    if spans is None or "parent_span_id" not in spans.columns or not unnamed:
        return plain
    answers = spans.filter(pl.col("parent_span_id").is_not_null()).select(
        "trace_id",
        pl.col("parent_span_id").alias("span_id"),
        pl.col("service").cast(pl.String).alias("answered_by"),
        (
            pl.lit("operation:")
            + pl.col("service").cast(pl.String)
            + " "
            + pl.col("name").cast(pl.String)
        ).alias("answer"),
    )
    rows = frame.with_row_index("_row")
    answered = (
        rows.select("_row", "trace_id", "span_id", "service")
        .join(answers, on=["trace_id", "span_id"])
        .filter(pl.col("answered_by") != pl.col("service"))
        .group_by("_row")
        .agg(pl.col("answer").sort().first())
    )
    paired = rows.join(answered, on="_row", how="left").sort("_row")
    # the one operation answering a caller's spans of a name, where the table shows only one
    only = (
        paired.filter(pl.col("answer").is_not_null())
        .group_by("service", "name")
        .agg(pl.col("answer").unique())
        .filter(pl.col("answer").list.len() == 1)
        .select("service", "name", pl.col("answer").list.first().alias("only"))
    )
    # an unanswered call may have been answered after the table's end (a span that began
    # before its last start and ended after it); one that ended before was not answered by
    # a span worldline received (the callee is not instrumented, its spans were lost)
    last_start = spans.get_column("start_unix_nano").max()
    paired = paired.join(only, on=["service", "name"], how="left").sort("_row")
    straddles = (pl.col("start_unix_nano") + pl.col("duration_ns")) > pl.lit(last_start)
    return paired.select(
        pl.coalesce(
            named, pl.col("answer"), pl.when(straddles).then(pl.col("only")), by_name
        ).alias("callee")
    ).to_series()


def span_signals(
    table: pa.Table,
    interval_s: float = 60.0,
    callee: Callable[[pl.DataFrame, pl.DataFrame], pl.Series] = default_callee,
) -> pl.DataFrame:
    """Service, operation and edge signals of a span table, per interval."""
    if table.num_rows == 0:
        return empty_signals()
    interval_ns = int(interval_s * 1e9)
    spans = pl.from_arrow(table)
    assert isinstance(spans, pl.DataFrame)
    spans = spans.with_columns(
        _bucket("start_unix_nano", interval_ns),
        pl.col("service").cast(pl.String),
        pl.col("name").cast(pl.String),
    )
    server = spans.filter(pl.col("kind").is_in(SERVER_KINDS) | pl.col("parent_span_id").is_null())
    parts = []
    if server.height:
        per_service = server.group_by("interval_start_unix_nano", "service").agg(
            _request_stats(interval_s)
        )
        parts.append(
            _melt(
                per_service.with_columns(
                    (pl.lit("service:") + pl.col("service")).alias("entity")
                ).drop("service"),
                "span",
                interval_s,
                RATIOS,
            )
        )
        per_op = server.group_by("interval_start_unix_nano", "service", "name").agg(
            _request_stats(interval_s)
        )
        parts.append(
            _melt(
                per_op.with_columns(
                    (pl.lit("operation:") + pl.col("service") + " " + pl.col("name")).alias(
                        "entity"
                    )
                ).drop("service", "name"),
                "span",
                interval_s,
                RATIOS,
            )
        )
    client = spans.filter(pl.col("kind").is_in(CLIENT_KINDS))
    if client.height:
        client = client.with_columns(callee(client, spans).alias("callee"))
        per_edge = client.group_by("interval_start_unix_nano", "service", "callee").agg(
            _request_stats(interval_s)
        )
        parts.append(
            _melt(
                per_edge.with_columns(
                    (pl.lit("service:") + pl.col("service")).alias("entity"),
                    (pl.lit("{peer=") + pl.col("callee") + "}").alias("qualifier"),
                ).drop("service", "callee"),
                "edge",
                interval_s,
                RATIOS,
            )
        )
    return pl.concat(parts) if parts else empty_signals()


def log_signals(table: pa.Table, interval_s: float = 60.0) -> pl.DataFrame:
    """Per service line rate and error-level rate; per template its rate."""
    if table.num_rows == 0:
        return empty_signals()
    interval_ns = int(interval_s * 1e9)
    logs = pl.from_arrow(
        table.select(["time_unix_nano", "service", "severity_number", "template_id"])
    )
    assert isinstance(logs, pl.DataFrame)
    logs = logs.with_columns(
        _bucket("time_unix_nano", interval_ns),
        (pl.lit("service:") + pl.col("service").cast(pl.String)).alias("entity"),
    )
    per_service = logs.group_by("interval_start_unix_nano", "entity").agg(
        (pl.len() / interval_s).alias("rate_per_s"),
        ((pl.col("severity_number") >= ERROR_SEVERITY).sum() / interval_s).alias(
            "error_rate_per_s"
        ),
    )
    per_template = logs.group_by("interval_start_unix_nano", "entity", "template_id").agg(
        (pl.len() / interval_s).alias("template_rate_per_s")
    )
    per_template = per_template.with_columns(
        (pl.lit("{template=") + pl.col("template_id").cast(pl.String) + "}").alias("qualifier")
    ).drop("template_id")
    return pl.concat(
        [_melt(per_service, "log", interval_s), _melt(per_template, "log", interval_s)]
    )


def new_templates(table: pa.Table, known: set[int]) -> list[tuple[int, str, int]]:
    """Templates of a log table not in ``known``: (template_id, entity, first time seen)."""
    if table.num_rows == 0:
        return []
    logs = pl.from_arrow(table.select(["time_unix_nano", "service", "template_id"]))
    assert isinstance(logs, pl.DataFrame)
    first = (
        logs.filter(~pl.col("template_id").is_in(sorted(known)))
        .group_by("template_id")
        .agg(pl.col("time_unix_nano").min(), pl.col("service").cast(pl.String).first())
        .sort("template_id")
    )
    return [(int(t), f"service:{s}", int(ts)) for t, ts, s in first.iter_rows()]


@dataclass(slots=True)
class _Last:
    """The previous point of a cumulative series (slots: one is held per such series)."""

    time_unix_nano: int
    value: float
    buckets: tuple[float, ...] = ()
    total: float = 0.0  # a summary's sum
    start_unix_nano: int = 0  # a summary's start time


@dataclass
class MetricDeriver:
    """Turns metric points into per-interval signals; remembers the last point of cumulative series."""

    interval_s: float = 60.0
    max_series: int = 200_000
    last: OrderedDict[int, _Last] = field(default_factory=OrderedDict)
    dropped: dict[str, int] = field(
        default_factory=lambda: {"series_state_evicted": 0, "counter_reset": 0}
    )

    def derive(self, series: pa.Table, points: pa.Table) -> pl.DataFrame:
        if points.num_rows == 0:
            return empty_signals()
        meta = {}
        for row in series.to_pylist():
            meta[int(row["series_id"])] = row
        interval_ns = int(self.interval_s * 1e9)
        frame = pl.from_arrow(points)
        assert isinstance(frame, pl.DataFrame)
        frame = frame.sort("series_id", "time_unix_nano")
        rows_t: list[int] = []
        rows_e: list[str] = []
        rows_s: list[str] = []
        rows_v: list[float] = []
        rows_x: list[float] = []
        rows_r: list[float] = []
        names: dict[int, tuple[str, str] | None] = {}
        parts, counters = prometheus_conventions(meta)
        families: dict[_Family, dict[int, dict[tuple[str, float], float]]] = {}

        # (interval, entity, group) -> [failed, all] requests counted by outcome-split series
        outcomes: dict[tuple[int, str, str], list[float]] = {}
        outcome_of: dict[str, tuple[str, bool] | None] = {}

        def emit(t: int, entity: str, base: str, values: list[tuple[str, float, float, float]]):
            bucket = (t // interval_ns) * interval_ns
            for name, value, exposure, resolution in values:
                rows_t.append(bucket)
                rows_e.append(entity)
                rows_s.append(base + name)
                rows_v.append(value)
                rows_x.append(exposure)
                rows_r.append(resolution)
                if name == ".rate_per_s" and exposure > 0:
                    if base not in outcome_of:
                        outcome_of[base] = request_outcome(base)
                    split = outcome_of[base]
                    if split is not None:
                        group, failed = split
                        counts = outcomes.setdefault((bucket, entity, group), [0.0, 0.0])
                        counts[0] += value * exposure if failed else 0.0
                        counts[1] += value * exposure

        # one pass over the rows sorted by series (a group_by per series costs a gather each)
        for row in frame.iter_rows(named=True):
            sid_int = int(row["series_id"])
            t = int(row["time_unix_nano"])
            part = parts.get(sid_int)
            if part is not None:
                # one bucket, quantile, sum or count of a Prometheus histogram or summary:
                # gathered per family and time, read as one point below
                if row["value"] is not None and math.isfinite(row["value"]):
                    family, role = part
                    families.setdefault(family, {}).setdefault(t, {})[role] = float(row["value"])
                continue
            if sid_int not in names:
                found = meta.get(sid_int)
                names[sid_int] = None if found is None else self._names(found)
            named = names[sid_int]
            if named is None:
                continue
            entity, base = named
            info = counters.get(sid_int) or meta[sid_int]
            emit(t, entity, base, self._values(sid_int, info["kind"], info, row))
        for family in sorted(families):
            sid = family.sid
            for t, roles in sorted(families[family].items()):
                point = family.point(roles)
                if point is None:
                    self.dropped["histogram_incomplete"] = (
                        self.dropped.get("histogram_incomplete", 0) + 1
                    )
                    continue
                info, row = point
                row["time_unix_nano"] = t
                emit(t, family.entity, family.name, self._values(sid, info["kind"], info, row))
        for (bucket, entity, group), (failed, total) in outcomes.items():
            if total > 0:
                rows_t.append(bucket)
                rows_e.append(entity)
                rows_s.append(group + ".error_ratio")
                rows_v.append(failed / total)
                rows_x.append(total)
                rows_r.append(0.0)
        if not rows_t:
            return empty_signals()
        raw = pl.DataFrame(
            {
                "interval_start_unix_nano": rows_t,
                "entity": rows_e,
                "signal": rows_s,
                "value": rows_v,
                "exposure": rows_x,
                "resolution": rows_r,
            },
            schema=SIGNAL_COLUMNS,
        )
        return raw.group_by(
            "interval_start_unix_nano", "entity", "signal", maintain_order=True
        ).agg(pl.col("value").mean(), pl.col("exposure").mean(), pl.col("resolution").mean())

    @staticmethod
    def _names(info: dict[str, object]) -> tuple[str, str]:
        resource = orjson.loads(str(info.get("resource_attributes") or "{}"))
        attrs = orjson.loads(str(info.get("attributes") or "{}"))
        service = service_of(resource)
        host = resource.get("host.name") or resource.get("k8s.node.name")
        entity = (
            f"service:{service}"
            if not is_unnamed(service)
            else f"host:{host}"
            if host
            else f"service:{service}"
        )
        qualifier = ",".join(f"{k}={attrs[k]}" for k in sorted(attrs))
        base = str(info["name"]) + (f"{{{qualifier}}}" if qualifier else "")
        return entity, base

    def _remember(self, sid: int, last: _Last) -> _Last | None:
        previous = self.last.pop(sid, None)
        self.last[sid] = last
        if len(self.last) > self.max_series:
            self.last.popitem(last=False)
            self.dropped["series_state_evicted"] += 1
        return previous

    def _summary(
        self, sid: int, t: int, row: dict[str, object]
    ) -> list[tuple[str, float, float, float]]:
        """A summary point's average over the observations it adds (``_summary_population``)
        and its quantiles, named as a histogram's are (``p50``, ``p90``, ...), each known to its
        sampling error over those observations (none when their number cannot be told)."""
        qs = [float(q) for q in row["quantiles"] or []]  # type: ignore[attr-defined]
        vs = [float(v) for v in row["quantile_values"] or []]  # type: ignore[attr-defined]
        count = float(row["count"] or 0)  # type: ignore[arg-type]
        total = float(row["sum"] or 0.0)  # type: ignore[arg-type]
        start = int(row.get("start_unix_nano") or 0)  # type: ignore[call-overload]
        previous = self._remember(sid, _Last(t, count, (), total, start))
        n, added = _summary_population(previous, t, start, count, total)
        out = []
        if n > 0:
            average = added / n
            out.append((".average", average, 0.0, sampling_resolution(None, average, n)))
        for q, v in zip(qs, vs, strict=False):
            out.append((f".p{100 * q:g}", v, 0.0, sampling_resolution(q, v, n)))
        return out

    def _values(
        self, sid: int, kind: object, info: dict[str, object], row: dict[str, object]
    ) -> list[tuple[str, float, float, float]]:
        """(suffix, value, exposure, resolution) per derived value of one point: a histogram's
        rate counts its observations (exposure ``interval_s``) and its quantiles are known to a
        bucket's width; a monotonic sum's rate counts events when its unit says it counts
        (``counts_events``: exposure the seconds it was counted over), otherwise it may count
        anything (bytes, seconds) and is not a count."""
        t = int(row["time_unix_nano"])  # type: ignore[call-overload]
        if kind == "gauge":
            if row["value"] is None:
                return []
            level = float(row["value"])  # type: ignore[arg-type]
            return [("", level, 0.0, _level_resolution(info.get("unit"), level))]
        if kind == "sum":
            value = float(row["value"]) if row["value"] is not None else None  # type: ignore[arg-type]
            if value is None:
                return []
            if info.get("monotonic") is False and info.get("temporality") != 1:
                # a cumulative up-down counter (threads, queue length, connections in use) is
                # a level, as a gauge: its changes are no events and its rate no count
                return [("", value, 0.0, _level_resolution(info.get("unit"), value))]
            events = bool(info.get("monotonic")) and counts_events(info.get("unit"))
            if info.get("temporality") == 1:  # delta: the increase over [start, time)
                start = row.get("start_unix_nano")
                seconds = (
                    (t - int(start)) / 1e9  # type: ignore[call-overload]
                    if start and 0 < int(start) < t  # type: ignore[call-overload]
                    else self.interval_s
                )
                return [(".rate_per_s", value / seconds, seconds if events else 0.0, 0.0)]
            previous = self._remember(sid, _Last(t, value))
            if previous is None or t <= previous.time_unix_nano:
                return []
            delta = value - previous.value
            if delta < 0:  # counter reset: the new value is the increase since the reset
                self.dropped["counter_reset"] += 1
                delta = value
            seconds = (t - previous.time_unix_nano) / 1e9
            return [(".rate_per_s", delta / seconds, seconds if events else 0.0, 0.0)]
        if kind in ("histogram", "exponential_histogram"):
            counts = tuple(float(c) for c in (row["bucket_counts"] or []))  # type: ignore[attr-defined]
            bounds = [float(b) for b in (row["explicit_bounds"] or [])]  # type: ignore[attr-defined]
            if info.get("temporality") == 1:
                increments = counts
            else:
                previous = self._remember(sid, _Last(t, float(row["count"] or 0), counts))  # type: ignore[arg-type]
                if previous is None or len(previous.buckets) != len(counts):
                    return []
                increments = tuple(
                    max(0.0, a - b) for a, b in zip(counts, previous.buckets, strict=True)
                )
            total = sum(increments)
            if total <= 0:
                return []
            out = [(".rate_per_s", total / self.interval_s, self.interval_s, 0.0)]
            for name, q in QUANTILES:
                value, width = histogram_quantile_step(q, bounds, increments)
                # known to a bucket's width, and no better than its sampling error
                error = sampling_resolution(q, value, total)
                out.append((f".{name}", value, 0.0, max(width, error)))
            return out
        if kind == "summary":
            return self._summary(sid, t, row)
        return []


_NOT_QUALIFIERS = ("le", "quantile")
# attributes that split a request count by outcome: OpenTelemetry semantic conventions
# (``error.type`` is set only on failed requests), older instrumentations and Prometheus labels
_ERROR_TYPE = "error.type"
_STATUS_CODES = (
    "http.response.status_code",
    "http.status_code",
    "rpc.grpc.status_code",
    "otel.status_code",
    "status_code",
    "code",
    "status",
)
_FAILED_WORDS = frozenset({"error", "failure", "failed", "fail", "status_code_error"})


def request_outcome(base: str) -> tuple[str, bool] | None:
    """``(group, failed)`` of a series named ``name{k=v,...}`` whose qualifiers split its
    requests by outcome: the group is the name without the outcome qualifiers, and the series
    counts failures when ``error.type`` is set, an HTTP status is 5xx, a gRPC status is not OK
    (0) or a status says error. None when no qualifier speaks of the outcome."""
    name, brace, rest = base.partition("{")
    if not brace or not rest.endswith("}"):
        return None
    pairs = [part.partition("=") for part in rest[:-1].split(",")]
    if any(not sep for _, sep, _ in pairs):
        return None  # a value with a comma: the qualifiers cannot be told apart
    kept, outcome, failed = [], False, False
    for key, _, value in pairs:
        if key == _ERROR_TYPE:
            outcome = True
            failed = failed or value not in ("", "_OTHER_NONE")
        elif key in _STATUS_CODES:
            outcome = True
            failed = failed or _failed_status(key, value)
        else:
            kept.append(f"{key}={value}")
    if not outcome:
        return None
    return name + (f"{{{','.join(kept)}}}" if kept else ""), failed


def _failed_status(key: str, value: str) -> bool:
    text = value.strip().lower()
    if text.isdigit():
        code = int(text)
        return code != 0 if key == "rpc.grpc.status_code" else code >= 500
    if text.endswith("xx") and text[:1].isdigit():  # Prometheus' "5xx" classes
        return text[0] == "5"
    return text in _FAILED_WORDS


@dataclass(frozen=True, order=True)
class _Family:
    """A Prometheus histogram or summary sent as separate series (remote_write 1.0 carries
    no types): ``<base>_bucket{le=...}``, ``<base>{quantile=...}``, ``<base>_sum``,
    ``<base>_count``, sharing every other label. ``name`` is the base with those labels as
    qualifiers, as an OTLP histogram or summary of that name would be derived."""

    kind: str  # "histogram" or "summary"
    entity: str
    name: str

    @property
    def sid(self) -> int:
        """A series id of its own for the cumulative state (negative: never a stored id)."""
        digest = hashlib.blake2b(repr(self).encode(), digest_size=7).digest()
        return -1 - int.from_bytes(digest, "big")

    def point(
        self, roles: dict[tuple[str, float], float]
    ) -> tuple[dict[str, object], dict[str, object]] | None:
        """The family's parts at one time as an OTLP-shaped point (info, row) for
        ``MetricDeriver._values``, or None when they do not make one (no bucket at all)."""
        count = roles.get(("count", 0.0))
        if self.kind == "summary":
            qs = sorted(q for role, q in roles if role == "q")
            return (
                {"kind": "summary"},
                {
                    "quantiles": qs,
                    "quantile_values": [roles[("q", q)] for q in qs],
                    "count": count or 0.0,
                    "sum": roles.get(("sum", 0.0), 0.0),
                    # start unknown: counts are taken as increases over the previous point
                    "start_unix_nano": 0,
                },
            )
        les = sorted(le for role, le in roles if role == "le")
        if not les:
            return None
        cumulative = [roles[("le", le)] for le in les]
        bounds = [le for le in les if math.isfinite(le)]
        # every observation: the +Inf bucket, else the count, else the widest bucket
        overall = cumulative[-1] if math.isinf(les[-1]) or count is None else count
        edges = [0.0, *cumulative[: len(bounds)]]
        counts = [max(0.0, b - a) for a, b in zip(edges, edges[1:], strict=False)]
        counts.append(max(0.0, overall - edges[-1]))
        return (
            {"kind": "histogram", "temporality": 2},
            {"bucket_counts": counts, "explicit_bounds": bounds, "count": sum(counts)},
        )


def _unit_by_name(name: str) -> str:
    """A Prometheus counter's unit from its name (the naming conventions put base units in
    the name: ``_seconds_total``, ``_bytes_total``); one without a unit counts events."""
    for marker, unit in (("_seconds", "s"), ("_bytes", "By")):
        if marker in name:
            return unit
    return "1"


def _part(name: str, attrs: Mapping[str, object]) -> tuple[str, tuple[str, float]] | None:
    """(base name, role) of a series that may be part of a histogram or summary: a bucket
    ``("le", bound)``, a quantile ``("q", quantile)``, ``("sum", 0)`` or ``("count", 0)``."""
    try:
        if name.endswith("_bucket") and "le" in attrs:
            return name[: -len("_bucket")], ("le", float(str(attrs["le"])))
        if "quantile" in attrs:
            return name, ("q", float(str(attrs["quantile"])))
    except ValueError:  # a bound or quantile that is no number: an ordinary series
        return None
    for suffix in ("_sum", "_count"):
        if name.endswith(suffix):
            return name[: -len(suffix)], (suffix[1:], 0.0)
    return None


def prometheus_conventions(
    meta: dict[int, dict[str, object]],
) -> tuple[dict[int, tuple[_Family, tuple[str, float]]], dict[int, dict[str, object]]]:
    """Gauge series that follow Prometheus' naming conventions, as remote_write sends them.

    Returns the parts of histograms and summaries (series id -> (family, role), ``_part``)
    and the counters (series id -> its info as a cumulative monotonic sum: ``*_total``, and
    a ``*_count`` with no family), so that ``<base>_bucket{le="0.02"}`` is one bucket of a
    histogram, not a series of its own, and ``requests_total`` a rate with resets handled.
    A family is a histogram when it has buckets, else a summary when it has quantiles or
    both a sum and a count. Counters are recognised only without a unit (remote_write sends
    none; a unit says the sender typed the series)."""
    found: dict[int, tuple[tuple[str, str, str], tuple[str, float]] | None] = {}
    roles: dict[tuple[str, str, str], set[str]] = {}
    for sid, info in meta.items():
        if info.get("kind") != "gauge":
            continue
        entity, _ = MetricDeriver._names(info)
        attrs = orjson.loads(str(info.get("attributes") or "{}"))
        part = _part(str(info["name"]), attrs)
        found[sid] = None
        if part is not None:
            key = (entity, part[0], _qualifiers(attrs))
            found[sid] = (key, part[1])
            roles.setdefault(key, set()).add(part[1][0])
    parts: dict[int, tuple[_Family, tuple[str, float]]] = {}
    counters: dict[int, dict[str, object]] = {}
    for sid, entry in found.items():
        kinds = roles.get(entry[0], set()) if entry is not None else set()
        kind = (
            "histogram"
            if "le" in kinds
            else "summary"
            if "q" in kinds or {"sum", "count"} <= kinds
            else None
        )
        name = str(meta[sid]["name"])
        if entry is not None and kind is not None:
            (entity, base, qualifiers), role = entry
            named = base + (f"{{{qualifiers}}}" if qualifiers else "")
            parts[sid] = (_Family(kind, entity, named), role)
        elif name.endswith(("_total", "_count")) and not meta[sid].get("unit"):
            counters[sid] = {
                **meta[sid],
                "kind": "sum",
                "monotonic": True,
                "temporality": 2,
                "unit": _unit_by_name(name),
            }
    return parts, counters


def _qualifiers(attrs: Mapping[str, object]) -> str:
    return ",".join(f"{k}={attrs[k]}" for k in sorted(attrs) if k not in _NOT_QUALIFIERS)


def _summary_population(
    previous: _Last | None, t: int, start: int, count: float, total: float
) -> tuple[float, float]:
    """(count, sum) of the observations a summary point adds, or (0, 0) when that cannot be
    told. A summary's count and sum are cumulative since its start time: the increase over the
    previous point of the same run (same start, no reset), or, for a point whose start time
    is known and not before the previous point (a first point, a restart, or a summary of each
    period on its own), the point's own."""
    if (
        previous is not None
        and start == previous.start_unix_nano
        and count >= previous.value
        and t > previous.time_unix_nano
    ):
        return count - previous.value, total - previous.total
    if 0 < start < t and (previous is None or start >= previous.time_unix_nano):
        return count, total
    return 0.0, 0.0


def sampling_factor(quantile: float | None) -> float:
    """``k`` of ``sampling_resolution``: 1 for the average (``quantile`` None),
    ``sqrt(q / (1 - q)) / -ln(1 - q)`` for the ``q`` quantile (1.44 for the median, 1.30 p90,
    1.46 p95, 2.16 p99), 0 for the minimum and maximum (q 0 or 1), which have no such error."""
    if quantile is None:
        return 1.0
    if 0.0 < quantile < 1.0:
        return math.sqrt(quantile / (1.0 - quantile)) / -math.log1p(-quantile)
    return 0.0


def sampling_resolution(quantile: float | None, value: float, count: float) -> float:
    """Sampling error of a statistic of ``count`` observations (0 when the count is unknown):
    the average's (``quantile`` None) or a quantile's, as if the observations were exponential
    around it (latency-like: as variable as their mean), where both are asymptotically
    ``|value| * k / sqrt(count)`` (``sampling_factor``). A median of 470 requests is known to
    7 %, one of 5 requests to 64 %: a noisy statistic of a rarely called dependency is not
    evidence its spread learned from a few quiet intervals would say it is."""
    if count <= 0 or not math.isfinite(value):
        return 0.0
    return abs(value) * sampling_factor(quantile) / math.sqrt(count)


def counts_events(unit: object) -> bool:
    """Whether a monotonic sum with this unit counts events, one by one: the dimensionless
    unit ``1`` or a UCUM annotation alone (``{request}``, ``{restart}``), as OpenTelemetry's
    semantic conventions write counts. Bytes, seconds or no unit at all may be anything."""
    text = str(unit or "").strip()
    return text == "1" or (text.startswith("{") and text.endswith("}") and len(text) > 2)


def _level_resolution(unit: object, value: float) -> float:
    """The step in which a level (a gauge, an up-down counter) is known: 1 for a whole number
    of things, its unit a UCUM annotation alone as OpenTelemetry's semantic conventions write
    counts (``{thread}``, ``{connection}``, ``{message}``); 0 (exact) for anything else,
    fractions of an annotated unit (``{millicore}``) included. One thread more or one item
    queued is the least a count can move: a thread pool that sits on 22 or a queue that is
    empty nearly always has no spread to learn, yet one more is no deviation."""
    text = str(unit or "").strip()
    counts = text.startswith("{") and text.endswith("}") and len(text) > 2
    return 1.0 if counts and math.isfinite(value) and value == round(value) else 0.0


def histogram_quantile(q: float, bounds: list[float], counts: tuple[float, ...]) -> float:
    """Quantile of an explicit-bounds histogram, linear within the bucket (as Prometheus does)."""
    return histogram_quantile_step(q, bounds, counts)[0]


def histogram_quantile_step(
    q: float, bounds: list[float], counts: tuple[float, ...]
) -> tuple[float, float]:
    """(quantile, resolution) of an explicit-bounds histogram: the quantile linear within its
    bucket (as Prometheus does), and that bucket's width, the step in which the quantile is
    actually known (the interpolation assumes a uniform density the histogram cannot show). In
    the +Inf bucket the quantile is the highest finite bound, known no better than the last
    finite bucket's width (the +Inf bucket is at least as wide)."""
    total = sum(counts)
    if total <= 0 or not counts:
        return float("nan"), 0.0
    rank = q * total
    cumulative = np.cumsum(counts)
    i = int(np.searchsorted(cumulative, rank, side="left"))
    i = min(i, len(counts) - 1)
    edges = [min(0.0, bounds[0]), *bounds] if bounds else []
    if i >= len(bounds):  # the +Inf bucket: the highest finite bound is the best answer
        if not bounds:
            return float("nan"), 0.0
        return float(bounds[-1]), float(edges[-1] - edges[-2])
    lower = edges[i]
    upper = bounds[i]
    before = cumulative[i - 1] if i > 0 else 0.0
    inside = counts[i]
    if inside <= 0:
        return float(upper), float(upper - lower)
    return float(lower + (upper - lower) * (rank - before) / inside), float(upper - lower)
