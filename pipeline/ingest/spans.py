"""Spans: OTLP ExportTraceServiceRequest bytes -> Arrow table of ``schemas.segments.SPANS``.

The attributes the dependency graph and the causal search read are promoted to columns (both
the current semantic-convention names and their older spellings); every other span, resource
and event attribute is kept losslessly as JSON. Ids are kept as raw bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from pipeline.ingest.resource import service_of
from schemas.segments import SPANS

# column -> attribute keys that fill it, preferred first
SPAN_ATTRIBUTE_COLUMNS: dict[str, tuple[str, ...]] = {
    "http_method": ("http.request.method", "http.method"),
    "http_route": ("http.route",),
    "http_status_code": ("http.response.status_code", "http.status_code"),
    "rpc_system": ("rpc.system",),
    "rpc_service": ("rpc.service",),
    "rpc_method": ("rpc.method",),
    "db_system": ("db.system", "db.system.name"),
    "db_name": ("db.namespace", "db.name"),
    "db_operation": ("db.operation.name", "db.operation"),
    "messaging_system": ("messaging.system",),
    "messaging_destination": ("messaging.destination.name", "messaging.destination"),
    "peer_service": ("peer.service",),
    "server_address": ("server.address", "net.peer.name", "peer.hostname"),
    "server_port": ("server.port", "net.peer.port"),
}
RESOURCE_COLUMNS: dict[str, tuple[str, ...]] = {
    "service_version": ("service.version",),
    "host_name": ("host.name", "k8s.node.name"),
    "pod_name": ("k8s.pod.name",),
}
INT_COLUMNS = {"http_status_code", "server_port"}

_KEY_TO_COLUMN = {key: col for col, keys in SPAN_ATTRIBUTE_COLUMNS.items() for key in keys}
_PRIORITY = {key: i for keys in SPAN_ATTRIBUTE_COLUMNS.values() for i, key in enumerate(keys)}


def any_value(v: AnyValue) -> Any:
    """An OTLP AnyValue as a JSON-able Python value (bytes as hex)."""
    kind = v.WhichOneof("value")
    if kind == "string_value":
        return v.string_value
    if kind == "int_value":
        return v.int_value
    if kind == "double_value":
        return v.double_value
    if kind == "bool_value":
        return v.bool_value
    if kind == "bytes_value":
        return v.bytes_value.hex()
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    return None


class SpanColumns:
    """Column builders for one table; ``add_request`` appends every span of a request.

    Written for speed (this loop is the ingest bottleneck): per span only the always-present
    fields are appended; resource-level columns are kept as runs (one entry per resource) and
    promoted attributes as sparse (row, value) pairs, both expanded once in ``to_table``.
    """

    def __init__(self, max_attributes: int = 1 << 30) -> None:
        self.max_attributes = max_attributes
        self.attributes_dropped = 0
        self.trace_id: list[bytes] = []
        self.span_id: list[bytes] = []
        self.parent: list[bytes] = []  # b"" for a root span
        self.name: list[str] = []
        self.kind: list[int] = []
        self.start: list[int] = []
        self.end: list[int] = []
        self.status_code: list[int] = []
        self.status_message: list[str | None] = []
        self.attributes: list[str | None] = []
        self.sparse: dict[str, tuple[list[int], list[Any]]] = {
            col: ([], []) for col in (*SPAN_ATTRIBUTE_COLUMNS, "events", "links")
        }
        # resource runs: (first row, rows, service, version, host, pod, resource json)
        self.runs: list[tuple[int, int, str, Any, Any, Any, str]] = []

    def __len__(self) -> int:
        return len(self.span_id)

    def add_request(self, request: ExportTraceServiceRequest) -> int:
        # Ids are appended as they come and checked in bulk in ``to_table``; string attribute
        # values (most of them) are read without the oneof dispatch of ``any_value``.
        first_row = len(self.span_id)
        trace_append = self.trace_id.append
        span_append = self.span_id.append
        parent_append = self.parent.append
        name_append = self.name.append
        kind_append = self.kind.append
        start_append = self.start.append
        end_append = self.end.append
        code_append = self.status_code.append
        message_append = self.status_message.append
        attrs_append = self.attributes.append
        sparse = self.sparse
        key_to_column = _KEY_TO_COLUMN
        max_attributes = self.max_attributes
        dumps = orjson.dumps
        row = first_row
        for rs in request.resource_spans:
            resource = {kv.key: any_value(kv.value) for kv in rs.resource.attributes}
            run_start = row
            for ss in rs.scope_spans:
                for span in ss.spans:
                    trace_append(span.trace_id)
                    span_append(span.span_id)
                    parent_append(span.parent_span_id)
                    name_append(span.name)
                    kind_append(span.kind)
                    start_append(span.start_time_unix_nano)
                    end_append(span.end_time_unix_nano)
                    if span.HasField("status"):
                        status = span.status
                        code_append(status.code)
                        message_append(status.message or None)
                    else:
                        code_append(0)
                        message_append(None)
                    span_attributes = span.attributes
                    if not span_attributes:
                        attrs_append(None)
                    else:
                        if len(span_attributes) > max_attributes:
                            self.attributes_dropped += len(span_attributes) - max_attributes
                            span_attributes = span_attributes[:max_attributes]
                        rest: dict[str, Any] | None = None
                        promoted: dict[str, tuple[int, Any]] | None = None
                        for kv in span_attributes:
                            key = kv.key
                            v = kv.value
                            value: Any = v.string_value
                            if not value:
                                value = any_value(v)
                            col = key_to_column.get(key)
                            if col is not None:
                                if col in INT_COLUMNS:
                                    if isinstance(value, str) and value.isdigit():
                                        value = int(value)
                                    ok = isinstance(value, int) and not isinstance(value, bool)
                                else:
                                    ok = isinstance(value, str)
                                if ok:
                                    if promoted is None:
                                        promoted = {}
                                    held = promoted.get(col)
                                    priority = _PRIORITY[key]
                                    if held is None:
                                        promoted[col] = (priority, value)
                                        continue
                                    if priority < held[0]:  # the other spelling goes to the JSON
                                        promoted[col] = (priority, value)
                                        key, value = _name_for(col, held[0]), held[1]
                            if rest is None:
                                rest = {key: value}
                            else:
                                rest[key] = value
                        if promoted is not None:
                            for col, (_, value) in promoted.items():
                                rows, values = sparse[col]
                                rows.append(row)
                                values.append(value)
                        attrs_append(dumps(rest).decode() if rest else None)
                    if span.events:
                        sparse["events"][0].append(row)
                        sparse["events"][1].append(_events(span))
                    if span.links:
                        sparse["links"][0].append(row)
                        sparse["links"][1].append(_links(span))
                    row += 1
            if row > run_start:
                self.runs.append(
                    (
                        run_start,
                        row - run_start,
                        service_of(resource),
                        _first(resource, RESOURCE_COLUMNS["service_version"]),
                        _first(resource, RESOURCE_COLUMNS["host_name"]),
                        _first(resource, RESOURCE_COLUMNS["pod_name"]),
                        orjson.dumps(resource, option=orjson.OPT_SORT_KEYS).decode(),
                    )
                )
        return row - first_row

    def to_table(self) -> pa.Table:
        n = len(self.span_id)
        lengths = np.array([r[1] for r in self.runs], dtype=np.int64)
        start = np.array(self.start, dtype=np.int64)
        end = np.array(self.end, dtype=np.int64)

        run_of_row = np.repeat(np.arange(len(self.runs), dtype=np.int32), lengths)

        def runs(index: int, field: pa.Field) -> pa.Array:
            if not n:
                return pa.array([], field.type)
            values = pa.array([r[index] for r in self.runs], type=pa.string())
            if not pa.types.is_dictionary(field.type):
                return values.take(pa.array(run_of_row))
            encoded = values.dictionary_encode()
            indices = encoded.indices.take(pa.array(run_of_row))
            return pa.DictionaryArray.from_arrays(indices, encoded.dictionary).cast(field.type)

        def sparse(col: str, field: pa.Field) -> pa.Array:
            rows, values = self.sparse[col]
            if not rows:
                return pa.nulls(n, field.type)
            at = np.array(rows, dtype=np.int64)
            if pa.types.is_dictionary(field.type):
                encoded = pa.array(values, type=field.type.value_type).dictionary_encode()
                dense = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32)
                scattered = np.zeros(n, dtype=np.int32)
                scattered[at] = dense
                mask = np.ones(n, dtype=bool)
                mask[at] = False
                indices = pa.array(scattered, mask=mask)
                return pa.DictionaryArray.from_arrays(indices, encoded.dictionary)
            positions = np.zeros(n, dtype=np.int64)
            positions[at] = np.arange(len(rows), dtype=np.int64)
            mask = np.ones(n, dtype=bool)
            mask[at] = False
            return pa.array(values, type=field.type).take(pa.array(positions, mask=mask))

        columns: dict[str, pa.Array] = {}
        for field in SPANS:
            name = field.name
            if name == "trace_id":
                columns[name] = _fixed_ids(self.trace_id, 16, null_if_invalid=False)
            elif name == "span_id":
                columns[name] = _fixed_ids(self.span_id, 8, null_if_invalid=False)
            elif name == "parent_span_id":
                columns[name] = _fixed_ids(self.parent, 8, null_if_invalid=True)
            elif name == "service":
                columns[name] = runs(2, field)
            elif name == "service_version":
                columns[name] = runs(3, field)
            elif name == "host_name":
                columns[name] = runs(4, field)
            elif name == "pod_name":
                columns[name] = runs(5, field)
            elif name == "resource_attributes":
                columns[name] = runs(6, field)
            elif name == "name":
                columns[name] = (
                    pa.array(self.name, type=pa.string()).dictionary_encode().cast(field.type)
                )
            elif name == "kind":
                columns[name] = pa.array(self.kind, type=field.type)
            elif name == "start_unix_nano":
                columns[name] = pa.array(start, type=field.type)
            elif name == "duration_ns":
                columns[name] = pa.array(np.maximum(end - start, 0), type=field.type)
            elif name == "status_code":
                columns[name] = pa.array(self.status_code, type=field.type)
            elif name == "status_message":
                columns[name] = pa.array(self.status_message, type=field.type)
            elif name == "attributes":
                columns[name] = pa.array(self.attributes, type=field.type)
            else:
                columns[name] = sparse(name, field)
        columns["server_address"] = _with_url_hosts(
            columns["server_address"], columns["attributes"], columns["kind"]
        )
        table = pa.Table.from_arrays([columns[f.name] for f in SPANS], schema=SPANS)
        if n < 2:
            return table
        return table.take(pa.array(_trace_order(columns["trace_id"], start)))


URL_HOST = (
    r'"(?:url\.full|http\.url)":"[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/"]*@)?'
    r'(?P<host>\[[^\]"]*\]|[^:/?#"]+)'
)
"""The host of a call's URL (``url.full``, or ``http.url`` in older conventions and
OpenTracing's), as the attributes' JSON holds it."""


def _with_url_hosts(address: pa.Array, attributes: pa.Array, kind: pa.Array) -> pa.Array:
    """``server_address`` of client and producer spans that name no peer address, taken from
    the host of their URL: a call instrumented with its URL alone still names what it calls.
    The URL itself stays in the attributes."""
    missing = pc.and_(
        pc.is_null(address), pc.is_in(kind, value_set=pa.array([3, 4], type=kind.type))
    )
    if not pc.any(missing).as_py():
        return address
    found = pc.extract_regex(pc.if_else(missing, attributes, None), URL_HOST)
    host = pc.struct_field(found, [0])
    text = pc.if_else(missing, host, address.cast(pa.string()))
    return text.dictionary_encode().cast(address.type)


def _fixed_ids(values: list[bytes], width: int, *, null_if_invalid: bool) -> pa.Array:
    """Ids of ``width`` bytes as one Arrow array, checked in bulk; others become null or zeros."""
    raw = pa.array(values, type=pa.binary())
    valid = pc.equal(pc.binary_length(raw), width)
    if not pc.all(valid).as_py() and len(values):
        raw = pc.if_else(valid, raw, None if null_if_invalid else bytes(width))
    return raw.cast(pa.binary(width))


def _trace_order(trace_ids: pa.Array, start: np.ndarray) -> np.ndarray:
    """Row order of a segment: traces by their first start, each trace's spans by start.

    Keeps a trace's rows together (its id becomes one dictionary run) and the start column
    nearly monotonic, so delta encoding stores small steps.
    """
    words = np.frombuffer(trace_ids.buffers()[1], dtype=">u8")[: 2 * len(trace_ids)]
    hi, lo = words[0::2].astype(np.uint64), words[1::2].astype(np.uint64)
    by_id = np.lexsort((start, lo, hi))
    new_trace = np.ones(len(by_id), dtype=bool)
    new_trace[1:] = (hi[by_id][1:] != hi[by_id][:-1]) | (lo[by_id][1:] != lo[by_id][:-1])
    trace = np.empty(len(by_id), dtype=np.int64)
    trace[by_id] = np.cumsum(new_trace) - 1
    first = start[by_id][new_trace]  # spans sorted by start within a trace: its first start
    return np.lexsort((start, lo, hi, first[trace]))


def _first(attrs: dict[str, Any], keys: Iterable[str]) -> Any:
    for key in keys:
        value = attrs.get(key)
        if value is not None:
            return str(value)
    return None


def _name_for(col: str, priority: int) -> str:
    return SPAN_ATTRIBUTE_COLUMNS[col][priority]


def _events(span: Any) -> str:
    return orjson.dumps(
        [
            {
                "time_unix_nano": e.time_unix_nano,
                "name": e.name,
                "attributes": {kv.key: any_value(kv.value) for kv in e.attributes},
            }
            for e in span.events
        ]
    ).decode()


def _links(span: Any) -> str:
    return orjson.dumps(
        [
            {
                "trace_id": link.trace_id.hex(),
                "span_id": link.span_id.hex(),
                "attributes": {kv.key: any_value(kv.value) for kv in link.attributes},
            }
            for link in span.links
        ]
    ).decode()


def spans_table(requests: Iterable[ExportTraceServiceRequest]) -> pa.Table:
    """All spans of some export requests as one Arrow table."""
    builder = SpanColumns()
    for request in requests:
        builder.add_request(request)
    return builder.to_table()
