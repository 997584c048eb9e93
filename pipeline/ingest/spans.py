"""Spans: OTLP ExportTraceServiceRequest bytes -> Arrow table of ``schemas.segments.SPANS``.

The attributes the dependency graph and the causal search read are promoted to columns (both
the current semantic-convention names and their older spellings); every other span, resource
and event attribute is kept losslessly as JSON. Ids are kept as raw bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
import pyarrow as pa
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

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
    "server_address": ("server.address", "net.peer.name"),
    "server_port": ("server.port", "net.peer.port"),
}
RESOURCE_COLUMNS: dict[str, tuple[str, ...]] = {
    "service_version": ("service.version",),
    "host_name": ("host.name", "k8s.node.name"),
    "pod_name": ("k8s.pod.name",),
}
INT_COLUMNS = {"http_status_code", "server_port"}
UNKNOWN_SERVICE = "unknown_service"

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
    """Column builders for one table; ``add_request`` appends every span of a request."""

    def __init__(self) -> None:
        self.cols: dict[str, list[Any]] = {f.name: [] for f in SPANS}

    def __len__(self) -> int:
        return len(self.cols["span_id"])

    def add_request(self, request: ExportTraceServiceRequest) -> int:
        added = 0
        c = self.cols
        for rs in request.resource_spans:
            resource = {kv.key: any_value(kv.value) for kv in rs.resource.attributes}
            service = str(resource.get("service.name") or UNKNOWN_SERVICE)
            res_cols = {col: _first(resource, keys) for col, keys in RESOURCE_COLUMNS.items()}
            res_json = orjson.dumps(resource, option=orjson.OPT_SORT_KEYS).decode()
            for ss in rs.scope_spans:
                for span in ss.spans:
                    promoted: dict[str, Any] = {}
                    rank: dict[str, int] = {}
                    rest: dict[str, Any] = {}
                    for kv in span.attributes:
                        value = any_value(kv.value)
                        col = _KEY_TO_COLUMN.get(kv.key)
                        if col is not None and (col not in rank or _PRIORITY[kv.key] < rank[col]):
                            if col in INT_COLUMNS:
                                try:
                                    value = int(value)
                                except (TypeError, ValueError):
                                    rest[kv.key] = value
                                    continue
                            elif not isinstance(value, str):
                                rest[kv.key] = value
                                continue
                            if col in rank:  # the lower-priority spelling goes to the JSON column
                                rest[_name_for(col, rank[col])] = promoted[col]
                            promoted[col] = value
                            rank[col] = _PRIORITY[kv.key]
                        else:
                            rest[kv.key] = value
                    c["trace_id"].append(span.trace_id if len(span.trace_id) == 16 else bytes(16))
                    c["span_id"].append(span.span_id if len(span.span_id) == 8 else bytes(8))
                    c["parent_span_id"].append(
                        span.parent_span_id if len(span.parent_span_id) == 8 else None
                    )
                    c["service"].append(service)
                    c["name"].append(span.name)
                    c["kind"].append(span.kind)
                    c["start_unix_nano"].append(span.start_time_unix_nano)
                    c["duration_ns"].append(
                        max(0, span.end_time_unix_nano - span.start_time_unix_nano)
                    )
                    c["status_code"].append(span.status.code)
                    c["status_message"].append(span.status.message or None)
                    for col, value in res_cols.items():
                        c[col].append(value)
                    for col in SPAN_ATTRIBUTE_COLUMNS:
                        c[col].append(promoted.get(col))
                    c["attributes"].append(orjson.dumps(rest).decode() if rest else None)
                    c["resource_attributes"].append(res_json)
                    c["events"].append(_events(span) if span.events else None)
                    c["links"].append(_links(span) if span.links else None)
                    added += 1
        return added

    def to_table(self) -> pa.Table:
        return pa.Table.from_pydict(self.cols, schema=SPANS)


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
