"""The simulator's physics: faults propagate along the call graph and nowhere else."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from jobs.simulator import faults, scenarios
from jobs.simulator.engine import World
from jobs.simulator.simulation import RunConfig, Simulation
from jobs.simulator.traffic import Seasonality
from tests.simulator.simulated_runs import START_S, RunSummary, run_summary


def callees(world: World) -> dict[int, set[int]]:
    """Service -> services it calls directly (through queues too)."""
    topo = world.topo
    edges: dict[int, set[int]] = {s.index: set() for s in topo.services}
    for c in topo.calls:
        caller = topo.operations[c.caller_operation].service
        if c.target_operation is not None:
            edges[caller].add(topo.operations[c.target_operation].service)
        elif c.target_dependency is not None:
            consumer = topo.dependencies[c.target_dependency].consumer_operation
            if consumer is not None:
                edges[caller].add(topo.operations[consumer].service)
    return edges


def upstream_of(world: World, targets: set[int]) -> set[int]:
    """Services that reach any of ``targets`` through calls (the targets included)."""
    edges = callees(world)
    reached = set(targets)
    changed = True
    while changed:
        changed = False
        for s, out in edges.items():
            if s not in reached and out & reached:
                reached.add(s)
                changed = True
    return reached


def symptoms(run: RunSummary) -> list[str]:
    found = []
    for s in run.sim.topology.services:
        if s.tier == "cron":
            continue
        if run.latency_ratio(s.index, 0.9) > 1.5:
            found.append(f"latency:{s.name}")
        if run.error_ratio(s.index, True) - run.error_ratio(s.index, False) > 0.02:
            found.append(f"errors:{s.name}")
    for key, ratio in run.operation_latency_ratios().items():
        if ratio > 1.5:
            found.append(f"latency:{run.sim.topology.operations[key].name}")
    if run.max_backlog > 500:
        found.append("queue backlog")
    if run.sim.metrics.restarts.sum() > 0:
        found.append("restarts")
    return found


def test_database_fault_slows_its_callers_and_nothing_unrelated(database_run: RunSummary) -> None:
    world = database_run.sim.world
    (fault,) = database_run.sim.faults
    assert isinstance(fault, faults.DatabaseSlowdown)
    db = fault.database
    direct = {
        int(world.call_service[c])
        for c in range(len(world.topo.calls))
        if world.call_dependency[c] == db
    }
    affected = upstream_of(world, direct)
    busy = [
        s.index
        for s in world.topo.services
        if s.tier != "cron" and len(database_run.server_durations(s.index, False)) > 200
    ]
    slowed = [s for s in busy if s in direct and database_run.latency_ratio(s, 0.9) > 1.3]
    assert slowed, "at least one direct caller of the database got slower"
    for s in busy:
        if s not in affected:
            ratio = database_run.latency_ratio(s, 0.5)
            assert 0.9 < ratio < 1.1, (world.topo.services[s].name, ratio)
    unrelated = [s for s in busy if s not in affected]
    assert unrelated, "the test topology must have services that do not use the database"


def test_noisy_neighbour_touches_only_services_on_that_host() -> None:
    run = run_summary("noisy-neighbour", 7, 30.0)
    world = run.sim.world
    (fault,) = run.sim.faults
    assert isinstance(fault, faults.NoisyNeighbour)
    on_host = {p for p in range(len(world.topo.pods)) if world.pod_host[p] == fault.host}
    hosted = {int(world.pod_service[p]) for p in on_host}
    affected = upstream_of(world, hosted)
    for s in hosted:
        pods = on_host & set(world.service_pods[s].tolist())
        before = run.server_durations(s, False, pods)
        after = run.server_durations(s, True, pods)
        if len(before) > 50 and len(after) > 50:
            assert np.median(after) > 1.5 * np.median(before), world.topo.services[s].name
    checked = 0
    for svc in world.topo.services:
        if (
            svc.index in affected
            or svc.tier == "cron"
            or len(run.server_durations(svc.index, False)) < 200
        ):
            continue
        ratio = run.latency_ratio(svc.index, 0.5)
        assert 0.9 < ratio < 1.1, (svc.name, ratio)
        checked += 1
    assert checked > 0


def _cron_config() -> RunConfig:
    # onset aligned with a cron run (every 300 s) so that saturation starts inside the run
    return RunConfig(
        start_s=START_S + 180.0,
        scenario="cron-red-herring",
        seed=11,
        services=12,
        warmup_s=120.0,
        duration_s=120.0,
        peak_rate=40.0,
        metrics=False,
        logs=False,
    )


def test_red_herring_deploy_has_no_effect_of_its_own() -> None:
    with_decoy = Simulation(_cron_config())
    without_decoy = Simulation(_cron_config())
    decoys = {c.change_id for c in with_decoy.red_herrings}
    assert len(decoys) == 1
    decoy = with_decoy.red_herrings[0]
    onset = with_decoy.faults[0].effective_onset_s()
    assert abs(decoy.time_s - onset) <= 60.0, "the decoy lands at the same time as the incident"
    without_decoy.changes = [c for c in without_decoy.changes if c.change_id not in decoys]
    saw_incident = False
    for a, b in zip(with_decoy.slices(), without_decoy.slices(), strict=True):
        for name in ("start_ns", "end_ns", "variant", "pod", "span_key", "span_id"):
            np.testing.assert_array_equal(getattr(a.spans, name), getattr(b.spans, name))
        if a.t0_s > onset + 60:
            saw_incident |= bool(a.state.dep_latency_mult.max() > 5.0)
    assert saw_incident, "the cron job really saturated its database"
    assert with_decoy.versions[decoy.service] != without_decoy.versions[decoy.service]


def test_fault_free_run_shows_only_seasonal_variation() -> None:
    config = RunConfig(
        start_s=START_S - 13 * 3600,
        scenario="normal",
        seed=5,
        services=10,
        warmup_s=0.0,
        duration_s=86400.0,
        slice_s=600.0,
        peak_rate=0.4,
        metrics=False,
        logs=False,
        alerts=False,
    )
    sim = Simulation(config)
    gateway = next(s.index for s in sim.topology.services if s.tier == "gateway")
    hours: dict[int, list[np.ndarray]] = {}
    errors: dict[int, list[int]] = {}
    for result in sim.slices():
        b = result.spans
        mask = (b.service == gateway) & ~b.has_parent
        h = int((result.t0_s - config.start_s) // 3600)
        hours.setdefault(h, []).append((b.end_ns[mask] - b.start_ns[mask]) / 1e6)
        errors.setdefault(h, []).append(int((b.variant[mask] > 0).sum()))
        assert result.state.dep_latency_mult.max() < 1.2
        assert result.state.queue_backlog.max() == 0.0
    counts = np.array([sum(len(x) for x in hours[h]) for h in sorted(hours)])
    expected = Seasonality(peak_rate=0.4).rate_at(config.start_s + 3600 * np.arange(24) + 1800)
    assert np.corrcoef(counts, expected)[0, 1] > 0.95
    assert counts.max() > 2 * counts.min(), "a real daily cycle"
    medians = np.array([np.median(np.concatenate(hours[h])) for h in sorted(hours)])
    assert np.all(np.abs(medians / np.median(medians) - 1.0) < 0.25)
    error_ratio = np.array([sum(errors[h]) for h in sorted(errors)]) / counts
    assert error_ratio.max() < 0.02


def test_fault_free_short_run_has_no_symptoms_and_no_alerts(normal_run: RunSummary) -> None:
    assert symptoms(normal_run) == []
    assert not [r for r in normal_run.records if r.topic == "alerts"]


FAULT_SCENARIOS = [n for n in scenarios.SCENARIOS if n != "normal"]


@pytest.mark.parametrize("name", FAULT_SCENARIOS)
def test_every_fault_class_runs_and_has_symptoms(name: str) -> None:
    aligned = {"start_s": START_S + 180.0, "warmup_s": 120.0, "duration_s": 120.0}
    overrides = aligned if name == "cron-red-herring" else {}
    run = run_summary(name, 7, 30.0, **overrides)
    labels = run.sim.labels()
    label: dict[str, Any] = labels["faults"][0]  # type: ignore[index]
    assert len(labels["faults"]) == 1  # type: ignore[arg-type]
    assert label["fault_class"] in {cls.fault_class for cls in faults.FAULT_CLASSES}
    assert label["entity"]["kind"] in {
        "service",
        "operation",
        "host",
        "database",
        "cache",
        "queue",
        "external",
    }
    assert label["onset"] >= labels["onset"]
    found = symptoms(run)
    assert found, f"{name}: no measurable symptom"


def test_fault_library_has_at_least_twelve_classes() -> None:
    classes = {cls.fault_class for cls in faults.FAULT_CLASSES}
    assert len(classes) >= 12
    used = set()
    for scenario in scenarios.SCENARIOS.values():
        sim_faults = scenario.build(
            Simulation(RunConfig(start_s=START_S, services=16, seed=1)).world,
            np.random.default_rng(0),
            START_S,
        )
        used |= {f.fault_class for f in sim_faults}
    assert used == classes


def test_a_standing_condition_raises_one_services_memory_and_harms_nothing() -> None:
    base = {"start_s": START_S, "services": 14, "warmup_s": 240.0, "duration_s": 60.0}
    config = RunConfig(scenario="cpu-saturation", seed=3, peak_rate=30.0, **base)
    with_condition = Simulation(replace(config, standing_condition_s=180.0))
    without = Simulation(config)
    [condition] = with_condition.standing
    [fault] = with_condition.faults
    assert condition.entity(with_condition.world) != fault.entity(with_condition.world)
    assert condition.onset_s == config.onset_s - 180.0
    labels = with_condition.labels()
    assert labels["standing_conditions"][0]["entity"] == condition.entity(with_condition.world)  # type: ignore[index]
    assert "standing_conditions" not in without.labels()
    pods = with_condition.world.service_pods[condition.service]  # type: ignore[attr-defined]
    grew = False
    for a, b in zip(with_condition.slices(), without.slices(), strict=True):
        for name in ("start_ns", "end_ns", "variant", "pod", "span_key"):
            np.testing.assert_array_equal(getattr(a.spans, name), getattr(b.spans, name))
        others = np.setdiff1d(np.arange(len(a.state.pod_memory_bytes)), pods)
        np.testing.assert_array_equal(
            a.state.pod_memory_bytes[others], b.state.pod_memory_bytes[others]
        )
        if a.t0_s >= condition.onset_s + 60.0:
            memory = a.state.pod_memory_bytes[pods]
            limit = with_condition.world.pod_memory_limit[pods]
            assert (memory > 1.2 * b.state.pod_memory_bytes[pods]).all()
            assert (memory < 0.8 * limit).all(), "below where collection slows requests"
            grew = True
    assert grew


def test_an_earlier_incident_slows_one_call_and_is_over_before_the_fault() -> None:
    base = {"start_s": START_S, "services": 14, "warmup_s": 600.0, "duration_s": 60.0}
    config = RunConfig(scenario="memory-leak", seed=3, peak_rate=30.0, **base)
    with_earlier = Simulation(replace(config, earlier_incident_s=420.0))
    without = Simulation(config)
    [earlier] = with_earlier.earlier
    [fault] = with_earlier.faults
    world = with_earlier.world
    assert isinstance(earlier, faults.NetworkLatency)
    assert {earlier.caller, earlier.callee}.isdisjoint({fault.service})  # type: ignore[attr-defined]
    assert earlier.onset_s == config.onset_s - 420.0
    assert earlier.onset_s + scenarios.EARLIER_INCIDENT_DURATION_S < fault.onset_s
    [label] = with_earlier.labels()["earlier_incidents"]  # type: ignore[misc]
    assert label["entity"] == earlier.entity(world)
    assert label["end"] is not None
    assert "earlier_incidents" not in without.labels()
    n_ops = len(world.topo.operations)
    slowed = [
        n_ops + c.index
        for c in world.topo.calls
        if world.call_service[c.index] == earlier.caller
        and c.target_operation is not None
        and world.topo.operations[c.target_operation].service == earlier.callee
    ]

    def mean_ms(batch: Any) -> float:
        on = np.isin(batch.span_key, slowed)
        return float(((batch.end_ns[on] - batch.start_ns[on]) / 1e6).mean())

    during, after = [], []
    for a, b in zip(with_earlier.slices(), without.slices(), strict=True):
        end = earlier.onset_s + earlier.duration_s
        if earlier.onset_s <= a.t0_s < end:
            during.append(mean_ms(a.spans) - mean_ms(b.spans))
        elif a.t0_s >= end + 30.0:
            after.append(mean_ms(a.spans) / mean_ms(b.spans))
    # its calls are slower while it lasts, as fast as without it after
    assert during and min(during) > 100.0
    assert after and max(abs(x - 1.0) for x in after) < 0.2
