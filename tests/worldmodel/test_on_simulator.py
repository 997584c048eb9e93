"""The world model against the simulator's ground truth: a small, fast version of
``benchmarks/eval_worldmodel.py`` (simulate to a bundle, backfill it, read the checkpoint).

Names: the learned graph is compared by ``dependency_pairs(..., bare_names=True)`` with the
simulator's ``topology.edges`` restricted to the calls the run actually made (from the
simulator's own span batches).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from jobs.backfill import backfill_bundle
from jobs.simulator.bundle import BundleWriter
from jobs.simulator.simulation import RunConfig, Simulation
from pipeline.segments.store import SegmentStore
from pipeline.settings import Settings
from pipeline.worldmodel.graph import dependency_pairs, edge_precision_recall
from pipeline.worldmodel.model import WorldModel
from pipeline.worldmodel.worker import checkpoint_path

START_S = 1_763_730_000.0  # 2025-11-21T13:00:00Z
INTERVAL_S = 60.0
NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
Run = tuple[Simulation, WorldModel, dict[int, int]]


def _run(config: RunConfig, root: Path) -> Run:
    sim = Simulation(config)
    n_ops = len(sim.topology.operations)
    first_call: dict[int, int] = {}
    writer = BundleWriter(root / "bundle")
    for part in sim.slices():
        writer.write_all(part.records)
        keys = part.spans.span_key
        for key in np.unique(keys[keys >= n_ops]).tolist():
            if key - n_ops not in first_call:
                first_call[key - n_ops] = int(part.spans.start_ns[keys == key].min())
    writer.close(sim.labels(), {})
    settings = Settings(data_dir=root / "data", interval_s=INTERVAL_S)
    backfill_bundle(root / "bundle", settings, now=NOW)
    store = SegmentStore(settings.data_dir / "segments")
    return sim, WorldModel.restore(checkpoint_path(store).read_bytes()), first_call


@pytest.fixture(scope="module")
def endpoint_errors(tmp_path_factory: pytest.TempPathFactory) -> Run:
    config = RunConfig(
        start_s=START_S,
        scenario="endpoint-errors",
        seed=1,
        services=12,
        warmup_s=2160.0,
        duration_s=360.0,
        slice_s=10.0,
        peak_rate=6.0,
        metrics=False,
        logs=False,
        alerts=False,
        new_call_after_s=1200.0,
    )
    return _run(config, tmp_path_factory.mktemp("endpoint-errors"))


def test_graph_matches_the_simulated_topology(endpoint_errors: Run) -> None:
    sim, model, first_call = endpoint_errors
    learned = dependency_pairs(model.graph.as_of(model.closed_through - 1), bare_names=True)
    exercised = {sim.topology.call_edge(c) for c in first_call}
    truth = {tuple(e) for e in sim.labels()["topology"]["edges"]}  # type: ignore[index]
    precision, _ = edge_precision_recall(learned, truth)
    _, recall = edge_precision_recall(learned, exercised)
    assert precision >= 0.95 and recall >= 0.95, learned ^ exercised
    assert len(exercised) >= 20
    # what a request can take: every exercised call, and the run exercised nearly all of it
    reachable_calls = sim.topology.reachable_calls()
    assert set(first_call) <= reachable_calls
    reachable = {sim.topology.call_edge(c) for c in reachable_calls}
    _, recall_reachable = edge_precision_recall(learned, reachable)
    assert recall_reachable >= 0.95, reachable - learned


def test_a_dependency_added_mid_run_appears_with_its_first_span(endpoint_errors: Run) -> None:
    sim, model, first_call = endpoint_errors
    assert sim.new_call is not None
    edge = sim.topology.call_edge(sim.new_call)
    first = first_call[sim.new_call]
    assert first >= int(sim.new_call_s * 1e9)  # type: ignore[operator]
    before = dependency_pairs(model.graph.as_of(first - 1), bare_names=True)
    within = dependency_pairs(model.graph.as_of(first + int(INTERVAL_S * 1e9)), bare_names=True)
    assert edge not in before
    assert edge in within


def test_fault_onset_within_one_interval(endpoint_errors: Run) -> None:
    sim, model, _ = endpoint_errors
    label = sim.labels()["faults"][0]  # type: ignore[index]
    onset = dt.datetime.fromisoformat(label["onset"].replace("Z", "+00:00")).timestamp()
    entity = f"{label['entity']['kind']}:{label['entity']['name']}"
    baseline = model.baselines.get(entity, "span.error_ratio")
    assert baseline is not None
    estimated = baseline.onset()
    assert estimated is not None, baseline.recent_scores()
    assert abs(estimated - onset) <= INTERVAL_S
    # nothing else was raised before the fault
    all_keys = model.baselines.keys()
    early = [
        key
        for key in all_keys
        if (b := model.baselines.get(*key)) is not None
        and b.alerts_raised
        and ((b.onset() or 0.0) < onset - INTERVAL_S or b.alerts_raised > 1)
    ]
    assert early == []


def test_fault_free_hours_raise_no_alert_worthy_deviation(tmp_path: Path) -> None:
    config = RunConfig(
        start_s=1_763_337_600.0,  # a Monday, 00:00 UTC
        scenario="normal",
        seed=3,
        services=12,
        warmup_s=3 * 3600.0,
        duration_s=0.0,
        slice_s=60.0,
        scrape_interval_s=60.0,
        peak_rate=0.5,
    )
    _, model, _ = _run(config, tmp_path)
    end_s = model.closed_through / 1e9
    episodes = 0
    series_hours = 0.0
    all_keys = model.baselines.keys()
    for key in all_keys:
        baseline = model.baselines.get(*key)
        assert baseline is not None and baseline.first_seen_s is not None
        episodes += baseline.alerts_raised
        series_hours += (end_s - baseline.first_seen_s) / 3600.0
    assert series_hours > 1000
    assert episodes <= series_hours / 1000.0, episodes
