"""The causal stage's outbox without a broker: what is saved with the book, and which saved
answers a restart sends again."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from jobs.causal.alerts import IncidentBook
from jobs.causal.outbox import (
    KILL_AT_ENV,
    Outbox,
    check_kill_at,
    kill_point,
    load_delivered,
    published_keys,
    save_delivered,
    unpublished,
)
from jobs.causal.worker import load_book, load_consumed, load_outbox, save_book


def _record(incident: str, update: int) -> dict[str, object]:
    return {"incident_id": incident, "update": update, "abstained": True}


def test_the_outbox_is_saved_with_the_book_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "incidents.json"
    saved = Outbox([_record("inc-a", 0), _record("inc-b", 2)], "e1", {0: 7, 1: 0}, seq=3)
    save_book(path, IncidentBook(), {"e1/alerts/0": 41}, saved)
    assert load_outbox(path) == saved
    assert load_consumed(path) == {"e1/alerts/0": 41}
    assert load_book(path).incidents == {}
    # saved again without answers: nothing left to settle
    save_book(path, IncidentBook(), {"e1/alerts/0": 42})
    assert load_outbox(path) == Outbox()
    assert not list(tmp_path.glob("*.tmp"))


def test_a_book_saved_before_the_outbox_existed_has_none(tmp_path: Path) -> None:
    path = tmp_path / "incidents.json"
    path.write_bytes(orjson.dumps({"consumed": {}, "incidents": []}))
    assert load_outbox(path) == Outbox()
    assert load_outbox(tmp_path / "absent.json") == Outbox()


def test_only_answers_not_in_causes_ranked_are_sent_again() -> None:
    records = [_record("inc-a", 0), _record("inc-a", 1), _record("inc-b", 0)]
    saved = Outbox(records, "e1", {0: 10}, seq=1)
    present = published_keys(
        [orjson.dumps(_record("inc-a", 0)), orjson.dumps(_record("inc-b", 0)), b"not json", None]
    )
    assert present == {("inc-a", 0), ("inc-b", 0)}
    assert unpublished(saved, "e1", present) == [_record("inc-a", 1)]
    assert unpublished(saved, "e1", present | {("inc-a", 1)}) == []


def test_all_saved_answers_are_sent_when_none_was_sent_or_the_broker_is_new() -> None:
    records = [_record("inc-a", 0), _record("inc-b", 0)]
    everything = {("inc-a", 0), ("inc-b", 0)}
    # saved before any send (the high-water marks could not be read)
    assert unpublished(Outbox(records, "e1", None, seq=1), "e1", everything) == records
    # the in-memory broker was restarted: what the old one held is gone
    assert unpublished(Outbox(records, "e1", {0: 3}, seq=1), "e2", everything) == records


def test_the_kill_hook_is_checked_and_fires_only_at_its_point_once(tmp_path: Path) -> None:
    check_kill_at({})
    check_kill_at({KILL_AT_ENV: f"sent:{tmp_path / 'm'}"})
    for bad in ("later:/x", "sent", "sent:"):
        with pytest.raises(ValueError, match=KILL_AT_ENV):
            check_kill_at({KILL_AT_ENV: bad})
    marker = tmp_path / "m"
    marker.touch()  # this process "was killed" already: it goes on
    kill_point("sent", {KILL_AT_ENV: f"sent:{marker}"})
    kill_point("saved", {KILL_AT_ENV: f"sent:{tmp_path / 'other'}"})  # another point
    assert not (tmp_path / "other").exists()


def test_an_outbox_noted_delivered_is_never_sent_again(tmp_path: Path) -> None:
    path = tmp_path / "causes-delivered.json"
    assert load_delivered(path) == 0
    save_delivered(path, 4)
    assert load_delivered(path) == 4
    records = [_record("inc-a", 0)]
    # whatever the broker: a new one (another epoch) included
    assert unpublished(Outbox(records, "e1", {0: 3}, seq=4), "e2", set(), 4) == []
    assert unpublished(Outbox(records, "e1", None, seq=3), "e1", set(), 4) == []
    # a later outbox is not covered by the note
    assert unpublished(Outbox(records, "e1", {0: 3}, seq=5), "e1", set(), 4) == records
    path.write_bytes(b"{broken")
    assert load_delivered(path) == 0
