"""OTLP spans as the OTel SDK and Collector send them, and what metrics and logs share with them.

Spans take the fast path: for every (span position, status variant, root or not) the protobuf
bytes of one Span are built once with opentelemetry-proto using sentinel ids and times; the
sentinels' offsets are found in the bytes, and a batch is then serialized with numpy by gathering
template bytes and patching the fixed-width fields (trace_id, span_id, parent_span_id are
fixed-length ``bytes``; start and end are ``fixed64``). ``encode_spans_reference`` builds the
same request one protobuf message at a time; tests assert both give identical bytes.

Also here: the span shapes (name, kind, semantic-convention attributes per span position) and the
per-pod Resource, which ``metrics`` and ``logs`` reuse. Those are far fewer items and are built with
the protobuf classes directly.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from jobs.simulator.engine import (
    CLIENT_DEPENDENCY,
    CLIENT_SERVICE,
    CONSUMER,
    PRODUCER,
    SERVER,
    SpanBatch,
    World,
)
from pipeline.ingest.resource import GENERATED_CHARACTERS

MAX_RECORD_BYTES = 512 * 1024
HTTP_DURATION_BOUNDS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)
JOB_RUN_DURATION_BOUNDS = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
"""Seconds: a job run lasts seconds to an hour, far past the request bounds' 10 s."""
_TRACE_SENTINEL = bytes(range(0xA0, 0xB0))
_SPAN_SENTINEL = bytes(range(0xC1, 0xC9))
_PARENT_SENTINEL = bytes(range(0xD1, 0xD9))
_START_SENTINEL = bytes(range(0xE1, 0xE9))
_END_SENTINEL = bytes(range(0xF1, 0xF9))
_KIND = {
    SERVER: Span.SPAN_KIND_SERVER,
    CLIENT_SERVICE: Span.SPAN_KIND_CLIENT,
    CLIENT_DEPENDENCY: Span.SPAN_KIND_CLIENT,
    PRODUCER: Span.SPAN_KIND_PRODUCER,
    CONSUMER: Span.SPAN_KIND_CONSUMER,
}
_SCOPES = {
    "go": "go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp",
    "java": "io.opentelemetry.spring-webmvc-6.0",
    "python": "opentelemetry.instrumentation.flask",
    "nodejs": "@opentelemetry/instrumentation-http",
}
Attr = tuple[str, str | int | float | bool]


def key_value(key: str, value: str | int | float | bool) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


@dataclass(frozen=True)
class SpanShape:
    """What is fixed about the spans of one span key: name, kind, attributes per status variant."""

    service: int
    name: str
    kind: int
    attributes: tuple[Attr, ...]
    variant_attributes: tuple[tuple[Attr, ...], tuple[Attr, ...], tuple[Attr, ...]]


def span_shapes(world: World) -> list[SpanShape]:
    """One shape per span key: operations first (server/consumer spans), then calls (clients)."""
    topo = world.topo
    queue_of_op = {
        d.consumer_operation: d for d in topo.dependencies if d.consumer_operation is not None
    }
    shapes: list[SpanShape] = []
    for op in topo.operations:
        svc = topo.services[op.service]
        if op.consumer:
            q = queue_of_op.get(op.index)
            qname = q.name if q else "events"
            attrs: tuple[Attr, ...] = (
                ("messaging.system", "kafka"),
                ("messaging.operation.type", "process"),
                ("messaging.destination.name", qname),
                ("messaging.consumer.group.name", svc.name),
            )
            shapes.append(
                SpanShape(
                    op.service,
                    f"process {qname}",
                    Span.SPAN_KIND_CONSUMER,
                    attrs,
                    ((), (("error.type", "exception"),), (("error.type", "timeout"),)),
                )
            )
            continue
        kind = Span.SPAN_KIND_INTERNAL if svc.tier == "cron" else Span.SPAN_KIND_SERVER
        attrs = (
            ("http.request.method", op.method),
            ("http.route", op.route),
            ("url.scheme", "http"),
        )
        variants: tuple[tuple[Attr, ...], tuple[Attr, ...], tuple[Attr, ...]] = (
            (("http.response.status_code", 200),),
            (("http.response.status_code", 500), ("error.type", "500")),
            (("http.response.status_code", 504), ("error.type", "timeout")),
        )
        if svc.tier == "cron":
            attrs = (("job.name", op.route),)
            variants = ((), (("error.type", "job_failed"),), (("error.type", "timeout"),))
        shapes.append(SpanShape(op.service, op.name, kind, attrs, variants))
    for c in topo.calls:
        caller = topo.operations[c.caller_operation]
        timeout = (("error.type", "timeout"),)
        if c.target_operation is not None:
            target = topo.operations[c.target_operation]
            tsvc = topo.services[target.service]
            attrs = (
                ("http.request.method", target.method),
                ("server.address", tsvc.name),
                ("server.port", 8080),
                ("url.template", target.route),
            )
            variants = (
                (("http.response.status_code", 200),),
                (("http.response.status_code", 500), ("error.type", "500")),
                timeout,
            )
            shapes.append(
                SpanShape(caller.service, target.method, Span.SPAN_KIND_CLIENT, attrs, variants)
            )
            continue
        dep = topo.dependencies[c.target_dependency or 0]
        if dep.kind in ("database", "cache"):
            operation = c.statement.split(" ")[0]
            attrs = (
                ("db.system", dep.system),
                ("db.operation.name", operation),
                ("server.address", dep.address),
                ("server.port", dep.port),
            )
            if dep.kind == "database":
                table = c.statement.split(" ")[-1]
                attrs += (("db.namespace", dep.name), ("db.collection.name", table))
                attrs += (("db.query.text", _query_text(c.statement)),)
            error = (("error.type", "db_error" if dep.kind == "database" else "cache_error"),)
            shapes.append(
                SpanShape(
                    caller.service, c.statement, Span.SPAN_KIND_CLIENT, attrs, ((), error, timeout)
                )
            )
        elif dep.kind == "queue":
            attrs = (
                ("messaging.system", "kafka"),
                ("messaging.operation.type", "publish"),
                ("messaging.destination.name", dep.name),
                ("server.address", dep.address),
            )
            shapes.append(
                SpanShape(
                    caller.service,
                    f"publish {dep.name}",
                    Span.SPAN_KIND_PRODUCER,
                    attrs,
                    ((), (("error.type", "publish_error"),), timeout),
                )
            )
        else:
            method = c.statement.split(" ")[0]
            attrs = (
                ("http.request.method", method),
                ("peer.service", dep.name),
                ("server.address", dep.address),
                ("server.port", dep.port),
                ("url.template", c.statement.split(" ")[-1]),
            )
            shapes.append(
                SpanShape(
                    caller.service,
                    method,
                    Span.SPAN_KIND_CLIENT,
                    attrs,
                    (
                        (("http.response.status_code", 200),),
                        (("http.response.status_code", 503), ("error.type", "503")),
                        timeout,
                    ),
                )
            )
    return shapes


def _query_text(statement: str) -> str:
    verb, table = statement.split(" ")[0], statement.split(" ")[-1]
    if verb == "SELECT":
        return f"SELECT * FROM {table} WHERE id = ?"
    if verb == "INSERT":
        return f"INSERT INTO {table} (id, data) VALUES (?, ?)"
    if verb == "UPDATE":
        return f"UPDATE {table} SET data = ? WHERE id = ?"
    return f"{verb} {table}"


def build_span(
    shape: SpanShape,
    variant: int,
    trace_id: bytes,
    span_id: bytes,
    parent_id: bytes,
    start_ns: int,
    end_ns: int,
) -> Span:
    """One Span message the slow way (the reference for the fast encoder)."""
    span = Span(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent_id,
        name=shape.name,
        kind=shape.kind,  # type: ignore[arg-type]
        start_time_unix_nano=start_ns,
        end_time_unix_nano=end_ns,
        attributes=[
            key_value(k, v) for k, v in shape.attributes + shape.variant_attributes[variant]
        ],
    )
    if variant:
        span.status.CopyFrom(Status(code=Status.STATUS_CODE_ERROR))
    return span


@dataclass
class _SpanTemplate:
    blob: bytes
    trace_at: int
    span_at: int
    parent_at: int
    start_at: int
    end_at: int


def pod_name(base: str, service: str, version: str) -> str:
    """Kubernetes-style pod name: a deploy rolls the pods, so the name carries a template hash."""
    digest = hashlib.sha1(f"{service}:{version}".encode()).digest()
    template_hash = "".join(GENERATED_CHARACTERS[b % 27] for b in digest[:10])
    return f"{service}-{template_hash}-{base.rsplit('-', 1)[-1]}"


class ResourceCatalog:
    """The Resource of each pod (and service version), serialized once."""

    def __init__(self, world: World) -> None:
        self.world = world
        self._cache: dict[tuple[int, str], bytes] = {}

    def resource(self, pod: int, version: str) -> Resource:
        topo = self.world.topo
        p = topo.pods[pod]
        svc = topo.services[p.service]
        host = topo.hosts[p.host].name
        name = pod_name(p.name, svc.name, version)
        attrs: list[Attr] = [
            ("service.name", svc.name),
            ("service.namespace", "shop"),
            ("service.version", version),
            ("service.instance.id", name),
            ("deployment.environment.name", "production"),
            ("k8s.namespace.name", "prod"),
            ("k8s.pod.name", name),
            ("k8s.deployment.name", svc.name),
            ("k8s.node.name", host),
            ("host.name", host),
            ("telemetry.sdk.name", "opentelemetry"),
            ("telemetry.sdk.language", svc.language),
        ]
        return Resource(attributes=[key_value(k, v) for k, v in attrs])

    def resource_bytes(self, pod: int, version: str) -> bytes:
        key = (pod, version)
        if key not in self._cache:
            self._cache[key] = self.resource(pod, version).SerializeToString()
        return self._cache[key]

    def scope(self, service: int) -> InstrumentationScope:
        lang = self.world.topo.services[service].language
        return InstrumentationScope(name=_SCOPES[lang], version="1.28.0")


class SpanEncoder:
    """Serialize a SpanBatch into ExportTraceServiceRequest records, one per service (split at
    ``MAX_RECORD_BYTES``), by patching precomputed Span bytes with numpy."""

    def __init__(self, world: World, resources: ResourceCatalog | None = None) -> None:
        self.world = world
        self.shapes = span_shapes(world)
        self.resources = resources or ResourceCatalog(world)
        self._templates: dict[int, _SpanTemplate] = {}
        self._scope_bytes = {
            s.index: _field(1, self.resources.scope(s.index).SerializeToString())
            for s in world.topo.services
        }

    def template(self, template_id: int) -> _SpanTemplate:
        found = self._templates.get(template_id)
        if found is not None:
            return found
        key, rest = divmod(template_id, 6)
        variant, has_parent = divmod(rest, 2)
        span = build_span(
            self.shapes[key],
            variant,
            _TRACE_SENTINEL,
            _SPAN_SENTINEL,
            _PARENT_SENTINEL if has_parent else b"",
            int.from_bytes(_START_SENTINEL, "little"),
            int.from_bytes(_END_SENTINEL, "little"),
        )
        body = span.SerializeToString()
        blob = _varint(2 << 3 | 2) + _varint(len(body)) + body  # ScopeSpans.spans, field 2
        found = _SpanTemplate(
            blob=blob,
            trace_at=_find_once(blob, _TRACE_SENTINEL),
            span_at=_find_once(blob, _SPAN_SENTINEL),
            parent_at=_find_once(blob, _PARENT_SENTINEL) if has_parent else -1,
            start_at=_find_once(blob, _START_SENTINEL),
            end_at=_find_once(blob, _END_SENTINEL),
        )
        self._templates[template_id] = found
        return found

    def pod_pieces(self, batch: SpanBatch) -> list[tuple[int, int, list[bytes]]]:
        """(service, pod, serialized ScopeSpans.spans fields) for a batch in ``record_order``.

        Spans sharing a template are serialized together as one (count x length) matrix: the
        template row broadcast, then the id and time columns overwritten.
        """
        m = len(batch)
        if m == 0:
            return []
        tid = template_ids(batch)
        uniq, inv = np.unique(tid, return_inverse=True)
        matrices: list[np.ndarray] = []
        start_bytes = batch.start_ns.astype("<u8").view(np.uint8).reshape(m, 8)
        end_bytes = batch.end_ns.astype("<u8").view(np.uint8).reshape(m, 8)
        by_template = np.argsort(inv, kind="stable")
        template_bounds = np.concatenate([[0], np.cumsum(np.bincount(inv, minlength=len(uniq)))])
        for k, t in enumerate(uniq.tolist()):
            temp = self.template(t)
            rows = by_template[template_bounds[k] : template_bounds[k + 1]]
            mat = np.empty((len(rows), len(temp.blob)), dtype=np.uint8)
            mat[:] = np.frombuffer(temp.blob, dtype=np.uint8)
            mat[:, temp.trace_at : temp.trace_at + 16] = batch.trace_id[rows]
            mat[:, temp.span_at : temp.span_at + 8] = batch.span_id[rows]
            if temp.parent_at >= 0:
                mat[:, temp.parent_at : temp.parent_at + 8] = batch.parent_id[rows]
            mat[:, temp.start_at : temp.start_at + 8] = start_bytes[rows]
            mat[:, temp.end_at : temp.end_at + 8] = end_bytes[rows]
            matrices.append(mat)
        # all template matrices in one buffer; a (pod, template) run is one contiguous range of it
        store = b"".join(mat.tobytes() for mat in matrices)
        row_bytes = np.array([mat.shape[1] for mat in matrices], dtype=np.int64)
        base = np.concatenate([[0], np.cumsum(row_bytes * np.diff(template_bounds))])
        rank = np.empty(m, dtype=np.int64)
        rank[by_template] = np.arange(m) - template_bounds[inv[by_template]]
        key = batch.pod * (len(uniq) + 1) + inv
        lo = np.concatenate([[0], np.flatnonzero(np.diff(key)) + 1])
        hi = np.append(lo[1:], m)
        run_template = inv[lo]
        run_start = base[run_template] + rank[lo] * row_bytes[run_template]
        run_end = run_start + (hi - lo) * row_bytes[run_template]
        run_pod = batch.pod[lo]
        pod_first = np.concatenate([[0], np.flatnonzero(np.diff(run_pod)) + 1])
        pod_last = np.append(pod_first[1:], len(lo))
        limit = MAX_RECORD_BYTES // 2
        starts, ends, sizes = run_start.tolist(), run_end.tolist(), row_bytes[run_template].tolist()
        result: list[tuple[int, int, list[bytes]]] = []
        for first, last in zip(pod_first.tolist(), pod_last.tolist(), strict=True):
            pieces: list[bytes] = []
            parts: list[bytes] = []
            size = 0
            for r in range(first, last):
                a_r, b_r = starts[r], ends[r]
                if size + (b_r - a_r) <= limit:
                    parts.append(store[a_r:b_r])
                    size += b_r - a_r
                    continue
                # split at span boundaries so that no piece exceeds the limit
                step = max(1, limit // sizes[r]) * sizes[r]
                for cut in range(a_r, b_r, step):
                    piece = store[cut : min(cut + step, b_r)]
                    if parts and size + len(piece) > limit:
                        pieces.append(b"".join(parts))
                        parts, size = [], 0
                    parts.append(piece)
                    size += len(piece)
            if parts:
                pieces.append(b"".join(parts))
            result.append((int(batch.service[lo[first]]), int(run_pod[first]), pieces))
        return result

    def encode(self, batch: SpanBatch, versions: list[str]) -> list[tuple[int, bytes]]:
        """(service, ExportTraceServiceRequest bytes) records, one ResourceSpans per pod, split
        so that no record exceeds ``MAX_RECORD_BYTES``."""
        batch = batch.take(record_order(batch))
        records: list[tuple[int, bytes]] = []
        parts: list[bytes] = []
        size = 0
        current = -1
        for service, pod, pieces in self.pod_pieces(batch):
            if service != current and parts:
                records.append((current, b"".join(parts)))
                parts, size = [], 0
            current = service
            resource = _field(1, self.resources.resource_bytes(pod, versions[service]))
            chunk: list[bytes] = []
            chunk_size = 0
            for piece in pieces + [b""]:
                if piece and chunk_size + len(piece) <= MAX_RECORD_BYTES // 2:
                    chunk.append(piece)
                    chunk_size += len(piece)
                    continue
                if chunk:
                    scope = _field(2, self._scope_bytes[service] + b"".join(chunk))
                    rs = _field(1, resource + scope)
                    if parts and size + len(rs) > MAX_RECORD_BYTES:
                        records.append((service, b"".join(parts)))
                        parts, size = [], 0
                    parts.append(rs)
                    size += len(rs)
                chunk, chunk_size = ([piece], len(piece)) if piece else ([], 0)
        if parts:
            records.append((current, b"".join(parts)))
        return records


def template_ids(batch: SpanBatch) -> np.ndarray:
    """Span template per span: (span key, status variant, has a parent)."""
    return (batch.span_key * 3 + batch.variant) * 2 + batch.has_parent.astype(np.int64)


def record_order(batch: SpanBatch) -> np.ndarray:
    """Spans grouped by service, pod and template, keeping simulation order inside a group."""
    return np.lexsort((np.arange(len(batch)), template_ids(batch), batch.pod, batch.service))


def _pod_runs(batch: SpanBatch) -> list[tuple[int, list[tuple[int, int, int]]]]:
    if len(batch) == 0:
        return []
    change = np.nonzero(np.diff(batch.pod) != 0)[0] + 1
    bounds = np.concatenate([[0], change, [len(batch)]])
    result: list[tuple[int, list[tuple[int, int, int]]]] = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        svc = int(batch.service[lo])
        run = (int(batch.pod[lo]), int(lo), int(hi))
        if result and result[-1][0] == svc:
            result[-1][1].append(run)
        else:
            result.append((svc, [run]))
    return result


def _find_once(blob: bytes, needle: bytes) -> int:
    at = blob.find(needle)
    if at < 0 or blob.find(needle, at + 1) >= 0:
        raise ValueError("sentinel not found exactly once in a span template")
    return at


def encode_spans_reference(
    encoder: SpanEncoder, batch: SpanBatch, versions: list[str]
) -> list[tuple[int, bytes]]:
    """The naive path: one protobuf Span per span, same grouping as ``SpanEncoder.encode``."""
    order = record_order(batch)
    batch = batch.take(order)
    records: list[tuple[int, bytes]] = []
    for service, pod_runs in _pod_runs(batch):
        request = ExportTraceServiceRequest()
        for pod, lo, hi in pod_runs:
            rs = ResourceSpans(resource=encoder.resources.resource(pod, versions[service]))
            ss = ScopeSpans(scope=encoder.resources.scope(service))
            for i in range(lo, hi):
                ss.spans.append(
                    build_span(
                        encoder.shapes[int(batch.span_key[i])],
                        int(batch.variant[i]),
                        batch.trace_id[i].tobytes(),
                        batch.span_id[i].tobytes(),
                        batch.parent_id[i].tobytes() if batch.has_parent[i] else b"",
                        int(batch.start_ns[i]),
                        int(batch.end_ns[i]),
                    )
                )
            rs.scope_spans.append(ss)
            request.resource_spans.append(rs)
        records.append((service, request.SerializeToString()))
    return records
