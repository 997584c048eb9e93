"""OTLP/HTTP export requests: decode, enforce item limits, split into records, answer.

Pure functions over protobuf messages; the HTTP shell (``app.py``) only moves bytes. The record
written to Kafka is always the otlp_proto serialization of an export request, as the Collector's
Kafka exporter writes it. A request larger than the record limit is split along its own
structure (resource, then scope, then item), so every record is a valid export request; an item
that alone exceeds the limit is refused and reported through ``partial_success``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from pipeline import otlp, topics
from pipeline.receivers.bodies import JSON, PROTOBUF
from pipeline.receivers.refusals import Refusal

# tag byte plus the longest length varint a record-sized message can need
FRAME_OVERHEAD = 1 + 5
# google.rpc.Code values used in error bodies
INVALID_ARGUMENT = 3
RESOURCE_EXHAUSTED = 8


def data_points(metric: Any) -> Any:
    """The repeated data points of a metric, whatever its kind (empty for a metric with no data)."""
    kind = metric.WhichOneof("data")
    return getattr(metric, kind).data_points if kind else ()


@dataclass(frozen=True)
class SignalLayout:
    """Where one OTLP signal keeps its resources, scopes and items, and how it answers."""

    path: str
    logical_topic: str
    message_type: str
    response_type: type[Message]
    resource_field: str
    scope_field: str
    item_field: str
    rejected_field: str
    # how many rejectable units (spans, data points, log records) an item counts for
    units: Callable[[Any], int] = field(default=lambda _item: 1)


TRACES = SignalLayout(
    "/v1/traces",
    "otlp_spans",
    topics.OTLP_TRACES,
    ExportTraceServiceResponse,
    "resource_spans",
    "scope_spans",
    "spans",
    "rejected_spans",
)
METRICS = SignalLayout(
    "/v1/metrics",
    "otlp_metrics",
    topics.OTLP_METRICS,
    ExportMetricsServiceResponse,
    "resource_metrics",
    "scope_metrics",
    "metrics",
    "rejected_data_points",
    units=lambda metric: len(data_points(metric)),
)
LOGS = SignalLayout(
    "/v1/logs",
    "otlp_logs",
    topics.OTLP_LOGS,
    ExportLogsServiceResponse,
    "resource_logs",
    "scope_logs",
    "log_records",
    "rejected_log_records",
)
LAYOUTS = (TRACES, METRICS, LOGS)


def decode_export(body: bytes, media: str, layout: SignalLayout) -> Message:
    """Parse an export request sent as protobuf or OTLP/JSON (hex ids); Refusal(400) if it is not one."""
    try:
        if media == PROTOBUF:
            return otlp.from_proto(body, layout.message_type)
        parsed = orjson.loads(body)
    except otlp.OtlpDecodeError as e:
        raise Refusal(400, "otlp_decode_error", str(e)) from None
    except orjson.JSONDecodeError as e:
        raise Refusal(400, "json_decode_error", f"body is not JSON: {e}") from None
    try:
        return otlp.from_json(parsed, layout.message_type)
    except otlp.OtlpDecodeError as e:
        raise Refusal(400, "otlp_decode_error", str(e)) from None
    except Exception as e:  # json_format raises more than ParseError on odd shapes; never crash
        raise Refusal(
            400, "otlp_decode_error", f"invalid OTLP/JSON: {type(e).__name__}: {e}"
        ) from None


@dataclass
class ExportOutcome:
    """What one export request became: the records to publish and what was refused in it."""

    records: list[bytes]
    accepted: int
    rejected: int
    messages: list[str]

    @property
    def error_message(self) -> str:
        return "; ".join(self.messages)


def count_units(request: Message, layout: SignalLayout) -> int:
    return sum(
        layout.units(item)
        for resource in getattr(request, layout.resource_field)
        for scope in getattr(resource, layout.scope_field)
        for item in getattr(scope, layout.item_field)
    )


def _drop_where(repeated: Any, refuse: Callable[[Any], bool]) -> int:
    kept = [element for element in repeated if not refuse(element)]
    dropped = len(repeated) - len(kept)
    if dropped:
        kept_copies = [type(element)() for element in kept]
        for copy, element in zip(kept_copies, kept, strict=True):
            copy.CopyFrom(element)
        del repeated[:]
        repeated.extend(kept_copies)
    return dropped


def drop_over_attribute_limit(request: Message, layout: SignalLayout, max_attributes: int) -> int:
    """Remove spans, data points and log records with more than max_attributes attributes."""

    def too_many(element: Any) -> bool:
        return len(element.attributes) > max_attributes

    dropped = 0
    for resource in getattr(request, layout.resource_field):
        for scope in getattr(resource, layout.scope_field):
            items = getattr(scope, layout.item_field)
            if layout is METRICS:
                for metric in items:
                    dropped += _drop_where(data_points(metric), too_many)
            else:
                dropped += _drop_where(items, too_many)
    return dropped


def _framed_size(message: Message) -> int:
    size = message.ByteSize()
    return 1 + max(1, (size.bit_length() + 6) // 7) + size


class _Splitter:
    """Greedy packing of a request's parts into records no larger than the limit."""

    def __init__(self, layout: SignalLayout) -> None:
        self.layout = layout
        self.rejected = 0
        self.oversized_items = 0

    def records(self, request: Message, limit: int) -> list[bytes]:
        return [
            part.SerializeToString()
            for part in self._pack(request, self.layout.resource_field, limit, self._split_resource)
        ]

    def _split_resource(self, resource: Message, room: int) -> Iterator[Message]:
        return self._pack_framed(resource, self.layout.scope_field, room, self._split_scope)

    def _split_scope(self, scope: Message, room: int) -> Iterator[Message]:
        return self._pack_framed(scope, self.layout.item_field, room, self._refuse_item)

    def _refuse_item(self, item: Message, room: int) -> Iterator[Message]:
        self.rejected += self.layout.units(item)
        self.oversized_items += 1
        return iter(())

    def _pack_framed(
        self,
        parent: Message,
        child_field: str,
        framed_room: int,
        split_child: Callable[[Message, int], Iterator[Message]],
    ) -> Iterator[Message]:
        shell = type(parent)()
        shell.CopyFrom(parent)
        shell.ClearField(child_field)
        room = framed_room - FRAME_OVERHEAD - shell.ByteSize()
        return self._pack(parent, child_field, room, split_child)

    def _pack(
        self,
        parent: Message,
        child_field: str,
        room: int,
        split_child: Callable[[Message, int], Iterator[Message]],
    ) -> Iterator[Message]:
        def wrap(children: list[Message]) -> Message:
            part = type(parent)()
            part.CopyFrom(parent)
            part.ClearField(child_field)
            getattr(part, child_field).extend(children)
            return part

        run: list[Message] = []
        used = 0
        for child in getattr(parent, child_field):
            size = _framed_size(child)
            pieces = split_child(child, room) if size > room else iter((child,))
            for piece in pieces:
                piece_size = _framed_size(piece)
                if run and used + piece_size > room:
                    yield wrap(run)
                    run, used = [], 0
                run.append(piece)
                used += piece_size
        if run:
            yield wrap(run)


def prepare_export(
    request: Message, layout: SignalLayout, *, max_record_bytes: int, max_attributes: int
) -> ExportOutcome:
    """Apply the item limits and split the request into records below max_record_bytes."""
    total = count_units(request, layout)
    messages: list[str] = []
    over_attributes = drop_over_attribute_limit(request, layout, max_attributes)
    if over_attributes:
        messages.append(f"{over_attributes} refused: more than {max_attributes} attributes")
    if request.ByteSize() == 0:
        records: list[bytes] = []
        rejected = over_attributes
    elif request.ByteSize() <= max_record_bytes:
        records = [request.SerializeToString()]
        rejected = over_attributes
    else:
        splitter = _Splitter(layout)
        records = splitter.records(request, max_record_bytes)
        rejected = over_attributes + splitter.rejected
        if splitter.rejected:
            messages.append(
                f"{splitter.rejected} refused: {splitter.oversized_items} item(s) larger than"
                f" the record limit of {max_record_bytes} bytes on their own"
            )
    return ExportOutcome(records, total - rejected, rejected, messages)


def encode_message(message: Message, media: str) -> bytes:
    if media == JSON:
        return orjson.dumps(json_format.MessageToDict(message))
    return message.SerializeToString()


def export_response(layout: SignalLayout, outcome: ExportOutcome, media: str) -> bytes:
    """The Export*ServiceResponse, with partial_success when anything was refused."""
    response: Any = layout.response_type()
    if outcome.rejected:
        setattr(response.partial_success, layout.rejected_field, outcome.rejected)
        response.partial_success.error_message = outcome.error_message
    return encode_message(response, media)


def status_body(refusal: Refusal, media: str) -> bytes:
    """A google.rpc.Status describing a refusal, in the request's encoding."""
    code = RESOURCE_EXHAUSTED if refusal.status == 413 else INVALID_ARGUMENT
    status = status_pb2.Status(code=code, message=f"{refusal.reason}: {refusal.detail}")
    return encode_message(status, JSON if media == JSON else PROTOBUF)
