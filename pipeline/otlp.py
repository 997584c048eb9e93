"""OTLP payload codecs: otlp_proto bytes and OTLP/JSON, both ways.

OTLP/JSON writes trace and span ids as hex strings, while protobuf's ``json_format`` expects
base64 for ``bytes`` fields and would silently decode hex as base64 (wrong ids). The id fields are
therefore converted here, before and after ``json_format``.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from pipeline import topics

MESSAGE_TYPES: dict[str, type[Message]] = {
    topics.OTLP_TRACES: ExportTraceServiceRequest,
    topics.OTLP_METRICS: ExportMetricsServiceRequest,
    topics.OTLP_LOGS: ExportLogsServiceRequest,
}

ID_FIELDS = {"traceId": 16, "spanId": 8, "parentSpanId": 8}


class OtlpDecodeError(ValueError):
    """A payload is not a valid OTLP message of the expected type."""


def message_type(type_name: str) -> type[Message]:
    try:
        return MESSAGE_TYPES[type_name]
    except KeyError:
        raise KeyError(f"not an OTLP export request type: {type_name}") from None


def _ids_hex_to_b64(node: Any) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key in ID_FIELDS and isinstance(value, str):
                out[key] = _hex_id_to_b64(key, value)
            else:
                out[key] = _ids_hex_to_b64(value)
        return out
    if isinstance(node, list):
        return [_ids_hex_to_b64(v) for v in node]
    return node


def _hex_id_to_b64(key: str, value: str) -> str:
    if value == "":
        return ""
    size = ID_FIELDS[key]
    if len(value) != 2 * size:
        raise OtlpDecodeError(f"{key} must be {2 * size} hex characters, got {len(value)}")
    try:
        raw = binascii.unhexlify(value)
    except (binascii.Error, ValueError):
        raise OtlpDecodeError(f"{key} is not hex: {value[:40]!r}") from None
    return base64.b64encode(raw).decode("ascii")


def _ids_b64_to_hex(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: (
                base64.b64decode(v).hex()
                if k in ID_FIELDS and isinstance(v, str)
                else _ids_b64_to_hex(v)
            )
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_ids_b64_to_hex(v) for v in node]
    return node


def from_json(obj: Any, type_name: str) -> Message:
    """Parse an OTLP/JSON object (hex ids) into the protobuf message ``type_name``."""
    if not isinstance(obj, dict):
        raise OtlpDecodeError("OTLP/JSON payload must be a JSON object")
    msg = message_type(type_name)()
    try:
        json_format.ParseDict(_ids_hex_to_b64(obj), msg, ignore_unknown_fields=True)
    except json_format.ParseError as e:
        raise OtlpDecodeError(f"invalid OTLP/JSON: {e}") from None
    return msg


def to_json(msg: Message) -> dict[str, Any]:
    """OTLP/JSON of a message, with hex ids as the OTLP specification writes them."""
    data = json_format.MessageToDict(msg, preserving_proto_field_name=False)
    result: dict[str, Any] = _ids_b64_to_hex(data)
    return result


def from_proto(data: bytes, type_name: str) -> Message:
    """Parse otlp_proto bytes (one serialized export request, no framing)."""
    msg = message_type(type_name)()
    try:
        msg.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise OtlpDecodeError(f"invalid {msg.DESCRIPTOR.name}: {e}") from None
    return msg
