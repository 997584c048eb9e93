"""The causal stage's outbox: every answer is published to ``causes.ranked`` once.

An answer changes two things: the incident book (a file beside the world model's checkpoint,
with the offsets of the alerts it holds) and the ``causes.ranked`` topic. They cannot change
together, so the book goes first and says what is about to be published:

1. the answers of a batch are built and kept in memory (``Outbox.records``); the book, the
   offsets of the alerts read and these records are saved in one file (written, fsynced,
   renamed), with the broker epoch and, for every partition of ``causes.ranked``, an offset
   at or before which none of these records can lie (``Outbox.since``: the end of what this
   stage's earlier records were acknowledged at, or the high-water mark read at start);
2. the records are sent and the producer flushed (acknowledged by every in-sync replica);
3. a small file notes that this outbox (its ``seq``) is delivered (``DELIVERED_NAME``); the
   next save of the book holds only the next batch's records.

A process killed before 1 has changed nothing: the broker delivers its alerts again. Killed
after 1 and before 3, the restarted stage finds the saved records (``recover``) and reads
``causes.ranked`` from ``since`` up to its end: a record whose ``(incident_id, update)`` is
there was published and is not sent again; the others are sent. Alerts read before the save are
skipped by their offsets, so nothing is answered twice and no saved answer is lost. A running
stage whose send fails settles its saved outbox the same way before it publishes anything else.

This holds within one life of the broker's storage (``pipeline.kafka.broker_epoch``). When the
saved epoch is not the broker's now (the in-memory broker was restarted: what it held is gone)
and the outbox is not noted delivered, its records are all sent to the new broker, so an answer
of the last batch before the broker died can be in both lives. A delivered outbox is never sent
again, whatever the broker (a stop and start of ``worldline up`` sends nothing twice).

Why not Kafka transactions: the book is a file, which no Kafka transaction can include, and the
embedded broker (tansu 0.6.0) answers ``InitProducerId`` with an unknown error, so it offers
neither transactions nor the idempotent producer. The producer's own retries (an
acknowledgement lost on the network, the record already written) remain a way to write a record
twice on any broker without the idempotent producer; ``(incident_id, update)`` tells such a copy
apart.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("worldline.causal")

# Fault injection for the durability tests, off unless set: "<point>:<marker file>" makes the
# stage kill itself with SIGKILL at <point> ("saved": the book and its outbox are saved and
# nothing is sent yet; "sent": the outbox's records are acknowledged and not yet noted
# delivered), once: the marker file is created first, and a process that finds it goes on.
KILL_AT_ENV = "CAUSAL_SEARCH_KILL_AT"
KILL_POINTS = ("saved", "sent")
DELIVERED_NAME = "causes-delivered.json"  # beside the book: the last outbox delivered whole


def record_key(record: dict[str, Any]) -> tuple[str, int]:
    """What names a ``causes.ranked`` record: its incident and update."""
    return str(record["incident_id"]), int(record.get("update", 0))


@dataclass
class Outbox:
    """Answers saved with the book before they are sent."""

    records: list[dict[str, Any]] = field(default_factory=list)
    epoch: str = ""  # the broker epoch the records were sent in
    # partition of causes.ranked -> an offset at or before which none of the records lies;
    # None: not one of them was sent
    since: dict[int, int] | None = None
    seq: int = 0  # one more at every save with records: names the outbox in DELIVERED_NAME

    def to_doc(self) -> dict[str, Any]:
        since = None if self.since is None else {str(p): o for p, o in self.since.items()}
        return {"records": self.records, "epoch": self.epoch, "since": since, "seq": self.seq}

    @classmethod
    def from_doc(cls, doc: dict[str, Any] | None) -> Outbox:
        if not doc:
            return cls()
        since = doc.get("since")
        return cls(
            records=list(doc.get("records") or []),
            epoch=str(doc.get("epoch") or ""),
            since=None if since is None else {int(p): int(o) for p, o in since.items()},
            seq=int(doc.get("seq") or 0),
        )


def load_delivered(path: Path) -> int:
    """The ``seq`` of the last outbox delivered whole (``save_delivered``); 0 when none."""
    try:
        return int(orjson.loads(path.read_bytes())["seq"])
    except (FileNotFoundError, KeyError, TypeError, ValueError, orjson.JSONDecodeError):
        return 0


def save_delivered(path: Path, seq: int) -> None:
    """Note that outbox ``seq`` is in causes.ranked whole. Not fsynced: a note lost with the
    machine only makes the next start read causes.ranked (or, with a new broker, send the
    outbox there)."""
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(orjson.dumps({"seq": seq}))
    os.replace(tmp, path)


def unpublished(
    saved: Outbox, epoch: str, present: Iterable[tuple[str, int]], delivered: int = 0
) -> list[Any]:
    """The saved records not in ``causes.ranked``: none when the outbox was noted delivered
    (``delivered``: ``load_delivered``), all of them when none was sent or the broker is in
    another epoch, else those whose ``record_key`` is not ``present`` (read from
    ``saved.since`` on)."""
    if saved.seq <= delivered:
        return []
    if saved.since is None or saved.epoch != epoch:
        return list(saved.records)
    there = set(present)
    return [r for r in saved.records if record_key(r) not in there]


def published_keys(values: Iterable[bytes | None]) -> set[tuple[str, int]]:
    """``record_key`` of every ``causes.ranked`` value that is a record."""
    out: set[tuple[str, int]] = set()
    for value in values:
        try:
            record = orjson.loads(value or b"")
            out.add(record_key(record))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue  # not a record of this stage: it names no answer
    return out


def check_kill_at(environ: Mapping[str, str] | None = None) -> None:
    """A ``KILL_AT_ENV`` that names no point or no marker file is an error at start."""
    spec = (os.environ if environ is None else environ).get(KILL_AT_ENV, "")
    if not spec:
        return
    at, _, marker = spec.partition(":")
    if at not in KILL_POINTS or not marker:
        raise ValueError(
            f"{KILL_AT_ENV}={spec!r}: expected <point>:<marker file>, <point> one of"
            f" {', '.join(KILL_POINTS)}"
        )


def kill_point(point: str, environ: Mapping[str, str] | None = None) -> None:
    """``KILL_AT_ENV``: kill this process with SIGKILL at ``point``, once per marker file."""
    spec = (os.environ if environ is None else environ).get(KILL_AT_ENV, "")
    at, _, marker = spec.partition(":")
    if at != point or not marker:
        return
    path = Path(marker)
    try:
        path.touch(exist_ok=False)
    except FileExistsError:
        return
    log.warning("%s=%s: killing this process", KILL_AT_ENV, spec)
    os.kill(os.getpid(), signal.SIGKILL)
