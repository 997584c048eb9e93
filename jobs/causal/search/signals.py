"""What a signal's name says: its modality, its harmful direction, whether it counts failures or
traffic, its family and latency unit, its qualifiers, and the entity it is evidence about."""

from __future__ import annotations

import re

from pipeline.worldmodel.peers import client_metric_peer as client_metric_peer
from pipeline.worldmodel.peers import peer_entity as _peer_entity  # noqa: F401 (re-exported)

PEER = re.compile(r"\{peer=([^}]*)\}")
UP_IS_BAD = re.compile(
    r"latency|duration|error|cpu|mem|heap|gc|conn|pool|queue|lag|backlog|wait|saturat|throttl|restart|evict|timeout|retr",
    re.I,
)
DOWN_IS_BAD = re.compile(r"availability|success|apdex|uptime|goodput", re.I)
"""Signals whose harmful direction is down: a fall is the symptom, a rise is recovery."""
TRAFFIC = re.compile(r"rate_per_s|request|calls|throughput|invocations", re.I)
"""Inbound traffic: how much an entity is asked, which its callers decide, not how it answers."""
LATENCY_LIKE = re.compile(r"latency|duration", re.I)
FAILURE = re.compile(r"error|fail|exception|5xx|availability|success|timeout", re.I)

QUALIFIER = re.compile(r"\{([^}]*)\}")

LATENCY_UNIT = re.compile(r"_(ms|us|ns|s|seconds|milliseconds)(?=$|[{.])")


def _modality(signal: str) -> int:
    if signal.startswith(("span.", "edge.")):
        return 0
    if signal.startswith("log."):
        return 1
    return 2


def _down_is_bad(signal: str) -> bool:
    return not _up_is_bad(signal) and bool(DOWN_IS_BAD.search(_bare(signal)))


def _bare(signal: str) -> str:
    """The signal's name without its qualifiers (``{db.system=...}``)."""
    return QUALIFIER.sub("", signal)


def _is_failure(signal: str) -> bool:
    """Whether the signal counts failures (errors, availability, timeouts). A duration stays
    a duration whatever its qualifiers: the latency of failed requests
    (``duration{error.type=500}.p95``) says how long failing took, not how often."""
    name = _bare(signal)
    if FAILURE.search(name):
        return True
    if LATENCY_LIKE.search(name) and not name.endswith("rate_per_s"):
        return False
    return bool(FAILURE.search(signal))


def _up_is_bad(signal: str) -> bool:
    if signal.startswith(("span.latency", "edge.latency", "span.error", "edge.error", "log.error")):
        return True
    if "rate_per_s" in signal and signal.startswith(("span.", "edge.")):
        return False
    name = _bare(signal)
    if name.endswith("rate_per_s") and not FAILURE.search(name):
        # how often something is observed (a counter's or a histogram's count): traffic
        return False
    return bool(UP_IS_BAD.search(name))


def fault_class(signal: str, direction: float) -> str:
    s = signal.lower()
    if "error" in s or "exception" in s or "5xx" in s:
        return "errors"
    if "latency" in s or "duration" in s:
        return "latency"
    if "cpu" in s or "throttl" in s:
        return "cpu_saturation"
    if "mem" in s or "heap" in s or "oom" in s or "evict" in s:
        return "memory"
    if "conn" in s or "pool" in s:
        return "connection_pool"
    if "queue" in s or "lag" in s or "backlog" in s:
        return "queue_backlog"
    if s.startswith("log.template"):
        return "new_log_pattern"
    if "rate" in s or "count" in s or "request" in s:
        return "traffic_surge" if direction > 0 else "traffic_drop"
    return "anomaly"


def _family(signal: str) -> str:
    """The prefix of the series that measure what ``signal`` names: a span-derived signal's
    kind (``span.latency_p95_ms`` -> every ``span.latency`` statistic); any other series is
    itself (an alert on a metric's statistic is about that statistic; splitting such a name
    on ``_`` would take ``http_server_duration_seconds`` for every ``http`` series)."""
    if signal.startswith(("span.", "edge.")):
        return signal.split("_")[0]
    return signal


def _latency_unit(signal: str) -> str | None:
    """The unit of a latency-like signal ("" when its name says none), else None (a
    duration histogram's error ratio is a share of requests, not a duration)."""
    if not LATENCY_LIKE.search(signal) or signal.endswith("error_ratio"):
        return None
    found = LATENCY_UNIT.search(_bare(signal))
    return found.group(1) if found else ""


def _owner(entity: str) -> str:
    """The service an operation belongs to; any other entity is its own owner."""
    if entity.startswith("operation:"):
        return "service:" + entity[len("operation:") :].split(" ", 1)[0]
    return entity
