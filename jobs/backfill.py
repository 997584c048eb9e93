"""Backfill: re-index historical telemetry from a replay bundle through the same code as live.

The records of each OTLP topic in the bundle go through ``SegmentIngestor`` (the ingest workers'
core) into sealed segments, with the bundle's topic file as the source (``backfill.<name>.<topic>``,
partition 0, offsets = record positions), so running a backfill twice stores nothing twice. The
changes go to the world model, which then applies the new segments in event-time order exactly as
the world-model stage does, and is checkpointed where that stage keeps it. Event time everywhere:
a backfill and a live replay of the same bundle give the same baselines.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from jobs.simulator.bundle import read_manifest, read_topic
from jobs.simulator.simulation import Record
from pipeline.ingest.core import KafkaRecord, Limits, SegmentIngestor, codec_for
from pipeline.logs.templates import MinerConfig
from pipeline.segments.store import SegmentStore
from pipeline.settings import Settings, section_config
from pipeline.worldmodel.worker import (
    catch_up,
    change_from_record,
    load_model,
    model_config,
    save_model,
)

OTLP_TOPICS = ("otlp_spans", "otlp_metrics", "otlp_logs")


@dataclass
class BackfillReport:
    records: dict[str, int] = field(default_factory=dict)
    segments: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    changes: int = 0
    segments_applied: int = 0


def _chunks(records: Iterable[Record], size: int) -> Iterator[list[tuple[int, Record]]]:
    chunk: list[tuple[int, Record]] = []
    for offset, record in enumerate(records):
        chunk.append((offset, record))
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def backfill_bundle(
    bundle: Path,
    settings: Settings,
    *,
    now: dt.datetime,
    progress: Callable[[str, int], None] = lambda _topic, _n: None,
) -> BackfillReport:
    """Store a bundle's telemetry and bring the world model up to date with it."""
    manifest = read_manifest(bundle)
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in bundle.resolve().name)
    store = SegmentStore(settings.data_dir / "segments")
    limits = Limits(max_record_bytes=settings.max_record_bytes)
    report = BackfillReport()
    present = set(manifest["topics"])
    for logical in OTLP_TOPICS:
        if logical not in present:
            continue
        source = f"backfill.{name}.{logical}"
        ingestor = SegmentIngestor(
            store, codec_for(logical, store, limits, section_config(settings, MinerConfig)), limits
        )
        count = 0
        for chunk in _chunks(read_topic(bundle, logical), settings.segment_max_records):
            records = [
                KafkaRecord(source, 0, offset, r.value, r.timestamp_ms) for offset, r in chunk
            ]
            while records:  # as live ingest: at most segment_max_items items per segment
                batch = ingestor.decode(records, settings.segment_max_items)
                records = records[batch.consumed :]
                report.segments += len(ingestor.seal(batch, now))
            count += len(chunk)
            progress(logical, count)
        report.records[logical] = count
        for key, value in ingestor.counters.items():
            if key.startswith("refused_"):
                report.refused[key[len("refused_") :]] = (
                    report.refused.get(key[len("refused_") :], 0) + value
                )
    model = load_model(store, model_config(settings))
    if "changes" in present:
        for record in read_topic(bundle, "changes"):
            model.add_change(change_from_record(orjson.loads(record.value)))
            report.changes += 1
    report.segments_applied = catch_up(store, model)
    save_model(store, model)
    return report
