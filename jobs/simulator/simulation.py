"""One simulated run: topology, scenario, changes and faults advanced slice by slice into records.

``Simulation(config).slices()`` yields, for each time slice, the records of every topic in event
time order, as the OTel Collector's Kafka exporter, Alertmanager and a CI hook would have
written them. Nothing here reads the wall clock: the run's start is part of the config, and all
randomness comes from generators seeded by ``config.seed`` (one stream per concern, so adding a
log line never changes a span).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import orjson

from jobs.simulator import changes as ch
from jobs.simulator import scenarios, topology
from jobs.simulator.alerts import SloBurnAlerts
from jobs.simulator.engine import (
    CAUSE_NONE,
    CAUSE_OWN,
    CLIENT_DEPENDENCY,
    SERVER,
    Effects,
    ResourceModel,
    SliceState,
    SpanBatch,
    World,
    simulate_traces,
)
from jobs.simulator.faults import CronJob, Fault, SliceContext
from jobs.simulator.logs import LogLine, LogWriter
from jobs.simulator.metrics import MetricsRecorder
from jobs.simulator.telemetry import ResourceCatalog, SpanEncoder, pod_name
from jobs.simulator.traffic import Seasonality, TrafficNoise

TOPICS = ("otlp_spans", "otlp_metrics", "otlp_logs", "alerts", "changes")


@dataclass(frozen=True)
class Record:
    topic: str
    key: bytes | None
    value: bytes
    timestamp_ms: int
    """Event time of the record (when the exporter or webhook would have sent it)."""


@dataclass(frozen=True)
class RunConfig:
    start_s: float
    """Event time of the first slice (Unix seconds); the fault starts at start_s + warmup_s."""
    scenario: str = "normal"
    seed: int = 0
    services: int = 30
    warmup_s: float = 600.0
    duration_s: float = 900.0
    slice_s: float = 5.0
    scrape_interval_s: float = 15.0
    peak_rate: float = 150.0
    """Edge requests per second at the weekday daily peak."""
    metrics: bool = True
    logs: bool = True
    alerts: bool = True
    new_call_after_s: float | None = None
    """Topology change: seconds after ``start_s`` at which a call that did not exist before
    begins (a release wires a service to a new callee). The call is chosen from the topology by
    ``topology.new_call_candidate`` (no randomness); None: the topology never changes."""
    standing_condition_s: float | None = None
    """Seconds before the fault at which a harmless condition begins on another busy service
    and stays (``scenarios.standing_condition``); None: there is none. A fault-free run has
    none either."""
    earlier_incident_s: float | None = None
    """Seconds before the fault at which an earlier incident began on a busy call between two
    other services, over before the fault (``scenarios.earlier_incident``); None: there is
    none. A fault-free run has none either."""

    @property
    def onset_s(self) -> float:
        return self.start_s + self.warmup_s

    @property
    def end_s(self) -> float:
        return self.start_s + self.warmup_s + self.duration_s


@dataclass
class SliceResult:
    t0_s: float
    records: list[Record]
    spans: SpanBatch
    state: SliceState
    span_count: int = 0


class Simulation:
    def __init__(self, config: RunConfig) -> None:
        self.config = config
        # the eighth stream is drawn only for a standing condition, the ninth only for the
        # runtime series: the streams before each are as they were before it existed
        seeds = np.random.SeedSequence(config.seed).spawn(9)
        (
            rng_topology,
            rng_world,
            rng_scenario,
            rng_changes,
            rng_traffic,
            rng_spans,
            rng_telemetry,
            rng_standing,
            rng_runtime,
        ) = (np.random.default_rng(s) for s in seeds)
        self.rng_spans = rng_spans
        self.rng_telemetry = rng_telemetry
        self.topology = topology.generate(config.services, rng_topology)
        self.world = World(self.topology, config.peak_rate, rng_world)
        self.scenario = scenarios.get(config.scenario)
        self.faults: list[Fault] = self.scenario.build(self.world, rng_scenario, config.onset_s)
        self.standing: list[Fault] = []
        if config.standing_condition_s is not None and self.faults:
            self.standing = [
                scenarios.standing_condition(
                    self.world,
                    rng_standing,
                    config.onset_s - config.standing_condition_s,
                    self.faults,
                )
            ]
        self.earlier: list[Fault] = []
        if config.earlier_incident_s is not None and self.faults:
            self.earlier = [
                scenarios.earlier_incident(
                    self.world,
                    rng_standing,
                    config.onset_s - config.earlier_incident_s,
                    self.faults,
                )
            ]
        self.versions = ch.initial_versions(self.topology, rng_changes)
        self.initial_versions = list(self.versions)
        schedule = ch.benign_schedule(
            self.topology, self.versions, config.start_s, config.end_s, rng_changes
        )
        fault_changes = [
            c for fault in self.faults for c in fault.changes(self.world, self.versions)
        ]
        self.red_herrings = [
            c for fault in self.faults for c in fault.red_herrings(self.world, self.versions)
        ]
        self.changes = sorted(
            schedule + fault_changes + self.red_herrings, key=lambda c: (c.time_s, c.change_id)
        )
        self.seasonality = Seasonality(peak_rate=config.peak_rate)
        self.noise = TrafficNoise(self.seasonality.noise_sd, rng_traffic)
        self.resources = ResourceModel(self.world)
        catalog = ResourceCatalog(self.world)
        self.span_encoder = SpanEncoder(self.world, catalog)
        self.metrics = MetricsRecorder(self.world, catalog, int(config.start_s * 1e9), rng_runtime)
        self.log_writer = LogWriter(self.world, catalog)
        self.alerts = SloBurnAlerts(
            self.world, config.slice_s, calibration_s=min(180.0, config.warmup_s / 2)
        )
        cron_op = next(
            o for o in self.topology.operations if self.topology.services[o.service].tier == "cron"
        )
        cron_call = self.topology.calls[cron_op.calls[0]]
        self.cron = CronJob(cron_op.index, cron_call.index, cron_call.target_dependency or 0)
        self.cron_pod = int(self.world.service_pods[cron_op.service][0])
        self.cron_runs: list[_CronRun] = []
        """Runs in progress: the batches of their queries are simulated slice by slice."""
        self.active_replicas = self.world.replicas.copy()
        self.new_call: int | None = None
        self.new_call_s: float | None = None
        if config.new_call_after_s is not None:
            self.new_call = topology.new_call_candidate(self.topology, _peak_calls(self.world))
            self.new_call_s = config.start_s + config.new_call_after_s
            self._new_call_probability = float(self.world.call_probability[self.new_call])
            self.world.call_probability[self.new_call] = 0.0  # absent until its release
        self.n_slices = int(np.ceil((config.end_s - config.start_s) / config.slice_s))
        self.pending_alerts: list[Record] = []
        self.in_flight = SpanBatch.empty()
        """Spans that have not ended yet: an SDK exports a span only once it ends."""

    def labels(self) -> dict[str, object]:
        """Ground truth of the run; written beside the records, never onto a topic."""
        c = self.config
        return {
            "format": "worldline-simulator-labels",
            "version": 1,
            "scenario": c.scenario,
            "description": self.scenario.description,
            "seed": c.seed,
            "services": c.services,
            "start": ch.iso(c.start_s),
            "onset": ch.iso(c.onset_s),
            "end": ch.iso(c.end_s),
            "faults": [fault.label(self.world) for fault in self.faults],
            # harmless: naming one of them is a wrong answer
            **(
                {"standing_conditions": [c.label(self.world) for c in self.standing]}
                if self.standing
                else {}
            ),
            # over before the fault began: naming one of them is a wrong answer
            **(
                {"earlier_incidents": [e.label(self.world) for e in self.earlier]}
                if self.earlier
                else {}
            ),
            **self._topology_change_labels(),
            "expected": "cause" if self.faults else "no cause",
            "red_herrings": [
                {
                    "change_id": r.change_id,
                    "entity": {"kind": "service", "name": self.topology.services[r.service].name},
                    "reason": "no effect of its own",
                }
                for r in self.red_herrings
            ],
            "topology": self.topology.describe(
                {
                    p.index: pod_name(
                        p.name,
                        self.topology.services[p.service].name,
                        self.initial_versions[p.service],
                    )
                    for p in self.topology.pods
                }
            ),
        }

    def _topology_change_labels(self) -> dict[str, object]:
        if self.new_call is None or self.new_call_s is None:
            return {}
        source, target = self.topology.call_edge(self.new_call)
        return {
            "topology_changes": [
                {"kind": "new_call", "time": ch.iso(self.new_call_s), "edge": [source, target]}
            ]
        }

    def slices(self) -> Iterator[SliceResult]:
        c = self.config
        change_at = 0
        for k in range(self.n_slices):
            t0 = c.start_s + k * c.slice_s
            t1 = t0 + c.slice_s
            if self.new_call is not None and self.new_call_s is not None and t0 >= self.new_call_s:
                self.world.call_probability[self.new_call] = self._new_call_probability
            records: list[Record] = []
            extra_logs: list[LogLine] = []
            while change_at < len(self.changes) and self.changes[change_at].time_s < t1:
                change = self.changes[change_at]
                change_at += 1
                records.append(self._change_record(change))
                extra_logs.extend(self._apply_change(change))
            effects = Effects.neutral(self.topology)
            ctx = SliceContext(self.world, t0, c.slice_s, effects, self.cron)
            for fault in self.faults + self.standing + self.earlier:
                fault.apply(ctx)
            effects.dep_extra_load[self.cron.database] += self.cron.extra_load(t0 + c.slice_s / 2)
            extra_logs.extend(ctx.logs)
            edge_rate = float(self.seasonality.rate_at(t0 + c.slice_s / 2)) * self.noise.step()
            state = self.resources.step(edge_rate, effects, self.active_replicas, c.slice_s)
            started = self._traces(t0, edge_rate, state)
            self.resources.observe(started)
            batch = self._ended_spans(started, int(t1 * 1e9))
            for pod in np.nonzero(effects.pod_restarts)[0].tolist():
                self.metrics.restart(pod, int(t1 * 1e9))
            t1_ms = int(t1 * 1000)
            for _service, value in self.span_encoder.encode(batch, self.versions):
                records.append(Record("otlp_spans", None, value, t1_ms))
            if c.metrics:
                # a scrape reads the counters as they stand at its instant: the spans that
                # ended by then, not those ending later in the slice (at 1 s scrapes, a
                # request counter advances every second, not once per slice)
                counted = np.zeros(len(batch), dtype=bool)
                for scrape in _scrape_times(t0, t1, c.scrape_interval_s):
                    scrape_ns = int(scrape * 1e9)
                    ended = ~counted & (batch.end_ns <= scrape_ns)
                    self.metrics.observe(batch.take(np.flatnonzero(ended)))
                    counted |= ended
                    for _service, value in self.metrics.export(
                        scrape_ns, state, self.versions, self.rng_telemetry
                    ):
                        records.append(Record("otlp_metrics", None, value, int(scrape * 1000)))
                self.metrics.observe(batch.take(np.flatnonzero(~counted)))
            if c.logs:
                extra_logs.extend(self._consumer_lag_logs(t0, state))
                for _service, value in self.log_writer.encode(
                    batch, state, extra_logs, self.versions, self.rng_telemetry
                ):
                    records.append(Record("otlp_logs", None, value, t1_ms))
            if c.alerts:
                for when, payload in self.alerts.observe(t1, batch):
                    key = str(payload["groupKey"]).encode()
                    self.pending_alerts.append(
                        Record("alerts", key, orjson.dumps(payload), int(when * 1000))
                    )
                # Alertmanager notifies after group_wait: a notification leaves when it is due
                last = k == self.n_slices - 1
                due = [r for r in self.pending_alerts if last or r.timestamp_ms <= t1_ms]
                self.pending_alerts = [r for r in self.pending_alerts if r not in due]
                records.extend(due)
            records.sort(key=lambda r: r.timestamp_ms)
            yield SliceResult(t0, records, batch, state, len(batch))

    def records(self) -> Iterator[Record]:
        for result in self.slices():
            yield from result.records

    def _traces(self, t0: float, edge_rate: float, state: SliceState) -> SpanBatch:
        c = self.config
        rng = self.rng_spans
        batches = []
        start_ns = int(t0 * 1e9)
        width_ns = int(c.slice_s * 1e9)
        templates = self.world.templates_for(state.call_retries)
        for template, weight in zip(templates, self.topology.entry_weights, strict=True):
            n = int(rng.poisson(edge_rate * weight * c.slice_s))
            starts = start_ns + np.sort(rng.integers(0, width_ns, size=n))
            batches.append(simulate_traces(self.world, template, starts, state, rng))
        batches.append(self._cron_spans(t0, t0 + c.slice_s, state))
        return SpanBatch.concat(batches)

    def _cron_spans(self, t0: float, t1: float, state: SliceState) -> SpanBatch:
        """The cron runs starting in [t0, t1) (their run spans), and the batch queries every
        run in progress starts in it, one after another, each lasting as long as the database
        currently takes for a query of its cost."""
        cron, rng = self.cron, self.rng_spans
        spans = []
        for run_start in cron.runs_starting(t0, t1):
            ids = rng.integers(0, np.iinfo(np.int64).max, size=3, dtype=np.int64)
            run = _CronRun(
                trace_id=ids[:2].view(np.uint8).copy(),
                span_id=ids[2:].view(np.uint8).copy(),
                start_s=run_start,
                end_s=run_start + cron.run_seconds(run_start),
                next_query_s=run_start,
            )
            self.cron_runs.append(run)
            spans.append(self._cron_span(run, cron.operation, run.start_s, run.end_s, root=True))
        db = cron.database
        query_ms = (
            self.world.dep_base_ms[db] * state.dep_latency_mult[db] * cron.query_cost
            + state.call_extra_ms[cron.call]
        )
        for run in self.cron_runs:
            stop = min(t1, run.end_s)
            while run.next_query_s < stop:
                n = int((stop - run.next_query_s) * 1000.0 / query_ms * 1.5) + 2
                d = query_ms * np.exp(0.3 * rng.standard_normal(n) - 0.045) / 1000.0
                failed = rng.random(n) < state.dep_error[db]
                starts = run.next_query_s + np.concatenate(
                    [[0.0], np.cumsum(d + cron.batch_gap_s)[:-1]]
                )
                keep = starts < stop
                ends = np.minimum(starts + d, run.end_s)
                spans.append(
                    self._cron_span(
                        run,
                        len(self.topology.operations) + cron.call,
                        starts[keep],
                        ends[keep],
                        variant=failed[keep].astype(np.int64),
                    )
                )
                run.next_query_s = (
                    float(starts[-1] + d[-1] + cron.batch_gap_s)
                    if keep.all()
                    else float(starts[~keep][0])
                )
        self.cron_runs = [r for r in self.cron_runs if r.end_s > t1]
        return SpanBatch.concat(spans)

    def _cron_span(
        self,
        run: _CronRun,
        key: int,
        start_s: np.ndarray | float,
        end_s: np.ndarray | float,
        variant: np.ndarray | None = None,
        root: bool = False,
    ) -> SpanBatch:
        start_ns = (np.atleast_1d(np.asarray(start_s, dtype=np.float64)) * 1e9).astype(np.int64)
        end_ns = (np.atleast_1d(np.asarray(end_s, dtype=np.float64)) * 1e9).astype(np.int64)
        n = len(start_ns)
        span_id = (
            run.span_id[None, :]
            if root
            else self.rng_spans.integers(0, np.iinfo(np.int64).max, size=n, dtype=np.int64)
            .view(np.uint8)
            .reshape(n, 8)
        )
        variant = np.zeros(n, dtype=np.int64) if variant is None else variant
        return SpanBatch(
            span_key=np.full(n, key, dtype=np.int64),
            variant=variant,
            cause=np.where(variant > 0, CAUSE_OWN, CAUSE_NONE).astype(np.int64),
            service=np.full(n, self.world.pod_service[self.cron_pod], dtype=np.int64),
            pod=np.full(n, self.cron_pod, dtype=np.int64),
            role=np.full(n, SERVER if root else CLIENT_DEPENDENCY, dtype=np.int64),
            trace_id=np.repeat(run.trace_id[None, :], n, axis=0),
            span_id=span_id,
            parent_id=np.repeat(run.span_id[None, :], n, axis=0),
            has_parent=np.full(n, not root),
            start_ns=start_ns,
            end_ns=np.maximum(end_ns, start_ns + 1000),
        )

    def _ended_spans(self, started: SpanBatch, t1_ns: int) -> SpanBatch:
        spans = SpanBatch.concat([self.in_flight, started])
        ended = spans.end_ns <= t1_ns
        if ended.all():
            self.in_flight = SpanBatch.empty()
            return spans
        self.in_flight = spans.take(np.flatnonzero(~ended))
        return spans.take(np.flatnonzero(ended))

    def _change_record(self, change: ch.Change) -> Record:
        event = change.to_event(self.topology)
        key = self.topology.services[change.service].name.encode()
        return Record("changes", key, orjson.dumps(event), int(change.time_s * 1000))

    def _apply_change(self, change: ch.Change) -> list[LogLine]:
        svc = self.topology.services[change.service]
        at_ns = int(change.time_s * 1e9)
        lines: list[LogLine] = []
        if change.new_version is not None:
            self.versions[change.service] = change.new_version
            for pod in svc.pods:
                self.metrics.restart(pod, at_ns, replaced=True)
            for pod in svc.pods[: self.active_replicas[change.service]]:
                lines.append(
                    LogLine(pod, at_ns, "INFO", f"Starting {svc.name} version {change.new_version}")
                )
        if change.replicas_after is not None:
            self.active_replicas[change.service] = min(change.replicas_after, len(svc.pods))
        if change.kind == "config":
            for pod in svc.pods[: self.active_replicas[change.service]]:
                lines.append(
                    LogLine(pod, at_ns, "INFO", f"configuration reloaded from {change.change_id}")
                )
        return lines

    def _consumer_lag_logs(self, t0: float, state: SliceState) -> list[LogLine]:
        lines = []
        for dep in self.topology.dependencies:
            if dep.consumer_operation is None or state.queue_backlog[dep.index] < 500:
                continue
            svc = self.topology.services[self.topology.operations[dep.consumer_operation].service]
            pod = svc.pods[0]
            lines.append(
                LogLine(
                    pod,
                    int(t0 * 1e9),
                    "WARN",
                    f"consumer lag on {dep.name} is {int(state.queue_backlog[dep.index])} messages",
                )
            )
        return lines


def _peak_calls(world: World) -> np.ndarray:
    return np.asarray(world.topo.entry_weights @ world.call_visits)


def _scrape_times(t0: float, t1: float, interval: float) -> list[float]:
    """Scrape instants in (t0, t1]."""
    first, last = int(np.floor(t0 / interval)) + 1, int(np.floor(t1 / interval))
    return [k * interval for k in range(first, last + 1)]


@dataclass
class _CronRun:
    trace_id: np.ndarray
    span_id: np.ndarray
    start_s: float
    end_s: float
    next_query_s: float
    """When the run's next batch query starts."""
