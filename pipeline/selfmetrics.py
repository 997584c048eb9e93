"""worldline's own metrics, in Prometheus' exposition format (``prometheus-client``).

Each stage process records its samples in the metric families below. Under ``worldline up`` the
stages run on one host and record in prometheus-client's multiprocess mode: the supervisor gives
every child ``PROMETHEUS_MULTIPROC_DIR`` (``<data_dir>/metrics/processes``, emptied when ``up``
starts), each process writes its samples there, and the receiver's HTTP server serves the sum
at ``/metrics``. Counters and histograms of a stage that crashed stay in the sum, so totals span
restarts. A stage run on its own (its own host or container) keeps its samples in memory and,
with ``metrics_port`` set, serves them itself on ``http_host:metrics_port``.

The stages' existing counters feed the families: ``CounterFeed`` adds to a family what grew in
a stage's own running totals since the last feed (ingest's ``counters``, the receivers'
``ReceiverCounters``, the causal stage's counters), so nothing is counted twice. What the
world model holds (series, edges and their caps, rows it dropped, its watermark) is a gauge
set from the model itself; its drop counts live in the model's checkpoint, so they are gauges
too (the most recent value wins), exact across restarts.

Consumer lag, the broker's state, stage states and restarts are read by the HTTP server itself
(``pipeline.monitor``), from the broker and from the supervisor's files, so they are true even
when a stage is dead.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from pipeline.settings import Settings
from pipeline.stages import MULTIPROC_ENV

log = logging.getLogger("worldline.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def multiproc_path() -> str | None:
    """The multiprocess directory this process records in, or None (samples in memory).
    prometheus-client reads the variable when it is first imported: it is set by the parent."""
    path = os.environ.get(MULTIPROC_ENV)
    return path if path and os.path.isdir(path) else None


# ---------------------------------------------------------------------------- the families
RECORDS_IN = Counter(
    "worldline_records_in",
    "Records a stage received: HTTP requests (receiver), Kafka records (ingest, causal-search),"
    " segments applied and changes (world-model).",
    ["stage"],
)
BYTES_IN = Counter(
    "worldline_bytes_in", "Bytes a stage received (request bodies, Kafka record values).", ["stage"]
)
DEADLETTERS = Counter(
    "worldline_deadletters",
    "Records or requests refused and written to the deadletter topic, by stage and reason.",
    ["stage", "reason"],
)
DEADLETTERS_LOST = Counter(
    "worldline_deadletters_lost",
    "Refusals whose dead letter could not be written (the broker was unavailable).",
    ["stage"],
)
HTTP_REFUSED = Counter(
    "worldline_http_refused",
    "HTTP requests the receivers refused, by reason (dead-lettered or not: unauthorized,"
    " broker_unavailable and method_not_allowed are only counted).",
    ["reason"],
)
ITEMS_STORED = Counter(
    "worldline_items_stored",
    "Spans, metric points or log lines stored in sealed segments.",
    ["stage"],
)
REDELIVERED = Counter(
    "worldline_redelivered_skipped",
    "Kafka records skipped because their offsets were already stored (re-delivery).",
    ["stage"],
)
SEGMENTS_SEALED = Counter(
    "worldline_segments_sealed",
    "Segments sealed, by stage and segment signal.",
    ["stage", "signal"],
)
ITEM_CAP_SPLITS = Counter(
    "worldline_ingest_item_cap_splits",
    "Times an ingest stage sealed a batch of records in more than one go because its items"
    " reached segment_max_items (what it holds in memory is bounded; nothing is dropped).",
    ["stage"],
)
MODEL_SIZE = Gauge(
    "worldline_model_size",
    "What the world model holds, by kind (baseline_series, metric_series, graph_edges,"
    " graph_nodes, templates, changes, counter_state: last points of cumulative series).",
    ["kind"],
    multiprocess_mode="mostrecent",
)
MODEL_CAP = Gauge(
    "worldline_model_cap",
    "The cap of each kind of worldline_model_size (beyond it new items are refused and counted"
    " in worldline_model_dropped).",
    ["kind"],
    multiprocess_mode="mostrecent",
)
MODEL_DROPPED = Gauge(
    "worldline_model_dropped",
    "Rows and items the world model dropped since its state began, by reason (late_rows,"
    " buffer_full, series_cap, edge_cap, ...); kept in its checkpoint, so exact across restarts.",
    ["reason"],
    multiprocess_mode="mostrecent",
)
MODEL_WATERMARK = Gauge(
    "worldline_model_watermark_seconds",
    "The world model's event-time watermark (unix seconds): data up to it has been applied.",
    multiprocess_mode="mostrecent",
)
MODEL_WATERMARK_DELAY = Gauge(
    "worldline_model_watermark_delay_seconds",
    "Wall clock minus the world model's watermark, set every few seconds by the world model"
    " (time() - worldline_model_watermark_seconds is the same, exact at any time).",
    multiprocess_mode="mostrecent",
)
SEARCH_SECONDS = Histogram(
    "worldline_search_duration_seconds",
    "Duration of one causal search (one incident update), by outcome (named, abstained).",
    ["outcome"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
ANSWER_SECONDS = Histogram(
    "worldline_alert_answer_seconds",
    "From an alert's arrival to its first causes.ranked record (includes the wait for the"
    " world model to hold the alert's data, at most answer_wait_s).",
    buckets=(0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 120.0, 300.0),
)
INCIDENTS = Gauge(
    "worldline_incidents",
    "Incidents the causal stage keeps (firing and recent).",
    multiprocess_mode="mostrecent",
)
INCIDENTS_CAP = Gauge(
    "worldline_incidents_cap",
    "The most incidents kept (the oldest are evicted beyond it).",
    multiprocess_mode="mostrecent",
)
CAUSAL_RECORDS = Counter(
    "worldline_causal_records",
    "causes.ranked records published, by whether the search abstained.",
    ["abstained"],
)


class CounterFeed:
    """Adds to prometheus counters what grew in a stage's own running totals since the last
    feed. One per stage process (its totals start at zero with the process)."""

    def __init__(self) -> None:
        self._seen: dict[tuple[int, tuple[str, ...]], float] = {}

    def feed(self, family: Counter, labels: tuple[str, ...], total: float) -> None:
        key = (id(family), labels)
        grown = total - self._seen.get(key, 0.0)
        if grown > 0:
            family.labels(*labels).inc(grown)
            self._seen[key] = total


def feed_ingest(feed: CounterFeed, stage: str, counters: Mapping[str, int]) -> None:
    """An ingest stage's ``SegmentIngestor.counters``."""
    refused = {k[len("refused_") :]: v for k, v in counters.items() if k.startswith("refused_")}
    records = counters.get("records_stored", 0) + counters.get("redelivered_skipped", 0)
    feed.feed(RECORDS_IN, (stage,), records + sum(refused.values()))
    feed.feed(BYTES_IN, (stage,), counters.get("bytes_in", 0))
    for reason, n in refused.items():
        feed.feed(DEADLETTERS, (stage, reason), n)
    feed.feed(ITEMS_STORED, (stage,), counters.get("items_stored", 0))
    feed.feed(REDELIVERED, (stage,), counters.get("redelivered_skipped", 0))
    feed.feed(ITEM_CAP_SPLITS, (stage,), counters.get("item_cap_splits", 0))
    for key, n in counters.items():
        if key.startswith("segments_") and key != "segments_removed_by_retention":
            feed.feed(SEGMENTS_SEALED, (stage, key[len("segments_") :]), n)


def feed_receiver(feed: CounterFeed, counters: Any) -> None:
    """The receivers' ``ReceiverCounters``."""
    feed.feed(RECORDS_IN, ("receiver",), sum(counters.requests.values()))
    feed.feed(BYTES_IN, ("receiver",), sum(counters.bytes_in.values()))
    for reason, n in counters.refused.items():
        feed.feed(HTTP_REFUSED, (reason,), n)
    for reason, n in counters.deadletter_reasons.items():
        feed.feed(DEADLETTERS, ("receiver", reason), n)
    feed.feed(DEADLETTERS_LOST, ("receiver",), counters.deadletters_lost)


def feed_causal(feed: CounterFeed, stage: str, counters: Mapping[str, int]) -> None:
    """The causal stage's counters (``alerts_received``, ``bytes_in``, ``refused``, ...)."""
    feed.feed(RECORDS_IN, (stage,), counters.get("payloads", 0))
    feed.feed(BYTES_IN, (stage,), counters.get("bytes_in", 0))
    feed.feed(DEADLETTERS, (stage, "invalid_alert"), counters.get("refused", 0))
    feed.feed(REDELIVERED, (stage,), counters.get("redelivered_skipped", 0))
    abstained = counters.get("abstained", 0)
    feed.feed(CAUSAL_RECORDS, ("true",), abstained)
    feed.feed(CAUSAL_RECORDS, ("false",), counters.get("records", 0) - abstained)


def feed_world_model_counters(feed: CounterFeed, stage: str, counters: Mapping[str, int]) -> None:
    """The world-model stage's own counters (segments and changes this process applied)."""
    received = (
        counters.get("segments_applied", 0)
        + counters.get("changes_applied", 0)
        + counters.get("changes_refused", 0)
    )
    feed.feed(RECORDS_IN, (stage,), received)
    feed.feed(DEADLETTERS, (stage, "invalid_change"), counters.get("changes_refused", 0))


def set_model_gauges(model: Any, now_s: float | None = None) -> None:
    """Sizes, caps, drops and watermark of a ``WorldModel`` (cheap: lengths and small dicts)."""
    graph = model.graph
    sizes = {
        "baseline_series": (len(model.baselines), model.baselines.max_series),
        "metric_series": (len(model.metric_series), model.config.max_series),
        "graph_edges": (len(graph.edges), graph.config.max_edges),
        "graph_nodes": (len(graph.nodes), graph.config.max_nodes),
        "templates": (len(model.known_templates), model.config.max_known_templates),
        "changes": (len(model.changes), model.config.max_changes),
        "counter_state": (len(model.metrics.last), model.metrics.max_series),
    }
    for kind, (size, cap) in sizes.items():
        MODEL_SIZE.labels(kind).set(size)
        MODEL_CAP.labels(kind).set(cap)
    dropped: dict[str, float] = {}
    for source in (
        model.dropped,
        graph.dropped,
        model.metrics.dropped,
        model.baselines.refusals,
    ):
        for reason, n in source.items():
            dropped[reason] = dropped.get(reason, 0) + n
    for reason, n in dropped.items():
        MODEL_DROPPED.labels(reason).set(n)
    watermark = model.watermark
    if watermark:
        MODEL_WATERMARK.set(watermark / 1e9)
        MODEL_WATERMARK_DELAY.set((time.time() if now_s is None else now_s) - watermark / 1e9)


# ---------------------------------------------------------------------------- exposition
class _ThisProcess:
    """This process's own samples (no multiprocess directory): the default registry."""

    def collect(self) -> Iterable[Any]:
        return REGISTRY.collect()


def registry(extra: Iterable[Collector] = ()) -> CollectorRegistry:
    """What ``/metrics`` serves: every stage's samples (multiprocess) or this process's, then
    ``extra`` collectors (the HTTP server's broker, lag and supervisor readings)."""
    reg = CollectorRegistry(auto_describe=False)
    path = multiproc_path()
    if path is not None:
        MultiProcessCollector(reg, path)
    else:
        reg.register(_ThisProcess())
    for collector in extra:
        reg.register(collector)
    return reg


def exposition(reg: CollectorRegistry) -> bytes:
    return generate_latest(reg)


def serve_own_metrics(settings: Settings) -> Any:
    """With ``metrics_port`` set and no multiprocess directory (a stage run on its own), serve
    this process's samples on ``http_host:metrics_port`` from a daemon thread. Returns the
    server (``shutdown()`` stops it), or None when it does not serve."""
    if settings.metrics_port is None or multiproc_path() is not None:
        return None
    server, _thread = start_http_server(settings.metrics_port, addr=settings.http_host)
    log.info("serving /metrics on %s:%d", settings.http_host, settings.metrics_port)
    return server
