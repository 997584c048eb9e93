"""The simulator suite: every fault scenario over several seeds, through the same path as live.

Per case: simulate -> replay bundle (temporary directory) -> backfill (segments and world model,
exactly as the live stages) -> the alert the simulator's SLO rules fired first (parsed as an
Alertmanager webhook and mapped to a symptom like the causal-search worker does) -> search ->
metrics. The bundle is cut when the world model has closed the alert's interval (its end plus the
model's allowed lateness), so the world model knows what it would have known live when the
causal-search worker publishes its settled answer: an alert that fires within its own interval is
first answered from what was learned before it, then searched again once that interval is learned
(``jobs.causal.worker``); the settled answer is the one measured.

- A fault run where no alert fired is still searched, on the gateway's latency at onset + 5 min,
  so accuracy is measured; such cases are reported separately ("no alert").
- Fault-free runs (``normal``) fire no alert: a synthetic latency alert on the gateway at onset
  + 5 min is sent, and the right answer is no cause (abstention or an empty ranking).

BARO and N-Sigma run on the same cases: the per-interval values of every series, recomputed from
the stored segments with the world model's own derivation (``span_signals``, ``log_signals``,
``MetricDeriver``), one column per (entity, signal), the series attributed to the entity it
describes as the search does (an edge series to its peer). Neither can answer "no cause".

Metrics: per fault class top-1, top-3, Avg@5 (mean over k = 1..5 of top-k) and abstention rate,
the top-k of a ranking counting distinct entities (an empty ranking is a miss); calibration of the
top-1 probability (ECE over 10 bins, reliability table, precision of top-1 when p >= 0.8), fault
and fault-free cases together (on a fault-free run any named cause is wrong); specificity on the
fault-free runs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import pickle
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import astuple, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import polars as pl
import pyarrow as pa
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from jobs.backfill import backfill_bundle
from jobs.causal.alerts import Alert, SymptomMapper, parse_webhook
from jobs.causal.calibration import PREFIX, Calibration
from jobs.causal.calibration import features as search_features
from jobs.causal.search import (
    PEER,
    CausalSearch,
    SearchConfig,
    SearchResult,
    _peer_entity,
    client_metric_peer,
)
from jobs.demo import label_matches
from jobs.evaluate.baselines import baro, nsigma
from jobs.evaluate.bundle import OTLP_EXPORTS
from jobs.simulator.bundle import BundleWriter
from jobs.simulator.scenarios import SCENARIOS
from jobs.simulator.simulation import Record, RunConfig, Simulation
from pipeline.ingest.resource import GENERATED_CHARACTERS
from pipeline.segments.store import SegmentStore
from pipeline.settings import Settings
from pipeline.worldmodel import reads
from pipeline.worldmodel.model import WorldModel, WorldModelConfig
from pipeline.worldmodel.signals import MetricDeriver, log_signals, span_signals

FAULT_SCENARIOS = tuple(name for name in SCENARIOS if name != "normal")
QUICK_SCENARIOS = ("database-slowdown", "endpoint-errors", "hidden-cache-eviction")
METHODS = ("worldline", "baro", "nsigma")
START = dt.datetime(2026, 11, 20, 1, 0, tzinfo=dt.UTC).timestamp()  # a quiet hour, as the demo
NO_ALERT_DELAY_S = 300.0  # search time when no alert fired (and the synthetic alert's time)
BASELINE_WINDOW_S = 600.0  # the incident window BARO and N-Sigma rank over
HIGH_CONFIDENCE = 0.8
SETTLE_SLACK_S = 15.0  # a metric scrape interval: telemetry after it moves the watermark on
CASE_VERSION = 8  # part of a cached case's name: bumped when a case is prepared differently
# or the classes of its pickled world model change (their layout is in the pickle)
BINS = 10


REALISM = {
    "full": "traces, metrics and logs as instrumented; the alert names its signal",
    "metrics-only": "no traces and no logs: no dependency graph, only the metrics",
    "unobserved-alert": "the alert names its service but a signal worldline does not receive"
    " (a synthetic probe)",
    "trace-windows": "traces only in one minute of every three (files missing, sampling windows)",
    "trace-sampled": "one trace in ten kept, whole, as a probabilistic sampler on the trace id"
    " keeps them",
    "metrics-1s": "metrics scraped every second instead of every 15 s (sixty points per"
    " interval, each gauge measured afresh)",
    "metrics-60s": "metrics scraped every 60 s (one per interval) instead of every 15 s",
    "metrics-300s": "metrics scraped every 300 s instead of every 15 s",
    "standing-condition": "as unobserved-alert, and another service's heap grew to a new level"
    " 10 minutes before the fault and stays there, harmlessly (what an earlier incident or"
    " change leaves behind)",
    "earlier-incident": "as unobserved-alert, and a busy call between two other services"
    " slowed down for 3 minutes, over 6 minutes before the fault began (an earlier incident,"
    " whose deviations are still in the window when the fault's alert fires)",
    "node-metrics-on-pods": "each node's metrics exported with every pod it runs (the pod's"
    " service in their resource), as exports that join node metrics to pods deliver them:"
    " every service on a busy node shows its CPU, and the node has no series of its own",
    "pod-telemetry": "metrics and logs name their pod, not their service (a Collector's"
    " kubeletstats and filelog receivers without the k8sattributes processor); only the"
    " traces' SDKs name the service",
    "bare-spans": "spans with names, kinds, parents and times only, as traces rebuilt from"
    " span files deliver them: no attributes and no status; a call is a client span only"
    " when a span of another service is its child (a call to a database or an external API"
    " is an internal span), and client spans name their HTTP verb, not what they call",
}
"""What real deployments look like, as variations of the same simulated incidents."""
TRACE_WINDOW_EVERY = 3  # trace-windows: one minute of traces kept in this many
TRACE_SAMPLE_EVERY = 10  # trace-sampled: one trace kept in this many
COARSE_SCRAPE_S = {"metrics-60s": 60.0, "metrics-300s": 300.0}
FINE_SCRAPE_S = {"metrics-1s": 1.0}  # simulated at this scrape interval (15 s otherwise)
STANDING_CONDITION_S = 600.0  # standing-condition: how long before the fault it began
EARLIER_INCIDENT_S = 540.0  # earlier-incident: how long before the fault it began (3 min long)
UNOBSERVED = ("unobserved-alert", "standing-condition", "earlier-incident")
"""Modes whose alert names a signal worldline does not receive."""


@dataclass(frozen=True)
class SuiteConfig:
    services: int = 14
    history_s: float = 2400.0
    duration_s: float = 600.0
    peak_rate: float = 15.0
    slice_s: float = 10.0
    start_s: float = START
    realism: str = "full"

    def run(self, scenario: str, seed: int) -> RunConfig:
        return RunConfig(
            start_s=self.start_s,
            scenario=scenario,
            seed=seed,
            services=self.services,
            warmup_s=self.history_s,
            duration_s=self.duration_s,
            peak_rate=self.peak_rate,
            slice_s=self.slice_s,
            scrape_interval_s=FINE_SCRAPE_S.get(self.realism, RunConfig.scrape_interval_s),
            standing_condition_s=(
                STANDING_CONDITION_S if self.realism == "standing-condition" else None
            ),
            earlier_incident_s=EARLIER_INCIDENT_S if self.realism == "earlier-incident" else None,
        )


@dataclass
class Prepared:
    """A simulated case with its learned world model: searched once per search config."""

    scenario: str
    seed: int
    labels: dict[str, Any]
    model: WorldModel
    symptoms: list[tuple[str, str | None]]
    t_s: float
    alerted: bool
    baselines: dict[str, list[str]] = field(default_factory=dict)  # method -> ranked entities
    # the alert as filed: its entity and signal are mapped again at every search, as the
    # causal stage does (``symptoms`` is the mapping at preparation)
    alert: Alert | None = None

    @property
    def fault(self) -> bool:
        return bool(self.labels["faults"])

    @property
    def fault_class(self) -> str:
        return "normal" if not self.fault else str(self.labels["faults"][0]["fault_class"])


@dataclass
class Outcome:
    """One case's answer from worldline's search, scored."""

    scenario: str
    seed: int
    fault_class: str
    fault: bool
    alerted: bool
    ranked: list[str]  # distinct entities, best first
    logits: list[float]
    probability: float  # top-1 probability, 0 when nothing is named
    abstained: bool
    reason: str | None
    hits: list[bool]  # hit at k = 1..5 (worldline)
    baseline_hits: dict[str, list[bool]]
    baseline_ranked: dict[str, list[str]]
    # the search's statistics: calibration features (``jobs.causal.calibration``) among them
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def named_cause(self) -> bool:
        return bool(self.ranked) and not self.abstained


def matches(entity: str, labels: dict[str, Any]) -> bool:
    """Does ``entity`` name a labelled root cause (or an entity the label accepts)?"""
    for fault in labels["faults"]:
        for label in [fault["entity"], *fault.get("acceptable_entities", [])]:
            if label_matches(entity, label):
                return True
    return False


def hits_at(ranked: Sequence[str], labels: dict[str, Any], k_max: int = 5) -> list[bool]:
    found = next((k for k, e in enumerate(ranked) if matches(e, labels)), None)
    return [found is not None and found < k for k in range(1, k_max + 1)]


def _distinct(entities: Sequence[str]) -> list[str]:
    out: list[str] = []
    for e in entities:
        if e not in out:
            out.append(e)
    return out


# ----------------------------------------------------------------------------- one case
def _alert_payload(service: str, t_s: float) -> dict[str, Any]:
    """A latency SLO alert on ``service`` starting at ``t_s``, as Alertmanager would send it."""
    labels = {
        "alertname": "LatencySLOBurn",
        "service": service,
        "severity": "page",
        "slo": "latency",
        "namespace": "prod",
    }
    starts = dt.datetime.fromtimestamp(t_s, tz=dt.UTC).isoformat().replace("+00:00", "Z")
    return {
        "version": "4",
        "groupKey": f'{{}}:{{alertname="LatencySLOBurn", service="{service}"}}',
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "worldline",
        "groupLabels": {"alertname": "LatencySLOBurn", "service": service},
        "commonLabels": labels,
        "commonAnnotations": {"summary": f"{service} p99 latency burning the error budget"},
        "externalURL": "http://alertmanager.eval:9093",
        "alerts": [
            {
                "status": "firing",
                "labels": labels,
                "annotations": {"summary": f"{service} p99 latency burning the error budget"},
                "startsAt": starts,
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus.eval:9090/",
                "fingerprint": f"eval-{service}",
            }
        ],
    }


def _gateway(labels: dict[str, Any]) -> str:
    services = labels["topology"]["services"]
    for s in services:
        if s.get("tier") == "gateway":
            return str(s["name"])
    return str(next(s["name"] for s in services if s.get("user_facing")))


def settled_ms(notified_ms: int, starts_at_s: float) -> int:
    """When the causal-search worker publishes its settled answer to an alert: once the world
    model has closed the alert's interval, which takes the interval's end plus the allowed
    lateness plus the next telemetry that moves the watermark past that (``SETTLE_SLACK_S``),
    or at notification when that had already happened."""
    model = WorldModelConfig()
    interval_end = (math.floor(starts_at_s / model.interval_s) + 1) * model.interval_s
    settled_s = interval_end + model.allowed_lateness_s + SETTLE_SLACK_S
    return max(notified_ms, int(settled_s * 1000))


def prepare(
    scenario: str, seed: int, suite: SuiteConfig, workdir: Path, *, baselines: bool = True
) -> Prepared:
    run = suite.run(scenario, seed)
    sim = Simulation(run)
    records: list[Record] = list(sim.records())
    labels = sim.labels()
    firing = [
        (r, doc)
        for r in records
        if r.topic == "alerts" and (doc := orjson.loads(r.value)).get("status") == "firing"
    ]
    if run.earlier_incident_s is not None:
        # the alert answered is the fault's: the earlier incident's fired before it began
        firing = [(r, doc) for r, doc in firing if parse_webhook(doc)[0].starts_at_s >= run.onset_s]
    records = realistic(records, suite.realism)
    if firing and labels["faults"]:
        record, payload = min(firing, key=lambda x: x[0].timestamp_ms)
        cut_ms = settled_ms(record.timestamp_ms, parse_webhook(payload)[0].starts_at_s)
        alerted = True
    else:
        t_alert = run.onset_s + NO_ALERT_DELAY_S
        payload = _alert_payload(_gateway(labels), t_alert)
        cut_ms = settled_ms(int(t_alert * 1000), t_alert)
        alerted = False
    bundle = workdir / "bundle"
    writer = BundleWriter(bundle)
    writer.write_all(r for r in records if r.timestamp_ms <= cut_ms and r.topic != "alerts")
    writer.close(labels, {**run.__dict__, "onset_s": run.onset_s, "end_s": run.end_s})
    del records
    settings = Settings(data_dir=workdir / "data")
    backfill_bundle(bundle, settings, now=dt.datetime.fromtimestamp(cut_ms / 1000, tz=dt.UTC))
    store = SegmentStore(settings.data_dir / "segments")
    model = reads.load(store)
    if suite.realism in UNOBSERVED:
        payload = unobserved(payload)
    [alert] = parse_webhook(payload)
    symptoms = mapped_symptoms(model, alert)
    prepared = Prepared(scenario, seed, labels, model, symptoms, alert.starts_at_s, alerted)
    prepared.alert = alert
    if baselines:
        prepared.baselines = baseline_rankings(store, model, alert.starts_at_s, settings.interval_s)
    return prepared


def realistic(records: list[Record], realism: str) -> list[Record]:
    """The simulated telemetry as a deployment of kind ``realism`` (``REALISM``) delivers it."""
    if realism not in REALISM:
        raise ValueError(f"unknown realism {realism!r}: one of {', '.join(REALISM)}")
    if realism == "metrics-only":
        return [r for r in records if r.topic not in ("otlp_spans", "otlp_logs")]
    if realism == "trace-windows":
        return [
            r
            for r in records
            if r.topic != "otlp_spans" or (r.timestamp_ms // 60_000) % TRACE_WINDOW_EVERY == 0
        ]
    if realism == "trace-sampled":
        return [
            r if r.topic != "otlp_spans" else replace(r, value=sampled_spans(r.value))
            for r in records
        ]
    if realism == "node-metrics-on-pods":
        return node_metrics_on_pods(records)
    if realism == "pod-telemetry":
        return [
            replace(r, value=pod_telemetry(r.topic, r.value)) if r.topic in OTLP_EXPORTS else r
            for r in records
        ]
    if realism == "bare-spans":
        return bare_spans(records)
    if realism in COARSE_SCRAPE_S:
        # scrapes are stamped at their own time: the first in every COARSE_SCRAPE_S is kept
        every_ms = COARSE_SCRAPE_S[realism] * 1000
        first: dict[int, int] = {}
        for r in records:
            if r.topic == "otlp_metrics":
                slot = int(r.timestamp_ms // every_ms)
                first[slot] = min(first.get(slot, r.timestamp_ms), r.timestamp_ms)
        keep = set(first.values())
        return [r for r in records if r.topic != "otlp_metrics" or r.timestamp_ms in keep]
    return records


def node_metrics_on_pods(records: list[Record]) -> list[Record]:
    """The metrics with each node's own (a resource naming a node and no service) exported
    again in every pod resource on that node at the same scrape, and no longer on their own."""
    parsed: list[tuple[Record, Any]] = []
    by_node: dict[tuple[str, int], list[Any]] = {}
    for r in records:
        request = None
        if r.topic == "otlp_metrics":
            request = ExportMetricsServiceRequest()
            request.ParseFromString(r.value)
            for rm in request.resource_metrics:
                node, owned = _node_of(rm.resource)
                if node is not None and not owned:
                    for metric in (m for sm in rm.scope_metrics for m in sm.metrics):
                        for t in _times(metric):
                            by_node.setdefault((node, t), []).append(metric)
        parsed.append((r, request))
    out = []
    for r, request in parsed:
        if request is None:
            out.append(r)
            continue
        kept = []
        for rm in request.resource_metrics:
            node, owned = _node_of(rm.resource)
            if node is not None and not owned:
                continue  # the node's own export: now carried by its pods
            if node is not None and rm.scope_metrics:
                scope = rm.scope_metrics[0]
                for t in sorted({t for m in scope.metrics for t in _times(m)}):
                    scope.metrics.extend(by_node.get((node, t), []))
            kept.append(rm)
        if kept:
            del request.resource_metrics[:]
            request.resource_metrics.extend(kept)
            out.append(replace(r, value=request.SerializeToString()))
    return out


def _node_of(resource: Any) -> tuple[str | None, bool]:
    """The node a metrics resource names (if any), and whether it names a service too."""
    attrs = {kv.key: kv.value.string_value for kv in resource.attributes}
    return attrs.get("k8s.node.name") or attrs.get("host.name"), "service.name" in attrs


def _times(metric: Any) -> set[int]:
    """The instants of a gauge's or a sum's points."""
    return {dp.time_unix_nano for dp in (metric.gauge.data_points or metric.sum.data_points)}


SERVICE_ATTRIBUTES = ("service.", "k8s.deployment.name", "telemetry.sdk.")
"""pod-telemetry: what a resource gathered about a pod lacks (the SDK's and the workload's)."""


def kubernetes_pod_name(pod: str, service: str) -> str:
    """The name Kubernetes gives a Deployment's pod (``<deployment>-<template hash>-<five>``,
    characters of its vowel-free alphabet), the same for the same simulated pod."""
    digest = hashlib.sha1(pod.encode()).digest()
    chars = "".join(GENERATED_CHARACTERS[b % len(GENERATED_CHARACTERS)] for b in digest)
    return f"{service}-{chars[:10]}-{chars[10:15]}"


def pod_telemetry(topic: str, value: bytes) -> bytes:
    """An OTLP export as a Collector gathering it about pods delivers it: every pod named as
    Kubernetes names it, and metrics and logs naming no service (spans keep their SDK's)."""
    message, field_name = OTLP_EXPORTS[topic]
    request = message()
    request.ParseFromString(value)
    for resource in (r.resource for r in getattr(request, field_name)):
        attrs = {kv.key: kv.value.string_value for kv in resource.attributes}
        pod, service = attrs.get("k8s.pod.name"), attrs.get("service.name")
        if not pod or not service:
            continue  # a node's own
        kept = [
            kv
            for kv in resource.attributes
            if topic == "otlp_spans" or not kv.key.startswith(SERVICE_ATTRIBUTES)
        ]
        del resource.attributes[:]
        resource.attributes.extend(kept)
        for kv in resource.attributes:
            if kv.key in ("k8s.pod.name", "service.instance.id"):
                kv.value.string_value = kubernetes_pod_name(pod, service)
    return request.SerializeToString()


def bare_spans(records: list[Record]) -> list[Record]:
    """The span exports with every attribute, event and status dropped, and a client or
    producer span that no span of another service has as its parent made internal: what a
    trace keeps when only its spans' names, kinds, parents and times were recorded."""
    requests: list[ExportTraceServiceRequest | None] = []
    service_of: dict[bytes, str] = {}
    children: list[tuple[bytes, str]] = []
    for r in records:
        request = None
        if r.topic == "otlp_spans":
            request = ExportTraceServiceRequest()
            request.ParseFromString(r.value)
            for rs in request.resource_spans:
                service = next(
                    (
                        kv.value.string_value
                        for kv in rs.resource.attributes
                        if kv.key == "service.name"
                    ),
                    "",
                )
                for span in (s for ss in rs.scope_spans for s in ss.spans):
                    service_of[span.span_id] = service
                    if span.parent_span_id:
                        children.append((span.parent_span_id, service))
        requests.append(request)
    called = {parent for parent, service in children if service_of.get(parent, service) != service}
    out = []
    for r, request in zip(records, requests, strict=True):
        if request is None:
            out.append(r)
            continue
        for span in (s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans):
            del span.attributes[:]
            del span.events[:]
            span.ClearField("status")
            if span.kind in (Span.SPAN_KIND_CLIENT, Span.SPAN_KIND_PRODUCER) and (
                span.span_id not in called
            ):
                span.kind = Span.SPAN_KIND_INTERNAL
        out.append(replace(r, value=request.SerializeToString()))
    return out


def sampled_spans(value: bytes, every: int = TRACE_SAMPLE_EVERY) -> bytes:
    """An OTLP span export with one trace in ``every`` kept, by its trace id: every span of a
    kept trace stays, whichever service exported it (a consistent probabilistic sampler)."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(value)
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            kept = [span for span in ss.spans if int.from_bytes(span.trace_id[-8:]) % every == 0]
            del ss.spans[:]
            ss.spans.extend(kept)
    return request.SerializeToString()


def unobserved(payload: dict[str, Any]) -> dict[str, Any]:
    """The alert as a synthetic probe on the same service would fire it: same service and
    time, a name and summary that say nothing of the signal."""
    out = orjson.loads(orjson.dumps(payload))
    for alert in out["alerts"]:
        service = alert["labels"].get("service", "")
        alert["labels"] = {"alertname": "SyntheticProbeRed", "service": service}
        alert["annotations"] = {"summary": f"the synthetic probe of {service} is red"}
    out["commonLabels"] = {"alertname": "SyntheticProbeRed"}
    out["commonAnnotations"] = {}
    out["groupLabels"] = {"alertname": "SyntheticProbeRed"}
    return out


def _attributed(entity: str, signal: str, services: set[str]) -> str:
    """The entity a series is evidence about, as the search attributes it."""
    if signal.startswith("edge."):
        peer = PEER.search(signal)
        return _peer_entity(peer.group(1), services) if peer else entity
    described = client_metric_peer(signal)
    return _peer_entity(described, services) if described else entity


def signal_frame(store: SegmentStore, interval_s: float) -> pl.DataFrame:
    """Every series of the stored segments, per interval (entity, signal, interval, value)."""
    frames: list[pl.DataFrame] = []
    spans = store.select("spans")
    if spans:
        table = pa.concat_tables([store.read(m) for m in spans], promote_options="permissive")
        frames.append(span_signals(table, interval_s))
    logs = store.select("logs")
    if logs:
        table = pa.concat_tables([store.read(m) for m in logs], promote_options="permissive")
        frames.append(log_signals(table, interval_s))
    series, points = store.manifests("metric_series"), store.select("metrics")
    if series and points:
        s_table = pa.concat_tables([store.read(m) for m in series], promote_options="permissive")
        p_table = pa.concat_tables([store.read(m) for m in points], promote_options="permissive")
        p_table = p_table.sort_by([("series_id", "ascending"), ("time_unix_nano", "ascending")])
        frames.append(MetricDeriver(interval_s=interval_s).derive(s_table, p_table))
    cols = ["entity", "signal", "interval_start_unix_nano", "value"]
    return pl.concat([f.select(cols) for f in frames]) if frames else pl.DataFrame()


def baseline_rankings(
    store: SegmentStore, model: WorldModel, t_s: float, interval_s: float
) -> dict[str, list[str]]:
    """BARO and N-Sigma over the series' values: normal history, then the incident window."""
    frame = signal_frame(store, interval_s)
    if frame.is_empty():
        return {m: [] for m in ("baro", "nsigma")}
    end_ns = int(math.floor(t_s / interval_s) * interval_s * 1e9)
    frame = frame.filter(pl.col("interval_start_unix_nano") < end_ns)
    keys = sorted({(e, s) for e, s in frame.select("entity", "signal").iter_rows()})
    col = {k: j for j, k in enumerate(keys)}
    times = sorted(set(frame["interval_start_unix_nano"].to_list()))
    row = {t: i for i, t in enumerate(times)}
    data = np.full((len(times), len(keys)), np.nan)
    for e, s, t, v in frame.iter_rows():
        if v is not None:
            data[row[t], col[(e, s)]] = v
    services = {e for e, _ in keys if e.startswith("service:")}
    labels = [_attributed(e, s, services) for e, s in keys]
    split = max(1, len(times) - int(BASELINE_WINDOW_S / interval_s))
    normal, window = data[:split], data[split:]
    out = {}
    for name, method in (("baro", baro), ("nsigma", nsigma)):
        out[name] = _distinct([label for label, _ in method(normal, window, labels)])
    return out


def as_searched(model: WorldModel, t_s: float) -> WorldModel:
    """The model as the causal stage searches it at ``t_s``: itself when it has closed the
    interval holding ``t_s``, else a copy with the open intervals through that one closed as
    they stand (``WorldModel.provisional``). Metrics scraped every few minutes hold the
    model's watermark back that long; the stage does not wait for them."""
    t_ns = int(t_s * 1e9)
    interval_ns = int(model.config.interval_s * 1e9)
    if model.closed_through >= (t_ns // interval_ns + 1) * interval_ns:
        return model
    view = WorldModel.restore(model.checkpoint())
    view.provisional(t_ns)
    return view


def mapped_symptoms(model: WorldModel, alert: Alert) -> list[tuple[str, str | None]]:
    """The alert's entity and signal on ``model``, as the causal stage maps them."""
    known = {e for e, _ in model.baselines.keys()}
    known.update(str(n) for n in model.graph.as_of(model.watermark or 2**62).nodes)
    signals: dict[str, list[str]] = {}
    for entity, signal in model.baselines.keys():
        signals.setdefault(entity, []).append(signal)
    symptom = SymptomMapper(known, lambda e: signals.get(e, [])).map(alert)
    return [(symptom.entity, symptom.signal)] if symptom.entity else []


def score(prepared: Prepared, config: SearchConfig) -> Outcome:
    symptoms = prepared.symptoms
    if prepared.alert is not None:
        symptoms = mapped_symptoms(prepared.model, prepared.alert)
    if symptoms:
        model = as_searched(prepared.model, prepared.t_s)
        result = CausalSearch(model, config).run(symptoms, prepared.t_s)
    else:
        result = SearchResult([], [], True, "the alert names no known entity", [], None, {})
    ranked = _distinct([c.entity for c in result.causes])
    logits = [c.logit for c in result.causes]
    labels = prepared.labels
    return Outcome(
        scenario=prepared.scenario,
        seed=prepared.seed,
        fault_class=prepared.fault_class,
        fault=prepared.fault,
        alerted=prepared.alerted,
        ranked=ranked,
        logits=logits,
        probability=result.causes[0].probability if result.causes else 0.0,
        abstained=result.abstained,
        reason=result.abstain_reason,
        hits=hits_at(ranked, labels),
        baseline_hits={m: hits_at(r, labels) for m, r in prepared.baselines.items()},
        baseline_ranked={m: r[:5] for m, r in prepared.baselines.items()},
        stats=dict(result.stats),
    )


def prepare_all(
    scenarios: Sequence[str],
    seeds: Sequence[int],
    suite: SuiteConfig,
    *,
    normal_runs: bool = True,
    baselines: bool = True,
    on_case: Callable[[str], None] = lambda _key: None,
    cache: Path | None = None,
) -> list[Prepared]:
    """Every (scenario, seed) case, prepared; with ``cache`` (a directory), a case prepared
    before under the same suite settings is read back instead of simulated again."""
    out = []
    names = [*scenarios, *(["normal"] if normal_runs else [])]
    tag = "-".join(v if isinstance(v, str) else f"{v:g}" for v in (*astuple(suite), CASE_VERSION))
    for seed in seeds:
        for name in names:
            path = cache / f"{name}-{seed}-{tag}-{int(baselines)}.pkl" if cache else None
            if path is not None and path.exists():
                out.append(pickle.loads(path.read_bytes()))
            else:
                with tempfile.TemporaryDirectory(prefix="worldline-eval-") as tmp:
                    prepared = prepare(name, seed, suite, Path(tmp), baselines=baselines)
                out.append(prepared)
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp_path = path.with_suffix(".tmp")
                    tmp_path.write_bytes(pickle.dumps(prepared))
                    tmp_path.replace(path)
            on_case(f"{name}/{seed}")
    return out


# ------------------------------------------------------------------------------ metrics
def _mean(xs: Sequence[float]) -> float:
    return float(np.mean(xs)) if len(xs) else math.nan


def accuracy(outcomes: Sequence[Outcome], method: str = "worldline") -> dict[str, float]:
    hits = [o.hits if method == "worldline" else o.baseline_hits.get(method, []) for o in outcomes]
    hits = [h for h in hits if h]
    return {
        "n": float(len(hits)),
        "top1": _mean([h[0] for h in hits]),
        "top3": _mean([h[2] for h in hits]),
        "avg5": _mean([float(np.mean(h)) for h in hits]),
    }


def calibration(outcomes: Sequence[Outcome], bins: int = BINS) -> dict[str, Any]:
    """ECE of the top-1 probability (equal-width bins), reliability table, precision at p >= 0.8.

    Correct means: on a fault run, the top cause is the labelled one; on a fault-free run,
    nothing can be correct (a probability there is a false claim)."""
    p = np.array([o.probability for o in outcomes], dtype=float)
    y = np.array([bool(o.fault and o.hits[0]) for o in outcomes], dtype=float)
    table = []
    ece = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = (p >= lo) & ((p < hi) if b < bins - 1 else (p <= hi))
        n = int(inside.sum())
        if n:
            conf, acc = float(p[inside].mean()), float(y[inside].mean())
            ece += n / len(p) * abs(conf - acc)
            table.append({"bin": f"{lo:.1f}-{hi:.1f}", "n": n, "confidence": conf, "accuracy": acc})
    high = p >= HIGH_CONFIDENCE
    return {
        "n": len(p),
        "ece": float(ece) if len(p) else math.nan,
        "reliability": table,
        "high_confidence_n": int(high.sum()),
        "high_confidence_precision": float(y[high].mean()) if high.any() else math.nan,
    }


def summarize(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    faults = [o for o in outcomes if o.fault]
    alerted = [o for o in faults if o.alerted]
    normals = [o for o in outcomes if not o.fault]
    classes = sorted({o.fault_class for o in faults})
    per_class = {}
    for c in classes:
        group = [o for o in alerted if o.fault_class == c]
        per_class[c] = {
            "scenarios": sorted({o.scenario for o in faults if o.fault_class == c}),
            "no_alert": sum(1 for o in faults if o.fault_class == c and not o.alerted),
            **{m: accuracy(group, m) for m in METHODS},
            "abstention": _mean([float(o.abstained) for o in group]),
        }
    return {
        "cases": len(outcomes),
        "per_class": per_class,
        "overall": {
            **{m: accuracy(alerted, m) for m in METHODS},
            "abstention": _mean([float(o.abstained) for o in alerted]),
        },
        "no_alert": {
            "n": len(faults) - len(alerted),
            **{m: accuracy([o for o in faults if not o.alerted], m) for m in METHODS},
        },
        "calibration": calibration(_calibrated_cases(outcomes)),
        "specificity": {
            "n": len(normals),
            "worldline": _mean([float(not o.named_cause) for o in normals]),
            "baro": 0.0 if normals else math.nan,
            "nsigma": 0.0 if normals else math.nan,
        },
    }


# ---------------------------------------------------------------------------- calibration
def _calibrated_cases(outcomes: Sequence[Outcome]) -> list[Outcome]:
    """The cases calibration is measured on: fault runs with an alert, and fault-free runs."""
    return [o for o in outcomes if o.alerted or not o.fault]


def probabilities(logits: Sequence[float], temperature: float, null_logit: float) -> np.ndarray:
    z = np.concatenate([np.asarray(logits, dtype=float), [null_logit]]) / temperature
    z -= z.max()
    e = np.exp(z)
    return np.asarray(e / e.sum())


def recalibrated(outcome: Outcome, temperature: float, null_logit: float) -> float:
    if not outcome.logits:
        return 0.0
    return float(probabilities(outcome.logits, temperature, null_logit)[0])


TEMPERATURES = tuple(round(x, 2) for x in np.arange(0.5, 4.01, 0.1))
NULL_LOGITS = tuple(round(x, 2) for x in np.arange(-2.0, 10.01, 0.2))
PRIOR_WEIGHT = 0.01


def fit_probability(
    outcomes: Sequence[Outcome],
    temperatures: Sequence[float] = TEMPERATURES,
    null_logits: Sequence[float] = NULL_LOGITS,
) -> tuple[float, float, float]:
    """Temperature and null logit minimising the log loss of "the top cause is right" over the
    cases (fault runs with an alert, and fault-free runs), plus a weak Gaussian prior around
    the hand-set mapping (temperature 1, null logit 3.2; weight ``PRIOR_WEIGHT``) so that a
    training set the search gets entirely right does not drive both to the edge of the grid.
    The ranking does not depend on either, so the search's logits are reused:
    (temperature, null logit, log loss without the prior)."""
    cases = _calibrated_cases(outcomes)
    y = np.array([bool(o.fault and o.hits[0]) for o in cases], dtype=float)
    best: tuple[float, float, float, float] | None = None
    for t in temperatures:
        for null in null_logits:
            p = np.array([recalibrated(o, t, null) for o in cases])
            p = np.clip(p, 1e-4, 1 - 1e-4)
            loss = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
            penalty = PRIOR_WEIGHT * ((t - 1.0) ** 2 + ((null - 3.2) / 3.0) ** 2)
            if best is None or loss + penalty < best[3] - 1e-12:
                best = (float(t), float(null), loss, loss + penalty)
    assert best is not None
    return best[0], best[1], best[2]


def with_probability(outcomes: Sequence[Outcome], config: SearchConfig) -> list[Outcome]:
    """The outcomes as the search would give them under ``config``'s temperature and null logit
    (same ranking; probability and probability-based abstention recomputed)."""
    out = []
    mapping = Calibration.from_sequence(config.calibration)
    for o in outcomes:
        raw = recalibrated(o, config.temperature, config.null_logit)
        p = raw
        if o.logits and PREFIX + "margin" in o.stats:
            # the measures the temperature and null logit change, as the search computes them
            gap = (o.logits[0] - o.logits[1]) / config.temperature if len(o.logits) > 1 else None
            now = search_features(raw, gap, None, False, 1, False, False)
            p = mapping.probability(
                o.stats | {k: now[k] for k in (PREFIX + "odds", PREFIX + "margin")}
            )
        out.append(
            replace(o, probability=p, abstained=(not o.logits) or raw < config.abstain_below)
        )
    return out


# -------------------------------------------------------------------------------- report
def _f(x: Any) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def render(summary: dict[str, Any]) -> str:
    lines = [
        "| fault class | n | worldline top-1 | top-3 | Avg@5 | abstain | BARO top-1 | top-3 |"
        " Avg@5 | N-Sigma top-1 | top-3 | Avg@5 | no alert |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def row(name: str, d: dict[str, Any], no_alert: Any) -> str:
        w, b, n = d["worldline"], d["baro"], d["nsigma"]
        return (
            f"| {name} | {int(w['n'])} | {_f(w['top1'])} | {_f(w['top3'])} | {_f(w['avg5'])}"
            f" | {_f(d['abstention'])} | {_f(b['top1'])} | {_f(b['top3'])} | {_f(b['avg5'])}"
            f" | {_f(n['top1'])} | {_f(n['top3'])} | {_f(n['avg5'])} | {no_alert} |"
        )

    for name, d in summary["per_class"].items():
        lines.append(row(name, d, d["no_alert"]))
    lines.append(row("**overall**", summary["overall"], summary["no_alert"]["n"]))
    na = summary["no_alert"]
    if na["n"]:
        lines += [
            "",
            f"Fault runs where no alert fired ({na['n']}; searched on the gateway's latency at"
            f" onset + 5 min): worldline top-1 {_f(na['worldline']['top1'])},"
            f" top-3 {_f(na['worldline']['top3'])}; BARO top-1 {_f(na['baro']['top1'])};"
            f" N-Sigma top-1 {_f(na['nsigma']['top1'])}.",
        ]
    cal = summary["calibration"]
    spec = summary["specificity"]
    lines += [
        "",
        f"Calibration of the top-1 probability ({cal['n']} cases, fault-free runs included):"
        f" ECE {_f(cal['ece'])}; top-1 precision when p >= {HIGH_CONFIDENCE}:"
        f" {_f(cal['high_confidence_precision'])} ({cal['high_confidence_n']} cases).",
        "",
        "| p bin | n | mean p | accuracy |",
        "|---|---|---|---|",
        *(
            f"| {r['bin']} | {r['n']} | {_f(r['confidence'])} | {_f(r['accuracy'])} |"
            for r in cal["reliability"]
        ),
        "",
        f"Specificity on fault-free runs ({spec['n']}, synthetic gateway latency alert; right ="
        f" no cause named): worldline {_f(spec['worldline'])}, BARO {_f(spec['baro'])},"
        f" N-Sigma {_f(spec['nsigma'])} (they always rank).",
    ]
    return "\n".join(lines)


def outcome_json(o: Outcome) -> dict[str, Any]:
    return {
        "scenario": o.scenario,
        "seed": o.seed,
        "fault_class": o.fault_class,
        "fault": o.fault,
        "alerted": o.alerted,
        "ranked": o.ranked[:5],
        "probability": o.probability,
        "abstained": o.abstained,
        "reason": o.reason,
        "hits": o.hits,
        "stats": o.stats,
        "baselines": {
            m: {"ranked": o.baseline_ranked.get(m, []), "hits": h}
            for m, h in o.baseline_hits.items()
        },
    }
