"""OTLP metrics as an SDK and the Collector's hostmetrics receiver would export them.

Cumulative duration histograms per pod (server side ``http.server.request.duration``, client side
``http.client.request.duration``, ``db.client.operation.duration``, messaging durations, and the
cron job's ``job.run.duration`` with bounds for runs of up to an hour) fed by the spans that
ended; gauges from the resource model (CPU, memory, connection pools, consumer lag);
restart counters; host CPU. Exported on every scrape, one request per service.

Each pod also exports what a language runtime's instrumentation does, whatever happens to the
service (``RuntimeNoise``): a rare counter (full garbage collections, a few an hour), a thread
count that sits on an integer and steps by one now and then, and a work-queue length that is
zero nearly always. Real deployments are full of such series; they deviate by chance, never
because of the incident.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from jobs.simulator.engine import SliceState, SpanBatch, World
from jobs.simulator.telemetry import (
    HTTP_DURATION_BOUNDS,
    JOB_RUN_DURATION_BOUNDS,
    Attr,
    ResourceCatalog,
    key_value,
    span_shapes,
)

GC_PER_S = 1.0 / 1200.0
"""Full collections per second per pod (a few an hour: a counter whose rate is mostly zero)."""
THREAD_STEP_P = 0.05  # per scrape, the thread count steps one up or down from its level
QUEUE_BUSY_P = 0.02  # per scrape, the work queue holds a few items rather than none


class RuntimeNoise:
    """Per pod: the runtime series (``GC_PER_S``, ``THREAD_STEP_P``, ``QUEUE_BUSY_P``), drawn
    from their own generator so that they leave every other series as it was."""

    def __init__(self, pods: int, rng: np.random.Generator) -> None:
        self.rng = rng
        self.collections = np.zeros(pods, dtype=np.int64)
        self.threads = rng.integers(8, 40, size=pods)
        self.last_ns = np.zeros(pods, dtype=np.int64)

    def sample(self, pod: int, now_ns: int) -> tuple[int, int, int]:
        """(cumulative collections, thread count, queue length) at ``now_ns``."""
        elapsed = (now_ns - self.last_ns[pod]) / 1e9 if self.last_ns[pod] else 0.0
        self.last_ns[pod] = now_ns
        self.collections[pod] += self.rng.poisson(GC_PER_S * elapsed)
        step = self.rng.random() < THREAD_STEP_P
        threads = int(self.threads[pod]) + (int(self.rng.choice((-1, 1))) if step else 0)
        queue = int(self.rng.integers(1, 4)) if self.rng.random() < QUEUE_BUSY_P else 0
        return int(self.collections[pod]), threads, queue


@dataclass
class _Histogram:
    buckets: np.ndarray
    count: int = 0
    total: float = 0.0


class MetricsRecorder:
    """Cumulative metric state per pod, fed by span batches; exported on every scrape."""

    def __init__(
        self,
        world: World,
        resources: ResourceCatalog,
        start_ns: int,
        runtime: np.random.Generator | None = None,
    ) -> None:
        self.world = world
        self.runtime = RuntimeNoise(len(world.topo.pods), runtime) if runtime is not None else None
        self.resources = resources
        self.histograms: dict[tuple[int, int, int], _Histogram] = {}
        """(pod, span key, status variant) -> cumulative duration histogram."""
        self.shapes = span_shapes(world)
        self.bounds = [
            JOB_RUN_DURATION_BOUNDS
            if self._duration_series(key, 0)[0] == "job.run.duration"
            else HTTP_DURATION_BOUNDS
            for key in range(len(self.shapes))
        ]
        """Explicit bucket bounds per span key."""
        width = max(len(b) for b in self.bounds)
        self._bounds_matrix = np.array([list(b) + [np.inf] * (width - len(b)) for b in self.bounds])
        self.run_start_ns = start_ns
        self.pod_start_ns = np.full(len(world.topo.pods), start_ns, dtype=np.int64)
        self.restarts = np.zeros(len(world.topo.pods), dtype=np.int64)

    def observe(self, batch: SpanBatch) -> None:
        """Add every ended span to its duration histogram (server and client side alike)."""
        if len(batch) == 0:
            return
        n_keys = len(self.shapes)
        seconds = (batch.end_ns - batch.start_ns) / 1e9
        # the bucket of a value is the number of its key's bounds below it (le buckets)
        bucket = (self._bounds_matrix[batch.span_key] < seconds[:, None]).sum(axis=1)
        series = (batch.pod * n_keys + batch.span_key) * 3 + batch.variant
        uniq, inv = np.unique(series, return_inverse=True)
        counts = np.bincount(inv)
        sums = np.bincount(inv, weights=seconds)
        per_bucket = np.zeros((len(uniq), self._bounds_matrix.shape[1] + 1), dtype=np.int64)
        np.add.at(per_bucket, (inv, bucket), 1)
        for k, s in enumerate(uniq.tolist()):
            key = (s // 3 // n_keys, s // 3 % n_keys, s % 3)
            h = self.histograms.get(key)
            n_buckets = len(self.bounds[key[1]]) + 1
            if h is None:
                h = self.histograms[key] = _Histogram(np.zeros(n_buckets, np.int64))
            h.count += int(counts[k])
            h.total += float(sums[k])
            h.buckets += per_bucket[k, :n_buckets]

    def _duration_series(self, key: int, variant: int) -> tuple[str, list[Attr]]:
        """Metric name and data-point attributes for the spans of one span key and variant."""
        shape = self.shapes[key]
        attrs = dict(shape.attributes + shape.variant_attributes[variant])
        if shape.kind == Span.SPAN_KIND_SERVER:
            name = "http.server.request.duration"
        elif shape.kind == Span.SPAN_KIND_CONSUMER:
            name = "messaging.process.duration"
        elif shape.kind == Span.SPAN_KIND_PRODUCER:
            name = "messaging.client.operation.duration"
        elif "db.system" in attrs:
            name = "db.client.operation.duration"
        elif shape.kind == Span.SPAN_KIND_CLIENT:
            name = "http.client.request.duration"
        else:
            name = "job.run.duration"
        return name, [(k, attrs[k]) for k in _DURATION_ATTRIBUTES[name] if k in attrs]

    def restart(self, pod: int, at_ns: int, replaced: bool = False) -> None:
        """A pod restarted (or, ``replaced``, a deploy rolled it into a new pod): its cumulative
        series start again from zero."""
        if replaced:
            self.restarts[pod] = 0
        else:
            self.restarts[pod] += 1
        self.pod_start_ns[pod] = at_ns
        for key in [k for k in self.histograms if k[0] == pod]:
            del self.histograms[key]

    def export(
        self, now_ns: int, state: SliceState, versions: list[str], rng: np.random.Generator
    ) -> list[tuple[int, bytes]]:
        """(service, ExportMetricsServiceRequest bytes) per service, plus one for hosts (-1)."""
        w = self.world
        topo = w.topo
        by_pod: dict[int, dict[str, Metric]] = {}
        # an SDK aggregates by attribute set: span keys whose attributes coincide (two routes
        # calling the same peer, which client metrics do not tell apart) are one series
        series: dict[tuple[int, str, tuple[Attr, ...]], tuple[_Histogram, Sequence[float]]] = {}
        for (pod, key, variant), h in sorted(self.histograms.items()):
            name, attrs = self._duration_series(key, variant)
            found = series.get((pod, name, tuple(attrs)))
            if found is None or len(found[0].buckets) != len(h.buckets):
                series[(pod, name, tuple(attrs))] = (
                    _Histogram(h.buckets.copy(), h.count, h.total),
                    self.bounds[key],
                )
            else:
                found[0].buckets += h.buckets
                found[0].count += h.count
                found[0].total += h.total
        for (pod, name, attr_set), (h, bounds) in series.items():
            metrics = by_pod.setdefault(pod, {})
            metric = metrics.get(name)
            if metric is None:
                metric = metrics[name] = _histogram_metric(name)
            dp = metric.histogram.data_points.add()
            dp.start_time_unix_nano = int(self.pod_start_ns[pod])
            dp.time_unix_nano = now_ns
            dp.count = h.count
            dp.sum = h.total
            dp.bucket_counts.extend(h.buckets.tolist())
            dp.explicit_bounds.extend(bounds)
            dp.attributes.extend([key_value(k, v) for k, v in attr_set])
        cpu_noise = rng.normal(0.0, 0.01, size=len(topo.pods))
        mem_noise = rng.normal(0.0, 2e6, size=len(topo.pods))
        pool_of_service: dict[int, list[int]] = {}
        for i, (s, _d) in enumerate(w.pool_pairs.tolist()):
            pool_of_service.setdefault(s, []).append(i)
        queue_of_service = {
            topo.operations[d.consumer_operation].service: d
            for d in topo.dependencies
            if d.consumer_operation is not None
        }
        records: list[tuple[int, bytes]] = []
        for svc in topo.services:
            request = ExportMetricsServiceRequest()
            for pod in svc.pods:
                if not state.pod_active[pod]:
                    continue
                rm = request.resource_metrics.add()
                rm.resource.CopyFrom(self.resources.resource(pod, versions[svc.index]))
                sm = rm.scope_metrics.add()
                sm.scope.CopyFrom(self.resources.scope(svc.index))
                gauges: list[tuple[str, str, float, tuple[Attr, ...]]] = [
                    (
                        "process.cpu.utilization",
                        "1",
                        float(np.clip(state.pod_cpu_utilization[pod] + cpu_noise[pod], 0, 1)),
                        (),
                    ),
                    (
                        "process.memory.usage",
                        "By",
                        float(max(state.pod_memory_bytes[pod] + mem_noise[pod], 0.0)),
                        (),
                    ),
                ]
                for i in pool_of_service.get(svc.index, []):
                    dep = topo.dependencies[int(w.pool_pairs[i, 1])]
                    used = float(np.round(state.pool_in_use[i]))
                    for state_name, value in (
                        ("used", used),
                        ("idle", max(svc.pool_size - used, 0.0)),
                    ):
                        gauges.append(
                            (
                                "db.client.connections.usage",
                                "{connection}",
                                value,
                                (
                                    ("db.client.connections.pool.name", dep.name),
                                    ("db.client.connections.state", state_name),
                                ),
                            )
                        )
                if svc.index in queue_of_service:
                    q = queue_of_service[svc.index]
                    gauges.append(
                        (
                            "messaging.kafka.consumer.lag",
                            "{message}",
                            float(np.round(state.queue_backlog[q.index])),
                            (("messaging.destination.name", q.name),),
                        )
                    )
                for gauge_name, unit, value, gauge_attrs in gauges:
                    m = sm.metrics.add(name=gauge_name, unit=unit)
                    gauge_dp = m.gauge.data_points.add(time_unix_nano=now_ns, as_double=value)
                    gauge_dp.attributes.extend([key_value(k, v) for k, v in gauge_attrs])
                if self.runtime is not None:
                    self._runtime(sm, pod, now_ns)
                restarts = sm.metrics.add(name="k8s.container.restarts", unit="{restart}")
                restarts.sum.aggregation_temporality = (
                    AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
                )
                restarts.sum.is_monotonic = True
                restarts.sum.data_points.append(
                    NumberDataPoint(
                        start_time_unix_nano=self.run_start_ns,
                        time_unix_nano=now_ns,
                        as_int=int(self.restarts[pod]),
                    )
                )
                sm.metrics.extend(by_pod.get(pod, {}).values())
            if request.resource_metrics:
                records.append((svc.index, request.SerializeToString()))
        hosts = ExportMetricsServiceRequest()
        for host in topo.hosts:
            rm = ResourceMetrics(
                resource=Resource(
                    attributes=[
                        key_value("host.name", host.name),
                        key_value("k8s.node.name", host.name),
                    ]
                )
            )
            sm = rm.scope_metrics.add()
            sm.scope.name = "otelcol/hostmetricsreceiver/cpu"
            m = sm.metrics.add(name="system.cpu.utilization", unit="1")
            m.gauge.data_points.add(
                time_unix_nano=now_ns, as_double=float(state.host_cpu_utilization[host.index])
            )
            hosts.resource_metrics.append(rm)
        records.append((-1, hosts.SerializeToString()))
        return records

    def _runtime(self, sm: ScopeMetrics, pod: int, now_ns: int) -> None:
        """The pod's runtime series, as the .NET runtime instrumentation names them."""
        assert self.runtime is not None
        collections, threads, queue = self.runtime.sample(pod, now_ns)
        gc = sm.metrics.add(name="dotnet.gc.collections", unit="{collection}")
        gc.sum.aggregation_temporality = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
        gc.sum.is_monotonic = True
        gc_dp = gc.sum.data_points.add(
            start_time_unix_nano=self.run_start_ns, time_unix_nano=now_ns, as_int=collections
        )
        gc_dp.attributes.append(key_value("dotnet.gc.heap.generation", "gen2"))
        for name, unit, value in (
            ("dotnet.thread_pool.thread.count", "{thread}", threads),
            ("dotnet.thread_pool.queue.length", "{work_item}", queue),
        ):
            m = sm.metrics.add(name=name, unit=unit)
            m.sum.aggregation_temporality = (
                AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
            )
            m.sum.is_monotonic = False
            m.sum.data_points.add(
                start_time_unix_nano=self.run_start_ns, time_unix_nano=now_ns, as_int=value
            )


_DURATION_ATTRIBUTES = {
    "http.server.request.duration": (
        "http.request.method",
        "http.route",
        "http.response.status_code",
        "error.type",
    ),
    "http.client.request.duration": (
        "http.request.method",
        "server.address",
        "server.port",
        "peer.service",
        "http.response.status_code",
        "error.type",
    ),
    "db.client.operation.duration": (
        "db.system",
        "db.namespace",
        "db.operation.name",
        "server.address",
        "error.type",
    ),
    "messaging.client.operation.duration": (
        "messaging.system",
        "messaging.operation.type",
        "messaging.destination.name",
        "error.type",
    ),
    "messaging.process.duration": ("messaging.system", "messaging.destination.name", "error.type"),
    "job.run.duration": ("job.name", "error.type"),
}


def _histogram_metric(name: str) -> Metric:
    m = Metric(name=name, unit="s")
    m.histogram.aggregation_temporality = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
    return m
