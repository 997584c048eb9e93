"""Ingest workers through the real embedded broker: what is produced is what is stored, even
after `kill -9` of a worker mid-stream; bad records end in `deadletter` and never stop it."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import orjson
import pyarrow as pa
import pytest
from aiokafka import TopicPartition

from pipeline import kafka
from pipeline.ingest.logs import MinerStates
from pipeline.ingest.metrics import metrics_tables
from pipeline.ingest.spans import spans_table
from pipeline.platform import Platform
from pipeline.segments.audit import content_digest
from pipeline.segments.store import SegmentStore
from pipeline.settings import Settings
from pipeline.testing import log_request, metric_request, span_request
from tests.conftest import worldline_cmd

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SPAN_COLUMNS = [
    "trace_id",
    "span_id",
    "parent_span_id",
    "service",
    "name",
    "kind",
    "start_unix_nano",
    "duration_ns",
    "status_code",
    "db_system",
    "attributes",
]


def _isolated_settings(platform: Platform, data_dir: Path) -> tuple[Settings, dict[str, str]]:
    suffix = uuid.uuid4().hex[:8]
    renames = {
        t: f"{t}-{suffix}"
        for t in ("otlp_spans", "otlp_metrics", "otlp_logs", "deadletter", "segments.sealed")
    }
    settings = Settings(
        bootstrap_servers=platform.bootstrap_servers,
        data_dir=data_dir,
        topics=renames,
        segment_max_records=15,
        segment_max_seconds=1.0,
    )
    asyncio.run(kafka.ensure_topics(settings, platform.bootstrap_servers))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORLDLINE_")}
    env.update(
        WORLDLINE_BOOTSTRAP_SERVERS=platform.bootstrap_servers,
        WORLDLINE_DATA_DIR=str(data_dir),
        WORLDLINE_SEGMENT_MAX_RECORDS="15",
        WORLDLINE_SEGMENT_MAX_SECONDS="1.0",
        # a batch of 15 records carries more: sealed in parts, each part exactly once
        WORLDLINE_SEGMENT_MAX_ITEMS="100",
        WORLDLINE_LOG_LEVEL="INFO",
    )
    for logical, actual in renames.items():
        env[f"WORLDLINE_TOPIC_{logical.replace('.', '_').upper()}"] = actual
    return settings, env


def _produce(settings: Settings, logical: str, payloads: list[bytes]) -> None:
    asyncio.run(
        kafka.produce(
            settings.bootstrap_servers or "", settings.topic(logical), [(None, p) for p in payloads]
        )
    )


def _start(env: dict[str, str], stage: str, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*worldline_cmd(), "worker", stage],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def _high_water(settings: Settings, logical: str) -> dict[int, int]:
    topic = settings.topic(logical)
    tps = [TopicPartition(topic, p) for p in range(4)]
    hws = asyncio.run(kafka.high_water_marks(settings.bootstrap_servers or "", tps))
    return {tp.partition: hw for tp, hw in hws.items()}


def _wait_stored(
    store_dir: Path,
    signal_name: str,
    topic: str,
    hws: dict[int, int],
    proc: subprocess.Popen[bytes],
    log: Path,
    timeout: float = 90,
) -> None:
    deadline = time.monotonic() + timeout
    want = {p: hw - 1 for p, hw in hws.items() if hw > 0}
    while time.monotonic() < deadline:
        store = SegmentStore(store_dir)
        epochs = {m.source.epoch for m in store.manifests(signal_name) if m.source.topic == topic}
        assert len(epochs) <= 1, f"one broker, one epoch: {epochs}"
        have = store.durable_offsets(signal_name, topic, *epochs)
        if all(have.get(p, -1) >= off for p, off in want.items()):
            return
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.3)
    raise AssertionError(
        f"not all of {topic} stored in time: want {want}, have {have}\n{log.read_text()[-3000:]}"
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _tables(store: SegmentStore, signal_name: str) -> list[pa.Table]:
    return [store.read(m) for m in store.manifests(signal_name)]


def test_spans_survive_kill_9_exactly_once(platform: Platform, tmp_path: Path) -> None:
    settings, env = _isolated_settings(platform, tmp_path)
    requests = [span_request(seed, traces=8) for seed in range(240)]
    payloads = [r.SerializeToString() for r in requests]
    garbage = [b"\x0a\xff\xff", b"{oops", payloads[0][:7]]
    _produce(settings, "otlp_spans", payloads[:120] + garbage + payloads[120:])
    log = tmp_path / "worker.log"
    store_dir = tmp_path / "segments"

    worker = _start(env, "ingest-spans", log)
    deadline = time.monotonic() + 90
    while not SegmentStore(store_dir).manifests("spans") and time.monotonic() < deadline:
        assert worker.poll() is None, log.read_text()[-3000:]
        time.sleep(0.1)
    os.kill(worker.pid, signal.SIGKILL)  # mid-stream: some segments sealed, most not
    worker.wait()
    partial = len(SegmentStore(store_dir).manifests("spans"))
    assert partial >= 1

    hws = _high_water(settings, "otlp_spans")
    assert sum(hws.values()) == len(payloads) + len(garbage)
    worker = _start(env, "ingest-spans", log)
    try:
        _wait_stored(store_dir, "spans", settings.topic("otlp_spans"), hws, worker, log)
    finally:
        _stop(worker)

    store = SegmentStore(store_dir)
    assert len(store.manifests("spans")) > partial
    stored = content_digest(_tables(store, "spans"), SPAN_COLUMNS)
    expected = content_digest([spans_table(requests)], SPAN_COLUMNS)
    assert stored == expected  # same rows, nothing missing, nothing twice

    # the garbage is in the dead-letter topic, with reasons and source offsets
    async def letters() -> list[dict[str, object]]:
        out = []
        async for rec in kafka.tail(
            settings.bootstrap_servers or "",
            settings.topic("deadletter"),
            from_beginning=True,
            limit=None,
            idle_timeout_s=3,
        ):
            out.append(orjson.loads(rec.value or b"{}"))
        return out

    docs = asyncio.run(letters())
    assert docs
    assert {d["reason"] for d in docs} <= {"otlp_decode_error", "otlp_json_decode_error"}
    # records without a key land on any partition: a source record is (partition, offset)
    sources = {(d["source"]["partition"], d["source"]["offset"]) for d in docs}  # type: ignore[index]
    assert len(sources) == len(garbage)
    assert {base64.b64decode(str(d["payload_b64"])) for d in docs} == set(garbage)


def test_logs_and_metrics_stored_as_produced(platform: Platform, tmp_path: Path) -> None:
    settings, env = _isolated_settings(platform, tmp_path)
    logs = [log_request(seed, lines=12) for seed in range(60)]
    metrics = [metric_request(seed, points=3) for seed in range(60)]
    _produce(settings, "otlp_logs", [r.SerializeToString() for r in logs])
    _produce(settings, "otlp_metrics", [r.SerializeToString() for r in metrics])
    log = tmp_path / "worker.log"
    store_dir = tmp_path / "segments"
    workers = [_start(env, "ingest-logs", log), _start(env, "ingest-metrics", log)]
    try:
        _wait_stored(
            store_dir,
            "logs",
            settings.topic("otlp_logs"),
            _high_water(settings, "otlp_logs"),
            workers[0],
            log,
        )
        _wait_stored(
            store_dir,
            "metrics",
            settings.topic("otlp_metrics"),
            _high_water(settings, "otlp_metrics"),
            workers[1],
            log,
        )
    finally:
        for w in workers:
            _stop(w)
    store = SegmentStore(store_dir)
    for stage in ("ingest-logs", "ingest-metrics"):
        stats = orjson.loads((tmp_path / "stats" / f"{stage}.json").read_bytes())
        assert stats["item_cap_splits"] > 0  # batches sealed in parts; all stored, checked below

    stored_logs = pa.concat_tables(_tables(store, "logs"))
    states = MinerStates(store.state_dir(), settings.topic("otlp_logs"))
    rebuilt = sorted(
        (t, states.reconstruct(tid, params))
        for t, tid, params in zip(
            stored_logs["time_unix_nano"].to_pylist(),
            stored_logs["template_id"].to_pylist(),
            stored_logs["params"].to_pylist(),
            strict=True,
        )
    )
    produced = sorted(
        (r.time_unix_nano, r.body.string_value)
        for req in logs
        for rl in req.resource_logs
        for sl in rl.scope_logs
        for r in sl.log_records
    )
    assert rebuilt == produced

    series, points = metrics_tables(metrics)
    assert content_digest(_tables(store, "metrics")) == content_digest([points])
    stored_series = {
        sid for t in _tables(store, "metric_series") for sid in t["series_id"].to_pylist()
    }
    assert stored_series == set(series["series_id"].to_pylist())
