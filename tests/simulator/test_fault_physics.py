"""Each fault class leaves the traces a real one would, on the entities it should touch."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from jobs.simulator import faults
from jobs.simulator.engine import CAUSE_POOL, CLIENT_DEPENDENCY, SERVER
from jobs.simulator.simulation import RunConfig, Simulation
from jobs.simulator.telemetry import JOB_RUN_DURATION_BOUNDS
from tests.simulator.simulated_runs import SMALL, START_S, RunSummary, run_summary


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


def calls_into(run: RunSummary, service: int) -> set[int]:
    topo = run.sim.topology
    return {
        c.index
        for c in topo.calls
        if c.target_operation is not None and topo.operations[c.target_operation].service == service
    }


def received_rate(run: RunSummary, service: int, after: bool, from_s: float = 0.0) -> float:
    """Requests per second the service received (its server spans, retries included)."""
    starts = [
        b.start_ns[(b.role == SERVER) & (b.service == service)]
        for b in (run.after if after else run.before)
    ]
    t = np.concatenate(starts) / 1e9 if starts else np.zeros(0)
    t = t[t >= from_s]
    return len(t) / max(float(t.max() - t.min()), 1e-9) if len(t) > 1 else 0.0


def check_retry_storm(run: RunSummary, fault: faults.Fault) -> None:
    assert isinstance(fault, faults.RetryStorm)
    keys = {n_ops(run) + c for c in calls_into(run, fault.service)}
    # retries are real requests: the service receives several times its requests, and keeps
    # receiving them after the burst that triggered the storm is over
    before = received_rate(run, fault.service, False)
    assert received_rate(run, fault.service, True) > 1.5 * before
    after_burst = fault.onset_s + fault.burst_s + 10.0
    assert received_rate(run, fault.service, True, after_burst) > 1.5 * before
    # the callers' client spans repeat: several attempts of one call under one parent span
    clients = run.spans_with_keys(keys, True)
    parents = np.unique(
        np.concatenate([clients.parent_id, clients.span_key[:, None].view(np.uint8)], axis=1),
        axis=0,
        return_counts=True,
    )[1]
    assert parents.max() > 1 and len(clients) > len(parents) * 1.5
    assert np.mean(clients.variant == 2) > 0.5, "attempts time out once the queue is long"
    # the CPU overload comes from that load: the pods run flat out and queue requests
    pods = run.sim.world.service_pods[fault.service][: run.sim.world.replicas[fault.service]]
    assert run.mean_state("pod_cpu_utilization", True)[pods].min() > 0.9
    assert run.mean_state("pod_queue_s", True)[pods].min() > 1.0
    assert run.latency_ratio(fault.service, 0.5) > 2.0


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


def test_without_the_callers_retry_policy_the_burst_passes() -> None:
    """The storm is the retries': the same burst with the callers' own policies leaves the
    service at its normal load once the burst is over."""
    config = RunConfig(start_s=START_S, scenario="retry-storm", seed=7, **SMALL)  # type: ignore[arg-type]
    sim = Simulation(config)
    (fault,) = sim.faults
    assert isinstance(fault, faults.RetryStorm)
    fault.caller_retries = 0
    counts = {"before": 0, "late": 0}
    for result in sim.slices():
        b = result.spans
        received = int(((b.role == SERVER) & (b.service == fault.service)).sum())
        if result.t0_s + config.slice_s <= config.onset_s:
            counts["before"] += received
        elif result.t0_s >= fault.onset_s + fault.burst_s + 15.0:
            counts["late"] += received
    before_s = config.warmup_s
    late_s = config.duration_s - fault.burst_s - 15.0
    assert counts["late"] / late_s < 1.2 * counts["before"] / before_s


def test_cron_saturation_shows_at_the_onset_on_the_labelled_signal() -> None:
    # the run before the onset (grown to 1.6**5 times the base run) and the first minutes after
    run = run_summary(
        "cron-red-herring", 7, 0.0, start_s=START_S - 120.0, warmup_s=420.0, duration_s=180.0
    )
    (fault,) = run.sim.faults
    assert isinstance(fault, faults.CronDatabaseSaturation)
    label = fault.label(run.sim.world)
    assert label["signal"] == "db.client.operation.duration"
    onset = fault.effective_onset_s()
    assert onset == run.sim.config.onset_s
    cron = run.sim.cron
    query = {n_ops(run) + cron.call}
    before, after = run.spans_with_keys(query, False), run.spans_with_keys(query, True)
    assert (before.role == CLIENT_DEPENDENCY).all() and len(before) > 100
    ms = (after.end_ns - after.start_ns) / 1e6
    start_s = after.start_ns / 1e9
    first_minute = ms[start_s < onset + 60.0]
    second_minute = ms[(start_s >= onset + 60.0) & (start_s < onset + 120.0)]
    previous = np.median((before.end_ns - before.start_ns) / 1e6)
    # the job's own queries slow down from the onset: the run's load saturates the database
    assert len(first_minute) > 10 and np.quantile(first_minute, 0.95) > 1.3 * previous
    assert np.median(second_minute) > 2 * previous
    # ... while the run itself never ends, so job.run.duration records nothing after the onset
    runs_after = run.spans_with_keys({cron.operation}, True)
    assert len(runs_after) == 0
    assert len(run.spans_with_keys({cron.operation}, False)) >= 1


def test_job_run_duration_has_buckets_for_job_runs(normal_run: RunSummary) -> None:
    """A 20-second run lands in a finite bucket (request bounds stop at 10 s)."""
    from tests.simulator.test_telemetry import decode

    seen = 0
    for record in normal_run.records:
        if record.topic != "otlp_metrics":
            continue
        for rm in decode(record.topic, record.value).resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name != "job.run.duration":
                        continue
                    for dp in metric.histogram.data_points:
                        assert list(dp.explicit_bounds) == list(JOB_RUN_DURATION_BOUNDS)
                        assert dp.bucket_counts[-1] == 0 and sum(dp.bucket_counts) == dp.count
                        seen += dp.count
    assert seen > 0
