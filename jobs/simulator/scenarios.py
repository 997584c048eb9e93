"""Named scenarios: which fault (if any) to inject, where, chosen from the topology by the seed.

Targets are always picked among entities that receive traffic, so every fault has symptoms.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from jobs.simulator import faults as f
from jobs.simulator.engine import World

Builder = Callable[[World, np.random.Generator, float], list[f.Fault]]


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    build: Builder


def _pick(rng: np.random.Generator, items: list[int]) -> int:
    if not items:
        raise ValueError(
            "the topology has no entity with traffic for this scenario; use more services"
        )
    return items[int(rng.integers(len(items)))]


def _peak_calls(world: World) -> np.ndarray:
    return np.asarray(world.topo.entry_weights @ world.call_visits)


def _peak_ops(world: World) -> np.ndarray:
    return np.asarray(world.topo.entry_weights @ world.op_visits)


def busy_services(world: World, tiers: tuple[str, ...] = ("mid", "frontend")) -> list[int]:
    """Services in ``tiers`` with at least 1 % of edge requests reaching them, busiest first."""
    load = np.zeros(len(world.topo.services))
    np.add.at(load, world.op_service, _peak_ops(world))
    chosen = [s.index for s in world.topo.services if s.tier in tiers and load[s.index] >= 0.01]
    return sorted(chosen, key=lambda s: -load[s])[: max(3, len(chosen) // 2)]


def busy_calls(world: World, kind: str | None = None, to_service: bool = False) -> list[int]:
    peak = _peak_calls(world)
    topo = world.topo
    out = []
    for c in topo.calls:
        if peak[c.index] < 0.01 or c.fallback_of is not None:
            continue
        if topo.services[topo.operations[c.caller_operation].service].tier == "gateway":
            continue
        if (
            to_service
            and c.target_operation is not None
            or (
                kind is not None
                and c.target_dependency is not None
                and topo.dependencies[c.target_dependency].kind == kind
            )
        ):
            out.append(c.index)
    return out


def _cpu(world: World, rng: np.random.Generator, onset: float) -> list[f.Fault]:
    return [f.CpuSaturation(onset, service=_pick(rng, busy_services(world)))]


def _memory(world: World, rng: np.random.Generator, onset: float) -> list[f.Fault]:
    return [f.MemoryLeak(onset, service=_pick(rng, busy_services(world)))]


def _slow_query(world: World, rng: np.random.Generator, onset: float) -> list[f.Fault]:
    c = _pick(rng, busy_calls(world, "database"))
    svc = int(world.call_service[c])
    return [f.SlowQueryAfterDeploy(onset, service=svc, call=c, change_id=f"deploy-{int(onset)}")]


def _pool(world: World, rng: np.random.Generator, onset: float) -> list[f.Fault]:
    with_pool = {int(world.call_service[c]) for c in busy_calls(world, "database")}
    return [f.ConnectionPoolLeak(onset, service=_pick(rng, sorted(with_pool)))]


def _cache(world: World, rng: np.random.Generator, onset: float) -> list[f.Fault]:
    topo = world.topo
    peak = _peak_calls(world)
    hidden = sorted(
        {
            int(c.target_dependency)
            for c in topo.calls
            if c.target_dependency is not None
            and topo.dependencies[c.target_dependency].kind == "cache"
            and not topo.dependencies[c.target_dependency].declared
            and peak[c.index] >= 0.01
        }
    )
    return [f.HiddenCacheEviction(onset, cache=_pick(rng, hidden))]


def _network(world: World, rng: np.random.Generator, onset: float) -> list[f.Fault]:
    c = world.topo.calls[_pick(rng, busy_calls(world, to_service=True))]
    callee = world.topo.operations[c.target_operation or 0].service
    return [f.NetworkLatency(onset, caller=int(world.call_service[c.index]), callee=callee)]


def _endpoint(world: World, rng: np.random.Generator, onset: float) -> list[f.Fault]:
    peak = _peak_ops(world)
    busy = set(busy_services(world, ("mid",)))
    ops = [o.index for o in world.topo.operations if o.service in busy and peak[o.index] >= 0.01]
    return [f.EndpointErrors(onset, operation=_pick(rng, ops))]


def _external(world: World, rng: np.random.Generator, onset: float) -> list[f.Fault]:
    deps = sorted({int(world.call_dependency[c]) for c in busy_calls(world, "external")})
    return [f.ExternalApiTimeouts(onset, external=_pick(rng, deps))]


def _config(world: World, rng: np.random.Generator, onset: float) -> list[f.Fault]:
    return [
        f.BadConfigPush(
            onset, service=_pick(rng, busy_services(world)), change_id=f"config-{int(onset)}"
        )
    ]


def _flag(world: World, rng: np.random.Generator, onset: float) -> list[f.Fault]:
    peak = _peak_ops(world)
    svc = _pick(rng, busy_services(world))
    ops = [o for o in world.topo.services[svc].operations if peak[o] >= 0.005]
    op = _pick(rng, ops or world.topo.services[svc].operations)
    return [f.FeatureFlagErrors(onset, service=svc, operation=op, change_id=f"flag-{int(onset)}")]


def _neighbour(world: World, rng: np.random.Generator, onset: float) -> list[f.Fault]:
    busy = set(busy_services(world, ("mid", "frontend", "consumer")))
    hosts = sorted(
        {int(world.pod_host[p]) for s in busy for p in world.service_pods[s][: world.replicas[s]]}
    )
    return [f.NoisyNeighbour(onset, host=_pick(rng, hosts))]


def _cron(world: World, rng: np.random.Generator, onset: float) -> list[f.Fault]:
    topo = world.topo
    cron_call = next(
        c for c in topo.calls if topo.services[int(world.call_service[c.index])].tier == "cron"
    )
    db = cron_call.target_dependency
    callers = sorted(
        topo.callers_of_dependency(db or 0) - {int(world.call_service[cron_call.index])}
    )
    busy = set(busy_services(world))
    decoys = [s for s in callers if s in busy] or busy_services(world)
    return [
        f.CronDatabaseSaturation(
            onset, decoy_service=_pick(rng, decoys), decoy_change_id=f"deploy-{int(onset)}"
        )
    ]


def _retry(world: World, rng: np.random.Generator, onset: float) -> list[f.Fault]:
    return [f.RetryStorm(onset, service=_pick(rng, busy_services(world, ("mid",))))]


def _consumer(world: World, rng: np.random.Generator, onset: float) -> list[f.Fault]:
    queues = sorted({int(world.call_dependency[c]) for c in busy_calls(world, "queue")})
    q = _pick(rng, queues)
    consumer = world.topo.dependencies[q].consumer_operation
    svc = world.topo.operations[consumer or 0].service
    return [f.ConsumerSlowdown(onset, service=svc, queue=q)]


def _database(world: World, rng: np.random.Generator, onset: float) -> list[f.Fault]:
    deps = sorted({int(world.call_dependency[c]) for c in busy_calls(world, "database")})
    return [f.DatabaseSlowdown(onset, database=_pick(rng, deps))]


def _normal(world: World, rng: np.random.Generator, onset: float) -> list[f.Fault]:
    return []


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "normal",
            "fault-free: seasonal traffic and benign changes only; the right answer is no cause",
            _normal,
        ),
        Scenario("cpu-saturation", f.CpuSaturation.description, _cpu),
        Scenario("memory-leak", f.MemoryLeak.description, _memory),
        Scenario("slow-query-after-deploy", f.SlowQueryAfterDeploy.description, _slow_query),
        Scenario("connection-pool-exhaustion", f.ConnectionPoolLeak.description, _pool),
        Scenario("hidden-cache-eviction", f.HiddenCacheEviction.description, _cache),
        Scenario("network-latency", f.NetworkLatency.description, _network),
        Scenario("endpoint-errors", f.EndpointErrors.description, _endpoint),
        Scenario("external-api-timeouts", f.ExternalApiTimeouts.description, _external),
        Scenario("bad-config-push", f.BadConfigPush.description, _config),
        Scenario("feature-flag-errors", f.FeatureFlagErrors.description, _flag),
        Scenario("noisy-neighbour", f.NoisyNeighbour.description, _neighbour),
        Scenario("cron-red-herring", f.CronDatabaseSaturation.description, _cron),
        Scenario("retry-storm", f.RetryStorm.description, _retry),
        Scenario("consumer-backlog", f.ConsumerSlowdown.description, _consumer),
        Scenario("database-slowdown", f.DatabaseSlowdown.description, _database),
    )
}


def get(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError:
        known = ", ".join(SCENARIOS)
        raise KeyError(f"unknown scenario {name!r}; known: {known}") from None


def standing_condition(
    world: World, rng: np.random.Generator, start_s: float, faults: list[f.Fault]
) -> f.Fault:
    """A harmless condition beginning at ``start_s`` on a busy service that no fault names:
    what an earlier incident or change leaves standing when the next incident begins."""
    named = _named(world, faults)
    services = [s for s in busy_services(world) if world.topo.services[s].name not in named]
    return f.HeapGrowth(start_s, service=_pick(rng, services))


def _named(world: World, faults: list[f.Fault]) -> set[str]:
    """The entities ``faults`` name as their cause or accept as one."""
    return {
        str(e["name"]) for fault in faults for e in [fault.entity(world), *fault.acceptable(world)]
    }


EARLIER_INCIDENT_DURATION_S = 180.0
"""How long an earlier incident lasts (``earlier_incident``)."""


def earlier_incident(
    world: World, rng: np.random.Generator, start_s: float, faults: list[f.Fault]
) -> f.Fault:
    """A real incident beginning at ``start_s`` between two services that no fault names,
    over after ``EARLIER_INCIDENT_DURATION_S``: one of the busy calls slows down (its callers
    slow down with it), then recovers. When faults follow each other, the previous one's
    deviations are still in the window when the next one's alert fires."""
    named = _named(world, faults)
    calls = []
    for i in busy_calls(world, to_service=True):
        c = world.topo.calls[i]
        caller = int(world.call_service[c.index])
        callee = world.topo.operations[c.target_operation or 0].service
        if not {world.topo.services[caller].name, world.topo.services[callee].name} & named:
            calls.append((caller, callee))
    caller, callee = calls[int(rng.integers(len(calls)))]
    return f.NetworkLatency(
        start_s, duration_s=EARLIER_INCIDENT_DURATION_S, caller=caller, callee=callee
    )
