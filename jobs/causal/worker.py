"""The causal-search stage: alerts in, ``causes.ranked`` out.

A faust agent on ``alerts``: each Alertmanager payload is validated (invalid ones go to
``deadletter``), its alerts are deduplicated and grouped into incidents, and every incident that
changed is answered once the world model holds the data of its alert: the stage notes what the
broker had received on the telemetry topics when the alert arrived and waits (at most
``answer_wait_s``) until the world-model stage's checkpoint has applied it up to the alert's
``startsAt``. The search then runs on a copy of that model whose still-open intervals, up to
the alert's, are closed as they stand (scored provisionally); the record says how far the model
covers. When the real model has closed the alert's interval, the incident is searched again (a
new update). The incident book is saved beside the checkpoint after every batch, so a restart
neither forgets nor reopens incidents, nor an answer still waiting for its data. With it are
kept the offsets of the alerts it holds (per broker epoch, ``pipeline.kafka.broker_epoch``):
alerts the broker delivers again after a restart (read, but not yet committed by the consumer
group) are skipped, so a firing notification read again after its resolution does not reopen
the incident and answer it once more.

Answers are published through an outbox (``jobs.causal.outbox``): a batch's answers are saved
with the book and the alerts' offsets first, then sent, and a restarted stage sends only the
saved answers ``causes.ranked`` does not hold yet. So a kill at any point publishes each update
of an incident once (within one life of the broker's storage) and loses none that the book
counts as answered. Kafka transactions cannot do this here: the book is a file, outside any
Kafka transaction, and the embedded broker supports none.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson
from aiokafka import TopicPartition

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
from jobs.causal.outbox import (
    DELIVERED_NAME,
    Outbox,
    check_kill_at,
    kill_point,
    load_delivered,
    published_keys,
    save_delivered,
    unpublished,
)
from jobs.causal.record import build_record, iso
from jobs.causal.search import CausalSearch, SearchConfig
from pipeline import kafka, selfmetrics
from pipeline.ingest.core import deadletter_for_message
from pipeline.segments.store import SegmentStore
from pipeline.settings import Settings, section_config
from pipeline.workers import faust_app, stats_path, write_stats
from pipeline.worldmodel.baseline import ONSET_RING_LENGTH
from pipeline.worldmodel.model import WorldModel
from pipeline.worldmodel.worker import (
    checkpoint_path,
    model_at,
    received_by_broker,
    source_partitions,
)

log = logging.getLogger("worldline.causal")
T = TypeVar("T")

STAGE = "causal-search"
REFRESH_GIVE_UP_S = 600.0
BOOK_NAME = "incidents.json"


class ModelCache:
    """The world model from the latest checkpoint, reloaded only when the file changed.

    ``memory_intervals``: how many intervals past a search's time the model may have closed
    and still hold the scores of the search's window (the baselines keep the scores of their
    last ``ONSET_RING_LENGTH`` intervals); a model further on is rebuilt as of the search's time
    from the stored history (``model_at``)."""

    def __init__(self, store: SegmentStore, memory_intervals: int = 0) -> None:
        self.store = store
        self.path = checkpoint_path(store)
        self.memory_intervals = memory_intervals
        self.mtime_ns = -1
        self.data: bytes | None = None
        self.model: WorldModel | None = None
        self.rebuilt = 0

    def get(self) -> WorldModel | None:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return self.model
        if mtime != self.mtime_ns:
            data = self.path.read_bytes()
            self.model = WorldModel.restore(data)
            self.data = data
            self.mtime_ns = mtime
        return self.model

    def view(self, t_s: float) -> WorldModel | None:
        """The model as of ``t_s`` with every interval up to the one holding it closed: the
        model itself when it has closed them (searches only read it), else a copy with the open
        ones closed as they stand (``WorldModel.provisional``), rebuilt from history when the
        model has moved past ``t_s``."""
        if self.data is None or self.model is None:
            return None
        t_ns = int(t_s * 1e9)
        interval_ns = int(self.model.config.interval_s * 1e9)
        closes = (t_ns // interval_ns + 1) * interval_ns
        ends = closes + self.memory_intervals * interval_ns
        if closes <= self.model.closed_through <= ends:
            return self.model  # closed through t's interval, its window still in memory
        past = model_at(self.store, t_ns) if self.model.closed_through > ends else None
        if past is not None:
            self.rebuilt += 1
        copy = past if past is not None else WorldModel.restore(self.data)
        copy.provisional(t_ns)
        return copy


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
    coverage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Search one incident and build its record (event time ``t_s``: by default the latest
    alert's time). The alerts' entities and signals are resolved again on this model, so an
    alert that named nothing known at intake is answered once its entity has sent data."""
    from jobs.causal.search import SearchResult

    resolve_symptoms(model, incident)
    symptoms = [(s.entity, s.signal) for s in incident.symptoms.values() if s.entity]
    alert_s = latest_alert_s(incident)
    if t_s is None:
        t_s = alert_s
    if not symptoms and not model.baselines.keys():
        hows = "; ".join(sorted({s.how for s in incident.symptoms.values()}))
        result = SearchResult(
            [], [], True, f"the alerts name no entity worldline knows: {hows}", [], None, {}
        )
    else:
        # an alert on something worldline does not observe (a synthetic probe, an SLO on a
        # load balancer) still says a symptom exists at its time: every entity is a candidate
        # and what deviated before it is ranked
        searched = symptoms or [(f"alert:{a.name}", None) for a in incident.alerts.values()]
        result = CausalSearch(model, config).run(sorted(set(searched)), t_s, alert_s)
        if not symptoms:  # the alert's own node is no entity of the record
            result.ruled_out = [r for r in result.ruled_out if not r.entity.startswith("alert:")]
            for cause in result.causes:
                cause.path = [p for p in cause.path if not p.startswith("alert:")]
    return build_record(incident, result, now_s, coverage)


def resolve_symptoms(model: WorldModel, incident: Incident) -> None:
    """Map every alert of the incident to an entity and signal of ``model``: an alert whose
    symptom is not one of the model's series (its entity or signal unknown when it was filed)
    is mapped again."""
    mapper: SymptomMapper | None = None
    for fingerprint, alert in incident.alerts.items():
        known = incident.symptoms.get(fingerprint)
        if (
            known is not None
            and known.entity
            and known.signal
            and model.baselines.get(known.entity, known.signal) is not None
        ):
            continue
        if mapper is None:
            mapper = SymptomMapper(_known_entities(model), _signals_of(model))
        incident.symptoms[fingerprint] = mapper.map(alert)


def covers_alert(model: WorldModel, received: dict[str, tuple[str, int]], alert_s: float) -> bool:
    """Whether ``model`` holds what the broker had received (``received``) up to ``alert_s``."""
    covers, complete = model.coverage(received)
    return complete or covers >= alert_s * 1e9


def coverage_of(
    model: WorldModel | None,
    received: dict[str, tuple[str, int]],
    alert_s: float,
    waited_s: float,
) -> dict[str, Any]:
    """The record's ``coverage``: how far ``model`` holds what the broker had received."""
    covers = model.coverage(received)[0] if model is not None else 0
    reaches = model is not None and covers_alert(model, received, alert_s)
    closed = model.closed_through / 1e9 if model is not None and model.closed_through else None
    return {
        "alert_at": iso(alert_s),
        "covers_until": iso(covers / 1e9) if covers else None,
        "complete": bool(reaches),
        "closed_through": iso(closed) if closed is not None else None,
        "waited_s": round(max(0.0, waited_s), 3),
    }


def save_book(
    path: Path,
    book: IncidentBook,
    consumed: dict[str, int] | None = None,
    outbox: Outbox | None = None,
) -> None:
    """Save the incident book with ``consumed`` ("epoch/topic/partition" -> the last offset of
    the ``alerts`` records it holds) and the records about to be published (``outbox``):
    written, fsynced and renamed, so what is sent after it returns is on disk first."""
    doc = {
        "consumed": consumed or {},
        "outbox": (outbox or Outbox()).to_doc(),
        "incidents": [
            {
                "incident_id": i.incident_id,
                "opened_at_s": i.opened_at_s,
                "updates": i.updates,
                "last_alert_s": i.last_alert_s,
                "pending": list(i.pending) if i.pending is not None else None,
                "named": i.named,
                "due": i.due,
                "notified_s": i.notified_s,
                "alerts": [asdict(a) for a in i.alerts.values()],
                "symptoms": {fp: asdict(s) for fp, s in i.symptoms.items()},
            }
            for i in book.incidents.values()
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        f.write(orjson.dumps(doc))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself
    finally:
        os.close(fd)


def load_outbox(path: Path) -> Outbox:
    """The records saved with the book and perhaps not published (``save_book``)."""
    if not path.exists():
        return Outbox()
    return Outbox.from_doc(orjson.loads(path.read_bytes()).get("outbox"))


def load_consumed(path: Path) -> dict[str, int]:
    """The offsets saved with the book (``save_book``); empty without a book."""
    if not path.exists():
        return {}
    return {str(k): int(v) for k, v in orjson.loads(path.read_bytes()).get("consumed", {}).items()}


def load_book(path: Path, book: IncidentBook | None = None) -> IncidentBook:
    book = book if book is not None else IncidentBook()
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
        incident.due = bool(doc.get("due", False))
        incident.notified_s = {k: float(v) for k, v in doc.get("notified_s", {}).items()}
        pending = doc.get("pending")
        if pending is not None:
            incident.pending = (float(pending[0]), int(pending[1]))
        for a in doc["alerts"]:
            alert = Alert(**a)
            incident.alerts[alert.fingerprint] = alert
            book.by_fingerprint[alert.fingerprint] = incident.incident_id
        incident.symptoms = {fp: Symptom(**s) for fp, s in doc["symptoms"].items()}
        book.incidents[incident.incident_id] = incident
        book.clock_s = max(
            [book.clock_s, *incident.notified_s.values()]
            + [a.starts_at_s for a in incident.alerts.values()]
        )
    return book


async def received_now(
    bootstrap: str, partitions: dict[TopicPartition, str]
) -> dict[str, tuple[str, int]]:
    """``received_by_broker``, empty when the broker cannot be read (the answer then waits for
    nothing it cannot name)."""
    try:
        return await received_by_broker(bootstrap, partitions)
    except Exception as e:  # the broker is briefly unreachable: answer from what is there
        log.warning("cannot read the telemetry topics' high-water marks: %s", e)
        return {}


@dataclass
class Waiting:
    """An incident whose answer waits for the world model to hold its alert's data."""

    received: dict[str, tuple[str, int]]  # what the broker held when the alert arrived
    arrived: float  # monotonic time the alert was read
    deadline: float


def build_causal_app(settings: Settings, bootstrap: str) -> Any:
    app = faust_app(settings, f"worldline-{STAGE}", bootstrap)
    store = SegmentStore(settings.data_dir / "segments")
    config = section_config(settings, SearchConfig)
    models = ModelCache(store, max(0, ONSET_RING_LENGTH - config.window_intervals))
    book_path = store.state_dir() / BOOK_NAME
    book = load_book(
        book_path,
        IncidentBook(
            group_window_s=settings.alert_group_window_s,
            resolve_timeout_s=settings.alert_resolve_timeout_s,
            max_incidents=settings.max_incidents,
        ),
    )
    consumed = load_consumed(book_path)
    epoch = {"now": ""}  # the broker's epoch, read at each batch of alerts
    partitions = source_partitions(settings)
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
        "answered_covered": 0,
        "answered_uncovered": 0,
        "refreshed": 0,
        "refresh_given_up": 0,
        "followed_up": 0,
        "follow_ups_kept_earlier": 0,
        "payloads": 0,
        "bytes_in": 0,
        "redelivered_skipped": 0,
        "republished": 0,
        "republish_skipped": 0,
    }
    feed = selfmetrics.CounterFeed()
    # first answers waiting for the data of their alert (``Incident.due``, saved with the book:
    # after a restart they wait again, with what the broker holds then)
    waiting: dict[str, Waiting] = {}
    # incidents answered before the world model had closed the alert's interval, or followed
    # up (FOLLOW_INTERVALS): searched again (a new update of the same incident) once it has, or
    # given up after REFRESH_GIVE_UP_S. incident -> wall deadline; what is due is the
    # incident's ``pending`` (saved with the book, so a restart resumes it, freshly timed)
    awaiting: dict[str, float] = {
        i.incident_id: time.monotonic() + REFRESH_GIVE_UP_S
        for i in book.incidents.values()
        if i.pending is not None
    }
    lock = asyncio.Lock()
    check_kill_at()
    # answers built since the last delivery: saved with the book, then sent (``deliver``)
    outbox: list[dict[str, Any]] = []
    # per partition of causes.ranked, in the broker epoch named: an offset at or before which
    # the next record this stage sends lies (the high-water marks read first, then the end of
    # its acknowledged records); ``Outbox.since`` of the records it saves
    sent_through: dict[str, Any] = {"epoch": None, "offsets": {}}
    recovered = {"done": False}
    delivered_path = book_path.with_name(DELIVERED_NAME)
    # above every outbox saved or noted delivered, so a new one is never taken for delivered
    next_seq = {"seq": max(load_outbox(book_path).seq, load_delivered(delivered_path)) + 1}
    sending: list[asyncio.Future[None]] = []  # the send of the last saved outbox
    latencies_ms: list[float] = []
    stats_file = stats_path(settings, STAGE)

    def learned_through(model: WorldModel | None) -> float:
        return 0.0 if model is None else model.closed_through / 1e9

    async def publish(
        incident: Incident,
        model: WorldModel | None,
        now: dt.datetime,
        follow: int = 0,
        received: dict[str, tuple[str, int]] | None = None,
        waited_s: float = 0.0,
    ) -> dict[str, Any]:
        interval = model.config.interval_s if model is not None else settings.interval_s
        symptoms = [(s.entity, s.signal) for s in incident.symptoms.values() if s.entity]
        step = follow_step(model, symptoms) if model is not None else interval
        t_s = answer_time(incident, step, follow)
        if received is None:
            received = await received_now(bootstrap, partitions)
        coverage = coverage_of(model, received, latest_alert_s(incident), waited_s)
        view = await asyncio.to_thread(models.view, t_s) if model is not None else None
        if view is None:
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
            record = build_record(incident, result, now.timestamp(), coverage)
        else:
            began = time.perf_counter()
            record = await asyncio.to_thread(
                search_incident, view, incident, config, now.timestamp(), t_s, coverage
            )
            selfmetrics.SEARCH_SECONDS.labels(
                "abstained" if record["abstained"] else "named"
            ).observe(time.perf_counter() - began)
            if not coverage["complete"] and record["abstained"]:
                record["abstain_reason"] = (
                    f"the world model covers up to {coverage['covers_until']}, not yet the"
                    f" alert at {coverage['alert_at']}: {record['abstain_reason']}"
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
        outbox.append(record)  # published by ``deliver``, after the book is saved
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

    async def answer_waiting() -> None:
        """Answer every waiting incident whose alert's data the model now holds, or whose
        wait ran out."""
        if not waiting:
            return
        model = await asyncio.to_thread(models.get)
        now = dt.datetime.now(dt.UTC)
        for incident_id, wait in sorted(waiting.items()):
            incident = book.incidents.get(incident_id)
            if incident is None or not incident.due:
                waiting.pop(incident_id, None)
                continue
            if model is None:  # no checkpoint yet: wait only if there is data to wait for
                reached = not wait.received
            else:
                reached = covers_alert(model, wait.received, latest_alert_s(incident))
            if not reached and time.monotonic() < wait.deadline:
                continue
            waiting.pop(incident_id, None)
            incident.due = False
            waited = time.monotonic() - wait.arrived
            await publish(incident, model, now, 0, wait.received, waited)
            counters["answered_covered" if reached else "answered_uncovered"] += 1
            latencies_ms.append(waited * 1000)
            selfmetrics.ANSWER_SECONDS.observe(waited)
            del latencies_ms[:-1000]

    def wait_for_data(
        incident: Incident, arrived: float, received: dict[str, tuple[str, int]]
    ) -> None:
        incident.due = True
        incident.pending = None
        awaiting.pop(incident.incident_id, None)
        waiting[incident.incident_id] = Waiting(received, arrived, arrived + settings.answer_wait_s)

    def write_counters() -> None:
        p95 = sorted(latencies_ms)[int(0.95 * (len(latencies_ms) - 1))] if latencies_ms else None
        write_stats(
            stats_file,
            {
                **counters,
                "waiting": len(waiting),
                "alert_to_record_p95_ms": p95,
                "incidents_evicted": book.evicted,
                "alerts_timed_out": book.timed_out,
                "searches_rebuilt_from_history": models.rebuilt,
            },
        )
        selfmetrics.feed_causal(feed, STAGE, counters)
        selfmetrics.INCIDENTS.set(len(book.incidents))
        selfmetrics.INCIDENTS_CAP.set(book.max_incidents)

    async def end_offsets() -> dict[int, int]:
        if sent_through["epoch"] != epoch["now"] or not sent_through["offsets"]:
            tps = await kafka.partitions_of(bootstrap, ranked.get_topic_name())
            hws = await kafka.high_water_marks(bootstrap, tps)
            offsets = {tp.partition: hw for tp, hw in hws.items()}
            sent_through.update(epoch=epoch["now"], offsets=offsets)
        return dict(sent_through["offsets"])

    async def deliver() -> None:
        """Save the book with the answers built since the last delivery, then publish them
        (``jobs.causal.outbox``): what is sent is on disk first."""
        if sending and not sending[0].done():  # the book must not drop them from its outbox
            await asyncio.shield(sending[0])
        if not recovered["done"]:  # a send failed: settle what the book saved first
            await recover()
            return
        await app.producer.flush()  # dead letters, acknowledged before their offsets are saved
        if not outbox:
            await asyncio.to_thread(save_book, book_path, book, consumed)
            return
        since = await retrying("read the high-water marks of causes.ranked", end_offsets)
        records = list(outbox)
        seq = next_seq["seq"]
        next_seq["seq"] += 1
        await asyncio.to_thread(
            save_book, book_path, book, consumed, Outbox(records, epoch["now"], since, seq)
        )
        del outbox[: len(records)]  # from here on they are the saved outbox's
        kill_point("saved")
        # sent to the end even when this task is cancelled (faust restarts its agent on a
        # rebalance): a send cut short would be sent again, or not at all
        sending[:] = [asyncio.ensure_future(send(records, seq))]
        await asyncio.shield(sending[0])

    async def send(records: list[dict[str, Any]], seq: int) -> None:
        try:
            futures = [
                await ranked.send(key=str(r["incident_id"]).encode(), value=orjson.dumps(r))
                for r in records
            ]
            await app.producer.flush()
            offsets = sent_through["offsets"]
            for future in futures:
                sent = await future
                offsets[sent.partition] = max(offsets.get(sent.partition, 0), sent.offset + 1)
        except Exception:
            # some may be in causes.ranked: the saved outbox is settled against it again
            log.exception("publishing %d answer(s) failed; checking causes.ranked", len(records))
            recovered["done"] = False
            return
        kill_point("sent")
        await asyncio.to_thread(save_delivered, delivered_path, seq)

    async def recover() -> None:
        """Once, before anything else is published: publish the answers the book saved that
        causes.ranked does not hold (``jobs.causal.outbox``)."""
        if recovered["done"]:
            return
        saved = await asyncio.to_thread(load_outbox, book_path)
        current = await retrying(
            "read the broker's cluster id", lambda: kafka.broker_epoch(bootstrap)
        )
        set_epoch(current)
        delivered = await asyncio.to_thread(load_delivered, delivered_path)
        present: set[tuple[str, int]] = set()
        if (
            saved.records
            and saved.seq > delivered
            and saved.since is not None
            and saved.epoch == current
        ):
            since = saved.since

            async def read_tail() -> list[Any]:
                topic = ranked.get_topic_name()
                start = {
                    tp: since.get(tp.partition, 0)
                    for tp in await kafka.partitions_of(bootstrap, topic)
                }
                return await kafka.read_range(bootstrap, start)

            tail = await retrying("read causes.ranked after the book's last save", read_tail)
            present = published_keys(r.value for r in tail)
        missing = unpublished(saved, current, present, delivered)
        counters["republished"] += len(missing)
        skipped = len(saved.records) - len(missing) if saved.seq > delivered else 0
        counters["republish_skipped"] += skipped
        if saved.seq > delivered:
            log.info(
                "%d answer(s) saved with the book: %d already in causes.ranked, %d sent now",
                len(saved.records),
                skipped,
                len(missing),
            )
        outbox[:0] = missing
        recovered["done"] = True
        await deliver()
        write_counters()

    @app.task
    async def recover_at_start() -> None:
        async with lock:
            await recover()

    @app.timer(interval=1.0)
    async def deliver_left() -> None:
        """Answers built by a batch cut short (a rebalance cancels the agent), or a send that
        failed."""
        if recovered["done"] and not outbox:
            return
        async with lock:
            await recover()
            await deliver()

    @app.task
    async def resume_waiting() -> None:
        due = [i for i in book.incidents.values() if i.due]
        if due:
            received = await received_now(bootstrap, partitions)
            for incident in due:
                wait_for_data(incident, time.monotonic(), received)

    @app.timer(interval=1.0)
    async def answer_when_covered() -> None:
        if not waiting:
            return
        async with lock:
            await recover()
            await answer_waiting()
            await deliver()
            write_counters()

    @app.timer(interval=2.0)
    async def refresh_early_answers() -> None:
        if not awaiting:
            return
        async with lock:
            await recover()
            model = await asyncio.to_thread(models.get)
            now = dt.datetime.now(dt.UTC)
            for incident_id, deadline in sorted(awaiting.items()):
                incident = book.incidents.get(incident_id)
                if incident is None or incident.pending is None or incident.due:
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
            await deliver()

    async def read_epoch() -> str:
        """The broker's current epoch; the last one known when the broker cannot tell now."""
        try:
            now = await kafka.broker_epoch(bootstrap)
        except Exception as e:  # the broker is briefly unreachable
            log.warning("cannot read the broker's cluster id: %s", e)
            return epoch["now"]
        set_epoch(now)
        return now

    def set_epoch(now: str) -> None:
        """The offsets of other epochs are dropped: their records are never delivered again."""
        if now != epoch["now"]:
            epoch["now"] = now
            for key in [k for k in consumed if k.split("/", 1)[0] != now]:
                del consumed[key]

    @app.agent(alerts, name="search-incidents")
    async def search_incidents(stream: Any) -> None:
        async for events in stream.take_events(100, within=0.2):
            changed: dict[str, Incident] = {}
            arrived = time.monotonic()
            now = dt.datetime.now(dt.UTC)
            model = await asyncio.to_thread(models.get)
            mapper = SymptomMapper(_known_entities(model), _signals_of(model))
            async with lock:
                await recover()
                current = await read_epoch()
                for event in events:
                    message = event.message
                    source = f"{current}/{message.topic}/{message.partition}"
                    if message.offset <= consumed.get(source, -1):
                        counters["redelivered_skipped"] += 1
                        continue
                    consumed[source] = message.offset
                    counters["payloads"] += 1
                    counters["bytes_in"] += len(event.value or b"")
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
                if changed:  # what the broker holds now is what these alerts wait for
                    received = await received_now(bootstrap, partitions)
                    for incident in changed.values():
                        wait_for_data(incident, arrived, received)
                await answer_waiting()
                await deliver()
                write_counters()

    return app


async def retrying(what: str, call: Callable[[], Awaitable[T]]) -> T:
    """``call()`` until it succeeds, a second apart: without the broker nothing can be
    published, and nothing may be published before what the book saved is settled."""
    while True:
        try:
            return await call()
        except Exception as e:  # the broker is unreachable or not ready yet
            log.warning("cannot %s: %s; trying again in 1 s", what, e)
            await asyncio.sleep(1.0)


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
