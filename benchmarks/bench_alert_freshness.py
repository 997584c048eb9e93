"""Alert freshness: from an alert's delivery to the first ``causes.ranked`` record that uses
the data up to the alert's startsAt, through the embedded broker under simulator load.

What runs: the embedded broker on a free 127.0.0.1 port with the stages an answer goes through
(ingest-spans, ingest-metrics, ingest-logs, world-model, causal-search; the HTTP receiver is
left out because everything is produced to Kafka directly), in a temporary data directory. The
simulator's fault-free telemetry (OTLP spans, metrics, logs and its changes) is generated first,
then fed to the broker continuously, paced in event time at ``--speed`` times real time: a
normal period (``--warmup-s``), then ``--duration-s`` during which ``--alerts`` Alertmanager
webhook (version 4) payloads go on the ``alerts`` topic at even wall-time spacing while the
telemetry keeps flowing, then more telemetry until every alert has a complete answer or its
time is up.

The fresh alerts: each alert's startsAt is the event time of the newest telemetry record the
broker has acknowledged when the alert is sent (minus ``--alert-lag-s``), so the answer has to
wait for everything just received to be sealed, applied and checkpointed by the world model.
The causal-search stage notes the telemetry topics' high-water marks on an alert and waits (at
most its ``answer_wait_s`` setting) for the model to hold them up to startsAt; every record
says so in ``coverage.complete``. A record with complete=false is an answer from stale data:
it is counted in the share of stale first answers, never as a fast answer.

Printed per alert and in summary (nearest-rank percentiles, wall seconds from the broker's
acknowledgement of the alert to the record's arrival on ``causes.ranked``):

- fresh, first record: whatever its coverage; with the share of first records that are complete;
- fresh, first complete record: the figure the goal is about, p95 <= interval_s + 5 s; an alert
  without a complete record within its observation time counts as not answered (inf);
- floor, the in-run reference: alerts whose startsAt lies halfway through the data fed so far
  (old data the model applied long ago), fired in the same phase under the same load: the
  search and publishing alone.

Per alert, "stage waited s" is the record's ``coverage.waited_s``: the causal-search stage's own
count from reading the alert to answering. What a fresh alert waits for: the ingest stages
seal a segment (after ``segment_max_records`` records or ``segment_max_seconds``), the world
model applies it and writes its checkpoint (every ``checkpoint_every_s``), and the stage sees
the new checkpoint (it looks every second); those settings are printed with the results.

The ratios printed are p95 / goal (<= 1 meets it) and fresh p95 / floor p95 (the part of the
latency that is waiting for the data). Each alert is its own incident: the benchmark sets
``alert_group_window_s = 0`` so that alerts on connected services are not grouped (a grouped
alert's record would carry another alert's startsAt); every other setting is the default.
Nothing is asserted on time. A default run takes 3-5 minutes on 2 cores.

    .venv/bin/python benchmarks/bench_alert_freshness.py [--alerts 12] [--interval-s 60]
        [--seed 1] [--duration-s 120] [--warmup-s 60] [--speed 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import hashlib
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from jobs.simulator.changes import iso
from jobs.simulator.simulation import Record, RunConfig, Simulation
from pipeline import topics
from pipeline.platform import Platform
from pipeline.settings import Settings
from pipeline.workers import stats_path

# Friday 2026-11-20 13:30 UTC: near the simulator's daily traffic peak (14:00) on a weekday.
EVENT_START_S = dt.datetime(2026, 11, 20, 13, 30, tzinfo=dt.UTC).timestamp()
STAGES = ["ingest-spans", "ingest-metrics", "ingest-logs", "world-model", "causal-search"]
GOAL_MARGIN_S = 5.0  # the goal: p95 <= interval_s + GOAL_MARGIN_S
OBSERVE_MARGIN_S = 30.0  # how long past answer_wait_s an alert is watched for a complete record


@dataclass
class Sent:
    """One benchmark alert: what was sent, when the broker had it, and what came back."""

    kind: str  # "fresh" (startsAt = the newest data) or "floor" (startsAt in old, applied data)
    index: int
    fingerprint: str
    service: str
    starts_s: float  # the alert's startsAt (event time)
    edge_s: float  # event time of the newest telemetry the broker held when it was sent
    delivered: float  # monotonic time the broker acknowledged the alert
    first_at: float | None = None  # monotonic arrival of the first record naming it
    first_complete: bool | None = None  # that record's coverage.complete
    first_waited_s: float | None = None  # that record's coverage.waited_s (the stage's own clock)
    complete_at: float | None = None  # monotonic arrival of the first record with complete=true

    def first_s(self) -> float:
        return math.inf if self.first_at is None else self.first_at - self.delivered

    def complete_s(self) -> float:
        return math.inf if self.complete_at is None else self.complete_at - self.delivered


@dataclass
class Feed:
    """The telemetry feeder's progress, shared with the alerting task."""

    sent: int = 0
    bytes: int = 0
    edge_ms: int = 0  # event time of the last record handed to the producer
    max_behind_s: float = 0.0  # how far the feeder fell behind its event-time schedule
    exhausted: bool = False  # the generated telemetry ran out before the run ended


def generate(args: argparse.Namespace, event_s: float) -> tuple[list[Record], Simulation]:
    """The simulator's fault-free telemetry for ``event_s`` seconds of event time, generated
    before the platform starts so that generating costs the pipeline no CPU. The simulator's
    own SLO alerts are dropped: the benchmark sends its own."""
    run = RunConfig(
        start_s=EVENT_START_S,
        scenario="normal",
        seed=args.seed,
        services=args.services,
        warmup_s=event_s,
        duration_s=0.0,
        peak_rate=args.peak_rate,
        slice_s=5.0,
    )
    sim = Simulation(run)
    return [r for r in sim.records() if r.topic != "alerts"], sim


def alert_payload(sim: Simulation, kind: str, index: int, starts_s: float) -> dict[str, Any]:
    """An SLO-burn notification as the simulator's Alertmanager writes it, on a user-facing
    service (taken in turn), with a label of its own so each alert has its own fingerprint
    (Alertmanager's fingerprint is a hash of the labels)."""
    services = sim.alerts.user_facing
    service = services[index % len(services)]
    slo = "latency" if index % 2 == 0 else "availability"
    payload: dict[str, Any] = sim.alerts.payload(service, slo, starts_s, None, 20.0)
    alert = payload["alerts"][0]
    labels = {**alert["labels"], "bench_alert": f"{kind}-{index}"}
    alert["labels"] = labels
    alert["fingerprint"] = hashlib.sha256(
        ",".join(f"{k}={v}" for k, v in sorted(labels.items())).encode()
    ).hexdigest()[:16]
    return payload


async def feed(
    bootstrap: str,
    records: list[Record],
    topic: Callable[[str], str],
    speed: float,
    state: Feed,
    producer: AIOKafkaProducer,
    stop: asyncio.Event,
) -> None:
    """Produce the telemetry paced in event time: a record at event time t is due at wall
    start + (t - first) / speed. Records keep their event time as their Kafka timestamp."""
    if not records:
        return
    first_ms = records[0].timestamp_ms
    wall0 = time.monotonic()
    pending: list[asyncio.Future[Any]] = []
    for record in records:
        if stop.is_set():
            break
        due = wall0 + (record.timestamp_ms - first_ms) / 1000.0 / speed
        ahead = due - time.monotonic()
        if ahead > 0:
            await asyncio.gather(*pending)  # wait for acks while the schedule allows it
            pending.clear()
            await asyncio.sleep(max(0.0, due - time.monotonic()))
        else:
            state.max_behind_s = max(state.max_behind_s, -ahead)
        pending.append(
            await producer.send(
                topic(record.topic),
                value=record.value,
                key=record.key,
                timestamp_ms=record.timestamp_ms,
            )
        )
        state.sent += 1
        state.bytes += len(record.value)
        state.edge_ms = record.timestamp_ms
        if len(pending) >= 500:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
    state.exhausted = not stop.is_set()


async def collect(
    bootstrap: str,
    topic: str,
    partitions: int,
    by_fingerprint: dict[str, Sent],
    stop: asyncio.Event,
) -> None:
    """Read ``causes.ranked`` (every partition, without a consumer group) and note, for each
    alert a record names, the arrival of its first record and of its first complete one."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        await consumer.seek_to_beginning()
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100)
            now = time.monotonic()
            for records in batch.values():
                for record in records:
                    doc = orjson.loads(record.value or b"{}")
                    coverage = doc.get("coverage") or {}
                    complete = bool(coverage.get("complete", False))
                    for fingerprint in doc.get("alert_fingerprints", []):
                        sent = by_fingerprint.get(fingerprint)
                        if sent is None:
                            continue
                        if sent.first_at is None:
                            sent.first_at = now
                            sent.first_complete = complete
                            sent.first_waited_s = coverage.get("waited_s")
                        if complete and sent.complete_at is None:
                            sent.complete_at = now
    finally:
        await consumer.stop()


async def run(
    args: argparse.Namespace,
    settings: Settings,
    bootstrap: str,
    records: list[Record],
    sim: Simulation,
    crashed: Callable[[], list[str]],
) -> tuple[list[Sent], Feed, float]:
    """Feed, alert and collect; returns the alerts, the feed's figures and the wall seconds
    of the whole run."""
    feed_state = Feed()
    stop_feed = asyncio.Event()
    stop_collect = asyncio.Event()
    by_fingerprint: dict[str, Sent] = {}
    sent: list[Sent] = []
    observe_s = settings.answer_wait_s + OBSERVE_MARGIN_S + 2 * args.interval_s / args.speed
    telemetry = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_request_size=4 * 1024 * 1024
    )
    alerts = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await telemetry.start()
    await alerts.start()
    started = time.monotonic()
    feeder = asyncio.create_task(
        feed(bootstrap, records, settings.topic, args.speed, feed_state, telemetry, stop_feed)
    )
    collector = asyncio.create_task(
        collect(
            bootstrap,
            settings.topic("causes.ranked"),
            topics.spec("causes.ranked").partitions,
            by_fingerprint,
            stop_collect,
        )
    )
    try:
        # the schedule, in wall seconds from the start of the feed: fresh alerts evenly over
        # the measured phase, floor alerts between them
        n_floor = max(2, args.alerts // 4)
        plan = [
            (args.warmup_s + (i + 0.5) * args.duration_s / args.alerts, "fresh", i)
            for i in range(args.alerts)
        ] + [
            (args.warmup_s + (j + 0.25) * args.duration_s / n_floor, "floor", j)
            for j in range(n_floor)
        ]
        plan.sort()
        print(f"feeding telemetry; normal period {args.warmup_s:.0f} s", flush=True)
        for at, kind, index in plan:
            await asyncio.sleep(max(0.0, started + at - time.monotonic()))
            if dead := crashed():
                raise RuntimeError(f"stage(s) exited: {', '.join(dead)}")
            # everything handed to the producer so far is on the broker before the alert
            edge_ms = feed_state.edge_ms
            await telemetry.flush()
            edge_s = edge_ms / 1000.0
            if kind == "fresh":
                starts_s = edge_s - args.alert_lag_s
            else:  # halfway through the data fed so far: applied long before this alert
                starts_s = EVENT_START_S + (edge_s - EVENT_START_S) / 2
            payload = alert_payload(sim, kind, index, starts_s)
            alert = payload["alerts"][0]
            await alerts.send_and_wait(
                settings.topic("alerts"), orjson.dumps(payload), key=payload["groupKey"].encode()
            )
            one = Sent(
                kind,
                index,
                alert["fingerprint"],
                alert["labels"]["service"],
                starts_s,
                edge_s,
                time.monotonic(),
            )
            by_fingerprint[one.fingerprint] = one
            sent.append(one)
        # telemetry keeps flowing until every alert has a complete record or its time is up
        while any(
            s.complete_at is None and time.monotonic() - s.delivered < observe_s for s in sent
        ):
            if dead := crashed():
                raise RuntimeError(f"stage(s) exited: {', '.join(dead)}")
            await asyncio.sleep(0.2)
    finally:
        stop_feed.set()
        stop_collect.set()
        for task in (feeder, collector):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await alerts.stop()
        await telemetry.stop()
    return sent, feed_state, time.monotonic() - started


def rank(values: list[float], q: float) -> float:
    """Nearest-rank percentile (an observed value; inf when that rank was never answered)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def fmt(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    return "none" if math.isinf(seconds) else f"{seconds:.1f}"


def report(
    args: argparse.Namespace,
    settings: Settings,
    sent: list[Sent],
    feed_state: Feed,
    wall_s: float,
    stage_stats: dict[str, Any],
) -> None:
    observe_s = settings.answer_wait_s + OBSERVE_MARGIN_S + 2 * args.interval_s / args.speed
    goal = args.interval_s + GOAL_MARGIN_S
    fresh = [s for s in sent if s.kind == "fresh"]
    floor = [s for s in sent if s.kind == "floor"]
    print(
        f"\nfed {feed_state.sent:,} telemetry records ({feed_state.bytes / 1e6:.0f} MB) over"
        f" {wall_s:.0f} s wall at {args.speed:g}x event time; feeder at most"
        f" {feed_state.max_behind_s:.1f} s behind its schedule"
        + ("; the generated telemetry RAN OUT before the end" if feed_state.exhausted else "")
    )
    print(
        f"settings: interval_s={args.interval_s:g} answer_wait_s={settings.answer_wait_s:g}"
        f" checkpoint_every_s={settings.checkpoint_every_s:g}"
        f" segment_max_seconds={settings.segment_max_seconds:g} alert_group_window_s=0;"
        f" each alert watched for {observe_s:.0f} s"
    )
    print(
        "\n| alert | service | startsAt | newest data sent | first record s | complete |"
        " stage waited s | first complete record s |"
    )
    print("|---|---|---|---|---:|---|---:|---:|")
    for s in sorted(sent, key=lambda s: s.delivered):
        waited = "-" if s.first_waited_s is None else f"{s.first_waited_s:.1f}"
        complete = {None: "-", True: "yes", False: "NO (stale)"}[s.first_complete]
        print(
            f"| {s.kind}-{s.index} | {s.service} | {iso(s.starts_s)[11:23]} |"
            f" {iso(s.edge_s)[11:23]} | {fmt(s.first_s())} | {complete} | {waited} |"
            f" {fmt(s.complete_s())} |"
        )

    def row(name: str, group: list[Sent], latency: Callable[[Sent], float]) -> float:
        values = [latency(s) for s in group]
        answered = sum(math.isfinite(v) for v in values)
        complete = sum(bool(s.first_complete) for s in group)
        share = complete / len(group) if group else math.nan
        p95 = rank(values, 0.95)
        print(
            f"| {name} | {len(group)} | {answered} | {complete} ({share:.0%}) |"
            f" {fmt(rank(values, 0.50))} | {fmt(p95)} | {fmt(max(values, default=math.nan))} |"
        )
        return p95

    print(
        "\n| latency, wall s from delivery | alerts | answered | first record complete (share) |"
        " p50 | p95 | max |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    row("fresh: first record, complete or not", fresh, Sent.first_s)
    p95 = row("fresh: first complete record (the goal's figure)", fresh, Sent.complete_s)
    floor_p95 = row("floor: startsAt in old, applied data", floor, Sent.first_s)
    stale = sum(s.first_complete is False for s in fresh)
    unanswered = sum(s.first_at is None for s in fresh)
    print(
        f"\nstale first answers (coverage.complete=false): {stale} of {len(fresh)}"
        f" ({stale / max(len(fresh), 1):.0%}); fresh alerts with no record at all: {unanswered}"
    )
    ratio = p95 / goal
    print(
        f"goal p95 <= interval_s + {GOAL_MARGIN_S:g} s = {goal:g} s:"
        f" {'met' if ratio <= 1 else 'NOT met'} (p95 / goal = {ratio:.2f}"
        + (
            f"; {sum(math.isinf(s.complete_s()) for s in fresh)} alert(s) never completely"
            f" answered within {observe_s:.0f} s)"
            if math.isinf(ratio)
            else ")"
        )
    )
    if math.isfinite(floor_p95) and floor_p95 > 0:
        print(
            f"floor (search and publish alone): p95 {floor_p95:.1f} s; fresh p95 / floor p95 ="
            f" {p95 / floor_p95:.1f}x (the rest is waiting for the data to be sealed, applied"
            " and checkpointed)"
        )
    keys = ("answered_covered", "answered_uncovered", "alert_to_record_p95_ms", "refreshed")
    counters = {k: stage_stats.get(k) for k in keys}
    shown = [f"{k}={round(v) if isinstance(v, float) else v}" for k, v in counters.items()]
    print("causal-search stage's own counters (floor alerts included): " + ", ".join(shown))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--alerts",
        type=int,
        default=12,
        help="fresh alerts to fire during --duration-s (default 12); a quarter as many (at"
        " least 2) floor alerts are fired between them",
    )
    parser.add_argument(
        "--interval-s",
        type=float,
        default=60.0,
        help="the world model's interval_s (default 60, the product default); the goal is"
        " p95 <= interval_s + 5 s, so a smaller interval sets a tighter goal",
    )
    parser.add_argument(
        "--seed", type=int, default=1, help="simulator seed: topology and traffic (default 1)"
    )
    parser.add_argument(
        "--duration-s",
        type=float,
        default=120.0,
        help="wall seconds over which the alerts are fired, evenly, while telemetry flows"
        " (default 120)",
    )
    parser.add_argument(
        "--warmup-s",
        type=float,
        default=60.0,
        help="wall seconds of normal telemetry before the first alert; the stages also join"
        " their consumer groups in this time (default 60)",
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=10.0,
        help="event seconds fed per wall second (default 10; 1 is real time): faster gives"
        " the world model more history per wall second and the pipeline more work per second",
    )
    parser.add_argument(
        "--alert-lag-s",
        type=float,
        default=0.0,
        help="event seconds between the newest data on the broker and a fresh alert's"
        " startsAt (default 0: the alert is about the data just received, the hardest case;"
        " Alertmanager's group_wait, 30 s by default, puts it at least that far back in"
        " production)",
    )
    parser.add_argument(
        "--services", type=int, default=14, help="simulated services (default 14, as the demo)"
    )
    parser.add_argument(
        "--peak-rate",
        type=float,
        default=20.0,
        help="edge requests per second at the simulator's daily peak, in event time"
        " (default 20; the run is near the peak)",
    )
    args = parser.parse_args()
    if args.alerts < 1 or args.speed <= 0 or args.duration_s <= 0 or args.warmup_s < 0:
        parser.error("--alerts >= 1, --speed > 0, --duration-s > 0 and --warmup-s >= 0")

    with tempfile.TemporaryDirectory(prefix="bench-freshness-") as root:
        settings = Settings(
            data_dir=Path(root),
            http_port=0,
            interval_s=args.interval_s,
            alert_group_window_s=0.0,
        )
        observe_s = settings.answer_wait_s + OBSERVE_MARGIN_S + 2 * args.interval_s / args.speed
        # enough event time for the whole run, the longest wait after the last alert included
        event_s = (args.warmup_s + args.duration_s + observe_s + 30.0) * args.speed
        t0 = time.perf_counter()
        records, sim = generate(args, event_s)
        print(
            f"generated {event_s / 60:.0f} min of event time ({len(records):,} records,"
            f" {args.services} services, peak {args.peak_rate:g} req/s) in"
            f" {time.perf_counter() - t0:.1f} s",
            flush=True,
        )
        with Platform(settings, stages=STAGES) as platform:
            print(f"platform up on {platform.bootstrap_servers}: {', '.join(STAGES)}", flush=True)

            def crashed() -> list[str]:
                supervisor = platform.supervisor
                return [] if supervisor is None else [s.stage for s in supervisor.exited()]

            try:
                sent, feed_state, wall_s = asyncio.run(
                    run(args, settings, platform.bootstrap_servers, records, sim, crashed)
                )
            except RuntimeError as e:  # a stage died: show why before its logs go away
                print(f"\n{e}")
                for stage in crashed():
                    log = settings.data_dir / "logs" / f"{stage}.log"
                    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
                    print(f"--- last lines of {stage}.log ---", *lines[-20:], sep="\n")
                raise SystemExit(1) from e
            stats_file = stats_path(settings, "causal-search")
            stage_stats = orjson.loads(stats_file.read_bytes()) if stats_file.exists() else {}
        report(args, settings, sent, feed_state, wall_s, stage_stats)


if __name__ == "__main__":
    main()
