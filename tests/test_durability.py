"""Fault injection through the real embedded broker and `worldline up`: after each fault, the
store holds every span that was acknowledged, each exactly once.

- `up` stopped with records in flight, then started again on the same data directory (the
  in-memory broker numbers the new records from 0 again);
- `kill -9` of an ingest stage under load, restarted by the supervisor;
- `kill -9` of the broker: `up` fails loudly; with durable storage (S3, here moto's server) a
  restart loses nothing;
- `kill -9` of `up` while its broker is frozen: every stage is gone within its orphan grace,
  though its graceful shutdown hangs on the broker.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import orjson
import pytest
from moto.server import ThreadedMotoServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from pipeline import kafka
from pipeline.broker import free_port
from pipeline.segments.store import SegmentStore
from pipeline.testing import span_request
from pipeline.workers import ORPHAN_GRACE_S
from tests.conftest import pid_alive, worldline_cmd

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SpanId = tuple[bytes, bytes]


def _up(data_dir: Path, stages: str, extra: dict[str, str] | None = None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORLDLINE_")}
    env.update(
        WORLDLINE_DATA_DIR=str(data_dir),
        WORLDLINE_HTTP_PORT="0",
        WORLDLINE_SEGMENT_MAX_RECORDS="10",
        WORLDLINE_SEGMENT_MAX_SECONDS="0.5",
        **(extra or {}),
    )
    return subprocess.Popen(
        [*worldline_cmd(), "up", "--stages", stages, "--status-every", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def _is_stage(pid: int) -> bool:
    try:
        return b"pipeline.cli" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False


def _wait(what: str, ok: Callable[[], bool], proc: subprocess.Popen[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"worldline up exited ({proc.returncode}) before {what}: {err}")
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {timeout:g} s")
        time.sleep(0.2)


def _running(data_dir: Path, proc: subprocess.Popen[str], stages: int) -> str:
    """Wait until `up` runs its broker and ``stages`` stage processes; its bootstrap servers."""
    runtime = data_dir / "runtime" / "broker.json"
    _wait("running", lambda: runtime.exists() and len(_children(proc.pid)) == 1 + stages, proc, 60)
    return str(orjson.loads(runtime.read_bytes())["bootstrap_servers"])


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    return stderr


def _produce(bootstrap: str, requests: list[ExportTraceServiceRequest]) -> None:
    """Send and wait for the broker's acknowledgement of every record (acks=all)."""
    asyncio.run(
        kafka.produce(bootstrap, "otlp_spans", [(None, r.SerializeToString()) for r in requests])
    )


def _requests(seeds: range) -> list[ExportTraceServiceRequest]:
    return [span_request(seed, traces=3) for seed in seeds]


def _produced(requests: list[ExportTraceServiceRequest]) -> Counter[SpanId]:
    return Counter(
        (s.trace_id, s.span_id)
        for r in requests
        for rs in r.resource_spans
        for ss in rs.scope_spans
        for s in ss.spans
    )


def _stored(data_dir: Path) -> Counter[SpanId]:
    store = SegmentStore(data_dir / "segments")
    out: Counter[SpanId] = Counter()
    for m in store.manifests("spans"):
        table = store.read(m).select(["trace_id", "span_id"])
        out.update(zip(table["trace_id"].to_pylist(), table["span_id"].to_pylist(), strict=True))
    return out


def _stats(data_dir: Path, stage: str) -> dict[str, int]:
    return dict(orjson.loads((data_dir / "stats" / f"{stage}.json").read_bytes()))


def test_up_stopped_with_records_in_flight_and_started_again_loses_nothing(
    tmp_path: Path,
) -> None:
    """The issue's case: the in-memory broker of the second run numbers its records from 0
    again; they are new records, not re-deliveries of the first run's."""
    first, second = _requests(range(0, 40)), _requests(range(100, 112))
    proc = _up(tmp_path, "ingest-spans")
    _produce(_running(tmp_path, proc, 1), first)
    stderr = _stop(proc)  # at once: the stage has not read them yet
    assert "letting the stages read what the broker holds" in stderr
    assert _stored(tmp_path) == _produced(first)

    proc = _up(tmp_path, "ingest-spans")
    _produce(_running(tmp_path, proc, 1), second)
    want = _produced(first + second)
    _wait("stored", lambda: _stored(tmp_path) == want, proc, 60)
    _stop(proc)
    assert _stored(tmp_path) == want and max(want.values()) == 1
    stats = _stats(tmp_path, "ingest-spans")
    assert stats["records_stored"] == len(second)
    assert stats.get("redelivered_skipped", 0) == 0
    epochs = {m.source.epoch for m in SegmentStore(tmp_path / "segments").manifests("spans")}
    assert len(epochs) == 2 and "" not in epochs


def test_kill_9_of_an_ingest_stage_under_load_loses_nothing(tmp_path: Path) -> None:
    requests = _requests(range(200, 280))
    proc = _up(tmp_path, "ingest-spans")
    bootstrap = _running(tmp_path, proc, 1)
    [stage] = [c for c in _children(proc.pid) if _is_stage(c)]

    def load() -> None:
        for i in range(0, len(requests), 5):
            _produce(bootstrap, requests[i : i + 5])
            time.sleep(0.1)

    producer = threading.Thread(target=load)
    producer.start()
    try:
        _wait("sealing", lambda: bool(_stored(tmp_path)), proc, 60)
        os.kill(stage, signal.SIGKILL)  # mid-stream: some batches sealed, others not
    finally:
        producer.join()
    want = _produced(requests)
    assert _stored(tmp_path) != want
    _wait("stored", lambda: _stored(tmp_path) == want, proc, 90)
    restarted = [c for c in _children(proc.pid) if _is_stage(c)]
    stderr = _stop(proc)
    assert restarted and stage not in restarted
    assert "stage ingest-spans exited with code -9; restarted" in stderr
    assert _stored(tmp_path) == want and max(want.values()) == 1


@pytest.fixture()
def s3_storage() -> Iterator[dict[str, str]]:
    """An S3-compatible object store on a loopback port (moto's server) with one bucket, and
    the environment that points the broker at it."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": "worldline",
        "AWS_SECRET_ACCESS_KEY": "worldline",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT": f"http://127.0.0.1:{port}",
        "AWS_ALLOW_HTTP": "true",
    }
    boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    ).create_bucket(Bucket="worldline")
    try:
        yield {**env, "WORLDLINE_BROKER_STORAGE": "s3://worldline/"}
    finally:
        server.stop()


def test_kill_9_of_a_durable_broker_fails_loudly_and_a_restart_loses_nothing(
    tmp_path: Path, s3_storage: dict[str, str]
) -> None:
    first, second = _requests(range(300, 340)), _requests(range(400, 412))
    proc = _up(tmp_path, "ingest-spans", s3_storage)
    bootstrap = _running(tmp_path, proc, 1)
    _produce(bootstrap, first[:10])
    _wait("sealing", lambda: bool(_stored(tmp_path)), proc, 60)
    _produce(bootstrap, first[10:])
    [broker] = [c for c in _children(proc.pid) if not _is_stage(c)]
    os.kill(broker, signal.SIGKILL)  # what the stage had not read is only in the object store
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "the embedded broker exited: its records are kept in s3://worldline/" in stderr

    proc = _up(tmp_path, "ingest-spans", s3_storage)
    _produce(_running(tmp_path, proc, 1), second)
    want = _produced(first + second)
    _wait("stored", lambda: _stored(tmp_path) == want, proc, 90)
    _stop(proc)
    assert _stored(tmp_path) == want and max(want.values()) == 1
    # one broker epoch: the same cluster id, kept in the data directory, names the storage
    epochs = {m.source.epoch for m in SegmentStore(tmp_path / "segments").manifests("spans")}
    assert len(epochs) == 1
    assert (tmp_path / "broker-cluster-id").read_text().strip()


def test_every_stage_is_gone_soon_after_up_is_killed_while_their_shutdown_hangs(
    tmp_path: Path,
) -> None:
    """`kill -9` of `up` while its broker is frozen (SIGSTOP: connections are accepted, nothing
    is answered): the stages' graceful shutdown waits on the broker, and the orphan watch ends
    them within its grace all the same."""
    proc = _up(tmp_path, "ingest-spans,world-model")
    bootstrap = _running(tmp_path, proc, 2)
    _produce(bootstrap, _requests(range(500, 520)))
    _wait("sealing", lambda: bool(_stored(tmp_path)), proc, 60)
    children = _children(proc.pid)
    stages = [c for c in children if _is_stage(c)]
    [broker] = [c for c in children if c not in stages]
    os.kill(broker, signal.SIGSTOP)
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
        deadline = time.monotonic() + ORPHAN_GRACE_S + 10
        while any(pid_alive(c) for c in stages) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [c for c in stages if pid_alive(c)]
    finally:
        os.kill(broker, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while pid_alive(broker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(broker)
