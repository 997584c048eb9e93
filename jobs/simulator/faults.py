"""The fault library: each fault class is a small dataclass with its ground-truth label.

A fault acts only through ``apply(ctx)``: it writes into the slice's ``Effects`` (what the
resource model and the spans then see) and may add log lines and change events. It never
touches telemetry directly, so its symptoms are whatever the physics makes of it: a slow
database shows up as slower callers, pool waits, timeouts and error logs far upstream.

Labels carry the root-cause entity ({kind, name} as in ``causes.ranked``), the fault class and
the onset; ``acceptable`` lists entities an answer may also name (the two ends of a slow link).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from jobs.simulator.changes import Change, config_push, deploy, flag_flip, iso
from jobs.simulator.engine import Effects, World
from jobs.simulator.logs import LogLine

Entity = dict[str, str]


@dataclass
class CronJob:
    """The nightly-report job: runs every ``interval_s`` and loads its database while running.

    A run reads its report data in batches: one query after another for as long as the run
    lasts (a child span of the run each, ``query_cost`` times an ordinary query's cost, slowed
    down like every other query when the database is), so its database work shows while it
    runs, not only once the run ends.

    Normally short and light. When ``saturate_at_s`` is set, the runs before it grow by 1.6x
    each for ``grow_runs`` runs and the run starting at ``saturate_at_s`` never finishes, its
    load on the database climbing to 0.9 of capacity within three minutes.
    """

    operation: int
    call: int
    database: int
    interval_s: float = 300.0
    base_run_s: float = 20.0
    base_load: float = 0.05
    grow_runs: int = 6
    query_cost: float = 50.0
    """A batch query's cost (and duration) relative to an ordinary query of the database."""
    batch_gap_s: float = 0.02
    """The job's own work on a batch, between its query and the next."""
    saturate_at_s: float | None = None

    def run_seconds(self, start_s: float) -> float:
        if self.saturate_at_s is None:
            return self.base_run_s
        if start_s >= self.saturate_at_s:
            return 6 * 3600.0
        k = (start_s - (self.saturate_at_s - self.grow_runs * self.interval_s)) / self.interval_s
        return self.base_run_s * 1.6 ** max(k, 0.0) if k >= 0 else self.base_run_s

    def run_load(self, start_s: float, t_s: float) -> float:
        if self.saturate_at_s is not None and start_s >= self.saturate_at_s:
            return min(0.9, 0.3 + 0.6 * (t_s - start_s) / 180.0)
        return self.base_load + 0.4 * min(self.run_seconds(start_s) / self.interval_s, 1.0)

    def extra_load(self, t_s: float) -> float:
        latest = math.floor(t_s / self.interval_s) * self.interval_s
        load = 0.0
        for k in range(0, 4):
            start = latest - k * self.interval_s
            if start <= t_s < start + self.run_seconds(start):
                load += self.run_load(start, t_s)
        return min(load, 0.95)

    def runs_starting(self, t0_s: float, t1_s: float) -> list[float]:
        first = math.ceil(t0_s / self.interval_s) * self.interval_s
        return [float(t) for t in np.arange(first, t1_s, self.interval_s)]


@dataclass
class SliceContext:
    world: World
    t0_s: float
    dt: float
    effects: Effects
    cron: CronJob
    logs: list[LogLine] = field(default_factory=list)

    def log(self, pod: int, severity: str, body: str, offset_s: float = 0.0) -> None:
        self.logs.append(LogLine(pod, int((self.t0_s + offset_s) * 1e9), severity, body))


@dataclass
class Fault:
    """Base of every fault: onset and duration in Unix seconds, ramp-up helpers, label."""

    fault_class: ClassVar[str] = ""
    signal: ClassVar[str] = ""
    """The signal on the root-cause entity where the fault shows first."""
    description: ClassVar[str] = ""
    onset_s: float
    duration_s: float = math.inf

    def elapsed(self, t_s: float) -> float:
        return t_s - self.onset_s

    def active(self, t_s: float) -> bool:
        return 0.0 <= self.elapsed(t_s) < self.duration_s

    def ramp(self, t_s: float, seconds: float) -> float:
        if not self.active(t_s):
            return 0.0
        return float(min(1.0, max(self.elapsed(t_s), 0.0) / seconds + 0.05))

    def entity(self, world: World) -> Entity:
        raise NotImplementedError

    def acceptable(self, world: World) -> list[Entity]:
        return []

    def changes(self, world: World, versions: list[str]) -> list[Change]:
        return []

    def red_herrings(self, world: World, versions: list[str]) -> list[Change]:
        """Changes that land near the fault but have no effect of their own."""
        return []

    def apply(self, ctx: SliceContext) -> None:
        raise NotImplementedError

    def label(self, world: World) -> dict[str, object]:
        return {
            "fault_class": self.fault_class,
            "entity": self.entity(world),
            "signal": self.signal,
            "acceptable_entities": self.acceptable(world),
            "onset": iso(self.effective_onset_s()),
            "end": None if math.isinf(self.duration_s) else iso(self.onset_s + self.duration_s),
            "description": self.description,
        }

    def effective_onset_s(self) -> float:
        return self.onset_s


def _service(world: World, s: int) -> Entity:
    return {"kind": "service", "name": world.topo.services[s].name}


def _dependency(world: World, d: int) -> Entity:
    dep = world.topo.dependencies[d]
    kind = dep.kind if dep.kind != "service" else "dependency"
    return {"kind": kind, "name": dep.name}


@dataclass
class ServiceFault(Fault):
    """A fault whose root cause is one service (``service``: its index in the topology)."""

    service: int = 0

    def entity(self, world: World) -> Entity:
        return _service(world, self.service)


@dataclass
class CpuSaturation(ServiceFault):
    fault_class: ClassVar[str] = "cpu_saturation"
    signal: ClassVar[str] = "process.cpu.utilization"
    description: ClassVar[str] = "a runaway thread burns the CPU of every pod of one service"

    def apply(self, ctx: SliceContext) -> None:
        pods = ctx.world.service_pods[self.service]
        cores = ctx.world.service_cores[self.service]
        ctx.effects.pod_cpu_extra[pods] += 0.85 * cores * self.ramp(ctx.t0_s, 60.0)


@dataclass
class MemoryLeak(ServiceFault):
    fault_class: ClassVar[str] = "memory_leak"
    signal: ClassVar[str] = "process.memory.usage"
    description: ClassVar[str] = (
        "memory grows until pods are OOM-killed and restart, again and again"
    )
    seconds_to_oom: float = 80.0
    restart_s: float = 20.0

    def apply(self, ctx: SliceContext) -> None:
        if not self.active(ctx.t0_s):
            return
        w = ctx.world
        for k, pod in enumerate(w.service_pods[self.service].tolist()):
            headroom = w.pod_memory_limit[pod] - w.pod_base_memory[pod]
            period = self.seconds_to_oom * (1.0 + 0.25 * k)
            cycle = period + self.restart_s
            e0 = self.elapsed(ctx.t0_s)
            phase = e0 % cycle
            if phase < period:
                ctx.effects.pod_memory_extra[pod] += headroom * (phase / period) ** 1.3
                if phase / period > 0.85:
                    pct = int(
                        100
                        * (w.pod_base_memory[pod] + headroom * (phase / period) ** 1.3)
                        / w.pod_memory_limit[pod]
                    )
                    ctx.log(
                        pod, "WARN", f"GC overhead high: heap usage at {pct}% after full collection"
                    )
            else:
                ctx.effects.pod_down[pod] = 1.0
            # an OOM kill happens in this slice if the cycle crosses `period`
            if phase <= period < phase + ctx.dt:
                ctx.effects.pod_restarts[pod] += 1
                name = w.topo.pods[pod].name
                ctx.log(
                    pod,
                    "ERROR",
                    f"Container {name} OOMKilled (exit code 137), restarting",
                    period - phase,
                )


@dataclass
class HeapGrowth(ServiceFault):
    """Not a fault: a condition that stands while an incident begins elsewhere."""

    fault_class: ClassVar[str] = "heap_growth"
    signal: ClassVar[str] = "process.memory.usage"
    description: ClassVar[str] = (
        "the heap of every pod of one service grows to a new level within a minute and stays"
        " there, below where collection slows requests (a larger cache after a deploy)"
    )
    share: float = 0.75
    """The level reached, as a share of the pod's memory limit (the engine's collector slows
    requests only above 0.8 of it)."""

    def apply(self, ctx: SliceContext) -> None:
        w = ctx.world
        pods = w.service_pods[self.service]
        room = np.maximum(self.share * w.pod_memory_limit[pods] - w.pod_base_memory[pods], 0.0)
        ctx.effects.pod_memory_extra[pods] += room * self.ramp(ctx.t0_s, 60.0)


@dataclass
class SlowQueryAfterDeploy(ServiceFault):
    fault_class: ClassVar[str] = "slow_query_after_deploy"
    signal: ClassVar[str] = "db.client.operation.duration"
    description: ClassVar[str] = (
        "a deploy ships a query without its index: one call gets 12x slower"
    )
    call: int = 0
    change_id: str = "deploy-slow-query"

    def acceptable(self, world: World) -> list[Entity]:
        return [{"kind": "change", "name": self.change_id}]

    def changes(self, world: World, versions: list[str]) -> list[Change]:
        return [
            deploy(
                world.topo,
                self.service,
                self.onset_s,
                versions[self.service],
                self.change_id,
                minor=True,
            )
        ]

    def apply(self, ctx: SliceContext) -> None:
        if self.active(ctx.t0_s):
            ctx.effects.call_latency_mult[self.call] *= 12.0
            ctx.effects.call_cost_mult[self.call] *= 5.0


@dataclass
class ConnectionPoolLeak(ServiceFault):
    fault_class: ClassVar[str] = "connection_pool_exhaustion"
    signal: ClassVar[str] = "db.client.connections.usage"
    description: ClassVar[str] = (
        "connections leak from one service's pool until requests wait and fail"
    )
    seconds_to_exhaust: float = 60.0

    def apply(self, ctx: SliceContext) -> None:
        if self.active(ctx.t0_s):
            pool = ctx.world.pool_size[self.service]
            frac = min(self.elapsed(ctx.t0_s) / self.seconds_to_exhaust, 1.0)
            ctx.effects.pool_leaked[self.service] += pool * frac


@dataclass
class HiddenCacheEviction(Fault):
    fault_class: ClassVar[str] = "cache_eviction"
    signal: ClassVar[str] = "cache miss ratio (fallback query rate)"
    description: ClassVar[str] = (
        "an undeclared cache hits its memory limit; misses push load onto the database"
    )
    cache: int = 0

    def entity(self, world: World) -> Entity:
        return _dependency(world, self.cache)

    def apply(self, ctx: SliceContext) -> None:
        r = self.ramp(ctx.t0_s, 120.0)
        if r:
            base = ctx.effects.cache_miss[self.cache]
            ctx.effects.cache_miss[self.cache] = base + (0.9 - base) * r
            ctx.effects.dep_latency_mult[self.cache] *= 1.0 + 0.5 * r


@dataclass
class NetworkLatency(Fault):
    fault_class: ClassVar[str] = "network_latency"
    signal: ClassVar[str] = "http.client.request.duration"
    description: ClassVar[str] = (
        "packet loss on one link adds latency to calls between two services"
    )
    caller: int = 0
    callee: int = 0
    delay_ms: float = 180.0

    def entity(self, world: World) -> Entity:
        return _service(world, self.callee)

    def acceptable(self, world: World) -> list[Entity]:
        return [_service(world, self.caller)]

    def apply(self, ctx: SliceContext) -> None:
        if not self.active(ctx.t0_s):
            return
        topo = ctx.world.topo
        for c in topo.calls:
            if (
                c.target_operation is not None
                and topo.operations[c.caller_operation].service == self.caller
                and topo.operations[c.target_operation].service == self.callee
            ):
                ctx.effects.call_extra_ms[c.index] += self.delay_ms


@dataclass
class EndpointErrors(Fault):
    fault_class: ClassVar[str] = "endpoint_errors"
    signal: ClassVar[str] = "error ratio"
    description: ClassVar[str] = "a code path of one endpoint throws for a third of its requests"
    operation: int = 0
    error_rate: float = 0.35

    def entity(self, world: World) -> Entity:
        op = world.topo.operations[self.operation]
        return {"kind": "operation", "name": f"{world.topo.services[op.service].name} {op.name}"}

    def acceptable(self, world: World) -> list[Entity]:
        return [_service(world, world.topo.operations[self.operation].service)]

    def apply(self, ctx: SliceContext) -> None:
        if self.active(ctx.t0_s):
            op = ctx.world.topo.operations[self.operation]
            ctx.effects.op_error[self.operation] += self.error_rate
            ctx.effects.op_error_message[self.operation] = (
                f"IndexError: list index out of range in handler for {op.route} (line 212)"
            )


@dataclass
class ExternalApiTimeouts(Fault):
    fault_class: ClassVar[str] = "external_api_timeouts"
    signal: ClassVar[str] = "http.client.request.duration"
    description: ClassVar[str] = "a third-party API slows down past the callers' timeouts"
    external: int = 0

    def entity(self, world: World) -> Entity:
        return _dependency(world, self.external)

    def apply(self, ctx: SliceContext) -> None:
        if self.active(ctx.t0_s):
            ctx.effects.dep_latency_mult[self.external] *= 1.0 + 24.0 * self.ramp(ctx.t0_s, 30.0)


@dataclass
class BadConfigPush(ServiceFault):
    fault_class: ClassVar[str] = "bad_config_push"
    signal: ClassVar[str] = "error ratio"
    description: ClassVar[str] = (
        "a config push with a malformed value makes one service fail requests"
    )
    change_id: str = "config-push"

    def acceptable(self, world: World) -> list[Entity]:
        return [{"kind": "change", "name": self.change_id}]

    def changes(self, world: World, versions: list[str]) -> list[Change]:
        return [
            config_push(
                world.topo,
                self.service,
                self.onset_s,
                "upstream.timeout",
                "2s",
                "2",
                self.change_id,
            )
        ]

    def apply(self, ctx: SliceContext) -> None:
        if not self.active(ctx.t0_s):
            return
        svc = ctx.world.topo.services[self.service]
        for o in svc.operations:
            ctx.effects.op_error[o] += 0.2
            ctx.effects.op_work_mult[o] *= 1.3
            ctx.effects.op_error_message[o] = (
                "ConfigError: invalid duration '2' for key upstream.timeout (missing unit)"
            )
        if self.elapsed(ctx.t0_s) < ctx.dt:
            for pod in svc.pods:
                ctx.log(pod, "INFO", f"configuration reloaded from {self.change_id}")


@dataclass
class FeatureFlagErrors(ServiceFault):
    fault_class: ClassVar[str] = "feature_flag_errors"
    signal: ClassVar[str] = "error ratio"
    description: ClassVar[str] = "a feature flag turns on a broken code path in one endpoint"
    operation: int = 0
    flag: str = "ranker-v2"
    change_id: str = "flag-flip"

    def acceptable(self, world: World) -> list[Entity]:
        return [{"kind": "change", "name": self.change_id}]

    def changes(self, world: World, versions: list[str]) -> list[Change]:
        return [flag_flip(world.topo, self.service, self.onset_s, self.flag, self.change_id)]

    def apply(self, ctx: SliceContext) -> None:
        if self.active(ctx.t0_s):
            ctx.effects.op_error[self.operation] += 0.3
            ctx.effects.op_error_message[self.operation] = (
                f"NullPointerException: ranking result is null (flag {self.flag} enabled)"
            )


@dataclass
class NoisyNeighbour(Fault):
    fault_class: ClassVar[str] = "noisy_neighbour"
    signal: ClassVar[str] = "system.cpu.utilization"
    description: ClassVar[str] = "a batch job on one host steals CPU from every pod placed there"
    host: int = 0

    def entity(self, world: World) -> Entity:
        return {"kind": "host", "name": world.topo.hosts[self.host].name}

    def apply(self, ctx: SliceContext) -> None:
        ctx.effects.host_steal[self.host] = max(
            ctx.effects.host_steal[self.host], 0.7 * self.ramp(ctx.t0_s, 30.0)
        )


@dataclass
class CronDatabaseSaturation(Fault):
    """The cron job's runs grow until the run starting at the onset saturates its database.

    The label's signal is the job's own database queries (``db.client.operation.duration`` on
    the cron service): from the onset the run's climbing load slows every query it issues, the
    first thing on the cron service that moves. ``job.run.duration`` cannot show it: a run
    records its duration only when it ends, and this one does not end.
    """

    fault_class: ClassVar[str] = "cron_database_saturation"
    signal: ClassVar[str] = "db.client.operation.duration"
    description: ClassVar[str] = (
        "a cron job grows run after run until it saturates its database; an unrelated deploy lands at the same time"
    )
    decoy_service: int = 0
    decoy_change_id: str = "deploy-decoy"

    def aligned_onset(self, cron_interval_s: float) -> float:
        return math.ceil(self.onset_s / cron_interval_s) * cron_interval_s

    def effective_onset_s(self) -> float:
        return self.aligned_onset(CronJob.interval_s)

    def entity(self, world: World) -> Entity:
        cron = next(s for s in world.topo.services if s.tier == "cron")
        return {"kind": "service", "name": cron.name}

    def acceptable(self, world: World) -> list[Entity]:
        cron_call = next(
            c
            for c in world.topo.calls
            if world.topo.services[world.topo.operations[c.caller_operation].service].tier == "cron"
        )
        return [_dependency(world, cron_call.target_dependency or 0)]

    def red_herrings(self, world: World, versions: list[str]) -> list[Change]:
        at = self.effective_onset_s() + 20.0
        return [
            deploy(
                world.topo,
                self.decoy_service,
                at,
                versions[self.decoy_service],
                self.decoy_change_id,
            )
        ]

    def apply(self, ctx: SliceContext) -> None:
        ctx.cron.saturate_at_s = self.effective_onset_s()


@dataclass
class RetryStorm(ServiceFault):
    """A metastable failure: a trigger, and retries that keep the service down after it.

    The latent amplifier is the callers' retry policy: every direct caller of the service
    retries a failed or timed-out request up to ``caller_retries`` times, with no backoff and no
    retry budget (callers further up keep their own policies, which compound). It is in place all
    along and costs nothing while requests succeed. The trigger is a short burst in which the
    service fails most requests: each failure is re-sent, so the service receives several times
    its normal requests (real ones: repeated client spans on the callers, server spans on the
    service), its CPU runs out, its request queue grows past the callers' timeouts, and from then
    on every attempt times out and is retried, which keeps the load above capacity long after the
    burst has ended.
    """

    fault_class: ClassVar[str] = "retry_storm"
    signal: ClassVar[str] = "request rate"
    description: ClassVar[str] = (
        "a short error burst makes callers retry; the amplified load keeps the service down"
    )
    burst_s: float = 45.0
    burst_error: float = 0.9
    caller_retries: int = 3

    def apply(self, ctx: SliceContext) -> None:
        topo = ctx.world.topo
        for c in topo.calls:
            if (
                c.target_operation is not None
                and topo.operations[c.target_operation].service == self.service
            ):
                retries = ctx.effects.call_retries
                retries[c.index] = max(int(retries[c.index]), self.caller_retries)
        if self.active(ctx.t0_s) and self.elapsed(ctx.t0_s) < self.burst_s:
            for o in topo.services[self.service].operations:
                ctx.effects.op_error[o] += self.burst_error


@dataclass
class ConsumerSlowdown(ServiceFault):
    fault_class: ClassVar[str] = "consumer_slowdown"
    signal: ClassVar[str] = "messaging.kafka.consumer.lag"
    description: ClassVar[str] = "a queue consumer slows down; the backlog grows and messages wait"
    queue: int = 0

    def acceptable(self, world: World) -> list[Entity]:
        return [_dependency(world, self.queue)]

    def apply(self, ctx: SliceContext) -> None:
        if self.active(ctx.t0_s):
            ctx.effects.consumer_capacity_mult[self.queue] *= 0.25
            for o in ctx.world.topo.services[self.service].operations:
                ctx.effects.op_work_mult[o] *= 4.0


@dataclass
class DatabaseSlowdown(Fault):
    fault_class: ClassVar[str] = "database_slowdown"
    signal: ClassVar[str] = "db.client.operation.duration"
    description: ClassVar[str] = (
        "a database's storage degrades: every query gets several times slower"
    )
    database: int = 0
    factor: float = 8.0

    def entity(self, world: World) -> Entity:
        return _dependency(world, self.database)

    def apply(self, ctx: SliceContext) -> None:
        r = self.ramp(ctx.t0_s, 20.0)
        if r:
            ctx.effects.dep_latency_mult[self.database] *= 1.0 + (self.factor - 1.0) * r


FAULT_CLASSES: tuple[type[Fault], ...] = (
    CpuSaturation,
    MemoryLeak,
    SlowQueryAfterDeploy,
    ConnectionPoolLeak,
    HiddenCacheEviction,
    NetworkLatency,
    EndpointErrors,
    ExternalApiTimeouts,
    BadConfigPush,
    FeatureFlagErrors,
    NoisyNeighbour,
    CronDatabaseSaturation,
    RetryStorm,
    ConsumerSlowdown,
    DatabaseSlowdown,
)
