"""Arbitrary and truncated bodies never crash a receiver: each ends accepted or as 4xx + dead letter."""

from __future__ import annotations

import gzip

import cramjam
import orjson
import otlp_samples
import pytest
from conftest import ReceiverHarness
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import otlp
from pipeline.receivers import protos

pytestmark = pytest.mark.integration

FUZZ = settings(
    derandomize=True,
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _remote_write_body() -> bytes:
    request = protos.WriteRequest()
    series = request.timeseries.add()
    series.labels.add(name="__name__", value="up")
    series.labels.add(name="job", value="api")
    series.samples.add(value=1.0, timestamp=1_700_000_000_000)
    return request.SerializeToString()


def _loki_body() -> bytes:
    push = protos.PushRequest()
    stream = push.streams.add(labels='{app="cart"}')
    stream.entries.add(line=b"hello").timestamp.seconds = 1_700_000_000
    return push.SerializeToString()


TRACES_PROTO = otlp_samples.traces(3).SerializeToString()
LOGS_JSON = orjson.dumps(otlp.to_json(otlp_samples.logs(3)))
LOKI_JSON = orjson.dumps(
    {"streams": [{"stream": {"app": "a"}, "values": [["1", "x", {"k": "v"}]]}]}
)

# (path, headers, how the fuzzed bytes are wrapped, a valid body to truncate)
TARGETS = [
    ("/v1/traces", {"Content-Type": "application/x-protobuf"}, "identity", TRACES_PROTO),
    ("/v1/logs", {"Content-Type": "application/json"}, "identity", LOGS_JSON),
    (
        "/v1/metrics",
        {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"},
        "gzip",
        otlp_samples.metrics(3).SerializeToString(),
    ),
    ("/api/v1/write", {"Content-Type": "application/x-protobuf"}, "snappy", _remote_write_body()),
    ("/loki/api/v1/push", {"Content-Type": "application/x-protobuf"}, "snappy", _loki_body()),
    ("/loki/api/v1/push", {"Content-Type": "application/json"}, "identity", LOKI_JSON),
]


def wrap(payload: bytes, how: str) -> bytes:
    if how == "gzip":
        return gzip.compress(payload, mtime=0)
    if how == "snappy":
        return bytes(cramjam.snappy.compress_raw(payload))
    return payload


def mutated(data: st.DataObject, valid: bytes) -> bytes:
    kind = data.draw(st.sampled_from(["random", "truncated", "flipped"]))
    if kind == "random":
        return data.draw(st.binary(max_size=512))
    cut = data.draw(st.integers(0, max(0, len(valid) - 1)))
    if kind == "truncated":
        return valid[:cut]
    flip = data.draw(st.integers(1, 255))
    return valid[:cut] + bytes([valid[cut] ^ flip]) + valid[cut + 1 :] if valid else valid


@pytest.mark.parametrize(
    ("path", "headers", "how", "valid"),
    TARGETS,
    ids=[f"{t[0]}-{t[2]}-{t[1]['Content-Type'][12:]}" for t in TARGETS],
)
def test_fuzzed_bodies_end_accepted_or_dead_lettered(
    receiver: ReceiverHarness, path: str, headers: dict[str, str], how: str, valid: bytes
) -> None:
    outcomes: list[int] = []

    @FUZZ
    @given(data=st.data())
    def exchange(data: st.DataObject) -> None:
        payload = mutated(data, valid)
        # half of the time the compression itself is damaged too
        body = wrap(payload, how)
        if how != "identity" and data.draw(st.booleans()):
            body = body[: data.draw(st.integers(0, len(body)))]
        answer = receiver.post(path, body, headers)
        assert answer.status in (200, 204, 400, 413), (answer.status, answer.body[:200])
        outcomes.append(answer.status)

    before = receiver.health()
    exchange()
    after = receiver.health()
    refused = sum(1 for status in outcomes if status >= 400)
    assert refused > 0, "the fuzzer should produce some undecodable bodies"
    assert after["deadletters"] - before["deadletters"] == refused
    letters = receiver.deadletters(refused)
    assert len(letters) == refused
    assert {letter["source"]["endpoint"] for letter in letters} == {path}
    for topic in ("otlp_spans", "otlp_metrics", "otlp_logs"):  # accepted bodies: not checked here
        receiver.take(topic, 0, settle=0)
