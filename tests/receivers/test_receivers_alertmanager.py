"""The Alertmanager webhook receiver: valid payloads to `alerts`, the rest to `deadletter`."""

from __future__ import annotations

import copy

import orjson
import pytest
from conftest import ReceiverHarness

import schemas

pytestmark = pytest.mark.integration


def test_webhook_payload_lands_on_alerts(receiver: ReceiverHarness) -> None:
    payload = schemas.examples("alerts")[0]
    answer = receiver.post(
        "/alertmanager/webhook", orjson.dumps(payload), {"Content-Type": "application/json"}
    )
    assert answer.status == 200
    (record,) = receiver.take("alerts", 1)
    assert orjson.loads(record.value or b"") == payload
    assert record.key == payload["groupKey"].encode()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "json_decode_error"),
        (orjson.dumps({"version": "4"}), "alert_schema_violation"),
    ],
)
def test_bad_webhook_payloads_are_dead_lettered(
    receiver: ReceiverHarness, body: bytes, reason: str
) -> None:
    # the session's receiver is shared: letters of earlier tests still arriving are not this one's
    receiver.take("deadletter", 0, timeout=0.5)
    answer = receiver.post("/alertmanager/webhook", body, {"Content-Type": "application/json"})
    assert answer.status == 400
    letters = [
        letter
        for letter in receiver.deadletters(1)
        if letter["source"]["endpoint"] == "/alertmanager/webhook" and letter["reason"] == reason
    ]
    assert len(letters) == 1
    assert receiver.take("alerts", 0, timeout=0.5) == []


def test_resolved_alerts_pass_too(receiver: ReceiverHarness) -> None:
    payload = copy.deepcopy(schemas.examples("alerts")[1])
    answer = receiver.post(
        "/alertmanager/webhook", orjson.dumps(payload), {"Content-Type": "application/json"}
    )
    assert answer.status == 200
    (record,) = receiver.take("alerts", 1)
    assert orjson.loads(record.value or b"")["status"] == "resolved"
