"""Probes of the whole HTTP surface through a running server and the real broker: malformed
bodies on every receiver route, compression bombs, a stalled or pathological query, and the
bearer token on every route. Each asserts on the status and on the refusal counter by reason.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import gzip
import threading
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import cramjam
import orjson
import otlp_samples
import pytest
from conftest import RECEIVER_RECORD_LIMIT, HttpAnswer, ReceiverHarness
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from pipeline.api import QUERY_PREFIX, mount_api
from pipeline.ingest.core import KafkaRecord, SegmentIngestor, codec_for
from pipeline.query import LogQuery
from pipeline.receivers.app import HEALTH_PATH, build_receiver_app
from pipeline.receivers.bodies import inflate, unsnappy
from pipeline.receivers.refusals import Refusal
from pipeline.receivers.server import RunningReceivers, running_receivers
from pipeline.segments.store import SegmentStore
from pipeline.testing import BASE_NS

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
MiB = 1024 * 1024


def _snappy(data: bytes) -> bytes:
    return bytes(cramjam.snappy.compress_raw(data))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


ALERT = orjson.dumps(
    {
        "version": "4",
        "groupKey": '{}:{alertname="X"}',
        "status": "firing",
        "receiver": "worldline",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager",
        "alerts": [],
    }
)

# (route, headers, body, status, reason): at least one bad protobuf, bad JSON and wrong
# content type (or coding) on every receiver route
MALFORMED = [
    ("/v1/traces", {"Content-Type": PROTOBUF}, b"\x0a\x05\xff\xff", 400, "otlp_decode_error"),
    ("/v1/metrics", {"Content-Type": PROTOBUF}, b"\xff\xff\xff", 400, "otlp_decode_error"),
    ("/v1/logs", {"Content-Type": PROTOBUF}, b"\x0a\xff", 400, "otlp_decode_error"),
    ("/v1/traces", {"Content-Type": JSON}, b"{not json", 400, "json_decode_error"),
    ("/v1/metrics", {"Content-Type": JSON}, b'{"resourceMetrics": 5}', 400, "otlp_decode_error"),
    ("/v1/logs", {"Content-Type": JSON}, b"[" * 5000 + b"]" * 5000, 400, "json_decode_error"),
    ("/v1/metrics", {"Content-Type": "text/plain"}, b"up 1", 415, "unsupported_media_type"),
    ("/v1/logs", {"Content-Type": PROTOBUF, "Content-Encoding": "zstd"}, b"x", 415,
     "unsupported_content_encoding"),
    ("/api/v1/write", {"Content-Type": PROTOBUF}, _snappy(b"\xff\xff\xff"), 400,
     "remote_write_decode_error"),
    ("/api/v1/write", {"Content-Type": PROTOBUF}, b"\xff\xff", 400, "snappy_decode_error"),
    ("/api/v1/write", {"Content-Type": JSON}, b"{}", 415, "unsupported_media_type"),
    ("/api/v1/write", {"Content-Type": PROTOBUF, "Content-Encoding": "gzip"},
     gzip.compress(b"x"), 415, "unsupported_content_encoding"),
    ("/loki/api/v1/push", {"Content-Type": PROTOBUF}, _snappy(b"\xff\xff\xff"), 400,
     "loki_decode_error"),
    ("/loki/api/v1/push", {"Content-Type": JSON}, b"{bad", 400, "json_decode_error"),
    ("/loki/api/v1/push", {"Content-Type": JSON}, b'{"streams": 3}', 400, "loki_decode_error"),
    ("/loki/api/v1/push", {"Content-Type": "text/plain"}, b"x", 415, "unsupported_media_type"),
    ("/alertmanager/webhook", {"Content-Type": JSON}, b"{bad", 400, "json_decode_error"),
    ("/alertmanager/webhook", {"Content-Type": JSON}, b'{"version": "4"}', 400,
     "alert_schema_violation"),
    ("/alertmanager/webhook", {"Content-Type": PROTOBUF}, ALERT, 415, "unsupported_media_type"),
]  # fmt: skip

# bodies far smaller than the limit that expand far beyond it
BOMBS = [
    ("/v1/traces", {"Content-Type": PROTOBUF, "Content-Encoding": "gzip"}, "gzip"),
    ("/v1/metrics", {"Content-Type": PROTOBUF, "Content-Encoding": "deflate"}, "deflate"),
    ("/v1/logs", {"Content-Type": JSON, "Content-Encoding": "gzip"}, "gzip"),
    ("/loki/api/v1/push", {"Content-Type": JSON, "Content-Encoding": "gzip"}, "gzip"),
    ("/alertmanager/webhook", {"Content-Type": JSON, "Content-Encoding": "gzip"}, "gzip"),
    ("/api/v1/write", {"Content-Type": PROTOBUF}, "snappy"),
    ("/loki/api/v1/push", {"Content-Type": PROTOBUF}, "snappy"),
    ("/api/v1/write", {"Content-Type": PROTOBUF}, "snappy-forged-length"),
]  # fmt: skip


@functools.cache
def bomb(kind: str) -> bytes:
    """A body within the limit that expands to 64 MiB (snappy: 4 MiB, its ratio is ~21:1), or
    a snappy header announcing 1 GiB ahead of a few bytes."""
    if kind == "gzip":
        return gzip.compress(b"\x00" * 64 * MiB, mtime=0)
    if kind == "deflate":
        return zlib.compress(b"\x00" * 64 * MiB)
    if kind == "snappy":
        return _snappy(b"\x00" * 4 * MiB)
    return _varint(1 << 30) + b"\x00" * 64


def _ids(cases: list[Any]) -> list[str]:
    return [f"{c[0]}-{c[1].get('Content-Type')}-{c[1].get('Content-Encoding', '')}" for c in cases]


def _refusals(receiver: ReceiverHarness, port: int | None = None) -> dict[str, int]:
    answer = receiver.post(HEALTH_PATH, b"", method="GET", port=port)
    assert answer.status == 200
    refused: dict[str, int] = orjson.loads(answer.body)["refused"]
    return refused


@pytest.mark.integration
@pytest.mark.parametrize(
    ("path", "headers", "body", "status", "reason"), MALFORMED, ids=_ids(MALFORMED)
)
def test_malformed_bodies_are_refused_counted_and_dead_lettered(
    receiver: ReceiverHarness,
    path: str,
    headers: dict[str, str],
    body: bytes,
    status: int,
    reason: str,
) -> None:
    before = _refusals(receiver)
    answer = receiver.post(path, body, headers)
    assert answer.status == status, answer.body[:300]
    after = _refusals(receiver)
    assert after.get(reason, 0) == before.get(reason, 0) + 1
    assert sum(after.values()) == sum(before.values()) + 1
    (letter,) = receiver.deadletters(1)
    assert letter["reason"] == reason and letter["source"]["endpoint"] == path
    assert base64.b64decode(letter["payload_b64"]) == body[: 64 * 1024]


@pytest.mark.integration
@pytest.mark.parametrize(("path", "headers", "kind"), BOMBS, ids=[f"{b[0]}-{b[2]}" for b in BOMBS])
def test_compression_bombs_are_refused_413(
    receiver: ReceiverHarness, path: str, headers: dict[str, str], kind: str
) -> None:
    body = bomb(kind)
    assert len(body) < RECEIVER_RECORD_LIMIT  # the body itself is within the limit
    before = _refusals(receiver).get("payload_too_large", 0)
    answer = receiver.post(path, body, headers)
    assert answer.status == 413, answer.body[:300]
    assert _refusals(receiver)["payload_too_large"] == before + 1
    (letter,) = receiver.deadletters(1)
    # the body as received, still compressed
    assert letter["reason"] == "payload_too_large" and letter["payload_size"] == len(body)
    for topic in ("otlp_spans", "otlp_metrics", "otlp_logs", "alerts"):
        assert receiver.take(topic, 0, settle=0) == []


@pytest.mark.parametrize("kind", ["gzip", "deflate", "snappy", "snappy-forged-length"])
def test_bombs_are_refused_without_expanding_them(kind: str) -> None:
    """An expansion to 64 MiB (snappy 4 MiB; forged: 1 GiB) is refused having allocated about
    the limit, not the expansion."""
    limit = 256 * 1024
    body = bomb(kind)
    tracemalloc.start()
    try:
        with pytest.raises(Refusal) as refused:
            if kind.startswith("snappy"):
                unsnappy(body, limit)
            else:
                inflate(body, kind, limit)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert refused.value.status == 413 and refused.value.reason == "payload_too_large"
    assert peak < 4 * limit, peak


class _NoProducer:
    async def send(self, topic: str, value: bytes | None = None, key: bytes | None = None) -> Any:
        raise AssertionError("routes are only listed")


def _every_route(receiver: ReceiverHarness) -> list[tuple[str, str]]:
    """(method, path) of every route the server mounts, listed from the app as the server
    builds it, so a route added later is probed too."""
    app = build_receiver_app(receiver.settings, _NoProducer(), token="x")
    mount_api(app, receiver.settings, "x")
    routes = {
        (route.method, route.resource.canonical.replace("{trace_id}", "ab" * 16))
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    return sorted(routes)


@pytest.mark.integration
def test_every_route_but_healthz_requires_the_token(receiver: ReceiverHarness) -> None:
    guarded = receiver.start_extra(token="s3cret")
    routes = _every_route(receiver)
    assert ("POST", "/v1/traces") in routes and ("GET", f"{QUERY_PREFIX}/logs") in routes
    probes = [r for r in routes if r != ("GET", HEALTH_PATH)]
    probes += [("GET", "/no/such/route"), ("GET", "/v1/traces"), ("DELETE", "/api/v1/write")]
    before = _refusals(receiver, guarded.port).get("unauthorized", 0)
    refused = 0
    for method, path in probes:
        letters = guarded.counters.deadletters
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "s3cret"}):
            answer = receiver.post(path, b"{}", headers, method=method, port=guarded.port)
            assert answer.status == 401, (method, path, headers)
            assert answer.headers["www-authenticate"] == "Bearer", (method, path)
            refused += 1
        assert guarded.counters.deadletters == letters  # refused before the body is read
        good = {"Authorization": "Bearer s3cret"}
        answer = receiver.post(path, b"{}", good, method=method, port=guarded.port)
        assert answer.status != 401, (method, path)
    assert receiver.post(HEALTH_PATH, b"", method="GET", port=guarded.port).status == 200
    assert _refusals(receiver, guarded.port)["unauthorized"] == before + refused
    receiver.take("deadletter", 0, settle=0.2)


def _template_store(data_dir: Path) -> None:
    """A log whose template is 30 x's: Python's backtracking re needs about 2**30 steps to
    find that (x+x+)+y does not match it."""
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.add(key="service.name").value.string_value = "cart"
    record = rl.scope_logs.add().log_records.add(time_unix_nano=BASE_NS, severity_number=9)
    record.body.string_value = "x" * 30 + " is the marker"
    store = SegmentStore(data_dir / "segments")
    ingestor = SegmentIngestor(store, codec_for("otlp_logs", store))
    records = [KafkaRecord("otlp_logs", 0, 0, req.SerializeToString())]
    ingestor.seal(ingestor.decode(records), dt.datetime(2026, 11, 20, tzinfo=dt.UTC))


@pytest.fixture
def query_server(receiver: ReceiverHarness, tmp_path: Path) -> Iterator[RunningReceivers]:
    _template_store(tmp_path)
    settings = receiver.settings.model_copy(
        update={"data_dir": tmp_path, "query_timeout_s": 1.0, "query_threads": 1}
    )

    async def start() -> RunningReceivers:
        return await receiver.stack.enter_async_context(
            running_receivers(settings, receiver.bootstrap, port=0)
        )

    yield receiver.call(start())


def _get(receiver: ReceiverHarness, port: int, path: str, **params: str) -> HttpAnswer:
    query = f"?{urlencode(params)}" if params else ""
    return receiver.post(path + query, b"", method="GET", port=port)


@pytest.mark.integration
def test_regex_dos_patterns_answer_at_once(
    receiver: ReceiverHarness, query_server: RunningReceivers
) -> None:
    port = query_server.port
    answer = _get(receiver, port, f"{QUERY_PREFIX}/logs", template="x+ is the")
    assert answer.status == 200 and len(orjson.loads(answer.body)["rows"]) == 1
    for pattern in ("(x+x+)+y", "(x|x)*y", "(x*)*y"):
        answer = _get(receiver, port, f"{QUERY_PREFIX}/logs", template=pattern)
        assert answer.status == 200, (pattern, answer.body)
        assert orjson.loads(answer.body) == {"rows": [], "next": None}
    answer = _get(receiver, port, f"{QUERY_PREFIX}/logs", template="(x{1000}){1000}")
    assert answer.status == 400 and b"size limit" in answer.body


@pytest.mark.integration
def test_a_stalled_query_is_408_while_the_server_answers(
    receiver: ReceiverHarness, query_server: RunningReceivers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A query held in its thread (the only one) past the 1 s limit: 408; meanwhile /healthz,
    a receiver POST and another query (408 too: no thread is free) are answered."""
    release, entered = threading.Event(), threading.Event()
    page = LogQuery.page

    def held(self: LogQuery, **kwargs: Any) -> Any:
        if kwargs.get("text") == "hold":
            entered.set()
            release.wait(60)
        return page(self, **kwargs)

    monkeypatch.setattr(LogQuery, "page", held)
    port = query_server.port
    answers: list[HttpAnswer] = []
    slow = threading.Thread(
        target=lambda: answers.append(_get(receiver, port, f"{QUERY_PREFIX}/logs", text="hold"))
    )
    slow.start()
    try:
        assert entered.wait(20)
        assert receiver.post(HEALTH_PATH, b"", method="GET", port=port).status == 200
        spans = otlp_samples.traces(1).SerializeToString()
        posted = receiver.post("/v1/traces", spans, {"Content-Type": PROTOBUF}, port=port)
        assert posted.status == 200
        queued = _get(receiver, port, f"{QUERY_PREFIX}/templates")
        assert queued.status == 408
        slow.join(20)
        [stalled] = answers
        assert stalled.status == 408
        assert b"time limit of 1 s" in stalled.body
    finally:
        release.set()
        slow.join(20)
    answer = _get(receiver, port, f"{QUERY_PREFIX}/templates")
    assert answer.status == 200 and len(orjson.loads(answer.body)["rows"]) == 1
    receiver.take("otlp_spans", 1)
