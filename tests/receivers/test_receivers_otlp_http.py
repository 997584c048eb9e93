"""OTLP/HTTP through a running receiver and the real broker: what is published, what is answered."""

from __future__ import annotations

import base64
import gzip
import json
import zlib
from collections.abc import Callable
from typing import Any

import orjson
import otlp_samples
import pytest
from aiohttp import web
from conftest import RECEIVER_RECORD_LIMIT, ReceiverHarness
from google.protobuf.message import Message
from google.rpc import status_pb2

from pipeline import otlp
from pipeline.receivers.app import build_receiver_app
from pipeline.receivers.otlp_export import LAYOUTS, METRICS, TRACES, SignalLayout, prepare_export

pytestmark = pytest.mark.integration

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
SAMPLES: dict[str, Callable[..., Message]] = {
    "/v1/traces": otlp_samples.traces,
    "/v1/metrics": otlp_samples.metrics,
    "/v1/logs": otlp_samples.logs,
}


def _deeply_nested_json(depth: int) -> bytes:
    value: dict[str, Any] = {"stringValue": "x"}
    for _ in range(depth):
        value = {"arrayValue": {"values": [value]}}
    document = {"resourceSpans": [{"resource": {"attributes": [{"key": "k", "value": value}]}}]}
    return json.dumps(document).encode()


DEEP_JSON = _deeply_nested_json(300)


def encode(message: Message, media: str) -> bytes:
    return orjson.dumps(otlp.to_json(message)) if media == JSON else message.SerializeToString()


def compress(body: bytes, coding: str) -> bytes:
    if coding == "gzip":
        return gzip.compress(body, mtime=0)
    if coding == "deflate":
        return zlib.compress(body)
    return body


def published(receiver: ReceiverHarness, layout: SignalLayout, count: int = 1) -> list[Message]:
    records = receiver.take(layout.logical_topic, count)
    assert len(records) == count
    assert all(record.key is None for record in records)
    return [otlp.from_proto(record.value or b"", layout.message_type) for record in records]


@pytest.mark.parametrize("coding", ["identity", "gzip", "deflate"])
@pytest.mark.parametrize("media", [PROTOBUF, JSON])
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda layout: layout.logical_topic)
def test_each_signal_in_each_encoding_lands_on_its_topic(
    receiver: ReceiverHarness, layout: SignalLayout, media: str, coding: str
) -> None:
    sent = SAMPLES[layout.path](3, service=f"svc-{coding}")
    headers = {"Content-Type": media}
    if coding != "identity":
        headers["Content-Encoding"] = coding
    answer = receiver.post(layout.path, compress(encode(sent, media), coding), headers)

    assert answer.status == 200, answer.body
    assert answer.headers["content-type"].startswith(media)
    response = layout.response_type()
    if media == JSON:
        assert orjson.loads(answer.body) == {}
    else:
        response.ParseFromString(answer.body)
        assert not response.HasField("partial_success")
    assert published(receiver, layout) == [sent]


def test_json_hex_ids_become_the_right_bytes(receiver: ReceiverHarness) -> None:
    trace_id, span_id, parent_id = (
        "5b8efff798038103d269b633813fc60c",
        "eee19b7ec3c1b174",
        "0102030405060708",
    )
    body = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "cart"}}]
                },
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": trace_id,
                                "spanId": span_id,
                                "parentSpanId": parent_id,
                                "name": "charge",
                                "kind": 3,
                                "startTimeUnixNano": "1700000000000000000",
                                "endTimeUnixNano": "1700000000000001000",
                                "links": [{"traceId": trace_id[::-1], "spanId": span_id[::-1]}],
                            }
                        ]
                    }
                ],
            }
        ]
    }
    answer = receiver.post("/v1/traces", orjson.dumps(body), {"Content-Type": JSON})
    assert answer.status == 200
    (request,) = published(receiver, TRACES)
    span = request.resource_spans[0].scope_spans[0].spans[0]
    assert span.trace_id == bytes.fromhex(trace_id)
    assert span.span_id == bytes.fromhex(span_id)
    assert span.parent_span_id == bytes.fromhex(parent_id)
    assert span.links[0].trace_id == bytes.fromhex(trace_id[::-1])
    assert span.start_time_unix_nano == 1_700_000_000_000_000_000

    logs = {
        "resourceLogs": [
            {
                "scopeLogs": [
                    {
                        "logRecords": [
                            {"traceId": trace_id, "spanId": span_id, "body": {"stringValue": "x"}}
                        ]
                    }
                ]
            }
        ]
    }
    assert receiver.post("/v1/logs", orjson.dumps(logs), {"Content-Type": JSON}).status == 200
    (log_request,) = published(receiver, LAYOUTS[2])
    record = log_request.resource_logs[0].scope_logs[0].log_records[0]
    assert (record.trace_id.hex(), record.span_id.hex()) == (trace_id, span_id)


def test_items_over_the_attribute_limit_are_refused_as_partial_success(
    receiver: ReceiverHarness,
) -> None:
    sent = otlp_samples.traces(2)
    crowded = sent.resource_spans[0].scope_spans[0].spans[1]
    for index in range(300):
        crowded.attributes.add(key=f"extra.{index}").value.int_value = index
    answer = receiver.post("/v1/traces", sent.SerializeToString(), {"Content-Type": PROTOBUF})

    assert answer.status == 200
    response = TRACES.response_type.FromString(answer.body)
    assert response.partial_success.rejected_spans == 1
    assert "more than 256 attributes" in response.partial_success.error_message
    (request,) = published(receiver, TRACES)
    assert [s.name for s in request.resource_spans[0].scope_spans[0].spans] == ["GET /item/0"]

    points = otlp_samples.metrics(3)
    point = points.resource_metrics[0].scope_metrics[0].metrics[0].gauge.data_points[2]
    for index in range(300):
        point.attributes.add(key=f"extra.{index}").value.bool_value = True
    answer = receiver.post("/v1/metrics", encode(points, JSON), {"Content-Type": JSON})
    assert answer.status == 200
    assert orjson.loads(answer.body)["partialSuccess"]["rejectedDataPoints"] in ("1", 1)
    (request,) = published(receiver, METRICS)
    assert len(request.resource_metrics[0].scope_metrics[0].metrics[0].gauge.data_points) == 2


def test_a_request_larger_than_a_record_is_split_by_resource_scope_and_item(
    receiver: ReceiverHarness,
) -> None:
    wide = receiver.start_extra(max_request_bytes=4 * RECEIVER_RECORD_LIMIT)
    sent = otlp_samples.traces(0)
    for service in range(3):  # three resources, the last one alone larger than a record
        spans = otlp_samples.traces(
            1200 if service == 2 else 300, service=f"svc-{service}", pad="x" * 200
        )
        sent.resource_spans.extend(spans.resource_spans)
    giant = sent.resource_spans[0].scope_spans[0].spans.add(name="giant", trace_id=b"\x01" * 16)
    giant.attributes.add(key="blob").value.string_value = "z" * (RECEIVER_RECORD_LIMIT + 10)
    body = sent.SerializeToString()
    assert RECEIVER_RECORD_LIMIT < len(body) < 4 * RECEIVER_RECORD_LIMIT

    answer = receiver.post(
        "/v1/traces",
        gzip.compress(body),
        {"Content-Type": PROTOBUF, "Content-Encoding": "gzip"},
        port=wide.port,
    )
    assert answer.status == 200
    response = TRACES.response_type.FromString(answer.body)
    assert response.partial_success.rejected_spans == 1
    assert "larger than the record limit" in response.partial_success.error_message

    records = receiver.take("otlp_spans", 3, settle=0.5)
    assert len(records) >= 3
    assert all(len(r.value or b"") <= RECEIVER_RECORD_LIMIT for r in records)
    requests = [otlp.from_proto(r.value or b"", TRACES.message_type) for r in records]
    got = [
        (rs.resource.attributes[0].value.string_value, span.name)
        for request in requests
        for rs in request.resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    ]
    expected = [
        (rs.resource.attributes[0].value.string_value, span.name)
        for rs in sent.resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
        if span.name != "giant"
    ]
    assert sorted(got) == sorted(expected)
    holding_svc_2 = [
        request
        for request in requests
        if any(
            rs.resource.attributes[0].value.string_value == "svc-2" for rs in request.resource_spans
        )
    ]
    assert len(holding_svc_2) >= 2, "a resource larger than a record is split by its items"


def test_prepare_export_packs_records_below_the_limit() -> None:
    sent = otlp_samples.metrics(40, attributes=3, metric_count=50)
    limit = sent.ByteSize() // 5
    outcome = prepare_export(sent, METRICS, max_record_bytes=limit, max_attributes=256)
    assert outcome.rejected == 0 and outcome.accepted == 2000
    assert 5 <= len(outcome.records) <= 7
    assert all(len(record) <= limit for record in outcome.records)
    parts: list[Any] = [otlp.from_proto(r, METRICS.message_type) for r in outcome.records]
    names = [m.name for part in parts for m in part.resource_metrics[0].scope_metrics[0].metrics]
    assert names == [metric.name for metric in sent.resource_metrics[0].scope_metrics[0].metrics]
    # a single metric is one item: too large for a record alone, it is refused whole
    assert (
        prepare_export(
            otlp_samples.metrics(2000), METRICS, max_record_bytes=1024, max_attributes=256
        ).rejected
        == 2000
    )


def _refused(receiver: ReceiverHarness, reason: str, path: str, payload: bytes) -> dict[str, Any]:
    (letter,) = receiver.deadletters(1)
    assert letter["stage"] == "receiver"
    assert letter["reason"] == reason
    assert letter["source"]["endpoint"] == path
    assert base64.b64decode(letter["payload_b64"]) == payload[: 64 * 1024]
    assert letter["payload_size"] == len(payload)
    return letter


@pytest.mark.parametrize(
    ("body", "media", "coding", "status", "reason"),
    [
        (b"\x0a\x05\xff\xff", PROTOBUF, "", 400, "otlp_decode_error"),
        (b"{not json", JSON, "", 400, "json_decode_error"),
        (
            b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "abc"}]}]}]}',
            JSON,
            "",
            400,
            "otlp_decode_error",
        ),
        (b'{"resourceSpans": 5}', JSON, "", 400, "otlp_decode_error"),
        (DEEP_JSON, JSON, "", 400, "otlp_decode_error"),
        (b"\x1f\x8b\x08\x00garbage", PROTOBUF, "gzip", 400, "gzip_decode_error"),
        (gzip.compress(b"x" * 1000)[:-9], JSON, "gzip", 400, "gzip_decode_error"),
        (b"hello", "text/plain", "", 415, "unsupported_media_type"),
        (b"hello", PROTOBUF, "br", 415, "unsupported_content_encoding"),
        (b"\x00" * (RECEIVER_RECORD_LIMIT + 1), PROTOBUF, "", 413, "payload_too_large"),
        (gzip.compress(b"\x00" * (16 * 1024 * 1024)), PROTOBUF, "gzip", 413, "payload_too_large"),
    ],
    ids=[
        "proto",
        "json",
        "hex",
        "shape",
        "deep",
        "gzip",
        "truncated-gzip",
        "media",
        "coding",
        "size",
        "gzip-bomb",
    ],
)
def test_refused_requests_are_answered_and_dead_lettered(
    receiver: ReceiverHarness, body: bytes, media: str, coding: str, status: int, reason: str
) -> None:
    headers = {"Content-Type": media}
    if coding:
        headers["Content-Encoding"] = coding
    before = receiver.health()["refused"].get(reason, 0)
    answer = receiver.post("/v1/traces", body, headers)

    assert answer.status == status
    if media == PROTOBUF:
        error = status_pb2.Status.FromString(answer.body)
        assert error.message.startswith(reason)
    elif media == JSON:
        assert orjson.loads(answer.body)["message"].startswith(reason)
    letter = _refused(
        receiver,
        reason,
        "/v1/traces",
        body if status != 413 or len(body) < RECEIVER_RECORD_LIMIT else b"",
    )
    assert letter["source"]["content_type"] == media
    assert receiver.health()["refused"][reason] == before + 1
    assert receiver.take("otlp_spans", 0, settle=0.1) == []


def test_wrong_method_is_405_and_counted(receiver: ReceiverHarness) -> None:
    before = receiver.health()["refused"].get("method_not_allowed", 0)
    assert receiver.post("/v1/metrics", b"", method="GET").status == 405
    assert receiver.post("/v1/logs", b"", method="PUT").status == 405
    assert receiver.health()["refused"]["method_not_allowed"] == before + 2


def test_bearer_token_is_required_when_configured(receiver: ReceiverHarness) -> None:
    guarded = receiver.start_extra(token="s3cret")
    body = otlp_samples.logs(1).SerializeToString()
    denied = receiver.post("/v1/logs", body, {"Content-Type": PROTOBUF}, port=guarded.port)
    assert denied.status == 401
    assert denied.headers["www-authenticate"] == "Bearer"
    wrong = receiver.post(
        "/v1/logs",
        body,
        {"Content-Type": PROTOBUF, "Authorization": "Bearer nope"},
        port=guarded.port,
    )
    assert wrong.status == 401
    allowed = receiver.post(
        "/v1/logs",
        body,
        {"Content-Type": PROTOBUF, "Authorization": "Bearer s3cret"},
        port=guarded.port,
    )
    assert allowed.status == 200
    assert len(receiver.take("otlp_logs", 1)) == 1
    assert receiver.take("deadletter", 0, settle=0.1) == []


def test_a_broker_that_fails_gives_503_with_retry_after(receiver: ReceiverHarness) -> None:
    class FailingProducer:
        async def send(
            self, topic: str, value: bytes | None = None, key: bytes | None = None
        ) -> Any:
            raise ConnectionError("broker is down")

    async def serve() -> tuple[web.AppRunner, int]:
        app = build_receiver_app(receiver.settings, FailingProducer())
        runner = web.AppRunner(app, auto_decompress=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, int(runner.addresses[0][1])

    runner, port = receiver.call(serve())
    try:
        body = otlp_samples.traces(1).SerializeToString()
        answer = receiver.post("/v1/traces", body, {"Content-Type": PROTOBUF}, port=port)
        assert answer.status == 503
        assert answer.headers["retry-after"] == "5"
        assert status_pb2.Status.FromString(answer.body).message.startswith("broker_unavailable")
    finally:
        receiver.call(runner.cleanup())


def test_healthz_reports_counters(receiver: ReceiverHarness) -> None:
    body = otlp_samples.metrics(4).SerializeToString()
    before = receiver.health()
    assert receiver.post("/v1/metrics", body, {"Content-Type": PROTOBUF}).status == 200
    after = receiver.health()
    assert after["status"] == "ok"
    assert (
        after["accepted_items"]["/v1/metrics"] == before["accepted_items"].get("/v1/metrics", 0) + 4
    )
    assert (
        after["published_records"]["otlp_metrics"]
        == before["published_records"].get("otlp_metrics", 0) + 1
    )
    assert len(receiver.take("otlp_metrics", 1)) == 1


def test_empty_export_is_accepted_and_publishes_nothing(receiver: ReceiverHarness) -> None:
    answer = receiver.post("/v1/traces", b"", {"Content-Type": PROTOBUF})
    assert answer.status == 200
    assert receiver.take("otlp_spans", 0, settle=0.2) == []
