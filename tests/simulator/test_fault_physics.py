"""Each fault class leaves the traces a real one would, on the entities it should touch."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from jobs.simulator import faults
from jobs.simulator.engine import CAUSE_POOL
from tests.simulator.simulated_runs import RunSummary, run_summary


def n_ops(run: RunSummary) -> int:
    return len(run.sim.topology.operations)


def call_keys(run: RunSummary, predicate: Callable[[int], bool]) -> set[int]:
    return {n_ops(run) + c.index for c in run.sim.topology.calls if predicate(c.index)}


def durations(run: RunSummary, keys: set[int], after: bool) -> np.ndarray:
    b = run.spans_with_keys(keys, after)
    return (b.end_ns - b.start_ns) / 1e6


def check_memory_leak(run: RunSummary, fault: faults.Fault) -> None:
    assert isinstance(fault, faults.MemoryLeak)
    pods = set(run.sim.world.service_pods[fault.service].tolist())
    restarted = set(np.flatnonzero(run.sim.metrics.restarts).tolist())
    assert restarted and restarted <= pods
    memory = run.mean_state("pod_memory_bytes", True) / run.sim.world.pod_memory_limit
    others = [p for p in range(len(memory)) if p not in pods]
    assert max(memory[list(pods)]) > max(memory[others])


def check_consumer(run: RunSummary, fault: faults.Fault) -> None:
    assert isinstance(fault, faults.ConsumerSlowdown)
    backlog = run.states_after[-1].queue_backlog
    assert backlog[fault.queue] > 500
    assert np.all(np.delete(backlog, fault.queue) == 0)


def check_cache(run: RunSummary, fault: faults.Fault) -> None:
    assert isinstance(fault, faults.HiddenCacheEviction)
    w = run.sim.world
    assert not run.sim.topology.dependencies[fault.cache].declared
    fallback_dbs = {
        int(w.call_dependency[c])
        for c in range(len(w.call_dependency))
        if w.fallback_cache[c] == fault.cache
    }
    before, after = (
        run.mean_state("dep_utilization", False),
        run.mean_state("dep_utilization", True),
    )
    assert max(after[d] / before[d] for d in fallback_dbs) > 1.3


def check_pool(run: RunSummary, fault: faults.Fault) -> None:
    assert isinstance(fault, faults.ConnectionPoolLeak)
    pooled: dict[int, int] = {}
    for b in run.after:
        for s in np.unique(b.service[b.cause == CAUSE_POOL]).tolist():
            pooled[s] = pooled.get(s, 0) + int(((b.cause == CAUSE_POOL) & (b.service == s)).sum())
    assert set(pooled) == {fault.service} and pooled[fault.service] > 20


def check_network(run: RunSummary, fault: faults.Fault) -> None:
    assert isinstance(fault, faults.NetworkLatency)
    topo = run.sim.topology
    on_link = call_keys(
        run,
        lambda c: (
            topo.calls[c].target_operation is not None
            and int(run.sim.world.call_service[c]) == fault.caller
            and topo.operations[topo.calls[c].target_operation or 0].service == fault.callee
        ),
    )
    assert (
        np.median(durations(run, on_link, True)) - np.median(durations(run, on_link, False)) > 150
    )
    assert 0.85 < run.latency_ratio(fault.callee, 0.5) < 1.15, "the callee itself is healthy"


def check_external(run: RunSummary, fault: faults.Fault) -> None:
    assert isinstance(fault, faults.ExternalApiTimeouts)
    keys = call_keys(run, lambda c: run.sim.world.call_dependency[c] == fault.external)
    before, after = run.spans_with_keys(keys, False), run.spans_with_keys(keys, True)
    assert np.mean(after.variant == 2) > 0.3
    assert np.mean(before.variant == 2) < 0.01


def check_cpu(run: RunSummary, fault: faults.Fault) -> None:
    assert isinstance(fault, faults.CpuSaturation)
    pods = run.sim.world.service_pods[fault.service][: run.sim.world.replicas[fault.service]]
    cpu = run.mean_state("pod_cpu_utilization", True)
    assert cpu[pods].min() > 0.85
    assert run.latency_ratio(fault.service, 0.5) > 1.5


def check_slow_query(run: RunSummary, fault: faults.Fault) -> None:
    assert isinstance(fault, faults.SlowQueryAfterDeploy)
    keys = {n_ops(run) + fault.call}
    assert np.median(durations(run, keys, True)) > 5 * np.median(durations(run, keys, False))
    assert any(c.change_id == fault.change_id and c.kind == "deploy" for c in run.sim.changes)


def check_endpoint(run: RunSummary, fault: faults.Fault) -> None:
    assert isinstance(fault, faults.EndpointErrors)
    spans = run.spans_with_keys({fault.operation}, True)
    assert 0.2 < np.mean(spans.variant > 0) < 0.6
    siblings = set(
        run.sim.topology.services[run.sim.topology.operations[fault.operation].service].operations
    ) - {fault.operation}
    own_errors = run.spans_with_keys(siblings, True)
    if len(own_errors):
        assert np.mean(own_errors.variant > 0) < 0.2


def check_retry_storm(run: RunSummary, fault: faults.Fault) -> None:
    assert isinstance(fault, faults.RetryStorm)
    topo = run.sim.topology
    into = {
        c.index
        for c in topo.calls
        if c.target_operation is not None
        and topo.operations[c.target_operation].service == fault.service
    }
    keys = {n_ops(run) + c for c in into}
    cpu = run.mean_state("pod_cpu_utilization", True)
    assert cpu[run.sim.world.service_pods[fault.service][0]] > 0.9
    assert run.latency_ratio(fault.service, 0.5) > 2.0
    assert len(run.spans_with_keys(keys, True)) > 0


def check_errors_on_service(run: RunSummary, fault: faults.Fault) -> None:
    assert isinstance(fault, faults.BadConfigPush | faults.FeatureFlagErrors)
    assert run.error_ratio(fault.service, True) > run.error_ratio(fault.service, False) + 0.05
    kind = "config" if isinstance(fault, faults.BadConfigPush) else "feature_flag"
    assert any(
        c.change_id == fault.change_id and c.kind == kind and c.service == fault.service
        for c in run.sim.changes
    )


CHECKS: dict[str, Callable[[RunSummary, faults.Fault], None]] = {
    "memory-leak": check_memory_leak,
    "consumer-backlog": check_consumer,
    "hidden-cache-eviction": check_cache,
    "connection-pool-exhaustion": check_pool,
    "network-latency": check_network,
    "external-api-timeouts": check_external,
    "cpu-saturation": check_cpu,
    "slow-query-after-deploy": check_slow_query,
    "endpoint-errors": check_endpoint,
    "retry-storm": check_retry_storm,
    "bad-config-push": check_errors_on_service,
    "feature-flag-errors": check_errors_on_service,
}


@pytest.mark.parametrize("name", list(CHECKS))
def test_fault_physics(name: str) -> None:
    run = run_summary(name, 7, 30.0)
    (fault,) = run.sim.faults
    CHECKS[name](run, fault)
