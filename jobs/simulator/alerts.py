"""SLO-burn alerts on user-facing services, as Alertmanager webhook (version 4) payloads.

Two SLOs per user-facing service (the edge gateway and the frontends), measured on their server
spans: availability (99.9 % of requests succeed) and latency (99 % of requests faster than a
per-route threshold learnt from the first minutes of the run). A multiwindow burn-rate rule
fires when both the 5-minute and the 1-minute burn rates exceed 14.4 for one minute
(Prometheus ``for: 1m``); Alertmanager then waits ``group_wait`` before notifying. Alerts fire on
symptoms only: the evaluator sees nothing but the user-facing services' spans.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from jobs.simulator.changes import iso
from jobs.simulator.engine import SERVER, SpanBatch, World

FIRING_ENDS_AT = "0001-01-01T00:00:00Z"
BURN_THRESHOLD = 14.4
SLO_TARGETS = {"availability": 0.999, "latency": 0.99}


@dataclass
class _RuleState:
    pending_since: float | None = None
    firing_since: float | None = None
    clear_since: float | None = None


@dataclass
class SloBurnAlerts:
    world: World
    slice_s: float
    calibration_s: float = 180.0
    for_s: float = 60.0
    group_wait_s: float = 30.0
    resolve_after_s: float = 300.0
    long_window_s: float = 300.0
    short_window_s: float = 60.0
    external_url: str = "http://alertmanager.prod:9093"
    thresholds_ms: dict[int, float] = field(default_factory=dict)
    _samples: dict[int, list[np.ndarray]] = field(default_factory=dict)
    _history: dict[int, deque[tuple[int, int, int]]] = field(default_factory=dict)
    _rules: dict[tuple[int, str], _RuleState] = field(default_factory=dict)
    _seen_s: float = 0.0

    def __post_init__(self) -> None:
        self.user_facing = [s.index for s in self.world.topo.services if s.user_facing]

    def observe(self, t_end_s: float, batch: SpanBatch) -> list[tuple[float, dict[str, object]]]:
        """Feed one slice of spans; return (notification time, payload) for alerts that changed."""
        n_ops = len(self.world.topo.operations)
        server = (batch.role == SERVER) & (batch.span_key < n_ops)
        ops = batch.span_key[server]
        dur_ms = (batch.end_ns[server] - batch.start_ns[server]) / 1e6
        failed = batch.variant[server] > 0
        svc = self.world.op_service[ops] if len(ops) else np.zeros(0, np.int64)
        self._seen_s += self.slice_s
        if self._seen_s <= self.calibration_s:
            for o in np.unique(ops).tolist():
                self._samples.setdefault(o, []).append(dur_ms[ops == o])
            if self._seen_s + self.slice_s > self.calibration_s:
                for o, parts in self._samples.items():
                    values = np.concatenate(parts)
                    self.thresholds_ms[o] = max(float(np.quantile(values, 0.99)) * 1.5, 50.0)
            return []
        limit = (
            np.array([self.thresholds_ms.get(o, 1e9) for o in ops.tolist()]) if len(ops) else dur_ms
        )
        slow = dur_ms > limit
        keep = int(self.long_window_s / self.slice_s)
        notifications: list[tuple[float, dict[str, object]]] = []
        for s in self.user_facing:
            mine = svc == s
            hist = self._history.setdefault(s, deque(maxlen=keep))
            hist.append((int(mine.sum()), int((failed & mine).sum()), int((slow & mine).sum())))
            for slo, column in (("availability", 1), ("latency", 2)):
                burn_long = _burn(hist, len(hist), column, SLO_TARGETS[slo])
                burn_short = _burn(
                    hist, int(self.short_window_s / self.slice_s), column, SLO_TARGETS[slo]
                )
                breach = burn_long > BURN_THRESHOLD and burn_short > BURN_THRESHOLD
                payload = self._step(s, slo, breach, t_end_s, burn_long)
                if payload is not None:
                    notifications.append(payload)
        return notifications

    def _step(
        self, s: int, slo: str, breach: bool, now: float, burn: float
    ) -> tuple[float, dict[str, object]] | None:
        rule = self._rules.setdefault((s, slo), _RuleState())
        if breach:
            rule.clear_since = None
            if rule.firing_since is None:
                if rule.pending_since is None:
                    rule.pending_since = now
                if now - rule.pending_since >= self.for_s:
                    rule.firing_since = now
                    return now + self.group_wait_s, self.payload(s, slo, now, None, burn)
            return None
        rule.pending_since = None
        if rule.firing_since is None:
            return None
        if rule.clear_since is None:
            rule.clear_since = now
        if now - rule.clear_since >= self.resolve_after_s:
            started = rule.firing_since
            rule.firing_since = None
            rule.clear_since = None
            return now, self.payload(s, slo, started, now, burn)
        return None

    def payload(
        self, s: int, slo: str, starts_s: float, ends_s: float | None, burn: float
    ) -> dict[str, object]:
        name = self.world.topo.services[s].name
        alertname = "LatencySLOBurn" if slo == "latency" else "ErrorBudgetBurn"
        labels = {
            "alertname": alertname,
            "service": name,
            "severity": "page",
            "slo": slo,
            "namespace": "prod",
        }
        what = "p99 latency" if slo == "latency" else "error rate"
        annotations = {
            "summary": f"{name} {what} burning the 30-day error budget {burn:.1f}x",
            "runbook_url": f"https://runbooks.example.com/slo/{slo}",
        }
        status = "firing" if ends_s is None else "resolved"
        fingerprint = hashlib.sha256(
            ",".join(f"{k}={v}" for k, v in sorted(labels.items())).encode()
        ).hexdigest()[:16]
        group_key = f'{{}}:{{alertname="{alertname}", service="{name}"}}'
        return {
            "version": "4",
            "groupKey": group_key,
            "truncatedAlerts": 0,
            "status": status,
            "receiver": "worldline",
            "groupLabels": {"alertname": alertname, "service": name},
            "commonLabels": labels,
            "commonAnnotations": annotations,
            "externalURL": self.external_url,
            "alerts": [
                {
                    "status": status,
                    "labels": labels,
                    "annotations": annotations,
                    "startsAt": iso(starts_s),
                    "endsAt": FIRING_ENDS_AT if ends_s is None else iso(ends_s),
                    "generatorURL": f"http://prometheus.prod:9090/graph?g0.expr=slo_burn_rate%7Bservice%3D%22{name}%22%7D",
                    "fingerprint": fingerprint,
                }
            ],
        }


def _burn(hist: deque[tuple[int, int, int]], last: int, column: int, target: float) -> float:
    rows = list(hist)[-last:]
    total = sum(r[0] for r in rows)
    if total < 20:
        return 0.0
    bad = sum(r[column] for r in rows)
    return (bad / total) / (1.0 - target)
