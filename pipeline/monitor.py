"""What the HTTP server knows of the whole platform: the broker, consumer lag, the stages.

``Monitor`` runs beside the receivers: every ``monitor_every_s`` it reads, from the broker, the
high-water mark of every partition the stages consume and each stage's committed offsets
(consumer group ``worldline-<stage>``), which is also how it knows the broker answers. Lag is
high-water mark minus committed offset, so it is true even when a stage is dead; a partition
the group never committed counts from 0 (the stages start from the earliest record). The
stages' states come from the supervisor (``runtime/stages.json``, written by ``up``; each pid
is checked with the kernel) and their restarts from ``stats/supervisor.json``.

``/healthz`` and ``/metrics`` answer from the last check, never waiting on the broker.
``/healthz`` is not ok (503, with the reasons) when:

- the broker did not answer the last check;
- a stage under the supervisor is down or waiting to be restarted;
- a stage's lag grows: the lowest total lag of its group over the last
  ``health_lag_window_s`` is above the lowest over the window before it, and at least
  ``health_lag_min_records`` (a consumer that keeps up returns near its floor at every commit;
  one that falls behind has a rising floor). Only groups that have committed on the topic
  count, so topics nobody consumes are not reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from pipeline import kafka, kafka_auth, topics
from pipeline.settings import Settings
from pipeline.stages import read_stage_states

log = logging.getLogger("worldline.monitor")

# stage -> the registry topics its consumer group reads (its faust agents' topics)
GROUP_TOPICS: dict[str, tuple[str, ...]] = {
    "ingest-spans": ("otlp_spans",),
    "ingest-metrics": ("otlp_metrics",),
    "ingest-logs": ("otlp_logs",),
    "world-model": ("segments.sealed", "changes"),
    "causal-search": ("alerts",),
}
CHECK_TIMEOUT_S = 10.0


def group_id(stage: str) -> str:
    """The consumer group of a stage (its faust app id)."""
    return f"worldline-{stage}"


@dataclass(frozen=True)
class PartitionLag:
    stage: str
    topic: str
    partition: int
    high_water: int
    committed: int | None

    @property
    def lag(self) -> int:
        return max(0, self.high_water - (self.committed or 0))


async def read_lag(settings: Settings, bootstrap: str) -> list[PartitionLag]:
    """High-water marks and committed offsets of every stage's group on its topics."""
    wanted = {
        stage: [
            TopicPartition(settings.topic(logical), p)
            for logical in logicals
            for p in range(topics.spec(logical).partitions)
        ]
        for stage, logicals in GROUP_TOPICS.items()
    }
    all_tps = sorted({tp for tps in wanted.values() for tp in tps})
    hws = await kafka.high_water_marks(bootstrap, all_tps)
    out: list[PartitionLag] = []
    for stage, tps in wanted.items():
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=group_id(stage),
            enable_auto_commit=False,
            **kafka_auth.client_options(),
        )
        await consumer.start()
        try:
            for tp in tps:
                try:
                    committed = await consumer.committed(tp)
                except KafkaError as e:  # the group's coordinator is not ready: no reading
                    log.debug("committed offset of %s on %s: %s", stage, tp, e)
                    continue
                out.append(PartitionLag(stage, tp.topic, tp.partition, hws[tp], committed))
        finally:
            await consumer.stop()
    return out


@dataclass
class LagTrend:
    """Total lag of one group over time, kept for two windows."""

    samples: deque[tuple[float, int]] = field(default_factory=deque)

    def add(self, now: float, lag: int, window_s: float) -> None:
        self.samples.append((now, lag))
        while self.samples and self.samples[0][0] < now - 2 * window_s:
            self.samples.popleft()

    def growing(self, now: float, window_s: float, min_records: int) -> tuple[int, int] | None:
        """(floor over the last window, floor over the one before) when the floor rose to at
        least ``min_records``; None otherwise or before two windows were seen."""
        if not self.samples or self.samples[0][0] > now - 2 * window_s + window_s / 4:
            return None  # the earlier window is not covered yet
        recent = [lag for t, lag in self.samples if t >= now - window_s]
        earlier = [lag for t, lag in self.samples if t < now - window_s]
        if not recent or not earlier:
            return None
        floor, before = min(recent), min(earlier)
        if floor > before and floor >= min_records:
            return floor, before
        return None


def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def read_restarts(settings: Settings) -> dict[str, int]:
    """Restarts per stage, as ``up`` counts them in ``stats/supervisor.json``."""
    path = Path(settings.data_dir) / "stats" / "supervisor.json"
    with contextlib.suppress(FileNotFoundError, ValueError, orjson.JSONDecodeError):
        restarts = orjson.loads(path.read_bytes()).get("restarts", {})
        return {str(k): int(v) for k, v in restarts.items()}
    return {}


@dataclass
class StageHealth:
    stage: str
    up: bool
    detail: str


class Monitor:
    """Background checks of the broker and lag; stage states read when asked."""

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.broker_up: bool | None = None  # None: not checked yet
        self.broker_error = ""
        self.checked_at = 0.0  # monotonic time of the last check
        self.check_seconds = 0.0
        self.lag: list[PartitionLag] = []
        self.trends: dict[str, LagTrend] = {}
        self._task: asyncio.Task[None] | None = None

    async def check(self) -> None:
        """One round: read lag (which also says whether the broker answers)."""
        started = time.monotonic()
        try:
            lag = await asyncio.wait_for(read_lag(self.settings, self.bootstrap), CHECK_TIMEOUT_S)
        except Exception as e:  # refused, timed out or answered wrongly: not usable
            self.broker_up = False
            self.broker_error = str(e) or type(e).__name__
            self.lag = []
        else:
            self.broker_up = True
            self.broker_error = ""
            self.lag = lag
            now = time.monotonic()
            window = self.settings.health_lag_window_s
            for stage, total in self._group_totals().items():
                self.trends.setdefault(stage, LagTrend()).add(now, total, window)
        self.checked_at = time.monotonic()
        self.check_seconds = self.checked_at - started

    def _group_totals(self) -> dict[str, int]:
        """Total lag per stage over the topics its group has committed on."""
        committed_topics = {(p.stage, p.topic) for p in self.lag if p.committed is not None}
        totals: dict[str, int] = {}
        for p in self.lag:
            if (p.stage, p.topic) in committed_topics:
                totals[p.stage] = totals.get(p.stage, 0) + p.lag
        return totals

    async def run(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # a bug in a check must not end the checks
                log.exception("monitor check failed")
            await asyncio.sleep(self.settings.monitor_every_s)

    async def start(self) -> None:
        """First check done before serving (so the first answer is already true), then the
        rest in the background."""
        await self.check()
        self._task = asyncio.create_task(self._loop_after_first(), name="worldline-monitor")

    async def _loop_after_first(self) -> None:
        await asyncio.sleep(self.settings.monitor_every_s)
        await self.run()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # ------------------------------------------------------------------------ readings
    def stages(self) -> list[StageHealth]:
        """Each stage under the supervisor (none when the server runs on its own)."""
        out = []
        for stage, state in sorted(read_stage_states(self.settings).items()):
            pid = int(state.get("pid") or 0)
            if state.get("running") and pid and _alive(pid):
                out.append(StageHealth(stage, True, f"running (pid {pid})"))
            elif state.get("running"):
                out.append(StageHealth(stage, False, f"exited (pid {pid}); restart pending"))
            else:
                out.append(
                    StageHealth(
                        stage,
                        False,
                        f"exited with code {state.get('returncode')}; restarting"
                        f" (restart {int(state.get('restarts', 0)) + 1})",
                    )
                )
        return out

    def growing(self) -> dict[str, tuple[int, int]]:
        now = time.monotonic()
        s = self.settings
        out = {}
        for stage, trend in self.trends.items():
            rose = trend.growing(now, s.health_lag_window_s, s.health_lag_min_records)
            if rose is not None:
                out[stage] = rose
        return out

    def health(self) -> tuple[bool, list[str], dict[str, Any]]:
        """(ok, reasons, checks) for /healthz."""
        reasons: list[str] = []
        age = time.monotonic() - self.checked_at if self.checked_at else None
        if self.broker_up is False:
            reasons.append(
                f"broker {self.bootstrap} unreachable: it did not answer the last check"
                f" ({age:.0f} s ago): {self.broker_error}"
            )
        stages = self.stages()
        for st in stages:
            if not st.up and st.stage != "receiver":
                reasons.append(f"stage {st.stage} is down: {st.detail}")
        growing = self.growing()
        window = self.settings.health_lag_window_s
        for stage, (floor, before) in sorted(growing.items()):
            reasons.append(
                f"consumer lag of {stage} grows: at least {floor} records behind over the last"
                f" {window:g} s, up from {before} in the {window:g} s before"
            )
        checks = {
            "broker": {
                "bootstrap_servers": self.bootstrap,
                "up": self.broker_up,
                "error": self.broker_error or None,
                "checked_s_ago": None if age is None else round(age, 1),
            },
            "stages": {st.stage: {"up": st.up, "detail": st.detail} for st in stages},
            "lag": {
                stage: {"records": total, "growing": stage in growing}
                for stage, total in sorted(self._group_totals().items())
            },
        }
        return not reasons, reasons, checks

    # ------------------------------------------------------------------------ /metrics
    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "worldline_broker_up", "1 when the broker answered the HTTP server's last check."
        )
        up.add_metric([], 1.0 if self.broker_up else 0.0)
        yield up
        took = GaugeMetricFamily(
            "worldline_monitor_check_seconds",
            "How long the last broker and lag check took.",
        )
        took.add_metric([], self.check_seconds)
        yield took
        lag = GaugeMetricFamily(
            "worldline_consumer_lag",
            "Records behind: high-water mark minus the group's committed offset (0 if never"
            " committed), per stage (group worldline-<stage>), topic and partition.",
            labels=["stage", "group", "topic", "partition"],
        )
        high = GaugeMetricFamily(
            "worldline_topic_high_water",
            "High-water mark (next offset) of every partition a stage reads.",
            labels=["topic", "partition"],
        )
        committed = GaugeMetricFamily(
            "worldline_consumer_committed_offset",
            "Committed offset of a stage's group, where it committed.",
            labels=["stage", "group", "topic", "partition"],
        )
        seen: set[tuple[str, int]] = set()
        for p in self.lag:
            labels = [p.stage, group_id(p.stage), p.topic, str(p.partition)]
            lag.add_metric(labels, p.lag)
            if p.committed is not None:
                committed.add_metric(labels, p.committed)
            if (p.topic, p.partition) not in seen:
                seen.add((p.topic, p.partition))
                high.add_metric([p.topic, str(p.partition)], p.high_water)
        yield from (lag, high, committed)
        growing = GaugeMetricFamily(
            "worldline_consumer_lag_growing",
            "1 when a stage's lag grows (the rule of /healthz, health_lag_window_s).",
            labels=["stage"],
        )
        rising = self.growing()
        for stage in sorted(self.trends):
            growing.add_metric([stage], 1.0 if stage in rising else 0.0)
        yield growing
        stage_up = GaugeMetricFamily(
            "worldline_stage_up",
            "1 when a stage under the supervisor runs, 0 when it is down or restarting.",
            labels=["stage"],
        )
        for st in self.stages():
            stage_up.add_metric([st.stage], 1.0 if st.up else 0.0)
        yield stage_up
        restarts = CounterMetricFamily(
            "worldline_stage_restarts",
            "Restarts of a crashed stage by the supervisor (stats/supervisor.json).",
            labels=["stage"],
        )
        for stage, n in sorted(read_restarts(self.settings).items()):
            restarts.add_metric([stage], n)
        yield restarts
        ok, _, _ = self.health()
        healthy = GaugeMetricFamily("worldline_healthy", "1 when /healthz answers ok.")
        healthy.add_metric([], 1.0 if ok else 0.0)
        yield healthy
