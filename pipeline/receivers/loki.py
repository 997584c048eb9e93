"""Loki push (JSON and snappy protobuf) into OTLP logs.

Each stream becomes a ResourceLogs whose resource attributes are the stream labels, plus
``service.name`` from the first of ``service_name``, ``service``, ``job``, ``app`` (Loki's own
``unknown_service`` otherwise). Each entry becomes a LogRecord: the line as a string body, the
timestamp as ``time_unix_nano``, structured metadata as attributes, and a severity from a level
label or structured-metadata field when one is present.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from pipeline.ingest.resource import workload_of_pod
from pipeline.ingest.severity import severity_number
from pipeline.receivers import protos
from pipeline.receivers.refusals import Refusal

SCOPE_NAME = "worldline.receivers.loki"
SERVICE_LABELS = ("service_name", "service", "job", "app")
"""Labels naming the service a stream is from, first found first; without them, a ``pod``
label names its workload."""
UNKNOWN_SERVICE = "unknown_service"
LEVEL_KEYS = ("detected_level", "level", "severity", "lvl", "loglevel")
MAX_TIMESTAMP_NS = 2**64 - 1


_LABEL_PAIR = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_.]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,|$)')
_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\"}


def _refuse(detail: str) -> Refusal:
    return Refusal(400, "loki_decode_error", detail)


@dataclass(frozen=True)
class LokiEntry:
    time_unix_nano: int
    line: str
    metadata: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class LokiStream:
    labels: tuple[tuple[str, str], ...]
    entries: tuple[LokiEntry, ...]


def parse_label_set(text: str) -> tuple[tuple[str, str], ...]:
    """Parse Prometheus label syntax, ``{a="b", c="d"}``, as Loki's protobuf streams carry it."""
    body = text.strip()
    if not (body.startswith("{") and body.endswith("}")):
        raise _refuse(f'stream labels must look like {{name="value", ...}}, got {text[:80]!r}')
    body = body[1:-1]
    pairs: list[tuple[str, str]] = []
    position = 0
    while position < len(body) and body[position:].strip():
        match = _LABEL_PAIR.match(body, position)
        if match is None:
            raise _refuse(f"cannot parse stream labels near {body[position : position + 40]!r}")
        raw = match.group(2)
        value = re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), raw)
        pairs.append((match.group(1), value))
        position = match.end()
    return tuple(pairs)


def _timestamp_ns(value: Any) -> int:
    if isinstance(value, str) and value.isdigit() and value.isascii():
        ns = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        ns = value
    else:
        raise _refuse(f"timestamp must be a string of nanoseconds, got {str(value)[:40]!r}")
    if not 0 <= ns <= MAX_TIMESTAMP_NS:
        raise _refuse(f"timestamp out of range: {ns}")
    return ns


def _string_pairs(value: Any, what: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise _refuse(f"{what} must be an object of string values")
    return tuple(value.items())


def streams_from_json(body: bytes) -> list[LokiStream]:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise Refusal(400, "json_decode_error", f"body is not JSON: {e}") from None
    if not isinstance(document, dict) or not isinstance(document.get("streams"), list):
        raise _refuse('body must be {"streams": [...]}')
    streams = []
    for stream in document["streams"]:
        if not isinstance(stream, dict):
            raise _refuse("each stream must be an object")
        labels = _string_pairs(stream.get("stream", {}), "stream")
        values = stream.get("values", [])
        if not isinstance(values, list):
            raise _refuse("values must be a list")
        entries = []
        for value in values:
            if not isinstance(value, list) or len(value) not in (2, 3):
                raise _refuse("each value must be [timestamp, line] or [timestamp, line, metadata]")
            if not isinstance(value[1], str):
                raise _refuse("a log line must be a string")
            metadata = _string_pairs(value[2], "structured metadata") if len(value) == 3 else ()
            entries.append(LokiEntry(_timestamp_ns(value[0]), value[1], metadata))
        streams.append(LokiStream(labels, tuple(entries)))
    return streams


def streams_from_protobuf(body: bytes) -> list[LokiStream]:
    """Decode an (already snappy-decompressed) logproto.PushRequest."""
    try:
        push = protos.PushRequest.FromString(body)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise _refuse(f"not a logproto.PushRequest: {e}") from None
    streams = []
    for stream in push.streams:
        entries = []
        for entry in stream.entries:
            ns = entry.timestamp.seconds * 1_000_000_000 + entry.timestamp.nanos
            if not 0 <= ns <= MAX_TIMESTAMP_NS:
                raise _refuse(f"timestamp out of range: {ns}")
            metadata = tuple((pair.name, pair.value) for pair in entry.structuredMetadata)
            entries.append(LokiEntry(ns, entry.line.decode("utf-8", "replace"), metadata))
        streams.append(LokiStream(parse_label_set(stream.labels), tuple(entries)))
    return streams


def _severity(pairs: Iterable[tuple[str, str]]) -> tuple[int, str] | None:
    found = dict(pairs)
    for key in LEVEL_KEYS:
        if key in found:
            text = found[key]
            return severity_number(text), text
    return None


def to_otlp_logs(streams: list[LokiStream], observed_unix_nano: int) -> ExportLogsServiceRequest:
    export = ExportLogsServiceRequest()
    for stream in streams:
        resource_logs = export.resource_logs.add()
        labels = dict(stream.labels)
        label = next((k for k in SERVICE_LABELS if labels.get(k)), None)
        service = labels.get("service.name") or (labels[label] if label else "")
        if label == "job" and not labels.get("service.name"):
            # Promtail's Kubernetes jobs are "<namespace>/<app>"
            service = service.rsplit("/", 1)[-1]
        if not service and labels.get("pod"):
            # a log shipper's stream of a pod's containers: the workload the pod belongs to
            service = workload_of_pod(labels["pod"])
        service = service or UNKNOWN_SERVICE
        own_labels = [(k, v) for k, v in stream.labels if k != "service.name"]
        for key, value in (("service.name", service), *own_labels):
            attribute = resource_logs.resource.attributes.add(key=key)
            attribute.value.string_value = value
        stream_severity = _severity(stream.labels)
        scope_logs = resource_logs.scope_logs.add()
        scope_logs.scope.name = SCOPE_NAME
        for entry in stream.entries:
            record = scope_logs.log_records.add(
                time_unix_nano=entry.time_unix_nano, observed_time_unix_nano=observed_unix_nano
            )
            record.body.string_value = entry.line
            severity = _severity(entry.metadata) or stream_severity
            if severity is not None:
                record.severity_number, record.severity_text = severity
            for key, value in entry.metadata:
                attribute = record.attributes.add(key=key)
                attribute.value.string_value = value
    return export
