"""Ingest workers: a faust agent per OTLP topic, a thin shell around ``SegmentIngestor``.

The agent takes events in batches (``take_events``: up to ``segment_max_records`` records or
``segment_max_seconds`` of waiting) and decodes and seals them ``segment_max_items`` items (spans,
points, log lines) at a time, so its memory is bounded whatever a batch carries. faust
acknowledges the events of a batch only after the body of the loop has run, and commits only
acknowledged offsets; the body makes dead letters durable, seals the segments (fsync + rename)
and only then returns. A crash before that re-delivers the batch; records already sealed are
recognised by their offsets and skipped. Offsets are compared within the broker's epoch (read at
the first batch, and again whenever a batch holds offsets already stored: a broker that lost its
records numbers new ones from 0 again, and those are new data, not re-deliveries).

Scale-out is Kafka's: run as many workers per stage as the topic has partitions, in one group.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

import faust
import orjson

from pipeline import kafka, selfmetrics
from pipeline.ingest.core import (
    STAGES,
    DecodedBatch,
    KafkaRecord,
    Limits,
    SegmentIngestor,
    codec_for,
    record_order,
)
from pipeline.logs.templates import MinerConfig
from pipeline.segments.store import SegmentStore
from pipeline.settings import Settings, section_config
from pipeline.workers import faust_app, stats_path, write_stats

log = logging.getLogger("worldline.ingest")


def build_ingest_app(settings: Settings, stage: str, bootstrap: str) -> faust.App:
    if stage not in STAGES:
        raise KeyError(f"unknown ingest stage {stage!r}; known: {', '.join(sorted(STAGES))}")
    logical = STAGES[stage]
    app = faust_app(settings, f"worldline-{stage}", bootstrap)
    store = SegmentStore(settings.data_dir / "segments")
    limits = Limits(max_record_bytes=settings.max_record_bytes)
    codec = codec_for(logical, store, limits, section_config(settings, MinerConfig))
    removed = store.recover()
    if removed:
        log.warning("removed %d leftover files of an interrupted seal", removed)
    ingestor = SegmentIngestor(store, codec, limits)
    source = app.topic(settings.topic(logical), value_serializer="raw", key_serializer="raw")
    deadletter = app.topic(
        settings.topic("deadletter"), value_serializer="raw", key_serializer="raw"
    )
    sealed = app.topic(
        settings.topic("segments.sealed"), value_serializer="raw", key_serializer="raw"
    )
    stats_file = stats_path(settings, stage)
    feed = selfmetrics.CounterFeed()
    epoch_known = False

    async def read_epoch() -> bool:
        """Take the broker's current epoch; False when the broker cannot tell now."""
        try:
            epoch = await kafka.broker_epoch(bootstrap)
        except Exception as e:  # the broker is briefly unreachable: keep the epoch known
            log.warning("cannot read the broker's cluster id: %s", e)
            return False
        if ingestor.set_epoch(epoch) and epoch_known:
            log.warning("the broker's storage is new (epoch %s): its offsets start again", epoch)
        return True

    async def seal(batch: DecodedBatch) -> None:
        """Make the batch's dead letters durable, then seal its segments and announce them."""
        now = dt.datetime.now(dt.UTC)  # wall time only stamps the manifests' sealed_at
        for letter in batch.deadletters:
            await deadletter.send(key=logical.encode(), value=orjson.dumps(letter.to_json(now)))
        await app.producer.flush()
        manifests = await asyncio.to_thread(ingestor.seal, batch, now)
        if manifests and (settings.retention_max_age_s or settings.retention_max_bytes):
            newest = max(m.end_unix_nano for m in manifests)
            removed = await asyncio.to_thread(
                store.apply_retention,
                now_unix_nano=newest,
                max_age_s=settings.retention_max_age_s,
                max_total_bytes=settings.retention_max_bytes,
            )
            ingestor.counters["segments_removed_by_retention"] += len(removed)
        for manifest in manifests:
            await sealed.send(key=manifest.signal.encode(), value=orjson.dumps(manifest.to_json()))
        await app.producer.flush()

    @app.agent(source, name=stage)
    async def ingest(stream: Any) -> None:
        nonlocal epoch_known
        async for events in stream.take_events(
            settings.segment_max_records, within=settings.segment_max_seconds
        ):
            records = [
                KafkaRecord(
                    e.message.topic,
                    e.message.partition,
                    e.message.offset,
                    e.message.value,
                    int(e.message.timestamp * 1000),
                )
                for e in events
            ]
            # the records' offsets mean nothing until the epoch they belong to is known
            wait = 0.5
            while not epoch_known:
                epoch_known = await read_epoch()
                if not epoch_known:
                    await asyncio.sleep(wait)
                    wait = min(wait * 2, 10.0)
            if await asyncio.to_thread(ingestor.redeliveries, records):
                await read_epoch()  # re-deliveries, or a broker that numbers records anew
            records.sort(key=record_order)
            while records:
                # at most segment_max_items items decoded at a time: memory stays bounded
                # however many items (and new series) the records carry
                batch = await asyncio.to_thread(
                    ingestor.decode, records, settings.segment_max_items
                )
                records = records[batch.consumed :]
                await seal(batch)
            write_stats(stats_file, dict(ingestor.counters))
            selfmetrics.feed_ingest(feed, stage, ingestor.counters)

    return app
