"""Alert intake: Alertmanager webhook payloads -> alerts -> incidents with their symptoms.

- ``parse_webhook`` validates a payload (``schemas/alerts.schema.json``) and returns its alerts.
- ``SymptomMapper`` turns an alert's labels into the symptom entity and signal the world model
  knows (``service:checkout``, ``span.latency_p95_ms``), with a clear fallback when the labels
  name nothing known.
- ``IncidentBook`` deduplicates alerts by fingerprint and groups them into incidents by time and
  graph connectivity; resolved alerts update their incident. Pure: event time comes in.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import schemas
from pipeline.ingest.resource import workload_names

FIRING_ENDS_AT = "0001-01-01T00:00:00Z"

# label names that name the service an alert is about, most specific first
ENTITY_LABELS = (
    "service.name",
    "service_name",
    "service",
    "app.kubernetes.io/name",
    "app",
    "application",
    "job",
    "container",
    "deployment",
    "workload",
    # Kubernetes resource attributes as OpenTelemetry and Prometheus spell them, and the
    # service mesh's name for the called workload
    "k8s.deployment.name",
    "k8s_deployment_name",
    "destination_workload",
    "destination_service_name",
    "destination_app",
)
# label names that name a pod: the pod when worldline knows it, else the workload that owns it
POD_LABELS = ("pod", "pod_name", "k8s.pod.name", "k8s_pod_name", "kubernetes_pod_name")
HOST_LABELS = ("host", "hostname", "host.name", "node", "instance")
# words in the alert's name, labels or summary -> the signal of the symptom
SIGNAL_WORDS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"latenc|duration|slow|response.?time|p9[059]", re.I), "span.latency_p95_ms"),
    (re.compile(r"error|5xx|fail|availab|exception", re.I), "span.error_ratio"),
    (re.compile(r"throughput|traffic|request.?rate|rps|qps", re.I), "span.rate_per_s"),
)
# when the entity has no span-derived signal of that kind (metrics only: Prometheus, CloudWatch,
# a dataset's gauges), the entity's own series of the same kind, in order of preference
SIGNAL_KINDS: dict[str, tuple[re.Pattern[str], ...]] = {
    "span.latency_p95_ms": (re.compile(r"latenc|duration|response.?time", re.I),),
    "span.error_ratio": (
        re.compile(r"error|fail|5xx|fault|exception", re.I),
        re.compile(r"availab|success", re.I),
    ),
    "span.rate_per_s": (re.compile(r"request|throughput|calls|rate_per_s|invocation", re.I),),
}
STATISTICS = ("p95", "p99", "p90", "average", "avg", "mean", "p50", "median")
"""Preferred statistics of a latency-like series, when the alert names none of them."""


def parse_time(text: str) -> float | None:
    """RFC 3339 -> unix seconds; None for Alertmanager's zero time of firing alerts."""
    if not text or text.startswith("0001-01-01"):
        return None
    when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


@dataclass(frozen=True)
class Alert:
    fingerprint: str
    status: str
    name: str
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at_s: float
    ends_at_s: float | None

    @property
    def firing(self) -> bool:
        return self.status == "firing"


def parse_webhook(payload: Any) -> list[Alert]:
    """The alerts of one Alertmanager webhook payload (version 4); SchemaViolation if invalid."""
    schemas.validate("alerts.schema.json", payload)
    out = []
    for a in payload["alerts"]:
        starts = parse_time(a["startsAt"])
        out.append(
            Alert(
                fingerprint=a["fingerprint"],
                status=a["status"],
                name=a["labels"]["alertname"],
                labels=dict(a["labels"]),
                annotations=dict(a.get("annotations", {})),
                starts_at_s=starts if starts is not None else 0.0,
                ends_at_s=parse_time(a["endsAt"]),
            )
        )
    return out


@dataclass(frozen=True)
class Symptom:
    entity: str | None  # "service:frontend"; None when the labels name nothing known
    signal: str | None  # None: any signal of the entity
    how: str  # how the entity was found (for the record and for humans)


class SymptomMapper:
    """Maps alert labels to a known entity and signal; ``known`` lists the model's entities."""

    def __init__(
        self,
        known_entities: Iterable[str],
        signals_of: Callable[[str], Iterable[str]] | None = None,
    ) -> None:
        self.known = set(known_entities)
        self.signals_of = signals_of
        self.by_name: dict[str, list[str]] = {}
        for key in self.known:
            kind, _, name = key.partition(":")
            self.by_name.setdefault(name.lower(), []).append(key)

    def _lookup(self, value: str) -> str | None:
        value = value.strip()
        if not value:
            return None
        candidates = [value, value.split(":")[0], value.split("/")[-1]]
        for c in candidates:
            keys = sorted(self.by_name.get(c.lower(), []), key=_kind_rank)
            if keys:
                return keys[0]
        return None

    def _lookup_kind(self, kind: str, name: str) -> str | None:
        """The known entity of ``kind`` named ``name`` (case-insensitive)."""
        return next(
            (k for k in self.by_name.get(name.lower(), []) if k.startswith(f"{kind}:")), None
        )

    def map(self, alert: Alert) -> Symptom:
        labels = alert.labels
        for label in ENTITY_LABELS:
            if label in labels:
                found = self._lookup(labels[label])
                if found:
                    return Symptom(
                        found, self.signal(alert, found), f"label {label}={labels[label]}"
                    )
        for label in POD_LABELS:
            if label in labels:
                pod = labels[label].strip().split("/")[-1]
                workloads = workload_names(pod)
                found = (
                    self._lookup_kind("pod", pod)
                    or next((k for w in workloads if (k := self._lookup(w))), None)
                    or self._lookup(pod)
                )
                if found:
                    return Symptom(
                        found, self.signal(alert, found), f"label {label}={labels[label]}"
                    )
        for label in HOST_LABELS:
            if label in labels:
                found = self._lookup(labels[label])
                if found:
                    return Symptom(
                        found, self.signal(alert, found), f"label {label}={labels[label]}"
                    )
        # last resort: a known service name appearing as a word in the alert's name or summary
        text = " ".join(
            [
                alert.name,
                alert.annotations.get("summary", ""),
                alert.annotations.get("description", ""),
            ]
        )
        words = {w.lower() for w in re.findall(r"[A-Za-z0-9_.-]+", text)}
        hits = sorted(k for w in words for k in self.by_name.get(w, []) if k.startswith("service:"))
        if len(hits) == 1:
            return Symptom(hits[0], self.signal(alert, hits[0]), "service name in the alert text")
        named = ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))
        return Symptom(None, self.signal(alert), f"no known entity in labels ({named})")

    def signal(self, alert: Alert, entity: str | None = None) -> str | None:
        """The alerted signal: its kind from the alert's words; then, when the entity's own
        series are known and hold no span-derived signal of that kind, the entity's series of
        that kind (the statistic the alert names, else p95, p99, p90, average, p50)."""
        text = " ".join([alert.name, *alert.labels.values(), alert.annotations.get("summary", "")])
        kind = next((signal for pattern, signal in SIGNAL_WORDS if pattern.search(text)), None)
        if kind is None or entity is None or self.signals_of is None:
            return kind
        own = sorted({s for s in self.signals_of(entity) if not s.startswith("edge.")})
        if not own or kind in own:
            return kind
        named = [st for st in STATISTICS if re.search(rf"\b{st}\b", text, re.I)]
        for pattern in SIGNAL_KINDS[kind]:
            matching = [s for s in own if pattern.search(s)]
            if matching:
                return min(matching, key=lambda s: _statistic_rank(s, named))
        return kind


def _statistic_rank(signal: str, named: list[str]) -> tuple[int, int, str]:
    """Sort key of a series: a statistic the alert names first, then ``STATISTICS`` order."""
    tail = signal.lower().replace("_", ".").split(".")
    named_hit = next((i for i, st in enumerate(named) if st in tail), len(named))
    preferred = next((i for i, st in enumerate(STATISTICS) if st in tail), len(STATISTICS))
    return (named_hit, preferred, signal)


def _kind_rank(key: str) -> tuple[int, str]:
    order = {"service": 0, "operation": 1, "host": 2, "pod": 3}
    return (order.get(key.split(":", 1)[0], 9), key)


@dataclass
class Incident:
    incident_id: str
    opened_at_s: float
    alerts: dict[str, Alert] = field(default_factory=dict)
    symptoms: dict[str, Symptom] = field(default_factory=dict)  # by fingerprint
    updates: int = 0
    last_alert_s: float = 0.0
    # a search still due (kept across restarts): (event time the world model must have closed
    # through, follow-ups made so far); None when the last answer stands
    pending: tuple[float, int] | None = None
    named: bool = False  # the last record published for it named a cause
    due: bool = False  # an answer waits for the world model to hold its alert's data
    # fingerprint -> event time of its latest notification (the book's clock then)
    notified_s: dict[str, float] = field(default_factory=dict)

    @property
    def first_alert_s(self) -> float:
        return min((a.starts_at_s for a in self.alerts.values()), default=self.opened_at_s)

    @property
    def open(self) -> bool:
        return any(a.firing for a in self.alerts.values())

    @property
    def fingerprints(self) -> list[str]:
        return sorted(self.alerts)


@dataclass
class IncidentBook:
    """Incidents; an alert joins an open one when its ``startsAt`` and every other alert's lie
    within ``group_window_s`` of each other (measured from the incident's first alert, never
    chained from its latest) and its entity is connected in the graph to one of the incident's.

    Event time is the book's clock: the latest ``startsAt`` it has seen. A firing alert not
    notified again within ``resolve_timeout_s`` of that clock is taken as resolved (Alertmanager
    repeats a firing alert's notification every ``repeat_interval``)."""

    group_window_s: float = 300.0
    resolve_timeout_s: float = 15000.0
    max_incidents: int = 10_000
    incidents: dict[str, Incident] = field(default_factory=dict)
    by_fingerprint: dict[str, str] = field(default_factory=dict)
    evicted: int = 0
    timed_out: int = 0
    clock_s: float = 0.0

    def add(
        self, alert: Alert, symptom: Symptom, connected: Callable[[str, str], bool]
    ) -> tuple[Incident, bool]:
        """File an alert; returns its incident and whether the incident changed."""
        self.clock_s = max(self.clock_s, alert.starts_at_s)
        self.expire()
        known = self.by_fingerprint.get(alert.fingerprint)
        if known is not None and known in self.incidents:
            incident = self.incidents[known]
            before = incident.alerts.get(alert.fingerprint)
            incident.notified_s[alert.fingerprint] = self.clock_s
            if before is not None and before.status == alert.status:
                return incident, False  # a re-sent notification: nothing new
            incident.alerts[alert.fingerprint] = alert
            incident.updates += 1
            return incident, True
        for incident in sorted(self.incidents.values(), key=lambda i: -i.last_alert_s):
            if not incident.open:
                continue
            first = min(incident.first_alert_s, alert.starts_at_s)
            last = max(incident.last_alert_s, alert.starts_at_s)
            if last - first > self.group_window_s:
                continue
            entities = {s.entity for s in incident.symptoms.values() if s.entity}
            if symptom.entity and any(
                symptom.entity == e or connected(symptom.entity, e) for e in entities
            ):
                return self._join(incident, alert, symptom), True
        incident = Incident(incident_id=_incident_id(alert, symptom), opened_at_s=alert.starts_at_s)
        self.incidents[incident.incident_id] = incident
        while len(self.incidents) > self.max_incidents:
            oldest = min(self.incidents.values(), key=lambda i: i.last_alert_s)
            del self.incidents[oldest.incident_id]
            self.evicted += 1
        return self._join(incident, alert, symptom), True

    def expire(self) -> None:
        """Resolve the firing alerts not notified within ``resolve_timeout_s`` of the clock; an
        incident none of whose alerts fires any more has no search due."""
        horizon = self.clock_s - self.resolve_timeout_s
        for incident in self.incidents.values():
            if not incident.open:
                continue
            for fingerprint, alert in list(incident.alerts.items()):
                last = incident.notified_s.get(fingerprint, alert.starts_at_s)
                if alert.firing and last < horizon:
                    incident.alerts[fingerprint] = replace(
                        alert, status="resolved", ends_at_s=last + self.resolve_timeout_s
                    )
                    self.timed_out += 1
            if not incident.open:
                incident.pending = None

    def _join(self, incident: Incident, alert: Alert, symptom: Symptom) -> Incident:
        incident.alerts[alert.fingerprint] = alert
        incident.symptoms[alert.fingerprint] = symptom
        incident.notified_s[alert.fingerprint] = self.clock_s
        incident.last_alert_s = max(incident.last_alert_s, alert.starts_at_s)
        if incident.alerts and len(incident.alerts) > 1:
            incident.updates += 1
        self.by_fingerprint[alert.fingerprint] = incident.incident_id
        return incident


def _incident_id(alert: Alert, symptom: Symptom) -> str:
    when = dt.datetime.fromtimestamp(alert.starts_at_s, tz=dt.UTC).strftime("%Y%m%d-%H%M%S")
    digest = hashlib.sha1(alert.fingerprint.encode()).hexdigest()[:8]
    name = (symptom.entity or "unknown").split(":", 1)[-1]
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name)[:40]
    return f"inc-{when}-{safe}-{digest}"
