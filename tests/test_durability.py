"""Fault injection through the real embedded broker and `worldline up`: after each fault, the
store holds every span that was acknowledged, each exactly once.

- `up` stopped with records in flight, then started again on the same data directory (the
  in-memory broker numbers the new records from 0 again);
- `kill -9` of each ingest stage (spans, logs, metrics) under load, restarted by the supervisor;
- `kill -9` of the receiver while a client posts spans: nothing it acknowledged is lost, or
  stored twice;
- `kill -9` of the world-model stage under load: restarted from its checkpoint, it applies every
  sealed segment exactly once (its applied offsets and the spans it buffers);
- `kill -9` of the causal-search stage with alerts arriving: every alert is answered, no update
  of an incident twice; and killed right after saving its answers with its book, and right
  after sending them: every update of an incident is in causes.ranked exactly once;
- `kill -9` of the broker: `up` fails loudly; with durable storage (S3, here moto's server) a
  restart loses nothing;
- `kill -9` of `up` while its broker is frozen: every stage is gone within its orphan grace,
  though its graceful shutdown hangs on the broker.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import orjson
import pytest
from moto.server import ThreadedMotoServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from jobs.causal.outbox import KILL_AT_ENV, KILL_POINTS
from pipeline import kafka
from pipeline.broker import free_port
from pipeline.segments.store import SegmentStore
from pipeline.testing import BASE_NS, log_request, metric_request, span_request
from pipeline.workers import ORPHAN_GRACE_S
from pipeline.worldmodel import reads
from pipeline.worldmodel.model import applied_key
from pipeline.worldmodel.worker import MODEL_SIGNALS, checkpoint_path
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
    )
    env.update(extra or {})
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

    def up() -> bool:
        # a child just forked still shows its parent's command line until it execs: a stage is
        # counted once it reads as one
        children = _children(proc.pid)
        return (
            runtime.exists()
            and len(children) == 1 + stages
            and sum(map(_is_stage, children)) == stages
        )

    _wait("running", up, proc, 60)
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


def _stored(data_dir: Path, kind: str = "spans") -> Counter[Any]:
    """What the store holds, each row by its identity: (trace id, span id) of spans and log
    lines, (time, value) of the metric points whose value is a gauge's (in [0, 1))."""
    store = SegmentStore(data_dir / "segments")
    out: Counter[Any] = Counter()
    columns = ["time_unix_nano", "value"] if kind == "metrics" else ["trace_id", "span_id"]
    for m in store.manifests(kind):
        table = store.read(m).select(columns)
        rows = zip(*(table[c].to_pylist() for c in columns), strict=True)
        if kind == "metrics":
            rows = ((t, v) for t, v in rows if v is not None and 0.0 <= v < 1.0)
        out.update(rows)
    return out


def _stats(data_dir: Path, stage: str) -> dict[str, int]:
    return dict(orjson.loads((data_dir / "stats" / f"{stage}.json").read_bytes()))


def _stage_pid(data_dir: Path, stage: str, timeout_s: float = 20.0) -> int:
    """The pid of ``stage`` as the supervisor recorded it (it writes its record just after
    starting the stages: waited for)."""
    path = data_dir / "runtime" / "stages.json"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return int(orjson.loads(path.read_bytes())["stages"][stage]["pid"])
        except (FileNotFoundError, KeyError, orjson.JSONDecodeError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class _Load:
    """Batches sent one after another from a thread, until ``after`` more have been sent once
    ``stop`` is called: a stage killed in between is killed under load."""

    def __init__(self, send: Callable[[int], None], after: int, pause_s: float = 0.1) -> None:
        self.send, self.after, self.pause_s = send, after, pause_s
        self.sent = 0
        self.left: int | None = None
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        while self.left is None or self.left > 0:
            self.send(self.sent)
            self.sent += 1
            if self.left is not None:
                self.left -= 1
            time.sleep(self.pause_s)

    def stop(self) -> int:
        """Send ``after`` more batches, then end; returns how many were sent before this call."""
        before = self.sent
        self.left = self.after
        self.thread.join()
        return before


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
    """Killed once part of the stream is sealed while batches keep arriving (``_Load`` sends
    more after the kill, so the kill is mid-stream however fast the stage is), the restarted
    stage stores every span once."""
    proc = _up(tmp_path, "ingest-spans")
    bootstrap = _running(tmp_path, proc, 1)
    [stage] = [c for c in _children(proc.pid) if _is_stage(c)]
    requests: list[ExportTraceServiceRequest] = []

    def send(batch: int) -> None:
        chunk = _requests(range(200 + 5 * batch, 205 + 5 * batch))
        _produce(bootstrap, chunk)
        requests.extend(chunk)

    load = _Load(send, after=10)
    try:
        _wait("sealing", lambda: bool(_stored(tmp_path)), proc, 60)
        os.kill(stage, signal.SIGKILL)  # mid-stream: some batches sealed, others not
        at_kill = _stored(tmp_path)
    finally:
        load.stop()
    want = _produced(requests)
    assert at_kill and at_kill != want and max(at_kill.values()) == 1
    _wait("stored", lambda: _stored(tmp_path) == want, proc, 90)
    restarted = [c for c in _children(proc.pid) if _is_stage(c)]
    stderr = _stop(proc)
    assert restarted and stage not in restarted
    assert "stage ingest-spans exited with code -9; restarted" in stderr
    assert _stored(tmp_path) == want and max(want.values()) == 1


def _log_ids(requests: list[Any]) -> Counter[Any]:
    return Counter(
        (r.trace_id, r.span_id)
        for q in requests
        for rl in q.resource_logs
        for sl in rl.scope_logs
        for r in sl.log_records
    )


def _gauge_ids(requests: list[Any]) -> Counter[Any]:
    """(time, value) of every gauge point: random values in [0, 1), unique to their point."""
    return Counter(
        (p.time_unix_nano, p.as_double)
        for q in requests
        for rm in q.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.HasField("gauge")
        for p in m.gauge.data_points
    )


@pytest.mark.parametrize("kind", ["logs", "metrics"])
def test_kill_9_of_the_logs_and_metrics_ingest_stages_under_load_loses_nothing(
    tmp_path: Path, kind: str
) -> None:
    """As for spans: ingest-logs and ingest-metrics, killed mid-stream while records keep
    arriving, store every log line and every metric point once after their restart."""
    stage, topic = f"ingest-{kind}", f"otlp_{kind}"
    proc = _up(tmp_path, stage)
    bootstrap = _running(tmp_path, proc, 1)
    pid = _stage_pid(tmp_path, stage)
    requests: list[Any] = []

    def send(batch: int) -> None:
        chunk = [
            log_request(seed, lines=9)
            if kind == "logs"
            else metric_request(seed, points=2, start_ns=BASE_NS + seed * 60_000_000_000)
            for seed in range(5 * batch, 5 * batch + 5)
        ]
        asyncio.run(kafka.produce(bootstrap, topic, [(None, r.SerializeToString()) for r in chunk]))
        requests.extend(chunk)

    ids = _log_ids if kind == "logs" else _gauge_ids
    load = _Load(send, after=10)
    try:
        _wait("sealing", lambda: bool(_stored(tmp_path, kind)), proc, 60)
        os.kill(pid, signal.SIGKILL)
        at_kill = _stored(tmp_path, kind)
    finally:
        load.stop()
    want = ids(requests)
    assert at_kill and at_kill != want and max(at_kill.values()) == 1
    _wait("stored", lambda: _stored(tmp_path, kind) == want, proc, 90)
    stderr = _stop(proc)
    assert f"stage {stage} exited with code -9; restarted" in stderr
    assert _stored(tmp_path, kind) == want and max(want.values()) == 1


def _post_until_acknowledged(port: int, body: bytes) -> int:
    """POST an OTLP/HTTP body as a Collector does, again after every failure (refused
    connection, reset, 5xx) until the receiver answers 200; returns the failed attempts."""
    failed = 0
    while True:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request(
                "POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf"}
            )
            status = connection.getresponse().status
            connection.close()
            if status == 200:
                return failed
        except OSError:
            pass
        failed += 1
        time.sleep(0.2)


def test_kill_9_of_the_receiver_under_load_loses_nothing_it_acknowledged(tmp_path: Path) -> None:
    """A client posting spans while the receiver is killed and restarted (on the same port):
    every request answered 200 at its first try is stored exactly once; a request that failed
    and was sent again is stored, at most twice (the killed receiver may have produced it
    without answering: OTLP over HTTP is at least once)."""
    port = free_port()
    proc = _up(tmp_path, "receiver,ingest-spans", {"WORLDLINE_HTTP_PORT": str(port)})
    _running(tmp_path, proc, 2)
    receiver = _stage_pid(tmp_path, "receiver")
    first_try: list[ExportTraceServiceRequest] = []
    again: list[ExportTraceServiceRequest] = []

    def send(batch: int) -> None:
        request = span_request(500 + batch, traces=3)
        failed = _post_until_acknowledged(port, request.SerializeToString())
        (again if failed else first_try).append(request)

    load = _Load(send, after=15, pause_s=0.05)
    try:
        _wait("storing", lambda: bool(_stored(tmp_path)), proc, 60)
        os.kill(receiver, signal.SIGKILL)
    finally:
        load.stop()
    once, at_least_once = _produced(first_try), _produced(again)
    _wait("stored", lambda: set(_stored(tmp_path)) >= set(once) | set(at_least_once), proc, 90)
    stderr = _stop(proc)
    stored = _stored(tmp_path)
    assert "stage receiver exited with code -9; restarted" in stderr
    assert again, "some requests were sent while the receiver was down"
    assert all(stored[k] == 1 for k in once)
    assert all(1 <= stored[k] <= 2 for k in at_least_once)
    assert set(stored) == set(once) | set(at_least_once)


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


def _model_applied(data_dir: Path) -> tuple[dict[str, int], Counter[SpanId]]:
    """The world model's checkpoint: its applied offsets and the spans it buffers."""
    store = SegmentStore(data_dir / "segments")
    model = reads.load(store)
    assert model.dropped["late_rows"] == 0 and model.dropped["buffer_full"] == 0
    spans: Counter[SpanId] = Counter()
    if model.spans is not None:
        spans.update(
            zip(
                model.spans["trace_id"].to_pylist(),
                model.spans["span_id"].to_pylist(),
                strict=True,
            )
        )
    return dict(model.applied), spans


def _sealed_offsets(data_dir: Path) -> dict[str, int]:
    """The last offset of every stored segment stream the world model reads (``applied_key``)."""
    out: dict[str, int] = {}
    for m in SegmentStore(data_dir / "segments").manifests():
        if m.signal in MODEL_SIGNALS:
            key = applied_key(m)
            out[key] = max(out.get(key, -1), m.source.last_offset)
    return out


def test_kill_9_of_the_world_model_under_load_applies_every_segment_once(
    tmp_path: Path,
) -> None:
    """Killed after a checkpoint while spans keep arriving, the world model restarts from that
    checkpoint and applies from the store what it had not counted: its applied offsets end at
    the store's last offset of every stream and it holds each produced span once. The spans
    all lie within one minute from ``BASE_NS`` (a minute boundary), so no interval closes and
    every span stays in the model's buffer, where it can be counted."""
    proc = _up(tmp_path, "ingest-spans,world-model", {"WORLDLINE_CHECKPOINT_EVERY_S": "0.5"})
    bootstrap = _running(tmp_path, proc, 2)
    stage = _stage_pid(tmp_path, "world-model")
    requests: list[ExportTraceServiceRequest] = []

    def send(batch: int) -> None:
        chunk = _requests(range(1000 + 5 * batch, 1005 + 5 * batch))
        _produce(bootstrap, chunk)
        requests.extend(chunk)

    load = _Load(send, after=15)
    try:
        # killed once its checkpoint holds part of the data: the rest is replayed after it
        _wait("checkpointed", lambda: bool(_checkpointed_spans(tmp_path)), proc, 60)
        os.kill(stage, signal.SIGKILL)
        _, at_kill = _model_applied(tmp_path)
    finally:
        load.stop()
    want = _produced(requests)
    assert at_kill and at_kill != want and max(at_kill.values()) == 1
    # every span there (the counts are asserted after the final checkpoint)
    _wait("applied", lambda: _model_applied(tmp_path)[1].keys() == want.keys(), proc, 60)
    restarted = _stage_pid(tmp_path, "world-model")
    stderr = _stop(proc)  # the final checkpoint
    assert restarted != stage
    assert "stage world-model exited with code -9; restarted" in stderr
    assert _stored(tmp_path) == want
    applied, spans = _model_applied(tmp_path)
    assert applied == _sealed_offsets(tmp_path)
    assert spans == want and max(spans.values()) == 1


def _checkpointed_spans(data_dir: Path) -> int:
    if not checkpoint_path(SegmentStore(data_dir / "segments")).exists():
        return 0
    return sum(_model_applied(data_dir)[1].values())


def _iso(unix_s: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix_s))


def _alert(i: int, status: str) -> tuple[bytes, bytes]:
    """An Alertmanager notification of alert ``i`` (its own service: its own incident), keyed by
    its fingerprint so its notifications keep their order."""
    fingerprint = f"{i:016x}"
    starts = BASE_NS // 10**9 + 10 * i
    alert = {
        "status": status,
        "labels": {"alertname": "LatencyHigh", "service": f"svc-{i}"},
        "annotations": {},
        "startsAt": _iso(starts),
        "endsAt": _iso(starts + 300) if status == "resolved" else "0001-01-01T00:00:00Z",
        "fingerprint": fingerprint,
    }
    payload = {
        "version": "4",
        "groupKey": f'{{}}:{{service="svc-{i}"}}',
        "status": status,
        "receiver": "worldline",
        "groupLabels": {"service": f"svc-{i}"},
        "commonLabels": alert["labels"],
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:9093",
        "alerts": [alert],
    }
    return fingerprint.encode(), orjson.dumps(payload)


def _answered(data_dir: Path) -> int:
    return _stats(data_dir, "causal-search")["records"]


def _ranked(bootstrap: str) -> list[dict[str, Any]]:
    """Every ``causes.ranked`` record, read from the beginning."""

    async def run() -> list[dict[str, Any]]:
        return [
            orjson.loads(r.value or b"{}")
            async for r in kafka.tail(
                bootstrap, "causes.ranked", from_beginning=True, limit=None, idle_timeout_s=1.0
            )
        ]

    return asyncio.run(run())


def test_kill_9_of_causal_search_with_alerts_arriving_answers_each_update_once(
    tmp_path: Path,
) -> None:
    """Alerts keep arriving (every third one resolved a few batches later: a second update of
    its incident) while the stage is killed; after the supervisor restarts it, every alert has
    its answer for its last update, and no incident is answered twice for the same update
    (the stage's incident book, saved after each batch, tells re-delivered alerts from new
    ones)."""
    proc = _up(tmp_path, "causal-search")
    bootstrap = _running(tmp_path, proc, 1)
    stage = _stage_pid(tmp_path, "causal-search")
    resolved_after = 5

    def send(batch: int) -> None:
        records = [_alert(batch, "firing")]
        earlier = batch - resolved_after
        if earlier >= 0 and earlier % 3 == 0:
            records.append(_alert(earlier, "resolved"))
        asyncio.run(kafka.produce(bootstrap, "alerts", records))

    load = _Load(send, after=2 * resolved_after)
    stats = tmp_path / "stats" / "causal-search.json"
    try:
        _wait("answering", lambda: stats.exists() and _answered(tmp_path) > 0, proc, 60)
        os.kill(stage, signal.SIGKILL)
    finally:
        before_kill = load.stop()
    sent = load.sent
    assert 0 < before_kill < sent
    # the last update of each alert's incident: 1 when its resolution was sent
    last_update = {f"{i:016x}": int(i % 3 == 0 and i + resolved_after < sent) for i in range(sent)}

    def answered(records: list[dict[str, Any]]) -> dict[str, int]:
        """Fingerprint -> the latest update of its incident answered."""
        out: dict[str, int] = {}
        for record in records:
            [fingerprint] = record["alert_fingerprints"]
            out[fingerprint] = max(out.get(fingerprint, -1), record["update"])
        return out

    def all_answered() -> bool:
        got = answered(_ranked(bootstrap))
        return all(got.get(fp, -1) >= update for fp, update in last_update.items())

    _wait("answered", all_answered, proc, 60)
    records = _ranked(bootstrap)
    restarted = _stage_pid(tmp_path, "causal-search")
    stderr = _stop(proc)
    assert restarted != stage
    assert "stage causal-search exited with code -9; restarted" in stderr
    # a notification read again must not make a new update either
    assert answered(records) == last_update
    updates = Counter((r["incident_id"], r["update"]) for r in records)
    assert max(updates.values()) == 1, [k for k, n in updates.items() if n > 1]
    incidents = {r["incident_id"]: r["alert_fingerprints"] for r in records}
    assert sorted(fp for fps in incidents.values() for fp in fps) == sorted(last_update)


@pytest.mark.parametrize("point", KILL_POINTS)
def test_kill_9_of_causal_search_between_saving_and_sending_publishes_each_answer_once(
    tmp_path: Path, point: str
) -> None:
    """The stage kills itself (``CAUSAL_SEARCH_KILL_AT``) at ``point`` of its first delivery:
    "saved", the book holds the batch's answers and none is sent; "sent", every one is in
    causes.ranked and the book has not been saved since. After the supervisor restarts it, and
    more alerts and resolutions (second updates) arrive, causes.ranked holds every update of
    every alert's incident exactly once; and `up` started again sends none of them again
    (checked once)."""
    marker = tmp_path / "killed"
    proc = _up(tmp_path, "causal-search", {KILL_AT_ENV: f"{point}:{marker}"})
    bootstrap = _running(tmp_path, proc, 1)
    stage = _stage_pid(tmp_path, "causal-search")
    asyncio.run(kafka.produce(bootstrap, "alerts", [_alert(i, "firing") for i in range(6)]))
    _wait("killed in the window", lambda: marker.exists() and not pid_alive(stage), proc, 60)
    later = [_alert(i, "firing") for i in range(6, 9)]
    later += [_alert(i, "resolved") for i in (0, 3)]  # alerts of the batch the kill cut
    asyncio.run(kafka.produce(bootstrap, "alerts", later))
    want = Counter({(f"{i:016x}", 0): 1 for i in range(9)})
    want.update((f"{i:016x}", 1) for i in (0, 3))

    def published() -> Counter[tuple[str, int]]:
        out: Counter[tuple[str, int]] = Counter()
        for record in _ranked(bootstrap):
            [fingerprint] = record["alert_fingerprints"]
            out[(fingerprint, record["update"])] += 1
        return out

    _wait("answered", lambda: set(published()) >= set(want), proc, 60)
    time.sleep(1.0)  # a copy sent late would be read below
    got = published()
    stats = _stats(tmp_path, "causal-search")
    restarted = _stage_pid(tmp_path, "causal-search")
    stderr = _stop(proc)
    assert restarted != stage
    assert "stage causal-search exited with code -9; restarted" in stderr
    assert got == want, sorted((k, n) for k, n in got.items() if want.get(k) != n)
    # the restart found the saved answers: sent now ("saved"), or found in causes.ranked
    assert stats["republished" if point == "saved" else "republish_skipped"] >= 1
    assert stats["republish_skipped" if point == "saved" else "republished"] == 0
    if point != "sent":
        return  # the rest does not depend on where the kill was

    # `up` started again (a new in-memory broker): the answers delivered are not sent again
    stats_file = tmp_path / "stats" / "causal-search.json"
    stats_file.unlink()
    proc = _up(tmp_path, "causal-search")
    bootstrap = _running(tmp_path, proc, 1)
    _wait("settled", stats_file.exists, proc, 60)  # written once the book's outbox is settled
    again = _stats(tmp_path, "causal-search")
    republished = _ranked(bootstrap)
    _stop(proc)
    assert again["republished"] == 0 and again["republish_skipped"] == 0
    assert republished == []
