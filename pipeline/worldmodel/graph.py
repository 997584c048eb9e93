"""The time-versioned dependency graph, learned from span tables (``schemas.segments.SPANS``)
and from the dependencies services' client metrics name.

``EdgeStore`` is the pure core: ``observe_spans(table, now)`` / ``advance(now)`` take the data
and the event time, return the graph deltas they caused (dicts valid against
``schemas/graph.deltas.schema.json``), and never read the clock. The stream worker around it
decodes, calls, publishes the deltas and checkpoints ``snapshot()`` bytes.

Every edge points from the dependent to what it depends on, whatever its relation, so "what can
break the symptom" is always "follow out-edges":

- ``calls``: service A -> service B from a client (3) / producer (4) span in A whose child is a
  server (2) / consumer (5) span in B (provenance ``trace_pairing``); from any other
  cross-service parent/child pair, e.g. spans with kinds unset (``parent_child``); to a virtual
  node for an uninstrumented callee seen only from client spans (``client_span``).
- ``publishes_to`` / ``consumes_from``: service -> queue, from producer spans and from consumer
  or receive spans carrying ``messaging.system`` (``client_span``). A broker is never
  instrumented, so messaging spans always go through the queue node, at once, and a producer
  paired with its consumer does not also make a direct ``calls`` edge.
- ``runs_on``: service -> pod, pod -> host, or service -> host when there is no pod
  (``resource_attributes``). The ``hosts`` relation of the schema is not emitted.
- ``calls`` / ``publishes_to`` from a service's client metrics (``observe_described``,
  ``client_metric``): the dependency their attributes name (``worldmodel.peers``), so a
  deployment that sends metrics and no traces, or traces only sampled, still has its graph.

Virtual nodes (naming convention). A client or producer span with no child span, once the
pairing wait has passed (so an instrumented callee whose spans arrive in a later batch is paired
instead), becomes an edge to a node named from its attributes; ``host`` is ``server.address``
with a Kubernetes service DNS name (``orders.prod.svc.cluster.local``) cut to its first label:

============================  =========  ===================================================
attributes                    kind       name
============================  =========  ===================================================
``messaging.system``          queue      ``<system>:<destination>``, else ``<system>:<host>``
``db.system`` redis/memcached/ cache     ``<system>:<host>``, else ``<system>:<db.namespace>``
valkey
other ``db.system``           database   ``<system>:<db.namespace>``, else ``<system>:<host>``
``peer.service``              external   ``<peer.service>``
``server.address`` only       external   ``<host>``
============================  =========  ===================================================

(a numeric ``db.namespace``, a Redis database index, is ignored; with neither part the name is
the bare system). When a client span with the same virtual name was once paired with a server
span of service B, an unmatched one is credited to the edge to B instead (its server span was
lost, the callee is instrumented), so an instrumented callee never doubles as a virtual node.

Time. Each edge and node keeps validity intervals ``[start, end)`` in event time: it is valid
from the first span that evidences it; it expires when nothing evidenced it for ``expiry_s``
(``end = last_seen + expiry``), and evidence after that opens a new interval. ``as_of(t)`` reads
the graph valid at ``t``. Per-edge stats (rate, error ratio, latency p50/p95 from client-side
durations) are kept for the current interval of ``interval_s`` and published as ``update``
deltas when the interval closes.

Bounds. Edges, nodes, the pairing buffers, the peer map and the validity intervals per element
are capped; whatever does not fit is counted by reason in ``EdgeStore.dropped``. Expired
elements are kept as history for ``as_of`` and are the first to be evicted when a cap is hit.
"""

from __future__ import annotations

import functools
import heapq
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

import networkx as nx
import numpy as np
import orjson
import polars as pl
import pyarrow as pa

SNAPSHOT_VERSION = 1
DELTA_SCHEMA_VERSION = 1

EntityKind = Literal[
    "service", "operation", "host", "pod", "database", "cache", "queue", "external", "dependency"
]
ENTITY_KINDS: tuple[str, ...] = (
    "service",
    "operation",
    "host",
    "pod",
    "database",
    "cache",
    "queue",
    "external",
    "dependency",
)
VIRTUAL_KINDS = frozenset({"database", "cache", "queue", "external", "dependency"})
Relation = Literal["calls", "runs_on", "hosts", "publishes_to", "consumes_from"]
DEPENDENCY_RELATIONS = ("calls", "publishes_to", "consumes_from")
INFRASTRUCTURE_RELATIONS = ("runs_on",)
Provenance = Literal[
    "trace_pairing",
    "parent_child",
    "client_span",
    "client_metric",
    "resource_attributes",
    "given",
    "co_anomaly",
]
PROVENANCE_WEIGHT: dict[str, float] = {
    "given": 1.0,
    "trace_pairing": 0.9,
    "resource_attributes": 0.9,
    "parent_child": 0.6,
    "client_span": 0.5,
    "client_metric": 0.5,
    "co_anomaly": 0.3,
}
"""Confidence one piece of evidence of each provenance gives; n pieces give 1 - (1 - w)^n."""
EVIDENCE_SATURATION = 20

# OTLP SpanKind
KIND_UNSPECIFIED, KIND_INTERNAL, KIND_SERVER, KIND_CLIENT, KIND_PRODUCER, KIND_CONSUMER = range(6)
STATUS_ERROR = 2
CALLER_KINDS = (KIND_CLIENT, KIND_PRODUCER)
CALLEE_KINDS = (KIND_SERVER, KIND_CONSUMER)
BUFFERED_PARENT_KINDS = (KIND_UNSPECIFIED, KIND_CLIENT, KIND_PRODUCER)
"""Spans kept waiting for a child from another batch (cross-service children hang off these)."""
BUFFERED_CHILD_KINDS = (KIND_UNSPECIFIED, KIND_SERVER, KIND_CONSUMER)
"""Spans kept waiting for a parent from another batch (entry spans of a service)."""
CACHE_SYSTEMS = ("redis", "memcached", "valkey")
K8S_SERVICE_DNS = r"^([^.]+)\.[^.]+\.svc(?:\.cluster\.local)?\.?$"
LATENCY_BUCKET_RATIO = 1.1
"""Latency histograms use log buckets [r^b, r^(b+1)) ns: quantiles within about 5 %."""

_LOG_BUCKET_RATIO = math.log(LATENCY_BUCKET_RATIO)
_NS = 1_000_000_000
_PEER_COLUMNS = (
    "db_system",
    "db_name",
    "messaging_system",
    "messaging_destination",
    "peer_service",
    "server_address",
)
PENDING_SCHEMA: dict[str, Any] = {
    "trace_hi": pl.UInt64,
    "trace_lo": pl.UInt64,
    "span": pl.UInt64,
    "parent": pl.UInt64,
    "service": pl.String,
    "kind": pl.Int8,
    "start": pl.Int64,
    "duration": pl.Int64,
    "error": pl.Boolean,
    **{column: pl.String for column in _PEER_COLUMNS},
    "deadline": pl.Int64,
    "matched": pl.Boolean,
}
FRAME_SCHEMA: dict[str, Any] = {
    **{k: v for k, v in PENDING_SCHEMA.items() if k not in {"deadline", "matched"}},
    "pod_name": pl.String,
    "host_name": pl.String,
}
"""Columns of ``span_frame``: what the graph reads of a SPANS table."""
_EVIDENCE_KEYS = [
    "source_kind",
    "source_name",
    "target_kind",
    "target_name",
    "relation",
    "provenance",
]


class EntityRef(NamedTuple):
    """A node of the world model: ``kind`` from ``ENTITY_KINDS``; for a service, ``name`` is its
    OTel ``service.name``; virtual dependencies are named as in the module docstring."""

    kind: str
    name: str

    @property
    def key(self) -> str:
        """The node id in graphs and exports: ``kind:name`` (split on the first colon)."""
        return f"{self.kind}:{self.name}"

    @classmethod
    def from_key(cls, key: str) -> EntityRef:
        kind, _, name = key.partition(":")
        return cls(kind, name)

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "name": self.name}


class EdgeKey(NamedTuple):
    source: EntityRef
    target: EntityRef
    relation: str


@dataclass(frozen=True)
class GraphConfig:
    interval_s: float = 60.0
    """Length of a stats interval (rate, error ratio, latency quantiles)."""
    expiry_s: float = 900.0
    """An edge or node not evidenced for this long expires."""
    pairing_wait_s: float = 10.0
    """How long after its end (event time) a span waits for its child / parent from a later
    batch. A partner arriving in the call whose ``now`` passes the deadline still pairs; a span
    arriving already past its deadline pairs only within its own batch or with what waits.
    Must cover the delivery skew between services' exporters."""
    max_edges: int = 200_000
    max_nodes: int = 100_000
    max_pending_spans: int = 500_000
    """Cap of each pairing buffer (parents, children); the oldest are dropped first."""
    max_intervals_per_element: int = 16
    """Validity intervals remembered per edge or node; the oldest are forgotten first."""

    def __post_init__(self) -> None:
        if self.interval_s <= 0 or self.expiry_s <= 0 or self.pairing_wait_s < 0:
            raise ValueError("interval_s and expiry_s must be > 0, pairing_wait_s >= 0")
        if min(self.max_edges, self.max_nodes, self.max_intervals_per_element) < 1:
            raise ValueError("caps must be >= 1")


@dataclass
class ElementState:
    """What is known of one node or edge: evidence window, validity intervals, and (edges)
    provenance counts and the stats accumulators of the current interval."""

    first_seen: int
    last_seen: int
    intervals: list[list[int | None]]
    """``[start, end)`` in unix ns, oldest first; ``end`` is None while the element is live."""
    evidence: dict[str, int] = field(default_factory=dict)
    """Pieces of evidence per provenance (edges only)."""
    attributes: dict[str, Any] = field(default_factory=dict)
    requests: int = 0
    errors: int = 0
    latency_buckets: dict[int, int] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)
    """Stats of the last closed interval that had requests."""

    @property
    def live(self) -> bool:
        return self.intervals[-1][1] is None

    def valid_at(self, t: int) -> bool:
        for start, end in self.intervals:
            if start is not None and start <= t and (end is None or t < end):
                return True
        return False


# --------------------------------------------------------------------------- frames
def span_frame(spans: pa.Table) -> pl.DataFrame:
    """The columns of a SPANS table the graph reads, ids as little-endian uint64 words (parent 0
    when absent), dictionary strings decoded, ``error`` from the status code."""
    if spans.num_rows == 0:
        return pl.DataFrame(schema=FRAME_SCHEMA)
    trace = _fixed_binary_words(spans.column("trace_id"), 2)
    span = _fixed_binary_words(spans.column("span_id"), 1)
    parent = _fixed_binary_words(spans.column("parent_span_id"), 1)
    strings = ["service", *_PEER_COLUMNS, "pod_name", "host_name"]
    decoded = {name: spans.column(name).cast(pa.string()) for name in strings}
    frame = pl.from_arrow(
        pa.table(
            {
                "trace_hi": trace[:, 0],
                "trace_lo": trace[:, 1],
                "span": span[:, 0],
                "parent": parent[:, 0],
                "kind": spans.column("kind"),
                "start": spans.column("start_unix_nano"),
                "duration": spans.column("duration_ns"),
                "status_code": spans.column("status_code"),
                **decoded,
            }
        )
    )
    assert isinstance(frame, pl.DataFrame)
    frame = frame.with_columns(error=pl.col("status_code") == STATUS_ERROR)
    return frame.select([pl.col(name).cast(dtype) for name, dtype in FRAME_SCHEMA.items()])


def _fixed_binary_words(column: pa.ChunkedArray, words: int) -> np.ndarray:
    """A fixed-size binary column of ``8 * words`` bytes as an (n, words) uint64 array; nulls 0."""
    array = column.combine_chunks()
    n = len(array)
    out = np.zeros((n, words), dtype="<u8")
    data = array.buffers()[1]
    if n == 0 or data is None:
        return out
    flat = np.frombuffer(data, dtype="<u8", count=(array.offset + n) * words)
    out[:] = flat[array.offset * words :].reshape(n, words)
    if array.null_count:
        valid = array.is_valid().to_numpy(zero_copy_only=False)
        out[~valid] = 0
    return out


def _host_expr() -> pl.Expr:
    """``server.address`` with a Kubernetes service DNS name cut to the service name."""
    address = pl.col("server_address")
    short = address.str.extract(K8S_SERVICE_DNS, 1)
    return pl.when(address == "").then(None).otherwise(pl.coalesce(short, address))


def _virtual_target_exprs() -> tuple[pl.Expr, pl.Expr]:
    """(kind, name) of the virtual node a client span names (null when it names none)."""
    host = _host_expr()
    db_system = pl.col("db_system")
    db_name = pl.col("db_name")
    namespace = pl.when(db_name.str.contains(r"^\d*$")).then(None).otherwise(db_name)
    messaging = pl.col("messaging_system")
    is_cache = db_system.is_in(list(CACHE_SYSTEMS))
    database_part = (
        pl.when(is_cache).then(pl.coalesce(host, namespace)).otherwise(pl.coalesce(namespace, host))
    )
    queue_part = pl.coalesce(pl.col("messaging_destination"), host)
    kind = (
        pl.when(messaging.is_not_null())
        .then(pl.lit("queue"))
        .when(db_system.is_not_null())
        .then(pl.when(is_cache).then(pl.lit("cache")).otherwise(pl.lit("database")))
        .when(pl.col("peer_service").is_not_null() | host.is_not_null())
        .then(pl.lit("external"))
        .otherwise(None)
    )
    name = (
        pl.when(messaging.is_not_null())
        .then(pl.coalesce(pl.concat_str([messaging, pl.lit(":"), queue_part]), messaging))
        .when(db_system.is_not_null())
        .then(pl.coalesce(pl.concat_str([db_system, pl.lit(":"), database_part]), db_system))
        .otherwise(pl.coalesce(pl.col("peer_service"), host))
    )
    return kind, name


def dependency_key_expr() -> pl.Expr:
    """``kind:name`` of what a client span calls, named as the graph names virtual nodes
    (``database:postgresql:orders``, ``cache:redis:cart-cache``, ``queue:kafka:orders``,
    ``external:stripe``); null when the span names no peer. Derived signals use it, so an edge's
    signals and the graph's node share one name. Needs the peer columns as strings."""
    kind, name = _virtual_target_exprs()
    return pl.concat_str([kind, pl.lit(":"), name])


def _evidence(
    frame: pl.DataFrame,
    source: pl.Expr,
    target_kind: pl.Expr,
    target_name: pl.Expr,
    relation: pl.Expr,
    provenance: str,
    start: str = "start",
    duration: str = "duration",
    error: pl.Expr | None = None,
) -> pl.DataFrame:
    """Raw evidence rows: one per span (pair) that evidences an edge from a service."""
    return frame.select(
        pl.lit("service").alias("source_kind"),
        source.alias("source_name"),
        target_kind.alias("target_kind"),
        target_name.alias("target_name"),
        relation.alias("relation"),
        pl.lit(provenance).alias("provenance"),
        pl.col(start).alias("start"),
        pl.col(duration).alias("duration"),
        (error if error is not None else pl.col("error")).alias("error"),
    )


def _aggregate_evidence(raw: pl.DataFrame) -> pl.DataFrame:
    """Per edge and provenance: count, errors, first/last start, latency bucket counts."""
    if raw.height == 0:
        return _EMPTY_AGGREGATE
    raw = raw.with_columns(
        bucket=(pl.col("duration").clip(1, None).cast(pl.Float64).log() / _LOG_BUCKET_RATIO)
        .floor()
        .cast(pl.Int32)
    )
    totals = raw.group_by(_EVIDENCE_KEYS).agg(
        pl.len().alias("count"),
        pl.col("error").sum().alias("errors"),
        pl.col("start").min().alias("first"),
        pl.col("start").max().alias("last"),
    )
    buckets = (
        raw.group_by([*_EVIDENCE_KEYS, "bucket"])
        .agg(pl.len().alias("bucket_count"))
        .sort("bucket")
        .group_by(_EVIDENCE_KEYS)
        .agg(pl.col("bucket"), pl.col("bucket_count"))
    )
    return totals.join(buckets, on=_EVIDENCE_KEYS, how="left").select(_AGGREGATE_COLUMNS)


_AGGREGATE_SCHEMA: dict[str, Any] = {
    **{key: pl.String for key in _EVIDENCE_KEYS},
    "count": pl.UInt32,
    "errors": pl.UInt32,
    "first": pl.Int64,
    "last": pl.Int64,
    "bucket": pl.List(pl.Int32),
    "bucket_count": pl.List(pl.UInt32),
}
_AGGREGATE_COLUMNS = list(_AGGREGATE_SCHEMA)
_EMPTY_AGGREGATE = pl.DataFrame(schema=_AGGREGATE_SCHEMA)


def _infrastructure_evidence(frame: pl.DataFrame) -> pl.DataFrame:
    """service -> pod, pod -> host, service -> host (no pod) from the resource columns."""
    placements = frame.group_by(["service", "pod_name", "host_name"]).agg(
        pl.len().alias("count"),
        pl.col("start").min().alias("first"),
        pl.col("start").max().alias("last"),
    )
    parts = []
    for source_kind, source, target_kind, target, keep in (
        ("service", "service", "pod", "pod_name", pl.col("pod_name").is_not_null()),
        (
            "pod",
            "pod_name",
            "host",
            "host_name",
            pl.col("pod_name").is_not_null() & pl.col("host_name").is_not_null(),
        ),
        (
            "service",
            "service",
            "host",
            "host_name",
            pl.col("pod_name").is_null() & pl.col("host_name").is_not_null(),
        ),
    ):
        parts.append(
            placements.filter(keep).select(
                pl.lit(source_kind).alias("source_kind"),
                pl.col(source).alias("source_name"),
                pl.lit(target_kind).alias("target_kind"),
                pl.col(target).alias("target_name"),
                pl.lit("runs_on").alias("relation"),
                pl.lit("resource_attributes").alias("provenance"),
                pl.col("count").cast(pl.UInt32),
                pl.lit(0, pl.UInt32).alias("errors"),
                pl.col("first"),
                pl.col("last"),
                pl.lit(None, pl.List(pl.Int32)).alias("bucket"),
                pl.lit(None, pl.List(pl.UInt32)).alias("bucket_count"),
            )
        )
    return (
        pl.concat(parts)
        .group_by(_EVIDENCE_KEYS)
        .agg(
            pl.col("count").sum().cast(pl.UInt32),
            pl.col("errors").sum().cast(pl.UInt32),
            pl.col("first").min(),
            pl.col("last").max(),
            pl.col("bucket").first(),
            pl.col("bucket_count").first(),
        )
    )


# --------------------------------------------------------------------------- the store
class EdgeStore:
    """Bounded, event-time dependency graph learned from span tables (see module docstring).

    Verbs: ``observe_spans(table, now)`` and ``advance(now)`` (both return deltas); reads:
    ``as_of(t)``, ``neighbourhood``, ``upstream``; state: ``snapshot()`` / ``restore``.
    """

    def __init__(self, config: GraphConfig | None = None) -> None:
        self.config = config or GraphConfig()
        self._expiry_ns = int(self.config.expiry_s * _NS)
        self.edges: dict[EdgeKey, ElementState] = {}
        self.nodes: dict[EntityRef, ElementState] = {}
        self.dropped: Counter[str] = Counter()
        """Items refused or forgotten because of a cap, by reason."""
        self.counts: Counter[str] = Counter()
        """Things observed that are not drops (spans, pairs, spans that never paired...)."""
        self.peer_services: dict[str, str] = {}
        """Virtual node key -> service whose server spans answered client spans naming it."""
        self.interval_index: int | None = None
        self.now: int | None = None
        self._pending_parents = pl.DataFrame(schema=PENDING_SCHEMA)
        self._pending_children = pl.DataFrame(schema=PENDING_SCHEMA)
        self._active_edges: set[EdgeKey] = set()
        self._next_expiry = _NEVER
        self._expired_edges: list[tuple[int, EdgeKey]] = []
        self._expired_nodes: list[tuple[int, EntityRef]] = []

    # ------------------------------------------------------------------ writes
    def observe_spans(self, spans: pa.Table, now_unix_nano: int) -> list[dict[str, Any]]:
        """Learn from one span table at event time ``now``; return the deltas it caused."""
        return self._step(span_frame(spans), int(now_unix_nano))

    def add_given_edge(
        self, source: EntityRef, target: EntityRef, relation: str, now_unix_nano: int
    ) -> list[dict[str, Any]]:
        """A dependency known from outside the telemetry (a shipped call graph, a service
        catalogue): valid from ``now`` on, provenance ``given``, and never expired for lack of
        evidence. Adding it again is a no-op; return the deltas it caused."""
        if relation not in DEPENDENCY_RELATIONS + INFRASTRUCTURE_RELATIONS:
            raise ValueError(f"unknown relation {relation!r}")
        key = EdgeKey(source, target, relation)
        known = self.edges.get(key)
        if known is not None and known.live and "given" in known.evidence:
            return []
        now = int(now_unix_nano)
        self.now = now if self.now is None else max(self.now, now)
        deltas: list[dict[str, Any]] = []
        row = {
            "source_kind": source.kind,
            "source_name": source.name,
            "target_kind": target.kind,
            "target_name": target.name,
            "relation": relation,
            "provenance": "given",
            "first": now,
            "last": now,
            "count": 1,
            "errors": 0,
            "bucket": None,
            "bucket_count": None,
        }
        self._apply(row, deltas)
        return deltas

    def observe_described(
        self, described: Iterable[tuple[EntityRef, EntityRef, str, int, int]], now_unix_nano: int
    ) -> list[dict[str, Any]]:
        """Dependencies a caller's client metrics describe (``worldmodel.peers``): one
        (caller, dependency, relation, first, last) per pair seen in the intervals just closed,
        times in event time. They open and keep edges alive like any evidence (provenance
        ``client_metric``), so a deployment with metrics and no traces still has a graph, as of
        each time, and one whose traces are sampled keeps the dependencies they missed."""
        now = int(now_unix_nano)
        self.now = now if self.now is None else max(self.now, now)
        deltas: list[dict[str, Any]] = []
        for source, target, relation, first, last in described:
            if relation not in DEPENDENCY_RELATIONS:
                raise ValueError(f"unknown dependency relation {relation!r}")
            row = {
                "source_kind": source.kind,
                "source_name": source.name,
                "target_kind": target.kind,
                "target_name": target.name,
                "relation": relation,
                "provenance": "client_metric",
                "first": int(first),
                "last": int(last),
                "count": 1,
                "errors": 0,
                "bucket": None,
                "bucket_count": None,
            }
            self._apply(row, deltas)
        return deltas

    def advance(self, now_unix_nano: int) -> list[dict[str, Any]]:
        """Move event time to ``now`` without new spans: close intervals, resolve spans that
        waited long enough for a partner, expire what was not seen for ``expiry_s``."""
        return self._step(pl.DataFrame(schema=FRAME_SCHEMA), int(now_unix_nano))

    def _step(self, frame: pl.DataFrame, now: int) -> list[dict[str, Any]]:
        deltas: list[dict[str, Any]] = []
        self.now = now if self.now is None else max(self.now, now)
        self._close_interval(now, deltas)
        self.counts["spans"] += frame.height
        raw_evidence = self._pair_spans(frame, now)
        aggregates = [_aggregate_evidence(raw_evidence)]
        if frame.height:
            aggregates.append(_infrastructure_evidence(frame))
        evidence = pl.concat(aggregates).sort(_EVIDENCE_KEYS)
        if evidence.height:  # what expired before the earliest new evidence stays expired
            earliest = evidence.get_column("first").min()
            assert isinstance(earliest, int)
            self._expire(min(now, earliest), deltas)
        if frame.height:
            self._touch_services(frame, deltas)
        for row in evidence.iter_rows(named=True):
            self._apply(row, deltas)
        self._expire(now, deltas)
        return deltas

    def _pair_spans(self, frame: pl.DataFrame, now: int) -> pl.DataFrame:
        """Join children to parents across the batch and the pairing buffers; return raw
        evidence rows (pairs, messaging spans, virtual callees whose wait is over)."""
        wait = int(self.config.pairing_wait_s * _NS)
        new = frame.select(
            pl.exclude("pod_name", "host_name"),
            deadline=pl.col("start") + pl.col("duration") + wait,
            matched=pl.lit(False),
        )
        parents = pl.concat([self._pending_parents, new])
        children = pl.concat([self._pending_children, new.filter(pl.col("parent") != 0)])
        id_keys = ["trace_hi", "trace_lo"]
        pairs = children.join(
            parents, left_on=[*id_keys, "parent"], right_on=[*id_keys, "span"], suffix="_parent"
        )
        self.counts["pairs"] += pairs.height
        matched_keys = pairs.select(*id_keys, span="parent", hit=pl.lit(True)).unique()
        parents = parents.join(matched_keys, on=[*id_keys, "span"], how="left").select(
            pl.exclude("hit", "matched"), matched=pl.col("matched") | pl.col("hit").fill_null(False)
        )
        unmatched_children = children.join(
            matched_keys, left_on=[*id_keys, "parent"], right_on=[*id_keys, "span"], how="anti"
        )

        # a client / producer span has one callee span: once answered it need not wait longer
        answered_caller = pl.col("matched") & pl.col("kind").is_in(CALLER_KINDS)
        parents = parents.filter(pl.col("kind").is_in(BUFFERED_PARENT_KINDS) & ~answered_caller)
        waiting = parents.filter(pl.col("deadline") > now)
        expired = parents.filter(pl.col("deadline") <= now)
        self._pending_parents = self._bounded(waiting, "pending_parents_cap")
        unmatched_children = unmatched_children.filter(pl.col("kind").is_in(BUFFERED_CHILD_KINDS))
        self.counts["children_never_paired"] += int(
            (unmatched_children.get_column("deadline") <= now).sum()
        )
        self._pending_children = self._bounded(
            unmatched_children.filter(pl.col("deadline") > now), "pending_children_cap"
        )

        evidence = [self._pair_evidence(pairs), self._messaging_evidence(new)]
        evidence.append(self._virtual_evidence(expired))
        return pl.concat(evidence)

    def _bounded(self, pending: pl.DataFrame, reason: str) -> pl.DataFrame:
        excess = pending.height - self.config.max_pending_spans
        if excess <= 0:
            return pending
        self.dropped[reason] += excess
        return pending.sort(_PENDING_ORDER).tail(self.config.max_pending_spans)

    def _pair_evidence(self, pairs: pl.DataFrame) -> pl.DataFrame:
        cross = pairs.filter(
            (pl.col("service") != pl.col("service_parent"))
            & pl.col("messaging_system_parent").is_null()
        )
        client_server = pl.col("kind_parent").is_in(CALLER_KINDS) & pl.col("kind").is_in(
            CALLEE_KINDS
        )
        paired = cross.filter(client_server)
        self._learn_peer_services(paired)
        return pl.concat(
            [
                _evidence(
                    paired,
                    pl.col("service_parent"),
                    pl.lit("service"),
                    pl.col("service"),
                    pl.lit("calls"),
                    "trace_pairing",
                    start="start_parent",
                    duration="duration_parent",
                    error=pl.col("error_parent") | pl.col("error"),
                ),
                _evidence(
                    cross.filter(~client_server),
                    pl.col("service_parent"),
                    pl.lit("service"),
                    pl.col("service"),
                    pl.lit("calls"),
                    "parent_child",
                ),
            ]
        )

    def _learn_peer_services(self, paired: pl.DataFrame) -> None:
        if paired.height == 0:
            return
        kind, name = _virtual_target_exprs()
        named = paired.select(  # the client span's peer attributes, and who answered them
            *[pl.col(f"{column}_parent").alias(column) for column in _PEER_COLUMNS],
            callee=pl.col("service"),
        ).select(kind=kind, name=name, callee=pl.col("callee"))
        peers = named.drop_nulls().unique().sort(["kind", "name", "callee"])
        for target_kind, target_name, callee in peers.iter_rows():
            key = EntityRef(target_kind, target_name).key
            if key in self.peer_services or len(self.peer_services) < self.config.max_nodes:
                self.peer_services[key] = callee
            else:
                self.dropped["peer_map_cap"] += 1

    def _messaging_evidence(self, spans: pl.DataFrame) -> pl.DataFrame:
        messaging = spans.filter(
            pl.col("messaging_system").is_not_null()
            & pl.col("kind").is_in((KIND_CLIENT, KIND_PRODUCER, KIND_CONSUMER))
        )
        kind, name = _virtual_target_exprs()
        relation = (
            pl.when(pl.col("kind") == KIND_PRODUCER)
            .then(pl.lit("publishes_to"))
            .otherwise(pl.lit("consumes_from"))
        )
        return _evidence(messaging, pl.col("service"), kind, name, relation, "client_span")

    def _virtual_evidence(self, expired: pl.DataFrame) -> pl.DataFrame:
        """Client spans whose wait ended without a child: edges to the node they name, or to
        the service known to answer that name."""
        unmatched = expired.filter(
            ~pl.col("matched")
            & pl.col("kind").is_in(CALLER_KINDS)
            & pl.col("messaging_system").is_null()
        )
        kind, name = _virtual_target_exprs()
        named = unmatched.with_columns(target_kind=kind, target_name=name)
        self.counts["client_spans_naming_nothing"] += named.get_column("target_kind").null_count()
        named = named.filter(pl.col("target_kind").is_not_null())
        if self.peer_services and named.height:
            peers = pl.DataFrame(
                {
                    "peer_key": list(self.peer_services),
                    "peer_service": list(self.peer_services.values()),
                },
                schema={"peer_key": pl.String, "peer_service": pl.String},
            )
            named = (
                named.with_columns(
                    peer_key=pl.concat_str(
                        [pl.col("target_kind"), pl.lit(":"), pl.col("target_name")]
                    )
                )
                .join(peers.rename({"peer_service": "answered_by"}), on="peer_key", how="left")
                .with_columns(
                    target_kind=pl.when(pl.col("answered_by").is_not_null())
                    .then(pl.lit("service"))
                    .otherwise(pl.col("target_kind")),
                    target_name=pl.coalesce(pl.col("answered_by"), pl.col("target_name")),
                )
            )
        return _evidence(
            named,
            pl.col("service"),
            pl.col("target_kind"),
            pl.col("target_name"),
            pl.lit("calls"),
            "client_span",
        )

    def _touch_services(self, frame: pl.DataFrame, deltas: list[dict[str, Any]]) -> None:
        services = (
            frame.group_by("service")
            .agg(pl.col("start").min().alias("first"), pl.col("start").max().alias("last"))
            .sort("service")
        )
        for service, first, last in services.iter_rows():
            self._touch_node(EntityRef("service", service), first, last, deltas)

    def _touch_node(
        self, ref: EntityRef, first: int, last: int, deltas: list[dict[str, Any]]
    ) -> bool:
        """Record evidence of a node; False when the node cap refuses it."""
        node = self.nodes.get(ref)
        if node is not None and node.intervals[-1][1] is None:  # live: the common case
            if first < node.first_seen:
                node.first_seen = first
            if last > node.last_seen:
                node.last_seen = last
            return True
        if node is None:
            if len(self.nodes) >= self.config.max_nodes and not _evict_expired(
                self.nodes, self._expired_nodes
            ):
                self.dropped["node_cap"] += 1
                return False
            attributes = {"virtual": True} if ref.kind in VIRTUAL_KINDS else {}
            node = ElementState(first, last, [[first, None]], attributes=attributes)
            self.nodes[ref] = node
            deltas.append(self._node_delta("add", ref, node, first))
        else:
            self._reopen(node, first, last)
            deltas.append(self._node_delta("add", ref, node, first))
        self._next_expiry = min(self._next_expiry, node.last_seen + self._expiry_ns)
        return True

    def _apply(self, row: dict[str, Any], deltas: list[dict[str, Any]]) -> None:
        source = EntityRef(row["source_kind"], row["source_name"])
        target = EntityRef(row["target_kind"], row["target_name"])
        key = EdgeKey(source, target, row["relation"])
        first, last, count = row["first"], row["last"], row["count"]
        edge = self.edges.get(key)
        full = edge is None and len(self.edges) >= self.config.max_edges
        if full and not _evict_expired(self.edges, self._expired_edges):
            self.dropped["edge_cap"] += 1
            return
        if not (
            self._touch_node(source, first, last, deltas)
            and self._touch_node(target, first, last, deltas)
        ):
            self.dropped["edge_without_node"] += 1
            return
        provenance = row["provenance"]
        if edge is None:
            edge = ElementState(first, last, [[first, None]])
            self.edges[key] = edge
            op = "add"
        elif not edge.live:
            self._reopen(edge, first, last)
            op = "add"
        else:
            edge.first_seen = min(edge.first_seen, first)
            edge.last_seen = max(edge.last_seen, last)
            op = "update" if provenance not in edge.evidence else ""
        edge.evidence[provenance] = edge.evidence.get(provenance, 0) + count
        # given and client_metric edges carry no request of their own (a metric's requests
        # are counted by the metric; its spans, if any, count them on the same edge)
        if key.relation in DEPENDENCY_RELATIONS and provenance not in ("given", "client_metric"):
            edge.requests += count
            edge.errors += row["errors"]
            for bucket, bucket_count in zip(
                row["bucket"] or (), row["bucket_count"] or (), strict=True
            ):
                edge.latency_buckets[bucket] = edge.latency_buckets.get(bucket, 0) + bucket_count
            self._active_edges.add(key)
        self._next_expiry = min(self._next_expiry, edge.last_seen + self._expiry_ns)
        if op:
            deltas.append(self._edge_delta(op, key, edge, first if op == "add" else last))

    def _reopen(self, element: ElementState, first: int, last: int) -> None:
        previous_end = element.intervals[-1][1]
        assert previous_end is not None
        element.intervals.append([max(first, previous_end), None])
        excess = len(element.intervals) - self.config.max_intervals_per_element
        if excess > 0:
            del element.intervals[:excess]
            self.dropped["validity_interval_cap"] += excess
        element.last_seen = max(element.last_seen, last)

    def _close_interval(self, now: int, deltas: list[dict[str, Any]]) -> None:
        """When ``now`` enters a new stats interval, publish the stats of the closed one."""
        interval_ns = int(self.config.interval_s * _NS)
        index = now // interval_ns
        if self.interval_index is None:
            self.interval_index = index
            return
        if index <= self.interval_index:
            return
        closed_at = (self.interval_index + 1) * interval_ns
        for key in sorted(self._active_edges):
            edge = self.edges.get(key)
            if edge is None or edge.requests == 0:
                continue
            edge.stats = self._current_stats(edge)
            edge.requests, edge.errors, edge.latency_buckets = 0, 0, {}
            if edge.live:
                deltas.append(self._edge_delta("update", key, edge, closed_at))
        self._active_edges.clear()
        self.interval_index = index

    def _current_stats(self, edge: ElementState) -> dict[str, float]:
        if edge.requests == 0:
            return edge.stats
        stats = {
            "rate_per_s": round(edge.requests / self.config.interval_s, 6),
            "error_ratio": round(min(1.0, edge.errors / edge.requests), 6),
        }
        if edge.latency_buckets:
            stats["latency_p50_ms"] = _bucket_quantile_ms(edge.latency_buckets, 0.5)
            stats["latency_p95_ms"] = _bucket_quantile_ms(edge.latency_buckets, 0.95)
        return stats

    def _expire(self, now: int, deltas: list[dict[str, Any]]) -> None:
        if now < self._next_expiry:
            return
        expiry = self._expiry_ns
        next_expiry = _NEVER
        for key, edge in sorted(self.edges.items()):
            if not edge.live or "given" in edge.evidence:
                continue  # a given edge does not expire for lack of spans
            end = edge.last_seen + expiry
            if end <= now:
                edge.intervals[-1][1] = end
                heapq.heappush(self._expired_edges, (end, key))
                self._active_edges.discard(key)
                deltas.append(self._edge_delta("expire", key, edge, end))
            else:
                next_expiry = min(next_expiry, end)
        for ref, node in sorted(self.nodes.items()):
            if not node.live:
                continue
            end = node.last_seen + expiry
            if end <= now:
                node.intervals[-1][1] = end
                heapq.heappush(self._expired_nodes, (end, ref))
                deltas.append(self._node_delta("expire", ref, node, end))
            else:
                next_expiry = min(next_expiry, end)
        self._next_expiry = next_expiry

    # ------------------------------------------------------------------ deltas
    def confidence(self, key: EdgeKey) -> float:
        edge = self.edges[key]
        doubt = 1.0
        for provenance, count in edge.evidence.items():
            weight = PROVENANCE_WEIGHT.get(provenance, 0.0)
            doubt *= (1.0 - weight) ** min(count, EVIDENCE_SATURATION)
        return round(1.0 - doubt, 6)

    def _edge_delta(self, op: str, key: EdgeKey, edge: ElementState, at: int) -> dict[str, Any]:
        element: dict[str, Any] = {
            "type": "edge",
            "source": key.source.to_json(),
            "target": key.target.to_json(),
            "relation": key.relation,
            "provenance": sorted(edge.evidence) or ["trace_pairing"],
            "confidence": self.confidence(key) if edge.evidence else 0.0,
            "first_seen": iso_time(edge.first_seen),
            "last_seen": iso_time(edge.last_seen),
        }
        stats = self._current_stats(edge) if key.relation in DEPENDENCY_RELATIONS else {}
        if stats:
            element["stats"] = stats
        return {
            "schema_version": DELTA_SCHEMA_VERSION,
            "op": op,
            "time": iso_time(at),
            "element": element,
        }

    @staticmethod
    def _node_delta(op: str, ref: EntityRef, node: ElementState, at: int) -> dict[str, Any]:
        element: dict[str, Any] = {"type": "node", "node": ref.to_json()}
        if node.attributes:
            element["attributes"] = dict(node.attributes)
        return {
            "schema_version": DELTA_SCHEMA_VERSION,
            "op": op,
            "time": iso_time(at),
            "element": element,
        }

    # ------------------------------------------------------------------ reads
    def as_of(self, t_unix_nano: int) -> nx.MultiDiGraph:
        """The graph valid at ``t``: node ids ``EntityRef.key``, edge keys the relation."""
        t = int(t_unix_nano)
        graph = nx.MultiDiGraph()
        for ref, node in sorted(self.nodes.items()):
            if node.valid_at(t):
                graph.add_node(ref.key, **_node_attributes(ref, node))
        for key, edge in sorted(self.edges.items()):
            if not edge.valid_at(t):
                continue
            for ref in (key.source, key.target):
                if ref.key not in graph:
                    graph.add_node(ref.key, kind=ref.kind, name=ref.name)
            graph.add_edge(
                key.source.key,
                key.target.key,
                key=key.relation,
                relation=key.relation,
                provenance=sorted(edge.evidence),
                confidence=self.confidence(key),
                stats=dict(self._current_stats(edge)),
                first_seen=edge.first_seen,
                last_seen=edge.last_seen,
            )
        return graph

    def neighbourhood(self, entity: EntityRef, hops: int, t_unix_nano: int) -> nx.MultiDiGraph:
        """Everything within ``hops`` edges of ``entity`` at ``t``, in either direction."""
        graph = self.as_of(t_unix_nano)
        if entity.key not in graph:
            return nx.MultiDiGraph()
        reached = nx.single_source_shortest_path_length(
            graph.to_undirected(as_view=True), entity.key, cutoff=hops
        )
        return graph.subgraph(sorted(reached)).copy()

    def upstream(self, entity: EntityRef, hops: int, t_unix_nano: int) -> dict[EntityRef, int]:
        """What ``entity`` depends on at ``t``: callees, queues and virtual dependencies up to
        ``hops`` dependency edges away, plus the pods and hosts each of them runs on (at the
        distance of the entity they host). Maps entity -> hops; the symptom itself is 0."""
        graph = self.as_of(t_unix_nano)
        if entity.key not in graph:
            return {}
        distance = {entity.key: 0}
        frontier = [entity.key]
        for hop in range(1, hops + 1):
            following = []
            for node in frontier:
                for _, callee, relation in graph.out_edges(node, keys=True):
                    if relation in DEPENDENCY_RELATIONS and callee not in distance:
                        distance[callee] = hop
                        following.append(callee)
            frontier = sorted(following)
        for node, hop in list(distance.items()):
            stack = [node]
            while stack:
                for _, placement, relation in graph.out_edges(stack.pop(), keys=True):
                    if relation in INFRASTRUCTURE_RELATIONS and placement not in distance:
                        distance[placement] = hop
                        stack.append(placement)
        return {EntityRef.from_key(key): hop for key, hop in distance.items()}

    # ------------------------------------------------------------------ state
    def snapshot(self) -> bytes:
        """All state as deterministic JSON bytes (same inputs, same bytes)."""
        pending = {
            name: _frame_json(frame)
            for name, frame in (
                ("parents", self._pending_parents),
                ("children", self._pending_children),
            )
        }
        document = {
            "version": SNAPSHOT_VERSION,
            "config": asdict(self.config),
            "now": self.now,
            "interval_index": self.interval_index,
            "edges": [
                [list(key.source), list(key.target), key.relation, _element_json(edge)]
                for key, edge in sorted(self.edges.items())
            ],
            "nodes": [[list(ref), _element_json(node)] for ref, node in sorted(self.nodes.items())],
            "active_edges": [
                [list(key.source), list(key.target), key.relation]
                for key in sorted(self._active_edges)
            ],
            "peer_services": self.peer_services,
            "dropped": dict(self.dropped),
            "counts": dict(self.counts),
            "pending": pending,
        }
        return orjson.dumps(document, option=orjson.OPT_SORT_KEYS)

    @classmethod
    def restore(cls, data: bytes) -> EdgeStore:
        document = orjson.loads(data)
        if document.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unknown graph snapshot version {document.get('version')!r}")
        store = cls(GraphConfig(**document["config"]))
        store.now = document["now"]
        store.interval_index = document["interval_index"]
        for source, target, relation, element in document["edges"]:
            key = EdgeKey(EntityRef(*source), EntityRef(*target), relation)
            store.edges[key] = _element_from_json(element)
        for ref, element in document["nodes"]:
            store.nodes[EntityRef(*ref)] = _element_from_json(element)
        store._active_edges = {
            EdgeKey(EntityRef(*source), EntityRef(*target), relation)
            for source, target, relation in document["active_edges"]
        }
        store.peer_services = dict(document["peer_services"])
        store.dropped = Counter(document["dropped"])
        store.counts = Counter(document["counts"])
        store._pending_parents = _frame_from_json(document["pending"]["parents"])
        store._pending_children = _frame_from_json(document["pending"]["children"])
        expiry = store._expiry_ns
        live_ends = [e.last_seen + expiry for e in store.edges.values() if e.live]
        live_ends += [n.last_seen + expiry for n in store.nodes.values() if n.live]
        store._next_expiry = min(live_ends, default=_NEVER)
        store._expired_edges = _expired_heap(store.edges)
        store._expired_nodes = _expired_heap(store.nodes)
        return store

    @property
    def pending_spans(self) -> int:
        return self._pending_parents.height + self._pending_children.height


_NEVER = 1 << 62
_PENDING_ORDER = ["deadline", "trace_hi", "trace_lo", "span", "parent"]
"""A total order of pending spans, so what a cap drops does not depend on row order."""


def _evict_expired(elements: dict[Any, ElementState], heap: list[tuple[int, Any]]) -> bool:
    """Forget the element that expired first (history), to make room; False if none."""
    while heap:
        end, key = heapq.heappop(heap)
        element = elements.get(key)
        if element is not None and not element.live and element.intervals[-1][1] == end:
            del elements[key]
            return True
    return False


def _expired_heap(elements: dict[Any, ElementState]) -> list[tuple[int, Any]]:
    heap = [(e.intervals[-1][1], key) for key, e in elements.items() if not e.live]
    heapq.heapify(heap)
    return heap  # type: ignore[return-value]


def _bucket_quantile_ms(buckets: dict[int, int], quantile: float) -> float:
    ordered = sorted(buckets.items())
    total = sum(count for _, count in ordered)
    rank = quantile * total
    seen = 0
    for bucket, count in ordered:
        seen += count
        if seen >= rank:
            return round(LATENCY_BUCKET_RATIO ** (bucket + 0.5) / 1e6, 6)
    return round(LATENCY_BUCKET_RATIO ** (ordered[-1][0] + 0.5) / 1e6, 6)


def _node_attributes(ref: EntityRef, node: ElementState) -> dict[str, Any]:
    return {
        "kind": ref.kind,
        "name": ref.name,
        "first_seen": node.first_seen,
        "last_seen": node.last_seen,
        **node.attributes,
    }


def _element_json(element: ElementState) -> dict[str, Any]:
    document = asdict(element)
    document["latency_buckets"] = sorted(element.latency_buckets.items())
    return document


def _element_from_json(document: dict[str, Any]) -> ElementState:
    document = dict(document)
    document["latency_buckets"] = {int(b): int(c) for b, c in document["latency_buckets"]}
    return ElementState(**document)


def _frame_json(frame: pl.DataFrame) -> dict[str, list[Any]]:
    ordered = frame.sort(_PENDING_ORDER)
    return {name: ordered.get_column(name).to_list() for name in PENDING_SCHEMA}


def _frame_from_json(columns: dict[str, list[Any]]) -> pl.DataFrame:
    return pl.DataFrame(columns, schema=PENDING_SCHEMA)


def iso_time(unix_nano: int) -> str:
    """RFC 3339 UTC with microseconds, e.g. ``2026-11-20T14:00:00.000000Z``."""
    seconds, nanos = divmod(int(unix_nano), _NS)
    return f"{_iso_seconds(seconds)}.{nanos // 1000:06d}Z"


@functools.lru_cache(maxsize=4096)
def _iso_seconds(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")


# --------------------------------------------------------------------------- exports
def to_node_link_json(graph: nx.MultiDiGraph) -> bytes:
    """Node-link JSON (``nodes`` / ``links``), sorted, deterministic."""
    document = nx.node_link_data(graph, edges="links")
    document["nodes"] = sorted(document["nodes"], key=lambda node: node["id"])
    document["links"] = sorted(
        document["links"], key=lambda link: (link["source"], link["target"], link["key"])
    )
    return orjson.dumps(document, option=orjson.OPT_SORT_KEYS)


_DOT_SHAPES = {
    "service": "box",
    "pod": "component",
    "host": "box3d",
    "database": "cylinder",
    "cache": "cylinder",
    "queue": "cds",
    "external": "hexagon",
}


def to_dot(graph: nx.MultiDiGraph, name: str = "worldline") -> str:
    """Graphviz dot text: one shape per entity kind, dashed edges for infrastructure."""
    lines = [f"digraph {_dot_quote(name)} {{", "  rankdir=LR;"]
    for node, data in sorted(graph.nodes(data=True)):
        shape = _DOT_SHAPES.get(data.get("kind", ""), "ellipse")
        label = f"{data.get('name', node)}\\n({data.get('kind', '')})"
        lines.append(f"  {_dot_quote(node)} [shape={shape}, label={_dot_quote(label)}];")
    for source, target, relation, data in sorted(graph.edges(keys=True, data=True)):
        style = ", style=dashed" if relation in INFRASTRUCTURE_RELATIONS else ""
        label = relation
        stats = data.get("stats") or {}
        if "rate_per_s" in stats:
            label += f"\\n{stats['rate_per_s']:.3g}/s"
        lines.append(
            f"  {_dot_quote(source)} -> {_dot_quote(target)} [label={_dot_quote(label)}{style}];"
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


def _dot_quote(text: str) -> str:
    return '"' + text.replace('"', '\\"') + '"'


# --------------------------------------------------------------------------- evaluation
def dependency_pairs(
    graph: nx.MultiDiGraph,
    relations: Iterable[str] = ("calls", "publishes_to"),
    bare_names: bool = False,
) -> set[tuple[str, str]]:
    """(source name, target name) of the edges with one of ``relations``; with ``bare_names``
    the ``system:`` prefix of database / cache / queue names is cut (``postgresql:orders-db``
    -> ``orders-db``), to compare with a topology that names dependencies without it."""
    wanted = set(relations)
    pairs = set()
    for source, target, relation in graph.edges(keys=True):
        if relation in wanted:
            pairs.add(
                (_plain_name(graph, source, bare_names), _plain_name(graph, target, bare_names))
            )
    return pairs


def _plain_name(graph: nx.MultiDiGraph, node: str, bare: bool) -> str:
    data = graph.nodes[node]
    name: str = data.get("name", EntityRef.from_key(node).name)
    if bare and data.get("kind") in ("database", "cache", "queue"):
        return name.partition(":")[2] or name
    return name


def edge_precision_recall(
    learned: Iterable[tuple[str, str]], truth: Iterable[tuple[str, str]]
) -> tuple[float, float]:
    """Precision and recall of a learned edge set against the true one (1.0 when empty)."""
    learned_set, truth_set = set(learned), set(truth)
    hits = len(learned_set & truth_set)
    precision = hits / len(learned_set) if learned_set else 1.0
    recall = hits / len(truth_set) if truth_set else 1.0
    return precision, recall
