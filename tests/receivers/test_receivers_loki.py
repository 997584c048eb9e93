"""Loki push (JSON, gzip JSON, snappy protobuf) into OTLP logs."""

from __future__ import annotations

import gzip
from typing import Any

import cramjam
import orjson
import pytest
from conftest import ReceiverHarness

from pipeline import otlp
from pipeline.receivers import protos
from pipeline.receivers.loki import parse_label_set
from pipeline.receivers.otlp_export import LOGS
from pipeline.receivers.refusals import Refusal

pytestmark = pytest.mark.integration

T0 = 1_700_000_000_123_456_789


def published_logs(receiver: ReceiverHarness) -> Any:
    (record,) = receiver.take("otlp_logs", 1)
    return otlp.from_proto(record.value or b"", LOGS.message_type)


def attributes(message: Any) -> dict[str, str]:
    return {kv.key: kv.value.string_value for kv in message.attributes}


@pytest.mark.parametrize("coding", ["identity", "gzip"])
def test_json_push_becomes_otlp_logs(receiver: ReceiverHarness, coding: str) -> None:
    push = {
        "streams": [
            {
                "stream": {"app": "cart", "env": "prod", "level": "warn"},
                "values": [
                    [str(T0), "cart is slow"],
                    [str(T0 + 1), "payment failed", {"trace_id": "abc", "detected_level": "error"}],
                ],
            },
            {"stream": {"service_name": "auth", "job": "ignored-job"}, "values": [[str(T0), "ok"]]},
            {
                "stream": {"pod": "cartservice-579f59597d-wc2lz", "container": "server"},
                "values": [[str(T0), "GetCart"]],
            },
            {"stream": {"job": "shop/checkout", "pod": "x"}, "values": [[str(T0), "placed"]]},
        ]
    }
    body = orjson.dumps(push)
    headers = {"Content-Type": "application/json"}
    if coding == "gzip":
        body, headers["Content-Encoding"] = gzip.compress(body), "gzip"
    answer = receiver.post("/loki/api/v1/push", body, headers)
    assert answer.status == 204, answer.body

    request = published_logs(receiver)
    cart, auth, pod, promtail = request.resource_logs
    assert attributes(cart.resource) == {
        "service.name": "cart",
        "app": "cart",
        "env": "prod",
        "level": "warn",
    }
    assert attributes(auth.resource)["service.name"] == "auth"
    # a stream naming only its pod is from the workload the pod belongs to
    assert attributes(pod.resource)["service.name"] == "cartservice"
    # Promtail names a Kubernetes stream's job "<namespace>/<app>"
    assert attributes(promtail.resource)["service.name"] == "checkout"
    slow, failed = cart.scope_logs[0].log_records
    assert (slow.body.string_value, slow.time_unix_nano) == ("cart is slow", T0)
    assert (slow.severity_number, slow.severity_text) == (13, "warn")
    assert (failed.severity_number, failed.severity_text) == (17, "error")
    assert attributes(failed) == {"trace_id": "abc", "detected_level": "error"}
    assert failed.observed_time_unix_nano > 0


def test_protobuf_push_becomes_otlp_logs(receiver: ReceiverHarness) -> None:
    push = protos.PushRequest()
    stream = push.streams.add(labels='{job="checkout", pod="checkout-7f9", msg="say \\"hi\\""}')
    entry = stream.entries.add(line=b"GET /cart 500")
    entry.timestamp.seconds, entry.timestamp.nanos = divmod(T0, 1_000_000_000)
    entry.structuredMetadata.add(name="level", value="ERROR")
    stream.entries.add(line=b"\xffnot utf-8").timestamp.seconds = 1
    body = bytes(cramjam.snappy.compress_raw(push.SerializeToString()))
    answer = receiver.post("/loki/api/v1/push", body, {"Content-Type": "application/x-protobuf"})
    assert answer.status == 204, answer.body

    (resource_logs,) = published_logs(receiver).resource_logs
    assert attributes(resource_logs.resource) == {
        "service.name": "checkout",
        "job": "checkout",
        "pod": "checkout-7f9",
        "msg": 'say "hi"',
    }
    first, second = resource_logs.scope_logs[0].log_records
    assert (first.body.string_value, first.time_unix_nano, first.severity_number) == (
        "GET /cart 500",
        T0,
        17,
    )
    assert second.body.string_value == "\ufffdnot utf-8"
    assert second.time_unix_nano == 1_000_000_000


def test_label_set_parser() -> None:
    assert parse_label_set('{a="1",b_c = "x\\\\y", d="p,q"}') == (
        ("a", "1"),
        ("b_c", "x\\y"),
        ("d", "p,q"),
    )
    assert parse_label_set("{}") == ()
    for bad in ('a="1"', "{a=1}", '{a="1" b="2"}', '{="x"}'):
        with pytest.raises(Refusal):
            parse_label_set(bad)


@pytest.mark.parametrize(
    ("body", "media", "status", "reason"),
    [
        (
            b'{"streams": [{"stream": {"a": 1}, "values": []}]}',
            "application/json",
            400,
            "loki_decode_error",
        ),
        (
            b'{"streams": [{"stream": {}, "values": [["-5", "x"]]}]}',
            "application/json",
            400,
            "loki_decode_error",
        ),
        (
            b'{"streams": [{"stream": {}, "values": [["1", 2]]}]}',
            "application/json",
            400,
            "loki_decode_error",
        ),
        (b"[1, 2", "application/json", 400, "json_decode_error"),
        (b"not snappy at all", "application/x-protobuf", 400, "snappy_decode_error"),
        (
            bytes(
                cramjam.snappy.compress_raw(
                    protos.PushRequest(streams=[{"labels": "nope"}]).SerializeToString()
                )
            ),
            "application/x-protobuf",
            400,
            "loki_decode_error",
        ),
        (b"line", "text/plain", 415, "unsupported_media_type"),
    ],
    ids=["label-type", "negative-ts", "line-type", "json", "snappy", "labels", "media"],
)
def test_bad_push_is_refused_and_dead_lettered(
    receiver: ReceiverHarness, body: bytes, media: str, status: int, reason: str
) -> None:
    answer = receiver.post("/loki/api/v1/push", body, {"Content-Type": media})
    assert answer.status == status
    assert reason in answer.body.decode()
    (letter,) = receiver.deadletters(1)
    assert (letter["reason"], letter["source"]["endpoint"]) == (reason, "/loki/api/v1/push")
    assert letter["source"]["content_type"] == media
    assert receiver.take("otlp_logs", 0, settle=0.1) == []
