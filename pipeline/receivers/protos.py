"""Protobuf messages of the foreign push protocols, built at import time from descriptors.

Only the fields worldline reads are declared; anything else on the wire is kept as unknown
fields and ignored. Field numbers follow the published ``.proto`` files:

- Prometheus remote_write 1.0 (``prometheus/prompb``): ``WriteRequest`` { timeseries = 1 },
  ``TimeSeries`` { labels = 1, samples = 2 }, ``Label`` { name = 1, value = 2 },
  ``Sample`` { value = 1 (double), timestamp = 2 (int64, ms) }.
- Loki push (``logproto``): ``PushRequest`` { streams = 1 }, ``StreamAdapter`` { labels = 1
  (Prometheus label syntax), entries = 2 }, ``EntryAdapter`` { timestamp = 1
  (google.protobuf.Timestamp), line = 2, structuredMetadata = 3 }, ``LabelPairAdapter``
  { name = 1, value = 2 }. ``line`` is declared ``bytes`` so a line that is not UTF-8 is kept
  (decoded with replacement) instead of failing the whole push.

A private descriptor pool keeps these names out of the default pool.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

_F = descriptor_pb2.FieldDescriptorProto
FieldSpec = tuple[str, int, int, int, str]  # name, number, type, label, message type name

OPTIONAL = _F.LABEL_OPTIONAL
REPEATED = _F.LABEL_REPEATED


def _file(package: str, messages: dict[str, list[FieldSpec]]) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(
        name=f"worldline/receivers/{package}.proto", package=package, syntax="proto3"
    )
    for message_name, fields in messages.items():
        message = proto.message_type.add(name=message_name)
        for name, number, field_type, label, type_name in fields:
            field = message.field.add(name=name, number=number, type=field_type, label=label)
            if type_name:
                field.type_name = f".{package}.{type_name}"
    return proto


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(
    _file(
        "prometheus",
        {
            "WriteRequest": [("timeseries", 1, _F.TYPE_MESSAGE, REPEATED, "TimeSeries")],
            "TimeSeries": [
                ("labels", 1, _F.TYPE_MESSAGE, REPEATED, "Label"),
                ("samples", 2, _F.TYPE_MESSAGE, REPEATED, "Sample"),
            ],
            "Label": [
                ("name", 1, _F.TYPE_STRING, OPTIONAL, ""),
                ("value", 2, _F.TYPE_STRING, OPTIONAL, ""),
            ],
            "Sample": [
                ("value", 1, _F.TYPE_DOUBLE, OPTIONAL, ""),
                ("timestamp", 2, _F.TYPE_INT64, OPTIONAL, ""),
            ],
        },
    )
)
_POOL.Add(
    _file(
        "logproto",
        {
            "PushRequest": [("streams", 1, _F.TYPE_MESSAGE, REPEATED, "StreamAdapter")],
            "StreamAdapter": [
                ("labels", 1, _F.TYPE_STRING, OPTIONAL, ""),
                ("entries", 2, _F.TYPE_MESSAGE, REPEATED, "EntryAdapter"),
            ],
            "EntryAdapter": [
                ("timestamp", 1, _F.TYPE_MESSAGE, OPTIONAL, "Timestamp"),
                ("line", 2, _F.TYPE_BYTES, OPTIONAL, ""),
                ("structuredMetadata", 3, _F.TYPE_MESSAGE, REPEATED, "LabelPairAdapter"),
            ],
            "LabelPairAdapter": [
                ("name", 1, _F.TYPE_STRING, OPTIONAL, ""),
                ("value", 2, _F.TYPE_STRING, OPTIONAL, ""),
            ],
            # wire-compatible with google.protobuf.Timestamp
            "Timestamp": [
                ("seconds", 1, _F.TYPE_INT64, OPTIONAL, ""),
                ("nanos", 2, _F.TYPE_INT32, OPTIONAL, ""),
            ],
        },
    )
)


def message_class(full_name: str) -> type[Message]:
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(full_name))


WriteRequest = message_class("prometheus.WriteRequest")
PushRequest = message_class("logproto.PushRequest")
