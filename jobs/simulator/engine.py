"""Request-level simulation, vectorized with numpy.

Each entry operation expands into a fixed trace template: a tree of span positions (server spans,
client spans with one position per retry attempt, producer and consumer spans). A time slice of
traffic is simulated for all traces of a template at once, as (traces x positions) arrays:

1. pods are chosen top-down (a client span runs in its parent's pod);
2. durations, errors and conditional inclusion bottom-up: own work (scaled by CPU queueing, GC
   pressure, host steal) plus children (sequential groups of parallel calls, retries only after a
   failed attempt, timeouts cutting a call short), errors propagating to the caller;
3. start times and actual inclusion top-down.

The resource model (``ResourceModel.step``) runs once per slice before the spans: it turns
expected load (from the templates' visit rates) plus the faults' ``Effects`` into the multipliers
the spans use (CPU utilization and queueing, memory, connection pools, queue backlog, cache misses).
Retries are real requests: the expected load counts every attempt, a retry position being visited
as often as all the attempts before it failed (their failure ratio is observed on the previous
slice's spans, ``ResourceModel.observe``). A pod asked for more CPU than it has queues the excess
(bounded): every request then waits, past its callers' timeouts once the queue is long enough.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from jobs.simulator.topology import Topology

SERVER, CLIENT_SERVICE, CLIENT_DEPENDENCY, PRODUCER, CONSUMER = range(5)
CAUSE_NONE, CAUSE_OWN, CAUSE_CHILD, CAUSE_TIMEOUT, CAUSE_POOL = range(5)
BASE_CACHE_MISS = 0.15
TARGET_UTILIZATION = 0.4
MAX_QUEUE_WAIT_S = 10.0
"""Bound of a pod's request queue, as the wait it imposes; requests beyond it are shed."""
MIN_SERVING_SHARE = 0.05
"""Share of a pod's cores request work still gets when burners take (nearly) all of them."""
FAILURE_PRIOR = 2.0
"""Pseudo-attempts of the previous estimate when a call's failure ratio is updated."""


@dataclass
class TraceTemplate:
    """The span positions of one entry operation's trace tree, in pre-order."""

    entry_operation: int
    parent: np.ndarray
    role: np.ndarray
    service: np.ndarray
    operation: np.ndarray
    call: np.ndarray
    attempt: np.ndarray
    dependency: np.ndarray
    span_key: np.ndarray
    visit: np.ndarray
    """Expected visits per trace (no retries; fallbacks at the base cache-miss ratio)."""
    slots: dict[int, list[list[tuple[int, list[int]]]]] = field(default_factory=dict)
    """Server position -> groups -> (call, attempt positions)."""
    child_of_client: dict[int, int] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.parent)


def build_template(topo: Topology, entry: int, retries: np.ndarray | None = None) -> TraceTemplate:
    """The trace tree of entry operation ``entry``; ``retries`` (per call, default the topology's)
    sets how many retry positions each call gets."""
    cols: dict[str, list[int]] = {
        k: [] for k in ("parent", "role", "service", "operation", "call", "attempt", "dependency")
    }
    visit: list[float] = []
    slots: dict[int, list[list[tuple[int, list[int]]]]] = {}
    child_of_client: dict[int, int] = {}
    n_ops = len(topo.operations)

    def add(
        parent: int, role: int, service: int, op: int, call: int, attempt: int, dep: int, v: float
    ) -> int:
        for k, val in zip(cols, (parent, role, service, op, call, attempt, dep), strict=True):
            cols[k].append(val)
        visit.append(v)
        return len(visit) - 1

    def expand_server(parent: int, op_index: int, role: int, v: float) -> int:
        op = topo.operations[op_index]
        me = add(parent, role, op.service, op_index, -1, 0, -1, v)
        groups: dict[int, list[tuple[int, list[int]]]] = {}
        for c_index in op.calls:
            c = topo.calls[c_index]
            p = c.probability * (BASE_CACHE_MISS if c.fallback_of is not None else 1.0)
            attempts: list[int] = []
            n_retries = c.retries if retries is None else int(retries[c_index])
            for k in range(n_retries + 1):
                av = v * p if k == 0 else 0.0
                if c.target_operation is not None:
                    pos = add(me, CLIENT_SERVICE, op.service, op_index, c_index, k, -1, av)
                    child_of_client[pos] = expand_server(pos, c.target_operation, SERVER, av)
                else:
                    dep = topo.dependencies[c.target_dependency or 0]
                    role_c = PRODUCER if dep.kind == "queue" else CLIENT_DEPENDENCY
                    pos = add(me, role_c, op.service, op_index, c_index, k, dep.index, av)
                    if dep.consumer_operation is not None:
                        child_of_client[pos] = expand_server(
                            pos, dep.consumer_operation, CONSUMER, av
                        )
                attempts.append(pos)
            groups.setdefault(c.group, []).append((c_index, attempts))
        slots[me] = [groups[g] for g in sorted(groups)]
        return me

    expand_server(-1, entry, SERVER, 1.0)
    arrays = {k: np.asarray(v, dtype=np.int64) for k, v in cols.items()}
    span_key = np.where(arrays["call"] >= 0, n_ops + arrays["call"], arrays["operation"])
    return TraceTemplate(
        entry_operation=entry,
        visit=np.asarray(visit),
        span_key=span_key,
        slots=slots,
        child_of_client=child_of_client,
        **arrays,
    )


@dataclass
class Effects:
    """What faults and changes do to the system during one slice; neutral values by default."""

    pod_cpu_extra: np.ndarray
    """Cores burnt by something other than request work (hog, GC, neighbour)."""
    pod_work_mult: np.ndarray
    pod_error: np.ndarray
    pod_memory_extra: np.ndarray
    pod_down: np.ndarray
    """Fraction of the slice the pod is restarting (requests to it fail)."""
    pod_restarts: np.ndarray
    op_work_mult: np.ndarray
    op_error: np.ndarray
    call_latency_mult: np.ndarray
    call_extra_ms: np.ndarray
    call_cost_mult: np.ndarray
    """Load a call puts on its dependency, relative to a normal call."""
    dep_latency_mult: np.ndarray
    dep_error: np.ndarray
    dep_extra_load: np.ndarray
    """Extra utilization of a dependency (0.5 = half its capacity) from outside the request path."""
    cache_miss: np.ndarray
    consumer_capacity_mult: np.ndarray
    call_retries: np.ndarray
    """How many times a caller retries a failed or timed-out call (its client's retry policy)."""
    pool_leaked: np.ndarray
    """Connections leaked per service (never returned to the pool)."""
    host_steal: np.ndarray
    op_error_message: dict[int, str] = field(default_factory=dict)

    @classmethod
    def neutral(cls, topo: Topology) -> Effects:
        n_pods, n_ops, n_calls = len(topo.pods), len(topo.operations), len(topo.calls)
        n_deps, n_svc, n_hosts = len(topo.dependencies), len(topo.services), len(topo.hosts)
        return cls(
            pod_cpu_extra=np.zeros(n_pods),
            pod_work_mult=np.ones(n_pods),
            pod_error=np.zeros(n_pods),
            pod_memory_extra=np.zeros(n_pods),
            pod_down=np.zeros(n_pods),
            pod_restarts=np.zeros(n_pods, dtype=np.int64),
            op_work_mult=np.ones(n_ops),
            op_error=np.zeros(n_ops),
            call_latency_mult=np.ones(n_calls),
            call_extra_ms=np.zeros(n_calls),
            call_cost_mult=np.ones(n_calls),
            dep_latency_mult=np.ones(n_deps),
            dep_error=np.zeros(n_deps),
            dep_extra_load=np.zeros(n_deps),
            cache_miss=np.full(n_deps, BASE_CACHE_MISS),
            consumer_capacity_mult=np.ones(n_deps),
            call_retries=np.array([c.retries for c in topo.calls], dtype=np.int64),
            pool_leaked=np.zeros(n_svc),
            host_steal=np.zeros(n_hosts),
        )


@dataclass
class SliceState:
    """The resource model's answer for one slice: what each span sees, and what metrics show."""

    pod_work_mult: np.ndarray
    pod_error: np.ndarray
    pod_cpu_utilization: np.ndarray
    pod_queue_s: np.ndarray
    """Mean wait of a request in the pod's queue (0 unless the pod is overloaded)."""
    pod_memory_bytes: np.ndarray
    pod_active: np.ndarray
    host_cpu_utilization: np.ndarray
    op_work_mult: np.ndarray
    op_error: np.ndarray
    call_latency_mult: np.ndarray
    call_extra_ms: np.ndarray
    call_error: np.ndarray
    dep_latency_mult: np.ndarray
    dep_error: np.ndarray
    dep_utilization: np.ndarray
    cache_miss: np.ndarray
    queue_delay_s: np.ndarray
    queue_backlog: np.ndarray
    pool_in_use: np.ndarray
    """Per (service, dependency) pair of ``World.pool_pairs``, connections in use per pod."""
    active_replicas: np.ndarray
    op_error_message: dict[int, str]
    call_retries: np.ndarray


class World:
    """Topology plus everything derived from it once: templates, visit rates, capacities."""

    def __init__(self, topo: Topology, peak_rate: float, rng: np.random.Generator) -> None:
        self.topo = topo
        self.peak_rate = peak_rate
        self.templates = [build_template(topo, e) for e in topo.entry_operations]
        self.default_retries = np.array([c.retries for c in topo.calls], dtype=np.int64)
        self._template_sets: dict[bytes, list[TraceTemplate]] = {
            self.default_retries.tobytes(): self.templates
        }
        self._visit_plans: dict[bytes, _VisitPlan] = {}
        n_entry, n_calls, n_ops = len(self.templates), len(topo.calls), len(topo.operations)
        self.call_visits = np.zeros((n_entry, n_calls))
        self.op_visits = np.zeros((n_entry, n_ops))
        for i, t in enumerate(self.templates):
            first = (t.call >= 0) & (t.attempt == 0)
            np.add.at(self.call_visits[i], t.call[first], t.visit[first])
            servers = t.call < 0
            np.add.at(self.op_visits[i], t.operation[servers], t.visit[servers])
        self.call_dependency = np.array(
            [c.target_dependency if c.target_dependency is not None else -1 for c in topo.calls],
            dtype=np.int64,
        )
        self.call_service = np.array(
            [topo.operations[c.caller_operation].service for c in topo.calls], dtype=np.int64
        )
        self.fallback_cache = np.array(
            [
                topo.calls[c.fallback_of].target_dependency if c.fallback_of is not None else -1
                for c in topo.calls
            ],
            dtype=np.int64,
        )
        self.op_service = np.array([o.service for o in topo.operations], dtype=np.int64)
        self.pod_service = np.array([p.service for p in topo.pods], dtype=np.int64)
        self.pod_host = np.array([p.host for p in topo.pods], dtype=np.int64)
        self.service_pods = [np.asarray(s.pods, dtype=np.int64) for s in topo.services]
        width = max(len(p) for p in self.service_pods)
        self.service_pod_matrix = np.array(
            [np.pad(p, (0, width - len(p)), mode="edge") for p in self.service_pods]
        )
        self.call_critical = np.array([c.critical for c in topo.calls], dtype=bool)
        self.plans: dict[int, _TemplatePlan] = {}
        """Per template (by identity; every template stays referenced by a template set)."""
        self.service_cores = np.array([s.cores_per_pod for s in topo.services])
        self.replicas = np.array([s.replicas for s in topo.services], dtype=np.int64)
        pairs = sorted(
            {
                (int(self.call_service[c]), int(self.call_dependency[c]))
                for c in range(n_calls)
                if self.call_dependency[c] >= 0
                and topo.dependencies[int(self.call_dependency[c])].kind == "database"
            }
        )
        self.pool_pairs = np.array(pairs, dtype=np.int64).reshape(-1, 2)
        pair_index = {p: i for i, p in enumerate(pairs)}
        self.call_pair = np.array(
            [
                pair_index.get((int(self.call_service[c]), int(self.call_dependency[c])), -1)
                for c in range(n_calls)
            ],
            dtype=np.int64,
        )
        # capacities sized so that the healthy system at the daily peak runs near TARGET_UTILIZATION
        weights = topo.entry_weights
        peak_calls = peak_rate * (weights @ self.call_visits)
        peak_ops = peak_rate * (weights @ self.op_visits)
        dep_calls = np.zeros(len(topo.dependencies))
        has_dep = self.call_dependency >= 0
        # a cache-miss fallback is the expensive query the cache exists for
        self.call_cost = np.where(self.fallback_cache >= 0, 4.0, 1.0)
        self.call_base_latency = np.where(self.fallback_cache >= 0, 3.0, 1.0)
        np.add.at(dep_calls, self.call_dependency[has_dep], (peak_calls * self.call_cost)[has_dep])
        target = rng.uniform(0.25, 0.45, size=len(topo.dependencies))
        self.dep_capacity = np.maximum(dep_calls, 1.0) / target
        svc_rate = np.zeros(len(topo.services))
        np.add.at(svc_rate, self.op_service, peak_ops)
        cpu_ms = np.array([o.cpu_ms for o in topo.operations])
        svc_cpu = np.zeros(len(topo.services))
        np.add.at(svc_cpu, self.op_service, peak_ops * cpu_ms / 1000.0)
        util = rng.uniform(0.2, 0.45, size=len(topo.services))
        self.peak_cpu_utilization = util
        have_load = svc_cpu > 0
        self.cpu_scale = np.ones(len(topo.services))
        self.cpu_scale[have_load] = (
            util[have_load] * self.replicas[have_load] * self.service_cores[have_load]
        ) / svc_cpu[have_load]
        self.op_cpu_s = cpu_ms / 1000.0 * self.cpu_scale[self.op_service]
        consumer_rate = np.zeros(len(topo.dependencies))
        np.add.at(consumer_rate, self.call_dependency[has_dep], peak_calls[has_dep])
        self.queue_capacity = np.maximum(consumer_rate, 1.0) * 2.5
        self.op_work_ms = np.array([o.work_ms for o in topo.operations])
        self.op_base_error = np.array([o.base_error for o in topo.operations])
        self.dep_base_ms = np.array([d.base_latency_ms for d in topo.dependencies])
        self.call_probability = np.array([c.probability for c in topo.calls])
        self.call_timeout_ms = np.array([c.timeout_ms for c in topo.calls])
        self.pool_size = np.array([s.pool_size for s in topo.services], dtype=np.float64)
        self.pod_base_memory = np.array(
            [topo.services[s].base_memory_bytes for s in self.pod_service]
        )
        self.pod_memory_limit = np.array(
            [topo.services[s].memory_limit_bytes for s in self.pod_service]
        )

    def templates_for(self, retries: np.ndarray) -> list[TraceTemplate]:
        """The entry templates under a retry policy (``Effects.call_retries``), built once."""
        key = np.asarray(retries, dtype=np.int64).tobytes()
        found = self._template_sets.get(key)
        if found is None:
            found = [build_template(self.topo, e, retries) for e in self.topo.entry_operations]
            self._template_sets[key] = found
        return found

    def visit_plan(self, retries: np.ndarray) -> _VisitPlan:
        """The expected-load plan of ``templates_for(retries)``, built once."""
        key = np.asarray(retries, dtype=np.int64).tobytes()
        found = self._visit_plans.get(key)
        if found is None:
            found = self._visit_plans[key] = _VisitPlan.build(self.templates_for(retries))
        return found


@dataclass
class _VisitPlan:
    """Every position of a template set in one array, to compute expected visit rates at once."""

    parent: np.ndarray
    """Index into these arrays; -1 for the templates' roots."""
    call: np.ndarray
    attempt: np.ndarray
    operation: np.ndarray
    server: np.ndarray
    roots: np.ndarray
    levels: list[np.ndarray]

    @classmethod
    def build(cls, templates: list[TraceTemplate]) -> _VisitPlan:
        offsets = np.cumsum([0] + [t.size for t in templates])
        parent = np.concatenate(
            [
                np.where(t.parent >= 0, t.parent + o, -1)
                for t, o in zip(templates, offsets, strict=False)
            ]
        )
        depth = np.concatenate([_depths(t.parent) for t in templates])
        role = np.concatenate([t.role for t in templates])
        return cls(
            parent=parent,
            call=np.concatenate([t.call for t in templates]),
            attempt=np.concatenate([t.attempt for t in templates]),
            operation=np.concatenate([t.operation for t in templates]),
            server=(role == SERVER) | (role == CONSUMER),
            roots=offsets[:-1],
            levels=[np.flatnonzero(depth == d) for d in range(1, int(depth.max()) + 1)],
        )

    def rates(
        self,
        entry_rates: np.ndarray,
        inclusion: np.ndarray,
        failure: np.ndarray,
        n_ops: int,
        n_calls: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(operation rates, call rates, every attempt counted) for the entry rates, given each
        call's probability of being made (``inclusion``) and of an attempt failing (``failure``):
        attempt ``k`` of a call is made when the ``k`` attempts before it all failed."""
        is_call = self.call >= 0
        c = self.call[is_call]
        mult = np.ones(len(self.call))
        mult[is_call] = inclusion[c] * failure[c] ** self.attempt[is_call]
        visits = np.zeros(len(self.call))
        visits[self.roots] = entry_rates
        for level in self.levels:
            visits[level] = visits[self.parent[level]] * mult[level]
        op_rate = np.bincount(
            self.operation[self.server], visits[self.server], minlength=n_ops
        ).astype(np.float64)
        call_rate = np.bincount(c, visits[is_call], minlength=n_calls).astype(np.float64)
        return op_rate, call_rate


def _depths(parent: np.ndarray) -> np.ndarray:
    depth = np.zeros(len(parent), dtype=np.int64)
    for i in range(1, len(parent)):
        depth[i] = depth[parent[i]] + 1
    return depth


def _queueing_mult(rho: np.ndarray) -> np.ndarray:
    q = np.clip(rho, 0.0, 0.985)
    return np.minimum(1.0 + q**4 / (1.0 - q), 60.0)


class ResourceModel:
    """Per-slice fluid model of load and resources; carries queue backlogs between slices."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.backlog = np.zeros(len(world.topo.dependencies))
        self.call_failure = np.zeros(len(world.topo.calls))
        """Share of a call's attempts that failed (error or timeout), as last observed."""
        self.pod_backlog = np.zeros(len(world.topo.pods))
        """Request work (core-seconds) waiting in each pod's queue."""

    def observe(self, spans: SpanBatch) -> None:
        """Learn each call's attempt failure ratio from the spans a slice started."""
        n_ops = len(self.world.topo.operations)
        client = (spans.role != SERVER) & (spans.role != CONSUMER) & (spans.span_key >= n_ops)
        calls = spans.span_key[client] - n_ops
        n_calls = len(self.call_failure)
        attempts = np.bincount(calls, minlength=n_calls)
        failed = np.bincount(calls, weights=spans.variant[client] > 0, minlength=n_calls)
        self.call_failure = (failed + FAILURE_PRIOR * self.call_failure) / (
            attempts + FAILURE_PRIOR
        )

    def step(
        self, edge_rate: float, effects: Effects, active_replicas: np.ndarray, dt: float
    ) -> SliceState:
        w = self.world
        topo = w.topo
        entry_rates = edge_rate * topo.entry_weights
        inclusion = w.call_probability.copy()
        fb = w.fallback_cache >= 0
        inclusion[fb] *= effects.cache_miss[w.fallback_cache[fb]]
        op_rate, call_rate = w.visit_plan(effects.call_retries).rates(
            entry_rates, inclusion, self.call_failure, len(topo.operations), len(topo.calls)
        )

        # CPU per pod: request work spread over active replicas, plus extra burners
        svc_cpu = np.zeros(len(topo.services))
        np.add.at(svc_cpu, w.op_service, op_rate * w.op_cpu_s)
        pod_svc = w.pod_service
        pod_active = _pod_active(w, active_replicas)
        per_pod = svc_cpu[pod_svc] / np.maximum(active_replicas[pod_svc], 1)
        cores = w.service_cores[pod_svc]
        steal = effects.host_steal[w.pod_host]
        rho = (per_pod + effects.pod_cpu_extra) / (cores * (1.0 - steal))
        # request work beyond what the burners leave queues up to a bound (a restart drops it)
        serving = np.maximum(
            cores * (1.0 - steal) - effects.pod_cpu_extra, MIN_SERVING_SHARE * cores
        )
        before = self.pod_backlog
        after = np.clip(before + (per_pod - serving) * dt, 0.0, serving * MAX_QUEUE_WAIT_S)
        after = np.where(pod_active & (effects.pod_down == 0.0), after, 0.0)
        self.pod_backlog = after
        pod_queue_s = (before + after) / 2.0 / serving
        memory = w.pod_base_memory + effects.pod_memory_extra
        gc_pressure = np.clip((memory / w.pod_memory_limit - 0.8) / 0.2, 0.0, 1.0)
        pod_work = effects.pod_work_mult * _queueing_mult(rho) * (1.0 + 1.5 * gc_pressure)
        pod_work = pod_work / (1.0 - steal)
        pod_util = np.clip(rho * (1.0 - steal) + 0.02, 0.0, 1.0) * pod_active
        host_util = np.zeros(len(topo.hosts))
        np.add.at(host_util, w.pod_host, (per_pod + effects.pod_cpu_extra) * pod_active)
        host_cores = np.array([h.cores for h in topo.hosts])
        host_util = np.clip(host_util / host_cores + effects.host_steal, 0.0, 1.0)

        # dependencies: utilization from call load, queueing into latency
        has_dep = w.call_dependency >= 0
        dep_load = np.zeros(len(topo.dependencies))
        np.add.at(
            dep_load,
            w.call_dependency[has_dep],
            (call_rate * w.call_cost * effects.call_cost_mult)[has_dep],
        )
        dep_util = dep_load / w.dep_capacity + effects.dep_extra_load
        dep_mult = effects.dep_latency_mult * _queueing_mult(dep_util)

        # connection pools (Little's law): connections busy = call rate x call latency
        call_lat_ms = (
            w.dep_base_ms[np.maximum(w.call_dependency, 0)]
            * dep_mult[np.maximum(w.call_dependency, 0)]
            * effects.call_latency_mult
        )
        pairs = w.pool_pairs
        pool_in_use = np.zeros(len(pairs))
        has_pair = w.call_pair >= 0
        np.add.at(pool_in_use, w.call_pair[has_pair], (call_rate * call_lat_ms / 1000.0)[has_pair])
        pair_replicas = np.maximum(active_replicas[pairs[:, 0]], 1) if len(pairs) else np.ones(0)
        pool_in_use = pool_in_use / pair_replicas
        pool_cap = (
            np.maximum(w.pool_size[pairs[:, 0]] - effects.pool_leaked[pairs[:, 0]], 1e-3)
            if len(pairs)
            else np.ones(0)
        )
        pressure = pool_in_use / pool_cap
        pool_wait = np.zeros(len(topo.calls))
        pool_error = np.zeros(len(topo.calls))
        if len(pairs):
            over = np.clip(pressure - 0.8, 0.0, None)
            wait_pair = np.minimum(over * 400.0, 3000.0)  # the pool's acquire timeout
            err_pair = np.clip((pressure - 1.0) * 0.5, 0.0, 0.9)
            pool_wait[has_pair] = wait_pair[w.call_pair[has_pair]]
            pool_error[has_pair] = err_pair[w.call_pair[has_pair]]
        pool_in_use = (
            np.minimum(pool_in_use + effects.pool_leaked[pairs[:, 0]], w.pool_size[pairs[:, 0]])
            if len(pairs)
            else pool_in_use
        )

        # queues: backlog grows when arrivals exceed the consumers' capacity
        arrivals = np.zeros(len(topo.dependencies))
        np.add.at(arrivals, w.call_dependency[has_dep], call_rate[has_dep])
        capacity = w.queue_capacity * effects.consumer_capacity_mult
        is_queue = np.array([d.kind == "queue" for d in topo.dependencies])
        self.backlog = np.where(
            is_queue, np.maximum(self.backlog + (arrivals - capacity) * dt, 0.0), 0.0
        )
        queue_delay = np.where(is_queue, self.backlog / np.maximum(capacity, 1e-9), 0.0)

        return SliceState(
            pod_work_mult=pod_work,
            pod_error=effects.pod_error + effects.pod_down,
            pod_cpu_utilization=pod_util,
            pod_queue_s=pod_queue_s,
            pod_memory_bytes=np.minimum(memory, w.pod_memory_limit),
            pod_active=pod_active,
            host_cpu_utilization=host_util,
            op_work_mult=effects.op_work_mult,
            op_error=effects.op_error,
            call_latency_mult=effects.call_latency_mult,
            call_extra_ms=effects.call_extra_ms + pool_wait,
            call_error=pool_error,
            dep_latency_mult=dep_mult,
            dep_error=effects.dep_error,
            dep_utilization=dep_util,
            cache_miss=effects.cache_miss,
            queue_delay_s=queue_delay,
            queue_backlog=self.backlog.copy(),
            pool_in_use=pool_in_use,
            active_replicas=active_replicas,
            op_error_message=effects.op_error_message,
            call_retries=effects.call_retries,
        )


def _pod_active(w: World, active_replicas: np.ndarray) -> np.ndarray:
    active = np.zeros(len(w.pod_service), dtype=bool)
    for s, pods in enumerate(w.service_pods):
        active[pods[: active_replicas[s]]] = True
    return active


@dataclass
class SpanBatch:
    """Spans as columns. Times are Unix nanoseconds; ids are raw bytes in uint8 matrices."""

    span_key: np.ndarray
    variant: np.ndarray
    """0 ok, 1 error, 2 timeout."""
    cause: np.ndarray
    service: np.ndarray
    pod: np.ndarray
    role: np.ndarray
    trace_id: np.ndarray
    span_id: np.ndarray
    parent_id: np.ndarray
    has_parent: np.ndarray
    start_ns: np.ndarray
    end_ns: np.ndarray

    def __len__(self) -> int:
        return len(self.span_key)

    @classmethod
    def empty(cls) -> SpanBatch:
        ids = {"trace_id": 16, "span_id": 8, "parent_id": 8}
        return cls(
            **{
                n: np.zeros((0, ids[n]), np.uint8)
                if n in ids
                else np.zeros(0, bool if n == "has_parent" else np.int64)
                for n in cls.__dataclass_fields__
            }
        )

    @classmethod
    def concat(cls, batches: list[SpanBatch]) -> SpanBatch:
        batches = [b for b in batches if len(b)]
        if not batches:
            return cls.empty()
        names = list(cls.__dataclass_fields__)
        return cls(**{n: np.concatenate([getattr(b, n) for b in batches]) for n in names})

    def take(self, index: np.ndarray) -> SpanBatch:
        return SpanBatch(**{n: getattr(self, n)[index] for n in self.__dataclass_fields__})


@dataclass
class _TemplatePlan:
    """Column groups of a template, so that everything not structural is computed at once."""

    servers: np.ndarray
    client_services: np.ndarray
    dependencies: np.ndarray
    producers: np.ndarray
    child: np.ndarray
    structural: list[int]
    """Server and client-service positions, children before parents."""
    levels: list[np.ndarray]
    """Positions by depth (root excluded), for the top-down pass."""
    slots: dict[int, list[list[tuple[int, list[int], int]]]]
    """Server position -> groups -> (call, attempt positions, cache-read position or -1)."""


def _plan(template: TraceTemplate, world: World) -> _TemplatePlan:
    cached = world.plans.get(id(template))
    if cached is not None:
        return cached
    role = template.role
    child = np.full(template.size, -1, dtype=np.int64)
    for pos, c in template.child_of_client.items():
        child[pos] = c
    depth = np.zeros(template.size, dtype=np.int64)
    for i in range(1, template.size):
        depth[i] = depth[template.parent[i]] + 1
    slots: dict[int, list[list[tuple[int, list[int], int]]]] = {}
    for pos, groups in template.slots.items():
        slots[pos] = []
        for group in groups:
            entries = []
            for c, attempts in group:
                fallback = world.topo.calls[c].fallback_of
                cache_pos = -1 if fallback is None else _sibling_attempt(template, pos, fallback)
                entries.append((c, attempts, cache_pos))
            slots[pos].append(entries)
    plan = _TemplatePlan(
        servers=np.flatnonzero((role == SERVER) | (role == CONSUMER)),
        client_services=np.flatnonzero(role == CLIENT_SERVICE),
        dependencies=np.flatnonzero(role == CLIENT_DEPENDENCY),
        producers=np.flatnonzero(role == PRODUCER),
        child=child,
        structural=[
            i
            for i in range(template.size - 1, -1, -1)
            if role[i] in (SERVER, CONSUMER, CLIENT_SERVICE)
        ],
        levels=[np.flatnonzero(depth == d) for d in range(1, int(depth.max()) + 1)],
        slots=slots,
    )
    world.plans[id(template)] = plan
    return plan


def simulate_traces(
    world: World,
    template: TraceTemplate,
    starts_ns: np.ndarray,
    state: SliceState,
    rng: np.random.Generator,
) -> SpanBatch:
    """Simulate ``len(starts_ns)`` traces of one template; return the spans that happened.

    Arrays are (positions x traces): each position's values are contiguous.
    """
    n, size = len(starts_ns), template.size
    if n == 0:
        return SpanBatch.empty()
    plan = _plan(template, world)
    u_err = rng.random((size, n))
    u_inc = rng.random((size, n))
    u_pod = rng.random((size, n))
    noise = rng.standard_normal((size, n))
    ids = rng.integers(0, np.iinfo(np.int64).max, size=(n, size + 2), dtype=np.int64)
    parent, role = template.parent, template.role
    timeout = world.call_timeout_ms

    # pods: servers pick one of their service's active pods; clients run in their parent's pod
    pod = np.zeros((size, n), dtype=np.int64)
    S = plan.servers
    svc = template.service[S]
    n_active = np.maximum(state.active_replicas[svc], 1)[:, None]
    pick = np.minimum((u_pod[S] * n_active).astype(np.int64), n_active - 1)
    pod[S] = world.service_pod_matrix[svc[:, None], pick]
    clients = np.flatnonzero((role != SERVER) & (role != CONSUMER))
    pod[clients] = pod[parent[clients]]

    dur = np.zeros((size, n))
    err = np.zeros((size, n), dtype=bool)
    cause = np.zeros((size, n), dtype=np.int8)
    cond_inc = np.ones((size, n), dtype=bool)
    offset = np.zeros((size, n))
    miss = np.zeros((size, n), dtype=bool)

    # own work of every server span at once
    ops = template.operation[S]
    own = (world.op_work_ms[ops] * state.op_work_mult[ops])[:, None] * state.pod_work_mult[pod[S]]
    own = own * np.exp(0.35 * noise[S] - 0.06)
    # an overloaded pod's queue: the wait comes before the handler runs
    wait = (state.pod_queue_s[pod[S]] * 1000.0) * (0.75 + 0.5 * u_inc[S])
    own_err = (
        u_err[S]
        < (world.op_base_error[ops] + state.op_error[ops])[:, None] + state.pod_error[pod[S]]
    )
    own_at = {int(p): k for k, p in enumerate(S)}

    # every call to a dependency at once: it has no children
    D = plan.dependencies
    if len(D):
        c, q = template.call[D], template.dependency[D]
        scale = (
            world.dep_base_ms[q]
            * state.dep_latency_mult[q]
            * state.call_latency_mult[c]
            * world.call_base_latency[c]
        )
        d = scale[:, None] * np.exp(0.4 * noise[D] - 0.08) + state.call_extra_ms[c][:, None]
        pool_fail = u_pod[D] < state.call_error[c][:, None]
        e = (u_err[D] < state.dep_error[q][:, None]) | pool_fail
        miss[D] = u_inc[D] < state.cache_miss[q][:, None]
        timed_out = (d > timeout[c][:, None]) & ~pool_fail
        dur[D] = np.minimum(d, timeout[c][:, None])
        err[D] = e | timed_out
        cause[D] = np.where(
            pool_fail,
            CAUSE_POOL,
            np.where(timed_out, CAUSE_TIMEOUT, np.where(e, CAUSE_OWN, CAUSE_NONE)),
        )
    P = plan.producers
    if len(P):
        c, q = template.call[P], template.dependency[P]
        d = world.dep_base_ms[q][:, None] * np.exp(0.3 * noise[P]) + state.call_extra_ms[c][:, None]
        e = u_err[P] < state.dep_error[q][:, None]
        offset[plan.child[P]] = d + (state.queue_delay_s[q] * 1000.0)[:, None] * (0.5 + u_pod[P])
        timed_out = d > timeout[c][:, None]
        dur[P] = np.minimum(d, timeout[c][:, None])
        err[P] = e | timed_out
        cause[P] = np.where(timed_out, CAUSE_TIMEOUT, np.where(e, CAUSE_OWN, CAUSE_NONE))
    CS = plan.client_services
    rtt = np.zeros((size, n))
    if len(CS):
        rtt[CS] = (0.4 + state.call_extra_ms[template.call[CS]])[:, None] * np.exp(0.2 * noise[CS])
        offset[plan.child[CS]] = rtt[CS] / 2

    # structure, children before parents: retries, sequential groups, parallel calls
    probability = world.call_probability
    critical = world.call_critical
    child_failed = np.zeros((size, n), dtype=bool)
    for i in plan.structural:
        if role[i] == CLIENT_SERVICE:
            j = plan.child[i]
            limit = timeout[template.call[i]]
            d_i = dur[j] + rtt[i]
            dur[i] = np.minimum(d_i, limit)
            err[i] = err[j] | (d_i > limit)
            continue
        own_i = own[own_at[i]]
        elapsed = wait[own_at[i]] + own_i * 0.4
        failed_any = child_failed[i]
        for group in plan.slots[i]:
            group_dur: np.ndarray | None = None
            for c_i, attempts, cache_pos in group:
                a0 = attempts[0]
                always = probability[c_i] >= 1.0 and cache_pos < 0
                if always:
                    offset[a0] = elapsed
                    slot_elapsed = dur[a0].copy()
                    failed = err[a0].copy()
                    this_inc = failed
                else:
                    inc = u_inc[a0] < probability[c_i]
                    if cache_pos >= 0:
                        inc &= miss[cache_pos] | err[cache_pos]
                    cond_inc[a0] = inc
                    offset[a0] = elapsed
                    slot_elapsed = dur[a0] * inc
                    failed = inc & err[a0]
                    this_inc = failed
                for k in range(1, len(attempts)):
                    a = attempts[k]
                    # a retry runs only after the previous attempt failed
                    cond_inc[a] = this_inc
                    offset[a] = elapsed + slot_elapsed
                    slot_elapsed += (dur[a] + 25.0 * k) * this_inc
                    failed &= err[a]
                    this_inc = failed
                group_dur = (
                    slot_elapsed if group_dur is None else np.maximum(group_dur, slot_elapsed)
                )
                if critical[c_i]:
                    failed_any |= failed
            if group_dur is not None:
                elapsed = elapsed + group_dur
        dur[i] = elapsed + own_i * 0.6
        err[i] = own_err[own_at[i]] | failed_any

    # causes, for all positions with children at once
    if len(S):
        cause[S] = np.where(own_err, CAUSE_OWN, np.where(child_failed[S], CAUSE_CHILD, CAUSE_NONE))
    if len(CS):
        j = plan.child[CS]
        late = dur[j] + rtt[CS] > timeout[template.call[CS]][:, None]
        cause[CS] = np.where(late, CAUSE_TIMEOUT, np.where(err[j], CAUSE_CHILD, CAUSE_NONE))

    # top-down, one depth level at a time: actual inclusion and start times
    active = np.ones((size, n), dtype=bool)
    start_ms = np.zeros((size, n))
    for level in plan.levels:
        pa = parent[level]
        active[level] = active[pa] & cond_inc[level]
        start_ms[level] = start_ms[pa] + offset[level]

    # spans in trace-major order
    rows, cols = np.nonzero(active.T)
    start_ns = starts_ns[rows] + (start_ms[cols, rows] * 1e6).astype(np.int64)
    end_ns = start_ns + np.maximum((dur[cols, rows] * 1e6).astype(np.int64), 1000)
    span_cause = cause[cols, rows].astype(np.int64)
    variant = np.where(span_cause == CAUSE_TIMEOUT, 2, err[cols, rows].astype(np.int64))
    span_ids = ids[:, 2:]
    parent_cols = np.maximum(parent[cols], 0)
    return SpanBatch(
        span_key=template.span_key[cols],
        variant=variant,
        cause=span_cause,
        service=template.service[cols],
        pod=pod[cols, rows],
        role=role[cols],
        trace_id=ids[:, :2][rows].view(np.uint8).reshape(-1, 16),
        span_id=span_ids[rows, cols].view(np.uint8).reshape(-1, 8),
        parent_id=span_ids[rows, parent_cols].view(np.uint8).reshape(-1, 8),
        has_parent=parent[cols] >= 0,
        start_ns=start_ns,
        end_ns=end_ns,
    )


def _sibling_attempt(template: TraceTemplate, server_pos: int, call: int) -> int:
    for group in template.slots[server_pos]:
        for c, attempts in group:
            if c == call:
                return attempts[0]
    raise KeyError(f"call {call} is not a child of position {server_pos}")
