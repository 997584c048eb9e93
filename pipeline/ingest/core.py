"""The ingest core: Kafka records in, sealed segments and dead letters out. No I/O but the store.

Two phases, so the shell can make the dead letters durable before the segments that skip over
their offsets are sealed:

1. ``decode(records)``: drop records already stored (re-delivered after a crash), refuse bad ones
   with a reason (too large, undecodable, invalid), build Arrow tables per partition;
2. ``seal(batch, now)``: write one segment per partition (and per table kind) keyed by the
   partition's offset range. A partition whose records were all refused still gets an empty
   segment, so its offsets are recorded as done and its dead letters are not sent twice.

Every record is accounted for in ``counters``: stored, redelivered, or refused by reason.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
import pyarrow as pa
from google.protobuf.message import Message

from pipeline import otlp, topics
from pipeline.ingest.logs import LogColumns, MinerStates
from pipeline.ingest.metrics import MetricColumns
from pipeline.ingest.spans import SpanColumns
from pipeline.logs.templates import MinerConfig
from pipeline.segments.store import Manifest, SegmentStore, SourceRange

DEADLETTER_PAYLOAD_LIMIT = 64 * 1024


@dataclass(frozen=True)
class KafkaRecord:
    topic: str
    partition: int
    offset: int
    value: bytes | None
    timestamp_ms: int = 0


@dataclass(frozen=True)
class DeadLetter:
    stage: str
    reason: str
    detail: str
    record: KafkaRecord

    def to_json(self, received_at: dt.datetime) -> dict[str, Any]:
        value = self.record.value or b""
        return {
            "schema_version": 1,
            "stage": self.stage,
            "reason": self.reason,
            "detail": self.detail[:2000],
            "received_at": received_at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
            "source": {
                "topic": self.record.topic,
                "partition": self.record.partition,
                "offset": self.record.offset,
            },
            "payload_size": len(value),
            "payload_b64": base64.b64encode(value[:DEADLETTER_PAYLOAD_LIMIT]).decode("ascii"),
            "payload_truncated_at": DEADLETTER_PAYLOAD_LIMIT
            if len(value) > DEADLETTER_PAYLOAD_LIMIT
            else None,
        }


def deadletter_for_message(
    stage: str, reason: str, detail: str, message: Any, value: bytes | None, now: dt.datetime
) -> dict[str, Any]:
    """The dead-letter record of a refused Kafka message (anything with topic/partition/offset)."""
    record = KafkaRecord(message.topic, message.partition, message.offset, value)
    return DeadLetter(stage, reason, detail, record).to_json(now)


@dataclass(frozen=True)
class Limits:
    max_record_bytes: int = 4 * 1024 * 1024
    max_items_per_record: int = 200_000
    max_attributes_per_item: int = 256


class ColumnBuilder(Protocol):
    def __len__(self) -> int: ...

    def add_request(self, request: Any) -> int: ...


@dataclass(frozen=True)
class TableOut:
    signal: str
    table: pa.Table
    time_column: str
    service_column: str | None


@dataclass
class PartitionBatch:
    topic: str
    partition: int
    first_offset: int
    last_offset: int
    builder: ColumnBuilder


def _no_hook(part: PartitionBatch) -> None:
    return None


@dataclass(frozen=True)
class SignalCodec:
    """How one OTLP topic becomes tables: message type, builder and the tables it yields.

    ``tables`` are written in order; the last one marks the partition's offsets as done, and
    ``before_marker`` runs just before it (logs persist their template miner there).
    """

    stage: str
    signal: str
    message_type: str
    new_builder: Callable[[str, int], ColumnBuilder]
    tables: Callable[[Any], list[TableOut]]
    count_items: Callable[[Any], int] | None
    max_attributes: Callable[[Any], int] | None
    before_marker: Callable[[PartitionBatch], None] = _no_hook


def _span_tables(b: SpanColumns) -> list[TableOut]:
    return [TableOut("spans", b.to_table(), "start_unix_nano", "service")]


def _metric_tables(b: MetricColumns) -> list[TableOut]:
    series, points = b.tables()
    # series first: points are the table whose segment marks the offsets as done
    return [
        TableOut("metric_series", series, "first_seen_unix_nano", "service"),
        TableOut("metrics", points, "time_unix_nano", None),
    ]


def _count_points(req: Any) -> int:
    n = 0
    for rm in req.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                if kind:
                    n += len(getattr(m, kind).data_points)
    return n


def _max_point_attrs(req: Any) -> int:
    best = 0
    for rm in req.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                if kind:
                    for dp in getattr(m, kind).data_points:
                        best = max(best, len(dp.attributes))
    return best


def _count_logs(req: Any) -> int:
    return sum(len(sl.log_records) for rl in req.resource_logs for sl in rl.scope_logs)


def _max_log_attrs(req: Any) -> int:
    return max(
        (
            len(r.attributes)
            for rl in req.resource_logs
            for sl in rl.scope_logs
            for r in sl.log_records
        ),
        default=0,
    )


def _log_tables(b: LogColumns) -> list[TableOut]:
    return [
        TableOut("log_templates", b.templates_table(), "first_seen_unix_nano", None),
        TableOut("logs", b.logs_table(), "time_unix_nano", "service"),
    ]


# stage name -> registry topic it consumes
STAGES: dict[str, str] = {
    "ingest-spans": "otlp_spans",
    "ingest-metrics": "otlp_metrics",
    "ingest-logs": "otlp_logs",
}


def codec_for(
    logical_topic: str,
    store: SegmentStore,
    limits: Limits | None = None,
    miner: MinerConfig | None = None,
) -> SignalCodec:
    """The codec of a registry OTLP topic, bound to the store it keeps its state in; ``miner``
    configures the log template miners (``templates`` settings).

    Spans, the hot path, enforce the attribute limit inside the column builder (the extra
    attributes of a span are dropped and counted) instead of a second pass over the request.
    """
    limits = limits or Limits()
    if logical_topic == "otlp_spans":
        return SignalCodec(
            "ingest-spans",
            "spans",
            topics.OTLP_TRACES,
            lambda _t, _p: SpanColumns(max_attributes=limits.max_attributes_per_item),
            _span_tables,
            None,
            None,
        )
    if logical_topic == "otlp_metrics":
        return SignalCodec(
            "ingest-metrics",
            "metrics",
            topics.OTLP_METRICS,
            lambda _t, _p: MetricColumns(),
            _metric_tables,
            _count_points,
            _max_point_attrs,
        )
    if logical_topic == "otlp_logs":
        miners: dict[str, MinerStates] = {}

        def states(topic: str) -> MinerStates:
            if topic not in miners:
                miners[topic] = MinerStates(store.state_dir(), topic, miner)
            return miners[topic]

        def save_miner(part: PartitionBatch) -> None:
            states(part.topic).save(part.partition, part.last_offset)

        return SignalCodec(
            "ingest-logs",
            "logs",
            topics.OTLP_LOGS,
            lambda t, p: LogColumns(states(t).miner(p), p),
            _log_tables,
            _count_logs,
            _max_log_attrs,
            before_marker=save_miner,
        )
    raise KeyError(f"no ingest codec for topic {logical_topic!r}")


@dataclass
class DecodedBatch:
    partitions: list[PartitionBatch] = field(default_factory=list)
    deadletters: list[DeadLetter] = field(default_factory=list)
    consumed: int = 0
    """How many of the records (in ``record_order``) the batch took; the rest are for the next."""
    items: int = 0
    """Items (spans, points, log lines) its builders hold."""


def record_order(record: KafkaRecord) -> tuple[str, int, int]:
    """The order ``SegmentIngestor.decode`` takes records in: by partition, then offset."""
    return (record.topic, record.partition, record.offset)


class SegmentIngestor:
    """Turns batches of records of one OTLP topic into sealed segments, exactly once.

    ``epoch`` is the broker epoch the records' offsets belong to (``pipeline.kafka.broker_epoch``):
    a record is a re-delivery only if its offset is stored in the same epoch."""

    def __init__(
        self,
        store: SegmentStore,
        codec: SignalCodec,
        limits: Limits | None = None,
        epoch: str = "",
    ) -> None:
        self.store = store
        self.codec = codec
        self.limits = limits or Limits()
        self.counters: Counter[str] = Counter()
        self.epoch = epoch
        self._durable: dict[tuple[str, int], int] = {}
        self._loaded_topics: set[str] = set()
        self._marker_signal = codec.signal

    def set_epoch(self, epoch: str) -> bool:
        """Take the records that follow as offsets of broker ``epoch``; True if it changed."""
        if epoch == self.epoch:
            return False
        self.epoch = epoch
        self._durable.clear()
        self._loaded_topics.clear()
        self.counters["broker_epochs_seen"] += 1
        return True

    def durable_offset(self, topic: str, partition: int) -> int:
        if topic not in self._loaded_topics:
            stored = self.store.durable_offsets(self._marker_signal, topic, self.epoch)
            for p, off in stored.items():
                self._durable[(topic, p)] = max(self._durable.get((topic, p), -1), off)
            self._loaded_topics.add(topic)
        return self._durable.get((topic, partition), -1)

    def redeliveries(self, records: Iterable[KafkaRecord]) -> int:
        """How many of ``records`` the current epoch has already stored (``decode`` skips them)."""
        return sum(r.offset <= self.durable_offset(r.topic, r.partition) for r in records)

    def decode(self, records: Iterable[KafkaRecord], max_items: int | None = None) -> DecodedBatch:
        """Decode ``records`` in ``record_order``. With ``max_items``, stop after the record
        that brings the builders to that many items (``consumed`` says how many records were
        taken): what the builders hold in memory, every series' row among it, is bounded by
        the cap however many items a batch of records carries; the caller seals this batch and
        decodes the rest into the next, as if Kafka had delivered smaller batches."""
        batch = DecodedBatch()
        by_partition: dict[tuple[str, int], PartitionBatch] = {}
        for record in sorted(records, key=record_order):
            if max_items is not None and batch.items >= max_items:
                self.counters["item_cap_splits"] += 1
                break
            batch.consumed += 1
            self.counters["bytes_in"] += len(record.value or b"")
            if record.offset <= self.durable_offset(record.topic, record.partition):
                self.counters["redelivered_skipped"] += 1
                continue
            key = (record.topic, record.partition)
            part = by_partition.get(key)
            if part is None:
                part = PartitionBatch(
                    record.topic,
                    record.partition,
                    record.offset,
                    record.offset,
                    self.codec.new_builder(record.topic, record.partition),
                )
                by_partition[key] = part
                batch.partitions.append(part)
            part.last_offset = record.offset
            before = len(part.builder)
            refusal = self._add(part.builder, record)
            batch.items += len(part.builder) - before
            if refusal is not None:
                reason, detail = refusal
                self.counters[f"refused_{reason}"] += 1
                batch.deadletters.append(DeadLetter(self.codec.stage, reason, detail, record))
            else:
                self.counters["records_stored"] += 1
        return batch

    def _add(self, builder: ColumnBuilder, record: KafkaRecord) -> tuple[str, str] | None:
        value = record.value
        if not value:
            return "empty_record", "record value is empty"
        if len(value) > self.limits.max_record_bytes:
            return (
                "record_too_large",
                f"{len(value)} bytes > max_record_bytes={self.limits.max_record_bytes}",
            )
        msg: Message
        try:
            if value.lstrip()[:1] == b"{":
                msg = otlp.from_json(orjson.loads(value), self.codec.message_type)
            else:
                msg = otlp.from_proto(value, self.codec.message_type)
        except orjson.JSONDecodeError as e:
            return "otlp_json_decode_error", f"not JSON: {e}"
        except otlp.OtlpDecodeError as e:
            return "otlp_decode_error", str(e)
        items = self.codec.count_items(msg) if self.codec.count_items else 0
        if items > self.limits.max_items_per_record:
            return (
                "too_many_items",
                f"{items} items > max_items_per_record={self.limits.max_items_per_record}",
            )
        attrs = self.codec.max_attributes(msg) if self.codec.max_attributes else 0
        if attrs > self.limits.max_attributes_per_item:
            return (
                "too_many_attributes",
                f"an item has {attrs} attributes > max_attributes_per_item={self.limits.max_attributes_per_item}",
            )
        before = len(builder)
        dropped_before = getattr(builder, "attributes_dropped", 0)
        try:
            added = builder.add_request(msg)
        except (ValueError, TypeError, OverflowError) as e:  # pragma: no cover - defensive
            return "invalid_content", f"{type(e).__name__}: {e}"
        self.counters["items_stored"] += added
        dropped = getattr(builder, "attributes_dropped", 0) - dropped_before
        if dropped:
            self.counters["attributes_dropped_over_limit"] += dropped
        assert len(builder) >= before
        return None

    def seal(self, batch: DecodedBatch, now: dt.datetime) -> list[Manifest]:
        written: list[Manifest] = []
        for part in batch.partitions:
            source = SourceRange(
                part.topic, part.partition, part.first_offset, part.last_offset, self.epoch
            )
            outs = self.codec.tables(part.builder)
            for i, out in enumerate(outs):
                if i == len(outs) - 1:
                    self.codec.before_marker(part)
                manifest = self.store.write(
                    out.signal,
                    out.table,
                    source,
                    time_column=out.time_column,
                    service_column=out.service_column,
                    now=now,
                )
                if manifest is not None:
                    written.append(manifest)
                    self.counters[f"segments_{out.signal}"] += 1
            key = (part.topic, part.partition)
            self._durable[key] = max(self._durable.get(key, -1), part.last_offset)
        return written
