"""Arrow schemas of the columnar segments worldline stores, one per signal.

Columns are what the dependency graph and the causal search read directly; everything else
an input carried is kept losslessly in JSON-encoded ``*_attributes`` columns. Bump
``ARROW_SCHEMA_VERSION`` on any change; manifests record the version each segment was written with.
"""

from __future__ import annotations

import pyarrow as pa

ARROW_SCHEMA_VERSION = 1

_str = pa.dictionary(pa.int32(), pa.string())

SPANS = pa.schema(
    [
        pa.field("trace_id", pa.binary(16), nullable=False),
        pa.field("span_id", pa.binary(8), nullable=False),
        pa.field("parent_span_id", pa.binary(8)),
        pa.field("service", _str, nullable=False),
        pa.field("name", _str, nullable=False),
        pa.field("kind", pa.int8(), nullable=False),
        pa.field("start_unix_nano", pa.int64(), nullable=False),
        pa.field("duration_ns", pa.int64(), nullable=False),
        pa.field("status_code", pa.int8(), nullable=False),
        pa.field("status_message", pa.string()),
        pa.field("service_version", _str),
        pa.field("host_name", _str),
        pa.field("pod_name", _str),
        pa.field("http_method", _str),
        pa.field("http_route", _str),
        pa.field("http_status_code", pa.int16()),
        pa.field("rpc_system", _str),
        pa.field("rpc_service", _str),
        pa.field("rpc_method", _str),
        pa.field("db_system", _str),
        pa.field("db_name", _str),
        pa.field("db_operation", _str),
        pa.field("messaging_system", _str),
        pa.field("messaging_destination", _str),
        pa.field("peer_service", _str),
        pa.field("server_address", _str),
        pa.field("server_port", pa.int32()),
        pa.field("attributes", pa.string(), metadata={"encoding": "json"}),
        pa.field("resource_attributes", pa.string(), metadata={"encoding": "json"}),
        pa.field("events", pa.string(), metadata={"encoding": "json"}),
        pa.field("links", pa.string(), metadata={"encoding": "json"}),
    ],
    metadata={"worldline.signal": "spans", "worldline.schema_version": str(ARROW_SCHEMA_VERSION)},
)

LOGS = pa.schema(
    [
        pa.field("time_unix_nano", pa.int64(), nullable=False),
        pa.field("observed_unix_nano", pa.int64()),
        pa.field("service", _str, nullable=False),
        pa.field("severity_number", pa.int8(), nullable=False),
        pa.field("severity_text", _str),
        pa.field("template_id", pa.uint32(), nullable=False),
        pa.field("params", pa.list_(pa.string()), nullable=False),
        pa.field("trace_id", pa.binary(16)),
        pa.field("span_id", pa.binary(8)),
        pa.field("attributes", pa.string(), metadata={"encoding": "json"}),
        pa.field("resource_attributes", pa.string(), metadata={"encoding": "json"}),
    ],
    metadata={"worldline.signal": "logs", "worldline.schema_version": str(ARROW_SCHEMA_VERSION)},
)

LOG_TEMPLATES = pa.schema(
    [
        pa.field("template_id", pa.uint32(), nullable=False),
        pa.field("template", pa.string(), nullable=False),
        pa.field("first_seen_unix_nano", pa.int64(), nullable=False),
    ],
    metadata={
        "worldline.signal": "log_templates",
        "worldline.schema_version": str(ARROW_SCHEMA_VERSION),
    },
)

METRIC_SERIES = pa.schema(
    [
        pa.field("series_id", pa.uint64(), nullable=False),
        pa.field("first_seen_unix_nano", pa.int64(), nullable=False),
        pa.field("name", _str, nullable=False),
        pa.field("kind", _str, nullable=False),
        pa.field("unit", _str),
        pa.field("temporality", pa.int8()),
        pa.field("monotonic", pa.bool_()),
        pa.field("service", _str),
        pa.field("attributes", pa.string(), metadata={"encoding": "json"}),
        pa.field("resource_attributes", pa.string(), metadata={"encoding": "json"}),
    ],
    metadata={
        "worldline.signal": "metric_series",
        "worldline.schema_version": str(ARROW_SCHEMA_VERSION),
    },
)

METRIC_POINTS = pa.schema(
    [
        pa.field("series_id", pa.uint64(), nullable=False),
        pa.field("time_unix_nano", pa.int64(), nullable=False),
        pa.field("start_unix_nano", pa.int64()),
        pa.field("value", pa.float64()),
        pa.field("count", pa.uint64()),
        pa.field("sum", pa.float64()),
        pa.field("bucket_counts", pa.list_(pa.uint64())),
        pa.field("explicit_bounds", pa.list_(pa.float64())),
        pa.field("quantiles", pa.list_(pa.float64())),
        pa.field("quantile_values", pa.list_(pa.float64())),
    ],
    metadata={"worldline.signal": "metrics", "worldline.schema_version": str(ARROW_SCHEMA_VERSION)},
)

BY_SIGNAL: dict[str, pa.Schema] = {
    "spans": SPANS,
    "logs": LOGS,
    "log_templates": LOG_TEMPLATES,
    "metric_series": METRIC_SERIES,
    "metrics": METRIC_POINTS,
}
