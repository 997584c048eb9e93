"""EdgeStore: the dependency graph learned from span tables, read as of any instant.

Spans are hand-made OTLP requests turned into SPANS tables by the ingest code, so these tests
also pin the semantic-convention attribute names the graph relies on (``db.system``,
``db.namespace``, ``messaging.system``, ``messaging.destination.name``, ``peer.service``,
``server.address``, ``k8s.pod.name``, ``host.name``).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import orjson
import pyarrow as pa
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

import schemas
from pipeline.ingest.spans import spans_table
from pipeline.testing import BASE_NS, kv
from pipeline.worldmodel.graph import (
    EdgeKey,
    EdgeStore,
    EntityRef,
    GraphConfig,
    dependency_pairs,
    edge_precision_recall,
    to_dot,
    to_node_link_json,
)

S = 1_000_000_000
SPAN_IDS = itertools.count(1)
T0 = BASE_NS
SERVER, CLIENT, PRODUCER, CONSUMER = 2, 3, 4, 5


def service(name: str) -> EntityRef:
    return EntityRef("service", name)


def calls(source: EntityRef, target: EntityRef) -> EdgeKey:
    return EdgeKey(source, target, "calls")


@dataclass
class Telemetry:
    """Spans grouped by resource; ``table()`` makes a SPANS table of everything added."""

    resources: dict[tuple[tuple[str, str], ...], list[Span]] = field(default_factory=dict)

    @staticmethod
    def new_id() -> bytes:
        return next(SPAN_IDS).to_bytes(8, "big")

    def span(
        self,
        service_name: str,
        kind: int,
        start_s: float,
        trace: bytes,
        parent: bytes = b"",
        duration_ms: float = 5.0,
        error: bool = False,
        pod: str | None = None,
        host: str | None = "node-1",
        **attributes: Any,
    ) -> bytes:
        resource = [("service.name", service_name)]
        if pod:
            resource.append(("k8s.pod.name", pod))
        if host:
            resource.append(("host.name", host))
        span_id = self.new_id()
        start = T0 + int(start_s * S)
        span = Span(
            trace_id=trace,
            span_id=span_id,
            parent_span_id=parent,
            name=f"{service_name}-op",
            kind=kind,  # type: ignore[arg-type]
            start_time_unix_nano=start,
            end_time_unix_nano=start + int(duration_ms * 1e6),
        )
        if error:
            span.status.code = 2  # type: ignore[assignment]
        span.attributes.extend(
            kv(key.replace("_", "."), value) for key, value in attributes.items()
        )
        self.resources.setdefault(tuple(resource), []).append(span)
        return span_id

    def table(self) -> pa.Table:
        request = ExportTraceServiceRequest()
        for resource, spans in self.resources.items():
            resource_spans = request.resource_spans.add()
            resource_spans.resource.attributes.extend(kv(k, v) for k, v in resource)
            resource_spans.scope_spans.add().spans.extend(spans)
        return spans_table([request])


def trace_id(n: int) -> bytes:
    return n.to_bytes(16, "big")


def client_call(
    telemetry: Telemetry,
    caller: str,
    callee: str,
    start_s: float,
    trace: bytes,
    callee_telemetry: Telemetry | None = None,
    callee_host: str | None = None,
    **kwargs: Any,
) -> None:
    """A client span in ``caller`` and its server span in ``callee`` (maybe in another batch);
    ``kwargs`` go to the client span."""
    client = telemetry.span(caller, CLIENT, start_s, trace, server_address=callee, **kwargs)
    (callee_telemetry or telemetry).span(
        callee, SERVER, start_s + 0.001, trace, parent=client, duration_ms=3, host=callee_host
    )


def validated(deltas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for delta in deltas:
        schemas.validate("graph.deltas.schema.json", delta)
    return deltas


def edge_ops(deltas: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """(op, source name, target name, relation) of the edge deltas."""
    return [
        (
            d["op"],
            d["element"]["source"]["name"],
            d["element"]["target"]["name"],
            d["element"]["relation"],
        )
        for d in deltas
        if d["element"]["type"] == "edge"
    ]


def at(seconds: float) -> int:
    return T0 + int(seconds * S)


# --------------------------------------------------------------------------- pairing
@pytest.mark.parametrize("server_first", [False, True], ids=["client-first", "server-first"])
def test_client_and_server_spans_pair_across_two_batches(server_first: bool) -> None:
    store = EdgeStore(GraphConfig(pairing_wait_s=10))
    client_batch, server_batch = Telemetry(), Telemetry()
    client_call(client_batch, "frontend", "checkout", 1.0, trace_id(1), server_batch)
    first, second = (server_batch, client_batch) if server_first else (client_batch, server_batch)

    validated(store.observe_spans(first.table(), at(2)))
    assert calls(service("frontend"), service("checkout")) not in store.edges
    deltas = validated(store.observe_spans(second.table(), at(3)))

    assert ("add", "frontend", "checkout", "calls") in edge_ops(deltas)
    edge = store.edges[calls(service("frontend"), service("checkout"))]
    assert edge.evidence == {"trace_pairing": 1}
    validated(store.advance(at(60)))  # the wait is over: nothing left to resolve
    assert store.pending_spans == 0
    assert not [ref for ref in store.nodes if ref.kind == "external"]


def test_parent_child_across_services_without_span_kinds() -> None:
    telemetry = Telemetry()
    trace = trace_id(2)
    root = telemetry.span("batch-job", 0, 1.0, trace)
    telemetry.span("ledger", 0, 1.1, trace, parent=root)
    telemetry.span("batch-job", 0, 1.2, trace, parent=root)  # same service: no edge
    store = EdgeStore()
    validated(store.observe_spans(telemetry.table(), at(2)))

    edge = store.edges[calls(service("batch-job"), service("ledger"))]
    assert edge.evidence == {"parent_child": 1}
    assert [k for k in store.edges if k.relation == "calls"] == [
        calls(service("batch-job"), service("ledger"))
    ]


# --------------------------------------------------------------------------- virtual nodes
def uninstrumented_calls(telemetry: Telemetry, start_s: float, trace: bytes) -> None:
    root = telemetry.span("orders", SERVER, start_s, trace, duration_ms=50)
    peers: tuple[dict[str, Any], ...] = (
        {"db_system": "postgresql", "db_namespace": "orders-db", "server_address": "pg-1"},
        {
            "db_system": "redis",
            "db_namespace": "0",
            "server_address": "cart-cache.prod.svc.cluster.local",
        },
        {"peer_service": "stripe", "server_address": "api.stripe.com"},
        {"server_address": "maps.googleapis.com"},
    )
    for attributes in peers:
        telemetry.span("orders", CLIENT, start_s + 0.01, trace, parent=root, **attributes)
    telemetry.span(
        "orders",
        PRODUCER,
        start_s + 0.02,
        trace,
        parent=root,
        messaging_system="kafka",
        messaging_destination_name="orders",
    )
    telemetry.span(
        "shipping",
        CONSUMER,
        start_s + 0.5,
        trace,
        messaging_system="kafka",
        messaging_destination_name="orders",
    )


def test_uninstrumented_dependencies_become_virtual_nodes_once_the_wait_is_over() -> None:
    telemetry = Telemetry()
    uninstrumented_calls(telemetry, 1.0, trace_id(3))
    store = EdgeStore(GraphConfig(pairing_wait_s=10))
    deltas = validated(store.observe_spans(telemetry.table(), at(2)))

    queue = EntityRef("queue", "kafka:orders")
    # a broker is never instrumented: messaging spans give queue edges at once
    assert EdgeKey(service("orders"), queue, "publishes_to") in store.edges
    assert EdgeKey(service("shipping"), queue, "consumes_from") in store.edges
    assert calls(service("orders"), service("shipping")) not in store.edges
    assert not [k for k in store.edges if k.relation == "calls"]  # still waiting for servers

    deltas = validated(store.advance(at(30)))
    virtual = {
        EntityRef("database", "postgresql:orders-db"),
        EntityRef("cache", "redis:cart-cache"),
        EntityRef("external", "stripe"),
        EntityRef("external", "maps.googleapis.com"),
    }
    assert {k.target for k in store.edges if k.relation == "calls"} == virtual
    for ref in virtual:
        assert store.edges[calls(service("orders"), ref)].evidence == {"client_span": 1}
        assert store.nodes[ref].attributes == {"virtual": True}
    added = {
        (d["element"]["node"]["kind"], d["element"]["node"]["name"])
        for d in deltas
        if d["op"] == "add" and d["element"]["type"] == "node"
    }
    assert added == set(virtual)
    # the edge is valid from its first span, not from when the wait ended
    assert ("service:orders", "cache:redis:cart-cache") in store.as_of(at(1.5)).edges()


def test_an_instrumented_callee_is_not_a_virtual_node() -> None:
    store = EdgeStore(GraphConfig(pairing_wait_s=10))
    telemetry = Telemetry()
    client_call(telemetry, "orders", "inventory", 1.0, trace_id(4))
    # a database behind an instrumented proxy service: its server span answers the client span
    client = telemetry.span(
        "orders", CLIENT, 1.5, trace_id(5), db_system="postgresql", db_namespace="orders-db"
    )
    telemetry.span("pg-proxy", SERVER, 1.51, trace_id(5), parent=client)
    validated(store.observe_spans(telemetry.table(), at(2)))
    validated(store.advance(at(60)))
    assert not [ref for ref in store.nodes if ref.kind in ("external", "database")]
    assert calls(service("orders"), service("pg-proxy")) in store.edges

    # later a client span to the same address whose server span is lost is credited to the
    # service known to answer it, not to a new virtual node
    later = Telemetry()
    later.span("orders", CLIENT, 70.0, trace_id(6), server_address="inventory")
    validated(store.observe_spans(later.table(), at(71)))
    validated(store.advance(at(120)))
    assert not [ref for ref in store.nodes if ref.kind == "external"]
    assert store.edges[calls(service("orders"), service("inventory"))].evidence == {
        "trace_pairing": 1,
        "client_span": 1,
    }


# --------------------------------------------------------------------------- infrastructure
def test_infrastructure_edges_from_resource_attributes() -> None:
    telemetry = Telemetry()
    telemetry.span("cart", SERVER, 1.0, trace_id(7), pod="cart-7f9c-1", host="node-3")
    telemetry.span("cart", SERVER, 1.0, trace_id(8), pod="cart-7f9c-2", host="node-4")
    telemetry.span("legacy", SERVER, 1.0, trace_id(9), host="vm-12")
    store = EdgeStore()
    validated(store.observe_spans(telemetry.table(), at(2)))

    runs_on = {(k.source, k.target) for k in store.edges if k.relation == "runs_on"}
    assert runs_on == {
        (service("cart"), EntityRef("pod", "cart-7f9c-1")),
        (service("cart"), EntityRef("pod", "cart-7f9c-2")),
        (EntityRef("pod", "cart-7f9c-1"), EntityRef("host", "node-3")),
        (EntityRef("pod", "cart-7f9c-2"), EntityRef("host", "node-4")),
        (service("legacy"), EntityRef("host", "vm-12")),
    }
    assert all(store.edges[k].evidence == {"resource_attributes": 1} for k in store.edges)


# --------------------------------------------------------------------------- time
def test_an_edge_added_mid_run_appears_in_the_call_that_first_sees_it() -> None:
    store = EdgeStore(GraphConfig(interval_s=60))
    new_edge = calls(service("frontend"), service("payment"))
    for minute in range(6):
        telemetry = Telemetry()
        for i in range(5):
            client_call(
                telemetry, "frontend", "checkout", minute * 60 + i, trace_id(100 * minute + i)
            )
        if minute >= 3:
            client_call(telemetry, "frontend", "payment", minute * 60 + 30, trace_id(999 + minute))
            telemetry.span(
                "frontend", CLIENT, minute * 60 + 30, trace_id(999 + minute), db_system="mysql"
            )
        now = at(minute * 60 + 59)
        deltas = validated(store.observe_spans(telemetry.table(), now))
        if minute < 3:
            assert new_edge not in store.edges
        if minute == 3:
            assert ("add", "frontend", "payment", "calls") in edge_ops(deltas)
            # an uninstrumented one too, since its pairing wait (10 s) ended within the interval
            assert ("add", "frontend", "mysql", "calls") in edge_ops(deltas)
            assert ("service:frontend", "service:payment") in store.as_of(now).edges()
            assert ("service:frontend", "service:payment") not in store.as_of(
                at(minute * 60 + 29)
            ).edges()


def test_expiry_by_event_time_and_a_new_validity_interval_on_return() -> None:
    store = EdgeStore(GraphConfig(expiry_s=60, interval_s=30))
    key = calls(service("a"), service("b"))
    first = Telemetry()
    client_call(first, "a", "b", 10.0, trace_id(1))
    validated(store.observe_spans(first.table(), at(11)))
    still = validated(store.advance(at(69)))  # 59 s without evidence: still live
    assert [d["op"] for d in still] == ["update"]  # (the stats interval closed)
    deltas = validated(store.advance(at(70)))
    assert ("expire", "a", "b", "calls") in edge_ops(deltas)
    expire = next(d for d in deltas if d["element"]["type"] == "edge")
    assert expire["time"].startswith("2025-11-20T14:04:10")  # last seen + expiry, not the clock
    assert not store.edges[key].live

    back = Telemetry()
    client_call(back, "a", "b", 200.0, trace_id(2))
    deltas = validated(store.observe_spans(back.table(), at(201)))
    assert ("add", "a", "b", "calls") in edge_ops(deltas)
    assert store.edges[key].intervals == [[at(10), at(70)], [at(200), None]]

    def present(seconds: float) -> bool:
        return ("service:a", "service:b") in store.as_of(at(seconds)).edges()

    assert not present(5)  # before
    assert present(10) and present(69.9)  # inside the first interval
    assert not present(70) and not present(150)  # the gap
    assert present(200) and present(10_000)  # the open interval
    assert store.as_of(at(150)).number_of_nodes() == 0  # nodes expire too


def test_stats_per_interval_from_client_side_durations() -> None:
    store = EdgeStore(GraphConfig(interval_s=60))
    telemetry = Telemetry()
    for i in range(100):
        client = telemetry.span(
            "web", CLIENT, 1 + i * 0.5, trace_id(i), duration_ms=10 if i < 90 else 200
        )
        telemetry.span("api", SERVER, 1 + i * 0.5, trace_id(i), parent=client, error=i % 10 == 0)
    validated(store.observe_spans(telemetry.table(), at(59)))
    deltas = validated(store.advance(at(61)))  # the interval closes: stats are published
    update = next(d for d in deltas if d["op"] == "update")
    stats = update["element"]["stats"]
    assert stats["rate_per_s"] == pytest.approx(100 / 60)
    assert stats["error_ratio"] == pytest.approx(0.1)
    assert stats["latency_p50_ms"] == pytest.approx(10, rel=0.06)
    assert stats["latency_p95_ms"] == pytest.approx(200, rel=0.06)
    assert update["element"]["confidence"] > 0.99


# --------------------------------------------------------------------------- reads
def small_world(store: EdgeStore) -> None:
    telemetry = Telemetry()
    client_call(telemetry, "frontend", "checkout", 1.0, trace_id(1), pod="frontend-1", host="n1")
    client_call(telemetry, "checkout", "payment", 1.1, trace_id(1), pod="checkout-1", host="n2")
    telemetry.span(
        "payment", CLIENT, 1.2, trace_id(1), peer_service="stripe", pod="payment-1", host="n2"
    )
    telemetry.span("admin", SERVER, 1.0, trace_id(2), host="n3")
    validated(store.observe_spans(telemetry.table(), at(2)))
    validated(store.advance(at(30)))


def test_upstream_follows_dependencies_and_the_hosts_they_run_on() -> None:
    store = EdgeStore(GraphConfig(pairing_wait_s=5))
    small_world(store)
    upstream = store.upstream(service("checkout"), hops=2, t_unix_nano=at(10))
    assert upstream[service("checkout")] == 0
    assert upstream[service("payment")] == 1
    assert upstream[EntityRef("external", "stripe")] == 2
    assert upstream[EntityRef("pod", "checkout-1")] == 0
    assert upstream[EntityRef("host", "n2")] == 0
    assert service("frontend") not in upstream  # a caller is downstream, not a cause
    assert service("admin") not in upstream
    assert EntityRef("external", "stripe") not in store.upstream(service("checkout"), 1, at(10))
    assert store.upstream(service("nobody"), 3, at(10)) == {}


def test_neighbourhood_and_exports() -> None:
    store = EdgeStore(GraphConfig(pairing_wait_s=5))
    small_world(store)
    around = store.neighbourhood(service("checkout"), hops=1, t_unix_nano=at(10))
    assert set(around.nodes) == {
        "service:checkout",
        "service:frontend",
        "service:payment",
        "pod:checkout-1",
    }
    graph = store.as_of(at(10))
    document = orjson.loads(to_node_link_json(graph))
    restored = nx.node_link_graph(document, edges="links", multigraph=True, directed=True)
    assert set(restored.edges(keys=True)) == set(graph.edges(keys=True))
    dot = to_dot(graph)
    assert dot.startswith('digraph "worldline" {')
    assert '"service:payment" -> "external:stripe" [label="calls' in dot
    assert to_dot(graph) == dot and to_node_link_json(graph) == to_node_link_json(graph)


# --------------------------------------------------------------------------- bounds
def test_caps_refuse_and_count_and_expired_history_makes_room() -> None:
    store = EdgeStore(GraphConfig(max_edges=3, max_nodes=3, expiry_s=60, max_pending_spans=2))
    telemetry = Telemetry()
    for i, callee in enumerate(("b", "c", "d", "e")):
        client_call(telemetry, "a", callee, 1.0 + i, trace_id(i), host=None)
    validated(store.observe_spans(telemetry.table(), at(5)))
    assert len(store.nodes) == 3 and len(store.edges) == 2
    assert store.dropped["node_cap"] == 4  # d and e, refused as span services and as callees
    assert store.dropped["edge_without_node"] == 2

    waiting = Telemetry()
    for i in range(5):
        waiting.span("a", CLIENT, 6.0 + i, trace_id(50 + i), server_address="x", host=None)
    validated(store.observe_spans(waiting.table(), at(7)))
    assert store.dropped["pending_parents_cap"] == 3 and store.pending_spans == 2

    validated(store.advance(at(500)))  # everything expires but stays as history
    assert store.dropped["node_cap"] == 4 + 1  # "x", named by the two waiting spans
    assert len(store.edges) == 2 and not any(e.live for e in store.edges.values())
    later = Telemetry()
    client_call(later, "f", "g", 600.0, trace_id(77), host=None)
    validated(store.observe_spans(later.table(), at(601)))
    assert calls(service("f"), service("g")) in store.edges  # oldest history was evicted
    assert len(store.nodes) <= 3 and len(store.edges) <= 3


def test_validity_intervals_per_edge_are_capped() -> None:
    store = EdgeStore(GraphConfig(expiry_s=10, max_intervals_per_element=3))
    for i in range(6):
        telemetry = Telemetry()
        client_call(telemetry, "a", "b", i * 100.0, trace_id(i))
        validated(store.observe_spans(telemetry.table(), at(i * 100 + 1)))
        validated(store.advance(at(i * 100 + 50)))
    assert len(store.edges[calls(service("a"), service("b"))].intervals) == 3
    # the edge, a -> node-1, and the nodes a, b and node-1 each forgot 3 intervals
    assert store.dropped["validity_interval_cap"] == 3 * (len(store.edges) + len(store.nodes))


# --------------------------------------------------------------------------- state
def run(store: EdgeStore, batches: list[pa.Table], start: int = 0) -> list[dict[str, Any]]:
    deltas: list[dict[str, Any]] = []
    for i, table in enumerate(batches, start=start):
        deltas += store.observe_spans(table, at(20 * i + 6))  # just after the batch's spans
    return deltas


def topology_batches(
    seed: int, n_traces: int, n_batches: int
) -> tuple[list[pa.Table], set[tuple[str, str]]]:
    """A known topology; each trace's spans scattered over random batches (so most client and
    server spans arrive apart). Returns the batches and the true (caller, callee) pairs."""
    rng = random.Random(seed)
    batches = [Telemetry() for _ in range(n_batches)]
    truth = {
        ("gateway", "orders"),
        ("gateway", "cart"),
        ("orders", "payment"),
        ("orders", "orders-db"),
        ("orders", "orders"),  # queue: kafka:orders, bare name
        ("cart", "cart-cache"),
        ("payment", "stripe"),
        ("payment", "ledger"),  # uninstrumented internal service, seen through peer.service
    }
    for n in range(n_traces):
        trace = trace_id(10_000 + n)
        batch = max(0, min(n_batches - 1, n * n_batches // n_traces + rng.choice((-1, 0, 0))))

        def pick(batch: int = batch) -> Telemetry:  # a third of the spans arrive a batch late
            return batches[min(n_batches - 1, batch + rng.choice((0, 0, 1)))]

        t = 20.0 * batch + rng.random() * 5
        root = pick().span("gateway", SERVER, t, trace, pod="gw-1", host="n1")
        if rng.random() < 0.5:
            client = pick().span(
                "gateway",
                CLIENT,
                t,
                trace,
                parent=root,
                server_address="orders",
                pod="gw-1",
                host="n1",
            )
            server = pick().span(
                "orders", SERVER, t, trace, parent=client, pod="orders-1", host="n2"
            )
            pick().span(
                "orders",
                CLIENT,
                t,
                trace,
                parent=server,
                db_system="mysql",
                db_namespace="orders-db",
                pod="orders-1",
                host="n2",
            )
            pick().span(
                "orders",
                PRODUCER,
                t,
                trace,
                parent=server,
                messaging_system="kafka",
                messaging_destination_name="orders",
                pod="orders-1",
                host="n2",
            )
            client = pick().span(
                "orders",
                CLIENT,
                t,
                trace,
                parent=server,
                server_address="payment",
                pod="orders-1",
                host="n2",
            )
            server = pick().span(
                "payment", SERVER, t, trace, parent=client, pod="payment-1", host="n2"
            )
            pick().span(
                "payment",
                CLIENT,
                t,
                trace,
                parent=server,
                peer_service="stripe",
                pod="payment-1",
                host="n2",
            )
            pick().span(
                "payment",
                CLIENT,
                t,
                trace,
                parent=server,
                peer_service="ledger",
                pod="payment-1",
                host="n2",
            )
        else:
            client = pick().span(
                "gateway",
                CLIENT,
                t,
                trace,
                parent=root,
                server_address="cart",
                pod="gw-1",
                host="n1",
            )
            server = pick().span("cart", SERVER, t, trace, parent=client, pod="cart-1", host="n3")
            pick().span(
                "cart",
                CLIENT,
                t,
                trace,
                parent=server,
                db_system="redis",
                server_address="cart-cache.shop.svc",
                pod="cart-1",
                host="n3",
            )
    return [b.table() for b in batches], truth


def test_learned_topology_matches_the_truth() -> None:
    batches, truth = topology_batches(seed=5, n_traces=200, n_batches=6)
    store = EdgeStore(GraphConfig(pairing_wait_s=15))
    validated(run(store, batches))
    validated(store.advance(at(20 * len(batches) + 60)))
    learned = dependency_pairs(store.as_of(at(20 * len(batches))), bare_names=True)
    precision, recall = edge_precision_recall(learned, truth)
    assert (precision, recall) == (1.0, 1.0), learned ^ truth
    assert store.counts["children_never_paired"] == 0
    assert edge_precision_recall(set(), truth) == (1.0, 0.0)
    assert edge_precision_recall({("a", "b"), ("gateway", "cart")}, truth) == (0.5, 1 / 8)


def test_snapshot_restore_round_trip_and_determinism() -> None:
    batches, _ = topology_batches(seed=9, n_traces=80, n_batches=4)
    store = EdgeStore(GraphConfig(pairing_wait_s=15))
    run(store, batches[:2])
    data = store.snapshot()
    restored = EdgeStore.restore(data)
    assert restored.snapshot() == data
    assert store.pending_spans > 0  # the buffers travel with the snapshot

    # a restored store continues exactly like the original one
    assert run(restored, batches[2:], start=2) == run(store, batches[2:], start=2)
    assert restored.snapshot() == store.snapshot()
    assert to_node_link_json(restored.as_of(at(50))) == to_node_link_json(store.as_of(at(50)))

    # same input, same bytes
    again = EdgeStore(GraphConfig(pairing_wait_s=15))
    run(again, batches)
    assert again.snapshot() == store.snapshot()
    with pytest.raises(ValueError, match="snapshot version"):
        EdgeStore.restore(orjson.dumps({"version": 99}))


def test_every_delta_follows_the_topic_schema() -> None:
    batches, _ = topology_batches(seed=3, n_traces=60, n_batches=3)
    store = EdgeStore(GraphConfig(pairing_wait_s=15, expiry_s=30, interval_s=20))
    deltas = run(store, batches) + store.advance(at(500))
    validated(deltas)
    assert {d["op"] for d in deltas} == {"add", "update", "expire"}
    assert {d["element"]["type"] for d in deltas} == {"node", "edge"}


def test_empty_input_is_harmless() -> None:
    store = EdgeStore()
    assert store.advance(at(1)) == []
    assert store.observe_spans(Telemetry().table(), at(2)) == []
    assert store.as_of(at(2)).number_of_nodes() == 0
