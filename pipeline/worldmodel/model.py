"""The world model: baselines for every derived signal, the changes, and what is new, fed by
sealed segments in event time. Pure: segments, changes and ``now`` come in as arguments.

Segments of different partitions overlap in event time, so span and log rows are buffered per
open interval and turned into signals only once every partition's watermark has passed the
interval's end (plus ``allowed_lateness_s``); a segment already counted (its source offsets are
at or below what the model has applied in the same broker epoch) is skipped, which makes replays
and re-deliveries harmless. ``checkpoint()`` captures everything, together with those offsets, as bytes.
"""

from __future__ import annotations

import base64
import io
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc  # noqa: F401 - pa.ipc
import zstandard

from pipeline.caps import adopt_caps
from pipeline.segments.store import Manifest
from pipeline.worldmodel.baseline import BaselineConfig, BaselineStore
from pipeline.worldmodel.graph import EdgeStore, EntityRef, GraphConfig
from pipeline.worldmodel.peers import client_metric_peer, peer_entity
from pipeline.worldmodel.signals import (
    MetricDeriver,
    empty_signals,
    log_signals,
    new_templates,
    span_signals,
)
from schemas.segments import METRIC_SERIES

CHECKPOINT_FORMAT = "worldline.worldmodel/1"
SPAN_BUFFER_COLUMNS = [
    "trace_id",
    "span_id",
    "parent_span_id",
    "host_name",
    "pod_name",
    "service_version",
    "start_unix_nano",
    "service",
    "name",
    "kind",
    "duration_ns",
    "status_code",
    "peer_service",
    "db_system",
    "db_name",
    "messaging_system",
    "messaging_destination",
    "server_address",
    "rpc_service",
]
SPAN_COUNTED_RATES = ("span.rate_per_s", "edge.rate_per_s")
LOG_COUNTED_RATES = ("log.rate_per_s", "log.error_rate_per_s", "log.template_rate_per_s")
COUNTED_RATES = SPAN_COUNTED_RATES + LOG_COUNTED_RATES
"""Derived signals that count events: an interval without events has the value 0. Each source
fills only its own (a span interval closing must not add a 0 to a log rate of the same interval:
the baseline averages the values of an interval, so that 0 would halve the real rate)."""
ZERO_FILL_MAX_INTERVALS = 10_080
_DESCRIBES_PEER = (
    r"server\.address=|db\.system|messaging\.system=|peer\.service=|destination_workload="
    r"|destination_service_name="
)
"""Attributes that name a client metric's peer (``worldmodel.peers``): a cheap filter first."""


@dataclass(frozen=True)
class CountedRateScale:
    """``BaselineStore.count_scale`` for the derived signals: a counted rate (events per second
    over one interval) times ``interval_s`` is an event count, so its baseline knows its counting
    noise; every other signal is not a count (0). A class, not a closure, so a model pickles."""

    interval_s: float

    def __call__(self, entity: str, signal: str) -> float:
        return self.interval_s if signal.startswith(COUNTED_RATES) else 0.0


LOG_BUFFER_COLUMNS = ["time_unix_nano", "service", "severity_number", "template_id"]


def marker(signal: str, epoch: str = "") -> str:
    """The part of an ``applied`` key that names the segments' signal and broker epoch: offsets
    of different epochs (lives of the broker's storage) are different logs."""
    return f"{signal}@{epoch}" if epoch else signal


def applied_key(manifest: Manifest) -> str:
    """``WorldModel.applied`` key of a segment: "signal[@epoch]/topic/partition"."""
    source = manifest.source
    return f"{marker(manifest.signal, source.epoch)}/{source.topic}/{source.partition}"


@dataclass(frozen=True)
class WorldModelConfig:
    interval_s: float = 60.0
    allowed_lateness_s: float = 60.0
    max_series: int = 200_000
    max_buffered_rows: int = 2_000_000
    max_changes: int = 10_000
    max_known_templates: int = 1_000_000
    # partitions of each source topic: once a topic has been seen, all its partitions must reach
    # an instant before it is closed (a topic never seen does not hold time back)
    topic_partitions: tuple[tuple[str, int], ...] = ()
    graph: GraphConfig = field(default_factory=GraphConfig)
    # every series' baseline; its interval_s is the model's
    baseline: BaselineConfig = field(default_factory=BaselineConfig)


@dataclass
class WorldModel:
    config: WorldModelConfig = field(default_factory=WorldModelConfig)
    baselines: BaselineStore = field(init=False)
    metrics: MetricDeriver = field(init=False)
    # "signal[@epoch]/topic/partition" -> last offset applied (``applied_key``)
    applied: dict[str, int] = field(default_factory=dict)
    watermarks: dict[str, int] = field(default_factory=dict)  # "topic/partition" -> max event time
    # what the broker holds, from the live shell: "topic/partition" -> (``marker`` of the signal
    # in the broker's epoch, last offset);
    # transient (not checkpointed): refreshed by the worker from the topics' high-water marks
    sources: dict[str, tuple[str, int]] = field(default_factory=dict)
    # partitions of ``sources`` that have received nothing for a while (transient, from the live
    # shell): once applied, they no longer hold event time back
    idle: frozenset[str] = frozenset()
    spans: pa.Table | None = None
    logs: pl.DataFrame | None = None
    graph: EdgeStore = field(init=False)
    graph_deltas: deque[dict[str, Any]] = field(default_factory=deque)
    known_templates: set[int] = field(default_factory=set)
    versions: dict[str, str] = field(default_factory=dict)
    changes: deque[dict[str, Any]] = field(default_factory=deque)
    events: deque[dict[str, Any]] = field(default_factory=deque)
    closed_through: int = 0
    dropped: dict[str, int] = field(
        default_factory=lambda: {
            "buffer_full": 0,
            "late_rows": 0,
            "changes_evicted": 0,
            "metric_series_cap": 0,
            "metric_series_cap_points": 0,
        }
    )
    # series id -> its row of the ``metric_series`` table as JSON (orjson): a few hundred bytes
    # a series where the row as a dict takes about a kilobyte; decoded only for the series
    # whose points are derived
    metric_series: dict[int, bytes] = field(default_factory=dict)
    points: pl.DataFrame | None = None

    def __post_init__(self) -> None:
        self.baselines = BaselineStore(
            replace(self.config.baseline, interval_s=self.config.interval_s),
            max_series=self.config.max_series,
            count_scale=CountedRateScale(self.config.interval_s),
        )
        self.metrics = MetricDeriver(
            interval_s=self.config.interval_s, max_series=self.config.max_series
        )
        self.graph = EdgeStore(self.config.graph)

    def adopt(self, config: WorldModelConfig) -> list[str]:
        """Take ``config`` into a restored model: its caps (model, graph) and topic partitions
        apply now; every other field stays as learned (``pipeline.caps``). Returns the names
        of the settings that differ and were kept as learned."""
        learned = replace(self.config, baseline=self.baselines.config, graph=self.graph.config)
        model, kept = adopt_caps(learned, config)
        graph, kept_graph = adopt_caps(self.graph.config, config.graph, "graph.")
        wanted_baseline = replace(config.baseline, interval_s=self.baselines.config.interval_s)
        _, kept_baseline = adopt_caps(self.baselines.config, wanted_baseline, "baseline.")
        kept = [k for k in kept if k != "topic_partitions"]
        self.config = replace(model, topic_partitions=config.topic_partitions, graph=graph)
        self.graph.config = graph
        self.baselines.max_series = self.config.max_series
        self.metrics.max_series = self.config.max_series
        return kept + kept_graph + kept_baseline

    # ---------------------------------------------------------------- intake
    def already_applied(self, manifest: Manifest) -> bool:
        return self.applied.get(applied_key(manifest), -1) >= manifest.source.last_offset

    def forget_epochs(self, keep: set[str]) -> int:
        """Drop the applied offsets of broker epochs not in ``keep`` (those with no segment
        left in the store and not the broker's now: nothing of them can be applied again), so
        the map stays bounded across broker restarts. Returns how many were dropped."""
        gone = [
            key
            for key in self.applied
            if "@" in key.split("/", 1)[0] and key.split("/", 1)[0].split("@", 1)[1] not in keep
        ]
        for key in gone:
            del self.applied[key]
        return len(gone)

    def apply(self, manifest: Manifest, table: pa.Table) -> bool:
        """Take one sealed segment into the model; False if it was already counted."""
        if self.already_applied(manifest):
            return False
        if manifest.signal == "spans":
            self._apply_spans(table)
        elif manifest.signal == "logs":
            self._apply_logs(table)
        elif manifest.signal == "metric_series":
            self._apply_metric_series(table)
        elif manifest.signal == "metrics":
            self._apply_metric_points(table)
        self.applied[applied_key(manifest)] = manifest.source.last_offset
        if manifest.rows and manifest.signal in ("spans", "logs", "metrics"):
            wm_key = f"{manifest.source.topic}/{manifest.source.partition}"
            self.watermarks[wm_key] = max(self.watermarks.get(wm_key, 0), manifest.end_unix_nano)
        return True

    def _apply_metric_series(self, table: pa.Table) -> None:
        """Know the series of a segment, at most ``max_series``: a known series' row is
        replaced, a new one beyond the cap is refused and counted (``metric_series_cap``, once
        per segment that names it). The series known first keep their signals however many new
        ones arrive (a storm of new label sets); the refused ones' points stay stored in the
        segments, only not derived (``metric_series_cap_points``)."""
        known = self.metric_series
        room = self.config.max_series - len(known)
        keep: list[int] = []
        refused = 0
        for i, sid in enumerate(table.column("series_id").to_pylist()):
            if sid in known:
                keep.append(i)
            elif room > 0:
                keep.append(i)
                room -= 1
            else:
                refused += 1
        if refused:
            self.dropped["metric_series_cap"] = self.dropped.get("metric_series_cap", 0) + refused
        for row in table.take(pa.array(keep, pa.int64())).to_pylist():
            known[int(row["series_id"])] = _series_json(row)

    def _buffer(
        self, current: pl.DataFrame | None, frame: pl.DataFrame, time_col: str
    ) -> pl.DataFrame:
        late = frame.filter(pl.col(time_col) < self.closed_through)
        if late.height:
            self.dropped["late_rows"] += late.height
            frame = frame.filter(pl.col(time_col) >= self.closed_through)
        merged = frame if current is None else pl.concat([current, frame], how="vertical_relaxed")
        if merged.height > self.config.max_buffered_rows:
            excess = merged.height - self.config.max_buffered_rows
            self.dropped["buffer_full"] += excess
            merged = merged.sort(time_col).tail(self.config.max_buffered_rows)
        return merged

    def _apply_spans(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        table = table.select(SPAN_BUFFER_COLUMNS)
        table = table.cast(pa.schema([_undictionary(f) for f in table.schema]))
        late = pc.less(table.column("start_unix_nano"), self.closed_through)
        n_late = pc.sum(late).as_py() or 0
        if n_late:
            self.dropped["late_rows"] += n_late
            table = table.filter(pc.invert(late))
        merged = table if self.spans is None else pa.concat_tables([self.spans, table])
        if merged.num_rows > self.config.max_buffered_rows:
            self.dropped["buffer_full"] += merged.num_rows - self.config.max_buffered_rows
            merged = merged.sort_by("start_unix_nano").slice(
                merged.num_rows - self.config.max_buffered_rows
            )
        self.spans = merged

    def _infer_deploys(self, frame: pl.DataFrame) -> None:
        """A service whose service.version changes in its own telemetry was deployed."""
        seen = (
            frame.filter(pl.col("service_version").is_not_null())
            .group_by("service", "service_version")
            .agg(pl.col("start_unix_nano").min().alias("first"))
            .sort("first")
        )
        for service, version, first in seen.iter_rows():
            before = self.versions.get(service)
            if before is None:
                self.versions[service] = version
            elif before != version:
                self.versions[service] = version
                self.add_change(
                    {
                        "schema_version": 1,
                        "change_id": f"inferred-deploy-{service}-{version}",
                        "kind": "deploy",
                        "entity": {"kind": "service", "name": service},
                        "time_unix_nano": int(first),
                        "source": "inferred from service.version in telemetry",
                        "attributes": {
                            "service.version.before": before,
                            "service.version.after": version,
                        },
                    }
                )

    def _apply_logs(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        for template_id, entity, first in new_templates(table, self.known_templates):
            if len(self.known_templates) < self.config.max_known_templates:
                self.known_templates.add(template_id)
            self.events.append(
                {
                    "type": "log_template_new",
                    "template_id": template_id,
                    "entity": entity,
                    "time_unix_nano": first,
                }
            )
            while len(self.events) > self.config.max_changes:
                self.events.popleft()
        frame = pl.from_arrow(table.select(LOG_BUFFER_COLUMNS))
        assert isinstance(frame, pl.DataFrame)
        frame = frame.with_columns(pl.col(pl.Categorical).cast(pl.String))
        self.logs = self._buffer(self.logs, frame, "time_unix_nano")

    def _apply_metric_points(self, points: pa.Table) -> None:
        """Buffer the points of known series. Those of series refused at the cap are counted
        (``metric_series_cap_points``: stored in the segments, not derived) and not buffered,
        so a storm of new series does not fill the buffer. A segment's series are applied
        before its points (ingest seals them first, ``merge_order`` keeps them first)."""
        if points.num_rows == 0:
            return
        known = pa.array(list(self.metric_series), pa.uint64())
        mask = pc.is_in(points.column("series_id"), value_set=known)
        unknown = points.num_rows - (pc.sum(mask).as_py() or 0)
        if unknown:
            self.dropped["metric_series_cap_points"] = (
                self.dropped.get("metric_series_cap_points", 0) + unknown
            )
            points = points.filter(mask)
            if points.num_rows == 0:
                return
        frame = pl.from_arrow(points)
        assert isinstance(frame, pl.DataFrame)
        self.points = self._buffer(self.points, frame, "time_unix_nano")

    def _derive_metrics(self, done: pl.DataFrame, now: int) -> None:
        kept = [s for s in sorted(set(done["series_id"].to_list())) if s in self.metric_series]
        if not kept:
            return
        # a checkpoint written before series were refused may buffer points of series not kept
        done = done.filter(pl.col("series_id").is_in(kept))
        meta = [orjson.loads(self.metric_series[s]) for s in kept]
        series = pa.Table.from_pylist(meta, schema=METRIC_SERIES)
        derived = self.metrics.derive(series, done.sort("series_id", "time_unix_nano").to_arrow())
        self._learn(derived)
        self._observe_described(derived, now)

    def _observe_described(self, signals: pl.DataFrame, now: int) -> None:
        """The dependencies the services' client metrics describe become graph evidence."""
        if signals.height == 0:
            return
        client = (
            signals.filter(
                pl.col("entity").str.starts_with("service:")
                & pl.col("signal").str.contains(_DESCRIBES_PEER)
            )
            .group_by("entity", "signal")
            .agg(
                pl.col("interval_start_unix_nano").min().alias("first"),
                pl.col("interval_start_unix_nano").max().alias("last"),
            )
        )
        if client.height == 0:
            return
        services = {e for e in signals["entity"].unique().to_list() if e.startswith("service:")} | {
            ref.key for ref in self.graph.nodes if ref.kind == "service"
        }
        pairs: dict[tuple[str, str, str], tuple[int, int]] = {}
        for entity, signal, first, last in client.iter_rows():
            peer = client_metric_peer(signal)
            if peer is None:
                continue
            target = peer_entity(peer, services, answered_by=self.graph.peer_services)
            if target == entity:
                continue
            key = (entity, target, "publishes_to" if target.startswith("queue:") else "calls")
            seen = pairs.get(key)
            pairs[key] = (
                (first, last) if seen is None else (min(seen[0], first), max(seen[1], last))
            )
        rows = [
            (EntityRef.from_key(s), EntityRef.from_key(t), relation, first, last)
            for (s, t, relation), (first, last) in sorted(pairs.items())
        ]
        self._keep_graph_deltas(self.graph.observe_described(rows, now))

    def add_change(self, change: dict[str, Any]) -> None:
        """A change event (from the ``changes`` topic or inferred), kept bounded and in time order."""
        if any(c["change_id"] == change["change_id"] for c in self.changes):
            return
        self.changes.append(change)
        if len(self.changes) > self.config.max_changes:
            self.changes.popleft()
            self.dropped["changes_evicted"] += 1

    # ------------------------------------------------------------ event time
    @property
    def watermark(self) -> int:
        """Event time up to which no more data is expected.

        Live (``sources`` known): the minimum over every partition that carries data, at the
        event time it reached (0 if none of it was applied yet, so a topic whose segments come
        late is waited for): a partition that is behind now may still bring rows older than
        another's latest. Only a partition fully applied and ``idle`` (nothing new on the
        broker for a while) stops holding time back, so one quiet partition cannot stall the
        model. Replay (no sources): every partition of every topic seen so far must have
        reached the instant.
        """
        if self.sources:
            holding = [
                self.watermarks.get(key, 0)
                for key, (signal, last) in self.sources.items()
                if self.applied.get(f"{signal}/{key}", -1) < last or key not in self.idle
            ]
            if holding:
                return min(holding)
            return max(self.watermarks.values()) if self.watermarks else 0
        if not self.watermarks:
            return 0
        seen_topics = {key.rsplit("/", 1)[0] for key in self.watermarks}
        expected = dict(self.config.topic_partitions)
        marks = []
        for topic in seen_topics:
            for partition in range(expected.get(topic, 0)):
                marks.append(self.watermarks.get(f"{topic}/{partition}", 0))
        marks.extend(self.watermarks.values())
        return min(marks)

    def coverage(self, received: dict[str, tuple[str, int]]) -> tuple[int, bool]:
        """How far this model holds what the broker had received: ``received`` maps
        "topic/partition" to (marker signal, last offset), read when an alert arrived. Returns
        the event time (unix ns) up to which every such partition is applied (a partition whose
        received records are all applied does not hold it back) and whether all of them are.
        """
        behind = [
            self.watermarks.get(key, 0)
            for key, (signal, last) in received.items()
            if self.applied.get(f"{signal}/{key}", -1) < last
        ]
        latest = max(self.watermarks.values(), default=0)
        if behind:
            return min(behind), False
        return latest, True

    def advance(self) -> int:
        """Close every interval that ended before the watermark minus the allowed lateness."""
        interval_ns = int(self.config.interval_s * 1e9)
        horizon = self.watermark - int(self.config.allowed_lateness_s * 1e9)
        return self._close((horizon // interval_ns) * interval_ns)

    def provisional(self, through_ns: int) -> int:
        """Close every interval up to the one holding ``through_ns``, the still-open ones
        included, as they stand: what has arrived is scored now rather than after the allowed
        lateness. For a search at an alert's time, on a copy of the model (``restore`` of a
        checkpoint): rows arriving later for these intervals would count as late here. The
        last interval is covered only up to the data the model holds (at most its end), so its
        counted rates are events over that part, with that part as their exposure."""
        interval_ns = int(self.config.interval_s * 1e9)
        close_before = (through_ns // interval_ns + 1) * interval_ns
        latest = max(self.watermarks.values(), default=0)
        covered_until = min(close_before, max(latest, through_ns))
        return self._close(close_before, covered_until)

    def _close(self, close_before: int, covered_until: int | None = None) -> int:
        """Close the intervals before ``close_before``; the last one holds data only up to
        ``covered_until`` when given."""
        if close_before <= self.closed_through:
            return 0
        closed = 0
        span_rows = empty_signals()
        if self.spans is not None and self.spans.num_rows:
            before = pc.less(self.spans.column("start_unix_nano"), close_before)
            done = self.spans.filter(before).sort_by("start_unix_nano")
            self.spans = self.spans.filter(pc.invert(before))
            if done.num_rows:
                frame = pl.from_arrow(done)
                assert isinstance(frame, pl.DataFrame)
                self._infer_deploys(frame)
                self._observe_graph(done, close_before)
                span_rows = span_signals(done, self.config.interval_s)
                closed += done.num_rows
        # silence is filled even when a source sent nothing at all for the closed intervals
        span_rows = self._zero_fill(span_rows, close_before, SPAN_COUNTED_RATES)
        self._learn(self._partial(span_rows, close_before, covered_until, SPAN_COUNTED_RATES))
        log_rows = empty_signals()
        if self.logs is not None and self.logs.height:
            done = self.logs.filter(pl.col("time_unix_nano") < close_before)
            self.logs = self.logs.filter(pl.col("time_unix_nano") >= close_before)
            if done.height:
                log_rows = log_signals(done.to_arrow(), self.config.interval_s)
                closed += done.height
        log_rows = self._zero_fill(log_rows, close_before, LOG_COUNTED_RATES)
        self._learn(self._partial(log_rows, close_before, covered_until, LOG_COUNTED_RATES))
        if self.points is not None and self.points.height:
            done = self.points.filter(pl.col("time_unix_nano") < close_before)
            self.points = self.points.filter(pl.col("time_unix_nano") >= close_before)
            if done.height:
                self._derive_metrics(done, close_before)
                closed += done.height
        self.closed_through = close_before
        self.baselines.advance(close_before / 1e9)
        return closed

    def _partial(
        self,
        signals: pl.DataFrame,
        close_before: int,
        covered_until: int | None,
        counted: tuple[str, ...],
    ) -> pl.DataFrame:
        """Counted rates of the last closed interval over the part of it that is covered (a
        provisional close): events per covered second, exposed for those seconds."""
        interval_ns = int(self.config.interval_s * 1e9)
        last = close_before - interval_ns
        if covered_until is None or covered_until >= close_before or not signals.height:
            return signals
        covered_s = max(covered_until - last, int(1e9)) / 1e9
        factor = self.config.interval_s / covered_s
        counted_rate = pl.any_horizontal([pl.col("signal").str.starts_with(c) for c in counted])
        partial = (pl.col("interval_start_unix_nano") == last) & counted_rate
        return signals.with_columns(
            pl.when(partial).then(pl.col("value") * factor).otherwise(pl.col("value")),
            pl.when(partial).then(pl.col("exposure") / factor).otherwise(pl.col("exposure")),
        )

    def _zero_fill(
        self, signals: pl.DataFrame, close_before: int, counted: tuple[str, ...]
    ) -> pl.DataFrame:
        """Counted rates (``counted``: one source's) of known series are 0 in a closed interval
        without events while the source reports (it brought rows of any series for that
        interval): silence is a value, not a gap (else a rare event's series learns only its
        bursts). An interval in which the source brought nothing at all (sampled traces, logs
        shipped in windows, an outage) is a gap: no zero is learned."""
        interval_ns = int(self.config.interval_s * 1e9)
        first = self.closed_through
        if signals.height:
            earliest = signals.get_column("interval_start_unix_nano").min()
            assert isinstance(earliest, int)
            first = earliest if first == 0 else min(first, earliest)
        if first == 0 or first >= close_before:
            return signals
        first = max(first, close_before - ZERO_FILL_MAX_INTERVALS * interval_ns)
        reported = set(signals.get_column("interval_start_unix_nano").to_list())
        starts = [t for t in range(first, close_before, interval_ns) if t in reported]
        present = set(
            zip(
                signals.get_column("interval_start_unix_nano").to_list(),
                signals.get_column("entity").to_list(),
                signals.get_column("signal").to_list(),
                strict=True,
            )
        )
        rows_t, rows_e, rows_s = [], [], []
        known = self.baselines.keys()
        for entity, signal in known:
            if not signal.startswith(counted):
                continue
            baseline = self.baselines.get(entity, signal)
            first_seen = None if baseline is None else baseline.first_seen_s
            if first_seen is None:
                continue
            for start in starts:
                if start / 1e9 >= first_seen and (start, entity, signal) not in present:
                    rows_t.append(start)
                    rows_e.append(entity)
                    rows_s.append(signal)
        if not rows_t:
            return signals
        zeros = pl.DataFrame(
            {
                "interval_start_unix_nano": rows_t,
                "entity": rows_e,
                "signal": rows_s,
                "value": [0.0] * len(rows_t),
                "exposure": [self.config.interval_s] * len(rows_t),
                "resolution": [0.0] * len(rows_t),
            },
            schema=signals.schema,
        )
        return pl.concat([signals, zeros])

    def _observe_graph(self, done: pa.Table, now: int) -> None:
        self._keep_graph_deltas(self.graph.observe_spans(done, now))

    def _keep_graph_deltas(self, deltas: list[dict[str, Any]]) -> None:
        for delta in deltas:
            self.graph_deltas.append(delta)
        while len(self.graph_deltas) > self.config.max_changes:
            self.graph_deltas.popleft()
            self.dropped["graph_deltas_unpublished"] = (
                self.dropped.get("graph_deltas_unpublished", 0) + 1
            )

    def sampling(self, max_series: int = 4096) -> dict[str, float]:
        """How densely the series are sampled at this model's interval: the median spacing of
        their recent values (in intervals and seconds) and the share of series sparser than one
        value per interval, over at most ``max_series`` series spread evenly over the keys.
        Data coarser than the interval (5-minute metrics at 60 s) leaves most intervals empty;
        ``interval_s`` should be the data's resolution."""
        keys = self.baselines.keys()
        every = max(1, len(keys) // max_series)
        spacings = sorted(
            b.spacing
            for key in keys[::every]
            if (b := self.baselines.get(*key)) is not None and b.intervals_learned >= 2
        )
        if not spacings:
            return {}
        median = spacings[len(spacings) // 2]
        return {
            "series_spacing_intervals": float(median),
            "series_spacing_s": median * self.config.interval_s,
            "series_sparse_share": round(sum(s > 1 for s in spacings) / len(spacings), 3),
        }

    def take_graph_deltas(self) -> list[dict[str, Any]]:
        """Deltas produced since the last call (for the ``graph.deltas`` topic)."""
        out = list(self.graph_deltas)
        self.graph_deltas.clear()
        return out

    def _learn(self, signals: pl.DataFrame) -> None:
        if signals.height == 0:
            return
        signals = signals.sort("interval_start_unix_nano")
        keys = list(zip(signals["entity"].to_list(), signals["signal"].to_list(), strict=True))
        times = (signals["interval_start_unix_nano"].cast(pl.Float64) / 1e9).to_list()
        self.baselines.update_many(
            keys,
            times,
            signals["value"].to_list(),
            signals["exposure"].to_list(),
            signals["resolution"].to_list(),
        )

    # ------------------------------------------------------------ snapshots
    def checkpoint(self) -> bytes:
        """Everything the model knows, with the offsets it includes, as one compressed blob."""

        def frame_bytes(frame: pl.DataFrame | None) -> str | None:
            if frame is None:
                return None
            buf = io.BytesIO()
            frame.write_ipc(buf)
            return base64.b64encode(buf.getvalue()).decode()

        def table_bytes(table: pa.Table | None) -> str | None:
            if table is None:
                return None
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
            return base64.b64encode(sink.getvalue().to_pybytes()).decode()

        doc = {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.__dict__,
            "applied": self.applied,
            "watermarks": self.watermarks,
            "closed_through": self.closed_through,
            "baselines": base64.b64encode(self.baselines.snapshot()).decode(),
            "spans": table_bytes(self.spans),
            "graph": base64.b64encode(self.graph.snapshot()).decode(),
            "graph_deltas": list(self.graph_deltas),
            "logs": frame_bytes(self.logs),
            "points": frame_bytes(self.points),
            "known_templates": sorted(self.known_templates),
            "versions": self.versions,
            "changes": list(self.changes),
            "events": list(self.events),
            "dropped": self.dropped,
            "metric_series": [orjson.loads(row) for row in self.metric_series.values()],
            "metric_last": [
                [sid, v.time_unix_nano, v.value, list(v.buckets), v.total, v.start_unix_nano]
                for sid, v in self.metrics.last.items()
            ],
            "metric_dropped": self.metrics.dropped,
        }
        return zstandard.ZstdCompressor(level=3).compress(
            orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
        )

    @classmethod
    def restore(cls, data: bytes) -> WorldModel:
        from pipeline.worldmodel.signals import _Last

        doc = orjson.loads(zstandard.ZstdDecompressor().decompress(data))
        if doc.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"not a {CHECKPOINT_FORMAT} checkpoint")
        config = dict(doc["config"])
        config["topic_partitions"] = tuple(
            (str(t), int(n)) for t, n in config.get("topic_partitions", ())
        )
        config["graph"] = GraphConfig(**config.get("graph", {}))
        config["baseline"] = BaselineConfig(**config.get("baseline", {}))
        model = cls(WorldModelConfig(**config))
        model.applied = {k: int(v) for k, v in doc["applied"].items()}
        model.watermarks = {k: int(v) for k, v in doc["watermarks"].items()}
        model.closed_through = int(doc["closed_through"])
        model.baselines.restore(base64.b64decode(doc["baselines"]))

        def frame(text: str | None) -> pl.DataFrame | None:
            return None if text is None else pl.read_ipc(io.BytesIO(base64.b64decode(text)))

        model.spans = (
            None
            if doc["spans"] is None
            else pa.ipc.open_stream(base64.b64decode(doc["spans"])).read_all()
        )
        model.graph = EdgeStore.restore(base64.b64decode(doc["graph"]))
        model.graph_deltas = deque(doc["graph_deltas"])
        model.logs = frame(doc["logs"])
        model.points = frame(doc["points"])
        model.known_templates = set(doc["known_templates"])
        model.versions = dict(doc["versions"])
        model.changes = deque(doc["changes"])
        model.events = deque(doc["events"])
        model.dropped = dict(doc["dropped"])
        model.metric_series = {int(r["series_id"]): _series_json(r) for r in doc["metric_series"]}
        for sid, t, v, buckets, *summary in doc["metric_last"]:
            # a summary's sum and start time (absent from checkpoints written before them)
            total, start = summary if summary else (0.0, 0)
            model.metrics.last[int(sid)] = _Last(
                int(t), float(v), tuple(buckets), float(total), int(start)
            )
        model.metrics.dropped = dict(doc["metric_dropped"])
        return model


def _series_json(row: dict[str, Any]) -> bytes:
    """A series' row as JSON, in a bytes object of its own size: orjson's own result keeps the
    buffer it was written in (about 4 KB whatever the length)."""
    return memoryview(orjson.dumps(row, option=orjson.OPT_SORT_KEYS)).tobytes()


def _undictionary(f: pa.Field) -> pa.Field:
    """Dictionary columns as plain strings, so buffers from different segments concatenate."""
    return f.with_type(pa.string()) if pa.types.is_dictionary(f.type) else f
