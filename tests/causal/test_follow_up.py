"""An alert whose answer is not settled (its data does not show it yet, or the search abstains)
is followed up: the causal stage searches it again as the alerted series' next values arrive
(``FOLLOW_INTERVALS``)."""

from __future__ import annotations

from pathlib import Path

from jobs.causal.alerts import Alert, Incident, Symptom
from jobs.causal.followup import FOLLOW_INTERVALS, answer_time, needed_time, settled
from jobs.causal.search import SearchConfig
from jobs.causal.worker import follows_up, search_incident
from jobs.evaluate.petshop import INTERVAL_S
from tests.causal.test_search_rules import (
    FAULT_ROW,
    NORMAL_ROWS,
    T0,
    _levels,
    _world,
)


def _incident(at_s: float, status: str = "firing") -> Incident:
    alert = Alert("fp1", status, "HighLatency", {"service": "front"}, {}, at_s, None)
    incident = Incident("inc-1", at_s)
    incident.alerts[alert.fingerprint] = alert
    incident.symptoms[alert.fingerprint] = Symptom(
        "service:front", "latency.average", "label service=front"
    )
    return incident


def test_an_alert_before_the_interval_that_shows_it_is_answered_when_that_interval_closes() -> None:
    world, _ = _world(
        [("front", "app")],
        _levels({"front": 0.2, "app": 0.08}),
        {("front", "latency", "Average"): 0.4, ("app", "latency", "Average"): 0.4},
    )
    fault_row_start = T0 + INTERVAL_S * (NORMAL_ROWS + FAULT_ROW)
    # the alert is stamped a minute before the row in which the slowdown shows
    incident = _incident(fault_row_start - 60.0)
    config = SearchConfig()
    first_t = answer_time(incident, INTERVAL_S)
    first = search_incident(world, incident, config, 0.0, first_t)
    assert first["abstained"] and not first["causes"]
    assert needed_time(first_t, INTERVAL_S) == fault_row_start
    assert follows_up(first, incident, 0)
    then_t = answer_time(incident, INTERVAL_S, 1)
    assert needed_time(then_t, INTERVAL_S) == fault_row_start + INTERVAL_S
    then = search_incident(world, incident, config, 0.0, then_t)
    assert not then["abstained"] and then["causes"][0]["entity"] == {
        "kind": "service",
        "name": "app",
    }
    assert not follows_up(then, incident, 1)  # settled: no more follow-ups
    assert then["symptoms"][0]["onset"] is not None
    abstained = {**then, "abstained": True}  # an abstention is followed up too
    assert follows_up(abstained, incident, 1)
    assert settled(True, False) and not settled(False, False) and not settled(True, True)
    # bounded, and only while the alert fires
    assert not follows_up(first, incident, FOLLOW_INTERVALS)
    assert not follows_up(first, _incident(fault_row_start - 60.0, "resolved"), 0)


def test_a_search_still_due_survives_a_restart(tmp_path: Path) -> None:
    from jobs.causal.alerts import IncidentBook
    from jobs.causal.worker import load_book, save_book

    book = IncidentBook()
    due = _incident(1_700_000_000.0)
    due.pending = (1_700_000_300.0, 1)
    due.named = True
    due.due = True
    due.notified_s = {"fp1": 1_700_000_100.0}
    done = _incident(1_700_000_000.0)
    done.incident_id = "inc-2"
    book.incidents = {due.incident_id: due, done.incident_id: done}
    save_book(tmp_path / "incidents.json", book)
    loaded = load_book(tmp_path / "incidents.json")
    assert loaded.incidents["inc-1"].pending == (1_700_000_300.0, 1)
    assert loaded.incidents["inc-2"].pending is None
    assert loaded.incidents["inc-1"].named and not loaded.incidents["inc-2"].named
    assert loaded.incidents["inc-1"].alerts["fp1"].starts_at_s == 1_700_000_000.0
    # an answer still waiting for its data waits again after the restart
    assert loaded.incidents["inc-1"].due and not loaded.incidents["inc-2"].due
    assert loaded.incidents["inc-1"].notified_s == {"fp1": 1_700_000_100.0}
    assert loaded.clock_s == 1_700_000_100.0


def test_an_alert_that_named_nothing_known_at_intake_is_mapped_again_when_searched() -> None:
    world, _ = _world(
        [("front", "app")],
        _levels({"front": 0.2, "app": 0.08}),
        {("front", "latency", "Average"): 0.4, ("app", "latency", "Average"): 0.4},
    )
    fault_row_start = T0 + INTERVAL_S * (NORMAL_ROWS + FAULT_ROW)
    incident = _incident(fault_row_start + 60.0)
    # filed before the model knew service front
    incident.symptoms["fp1"] = Symptom(None, "span.latency_p95_ms", "no known entity in labels")
    record = search_incident(world, incident, SearchConfig(), 0.0, fault_row_start + 60.0)
    assert incident.symptoms["fp1"].entity == "service:front"
    assert record["symptoms"][0]["entity"] == {"kind": "service", "name": "front"}
    assert record["causes"] and record["causes"][0]["entity"]["name"] == "app"


def test_a_follow_up_that_finds_nothing_does_not_replace_an_answer() -> None:
    from jobs.causal.followup import supersedes

    assert supersedes(False, True, 0)  # a new alert's answer always replaces
    assert not supersedes(False, True, 1)  # a follow-up finding nothing keeps the earlier one
    assert supersedes(True, True, 1) and supersedes(False, False, 2)


def test_an_alert_on_something_worldline_does_not_observe_is_evidence_of_a_symptom() -> None:
    world, _ = _world(
        [("front", "app")],
        _levels({"front": 0.2, "app": 0.08}),
        {("front", "latency", "Average"): 0.4, ("app", "latency", "Average"): 0.4},
    )
    at = T0 + INTERVAL_S * (NORMAL_ROWS + FAULT_ROW) + 60.0
    # a synthetic probe of the shop's public address: no entity, no signal worldline has
    probe = Alert(
        "fp9",
        "firing",
        "ProbeFailed",
        {"alertname": "ProbeFailed", "instance": "https://shop.example.com/"},
        {},
        at,
        None,
    )
    incident = Incident("inc-9", at)
    incident.alerts[probe.fingerprint] = probe
    record = search_incident(world, incident, SearchConfig(), 0.0, at)
    assert incident.symptoms["fp9"].entity is None
    assert not record["abstained"] and record["symptoms"] == []
    assert record["causes"][0]["entity"] == {"kind": "service", "name": "app"}
    assert all(r["entity"]["kind"] != "alert" for r in record["ruled_out"])
