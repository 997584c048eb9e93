"""What a signal's name says: its modality, its harmful direction, whether it counts failures or
traffic, its family and latency unit, its qualifiers, and the entity it is evidence about."""

from __future__ import annotations

import re

from pipeline.worldmodel.graph import CACHE_SYSTEMS, K8S_SERVICE_DNS

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
K8S_DNS = re.compile(K8S_SERVICE_DNS)

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


def _qualifiers(signal: str) -> dict[str, str]:
    match = QUALIFIER.search(signal)
    if match is None:
        return {}
    out = {}
    for part in match.group(1).split(","):
        key, sep, value = part.partition("=")
        if sep:
            out[key] = value
    return out


def client_metric_peer(signal: str) -> str | None:
    """The dependency a client-side metric describes, named as the graph names it.

    OpenTelemetry client metrics (``db.client.*``, ``http.client.*``, ``messaging.*``) carry the
    peer in their attributes (``db.system``, ``db.namespace``, ``server.address``, ...): such a
    series is evidence about the peer, as the caller sees it, like an edge's span signals.
    """
    if signal.startswith(("span.", "edge.", "log.")):
        return None
    q = _qualifiers(signal)
    host = q.get("server.address") or None
    if host:
        short = K8S_DNS.match(host)
        host = short.group(1) if short else host
    namespace = q.get("db.namespace") or q.get("db.name") or None
    if namespace is not None and namespace.isdigit():
        namespace = None
    system = q.get("db.system") or q.get("db.system.name")
    if q.get("messaging.system"):
        if ".process." in signal or ".receive." in signal or "consume" in signal:
            return None  # the consumer's own processing: evidence about the consumer
        destination = q.get("messaging.destination.name") or q.get("messaging.destination") or host
        return f"queue:{q['messaging.system']}:{destination}" if destination else None
    if system:
        if system in CACHE_SYSTEMS:
            part = host or namespace
            return f"cache:{system}:{part}" if part else f"cache:{system}"
        part = namespace or host
        return f"database:{system}:{part}" if part else f"database:{system}"
    if q.get("peer.service"):
        return f"external:{q['peer.service']}"
    if host and (signal.startswith(("http.client", "rpc.client")) or ".client." in signal):
        return f"external:{host}"
    return None


def _peer_entity(peer: str, known_services: set[str]) -> str:
    kind, _, name = peer.partition(":")
    if kind == "external" and f"service:{name}" in known_services:
        return f"service:{name}"
    return peer


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
