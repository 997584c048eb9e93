"""The world-model worker: a faust app that keeps ``WorldModel`` current from sealed segments.

The segment store is the source of truth, the ``segments.sealed`` topic only a notification:
at start the worker restores its last checkpoint and applies every stored segment it has not
counted yet (in offset order per partition); then each notification applies the new segment,
or triggers the same catch-up if it reveals a gap. Nothing depends on consumer-group commits
or on the broker's changelog recovery. Changes come from the ``changes`` topic (validated;
invalid ones go to ``deadletter``). Checkpoints are written atomically every
``checkpoint_every_s`` of processing, sooner once every stored segment is applied
(``checkpoint_due``), and at shutdown.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import logging
import os
import time
from pathlib import Path
from typing import Any

import orjson
from aiokafka import TopicPartition

import schemas
from pipeline import kafka, selfmetrics, topics
from pipeline.ingest.core import deadletter_for_message
from pipeline.segments.store import Manifest, SegmentStore
from pipeline.settings import Settings, section_config
from pipeline.workers import faust_app, stats_path, write_stats
from pipeline.worldmodel.baseline import BaselineConfig
from pipeline.worldmodel.graph import GraphConfig
from pipeline.worldmodel.model import WorldModel, WorldModelConfig, marker

log = logging.getLogger("worldline.worldmodel")

SPARSE_SPACING = 2.0  # median intervals between a series' values from which to warn, once
STAGE = "world-model"
CHECKPOINT_NAME = "worldmodel.ckpt"
HISTORY_DIR = "history"
MODEL_SIGNALS = ("spans", "logs", "metric_series", "metrics")


def checkpoint_path(store: SegmentStore) -> Path:
    return store.state_dir() / CHECKPOINT_NAME


def model_config(settings: Settings) -> WorldModelConfig:
    """The world model's config from the settings (``world_model``, ``graph``, ``baseline``)."""
    partitions = tuple(
        (settings.topic(t.name), t.partitions)
        for t in topics.REGISTRY
        if t.encoding == "otlp_proto"
    )
    return section_config(
        settings,
        WorldModelConfig,
        interval_s=settings.interval_s,
        topic_partitions=partitions,
        graph=section_config(settings, GraphConfig),
        baseline=section_config(settings, BaselineConfig, interval_s=settings.interval_s),
    )


def load_model(store: SegmentStore, config: WorldModelConfig) -> WorldModel:
    """The checkpointed model with ``config``'s caps (what it learned under is kept: a setting
    that differs from it is logged and takes effect on a fresh data directory), or a new one."""
    path = checkpoint_path(store)
    if path.exists():
        model = WorldModel.restore(path.read_bytes())
        kept = model.adopt(config)
        if kept:
            log.warning(
                "the checkpoint was learned under other values of %s; they are kept (a"
                " fresh data directory takes the settings)",
                ", ".join(kept),
            )
        return model
    return WorldModel(config)


def save_model(store: SegmentStore, model: WorldModel) -> None:
    path = checkpoint_path(store)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(model.checkpoint())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def history_dir(store: SegmentStore) -> Path:
    return store.state_dir() / HISTORY_DIR


def archive_checkpoint(store: SegmentStore, model: WorldModel, every_s: float, keep: int) -> bool:
    """Keep the checkpoint just written as a point of history when the model has closed at
    least ``every_s`` of event time since the newest one kept; at most ``keep`` are kept (the
    oldest go). A search at a time the model has moved past starts from one of them and
    applies the stored segments up to that time (``model_at``)."""
    if keep <= 0 or not model.closed_through:
        return False
    folder = history_dir(store)
    folder.mkdir(parents=True, exist_ok=True)
    kept = sorted(folder.glob("*.ckpt"))
    newest = int(kept[-1].stem) if kept else 0
    if model.closed_through - newest < every_s * 1e9:
        return False
    target = folder / f"{model.closed_through:020d}.ckpt"
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    os.link(checkpoint_path(store), tmp)  # the file is replaced, never rewritten: a link is a copy
    os.replace(tmp, target)
    for old in sorted(folder.glob("*.ckpt"))[:-keep]:
        old.unlink(missing_ok=True)
    return True


def model_at(store: SegmentStore, t_ns: int) -> WorldModel | None:
    """The world model as it stood when the data up to ``t_ns`` had been applied: the newest
    kept checkpoint that had not closed past ``t_ns``, then every stored segment it had not
    counted that begins by ``t_ns`` (in ``merge_order``). None without such a checkpoint."""
    kept = [p for p in sorted(history_dir(store).glob("*.ckpt")) if int(p.stem) <= t_ns]
    if not kept:
        return None
    model = WorldModel.restore(kept[-1].read_bytes())
    catch_up(store, model, until_ns=t_ns)
    return model


SOURCE_SIGNALS = {"otlp_spans": "spans", "otlp_logs": "logs", "otlp_metrics": "metrics"}
"""The telemetry topics -> the segment signal whose applied offsets say a record is in."""


def source_partitions(settings: Settings) -> dict[TopicPartition, str]:
    """Every partition of the telemetry topics -> its marker signal (``SOURCE_SIGNALS``)."""
    return {
        TopicPartition(settings.topic(logical), p): signal
        for logical, signal in SOURCE_SIGNALS.items()
        for p in range(topics.spec(logical).partitions)
    }


async def received_by_broker(
    bootstrap: str, partitions: dict[TopicPartition, str]
) -> dict[str, tuple[str, int]]:
    """What the broker holds on ``partitions``: "topic/partition" -> (``marker`` of the
    partition's signal in the broker's epoch, last offset), partitions without records left
    out (``WorldModel.sources`` and ``coverage``)."""
    epoch = await kafka.broker_epoch(bootstrap)
    marks = await kafka.high_water_marks(bootstrap, list(partitions))
    return {
        f"{tp.topic}/{tp.partition}": (marker(partitions[tp], epoch), hw - 1)
        for tp, hw in marks.items()
        if hw > 0
    }


def merge_order(manifests: list[Manifest]) -> list[Manifest]:
    """Segments in event-time order, without ever reordering the segments of one partition.

    A k-way merge: one queue per (signal, topic, partition, broker epoch) in offset order; the
    next segment is the queue head that starts earliest. Event time then advances evenly across
    partitions (small buffers), and the order depends only on the segments, not on when they
    arrived.
    """
    queues: dict[tuple[str, str, int, str], list[Manifest]] = {}
    for m in manifests:
        key = (m.signal, m.source.topic, m.source.partition, m.source.epoch)
        queues.setdefault(key, []).append(m)
    heap: list[tuple[int, int, tuple[str, str, int, str], int]] = []
    for key, queue in queues.items():
        queue.sort(key=lambda m: m.source.last_offset)
        rank = _SIGNAL_RANK.get(key[0], len(_SIGNAL_RANK))
        heapq.heappush(heap, (queue[0].start_unix_nano, rank, key, 0))
    out: list[Manifest] = []
    while heap:
        _, rank, key, index = heapq.heappop(heap)
        queue = queues[key]
        out.append(queue[index])
        if index + 1 < len(queue):
            heapq.heappush(heap, (queue[index + 1].start_unix_nano, rank, key, index + 1))
    return out


_SIGNAL_RANK = {"metric_series": 0, "spans": 1, "logs": 2, "metrics": 3}


def catch_up(
    store: SegmentStore, model: WorldModel, limit: int | None = None, until_ns: int | None = None
) -> int:
    """Apply stored segments the model has not counted yet (at most ``limit``; only those that
    begin by ``until_ns`` when given); return how many."""
    store.refresh()  # other processes sealed segments since the last call
    live = {m.source.epoch for m in store.manifests()}
    live.update(signal.split("@", 1)[1] for signal, _ in model.sources.values() if "@" in signal)
    model.forget_epochs(live)
    pending = [
        m
        for m in store.manifests()
        if m.signal in MODEL_SIGNALS
        and not model.already_applied(m)
        and (until_ns is None or m.start_unix_nano <= until_ns)
    ]
    applied = 0
    for m in merge_order(pending)[:limit]:
        applied += model.apply(m, store.read(m))
        model.advance()
    return applied


CAUGHT_UP_OVERHEAD = 0.1
"""At most this share of the worker's time goes to checkpoints written because it caught up."""


def checkpoint_due(
    since_s: float, every_s: float, caught_up: bool = False, last_took_s: float = 0.0
) -> bool:
    """Whether to write the checkpoint ``since_s`` after the last one. Every ``every_s`` while
    segments keep coming; sooner once the model has applied every stored segment and has
    something new (``caught_up``): the causal stage answers an alert from the checkpoint that
    holds its data, so a checkpoint waiting out ``every_s`` then is that much more delay before
    the answer. Then at least a second apart, and far enough apart that writing them takes at
    most ``CAUGHT_UP_OVERHEAD`` of the time (``last_took_s``: how long the last one took)."""
    if since_s >= every_s:
        return True
    return caught_up and since_s >= max(1.0, last_took_s / CAUGHT_UP_OVERHEAD)


def change_from_record(doc: Any) -> dict[str, Any]:
    """A validated ``changes`` record, with its time as unix nanoseconds for the model."""
    schemas.validate("changes.schema.json", doc)
    when = dt.datetime.fromisoformat(str(doc["time"]).replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    out = dict(doc)
    out["time_unix_nano"] = int(when.timestamp() * 1e9)
    return out


def build_world_model_app(settings: Settings, bootstrap: str) -> Any:
    app = faust_app(settings, f"worldline-{STAGE}", bootstrap)
    store = SegmentStore(settings.data_dir / "segments")
    model = load_model(store, model_config(settings))
    lock = asyncio.Lock()
    # ``applied``: segments applied since the last checkpoint; ``took``: how long that took to
    # write; ``behind``: 1 while the last catch-up left stored segments to apply
    state: dict[str, float] = {
        "last_checkpoint": time.monotonic(),
        "applied": 0.0,
        "took": 0.0,
        "behind": 0.0,
    }
    stats_file = stats_path(settings, STAGE)
    sealed = app.topic(
        settings.topic("segments.sealed"), value_serializer="raw", key_serializer="raw"
    )
    changes = app.topic(settings.topic("changes"), value_serializer="raw", key_serializer="raw")
    deadletter = app.topic(
        settings.topic("deadletter"), value_serializer="raw", key_serializer="raw"
    )
    counters: dict[str, int] = {"segments_applied": 0, "changes_applied": 0, "changes_refused": 0}
    feed = selfmetrics.CounterFeed()

    def record_metrics() -> None:
        selfmetrics.feed_world_model_counters(feed, STAGE, counters)
        selfmetrics.set_model_gauges(model)

    graph_topic = app.topic(
        settings.topic("graph.deltas"), value_serializer="raw", key_serializer="raw"
    )

    async def publish_graph_deltas() -> None:
        deltas = model.take_graph_deltas()
        for delta in deltas:
            element = delta["element"]
            key = element["node"] if element["type"] == "node" else element["source"]
            await graph_topic.send(
                key=f"{key['kind']}:{key['name']}".encode(), value=orjson.dumps(delta)
            )
        if deltas:
            counters["graph_deltas_published"] = counters.get("graph_deltas_published", 0) + len(
                deltas
            )
            await app.producer.flush()

    def applied(done: int, caught_up: bool) -> None:
        counters["segments_applied"] += done
        state["applied"] += done
        state["behind"] = 0.0 if caught_up else 1.0

    async def checkpoint_if_due(force: bool = False) -> None:
        await publish_graph_deltas()
        since = time.monotonic() - state["last_checkpoint"]
        caught_up = not state["behind"] and state["applied"] > 0
        if force or checkpoint_due(since, settings.checkpoint_every_s, caught_up, state["took"]):
            started = time.monotonic()
            await asyncio.to_thread(save_model, store, model)
            await asyncio.to_thread(
                archive_checkpoint,
                store,
                model,
                settings.history_every_s,
                settings.history_keep,
            )
            state["last_checkpoint"] = time.monotonic()
            state["took"] = state["last_checkpoint"] - started
            state["applied"] = 0.0
            sampling = await asyncio.to_thread(model.sampling)
            spacing = sampling.get("series_spacing_intervals", 1.0)
            if spacing >= SPARSE_SPACING and not state.get("warned_sparse"):
                state["warned_sparse"] = 1.0
                log.warning(
                    "most series have one value every %g intervals of %g s: set interval_s to"
                    " the data's resolution (%g s), or baselines and the causal search see"
                    " mostly gaps",
                    spacing,
                    settings.interval_s,
                    sampling.get("series_spacing_s", 0.0),
                )
            write_stats(
                stats_file,
                {
                    **counters,
                    **model.dropped,
                    **sampling,
                    "watermark_unix_nano": model.watermark,
                },
            )

    source_tps = source_partitions(settings)
    moved: dict[str, tuple[int, float]] = {}  # partition -> (last offset, when it last grew)

    async def read_sources() -> dict[str, tuple[str, int]] | None:
        """What the broker holds, so a topic whose segments arrive late is waited for; the
        partitions that received nothing for ``idle_partition_s`` become the model's ``idle``."""
        try:
            sources = await received_by_broker(bootstrap, source_tps)
        except Exception as e:  # the broker is briefly unreachable: keep the last view
            log.warning("cannot read high-water marks: %s", e)
            return None
        now = time.monotonic()
        for key, (_, last) in sources.items():
            if moved.get(key, (-1, 0.0))[0] != last:
                moved[key] = (last, now)
        model.idle = frozenset(
            key for key, (_, since) in moved.items() if now - since >= settings.idle_partition_s
        )
        return sources

    @app.timer(interval=2.0)
    async def refresh_sources() -> None:
        sources = await read_sources()
        if sources is None:
            return
        async with lock:
            model.sources = sources
            if sources:
                done = await asyncio.to_thread(catch_up, store, model, settings.catch_up_chunk)
                applied(done, done < settings.catch_up_chunk)
                await checkpoint_if_due()

    @app.task
    async def start_from_store() -> None:
        sources = await read_sources()
        if sources:
            model.sources = sources
        while True:
            async with lock:
                done = await asyncio.to_thread(catch_up, store, model, settings.catch_up_chunk)
                applied(done, done < settings.catch_up_chunk)
                await checkpoint_if_due()
            if done < settings.catch_up_chunk:
                break
            log.info(
                "catching up from the store: %d segments applied", counters["segments_applied"]
            )

    @app.agent(sealed, name="apply-segments")
    async def apply_segments(stream: Any) -> None:
        async for events in stream.take_events(200, within=1.0):
            async with lock:
                gap = False
                for event in events:
                    try:
                        manifest = Manifest.from_json(orjson.loads(event.value))
                    except (orjson.JSONDecodeError, schemas.SchemaViolation, KeyError) as e:
                        log.warning("ignoring an invalid manifest notification: %s", e)
                        continue
                    if manifest.signal not in MODEL_SIGNALS or model.already_applied(manifest):
                        continue
                    gap = True  # the store is the truth: apply in order from it
                if gap:
                    applied(await asyncio.to_thread(catch_up, store, model), True)
                await checkpoint_if_due()

    @app.agent(changes, name="apply-changes")
    async def apply_changes(stream: Any) -> None:
        async for event in stream.events():
            now = dt.datetime.now(dt.UTC)
            try:
                change = change_from_record(orjson.loads(event.value))
            except (orjson.JSONDecodeError, schemas.SchemaViolation, ValueError) as e:
                counters["changes_refused"] += 1
                letter = deadletter_for_message(
                    STAGE, "invalid_change", str(e), event.message, event.value, now
                )
                await deadletter.send(key=b"changes", value=orjson.dumps(letter))
                continue
            async with lock:
                model.add_change(change)
                counters["changes_applied"] += 1
                await checkpoint_if_due()

    @app.timer(interval=1.0)
    async def periodic_checkpoint() -> None:
        async with lock:
            await checkpoint_if_due()
            record_metrics()

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def final_checkpoint(sender: Any, **kwargs: Any) -> None:
        async with lock:
            await checkpoint_if_due(force=True)

    return app
