"""Following up an alert its data does not show yet: when, and how far apart, the causal stage
searches an incident again. Pure functions of event time, shared by the live stage and the
evaluations that replay it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jobs.causal.search import symptom_spacing

if TYPE_CHECKING:
    from jobs.causal.alerts import Incident
    from pipeline.worldmodel.model import WorldModel

# an alert whose time precedes the interval that shows its deviation (an alert on a fast rule,
# the time an issue began, a scrape that lands late) finds its signal normal, and an early
# answer may rest on too little: while it fires and its answer is not settled, it is searched
# again as each of the alerted series' next FOLLOW_INTERVALS values arrives (each search a new
# update of the incident; the last one stands)
FOLLOW_INTERVALS = 2
FOLLOW_MAX_STEP_S = 900.0  # a follow-up waits for the alerted series' next value, at most this


def latest_alert_s(incident: Incident) -> float:
    """When the incident's latest alert fired."""
    return max(a.starts_at_s for a in incident.alerts.values())


def answer_time(incident: Incident, step_s: float, follow: int = 0) -> float:
    """The event time an incident is searched at: its latest alert's, or ``follow`` steps
    (``follow_step``) after it when following up an alert its data did not show yet."""
    return latest_alert_s(incident) + follow * step_s


def follow_step(model: WorldModel, symptoms: list[tuple[str, str | None]]) -> float:
    """Event time between follow-ups: the model's interval, or the typical spacing of the
    alerted series' values when they are sparser (5-minute metrics at a 60 s interval: the next
    interval would hold no new value), at most FOLLOW_MAX_STEP_S."""
    interval = model.config.interval_s
    return min(symptom_spacing(model, symptoms) * interval, max(interval, FOLLOW_MAX_STEP_S))


def settled(symptom_seen: bool, abstained: bool) -> bool:
    """An answer that is not followed up: the alerted signal was seen deviating and a cause was
    named. Otherwise (nothing found yet, a provisional answer while the alerted signal still
    looks normal, an abstention) the incident is searched again as new values arrive."""
    return symptom_seen and not abstained


def record_settled(record: dict[str, Any]) -> bool:
    """``settled`` for a ``causes.ranked`` record (its symptoms' onsets, its abstention)."""
    seen = any(symptom.get("onset") for symptom in record["symptoms"])
    return settled(seen, bool(record["abstained"]))


def supersedes(names_a_cause: bool, earlier_named: bool, follow: int) -> bool:
    """Whether an answer replaces the incident's last one: always, except a follow-up that
    finds nothing after an answer that named a cause (the earlier answer stands; the follow-up
    was looking for more, not for less)."""
    return follow == 0 or names_a_cause or not earlier_named


def needed_time(t_s: float, interval_s: float) -> float:
    """When the world model must have closed through for a search at ``t_s`` to see its data:
    the end of the interval holding ``t_s``."""
    return (t_s // interval_s + 1) * interval_s
