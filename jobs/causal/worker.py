"""The causal-search stage: alerts in, ``causes.ranked`` out.

A faust agent on ``alerts``: each Alertmanager payload is validated (invalid ones go to
``deadletter``), its alerts are deduplicated and grouped into incidents, and every incident that
changed is searched over the world model and published as one record per update. The world model
is the world-model stage's last checkpoint, reloaded when it changes; the incident book is saved
beside it after every batch, so a restart neither forgets nor reopens incidents.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson

import schemas
from jobs.causal.alerts import Alert, Incident, IncidentBook, Symptom, SymptomMapper, parse_webhook
from jobs.causal.followup import (
    FOLLOW_INTERVALS,
    answer_time,
    follow_step,
    latest_alert_s,
    needed_time,
    record_settled,
    supersedes,
)
from jobs.causal.record import build_record
from jobs.causal.search import CausalSearch, SearchConfig
from pipeline.ingest.core import deadletter_for_message
from pipeline.segments.store import SegmentStore
from pipeline.settings import Settings
from pipeline.workers import faust_app, stats_path, write_stats
from pipeline.worldmodel.model import WorldModel
from pipeline.worldmodel.worker import checkpoint_path

log = logging.getLogger("worldline.causal")

STAGE = "causal-search"
REFRESH_GIVE_UP_S = 600.0
BOOK_NAME = "incidents.json"


class ModelCache:
    """The world model from the latest checkpoint, reloaded only when the file changed."""

    def __init__(self, store: SegmentStore) -> None:
        self.path = checkpoint_path(store)
        self.mtime_ns = -1
        self.model: WorldModel | None = None

    def get(self) -> WorldModel | None:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return self.model
        if mtime != self.mtime_ns:
            self.model = WorldModel.restore(self.path.read_bytes())
            self.mtime_ns = mtime
        return self.model


def connected(model: WorldModel, t_s: float, hops: int = 3) -> Any:
    graph = model.graph.as_of(int(t_s * 1e9)).to_undirected(as_view=True)

    def check(a: str, b: str) -> bool:
        if a not in graph or b not in graph:
            return False
        import networkx as nx

        try:
            return bool(nx.shortest_path_length(graph, a, b) <= hops)
        except nx.NetworkXNoPath:
            return False

    return check


def follows_up(record: dict[str, Any], incident: Incident, follow: int) -> bool:
    """Whether an incident is searched again when the alerted series' next value has arrived:
    its answer is not settled (``followup.settled``), it still fires, and fewer than
    FOLLOW_INTERVALS follow-ups were made."""
    return not record_settled(record) and incident.open and follow < FOLLOW_INTERVALS


def search_incident(
    model: WorldModel,
    incident: Incident,
    config: SearchConfig,
    now_s: float,
    t_s: float | None = None,
) -> dict[str, Any]:
    """Search one incident and build its record (event time ``t_s``: by default the latest
    alert's time)."""
    from jobs.causal.search import SearchResult

    symptoms = [(s.entity, s.signal) for s in incident.symptoms.values() if s.entity]
    alert_s = latest_alert_s(incident)
    if t_s is None:
        t_s = alert_s
    if not symptoms:
        hows = "; ".join(sorted({s.how for s in incident.symptoms.values()}))
        result = SearchResult(
            [], [], True, f"the alerts name no entity worldline knows: {hows}", [], None, {}
        )
    else:
        result = CausalSearch(model, config).run(symptoms, t_s, alert_s)
    return build_record(incident, result, now_s)


def save_book(path: Path, book: IncidentBook) -> None:
    doc = {
        "incidents": [
            {
                "incident_id": i.incident_id,
                "opened_at_s": i.opened_at_s,
                "updates": i.updates,
                "last_alert_s": i.last_alert_s,
                "pending": list(i.pending) if i.pending is not None else None,
                "named": i.named,
                "alerts": [asdict(a) for a in i.alerts.values()],
                "symptoms": {fp: asdict(s) for fp, s in i.symptoms.items()},
            }
            for i in book.incidents.values()
        ]
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(orjson.dumps(doc))
    os.replace(tmp, path)


def load_book(path: Path) -> IncidentBook:
    book = IncidentBook()
    if not path.exists():
        return book
    for doc in orjson.loads(path.read_bytes())["incidents"]:
        incident = Incident(
            doc["incident_id"],
            doc["opened_at_s"],
            updates=doc["updates"],
            last_alert_s=doc["last_alert_s"],
        )
        incident.named = bool(doc.get("named", False))
        pending = doc.get("pending")
        if pending is not None:
            incident.pending = (float(pending[0]), int(pending[1]))
        for a in doc["alerts"]:
            alert = Alert(**a)
            incident.alerts[alert.fingerprint] = alert
            book.by_fingerprint[alert.fingerprint] = incident.incident_id
        incident.symptoms = {fp: Symptom(**s) for fp, s in doc["symptoms"].items()}
        book.incidents[incident.incident_id] = incident
    return book


def build_causal_app(settings: Settings, bootstrap: str) -> Any:
    app = faust_app(settings, f"worldline-{STAGE}", bootstrap)
    store = SegmentStore(settings.data_dir / "segments")
    models = ModelCache(store)
    book_path = store.state_dir() / BOOK_NAME
    book = load_book(book_path)
    config = SearchConfig()
    alerts = app.topic(settings.topic("alerts"), value_serializer="raw", key_serializer="raw")
    ranked = app.topic(
        settings.topic("causes.ranked"), value_serializer="raw", key_serializer="raw"
    )
    deadletter = app.topic(
        settings.topic("deadletter"), value_serializer="raw", key_serializer="raw"
    )
    counters: dict[str, int] = {
        "alerts": 0,
        "records": 0,
        "refused": 0,
        "abstained": 0,
        "refreshed": 0,
        "refresh_given_up": 0,
        "followed_up": 0,
        "follow_ups_kept_earlier": 0,
    }
    # incidents answered before the world model had learned the alert's interval, or followed
    # up (FOLLOW_INTERVALS): searched again (a new update of the same incident) once it has, or
    # given up after REFRESH_GIVE_UP_S. incident -> wall deadline; what is due is the
    # incident's ``pending`` (saved with the book, so a restart resumes it, freshly timed)
    awaiting: dict[str, float] = {
        i.incident_id: time.monotonic() + REFRESH_GIVE_UP_S
        for i in book.incidents.values()
        if i.pending is not None
    }
    lock = asyncio.Lock()

    def learned_through(model: WorldModel | None) -> float:
        return 0.0 if model is None else model.closed_through / 1e9

    async def publish(
        incident: Incident, model: WorldModel | None, now: dt.datetime, follow: int = 0
    ) -> dict[str, Any]:
        interval = model.config.interval_s if model is not None else settings.interval_s
        symptoms = [(s.entity, s.signal) for s in incident.symptoms.values() if s.entity]
        step = follow_step(model, symptoms) if model is not None else interval
        t_s = answer_time(incident, step, follow)
        if model is None:
            from jobs.causal.search import SearchResult

            result = SearchResult(
                [],
                [],
                True,
                "the world model has no checkpoint yet: it is still learning",
                [],
                None,
                {},
            )
            record = build_record(incident, result, now.timestamp())
        else:
            record = await asyncio.to_thread(
                search_incident, model, incident, config, now.timestamp(), t_s
            )
        named = bool(record["causes"])
        if not supersedes(named, incident.named, follow):
            counters["follow_ups_kept_earlier"] += 1
            incident.pending = None
            awaiting.pop(incident.incident_id, None)
            return record
        incident.named = named
        counters["records"] += 1
        counters["abstained"] += int(record["abstained"])
        await ranked.send(key=incident.incident_id.encode(), value=orjson.dumps(record))
        needed = needed_time(t_s, interval)
        deadline = time.monotonic() + REFRESH_GIVE_UP_S
        if learned_through(model) < needed:
            incident.pending = (needed, follow)
            awaiting[incident.incident_id] = deadline
        elif follows_up(record, incident, follow):
            later = needed_time(answer_time(incident, step, follow + 1), interval)
            incident.pending = (later, follow + 1)
            awaiting[incident.incident_id] = deadline
            counters["followed_up"] += 1
        else:
            incident.pending = None
            awaiting.pop(incident.incident_id, None)
        return record

    @app.timer(interval=2.0)
    async def refresh_early_answers() -> None:
        if not awaiting:
            return
        async with lock:
            model = await asyncio.to_thread(models.get)
            now = dt.datetime.now(dt.UTC)
            for incident_id, deadline in sorted(awaiting.items()):
                incident = book.incidents.get(incident_id)
                if incident is None or incident.pending is None:
                    awaiting.pop(incident_id, None)
                    continue
                if time.monotonic() > deadline:
                    awaiting.pop(incident_id, None)
                    incident.pending = None
                    counters["refresh_given_up"] += 1
                    continue
                needed, follow = incident.pending
                if learned_through(model) >= needed:
                    incident.updates += 1
                    await publish(incident, model, now, follow)
                    counters["refreshed"] += 1
            await app.producer.flush()
            await asyncio.to_thread(save_book, book_path, book)

    latencies_ms: list[float] = []
    stats_file = stats_path(settings, STAGE)

    @app.agent(alerts, name="search-incidents")
    async def search_incidents(stream: Any) -> None:
        async for events in stream.take_events(100, within=0.2):
            changed: dict[str, Incident] = {}
            arrived: dict[str, float] = {}
            now = dt.datetime.now(dt.UTC)
            model = await asyncio.to_thread(models.get)
            mapper = SymptomMapper(_known_entities(model), _signals_of(model))
            for event in events:
                try:
                    parsed = parse_webhook(orjson.loads(event.value))
                except (orjson.JSONDecodeError, schemas.SchemaViolation) as e:
                    counters["refused"] += 1
                    letter = deadletter_for_message(
                        STAGE, "invalid_alert", str(e), event.message, event.value, now
                    )
                    await deadletter.send(key=b"alerts", value=orjson.dumps(letter))
                    continue
                for alert in parsed:
                    counters["alerts"] += 1
                    symptom = mapper.map(alert)
                    check = (
                        connected(model, alert.starts_at_s)
                        if model is not None
                        else (lambda a, b: False)
                    )
                    incident, updated = book.add(alert, symptom, check)
                    if updated:
                        changed[incident.incident_id] = incident
                        arrived[incident.incident_id] = event.message.timestamp
            async with lock:
                for incident in changed.values():
                    await publish(incident, model, now)
                    latencies_ms.append((time.time() - arrived[incident.incident_id]) * 1000)
                    del latencies_ms[:-1000]
            await app.producer.flush()
            await asyncio.to_thread(save_book, book_path, book)
            p95 = (
                sorted(latencies_ms)[int(0.95 * (len(latencies_ms) - 1))] if latencies_ms else None
            )
            write_stats(
                stats_file,
                {**counters, "alert_to_record_p95_ms": p95, "incidents_evicted": book.evicted},
            )

    return app


def _signals_of(model: WorldModel | None) -> Callable[[str], list[str]]:
    """The series each entity has (read when an alert's signal is resolved)."""
    if model is None:
        return lambda _entity: []
    index: dict[str, list[str]] = {}
    for entity, signal in model.baselines.keys():
        index.setdefault(entity, []).append(signal)
    return lambda entity: index.get(entity, [])


def _known_entities(model: WorldModel | None) -> set[str]:
    if model is None:
        return set()
    keys = model.baselines.keys()
    known = {entity for entity, _ in keys}
    graph = model.graph.as_of(model.watermark or 2**62)
    known.update(str(n) for n in graph.nodes)
    return known
