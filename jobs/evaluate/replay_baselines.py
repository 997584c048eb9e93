"""``worldline evaluate replay-baseline``: BARO or N-Sigma answering alerts through Kafka.

The replay tool (``../shared/replay/replay.py``) scores a system only by what it publishes to
``causes.ranked`` for the alerts it replays. This module is such a system for the two published
metric-only baselines of ``jobs.evaluate.baselines``, so their AS@k come from the same tool and
the same protocol as worldline's:

- it consumes ``otlp_metrics`` (OTLP ``ExportMetricsServiceRequest`` per record) into a rolling,
  bounded history of points in event time, one series per (resource, metric, point attributes);
- it consumes ``alerts`` (Alertmanager webhook v4); for each firing alert it first reads every
  ``otlp_metrics`` record the broker held when the alert was read (the partitions' high-water
  marks, bounded wait), so the answer uses the data up to the alert's ``startsAt`` T;
- it ranks every series by the method over rows of ``step_s`` ending at T: the normal history
  (T - window_s - history_s, T - window_s] and the incident window (T - window_s, T], maps each
  series to its service, keeps services in order of first appearance and publishes one record
  to ``causes.ranked`` keyed by the alert's fingerprint.

Values: gauges and sums (a cumulative monotonic sum as its rate per second between consecutive
points, since a counter's level always grows past its history; a delta or non-monotonic sum as
its value). Histogram, exponential-histogram and summary points are skipped and counted.

Service of a series: the resource's ``service.name``; else its ``k8s.pod.name`` (or a ``pod``
point label) with the two trailing generated parts of a Kubernetes pod name removed
(``frontend-579b9bff58-t2dbm`` -> ``frontend``); points with neither are skipped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import math
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click
import numpy as np
import orjson

from jobs.evaluate.baselines import baro, nsigma
from pipeline import kafka_auth

if TYPE_CHECKING:
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )

METHODS: dict[str, Callable[..., list[tuple[str, float]]]] = {"baro": baro, "nsigma": nsigma}
METHOD_NAMES = {"baro": "BARO", "nsigma": "N-Sigma"}
SCORE_MEANING = {
    "baro": "largest |x - median| / IQR after the change point, against the rows before it",
    "nsigma": "largest |x - mean| / std in the incident window, against the normal history",
}
METRICS_TOPIC = "otlp_metrics"
ALERTS_TOPIC = "alerts"
CAUSES_TOPIC = "causes.ranked"

DEFAULT_HISTORY_S = 3600.0
DEFAULT_WINDOW_S = 300.0
DEFAULT_STEP_S = 60.0  # row width when the points give no spacing to learn (every series new)
DEFAULT_MAX_SERIES = 2000
DEFAULT_MAX_POINTS = 1000  # per series: 1000 points span 3900 s at one point every 3.9 s
PRUNE_EVERY_S = 60.0  # event time between two passes that forget expired points
GRACE_S = 600.0  # event time kept beyond history + window, for an alert read after later data
MAX_CAUSES = 50  # services named per answer
FLAG_NO_RECORDED_VALUE = 1  # OTLP DataPointFlags: the point carries no value
CUMULATIVE = 2  # OTLP AggregationTemporality


def pod_service(pod: str) -> str:
    """The workload of a Kubernetes pod name: ``<name>-<replicaset hash>-<pod hash>`` -> name;
    a StatefulSet's ``<name>-<ordinal>`` -> name; anything else is returned as it is."""
    parts = pod.split("-")
    if len(parts) >= 3:
        return "-".join(parts[:-2])
    if len(parts) == 2 and parts[1].isdigit():
        return parts[0]
    return pod


@dataclass
class Series:
    index: int  # order of first appearance
    service: str
    instance: str  # the pod, or the service when the resource names no pod
    metric: str
    attributes: tuple[tuple[str, str], ...]
    points: deque[tuple[float, float]]  # (event time s, value), in arrival order

    @property
    def label(self) -> str:
        attrs = ",".join(f"{k}={v}" for k, v in self.attributes)
        return f"{self.metric}{{{attrs}}}" if attrs else self.metric


@dataclass
class History:
    """Bounded rolling history of metric points in event time: at most ``max_series`` series of
    at most ``max_points`` points each. ``advance`` moves the clock (the event time every source
    has been read up to); points older than ``keep_s`` before it are forgotten, and dropped
    when they arrive."""

    keep_s: float
    max_series: int = DEFAULT_MAX_SERIES
    max_points: int = DEFAULT_MAX_POINTS
    series: dict[tuple[Any, ...], Series] = field(default_factory=dict)
    dropped: Counter[str] = field(default_factory=Counter)
    added: int = 0  # points taken in
    expired: int = 0  # points forgotten for age (beyond the reach of any later alert)
    clock_s: float = -math.inf
    latest_s: float = -math.inf  # the latest point time seen
    _totals: dict[tuple[Any, ...], tuple[float, float, int]] = field(default_factory=dict)
    _pruned_s: float = -math.inf

    def add(
        self,
        service: str,
        instance: str,
        metric: str,
        attributes: tuple[tuple[str, str], ...],
        t_s: float,
        value: float,
    ) -> None:
        if not math.isfinite(value) or not math.isfinite(t_s):
            self.dropped["no_value"] += 1
            return
        if t_s < self.clock_s - self.keep_s:
            self.dropped["too_old"] += 1
            return
        key = (instance, metric, attributes)
        s = self.series.get(key)
        if s is None:
            if len(self.series) >= self.max_series:
                self.dropped["series_cap"] += 1
                return
            s = Series(len(self.series), service, instance, metric, attributes, deque())
            self.series[key] = s
        if len(s.points) >= self.max_points:
            s.points.popleft()
            self.dropped["point_cap"] += 1
        s.points.append((t_s, value))
        self.added += 1
        self.latest_s = max(self.latest_s, t_s)

    def advance(self, clock_s: float) -> None:
        """Move the clock forward; forget expired points once per PRUNE_EVERY_S of it."""
        self.clock_s = max(self.clock_s, clock_s)
        if self.clock_s < self._pruned_s + PRUNE_EVERY_S:
            return
        self._pruned_s = self.clock_s
        horizon = self.clock_s - self.keep_s
        for s in self.series.values():  # from each series' oldest end, in arrival order
            while s.points and s.points[0][0] < horizon:
                s.points.popleft()
                self.expired += 1

    def kept(self) -> int:
        return sum(len(s.points) for s in self.series.values())

    def add_total(
        self,
        service: str,
        instance: str,
        metric: str,
        attributes: tuple[tuple[str, str], ...],
        t_s: float,
        total: float,
        start_ns: int,
    ) -> None:
        """A cumulative monotonic sum: its rate per second since the previous point of the same
        run; a first point, a reset (lower total, new start) or a point out of order only sets
        the reference."""
        key = (instance, metric, attributes)
        prev = self._totals.get(key)
        self._totals[key] = (t_s, total, start_ns)
        if prev is None:
            return
        pt, ptotal, pstart = prev
        if t_s <= pt or total < ptotal or (start_ns and pstart and start_ns != pstart):
            self.dropped["counter_reset_or_reorder"] += 1
            return
        self.add(service, instance, metric, attributes, t_s, (total - ptotal) / (t_s - pt))

    def add_request(self, request: ExportMetricsServiceRequest) -> float | None:
        """Every gauge and sum point of one OTLP request; returns its latest point time."""
        latest: float | None = None
        for rm in request.resource_metrics:
            resource = {kv.key: _text(kv.value) for kv in rm.resource.attributes}
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    kind = metric.WhichOneof("data")
                    if kind not in ("gauge", "sum"):
                        if kind is not None:
                            n = len(getattr(metric, kind).data_points)
                            self.dropped["not_gauge_or_sum"] += n
                        continue
                    data = getattr(metric, kind)
                    rate = (
                        kind == "sum"
                        and data.is_monotonic
                        and data.aggregation_temporality == CUMULATIVE
                    )
                    for dp in data.data_points:
                        attrs = tuple(sorted((kv.key, _text(kv.value)) for kv in dp.attributes))
                        who = _who(resource, dict(attrs))
                        if who is None:
                            self.dropped["no_service"] += 1
                            continue
                        which = dp.WhichOneof("value")
                        if which is None or dp.flags & FLAG_NO_RECORDED_VALUE:
                            self.dropped["no_value"] += 1
                            continue
                        value = float(getattr(dp, which))
                        t_s = dp.time_unix_nano / 1e9
                        latest = t_s if latest is None else max(latest, t_s)
                        if rate:
                            self.add_total(
                                *who, metric.name, attrs, t_s, value, dp.start_time_unix_nano
                            )
                        else:
                            self.add(*who, metric.name, attrs, t_s, value)
        return latest


def _text(value: Any) -> str:
    which = value.WhichOneof("value")
    return "" if which is None else str(getattr(value, which))


def _who(resource: dict[str, str], attrs: dict[str, str]) -> tuple[str, str] | None:
    """(service, instance) of a point; None when neither the resource nor the point names one."""
    pod = resource.get("k8s.pod.name") or attrs.get("k8s.pod.name") or attrs.get("pod")
    service = resource.get("service.name")
    if service and not service.startswith("unknown_service"):
        return service, pod or service
    if pod:
        return pod_service(pod), pod
    return None


@dataclass
class Matrices:
    """The rows the method reads: ``normal`` then ``window``, columns = ``series``."""

    at_s: float
    step_s: float
    series: list[Series]
    normal: np.ndarray
    window: np.ndarray


def spacing_s(columns: Iterable[Sequence[float]]) -> float | None:
    """Median over series of the median gap between a series' consecutive distinct times."""
    gaps = []
    for times in columns:
        ts = np.unique(np.asarray(times, dtype=np.float64))
        if len(ts) >= 2:
            gaps.append(float(np.median(np.diff(ts))))
    return float(np.median(gaps)) if gaps else None


def matrices(
    history: History,
    at_s: float,
    history_s: float,
    window_s: float,
    step_s: float | None = None,
) -> Matrices:
    """Every series with a point in (T - window_s - history_s, T], as rows of ``step_s`` (the
    points' own spacing when None) ending at T; a row holds the mean of its points, NaN when it
    has none. Leading normal rows where no series has a value are left out."""
    lo = at_s - window_s - history_s
    cols: list[tuple[Series, list[tuple[float, float]]]] = []
    for s in sorted(history.series.values(), key=lambda x: x.index):
        pts = [(t, v) for t, v in s.points if lo < t <= at_s]
        if pts:
            cols.append((s, pts))
    step = step_s or spacing_s([t for t, _ in pts] for _, pts in cols) or DEFAULT_STEP_S
    n_window = max(1, round(window_s / step))
    n_total = n_window + max(0, round(history_s / step))
    sums = np.zeros((n_total, len(cols)))
    counts = np.zeros((n_total, len(cols)))
    for j, (_, pts) in enumerate(cols):
        for t, v in pts:
            back = math.floor((at_s - t) / step)  # row `back` (from the end) holds (T-(b+1)s, T-bs]
            if 0 <= back < n_total:
                sums[n_total - 1 - back, j] += v
                counts[n_total - 1 - back, j] += 1
    with np.errstate(invalid="ignore"):
        data = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    normal, window = data[: n_total - n_window], data[n_total - n_window :]
    filled = np.flatnonzero(~np.all(np.isnan(normal), axis=1))
    normal = normal[filled[0] :] if len(filled) else normal[:0]
    return Matrices(at_s, step, [s for s, _ in cols], normal, window)


@dataclass(frozen=True)
class Ranked:
    series: Series
    score: float  # -inf: the series has no value to score


def rank(method: str, m: Matrices) -> list[Ranked]:
    """Every series ranked by the method; the whole incident window is the anomalous part (the
    alert only says that something is wrong by T), BARO's change point may move it earlier."""
    if not m.series:
        return []
    labels = [str(j) for j in range(len(m.series))]
    normal = m.normal if len(m.normal) else None
    ranking = METHODS[method](normal, m.window, labels, anomalous_from=0)
    return [Ranked(m.series[int(label)], score) for label, score in ranking]


def iso(t_s: float) -> str:
    d = dt.datetime.fromtimestamp(t_s, tz=dt.UTC)
    text = d.isoformat(timespec="milliseconds" if d.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def answer_record(
    fingerprint: str, at_s: float, method: str, ranked: list[Ranked]
) -> dict[str, Any]:
    """The ``causes.ranked`` record: services in order of their first series in the ranking,
    each with that series as its signal. Baselines give scores, not probabilities: null."""
    causes: list[dict[str, Any]] = []
    seen: set[str] = set()
    for position, r in enumerate(ranked, start=1):
        s = r.series
        if s.service in seen:
            continue
        seen.add(s.service)
        score = (
            f"scored {r.score:.3g}"
            if math.isfinite(r.score)
            else "is unscored (no value in the window, or no normal history to compare with)"
        )
        where = s.instance if s.instance != s.service else f"service {s.service}"
        causes.append(
            {
                "rank": len(causes) + 1,
                "entity": {"kind": "service", "name": s.service},
                "signal": s.metric,
                "probability": None,
                "evidence": [],
                "explanation": (
                    f"{METHOD_NAMES[method]}: {s.label} of {where} {score}"
                    f" ({SCORE_MEANING[method]}); series {position} of {len(ranked)}."
                ),
            }
        )
        if len(causes) >= MAX_CAUSES:
            break
    return {
        "schema_version": 1,
        "incident_id": f"{method}-{fingerprint}",
        "alert_fingerprints": [fingerprint],
        "generated_at": iso(at_s),
        "abstained": False,
        "abstain_reason": None,
        "causes": causes,
        "ruled_out": [],
    }


def answer(
    history: History,
    fingerprint: str,
    at_s: float,
    method: str,
    history_s: float,
    window_s: float,
    step_s: float | None = None,
) -> tuple[dict[str, Any], Matrices]:
    m = matrices(history, at_s, history_s, window_s, step_s)
    return answer_record(fingerprint, at_s, method, rank(method, m)), m


# --------------------------------------------------------------------------------- Kafka


@dataclass
class RunConfig:
    bootstrap: str
    method: str
    history_s: float = DEFAULT_HISTORY_S
    window_s: float = DEFAULT_WINDOW_S
    step_s: float | None = None
    max_series: int = DEFAULT_MAX_SERIES
    max_points: int = DEFAULT_MAX_POINTS
    catchup_timeout_s: float = 30.0
    progress_s: float = 10.0


def say(msg: str) -> None:
    print(f"[replay-baseline {time.strftime('%H:%M:%S')}] {msg}", flush=True)


async def _partitions(consumer: Any, topic: str) -> list[Any]:
    """The topic's partitions, waiting (with a note every 10 s) until the topic exists."""
    from aiokafka import TopicPartition

    waited = 0.0
    while True:
        await consumer.topics()  # refreshes the cluster metadata
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return [TopicPartition(topic, p) for p in sorted(parts)]
        if waited % 10 == 0:
            say(f"waiting for topic {topic} to exist")
        await asyncio.sleep(1.0)
        waited += 1.0


class Runner:
    """One metrics consumer, one alerts consumer (no group, from the earliest offsets), one
    producer; alerts are answered one at a time, each once."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.history = History(
            keep_s=config.history_s + config.window_s + GRACE_S,
            max_series=config.max_series,
            max_points=config.max_points,
        )
        self.applied: dict[Any, int] = {}  # partition -> next offset not yet in the history
        self.read_until: dict[Any, float] = {}  # partition -> latest point time read from it
        self.metric_records = 0
        self.undecodable = 0
        self.progressed = asyncio.Event()
        self.answered: set[str] = set()
        self.stats: Counter[str] = Counter()

    async def run(self, stop: asyncio.Event) -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

        c = self.config
        common: dict[str, Any] = {
            "bootstrap_servers": c.bootstrap,
            "group_id": None,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "fetch_max_wait_ms": 100,
            **kafka_auth.client_options(),
        }
        metrics = AIOKafkaConsumer(**common, max_partition_fetch_bytes=8 << 20)
        alerts = AIOKafkaConsumer(**common)
        producer = AIOKafkaProducer(
            bootstrap_servers=c.bootstrap, acks="all", **kafka_auth.client_options()
        )
        await metrics.start()
        await alerts.start()
        await producer.start()
        try:
            metric_tps = await _partitions(metrics, METRICS_TOPIC)
            alert_tps = await _partitions(alerts, ALERTS_TOPIC)
            metrics.assign(metric_tps)
            alerts.assign(alert_tps)
            await metrics.seek_to_beginning(*metric_tps)
            await alerts.seek_to_beginning(*alert_tps)
            say(
                f"ready: {METHOD_NAMES[c.method]} on {c.bootstrap}; {METRICS_TOPIC}"
                f" ({len(metric_tps)} partitions) and {ALERTS_TOPIC} ({len(alert_tps)}) from the"
                f" earliest offsets; history {c.history_s:g} s, window {c.window_s:g} s;"
                f" answers to {CAUSES_TOPIC}"
            )
            tasks = [
                asyncio.create_task(self._consume_metrics(metrics)),
                asyncio.create_task(self._consume_alerts(alerts, producer, metric_tps)),
                asyncio.create_task(self._progress()),
                asyncio.create_task(stop.wait()),
            ]
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for t in done:
                t.result()  # a consumer that failed raises here
        finally:
            for closable in (metrics, alerts, producer):
                try:
                    await closable.stop()
                except Exception as e:  # closing after a broker failure: report, go on
                    say(f"closing a Kafka client failed: {e!r}")
            self._progress_line()

    async def _consume_metrics(self, consumer: Any) -> None:
        from google.protobuf.message import DecodeError
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
            ExportMetricsServiceRequest,
        )

        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=500)
            for tp, records in batches.items():
                for r in records:
                    try:
                        request = ExportMetricsServiceRequest.FromString(r.value or b"")
                    except DecodeError:
                        self.undecodable += 1
                    else:
                        latest = self.history.add_request(request)
                        if latest is not None:
                            self.read_until[tp] = max(self.read_until.get(tp, latest), latest)
                    self.metric_records += 1
                    self.applied[tp] = r.offset + 1
            if batches:
                self.history.advance(self._watermark(consumer))
                self.progressed.set()

    def _watermark(self, consumer: Any) -> float:
        """Event time every metrics partition has been read up to: the least of the latest point
        times of the partitions with records still to read (a partition's records are in event
        time order, as a Collector or the replay writes them); when none has, the latest read."""
        behind = [
            self.read_until.get(tp, -math.inf)
            for tp in consumer.assignment()
            if self.applied.get(tp, 0) < (consumer.highwater(tp) or 0)
        ]
        return min(behind) if behind else max(self.read_until.values(), default=-math.inf)

    async def _caught_up(self, tps: list[Any]) -> tuple[bool, float, int]:
        """Wait until every metrics record the broker holds now is in the history (bounded by
        catchup_timeout_s). Returns (complete, seconds waited, records behind at the start)."""
        from pipeline.kafka import high_water_marks

        t0 = time.monotonic()
        marks = await high_water_marks(self.config.bootstrap, tps)
        behind = sum(max(0, hw - self.applied.get(tp, 0)) for tp, hw in marks.items())
        while True:
            if all(self.applied.get(tp, 0) >= hw for tp, hw in marks.items()):
                return True, time.monotonic() - t0, behind
            left = self.config.catchup_timeout_s - (time.monotonic() - t0)
            if left <= 0:
                return False, time.monotonic() - t0, behind
            self.progressed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.progressed.wait(), timeout=min(left, 0.5))

    async def _consume_alerts(self, consumer: Any, producer: Any, metric_tps: list[Any]) -> None:
        from jobs.causal.alerts import parse_webhook

        c = self.config
        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=100)
            records = sorted(
                (r for rs in batches.values() for r in rs), key=lambda r: (r.timestamp, r.offset)
            )
            for r in records:
                try:
                    alerts = parse_webhook(orjson.loads(r.value or b""))
                except ValueError as e:  # bad JSON or a payload off the schema
                    self.stats["invalid_alert_payloads"] += 1
                    say(f"skipping an alert payload (offset {r.offset}): {str(e)[:200]}")
                    continue
                for a in alerts:
                    if not a.firing or a.fingerprint in self.answered:
                        self.stats["resolved_or_repeated"] += 1
                        continue
                    self.answered.add(a.fingerprint)
                    complete, waited, behind = await self._caught_up(metric_tps)
                    t0 = time.monotonic()
                    record, m = answer(
                        self.history,
                        a.fingerprint,
                        a.starts_at_s,
                        c.method,
                        c.history_s,
                        c.window_s,
                        c.step_s,
                    )
                    await producer.send_and_wait(
                        CAUSES_TOPIC, orjson.dumps(record), key=a.fingerprint.encode()
                    )
                    self.stats["answered"] += 1
                    top = ", ".join(x["entity"]["name"] for x in record["causes"][:3]) or "-"
                    note = "" if complete else f"; DATA INCOMPLETE after {waited:.1f} s"
                    say(
                        f"alert {a.fingerprint} startsAt {iso(a.starts_at_s)}: waited"
                        f" {waited:.2f} s for {behind} metric records{note}; {len(m.series)}"
                        f" series x {len(m.normal)}+{len(m.window)} rows of {m.step_s:.4g} s;"
                        f" top {top} ({time.monotonic() - t0:.2f} s)"
                    )

    def _progress_line(self) -> None:
        h = self.history
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(h.dropped.items())) or "none"
        latest = iso(h.latest_s) if math.isfinite(h.latest_s) else "-"
        say(
            f"metrics: {self.metric_records} records ({self.undecodable} undecodable),"
            f" {h.added} points taken, {h.kept()} kept in {len(h.series)} series, {h.expired}"
            f" expired; event time {latest};"
            f" dropped: {dropped}; alerts answered {self.stats['answered']}"
        )

    async def _progress(self) -> None:
        if self.config.progress_s <= 0:
            await asyncio.Event().wait()
        while True:
            await asyncio.sleep(self.config.progress_s)
            self._progress_line()


async def serve(config: RunConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await Runner(config).run(stop)
    say("stopped")


@click.command("replay-baseline")
@click.option(
    "--method",
    type=click.Choice(sorted(METHODS)),
    required=True,
    help="baro: robust z |x - median| / IQR after a BOCPD change point (Pham et al., FSE 2024);"
    " nsigma: |x - mean| / std against the normal history (the 3-sigma rule).",
)
@click.option(
    "--bootstrap-servers",
    required=True,
    help="Kafka bootstrap address (host:port) holding otlp_metrics, alerts and causes.ranked.",
)
@click.option(
    "--history-s",
    type=click.FloatRange(min=0.0),
    default=DEFAULT_HISTORY_S,
    show_default=True,
    help="Normal history before the incident window, in event-time seconds.",
)
@click.option(
    "--window-s",
    type=click.FloatRange(min=1.0),
    default=DEFAULT_WINDOW_S,
    show_default=True,
    help="Incident window ending at the alert's startsAt, in seconds.",
)
@click.option(
    "--step-s",
    type=click.FloatRange(min=0.001),
    default=None,
    help="Row width in seconds. Default: the points' own spacing (median gap per series,"
    f" median over series), {DEFAULT_STEP_S:g} s when no series has two points yet.",
)
@click.option(
    "--max-series",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_SERIES,
    show_default=True,
    help="Series kept; points of further new series are dropped and counted.",
)
@click.option(
    "--max-points",
    type=click.IntRange(min=2),
    default=DEFAULT_MAX_POINTS,
    show_default=True,
    help="Points kept per series (the oldest go first, counted).",
)
@click.option(
    "--catchup-timeout-s",
    type=click.FloatRange(min=0.0),
    default=30.0,
    show_default=True,
    help="How long an alert waits for the metrics the broker held when it was read; after"
    " that it is answered from what was read (the progress line says so).",
)
@click.option(
    "--progress-s",
    type=click.FloatRange(min=0.0),
    default=10.0,
    show_default=True,
    help="Seconds between progress lines (0: none).",
)
def replay_baseline(
    method: str,
    bootstrap_servers: str,
    history_s: float,
    window_s: float,
    step_s: float | None,
    max_series: int,
    max_points: int,
    catchup_timeout_s: float,
    progress_s: float,
) -> None:
    """Answer alerts with BARO or N-Sigma through Kafka, as a system under test of the replay
    tool (../shared/replay/replay.py), so the baselines are scored exactly as worldline is.

    \b
    Reads   otlp_metrics  OTLP ExportMetricsServiceRequest per record (gauges and sums)
            alerts        Alertmanager webhook v4 JSON
    Writes  causes.ranked one JSON record per firing alert, key = its fingerprint

    For an alert with startsAt T it first reads every otlp_metrics record the broker held when
    the alert was read, then ranks every series: normal history (T - window - history,
    T - window], incident window (T - window, T]. Each series names its service (the resource's
    service.name, else its Kubernetes pod name without the two generated suffixes); services
    are listed in the order their first series is ranked; probability is null (the methods give
    scores). Both consumers read from the earliest offsets without a consumer group and each
    fingerprint is answered once; nothing is committed. Runs until SIGTERM or Ctrl-C.

    \b
    Example (from the repository root):
      .venv/bin/python ../shared/replay/replay.py ../shared/data/nezha-ob --embedded-broker \\
        --broker-python .venv/bin/python --ready-pattern 'ready:' --out /tmp/replay-baro \\
        --sut-cmd '.venv/bin/worldline evaluate replay-baseline --method baro \\
                   --bootstrap-servers {bootstrap}'
    """
    config = RunConfig(
        bootstrap=bootstrap_servers,
        method=method,
        history_s=history_s,
        window_s=window_s,
        step_s=step_s,
        max_series=max_series,
        max_points=max_points,
        catchup_timeout_s=catchup_timeout_s,
        progress_s=progress_s,
    )
    try:
        asyncio.run(serve(config))
    except KeyboardInterrupt:  # pragma: no cover - the signal handler normally takes it
        sys.exit(130)
