"""Offline evaluation of a labelled replay bundle through worldline's own code, in event time.

A replay bundle (``heldout-replay-bundle/1``: ``manifest.json``, ``alerts.jsonl``,
``labels.jsonl`` and ``stream/*.rec.zst``, the format the replay tool documents) is what a
Collector and Alertmanager would deliver. Here it goes through the same cores as the live stages,
without a broker: each OTLP record is spread over its topic's partitions as a round-robin
producer does and sealed into segments by ``SegmentIngestor``; the world model applies them in
event time (``catch_up``); every alert is filed in an ``IncidentBook`` and answered as the causal
stage answers it:

- first: once every record stamped up to the alert's ``startsAt`` is stored, from a copy of the
  model whose open intervals through the alert's are closed as they stand (``provisional``);
- final: once the model has closed the alert's interval for good (the stage's re-search).

BARO and N-Sigma rank the bundle's metrics at the same instants (``replay_baselines``), so the
three are compared on the same data in one run. Scores follow the replay tool: AS@k counts the
alerts whose labelled service is among the first k distinct services named; an abstention or an
empty answer is a miss. Faster than a replay through Kafka (no waits), so it is the loop to
develop the search in; the replay remains the judge of the live path.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import struct
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zstandard
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from jobs.causal import calibration
from jobs.causal.alerts import IncidentBook, SymptomMapper, parse_time, parse_webhook
from jobs.causal.followup import supersedes
from jobs.causal.record import iso
from jobs.causal.search import SearchConfig
from jobs.causal.worker import _known_entities, _signals_of, coverage_of, search_incident
from jobs.evaluate import replay_baselines
from pipeline.ingest.core import KafkaRecord, Limits, SegmentIngestor, codec_for
from pipeline.segments.store import SegmentStore
from pipeline.worldmodel.model import WorldModel, WorldModelConfig
from pipeline.worldmodel.worker import SOURCE_SIGNALS, catch_up

FORMAT = "heldout-replay-bundle/1"
MAGIC = b"HOB1"
HEADER = struct.Struct("<BqiI")  # topic code, timestamp ms, key length (-1: null), value length
TOPIC_CODES = ("otlp_spans", "otlp_metrics", "otlp_logs", "changes")
OTLP_TOPICS = ("otlp_spans", "otlp_metrics", "otlp_logs")
OTLP_EXPORTS: dict[str, tuple[Any, str]] = {
    "otlp_spans": (ExportTraceServiceRequest, "resource_spans"),
    "otlp_metrics": (ExportMetricsServiceRequest, "resource_metrics"),
    "otlp_logs": (ExportLogsServiceRequest, "resource_logs"),
}
"""Each telemetry topic's OTLP export request, and the field holding its resources' blocks."""
SEAL_RECORDS = 200  # records per topic between seals: a few seconds of a busy Collector
KS = (1, 2, 3, 4, 5)
IDLE_S = 30.0  # as the live setting idle_partition_s, in event time


class BundleError(ValueError):
    """The folder is not a replay bundle this evaluator can read."""


@dataclass(frozen=True)
class StreamRecord:
    topic: str
    timestamp_ms: int
    value: bytes


def read_manifest(bundle: Path) -> dict[str, Any]:
    path = bundle / "manifest.json"
    if not path.exists():
        raise BundleError(f"{bundle}: no manifest.json (not a replay bundle)")
    manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT}")
    return manifest


def read_stream(bundle: Path, manifest: dict[str, Any]) -> Iterator[StreamRecord]:
    """The bundle's records in their (event-time) order."""
    for part in manifest["parts"]:
        with (bundle / part["file"]).open("rb") as raw:
            data = zstandard.ZstdDecompressor().stream_reader(raw).read()
        if data[:4] != MAGIC:
            raise BundleError(f"{part['file']}: no {MAGIC!r} header")
        pos = 4
        while pos < len(data):
            code, ts, key_len, value_len = HEADER.unpack_from(data, pos)
            pos += HEADER.size + max(key_len, 0)
            value = data[pos : pos + value_len]
            pos += value_len
            yield StreamRecord(TOPIC_CODES[code], ts, value)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def shift_alerts(payload: dict[str, Any], shift_s: float) -> dict[str, Any]:
    """The webhook payload with each alert's ``startsAt`` moved by ``shift_s`` seconds (later
    when positive): the same incidents alerted by a rule that fires sooner or later."""
    if not shift_s:
        return payload
    alerts = []
    for alert in payload.get("alerts") or []:
        starts = alert.get("startsAt") if isinstance(alert, dict) else None
        if isinstance(starts, str):
            try:
                moved = dt.datetime.fromisoformat(starts) + dt.timedelta(seconds=shift_s)
            except ValueError as e:
                raise BundleError(f"an alert's startsAt is not a time: {starts!r}") from e
            alert = {**alert, "startsAt": iso(moved.timestamp())}
        alerts.append(alert)
    return {**payload, "alerts": alerts}


@dataclass
class Answers:
    """Each alert's first and final record of one method, by fingerprint."""

    first: dict[str, dict[str, Any]] = field(default_factory=dict)
    final: dict[str, dict[str, Any]] = field(default_factory=dict)


def settled_record(earlier: dict[str, Any] | None, record: dict[str, Any]) -> dict[str, Any]:
    """An alert's final record: its re-search once the alert's interval has closed, unless that
    names no cause after ``earlier`` (its first record) named one. The stage keeps the earlier
    answer then (``followup.supersedes``): the re-search was looking for more, not for less."""
    if earlier is None:
        return record
    return record if supersedes(bool(record["causes"]), bool(earlier["causes"]), 1) else earlier


def services_named(record: dict[str, Any] | None, pod_to_service: dict[str, str]) -> list[str]:
    """Distinct services in the record's order (pods count as their service); [] for none."""
    if not record or record.get("abstained") or not record.get("causes"):
        return []
    out: list[str] = []
    for cause in record["causes"]:
        name = cause["entity"]["name"]
        name = pod_to_service.get(name, name)
        if name not in out:
            out.append(name)
    return out


def on_incident_evidence(
    record: dict[str, Any] | None, label: dict[str, Any], interval_s: float
) -> bool | None:
    """Whether the record's first cause deviates from the labelled incident on: its onset no
    earlier than the interval before the one the fault was injected in (an onset is the
    start of its interval, known to within one). None when either time is unknown (the label
    has no ``inject_time``, the cause no onset)."""
    injected = _seconds(label.get("inject_time"))
    causes = (record or {}).get("causes") or []
    onset = _seconds(causes[0].get("onset")) if causes else None
    if injected is None or onset is None:
        return None
    return onset >= (injected // interval_s - 1) * interval_s


def _seconds(text: object) -> float | None:
    """A label's or a record's time in unix seconds; None when absent or not a time."""
    try:
        return parse_time(text) if isinstance(text, str) else None
    except ValueError:
        return None


def score(
    answers: dict[str, dict[str, Any]],
    labels: list[dict[str, Any]],
    pod_to_service: dict[str, str],
    interval_s: float = 60.0,
) -> dict[str, Any]:
    """AS@k, Avg@5, abstention and top-1 calibration overall and per fault type, and
    ``AS@1 own``: the share named first on evidence of the incident itself (``on_incident_
    evidence``). A first cause whose deviation began before the fault was injected (an
    earlier incident's, still going on) names the right service only by coincidence when
    faults follow each other on one service; NaN for a method whose causes carry no onset
    or labels without injection times."""

    def block(rows: list[dict[str, Any]]) -> dict[str, Any]:
        hits = {k: 0 for k in KS}
        abstained = 0
        own, timed = 0, 0
        probs, right = [], []
        for label in rows:
            record = answers.get(label["alert_fingerprint"])
            if record is None or record.get("abstained"):
                abstained += 1
            named = services_named(record, pod_to_service)
            truth = label["root_cause_service"]
            for k in KS:
                hits[k] += int(truth in named[:k])
            if named and record and isinstance(record["causes"][0].get("probability"), float):
                probs.append(record["causes"][0]["probability"])
                right.append(named[0] == truth)
            fresh = on_incident_evidence(record, label, interval_s)
            timed += fresh is not None
            own += bool(fresh) and named[:1] == [truth]
        n = len(rows)
        out: dict[str, Any] = {"n": n, "abstained": abstained / n if n else math.nan}
        for k in KS:
            out[f"AS@{k}"] = hits[k] / n if n else math.nan
        out["AS@1 own"] = own / n if n and timed else math.nan
        out["Avg@5"] = float(np.mean([out[f"AS@{k}"] for k in KS])) if n else math.nan
        out["ece"] = calibration.ece(probs, right)
        return out

    by_type: dict[str, list[dict[str, Any]]] = {}
    for label in labels:
        by_type.setdefault(label.get("fault_type", "?"), []).append(label)
    return {"all": block(labels), **{t: block(rows) for t, rows in sorted(by_type.items())}}


@dataclass
class BundleRun:
    """One evaluation of a bundle: its answers per method and their scores."""

    answers: dict[str, Answers]
    scores: dict[str, dict[str, dict[str, Any]]]
    seconds: float
    segments: int
    records: int
    # the first records of each variant of the search (``evaluate_bundle(variants=...)``),
    # searched on the same views as worldline's, and their scores
    variants: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    variant_scores: dict[str, dict[str, Any]] = field(default_factory=dict)


def evaluate_bundle(
    bundle: Path,
    *,
    interval_s: float = 60.0,
    partitions: int = 4,
    config: SearchConfig | None = None,
    baselines: tuple[str, ...] = ("baro", "nsigma"),
    max_alerts: int | None = None,
    workdir: Path | None = None,
    progress: Callable[[str], None] = lambda _m: None,
    variants: Mapping[str, SearchConfig] | None = None,
    alert_shift_s: float = 0.0,
) -> BundleRun:
    """Evaluate worldline (and ``baselines``) on a bundle; see the module docstring. Each of
    ``variants`` (other search configs) answers every incident's first record from the same
    view of the model as worldline's default one. ``alert_shift_s`` moves every alert's
    ``startsAt`` (``shift_alerts``): the answers are then from the data up to the moved time."""
    started = dt.datetime.now(dt.UTC)
    config = config or SearchConfig()
    manifest = read_manifest(bundle)
    alerts = sorted(
        (
            (alert, payload)
            for payload in (
                shift_alerts(p, alert_shift_s) for p in read_jsonl(bundle / "alerts.jsonl")
            )
            for alert in parse_webhook(payload)
        ),
        key=lambda pair: (pair[0].starts_at_s, pair[0].fingerprint),
    )[:max_alerts]
    labels = read_jsonl(bundle / "labels.jsonl")
    wanted = {alert.fingerprint for alert, _ in alerts}
    labels = [label for label in labels if label["alert_fingerprint"] in wanted]
    pod_to_service = dict(manifest.get("entities", {}).get("pod_to_service", {}))
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        store = SegmentStore(Path(tmp) / "segments")
        limits = Limits()
        ingestors = {
            t: SegmentIngestor(store, codec_for(t, store, limits), limits) for t in OTLP_TOPICS
        }
        model = WorldModel(
            WorldModelConfig(
                interval_s=interval_s,
                topic_partitions=tuple((t, partitions) for t in OTLP_TOPICS),
            )
        )
        book = IncidentBook()
        history = replay_baselines.History(
            keep_s=replay_baselines.DEFAULT_HISTORY_S + replay_baselines.DEFAULT_WINDOW_S + 600
        )
        pending: dict[str, list[KafkaRecord]] = {t: [] for t in OTLP_TOPICS}
        offsets: Counter[tuple[str, int]] = Counter()
        turn: Counter[str] = Counter()
        last_ms: dict[tuple[str, int], int] = {}  # partition -> its latest record's time
        clock_ms = [0]  # the latest record time read
        runs = {"worldline": Answers(), **{m: Answers() for m in baselines}}
        variant_first: dict[str, dict[str, dict[str, Any]]] = {}
        finals: list[tuple[float, Any]] = []  # (closed_through needed, incident) not yet final
        segments = 0
        records = 0

        def seal(topic: str) -> None:
            nonlocal segments
            if pending[topic]:
                ingestor = ingestors[topic]
                segments += len(ingestor.seal(ingestor.decode(pending[topic]), started))
                pending[topic] = []

        def apply_all() -> None:
            for topic in OTLP_TOPICS:
                seal(topic)
            # as live: every partition holding data holds event time back, unless it has been
            # quiet for IDLE_S (of event time here: the stream is read as fast as it goes)
            model.sources = {
                f"{t}/{p}": (SOURCE_SIGNALS[t], n - 1) for (t, p), n in offsets.items() if n > 0
            }
            model.idle = frozenset(
                f"{t}/{p}" for (t, p), ms in last_ms.items() if clock_ms[0] - ms >= IDLE_S * 1000
            )
            catch_up(store, model)
            due = [f for f in finals if model.closed_through >= f[0] * 1e9]
            for item in due:
                finals.remove(item)
                _, incident = item
                answer(incident, final=True)

        def answer(incident: Any, final: bool = False) -> None:
            alert_s = max(a.starts_at_s for a in incident.alerts.values())
            view = WorldModel.restore(model.checkpoint())
            view.provisional(int(alert_s * 1e9))
            coverage = coverage_of(model, {}, alert_s, 0.0)
            record = search_incident(view, incident, config, alert_s, alert_s, coverage)
            if not final:
                for name, variant in (variants or {}).items():
                    other = search_incident(view, incident, variant, alert_s, alert_s, coverage)
                    for fingerprint in incident.fingerprints:
                        variant_first.setdefault(name, {})[fingerprint] = other
            target = runs["worldline"].final if final else runs["worldline"].first
            for fingerprint in incident.fingerprints:
                earlier = runs["worldline"].final.get(fingerprint) if final else None
                target[fingerprint] = settled_record(earlier, record)
                if not final:
                    runs["worldline"].final[fingerprint] = record

        stream = read_stream(bundle, manifest)
        upcoming = iter(alerts)
        next_alert = next(upcoming, None)
        answered = 0
        for rec in stream:
            while next_alert is not None and rec.timestamp_ms > next_alert[0].starts_at_s * 1000:
                alert = next_alert[0]
                apply_all()
                mapper = SymptomMapper(_known_entities(model), _signals_of(model))
                incident, changed = book.add(alert, mapper.map(alert), lambda a, b: False)
                if changed:
                    answer(incident)
                    needed = (alert.starts_at_s // interval_s + 1) * interval_s
                    finals.append((needed, incident))
                for method in baselines:
                    record, _ = replay_baselines.answer(
                        history,
                        alert.fingerprint,
                        alert.starts_at_s,
                        method,
                        replay_baselines.DEFAULT_HISTORY_S,
                        replay_baselines.DEFAULT_WINDOW_S,
                    )
                    runs[method].first[alert.fingerprint] = record
                    runs[method].final[alert.fingerprint] = record
                answered += 1
                progress(
                    f"alert {answered}/{len(alerts)} at {iso(alert.starts_at_s)}:"
                    f" {records:,} records, {segments:,} segments"
                )
                next_alert = next(upcoming, None)
            if next_alert is None and not finals:
                break
            if rec.topic not in OTLP_TOPICS:
                continue
            records += 1
            partition = turn[rec.topic] % partitions
            turn[rec.topic] += 1
            offset = offsets[(rec.topic, partition)]
            offsets[(rec.topic, partition)] += 1
            last_ms[(rec.topic, partition)] = rec.timestamp_ms
            clock_ms[0] = max(clock_ms[0], rec.timestamp_ms)
            pending[rec.topic].append(
                KafkaRecord(rec.topic, partition, offset, rec.value, rec.timestamp_ms)
            )
            if rec.topic == "otlp_metrics":
                request = ExportMetricsServiceRequest()
                request.ParseFromString(rec.value)
                history.add_request(request)
                history.advance(rec.timestamp_ms / 1000)
            if len(pending[rec.topic]) >= SEAL_RECORDS:
                apply_all()
        apply_all()
    seconds = (dt.datetime.now(dt.UTC) - started).total_seconds()
    scores = {
        method: {
            "first": score(run.first, labels, pod_to_service, interval_s),
            "final": score(run.final, labels, pod_to_service, interval_s),
        }
        for method, run in runs.items()
    }
    variant_scores = {
        name: score(first, labels, pod_to_service, interval_s)
        for name, first in variant_first.items()
    }
    return BundleRun(runs, scores, seconds, segments, records, variant_first, variant_scores)


def render(run: BundleRun, name: str) -> str:
    """The scores as a text table: methods side by side, first and final records."""
    lines = [
        f"{name}: {run.records:,} records, {run.segments:,} segments, {run.seconds:.0f} s",
        f"{'method':<10} {'record':<6} {'AS@1':>6} {'AS@3':>6} {'AS@5':>6} {'Avg@5':>6}"
        f" {'abstain':>8} {'ECE':>6} {'AS@1 own':>8}",
    ]
    for method, by_pick in run.scores.items():
        for pick, blocks in by_pick.items():
            if method != "worldline" and pick == "final":
                continue
            s = blocks["all"]
            lines.append(
                f"{method:<10} {pick:<6} {s['AS@1']:>6.3f} {s['AS@3']:>6.3f} {s['AS@5']:>6.3f}"
                f" {s['Avg@5']:>6.3f} {s['abstained']:>8.3f} {_num(s['ece']):>6}"
                f" {_num(s['AS@1 own']):>8}"
            )
    types = [t for t in run.scores["worldline"]["first"] if t != "all"]
    if types:
        lines.append("AS@1 by fault type (first records): " + ", ".join(run.scores))
        for t in types:
            cells = " ".join(f"{run.scores[m]['first'][t]['AS@1']:.2f}" for m in run.scores)
            lines.append(f"  {t:<16} n={run.scores['worldline']['first'][t]['n']:<3} {cells}")
    lines.append(
        "AS@1 own: named first with the cause's onset no earlier than the interval before the"
        " fault's injection (labels' inject_time): not an earlier incident's deviation still"
        " going on"
    )
    return "\n".join(lines)


def _num(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{x:.3f}"
