"""The world-model worker through the real broker: `kill -9` mid-stream and a restart give the
same model as an uninterrupted run (checkpoints compared byte for byte)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import orjson
import pytest

from pipeline import kafka
from pipeline.platform import Platform
from pipeline.segments.store import SegmentStore
from pipeline.testing import BASE_NS, log_request, metric_request, span_request
from pipeline.worldmodel.model import WorldModel
from pipeline.worldmodel.worker import CHECKPOINT_NAME, MODEL_SIGNALS
from tests.ingest.test_ingest_kafka import (
    _high_water,
    _isolated_settings,
    _start,
    _stop,
    _wait_stored,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MINUTE = 60 * 10**9


def _model(store_dir: Path) -> WorldModel:
    return WorldModel.restore((store_dir / "_state" / CHECKPOINT_NAME).read_bytes())


def _wait_applied(
    store_dir: Path, proc: subprocess.Popen[bytes], log: Path, timeout: float = 90
) -> WorldModel:
    store = SegmentStore(store_dir)
    wanted = [m for m in store.manifests() if m.signal in MODEL_SIGNALS]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        path = store_dir / "_state" / CHECKPOINT_NAME
        if path.exists():
            model = _model(store_dir)
            if all(model.already_applied(m) for m in wanted):
                return model
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.2)
    raise AssertionError(f"world model did not catch up\n{log.read_text()[-3000:]}")


def test_world_model_restart_after_kill_9_equals_uninterrupted(
    platform: Platform, tmp_path: Path
) -> None:
    settings, env = _isolated_settings(platform, tmp_path / "a")
    env["WORLDLINE_SEGMENT_MAX_RECORDS"] = "3"
    for logical, make in (
        ("otlp_spans", span_request),
        ("otlp_logs", log_request),
        ("otlp_metrics", metric_request),
    ):
        payloads = [
            make(seed, start_ns=BASE_NS + (seed // 4) * MINUTE).SerializeToString()
            for seed in range(48)
        ]
        asyncio.run(
            kafka.produce(
                platform.bootstrap_servers, settings.topic(logical), [(None, p) for p in payloads]
            )
        )
    log = tmp_path / "workers.log"
    store_a = tmp_path / "a" / "segments"
    ingest = [
        _start(env, stage, log) for stage in ("ingest-spans", "ingest-logs", "ingest-metrics")
    ]
    try:
        for proc, (signal_name, logical) in zip(
            ingest,
            (("spans", "otlp_spans"), ("logs", "otlp_logs"), ("metrics", "otlp_metrics")),
            strict=True,
        ):
            _wait_stored(
                store_a,
                signal_name,
                settings.topic(logical),
                _high_water(settings, logical),
                proc,
                log,
            )
    finally:
        for proc in ingest:
            _stop(proc)
    store_b = tmp_path / "b" / "segments"
    shutil.copytree(store_a, store_b, ignore=shutil.ignore_patterns("_state"))
    shutil.copytree(
        store_a / "_state", store_b / "_state"
    )  # the log miners, not a model checkpoint
    assert not (store_b / "_state" / CHECKPOINT_NAME).exists()

    # A: uninterrupted
    env_a = dict(env, WORLDLINE_CHECKPOINT_EVERY_S="0.05", WORLDLINE_CATCH_UP_CHUNK="4")
    worker = _start(env_a, "world-model", log)
    try:
        straight = _wait_applied(store_a, worker, log)
    finally:
        _stop(worker)
    straight = _model(store_a)  # the final checkpoint written at shutdown

    # B: killed as soon as its first checkpoint exists, then restarted
    env_b = dict(env_a, WORLDLINE_DATA_DIR=str(tmp_path / "b"))
    worker = _start(env_b, "world-model", log)
    checkpoint = store_b / "_state" / CHECKPOINT_NAME
    deadline = time.monotonic() + 60
    while not checkpoint.exists() and time.monotonic() < deadline:
        assert worker.poll() is None, log.read_text()[-3000:]
        time.sleep(0.01)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    total = len([m for m in SegmentStore(store_b).manifests() if m.signal in MODEL_SIGNALS])
    partial = _model(store_b)
    assert (
        sum(
            1
            for m in SegmentStore(store_b).manifests()
            if m.signal in MODEL_SIGNALS and partial.already_applied(m)
        )
        < total
    )
    worker = _start(env_b, "world-model", log)
    try:
        _wait_applied(store_b, worker, log)
    finally:
        _stop(worker)
    restarted = _model(store_b)

    assert restarted.baselines.snapshot() == straight.baselines.snapshot()
    assert restarted.checkpoint() == straight.checkpoint()
    assert len(straight.baselines) > 50
    assert straight.closed_through >= BASE_NS + 3 * MINUTE  # the slowest partition holds time back
    stats = orjson.loads((tmp_path / "b" / "stats" / "world-model.json").read_bytes())
    assert stats["segments_applied"] > 0
