"""The rules behind /healthz and the gauges the world model sets, without a broker."""

from __future__ import annotations

import datetime as dt
import http.client
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from pipeline import selfmetrics
from pipeline.broker import free_port
from pipeline.monitor import LagTrend, Monitor, PartitionLag
from pipeline.segments.store import SegmentStore
from pipeline.settings import Settings
from pipeline.stages import (
    MULTIPROC_ENV,
    RESTART_BACKOFF_S,
    StageProcess,
    StageSupervisor,
    read_stage_states,
)
from pipeline.testing import fill_store
from pipeline.worldmodel.model import WorldModel, WorldModelConfig
from pipeline.worldmodel.worker import catch_up


def test_lag_that_returns_to_its_floor_is_not_growing() -> None:
    """A consumer that keeps up: lag climbs between commits and falls back to 0 at each."""
    trend = LagTrend()
    for t in range(0, 200, 5):
        trend.add(float(t), (t % 20) * 50, window_s=60)
    assert trend.growing(200.0, 60, 100) is None


def test_a_rising_floor_is_growing_once_two_windows_are_seen() -> None:
    trend = LagTrend()
    for t in range(0, 60, 5):
        trend.add(float(t), 1000 + t * 10, window_s=60)
        assert trend.growing(float(t), 60, 100) is None  # one window is not enough to tell
    for t in range(60, 125, 5):
        trend.add(float(t), 1000 + t * 10 - (t % 20) * 5, window_s=60)
    floor, before = trend.growing(125.0, 60, 100) or (0, 0)
    assert floor > before >= 1000


def test_growth_below_the_floor_setting_is_not_reported() -> None:
    trend = LagTrend()
    for t in range(0, 125, 5):
        trend.add(float(t), t // 10, window_s=60)
    assert trend.growing(125.0, 60, 100) is None
    assert trend.growing(125.0, 60, 1) is not None


def test_samples_older_than_two_windows_are_dropped() -> None:
    trend = LagTrend()
    for t in range(0, 1000, 5):
        trend.add(float(t), 1, window_s=60)
    assert len(trend.samples) <= 2 * 60 // 5 + 1


def test_a_partition_never_committed_lags_by_all_it_holds() -> None:
    assert PartitionLag("ingest-spans", "otlp_spans", 0, 12, None).lag == 12
    assert PartitionLag("ingest-spans", "otlp_spans", 0, 12, 10).lag == 2


def test_model_gauges_are_its_sizes_and_caps(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path / "segments")
    fill_store(store, 3, dt.datetime(2025, 11, 20, tzinfo=dt.UTC))
    model = WorldModel(WorldModelConfig(interval_s=60.0))
    catch_up(store, model)
    selfmetrics.set_model_gauges(model, now_s=model.watermark / 1e9 + 30.0)

    def sample(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, labels)

    assert sample("worldline_model_size", kind="graph_edges") == len(model.graph.edges)
    assert sample("worldline_model_size", kind="baseline_series") == len(model.baselines)
    assert sample("worldline_model_size", kind="metric_series") == len(model.metric_series) > 0
    assert sample("worldline_model_cap", kind="graph_edges") == model.graph.config.max_edges
    assert sample("worldline_model_size", kind="counter_state") == len(model.metrics.last)
    assert sample("worldline_model_cap", kind="baseline_series") == model.baselines.max_series
    assert sample("worldline_model_dropped", reason="late_rows") == model.dropped["late_rows"]
    assert sample("worldline_model_watermark_seconds") == model.watermark / 1e9
    assert sample("worldline_model_watermark_delay_seconds") == 30.0


def test_counter_feed_adds_only_what_grew() -> None:
    feed = selfmetrics.CounterFeed()
    before = REGISTRY.get_sample_value("worldline_records_in_total", {"stage": "feed-test"}) or 0
    counters = {"records_stored": 3, "redelivered_skipped": 1, "refused_empty_record": 2}
    selfmetrics.feed_ingest(feed, "feed-test", counters)
    selfmetrics.feed_ingest(feed, "feed-test", counters)  # nothing new: nothing added
    counters["records_stored"] = 5
    selfmetrics.feed_ingest(feed, "feed-test", counters)
    after = REGISTRY.get_sample_value("worldline_records_in_total", {"stage": "feed-test"})
    assert after == before + 8
    assert (
        REGISTRY.get_sample_value(
            "worldline_deadletters_total", {"stage": "feed-test", "reason": "empty_record"}
        )
        == 2
    )


def test_a_stage_on_its_own_serves_its_metrics_on_metrics_port(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    port = free_port()
    settings = Settings(data_dir=tmp_path, metrics_port=port)
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    assert selfmetrics.serve_own_metrics(settings) is None  # under `up`: the HTTP server serves
    monkeypatch.delenv(MULTIPROC_ENV)
    assert selfmetrics.serve_own_metrics(Settings(data_dir=tmp_path)) is None  # off by default
    server = selfmetrics.serve_own_metrics(settings)
    try:
        selfmetrics.RECORDS_IN.labels("own-port-test").inc(2)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/metrics")
        body = connection.getresponse().read().decode()
        connection.close()
    finally:
        server.shutdown()
        server.server_close()
    values = {
        (s.name, tuple(s.labels.items())): s.value
        for f in text_string_to_metric_families(body)
        for s in f.samples
    }
    assert values[("worldline_records_in_total", (("stage", "own-port-test"),))] == 2


def test_healthz_names_a_stage_whose_lag_grows(tmp_path: Path) -> None:
    monitor = Monitor(Settings(data_dir=tmp_path, health_lag_window_s=60), "127.0.0.1:1")
    monitor.broker_up = True
    monitor.checked_at = time.monotonic()
    monitor.lag = [PartitionLag("ingest-logs", "otlp_logs", 0, 5000, 1000)]
    now = time.monotonic()
    trend = monitor.trends.setdefault("ingest-logs", LagTrend())
    for i in range(25):  # two windows of a floor rising from 1000 to 4000
        trend.add(now - 120 + i * 5, 1000 + i * 125, window_s=60)
    ok, reasons, checks = monitor.health()
    assert not ok
    [reason] = reasons
    assert reason.startswith("consumer lag of ingest-logs grows")
    assert checks["lag"]["ingest-logs"] == {"records": 4000, "growing": True}
    monitor.broker_up = False
    monitor.broker_error = "Connection refused"
    ok, reasons, _ = monitor.health()
    assert not ok and any("unreachable" in r and "Connection refused" in r for r in reasons)


def test_the_supervisor_records_a_crashed_stage_until_it_restarts(tmp_path: Path) -> None:
    """``runtime/stages.json`` follows the supervisor: down while the stage waits for its
    backoff, running again (new pid, one restart) after; /healthz reads it."""
    settings = Settings(data_dir=tmp_path)

    class Crashing(StageSupervisor):
        def _launch(self, stage: str) -> StageProcess:
            proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
            proc.wait()
            return StageProcess(stage, proc, tmp_path / f"{stage}.log")

    supervisor = Crashing(settings, "127.0.0.1:1")
    supervisor.start(["world-model"], now=0.0)
    first_pid = read_stage_states(settings)["world-model"]["pid"]
    monitor = Monitor(settings, "127.0.0.1:1")
    [health] = monitor.stages()
    assert not health.up  # it had exited already when the states were written
    assert supervisor.restart_crashed(1.0) == []  # seen: waits for its backoff
    state = read_stage_states(settings)["world-model"]
    assert state["running"] is False and state["returncode"] == 3
    ok, reasons, _ = monitor.health()
    assert not ok and reasons == [
        "stage world-model is down: exited with code 3; restarting (restart 1)"
    ]
    assert len(supervisor.restart_crashed(1.0 + RESTART_BACKOFF_S[0])) == 1
    state = read_stage_states(settings)["world-model"]
    assert state["pid"] != first_pid and state["restarts"] == 1
