"""Topology generator: services in realistic shapes, their operations, calls, pods and hosts.

Shape, top to bottom: one edge gateway, a few frontends, layers of mid-tier services, a data tier
of virtual dependencies (databases, caches, queues, external APIs) that exist only as client
spans, and a few uninstrumented internal services that are seen only through ``peer.service``.
Calls always go to a lower layer, so the call graph is a DAG and the trace of an entry operation
is a bounded tree. Every choice comes from the Generator passed in: same seed, same topology.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

DependencyKind = Literal["database", "cache", "queue", "external", "service"]
Tier = Literal["gateway", "frontend", "mid", "consumer", "cron"]

MAX_TRACE_NODES = 72
"""Upper bound on the nodes of one operation's call tree (client + server spans)."""

_NOUNS = [
    "cart",
    "checkout",
    "payment",
    "order",
    "inventory",
    "catalog",
    "search",
    "pricing",
    "shipping",
    "user",
    "account",
    "auth",
    "session",
    "profile",
    "review",
    "rating",
    "recommend",
    "ad",
    "email",
    "notify",
    "invoice",
    "billing",
    "tax",
    "fraud",
    "ledger",
    "wallet",
    "coupon",
    "promo",
    "loyalty",
    "media",
    "image",
    "thumbnail",
    "upload",
    "export",
    "report",
    "audit",
    "config",
    "quota",
    "geo",
    "currency",
    "delivery",
    "warehouse",
    "stock",
    "supplier",
    "label",
    "tracking",
    "chat",
    "feed",
    "timeline",
    "comment",
    "like",
    "follow",
    "friend",
    "message",
    "ranking",
    "index",
    "crawler",
    "spam",
    "policy",
    "consent",
    "gdpr",
    "kyc",
    "risk",
    "limit",
]
_SUFFIXES = ("service", "api", "svc", "worker", "engine", "store", "manager-api", "hub")
_VERBS = ("get", "list", "create", "update", "delete", "search", "validate", "compute")
_TABLES = ("orders", "users", "items", "sessions", "payments", "events", "accounts", "carts")
_EXTERNALS = (
    ("stripe", "api.stripe.com"),
    ("sendgrid", "api.sendgrid.com"),
    ("maps", "maps.googleapis.com"),
    ("twilio", "api.twilio.com"),
    ("shippo", "api.goshippo.com"),
)


@dataclass(frozen=True)
class Host:
    index: int
    name: str
    cores: int


@dataclass(frozen=True)
class Pod:
    index: int
    name: str
    service: int
    host: int


@dataclass(frozen=True)
class Dependency:
    """A callee seen only from client spans: no spans, no metrics of its own."""

    index: int
    name: str
    kind: DependencyKind
    system: str
    address: str
    port: int
    base_latency_ms: float
    declared: bool = True
    """False for the dependency nobody put in the architecture diagram."""
    consumer_operation: int | None = None
    """For a queue: the operation that consumes its messages."""


@dataclass(frozen=True)
class Call:
    """One call slot of an operation: a client span (plus retries) to an operation or dependency."""

    index: int
    """Global call index (row in per-call effect arrays)."""
    caller_operation: int
    target_operation: int | None
    target_dependency: int | None
    group: int
    """Calls with the same group run in parallel; groups run one after the other."""
    probability: float
    retries: int
    timeout_ms: float
    statement: str
    critical: bool = True
    """An unrecovered error of a critical call fails the caller."""
    fallback_of: int | None = None
    """Cache-aside: this call runs only when call ``fallback_of`` (a cache read) missed."""


@dataclass
class Operation:
    index: int
    service: int
    name: str
    method: str
    route: str
    work_ms: float
    cpu_ms: float
    base_error: float
    consumer: bool = False
    calls: list[int] = field(default_factory=list)


@dataclass
class Service:
    index: int
    name: str
    tier: Tier
    language: str
    replicas: int
    operations: list[int] = field(default_factory=list)
    pods: list[int] = field(default_factory=list)
    cores_per_pod: float = 1.0
    memory_limit_bytes: float = 512e6
    base_memory_bytes: float = 200e6
    pool_size: int = 20
    user_facing: bool = False


@dataclass
class Topology:
    services: list[Service]
    operations: list[Operation]
    calls: list[Call]
    dependencies: list[Dependency]
    hosts: list[Host]
    pods: list[Pod]
    entry_operations: list[int]
    entry_weights: np.ndarray

    def service_named(self, name: str) -> Service:
        for s in self.services:
            if s.name == name:
                return s
        raise KeyError(name)

    def dependency_named(self, name: str) -> Dependency:
        for d in self.dependencies:
            if d.name == name:
                return d
        raise KeyError(name)

    def callers_of_dependency(self, dep: int) -> set[int]:
        """Services with a call to dependency ``dep``."""
        return {
            self.operations[c.caller_operation].service
            for c in self.calls
            if c.target_dependency == dep
        }

    def reachable_calls(self) -> set[int]:
        """Calls some request can make: those of the operations reachable from the entry
        routes and the cron jobs, through calls and through the queues consumers read. A
        generated operation that nothing routes to never runs; its calls are no part of the
        running system's topology."""
        roots = list(self.entry_operations) + [
            o for s in self.services if s.tier == "cron" for o in s.operations
        ]
        seen: set[int] = set()
        stack = roots
        while stack:
            o = stack.pop()
            if o in seen:
                continue
            seen.add(o)
            for c_index in self.operations[o].calls:
                c = self.calls[c_index]
                if c.target_operation is not None:
                    stack.append(c.target_operation)
                elif c.target_dependency is not None:
                    consumer = self.dependencies[c.target_dependency].consumer_operation
                    if consumer is not None:
                        stack.append(consumer)
        return {c for o in seen for c in self.operations[o].calls}

    def call_edge(self, call: int) -> tuple[str, str]:
        """(caller service, callee service or dependency name) of a call, as in ``describe``."""
        c = self.calls[call]
        source = self.services[self.operations[c.caller_operation].service].name
        if c.target_operation is not None:
            return source, self.services[self.operations[c.target_operation].service].name
        return source, self.dependencies[c.target_dependency or 0].name

    def describe(self, pod_names: dict[int, str] | None = None) -> dict[str, object]:
        """A JSON-able summary, written next to the labels (ground truth, not telemetry).

        ``pod_names`` gives the names the pods carry in telemetry (they include the version).
        """
        names = pod_names or {p.index: p.name for p in self.pods}
        return {
            "services": [
                {
                    "name": s.name,
                    "tier": s.tier,
                    "replicas": s.replicas,
                    "pods": [
                        {"name": names[p], "host": self.hosts[self.pods[p].host].name}
                        for p in s.pods
                    ],
                    "hosts": sorted({self.hosts[self.pods[p].host].name for p in s.pods}),
                }
                for s in self.services
            ],
            "dependencies": [
                {"name": d.name, "kind": d.kind, "system": d.system, "declared": d.declared}
                for d in self.dependencies
            ],
            "edges": sorted(
                {
                    (
                        self.services[self.operations[c.caller_operation].service].name,
                        self.services[self.operations[c.target_operation].service].name
                        if c.target_operation is not None
                        else self.dependencies[c.target_dependency or 0].name,
                    )
                    for c in self.calls
                }
            ),
        }


def new_call_candidate(topo: Topology, peak_calls: np.ndarray) -> int:
    """The call a "new dependency" topology change switches on: the busiest call that is the
    only one from its caller service to its callee (so the edge is new when it starts), always
    made when its operation runs, and neither a cache-aside fallback nor the cache read one
    hangs off. Deterministic: no randomness, ties go to the lowest index."""
    edges = [topo.call_edge(c.index) for c in topo.calls]
    per_edge: dict[tuple[str, str], int] = {}
    for edge in edges:
        per_edge[edge] = per_edge.get(edge, 0) + 1
    guarded = {c.fallback_of for c in topo.calls if c.fallback_of is not None}
    candidates = [
        c.index
        for c in topo.calls
        if per_edge[edges[c.index]] == 1
        and c.fallback_of is None
        and c.index not in guarded
        and c.probability >= 1.0
        and topo.services[topo.operations[c.caller_operation].service].tier != "cron"
    ]
    if not candidates:
        raise ValueError("the topology has no call that can appear mid-run; use more services")
    return max(candidates, key=lambda c: (float(peak_calls[c]), -c))


class _Builder:
    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.services: list[Service] = []
        self.operations: list[Operation] = []
        self.calls: list[Call] = []
        self.dependencies: list[Dependency] = []
        self.used_names: set[str] = set()
        self.tree_size: dict[int, int] = {}
        self.cap = MAX_TRACE_NODES

    def name(self, suffixes: tuple[str, ...]) -> str:
        for _ in range(1000):
            noun = _NOUNS[int(self.rng.integers(len(_NOUNS)))]
            suffix = suffixes[int(self.rng.integers(len(suffixes)))]
            candidate = f"{noun}-{suffix}"
            if candidate not in self.used_names:
                self.used_names.add(candidate)
                return candidate
        n = len(self.used_names)
        candidate = f"svc{n}-{suffixes[0]}"
        self.used_names.add(candidate)
        return candidate

    def service(self, tier: Tier, n_ops: int, name: str | None = None) -> Service:
        rng = self.rng
        svc = Service(
            index=len(self.services),
            name=name or self.name(_SUFFIXES),
            tier=tier,
            language=("go", "java", "python", "nodejs")[int(rng.integers(4))],
            replicas=int(rng.integers(2, 5)) if tier != "cron" else 1,
            cores_per_pod=float(rng.choice([1.0, 2.0])),
            memory_limit_bytes=float(rng.choice([512e6, 1024e6])),
            pool_size=int(rng.choice([10, 20, 30])),
            user_facing=tier in ("gateway", "frontend"),
        )
        svc.base_memory_bytes = svc.memory_limit_bytes * float(rng.uniform(0.3, 0.5))
        self.services.append(svc)
        noun = svc.name.split("-")[0]
        for k in range(n_ops):
            verb = _VERBS[int(rng.integers(len(_VERBS)))]
            method = "GET" if verb in ("get", "list", "search") else "POST"
            route = f"/api/{noun}/{verb}" if k else f"/api/{noun}"
            if tier == "consumer":
                route = f"process {noun}"
            self.operation(svc, route, method, consumer=tier == "consumer")
        return svc

    def operation(self, svc: Service, route: str, method: str, consumer: bool = False) -> Operation:
        if any(self.operations[o].route == route for o in svc.operations):
            route = f"{route}/{len(svc.operations)}"
        rng = self.rng
        work = float(rng.lognormal(np.log(4.0), 0.5))
        op = Operation(
            index=len(self.operations),
            service=svc.index,
            name=f"{method} {route}" if not consumer else route,
            method=method,
            route=route,
            work_ms=work,
            cpu_ms=work * float(rng.uniform(0.3, 0.8)),
            base_error=float(rng.uniform(0.0002, 0.002)),
            consumer=consumer,
        )
        self.operations.append(op)
        svc.operations.append(op.index)
        self.tree_size[op.index] = 1
        return op

    def dependency(self, kind: DependencyKind, declared: bool = True) -> Dependency:
        rng = self.rng
        n = sum(1 for d in self.dependencies if d.kind == kind)
        if kind == "database":
            system = ("postgresql", "mysql")[int(rng.integers(2))]
            name = f"{_TABLES[n % len(_TABLES)]}-db" + (f"-{n // len(_TABLES)}" if n >= 8 else "")
            latency, port = float(rng.uniform(2.0, 6.0)), 5432
        elif kind == "cache":
            system, name = "redis", f"{_TABLES[n % len(_TABLES)]}-cache{n // len(_TABLES) or ''}"
            latency, port = float(rng.uniform(0.3, 0.8)), 6379
        elif kind == "queue":
            system, name = "kafka", f"{_TABLES[n % len(_TABLES)]}-events{n // len(_TABLES) or ''}"
            latency, port = float(rng.uniform(1.0, 3.0)), 9092
        elif kind == "external":
            vendor, host = _EXTERNALS[n % len(_EXTERNALS)]
            system, name = "http", vendor + (f"-{n // len(_EXTERNALS)}" if n >= 5 else "")
            latency, port = float(rng.uniform(60.0, 150.0)), 443
            dep = Dependency(len(self.dependencies), name, kind, system, host, port, latency)
            self.dependencies.append(dep)
            return dep
        else:
            system, name = "http", self.name(("legacy", "internal"))
            latency, port = float(rng.uniform(5.0, 15.0)), 8080
        address = f"{name}.prod.svc.cluster.local" if kind != "external" else name
        dep = Dependency(
            index=len(self.dependencies),
            name=name,
            kind=kind,
            system=system,
            address=address,
            port=port,
            base_latency_ms=latency,
            declared=declared,
        )
        self.dependencies.append(dep)
        return dep

    def call(
        self,
        op: Operation,
        *,
        operation: int | None = None,
        dependency: int | None = None,
        group: int,
        probability: float = 1.0,
        retries: int = 1,
        timeout_ms: float = 1000.0,
        statement: str = "",
        critical: bool = True,
        fallback_of: int | None = None,
        force: bool = False,
    ) -> Call | None:
        size = 2 if dependency is None else 1
        if operation is not None:
            size = 1 + self.tree_size[operation]
        if dependency is not None and self.dependencies[dependency].consumer_operation is not None:
            size += self.tree_size[self.dependencies[dependency].consumer_operation or 0]
        attempts = 1 + retries
        if not force and self.tree_size[op.index] + size * attempts > self.cap:
            return None
        c = Call(
            index=len(self.calls),
            caller_operation=op.index,
            target_operation=operation,
            target_dependency=dependency,
            group=group,
            probability=probability,
            retries=retries,
            timeout_ms=timeout_ms,
            statement=statement,
            critical=critical,
            fallback_of=fallback_of,
        )
        self.calls.append(c)
        op.calls.append(c.index)
        self.tree_size[op.index] += size * attempts
        return c


def generate(n_services: int, rng: np.random.Generator) -> Topology:
    """A topology of about ``n_services`` instrumented services (10..500)."""
    if not 10 <= n_services <= 500:
        raise ValueError(f"topology size must be within 10..500 services, got {n_services}")
    b = _Builder(rng)
    n_front = max(2, n_services // 12)
    n_consumer = max(1, n_services // 15)
    n_cron = 1
    n_mid = n_services - 1 - n_front - n_consumer - n_cron
    n_layers = 2 if n_mid < 20 else 3
    n_db = max(2, n_services // 8)
    n_cache = max(1, n_services // 12)
    n_queue = n_consumer
    n_ext = max(1, min(5, n_services // 15))
    n_legacy = max(1, n_services // 20)

    dbs = [b.dependency("database") for _ in range(n_db)]
    caches = [b.dependency("cache", declared=bool(i % 2)) for i in range(n_cache)]
    exts = [b.dependency("external") for _ in range(n_ext)]
    legacies = [b.dependency("service", declared=False) for _ in range(n_legacy)]

    # consumers first (they call only the data tier), then queues pointing at them
    consumers = [b.service("consumer", 1) for _ in range(n_consumer)]
    b.cap = 8
    for svc in consumers:
        op = b.operations[svc.operations[0]]
        _data_calls(b, op, dbs, caches, group_start=0)
    queues = []
    for i in range(n_queue):
        q = b.dependency("queue")
        q = dataclasses.replace(q, consumer_operation=consumers[i].operations[0])
        b.dependencies[q.index] = q
        queues.append(q)

    # mid tier, bottom layer first; callers prefer services nobody calls yet, so that every
    # service receives traffic
    layer_sizes = _split(n_mid, n_layers)
    lower_ops: list[int] = []
    uncalled: list[int] = []
    for layer, size in enumerate(layer_sizes):
        # deeper layers get smaller call trees so that a whole trace stays bounded
        b.cap = (8, 20, 36)[layer + 3 - n_layers]
        layer_ops: list[int] = []
        layer_services: list[int] = []
        for _ in range(size):
            svc = b.service("mid", int(rng.integers(1, 4)))
            layer_services.append(svc.index)
            for o in svc.operations:
                op = b.operations[o]
                group = 0
                if lower_ops and layer > 0:
                    for _ in range(int(rng.integers(1, 4))):
                        _call_some_service(
                            b,
                            op,
                            lower_ops,
                            uncalled,
                            group=group,
                            probability=float(rng.choice([1.0, 1.0, 0.6])),
                            retries=int(rng.choice([0, 1, 1, 2])),
                            timeout_ms=float(rng.choice([500.0, 1000.0, 2000.0])),
                        )
                        group += int(rng.random() < 0.6)
                group = _data_calls(b, op, dbs, caches, group_start=group + 1)
                if rng.random() < 0.15:
                    q = queues[int(rng.integers(len(queues)))]
                    b.call(op, dependency=q.index, group=group, statement=f"publish {q.name}")
                if rng.random() < 0.12:
                    e = exts[int(rng.integers(len(exts)))]
                    b.call(
                        op,
                        dependency=e.index,
                        group=group + 1,
                        timeout_ms=1500.0,
                        retries=1,
                        statement=f"POST /v1/{b.services[op.service].name.split('-')[0]}",
                    )
                if rng.random() < 0.1:
                    leg = legacies[int(rng.integers(len(legacies)))]
                    b.call(op, dependency=leg.index, group=group + 1, statement="GET /internal")
                layer_ops.append(o)
        lower_ops = lower_ops + layer_ops
        uncalled = uncalled + layer_services

    # frontends call the mid tier; the gateway routes to frontend operations
    front_ops: list[int] = []
    b.cap = MAX_TRACE_NODES
    for _ in range(n_front):
        svc = b.service("frontend", int(rng.integers(2, 5)))
        for o in svc.operations:
            op = b.operations[o]
            group = 0
            for _ in range(int(rng.integers(1, 4))):
                _call_some_service(
                    b, op, lower_ops, uncalled, group=group, retries=1, timeout_ms=3000.0
                )
                group += int(rng.random() < 0.5)
            front_ops.append(o)
    _ensure_reachable_kinds(b, front_ops, exts, queues, [c for c in caches if not c.declared], dbs)
    # whatever is still unreachable hangs off the frontends, so that no service is idle
    k = 0
    while True:
        reached = {b.operations[o].service for o in _reachable_operations(b, front_ops)}
        idle = [
            s.index for s in b.services if s.tier in ("mid", "consumer") and s.index not in reached
        ]
        if not idle:
            break
        idle_svc = b.services[idle[0]]
        op = b.operations[min(front_ops, key=lambda o: b.tree_size[o])]
        if idle_svc.tier == "consumer":
            q = next(d for d in b.dependencies if d.consumer_operation == idle_svc.operations[0])
            b.call(op, dependency=q.index, group=50 + k, statement=f"publish {q.name}", force=True)
        else:
            target = idle_svc.operations[0]
            b.call(
                op,
                operation=target,
                group=50 + k,
                retries=0,
                timeout_ms=3000.0,
                probability=0.5,
                force=True,
            )
        k += 1
    gateway = b.service("gateway", 0, name="edge-gateway")
    entry: list[int] = []
    for fo in front_ops:
        f = b.operations[fo]
        op = b.operation(gateway, f.route, f.method)
        b.call(op, operation=fo, group=0, retries=0, timeout_ms=5000.0, force=True)
        entry.append(op.index)

    cron = b.service("cron", 0, name="nightly-report-cron")
    cron_op = b.operation(cron, "build nightly report", "RUN")
    b.call(cron_op, dependency=dbs[0].index, group=0, statement="SELECT report", timeout_ms=6e5)

    hosts, pods = _place_pods(b, rng)
    weights = rng.zipf(1.6, size=len(entry)).astype(np.float64)
    weights = np.minimum(weights, 20.0)
    weights /= weights.sum()
    return Topology(b.services, b.operations, b.calls, b.dependencies, hosts, pods, entry, weights)


def _call_some_service(
    b: _Builder, op: Operation, candidates: list[int], uncalled: list[int], **call_args: Any
) -> Call | None:
    """Call an operation of a service nobody calls yet if one fits, else any candidate."""
    rng = b.rng
    fresh = [o for o in candidates if b.operations[o].service in uncalled]
    for pool in (fresh, candidates):
        for _ in range(4):
            if not pool:
                break
            target = pool[int(rng.integers(len(pool)))]
            made = b.call(op, operation=target, **call_args)
            if made is not None:
                service = b.operations[target].service
                if service in uncalled:
                    uncalled.remove(service)
                return made
    return None


def _reachable_operations(b: _Builder, roots: list[int]) -> set[int]:
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        o = stack.pop()
        if o in seen:
            continue
        seen.add(o)
        for c_index in b.operations[o].calls:
            c = b.calls[c_index]
            if c.target_operation is not None:
                stack.append(c.target_operation)
            elif c.target_dependency is not None:
                consumer = b.dependencies[c.target_dependency].consumer_operation
                if consumer is not None:
                    stack.append(consumer)
    return seen


def _reachable_dependencies(b: _Builder, roots: list[int]) -> set[int]:
    return {
        c.target_dependency
        for o in _reachable_operations(b, roots)
        for c in (b.calls[i] for i in b.operations[o].calls)
        if c.target_dependency is not None
    }


def _ensure_reachable_kinds(
    b: _Builder,
    front_ops: list[int],
    exts: list[Dependency],
    queues: list[Dependency],
    hidden_caches: list[Dependency],
    dbs: list[Dependency],
) -> None:
    """Every scenario needs live traffic to an external API, a queue and a hidden cache."""
    reachable = _reachable_dependencies(b, front_ops)
    ops = [b.operations[o] for o in front_ops]
    group = 100
    if not reachable & {d.index for d in exts}:
        b.call(
            ops[0],
            dependency=exts[0].index,
            group=group,
            timeout_ms=1500.0,
            retries=1,
            statement="POST /v1/charges",
            force=True,
        )
    if not reachable & {q.index for q in queues}:
        op = ops[1 % len(ops)]
        b.call(
            op,
            dependency=queues[0].index,
            group=group,
            statement=f"publish {queues[0].name}",
            force=True,
        )
    if hidden_caches and not reachable & {c.index for c in hidden_caches}:
        op = ops[2 % len(ops)]
        read = b.call(
            op,
            dependency=hidden_caches[0].index,
            group=group,
            statement="GET",
            retries=0,
            timeout_ms=200.0,
            force=True,
        )
        assert read is not None
        table = dbs[0].name.split("-")[0]
        b.call(
            op,
            dependency=dbs[0].index,
            group=group + 1,
            statement=f"SELECT {table}",
            fallback_of=read.index,
            timeout_ms=800.0,
            force=True,
        )


def _split(total: int, parts: int) -> list[int]:
    base = [total // parts] * parts
    for i in range(total % parts):
        base[i] += 1
    return base


def _data_calls(
    b: _Builder, op: Operation, dbs: list[Dependency], caches: list[Dependency], group_start: int
) -> int:
    rng = b.rng
    group = group_start
    db = dbs[int(rng.integers(len(dbs)))]
    table = db.name.split("-")[0]
    if rng.random() < 0.5:
        cache = caches[int(rng.integers(len(caches)))]
        read = b.call(
            op, dependency=cache.index, group=group, statement="GET", retries=0, timeout_ms=200.0
        )
        group += 1
        if read is not None:
            b.call(
                op,
                dependency=db.index,
                group=group,
                statement=f"SELECT {table}",
                fallback_of=read.index,
                timeout_ms=800.0,
            )
            group += 1
            return group
    if rng.random() < 0.85:
        verb = "SELECT" if op.method == "GET" else ("INSERT", "UPDATE")[int(rng.integers(2))]
        b.call(op, dependency=db.index, group=group, statement=f"{verb} {table}", timeout_ms=800.0)
        group += 1
    return group


def _place_pods(b: _Builder, rng: np.random.Generator) -> tuple[list[Host], list[Pod]]:
    total = sum(s.replicas for s in b.services)
    n_hosts = max(3, int(np.ceil(total / 6)))
    hosts = [Host(i, f"node-{i:03d}", cores=16) for i in range(n_hosts)]
    pods: list[Pod] = []
    for s in b.services:
        chosen = rng.choice(n_hosts, size=min(s.replicas + 1, n_hosts), replace=False)
        for r in range(s.replicas + 1):  # one spare pod for scale-ups
            suffix = "".join(
                "bcdfghjklmnpqrstvwxz2456789"[int(x)] for x in rng.integers(0, 27, size=5)
            )
            pod = Pod(len(pods), f"{s.name}-{suffix}", s.index, int(chosen[r % len(chosen)]))
            pods.append(pod)
            s.pods.append(pod.index)
    return hosts, pods
