"""Ingest workers: a faust agent per OTLP topic, a thin shell around ``SegmentIngestor``.

The agent takes events in batches (``take_events``: up to ``segment_max_records`` records or
``segment_max_seconds`` of waiting). faust acknowledges the events of a batch only after the body
of the loop has run, and commits only acknowledged offsets; the body makes dead letters durable,
seals the segments (fsync + rename) and only then returns. A crash before that re-delivers the
batch; records already sealed are recognised by their offsets and skipped.

Scale-out is Kafka's: run as many workers per stage as the topic has partitions, in one group.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
from pathlib import Path
from typing import Any

import faust
import orjson

from pipeline.ingest.core import STAGES, KafkaRecord, Limits, SegmentIngestor, codec_for
from pipeline.segments.store import SegmentStore
from pipeline.settings import Settings

log = logging.getLogger("worldline.ingest")


def faust_broker_url(bootstrap: str) -> str:
    return ";".join(f"kafka://{hp.strip()}" for hp in bootstrap.split(","))


def faust_app(settings: Settings, app_id: str, bootstrap: str) -> faust.App:
    """A faust app configured the way every worldline worker needs it on any broker."""
    datadir = settings.data_dir / "faust" / app_id
    datadir.mkdir(parents=True, exist_ok=True)
    return faust.App(
        app_id,
        broker=faust_broker_url(bootstrap),
        store="memory://",
        web_enabled=False,
        topic_disable_leader=True,
        topic_allow_declare=False,
        broker_session_timeout=settings.session_timeout_ms / 1000.0,
        broker_heartbeat_interval=settings.heartbeat_interval_ms / 1000.0,
        consumer_auto_offset_reset="earliest",
        consumer_max_fetch_size=max(settings.max_record_bytes * 2, 8 * 1024 * 1024),
        producer_max_request_size=settings.max_record_bytes + 1024 * 1024,
        datadir=str(datadir),
        stream_wait_empty=False,
        logging_config=None,
    )


def stats_path(settings: Settings, stage: str) -> Path:
    return settings.data_dir / "stats" / f"{stage}.json"


def write_stats(path: Path, counters: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(orjson.dumps(counters, option=orjson.OPT_SORT_KEYS))
    os.replace(tmp, path)


def build_ingest_app(settings: Settings, stage: str, bootstrap: str) -> faust.App:
    if stage not in STAGES:
        raise KeyError(f"unknown ingest stage {stage!r}; known: {', '.join(sorted(STAGES))}")
    logical = STAGES[stage]
    app = faust_app(settings, f"worldline-{stage}", bootstrap)
    store = SegmentStore(settings.data_dir / "segments")
    limits = Limits(max_record_bytes=settings.max_record_bytes)
    codec = codec_for(logical, store, limits)
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

    @app.agent(source, name=stage)
    async def ingest(stream: Any) -> None:
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
            batch = await asyncio.to_thread(ingestor.decode, records)
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
                await sealed.send(
                    key=manifest.signal.encode(), value=orjson.dumps(manifest.to_json())
                )
            await app.producer.flush()
            write_stats(stats_file, dict(ingestor.counters))

    return app


def run_worker(settings: Settings, stage: str, bootstrap: str) -> None:
    """Run one stage until SIGINT/SIGTERM (blocking)."""
    if stage == "world-model":
        from pipeline.worldmodel.worker import build_world_model_app

        app = build_world_model_app(settings, bootstrap)
    elif stage == "causal-search":
        from jobs.causal.worker import build_causal_app

        app = build_causal_app(settings, bootstrap)
    else:
        app = build_ingest_app(settings, stage, bootstrap)
    worker = faust.Worker(
        app, loglevel=settings.log_level.lower(), quiet=True, redirect_stdouts=False
    )
    worker.execute_from_commandline()
