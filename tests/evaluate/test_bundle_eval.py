"""The offline evaluation of a replay bundle: its framing is read, every alert is answered from
the data up to it through ingest, the world model and the causal search, and scored as the
replay tool scores answers."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import zstandard

from jobs.evaluate.bundle import (
    HEADER,
    MAGIC,
    TOPIC_CODES,
    evaluate_bundle,
    on_incident_evidence,
    read_manifest,
    read_stream,
    score,
    services_named,
    settled_record,
    shift_alerts,
)
from pipeline.testing import BASE_NS, metric_request, span_request

MINUTE_NS = 60 * 10**9


def _frame(topic: str, ts_ms: int, value: bytes) -> bytes:
    return HEADER.pack(TOPIC_CODES.index(topic), ts_ms, -1, len(value)) + value


def _bundle(folder: Path, minutes: int = 40) -> tuple[str, float]:
    stream = bytearray(MAGIC)
    for minute in range(minutes):
        start = BASE_NS + minute * MINUTE_NS
        for topic, make in (("otlp_spans", span_request), ("otlp_metrics", metric_request)):
            request = make(minute, start_ns=start)
            stream += _frame(topic, (start + MINUTE_NS) // 10**6 - 1, request.SerializeToString())
    (folder / "stream").mkdir(parents=True)
    (folder / "stream" / "000000.rec.zst").write_bytes(zstandard.compress(bytes(stream)))
    alert_s = (BASE_NS + (minutes - 5) * MINUTE_NS) / 1e9
    starts = f"{_iso(alert_s)}"
    payload = {
        "version": "4",
        "status": "firing",
        "receiver": "worldline",
        "groupKey": "{}",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "CheckoutSlow", "service": "checkout"},
                "annotations": {},
                "startsAt": starts,
                "endsAt": "0001-01-01T00:00:00Z",
                "fingerprint": "f00d",
            }
        ],
    }
    (folder / "alerts.jsonl").write_text(json.dumps(payload) + "\n")
    label = {
        "alert_fingerprint": "f00d",
        "root_cause_service": "checkout",
        "fault_type": "none",
    }
    (folder / "labels.jsonl").write_text(json.dumps(label) + "\n")
    manifest = {
        "format": "heldout-replay-bundle/1",
        "parts": [{"file": "stream/000000.rec.zst"}],
        "entities": {"pod_to_service": {}},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return "f00d", alert_s


def _iso(t_s: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(t_s, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_the_stream_is_read_back_in_order(tmp_path: Path) -> None:
    _bundle(tmp_path, minutes=3)
    records = list(read_stream(tmp_path, read_manifest(tmp_path)))
    assert [r.topic for r in records] == ["otlp_spans", "otlp_metrics"] * 3
    assert [r.timestamp_ms for r in records] == sorted(r.timestamp_ms for r in records)
    assert struct.calcsize("<BqiI") == HEADER.size


def test_every_alert_is_answered_from_the_data_up_to_it(tmp_path: Path) -> None:
    fingerprint, alert_s = _bundle(tmp_path)
    run = evaluate_bundle(tmp_path)
    first = run.answers["worldline"].first[fingerprint]
    assert first["alert_fingerprints"] == [fingerprint]
    assert first["coverage"]["complete"] and first["coverage"]["alert_at"] == _iso(alert_s)
    # the symptom is resolved on the model: checkout sent spans before the alert
    assert first["symptoms"][0]["entity"] == {"kind": "service", "name": "checkout"}
    assert fingerprint in run.answers["worldline"].final
    assert set(run.scores) == {"worldline", "baro", "nsigma"}
    assert run.scores["baro"]["first"]["all"]["n"] == 1
    assert run.records == 80


def test_alerts_moved_later_are_answered_from_the_data_up_to_their_new_time(
    tmp_path: Path,
) -> None:
    fingerprint, alert_s = _bundle(tmp_path)
    run = evaluate_bundle(tmp_path, alert_shift_s=120.0, baselines=())
    first = run.answers["worldline"].first[fingerprint]
    assert first["coverage"]["alert_at"] == _iso(alert_s + 120.0)
    assert datetime_of(first["coverage"]["covers_until"]) <= alert_s + 120.0
    assert datetime_of(first["coverage"]["covers_until"]) > alert_s + 60.0
    payload = {"alerts": [{"startsAt": "2022-08-22T03:54:54Z", "labels": {}}]}
    moved = shift_alerts(payload, -30.0)
    assert moved["alerts"][0]["startsAt"] == "2022-08-22T03:54:24Z"
    assert payload["alerts"][0]["startsAt"] == "2022-08-22T03:54:54Z"  # the input is kept


def datetime_of(text: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(text).timestamp()


def test_scores_count_distinct_services_and_abstentions_as_misses() -> None:
    labels = [
        {"alert_fingerprint": "a", "root_cause_service": "cart", "fault_type": "cpu"},
        {"alert_fingerprint": "b", "root_cause_service": "cart", "fault_type": "cpu"},
        {"alert_fingerprint": "c", "root_cause_service": "ads", "fault_type": "delay"},
    ]

    def named(*names: str, p: float = 0.9) -> dict[str, object]:
        causes = [{"entity": {"name": n}, "probability": p} for n in names]
        return {"abstained": False, "causes": causes}

    answers = {
        "a": named("cart-pod-1", "ads"),  # a pod counts as its service
        "b": named("ads", "ads", "cart"),  # repeated services use one rank
        "c": {"abstained": True, "causes": []},
    }
    pods = {"cart-pod-1": "cart"}
    assert services_named(answers["b"], pods) == ["ads", "cart"]
    s = score(answers, labels, pods)
    assert s["all"]["AS@1"] == 1 / 3 and s["all"]["AS@2"] == 2 / 3
    assert s["all"]["abstained"] == 1 / 3
    assert s["cpu"]["AS@1"] == 0.5 and s["delay"]["AS@5"] == 0.0
    assert abs(s["all"]["ece"] - 0.4) < 1e-9  # p 0.9, right once in two


def test_a_first_cause_that_began_before_the_injection_is_not_the_incidents_evidence() -> None:
    labels = [
        {"alert_fingerprint": f, "root_cause_service": "cart", "inject_time": t}
        for f, t in (("a", "2022-08-22T04:52:55Z"), ("b", "2022-08-22T04:52:55Z"))
    ]

    def named(name: str, onset: str | None) -> dict[str, object]:
        cause = {"entity": {"name": name}, "probability": 0.9, "onset": onset}
        return {"abstained": False, "causes": [cause]}

    # the injection's interval began 04:52; an onset is known to within an interval
    assert on_incident_evidence(named("cart", "2022-08-22T04:51:00Z"), labels[0], 60.0)
    # cart's deviation since 04:44 is an earlier incident's, still going on
    assert not on_incident_evidence(named("cart", "2022-08-22T04:44:00Z"), labels[0], 60.0)
    assert on_incident_evidence(named("cart", None), labels[0], 60.0) is None
    assert on_incident_evidence(named("cart", "x"), {"inject_time": None}, 60.0) is None
    answers = {
        "a": named("cart", "2022-08-22T04:53:00Z"),
        "b": named("cart", "2022-08-22T04:44:00Z"),
    }
    s = score(answers, labels, {})
    assert s["all"]["AS@1"] == 1.0 and s["all"]["AS@1 own"] == 0.5
    # no injection times: nothing to judge the evidence by
    untimed = [{k: v for k, v in label.items() if k != "inject_time"} for label in labels]
    assert math.isnan(score(answers, untimed, {})["all"]["AS@1 own"])


def test_a_final_re_search_that_finds_nothing_keeps_the_first_answer() -> None:
    named = {"causes": [{"entity": {"kind": "service", "name": "payment"}}], "abstained": False}
    nothing = {"causes": [], "abstained": True}
    other = {"causes": [{"entity": {"kind": "service", "name": "cart"}}], "abstained": False}
    # as the stage: a re-search looking for more that finds less does not replace the answer
    assert settled_record(named, nothing) is named
    assert settled_record(named, other) is other
    assert settled_record(nothing, other) is other
    assert settled_record(None, nothing) is nothing
