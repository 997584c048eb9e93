"""The incident demo: a simulated incident through the whole Kafka pipeline, end to end.

1. start the platform on the embedded broker with every stage (receiver, ingest, world model,
   causal search), in a fresh demo data directory;
2. simulate a scenario (history, then a fault) and send its telemetry and changes to Kafka;
3. wait until the world model has learned up to the first alert's time, as it would have in real
   time, then send the alerts the simulator's SLO rules fired;
4. wait for the ``causes.ranked`` record, print the ranked causes with their evidence, and the
   injected fault from the simulator's labels (which never go on a topic);
5. stop everything.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from jobs.simulator.simulation import Record, RunConfig, Simulation
from pipeline import kafka
from pipeline.platform import Platform
from pipeline.segments.store import SegmentStore
from pipeline.settings import Settings
from pipeline.worldmodel import reads

TELEMETRY_TOPICS = ("otlp_spans", "otlp_metrics", "otlp_logs", "changes")


@dataclass
class DemoResult:
    record: dict[str, Any] | None
    labels: dict[str, Any]
    spans: int
    seconds: float


def label_matches(entity_key: str, label: dict[str, str]) -> bool:
    """Does a cause's entity name the labelled root cause? Same kind and name (our virtual
    dependencies carry their system: ``database:postgresql:orders-db`` is ``orders-db``); an
    operation label is also matched by its service."""
    kind, _, name = entity_key.partition(":")
    lkind, lname = label["kind"], label["name"]
    if lkind == "operation":
        service = lname.split(" ", 1)[0]
        return entity_key in (f"operation:{lname}", f"service:{service}")
    return kind == lkind and (name == lname or name.endswith(":" + lname))


def _send(settings: Settings, bootstrap: str, records: list[Record]) -> None:
    by_topic: dict[str, list[tuple[bytes | None, bytes]]] = {}
    for r in records:
        by_topic.setdefault(r.topic, []).append((r.key, r.value))
    for logical, values in by_topic.items():
        for start in range(0, len(values), 2000):
            asyncio.run(
                kafka.produce(bootstrap, settings.topic(logical), values[start : start + 2000])
            )


def _wait_for_model(
    store: SegmentStore, t_s: float, timeout_s: float, tick: Callable[[str], None]
) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            model = reads.load(store)
            closed = model.closed_through / 1e9
            tick(f"world model learned up to {time.strftime('%H:%M', time.gmtime(closed))} UTC")
            if closed >= t_s:
                return True
        except (reads.ModelReadError, ValueError, OSError):
            tick("world model starting")
        time.sleep(1.0)
    return False


async def _first_ranked(bootstrap: str, topic: str, timeout_s: float) -> dict[str, Any] | None:
    async for record in kafka.tail(
        bootstrap, topic, from_beginning=True, limit=None, idle_timeout_s=timeout_s
    ):
        if record.value:
            doc: dict[str, Any] = orjson.loads(record.value)
            return doc
    return None


def run_demo(
    settings: Settings,
    run: RunConfig,
    *,
    on_step: Callable[[str], None] = lambda _m: None,
    model_timeout_s: float = 240.0,
) -> DemoResult:
    started = time.monotonic()
    demo_dir = settings.data_dir / "demo"
    if demo_dir.exists():
        shutil.rmtree(demo_dir)
    demo = settings.model_copy(update={"data_dir": demo_dir, "http_port": 0})
    sim = Simulation(run)
    on_step(f"simulating {run.scenario} on {run.services} services")
    telemetry: list[Record] = []
    alerts: list[Record] = []
    spans = 0
    for r in sim.records():
        (alerts if r.topic == "alerts" else telemetry).append(r)
        if r.topic == "otlp_spans":
            spans += 1
    labels = sim.labels()
    with Platform(
        demo,
        on_step=on_step,
        stages=[
            "receiver",
            "ingest-logs",
            "ingest-metrics",
            "ingest-spans",
            "world-model",
            "causal-search",
        ],
    ) as platform:
        bootstrap = platform.bootstrap_servers
        on_step(f"sending {len(telemetry):,} telemetry records to Kafka")
        _send(demo, bootstrap, telemetry)
        firing = [a for a in alerts if orjson.loads(a.value).get("status") == "firing"]
        if not firing:
            on_step("the simulator's SLO rules fired no alert for this run")
            return DemoResult(None, labels, spans, time.monotonic() - started)
        first_alert_s = min(a.timestamp_ms for a in firing) / 1000
        store = SegmentStore(demo_dir / "segments")
        on_step("waiting for ingest and the world model to reach the first alert")
        _wait_for_model(store, first_alert_s - run.slice_s, model_timeout_s, on_step)
        on_step(f"sending {len(firing)} alert notification(s) as Alertmanager would")
        _send(demo, bootstrap, firing[:1])
        on_step("waiting for causes.ranked")
        record = asyncio.run(_first_ranked(bootstrap, demo.topic("causes.ranked"), 60.0))
    return DemoResult(record, labels, spans, time.monotonic() - started)
