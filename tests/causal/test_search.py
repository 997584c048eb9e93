"""The causal search on small hand-built world models whose answer is known."""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

import schemas
from jobs.causal.alerts import Incident, Symptom
from jobs.causal.record import build_record
from jobs.causal.search import OFF_GRAPH, CausalSearch, SearchConfig, evaluate
from jobs.causal.search.weights import unseen_by_callers
from pipeline.ingest.spans import spans_table
from pipeline.testing import kv
from pipeline.worldmodel.model import WorldModel

T0 = 1_763_599_980.0  # unix s, on a minute boundary
MIN = 60.0
FAULT = 90  # interval the fault starts at
END = 100


def _chain_spans(t_s: float) -> ExportTraceServiceRequest:
    """frontend -> checkout -> postgresql (uninstrumented), checkout on node-1, frontend on node-2."""
    rng = random.Random(int(t_s))
    req = ExportTraceServiceRequest()
    t = int(t_s * 1e9)

    def scope(service: str, host: str):  # type: ignore[no-untyped-def]
        rs = req.resource_spans.add()
        rs.resource.attributes.extend(
            [kv("service.name", service), kv("host.name", host), kv("k8s.pod.name", f"{service}-0")]
        )
        return rs.scope_spans.add()

    fe, co = scope("frontend", "node-2"), scope("checkout", "node-1")
    for _ in range(5):
        trace = rng.randbytes(16)
        root, client, server, db = (rng.randbytes(8) for _ in range(4))
        fe.spans.add(
            trace_id=trace,
            span_id=root,
            name="GET /",
            kind=2,
            start_time_unix_nano=t,
            end_time_unix_nano=t + 9_000_000,
        )
        fe.spans.add(
            trace_id=trace,
            span_id=client,
            parent_span_id=root,
            name="POST /buy",
            kind=3,
            start_time_unix_nano=t + 1,
            end_time_unix_nano=t + 8_000_000,
        )
        co.spans.add(
            trace_id=trace,
            span_id=server,
            parent_span_id=client,
            name="POST /buy",
            kind=2,
            start_time_unix_nano=t + 2,
            end_time_unix_nano=t + 7_000_000,
        )
        s = co.spans.add(
            trace_id=trace,
            span_id=db,
            parent_span_id=server,
            name="SELECT",
            kind=3,
            start_time_unix_nano=t + 3,
            end_time_unix_nano=t + 5_000_000,
        )
        s.attributes.extend([kv("db.system", "postgresql"), kv("db.name", "orders")])
    return req


DB = "database:postgresql:orders"
MAIL = "operation:hipstershop.EmailService/SendOrderConfirmation"
SERIES = {
    ("service:frontend", "span.latency_p95_ms"): 10.0,
    ("service:frontend", "span.error_ratio"): 0.01,
    ("service:checkout", "span.latency_p95_ms"): 8.0,
    ("service:checkout", "process.cpu.utilization"): 0.3,
    ("service:checkout", f"edge.latency_p95_ms{{peer={DB}}}"): 5.0,
    ("service:frontend", "edge.latency_p95_ms{peer=service:checkout}"): 8.5,
    ("host:node-1", "system.cpu.utilization"): 0.4,
}


def _model(
    faults: dict[tuple[str, str], tuple[int, float]], changes: list[dict] | None = None
) -> WorldModel:
    """Steady series with noise; ``faults`` multiply a series by a factor from an interval on."""
    model = WorldModel()
    rng = random.Random(7)
    for i in range(END):
        t = T0 + i * MIN
        for key, level in SERIES.items():
            value = level * (1 + rng.gauss(0, 0.03))
            if key in faults and i >= faults[key][0]:
                value *= faults[key][1]
            model.baselines.update(key[0], key[1], t, value)
    model.baselines.advance(T0 + END * MIN)
    model.closed_through = int((T0 + END * MIN) * 1e9)
    for i in range(0, END, 10):
        model.graph.observe_spans(
            spans_table([_chain_spans(T0 + i * MIN)]), int((T0 + i * MIN + 30) * 1e9)
        )
    for change in changes or []:
        model.add_change(change)
    return model


def _search(
    model: WorldModel, symptom: str = "service:frontend", signal: str = "span.latency_p95_ms"
):  # type: ignore[no-untyped-def]
    return CausalSearch(model).run([(symptom, signal)], T0 + END * MIN)


def test_a_slow_uninstrumented_database_is_found_upstream() -> None:
    model = _model(
        {
            ("service:checkout", f"edge.latency_p95_ms{{peer={DB}}}"): (FAULT, 6.0),
            ("service:checkout", "span.latency_p95_ms"): (FAULT, 4.0),
            ("service:frontend", "edge.latency_p95_ms{peer=service:checkout}"): (FAULT, 4.0),
            ("service:frontend", "span.latency_p95_ms"): (FAULT + 1, 3.0),
        }
    )
    result = _search(model)
    assert not result.abstained
    top = result.causes[0]
    assert top.entity == DB and top.fault_class == "latency"
    assert top.path == [DB, "service:checkout", "service:frontend"]
    assert top.probability > 0.5
    assert top.onset_s == T0 + FAULT * MIN
    # the database accounts for checkout's deviation, and through it for the frontend's
    assert "accounts for the deviation of service:checkout, service:frontend" in top.explanation
    # checkout's own latency is DB's: ranked, below it, by the odds of DB's deviation being
    # a coincidence
    checkout = next(c for c in result.causes if c.entity == "service:checkout")
    assert f"what accounts for it: explained by {DB}" in checkout.explanation
    assert checkout.probability < 0.01 * top.probability
    reasons = {r.entity: r.reason for r in result.ruled_out}
    assert "no deviation" in reasons["host:node-1"]


def test_cpu_saturation_of_a_service_beats_its_healthy_database() -> None:
    model = _model(
        {
            ("service:checkout", "process.cpu.utilization"): (FAULT, 3.0),
            ("service:checkout", "span.latency_p95_ms"): (FAULT, 4.0),
            ("service:frontend", "edge.latency_p95_ms{peer=service:checkout}"): (FAULT, 4.0),
            ("service:frontend", "span.latency_p95_ms"): (FAULT + 1, 3.0),
        }
    )
    top = _search(model).causes[0]
    assert top.entity == "service:checkout"
    assert {e.get("signal") for e in top.evidence} >= {
        "process.cpu.utilization",
        "span.latency_p95_ms",
    }


def test_a_coinciding_deploy_elsewhere_ranks_below_what_accounts_for_its_service() -> None:
    deploy = {
        "schema_version": 1,
        "change_id": "deploy-frontend-9",
        "kind": "deploy",
        "entity": {"kind": "service", "name": "frontend"},
        "time_unix_nano": int((T0 + (FAULT - 1) * MIN) * 1e9),
    }
    model = _model(
        {
            ("service:checkout", f"edge.latency_p95_ms{{peer={DB}}}"): (FAULT, 6.0),
            ("service:checkout", "span.latency_p95_ms"): (FAULT, 4.0),
            ("service:frontend", "edge.latency_p95_ms{peer=service:checkout}"): (FAULT, 4.0),
            ("service:frontend", "span.latency_p95_ms"): (FAULT, 3.0),
        },
        changes=[deploy],
    )
    result = _search(model)
    # frontend deviated after its deploy, but checkout accounts for its latency, and the
    # database for checkout's: the deploy is the least likely of the three
    assert [c.entity for c in result.causes] == [DB, "service:checkout", "service:frontend"]
    frontend = result.causes[2]
    assert frontend.fault_class == "deploy"
    assert "accounts for it: explained by service:checkout" in frontend.explanation
    assert frontend.logit < result.causes[1].logit < result.causes[0].logit
    assert frontend.probability < 1e-6


def test_normal_data_gives_no_cause() -> None:
    result = _search(_model({}))
    assert result.abstained and result.causes == []
    assert "deviates" in (result.abstain_reason or "")


def test_a_deviation_that_starts_after_the_symptom_is_not_a_cause() -> None:
    model = _model(
        {
            ("service:frontend", "span.latency_p95_ms"): (FAULT, 3.0),
            ("host:node-1", "system.cpu.utilization"): (FAULT + 5, 2.0),
        }
    )
    result = _search(model)
    reasons = {r.entity: r.reason for r in result.ruled_out}
    assert "after the symptom" in reasons["host:node-1"]
    assert result.causes[0].entity == "service:frontend"


def test_record_validates_and_is_deterministic() -> None:
    model = _model(
        {
            ("service:checkout", f"edge.latency_p95_ms{{peer={DB}}}"): (FAULT, 6.0),
            ("service:frontend", "span.latency_p95_ms"): (FAULT, 3.0),
        }
    )
    incident = Incident("inc-1", T0)
    incident.symptoms["fp"] = Symptom(
        "service:frontend", "span.latency_p95_ms", "label service=frontend"
    )
    from jobs.causal.alerts import Alert

    incident.alerts["fp"] = Alert(
        "fp", "firing", "Latency", {"alertname": "Latency"}, {}, T0 + END * MIN, None
    )
    a = build_record(incident, _search(model), T0 + END * MIN)
    b = build_record(incident, _search(model), T0 + END * MIN)
    schemas.validate("causes.ranked.schema.json", a)
    a["stats"].pop("search_ms"), b["stats"].pop("search_ms")
    a["stats"].pop("score_ms"), b["stats"].pop("score_ms")
    assert a == b
    assert a["causes"][0]["entity"] == {"kind": "database", "name": "postgresql:orders"}


def test_evaluation_is_vectorised_over_a_large_batch() -> None:
    import numpy as np

    from jobs.causal.search import HypothesisBatch

    rng = np.random.default_rng(1)
    n, w = 10_000, 30
    z = rng.normal(size=(n, w))
    z[::100, 20:] += 8.0  # one hypothesis in a hundred deviates from interval 20 on
    batch = HypothesisBatch(
        entity=np.arange(n) // 10,
        series=[("e", "s")] * n,
        modality=np.zeros(n, dtype=np.int8),
        up_is_bad=np.ones(n, dtype=bool),
        z=z,
        t0_s=0.0,
        interval_s=60.0,
        entities=[str(i) for i in range(n // 10)],
    )
    ev = evaluate(batch, SearchConfig())
    hits = ev.strength > 3
    assert hits[::100].all() and hits.sum() < 2 * (n // 100)
    assert np.allclose(ev.onset_s[::100], 20 * 60.0)


def test_a_sparse_series_deviation_runs_over_the_gaps_between_its_values() -> None:
    import numpy as np

    from jobs.causal.search import HypothesisBatch

    # one value every 5 intervals (5-minute data in 60 s intervals): calm, then deviating
    # from column 12 on, hitting its highest score only at column 22; a second series is
    # dense with a gap of missing values inside its deviation
    w = 30
    z = np.full((2, w), np.nan)
    z[0, 2:30:5] = [0.2, -0.4, 9.0, 20.0, 31.0, 31.0]
    z[1, :] = 0.1
    z[1, 10:] = 12.0
    z[1, 14:18] = np.nan
    batch = HypothesisBatch(
        entity=np.array([0, 1]),
        series=[("a", "latency.average"), ("b", "latency.average")],
        modality=np.zeros(2, dtype=np.int8),
        up_is_bad=np.ones(2, dtype=bool),
        z=z,
        t0_s=0.0,
        interval_s=60.0,
        entities=["a", "b"],
    )
    ev = evaluate(batch, SearchConfig())
    # the run began at the first deviating value, not at the peak after a gap
    assert ev.onset_s.tolist() == [12 * 60.0, 10 * 60.0]
    assert ev.end_s is not None and ev.end_s.tolist() == [27 * 60.0, 29 * 60.0]
    assert ev.persistence.tolist() == [1.0, 1.0]


def _given_model(
    series: dict[tuple[str, str], float],
    faults: dict[tuple[str, str], float | Callable[[int], float]],
    edges: list[tuple[str, str]],
    seed: int,
    silent: frozenset[tuple[str, str]] = frozenset(),
) -> WorldModel:
    """Steady ``series`` with 3 % noise, each multiplied by its ``faults`` factor from
    ``FAULT`` on (or by the factor a callable gives for each interval), and ``edges``
    (caller, callee) given as the graph; ``silent`` series report nothing from ``FAULT`` on."""
    from pipeline.worldmodel.graph import EntityRef

    model = WorldModel()
    rng = random.Random(seed)
    for i in range(END):
        t = T0 + i * MIN
        for key, level in series.items():
            if key in silent and i >= FAULT:
                continue
            fault = faults.get(key, 1.0)
            factor = fault(i) if callable(fault) else (fault if i >= FAULT else 1.0)
            value = level * (1 + rng.gauss(0, 0.03)) * factor
            model.baselines.update(key[0], key[1], t, value)
    model.baselines.advance(T0 + END * MIN)
    model.closed_through = int((T0 + END * MIN) * 1e9)
    for caller, callee in edges:
        model.graph.add_given_edge(
            EntityRef.from_key(caller), EntityRef.from_key(callee), "calls", int(T0 * 1e9)
        )
    return model


BILLING_VIEW = ("service:billing", f"edge.latency_p95_ms{{peer={DB}}}")


def _shared_database_model(
    billing: dict[tuple[str, str], float | Callable[[int], float]],
    silent: frozenset[tuple[str, str]] = frozenset(),
    calm: tuple[str, ...] = (),
) -> WorldModel:
    """frontend -> checkout and billing, both -> the (uninstrumented) database; checkout's view
    of it slows 5x, and the frontend and checkout with it; ``billing``: how billing's series
    move (its view of the database, how much it calls it); ``silent``: series of billing's that
    stop reporting when the fault begins; ``calm``: further callers of the database, whose
    views of it stay steady."""
    series = {
        ("service:frontend", "span.latency_p95_ms"): 10.0,
        ("service:checkout", "span.latency_p95_ms"): 8.0,
        ("service:billing", "span.latency_p95_ms"): 6.0,
        ("service:checkout", f"edge.latency_p95_ms{{peer={DB}}}"): 5.0,
        BILLING_VIEW: 4.0,
        ("service:billing", f"edge.rate_per_s{{peer={DB}}}"): 20.0,
        **{(c, f"edge.latency_p95_ms{{peer={DB}}}"): 4.0 for c in calm},
    }
    faults: dict[tuple[str, str], float | Callable[[int], float]] = {
        ("service:frontend", "span.latency_p95_ms"): 3.0,
        ("service:checkout", "span.latency_p95_ms"): 4.0,
        ("service:checkout", f"edge.latency_p95_ms{{peer={DB}}}"): 5.0,
        **billing,
    }
    edges = [
        ("service:frontend", "service:checkout"),
        ("service:frontend", "service:billing"),
        ("service:checkout", DB),
        ("service:billing", DB),
        *(edge for c in calm for edge in (("service:frontend", c), (c, DB))),
    ]
    return _given_model(series, faults, edges, seed=11, silent=silent)


def test_a_fault_on_one_callers_side_is_that_callers_even_if_other_callers_traffic_moves() -> None:
    # checkout and billing both call the (uninstrumented) database; checkout's own view of it
    # slows 5x (its connection pool), billing's stays healthy but it sends half the queries
    # (its traffic moved, which says nothing about the database's health): the fault is on
    # checkout's side of the call, not the database's
    model = _shared_database_model({("service:billing", f"edge.rate_per_s{{peer={DB}}}"): 0.5})
    result = _search(model)
    assert result.causes and result.causes[0].entity == "service:checkout"
    assert any(r.entity == DB and "side of the call" in r.reason for r in result.ruled_out)


@pytest.mark.parametrize("hops", [1, 6])
def test_candidates_follow_the_graph(hops: int) -> None:
    model = _model({})
    search = CausalSearch(model, SearchConfig(hops=hops))
    candidates, _ = search.candidates(["service:frontend"], T0 + END * MIN)
    assert "service:checkout" in candidates
    # beyond the hops the database is still a candidate, as an entity the graph does not
    # place there (its callers' series describe it)
    assert candidates[DB] == (2 if hops > 1 else OFF_GRAPH)


def test_the_graph_is_a_prior_not_a_filter() -> None:
    # a service that only sends metrics (no trace places it in the graph) is still a
    # candidate: its CPU saturating before the symptom ranks it, behind the symptom's own
    # deviation only (the graph places checkout, healthy, upstream of frontend)
    series = ("service:ledger", "process.cpu.utilization")
    model = _model({("service:frontend", "span.latency_p95_ms"): (FAULT + 1, 3.0)})
    rng = random.Random(3)
    for i in range(END):
        value = 0.2 * (1 + rng.gauss(0, 0.03)) * (4.0 if i >= FAULT else 1.0)
        model.baselines.update(*series, T0 + i * MIN, value)
    model.baselines.advance(T0 + END * MIN)
    candidates, graph = CausalSearch(model).candidates(["service:frontend"], T0 + END * MIN)
    assert "service:ledger" not in graph and candidates["service:ledger"] == OFF_GRAPH
    assert candidates["service:checkout"] > 0
    result = _search(model)
    ranked = {c.entity: c for c in result.causes[:2]}
    assert "service:ledger" in ranked, result.causes
    assert ranked["service:ledger"].signal == "process.cpu.utilization"


def test_without_a_graph_a_dependency_seen_only_by_its_callers_is_a_candidate() -> None:
    # metrics only: checkout's client metric of its database is the only series about the
    # database; the database slows down, checkout's requests with it
    db_client = "db.client.operation.duration{db.namespace=orders,db.system=postgresql}.p95"
    levels = {
        ("service:checkout", db_client): 0.005,
        ("service:checkout", "http.server.request.duration{http.route=/buy}.p95"): 0.02,
        ("service:checkout", "process.cpu.utilization"): 0.3,
        ("service:cart", "http.server.request.duration{http.route=/cart}.p95"): 0.01,
    }
    faults = {
        ("service:checkout", db_client): 6.0,
        ("service:checkout", "http.server.request.duration{http.route=/buy}.p95"): 3.0,
    }
    model = WorldModel()
    rng = random.Random(11)
    for i in range(END):
        for key, level in levels.items():
            value = level * (1 + rng.gauss(0, 0.03))
            if key in faults and i >= FAULT:
                value *= faults[key]
            model.baselines.update(key[0], key[1], T0 + i * MIN, value)
    model.baselines.advance(T0 + END * MIN)
    model.closed_through = int((T0 + END * MIN) * 1e9)
    symptom = ("service:checkout", "http.server.request.duration{http.route=/buy}.p95")
    candidates, graph = CausalSearch(model).candidates([symptom[0]], T0 + END * MIN)
    assert len(graph) == 0 and candidates[DB] == -1
    result = CausalSearch(model).run([symptom], T0 + END * MIN)
    assert not result.abstained and result.causes[0].entity == DB
    assert result.causes[0].evidence[0]["signal"] == db_client


def _rpc_model(
    faults: dict[tuple[str, str], float | Callable[[int], float]],
    email: bool = False,
    levels: dict[tuple[str, str], float] | None = None,
    edges: list[tuple[str, str]] | None = None,
) -> WorldModel:
    """frontend -> checkout -> payment and shipping (gRPC), and email with ``email``, given as
    the graph with ``edges``; ``levels``: other normal levels for some series. checkout's client spans name no peer attribute, so its views of its dependencies
    are named by the method they call (``edge.*{peer=operation:hipstershop.PaymentService/Charge}``);
    payment and shipping answer them in server spans named by their instrumentation
    (``grpc.hipstershop.PaymentService/Charge``, ``/hipstershop.ShippingService/GetQuote``)."""
    pay = "operation:hipstershop.PaymentService/Charge"
    ship = "operation:hipstershop.ShippingService/GetQuote"
    series = {
        ("service:frontend", "span.latency_p95_ms"): 10.0,
        ("service:checkout", "span.latency_p95_ms"): 8.0,
        ("service:checkout", "process.cpu.utilization"): 0.3,
        ("service:checkout", f"edge.latency_p95_ms{{peer={pay}}}"): 3.0,
        ("service:checkout", f"edge.latency_p95_ms{{peer={ship}}}"): 2.0,
        ("operation:payment grpc.hipstershop.PaymentService/Charge", "span.latency_p95_ms"): 2.5,
        ("service:payment", "span.latency_p95_ms"): 2.5,
        ("operation:shipping /hipstershop.ShippingService/GetQuote", "span.latency_p95_ms"): 1.5,
        ("service:shipping", "span.latency_p95_ms"): 1.5,
    }
    graph = [
        ("service:frontend", "service:checkout"),
        ("service:checkout", "service:payment"),
        ("service:checkout", "service:shipping"),
    ]
    if email:
        series[("service:checkout", f"edge.latency_p95_ms{{peer={MAIL}}}")] = 2.0
        series[(f"operation:email /{MAIL.removeprefix('operation:')}", "span.latency_p95_ms")] = 1.5
        series[("service:email", "span.latency_p95_ms")] = 1.5
        graph.append(("service:checkout", "service:email"))
    series.update(levels or {})
    return _given_model(series, faults, [*graph, *(edges or [])], seed=5)


PAY = "operation:hipstershop.PaymentService/Charge"
SLOW_CHARGE: dict[tuple[str, str], float | Callable[[int], float]] = {
    ("service:frontend", "span.latency_p95_ms"): 2.0,
    ("service:checkout", "span.latency_p95_ms"): 2.5,
    ("service:checkout", f"edge.latency_p95_ms{{peer={PAY}}}"): 5.0,
}
"""checkout's calls to Charge 5x slower, and checkout and the frontend with them."""


def test_a_call_named_by_its_rpc_method_is_evidence_about_the_service_serving_it() -> None:
    # payment's network is slow: checkout sees its calls to Charge take 5x longer while
    # payment's own server spans (which do not include the network) stay normal. The calls are
    # named by their method only; the one service serving that method is payment
    model = _rpc_model(SLOW_CHARGE)
    result = _search(model)
    assert result.causes and result.causes[0].entity == "service:payment"
    assert result.causes[0].signal.startswith("edge.latency")
    assert not any(c.entity.startswith("operation:") for c in result.causes)


def test_a_method_several_services_serve_is_the_one_its_caller_calls() -> None:
    # a second payment service (another version, side by side) serves the same Charge method
    # for another caller; checkout calls only the first. checkout's slow calls to Charge are
    # evidence about the payment service it calls, not about a method of no service
    model = _rpc_model(
        SLOW_CHARGE,
        levels={
            (
                "operation:payment-v2 grpc.hipstershop.PaymentService/Charge",
                "span.latency_p95_ms",
            ): (2.5),
            ("service:payment-v2", "span.latency_p95_ms"): 2.5,
            ("service:batch", f"edge.latency_p95_ms{{peer={PAY}}}"): 3.0,
        },
        edges=[("service:batch", "service:payment-v2")],
    )
    result = _search(model)
    assert result.causes and result.causes[0].entity == "service:payment"
    assert result.causes[0].signal == f"edge.latency_p95_ms{{peer={PAY}}}"
    assert not any(c.entity.startswith("operation:") for c in result.causes)


def test_a_peer_traces_showed_a_service_answering_is_that_service() -> None:
    # checkout's client spans name payment by the peer.service it was given ("payments-api"),
    # not by payment's own service.name; traces that paired those calls with payment's
    # server spans taught the graph who answers that name
    peer = "external:payments-api"
    series = {
        ("service:frontend", "span.latency_p95_ms"): 10.0,
        ("service:checkout", "span.latency_p95_ms"): 8.0,
        ("service:checkout", f"edge.latency_p95_ms{{peer={peer}}}"): 3.0,
        ("service:payment", "span.latency_p95_ms"): 2.5,
    }
    faults = {
        ("service:frontend", "span.latency_p95_ms"): 2.0,
        ("service:checkout", "span.latency_p95_ms"): 2.5,
        ("service:checkout", f"edge.latency_p95_ms{{peer={peer}}}"): 5.0,
    }
    edges = [("service:frontend", "service:checkout"), ("service:checkout", "service:payment")]
    model = _given_model(series, faults, edges, seed=5)
    unpaired = _search(model)
    # without it the calls are evidence about a peer of no service, and payment deviates in
    # nothing of its own
    assert peer in [c.entity for c in unpaired.causes]
    assert "service:payment" in [r.entity for r in unpaired.ruled_out]
    model.graph.peer_services[peer] = "payment"
    result = _search(model)
    assert result.causes and result.causes[0].entity == "service:payment"
    assert result.causes[0].signal == f"edge.latency_p95_ms{{peer={peer}}}"
    assert peer not in [c.entity for c in result.causes]


def test_an_http_route_answering_a_callers_calls_is_evidence_about_its_service() -> None:
    # checkout's client spans name no peer ("GET"): the world model names its edge by the
    # operation that answered them (``default_callee``), an HTTP route of payment, not an
    # RPC method. That route is evidence about payment, not a candidate of its own
    route = "operation:payment GET /api/charge"
    series = {
        ("service:frontend", "span.latency_p95_ms"): 10.0,
        ("service:checkout", "span.latency_p95_ms"): 8.0,
        ("service:checkout", f"edge.latency_p95_ms{{peer={route}}}"): 3.0,
        ("service:payment", "span.rate_per_s"): 5.0,
    }
    faults = {
        ("service:frontend", "span.latency_p95_ms"): 2.0,
        ("service:checkout", "span.latency_p95_ms"): 2.5,
        ("service:checkout", f"edge.latency_p95_ms{{peer={route}}}"): 5.0,
    }
    edges = [("service:frontend", "service:checkout"), ("service:checkout", "service:payment")]
    result = _search(_given_model(series, faults, edges, seed=5))
    assert result.causes and result.causes[0].entity == "service:payment"
    assert result.causes[0].signal == f"edge.latency_p95_ms{{peer={route}}}"
    assert not any(c.entity.startswith("operation:") for c in result.causes)


def test_a_call_named_by_its_verb_that_no_span_answered_is_its_callers_view() -> None:
    # checkout's "GET" calls were answered by no span worldline received (the callee's were
    # lost): the name says nothing of what was called, so the slow calls are checkout's view
    # of its own calls, not evidence about an entity called "GET"
    peer = "operation:GET"
    series = {
        ("service:frontend", "span.latency_p95_ms"): 10.0,
        ("service:checkout", "span.latency_p95_ms"): 8.0,
        ("service:checkout", f"edge.latency_p95_ms{{peer={peer}}}"): 3.0,
        ("service:payment", "span.rate_per_s"): 5.0,
    }
    faults = {
        ("service:frontend", "span.latency_p95_ms"): 2.0,
        ("service:checkout", "span.latency_p95_ms"): 2.5,
        ("service:checkout", f"edge.latency_p95_ms{{peer={peer}}}"): 5.0,
    }
    edges = [("service:frontend", "service:checkout"), ("service:checkout", "service:payment")]
    result = _search(_given_model(series, faults, edges, seed=5))
    assert result.causes and result.causes[0].entity == "service:checkout"
    assert result.causes[0].signal == f"edge.latency_p95_ms{{peer={peer}}}"
    assert not any(c.entity.startswith("operation:") for c in result.causes)


def test_a_dependency_whose_harm_began_with_its_callers_explains_it() -> None:
    # checkout's calls to stripe slow down a little from FAULT on (their median: felt by
    # checkout at once) and far more from the next interval on (their p95): stripe's strongest
    # evidence began an interval after checkout slowed, but the harm checkout felt from it
    # began with checkout's own, so stripe accounts for checkout
    peer = "external:stripe"
    series = {
        ("service:frontend", "span.latency_p95_ms"): 40.0,
        ("service:checkout", "span.latency_p95_ms"): 30.0,
        ("service:checkout", f"edge.latency_p50_ms{{peer={peer}}}"): 10.0,
        ("service:checkout", f"edge.latency_p95_ms{{peer={peer}}}"): 20.0,
    }
    faults: dict[tuple[str, str], float | Callable[[int], float]] = {
        ("service:frontend", "span.latency_p95_ms"): 1.5,
        ("service:checkout", "span.latency_p95_ms"): 1.5,
        ("service:checkout", f"edge.latency_p50_ms{{peer={peer}}}"): 1.5,
        ("service:checkout", f"edge.latency_p95_ms{{peer={peer}}}"): lambda i: (
            4.0 if i > FAULT else 1.0
        ),
    }
    edges = [("service:frontend", "service:checkout"), ("service:checkout", peer)]
    result = _search(_given_model(series, faults, edges, seed=5))
    assert result.causes and result.causes[0].entity == peer
    checkout = next(c for c in result.causes if c.entity == "service:checkout")
    assert "explained by external:stripe" in checkout.explanation


def test_a_latency_rise_its_callers_did_not_wait_for_ranks_below_one_they_did() -> None:
    # payment reports its own requests ten times slower, while checkout, its one caller,
    # measures its calls to payment as fast as ever: the rise reached no request checkout
    # waits for. Shipping slows twice over, and checkout's calls to it with it: that is what
    # checkout, and the frontend through it, waited for
    ship = "operation:hipstershop.ShippingService/GetQuote"
    model = _rpc_model(
        {
            ("service:frontend", "span.latency_p95_ms"): 1.5,
            ("service:checkout", "span.latency_p95_ms"): 1.6,
            ("service:payment", "span.latency_p95_ms"): 10.0,
            (
                "operation:payment grpc.hipstershop.PaymentService/Charge",
                "span.latency_p95_ms",
            ): 10.0,
            ("service:shipping", "span.latency_p95_ms"): 2.0,
            (
                "operation:shipping /hipstershop.ShippingService/GetQuote",
                "span.latency_p95_ms",
            ): 2.0,
            ("service:checkout", f"edge.latency_p95_ms{{peer={ship}}}"): 2.0,
        }
    )
    result = _search(model)
    ranked = [c.entity for c in result.causes]
    assert ranked[:1] == ["service:shipping"], result.causes
    assert "service:payment" in ranked
    search = CausalSearch(model)
    candidates, _ = search.candidates(["service:frontend"], T0 + END * MIN)
    batch = search.hypotheses(candidates, T0 + END * MIN)
    unseen = unseen_by_callers(SearchConfig(), batch)
    flagged = {batch.series[r] for r in np.flatnonzero(unseen)}
    assert ("service:payment", "span.latency_p95_ms") in flagged
    assert not any(
        entity.startswith(("service:shipping", "operation:shipping")) for entity, _ in flagged
    )
    assert not any(signal.startswith("edge.") for _, signal in flagged)


def _starved_checkout_model(
    extra: dict[tuple[str, str], float | Callable[[int], float]] | None = None,
) -> WorldModel:
    """checkout starved of CPU: its own latency and CPU rise, and its calls to payment and to
    shipping look 4x slower from its side, while neither dependency's own spans move (unless
    ``extra``, further faults, moves them)."""
    pay = "operation:hipstershop.PaymentService/Charge"
    ship = "operation:hipstershop.ShippingService/GetQuote"
    return _rpc_model(
        {
            ("service:frontend", "span.latency_p95_ms"): 2.0,
            ("service:checkout", "span.latency_p95_ms"): 2.5,
            ("service:checkout", "process.cpu.utilization"): 3.0,
            ("service:checkout", f"edge.latency_p95_ms{{peer={pay}}}"): 4.0,
            ("service:checkout", f"edge.latency_p95_ms{{peer={ship}}}"): 4.0,
            **(extra or {}),
        }
    )


def test_a_caller_that_sees_all_its_dependencies_slow_at_once_is_the_cause() -> None:
    # checkout is starved of CPU: every call it makes looks slower from its side (payment and
    # shipping both), while neither dependency's own spans move: what the two views share is
    # checkout's side of the calls
    model = _starved_checkout_model()
    result = _search(model)
    assert result.causes and result.causes[0].entity == "service:checkout"
    local = {r.entity for r in result.ruled_out if "side of the call" in r.reason}
    assert local == {"service:payment", "service:shipping"}
    assert all("other dependencies" in r.reason for r in result.ruled_out if "side of" in r.reason)


def test_a_dependency_harmed_later_than_its_caller_saw_it_is_still_the_callers_view() -> None:
    # checkout is starved of CPU and sees payment and shipping slow at once; eight minutes
    # later payment's own spans slow too (a harm of its own, later): that later harm is not
    # what checkout saw, so both views are still checkout's side of the calls
    model = _starved_checkout_model(
        {("service:payment", "span.latency_p95_ms"): lambda i: 2.0 if i >= FAULT + 8 else 1.0}
    )
    result = _search(model)
    assert result.causes and result.causes[0].entity == "service:checkout"
    local = {r.entity for r in result.ruled_out if "side of the call" in r.reason}
    assert local == {"service:payment", "service:shipping"}


def test_a_dependency_harmed_too_little_to_account_for_its_callers_view_is_that_view() -> None:
    # checkout is starved of CPU and sees payment and shipping 5x slower at once (+12 ms and
    # +8 ms, its scores at their limit); payment's own spans (0.5 ms) rise with it, by half:
    # +0.25 ms, a clear deviation of its own, but far too little to be why checkout waits
    # longer on its calls. Both views are still checkout's side of the calls
    pay = "operation:hipstershop.PaymentService/Charge"
    ship = "operation:hipstershop.ShippingService/GetQuote"
    pay_op = "operation:payment grpc.hipstershop.PaymentService/Charge"
    own = {(pay_op, "span.latency_p95_ms"), ("service:payment", "span.latency_p95_ms")}
    faults: dict[tuple[str, str], float | Callable[[int], float]] = {
        ("service:frontend", "span.latency_p95_ms"): 2.0,
        ("service:checkout", "span.latency_p95_ms"): 2.5,
        ("service:checkout", "process.cpu.utilization"): 3.0,
        ("service:checkout", f"edge.latency_p95_ms{{peer={pay}}}"): 5.0,
        ("service:checkout", f"edge.latency_p95_ms{{peer={ship}}}"): 5.0,
        **{key: 1.5 for key in own},
    }
    model = _rpc_model(faults, levels={key: 0.5 for key in own})
    search = CausalSearch(model)
    candidates, _ = search.candidates(["service:frontend"], T0 + END * MIN)
    batch = search.hypotheses(candidates, T0 + END * MIN)
    ev = evaluate(batch, SearchConfig())
    row = batch.series.index(("service:payment", "span.latency_p95_ms"))
    assert ev.strength[row] >= SearchConfig().z_min  # a harm of its own, with the view
    result = _search(model)
    assert result.causes and result.causes[0].entity == "service:checkout", result.causes
    local = {r.entity for r in result.ruled_out if "side of the call" in r.reason}
    assert local == {"service:payment", "service:shipping"}


def test_a_caller_at_fault_on_its_side_is_not_explained_by_one_dependency() -> None:
    # checkout is starved of CPU: its calls to shipping and email look slower from its side
    # while neither's own spans move; payment happens to slow at the same time. Payment being
    # slow does not make checkout's calls to shipping and email slow: it does not account
    # for checkout's deviation, and checkout is not held below it
    pay = "operation:hipstershop.PaymentService/Charge"
    ship = "operation:hipstershop.ShippingService/GetQuote"
    faults: dict[tuple[str, str], float | Callable[[int], float]] = {
        ("service:frontend", "span.latency_p95_ms"): 2.0,
        ("service:checkout", "span.latency_p95_ms"): 2.5,
        ("service:checkout", "process.cpu.utilization"): 3.0,
        ("service:checkout", f"edge.latency_p95_ms{{peer={pay}}}"): 1.5,
        ("service:checkout", f"edge.latency_p95_ms{{peer={ship}}}"): 4.0,
        ("service:checkout", f"edge.latency_p95_ms{{peer={MAIL}}}"): 4.0,
        ("service:payment", "span.latency_p95_ms"): 1.5,
        ("operation:payment grpc.hipstershop.PaymentService/Charge", "span.latency_p95_ms"): 1.5,
    }
    result = _search(_rpc_model(faults, email=True))
    local = {r.entity for r in result.ruled_out if "side of the call" in r.reason}
    assert local == {"service:shipping", "service:email"}
    assert result.causes and result.causes[0].entity == "service:checkout", result.causes
    ranked = [c.entity for c in result.causes]
    assert "service:payment" in ranked


def test_a_brief_rise_another_caller_sees_is_no_sign_of_health() -> None:
    # the database slows: checkout's calls to it are 5x slower throughout; billing's view of
    # it rises in one interval only (billing calls it rarely): too brief to be evidence of its
    # own, but no sign that the database is healthy either. The slow database is the cause,
    # not checkout's side of the calls
    model = _shared_database_model({BILLING_VIEW: lambda i: 1.2 if i == FAULT + 2 else 1.0})
    result = _search(model)
    search = CausalSearch(model)
    candidates, _ = search.candidates(["service:frontend"], T0 + END * MIN)
    batch = search.hypotheses(candidates, T0 + END * MIN)
    row = batch.series.index(BILLING_VIEW)
    ev = evaluate(batch, SearchConfig())
    assert ev.strength[row] < SearchConfig().z_min <= ev.peak[row]  # brief, not calm
    assert not any("side of the call" in r.reason for r in result.ruled_out)
    assert result.causes and result.causes[0].entity == DB


def test_one_of_many_callers_rising_once_leaves_the_others_witnesses_of_health() -> None:
    # checkout's calls to the database are 5x slower throughout; of its three other callers,
    # billing's view rises in one interval, ledger's and audit's stay calm. A slow database
    # is slow for every caller: the others, taken together, see it healthy (with many
    # callers, one crossing once is noise), so the fault is on checkout's side of the calls
    model = _shared_database_model(
        {BILLING_VIEW: lambda i: 1.3 if i == FAULT + 2 else 1.0},
        calm=("service:ledger", "service:audit"),
    )
    search = CausalSearch(model)
    candidates, _ = search.candidates(["service:frontend"], T0 + END * MIN)
    batch = search.hypotheses(candidates, T0 + END * MIN)
    ev = evaluate(batch, SearchConfig())
    row = batch.series.index(BILLING_VIEW)
    assert ev.strength[row] < SearchConfig().z_min <= ev.peak[row]  # it crossed, once
    result = _search(model)
    assert any(r.entity == DB and "side of the call" in r.reason for r in result.ruled_out)
    assert result.causes and result.causes[0].entity == "service:checkout", result.causes


def test_a_caller_that_stopped_measuring_a_dependency_is_no_witness_of_its_health() -> None:
    # checkout's calls to the (uninstrumented) database are 5x slower; billing, its other
    # caller, stopped calling it when that began (nothing measured since: a gap, not health).
    # Nobody else measured the database, so nothing says the fault is on checkout's side
    model = _shared_database_model({}, silent=frozenset({BILLING_VIEW}))
    result = _search(model)
    assert not any("side of the call" in r.reason for r in result.ruled_out)
    assert result.causes and result.causes[0].entity == DB, result.causes


def test_a_caller_seen_through_several_dependencies_has_as_many_views() -> None:
    # checkout starved of CPU is seen through its calls to payment and through its calls to
    # shipping, two measurements independent of each other, besides its own CPU: three views
    from jobs.causal.search.evidence import _LatencyAccounts, entity_evidence
    from jobs.causal.search.rules import caller_local

    model = _starved_checkout_model()
    config = SearchConfig()
    search = CausalSearch(model, config)
    candidates, _ = search.candidates(["service:frontend"], T0 + END * MIN)
    batch = search.hypotheses(candidates, T0 + END * MIN)
    ev = evaluate(batch, config)
    batch, local = caller_local(config, batch, ev, _LatencyAccounts(model, batch, ev, config))
    assert {caller for _, caller, _ in local} == {"service:checkout"}
    ents = entity_evidence(batch, ev, config)
    # traces and metrics, and the second dependency it is seen through
    assert ents.sources[batch.entities.index("service:checkout")] == 3


def test_callers_measuring_a_dependency_are_independent_views_of_it() -> None:
    # payment is seen slow by checkout and by billing, each through its own calls; shipping by
    # checkout alone, and by its own spans: two views each, one of a kind for shipping
    import numpy as np

    from jobs.causal.search.evidence import HypothesisBatch, entity_evidence

    rows = [
        ("service:checkout", "edge.latency_p95_ms{peer=service:payment}", "service:payment"),
        ("service:billing", "edge.latency_p95_ms{peer=service:payment}", "service:payment"),
        ("service:checkout", "edge.latency_p95_ms{peer=service:shipping}", "service:shipping"),
        ("service:shipping", "span.latency_p95_ms", "service:shipping"),
    ]
    entities = ["service:payment", "service:shipping"]
    w = 10
    z = np.zeros((len(rows), w))
    z[:, -3:] = 8.0
    batch = HypothesisBatch(
        entity=np.array([entities.index(e) for _, _, e in rows]),
        series=[(owner, signal) for owner, signal, _ in rows],
        modality=np.zeros(len(rows), dtype=np.int8),
        up_is_bad=np.ones(len(rows), dtype=bool),
        z=z,
        t0_s=T0,
        interval_s=MIN,
        entities=entities,
    )
    config = SearchConfig()
    ents = entity_evidence(batch, evaluate(batch, config), config)
    assert ents.sources.tolist() == [2, 1]


def test_a_search_long_after_its_time_says_its_scores_are_gone() -> None:
    model = _model({("service:frontend", "span.latency_p95_ms"): (FAULT, 3.0)})
    at = T0 + END * MIN
    model.closed_through = int(at * 1e9)
    assert _search(model).causes[0].entity == "service:frontend"
    # the model went on closing intervals (data resumed after a gap) past what its rings of
    # recent scores keep: a re-search at the alert's time cannot read them
    model.closed_through = int((at + 40 * MIN) * 1e9)
    result = _search(model)
    assert result.abstained and result.causes == []
    assert "no longer held" in (result.abstain_reason or "")
    assert result.stats["intervals_past_held"] == 39.0  # closed after the searched one


def _fewer_orders_model(email_from: int) -> WorldModel:
    """frontend -> checkout -> email; checkout slows by 60 % from ``FAULT`` (its CPU) and,
    placing fewer orders, sends email 30 % of the confirmation bytes from ``email_from`` on:
    how much email is asked changes, nothing about how it answers."""
    series = {
        ("service:frontend", "span.latency_p95_ms"): 1.6,
        ("service:checkout", "span.latency_p95_ms"): 1.6,
        ("service:checkout", "process.cpu.utilization"): 1.6,
        ("service:email", "pod.network.receive"): 1000.0,
        ("service:email", "span.latency_p95_ms"): 1.5,
    }
    faults: dict[tuple[str, str], float | Callable[[int], float]] = {
        ("service:frontend", "span.latency_p95_ms"): 1.6,
        ("service:checkout", "span.latency_p95_ms"): 1.6,
        ("service:checkout", "process.cpu.utilization"): 1.6,
        ("service:email", "pod.network.receive"): lambda i: 0.3 if i >= email_from else 1.0,
    }
    edges = [("service:frontend", "service:checkout"), ("service:checkout", "service:email")]
    return _given_model(series, faults, edges, seed=7)


def test_a_dependency_asked_less_after_its_caller_was_harmed_is_explained_by_the_caller() -> None:
    # the SLO alert names the frontend, not a signal; email's traffic fell far more (in its own
    # spreads) than checkout slowed, and would rank first, but it fell only two intervals
    # after checkout was harmed: checkout, which calls it, accounts for how much it is asked
    result = CausalSearch(_fewer_orders_model(FAULT + 2)).run(
        [("service:frontend", None)], T0 + END * MIN
    )
    ranked = {c.entity: c for c in result.causes}
    assert result.causes and result.causes[0].entity == "service:checkout", result.causes
    assert "only how much it is asked changed" in ranked["service:email"].explanation


def test_a_dependency_asked_less_as_its_caller_was_harmed_is_not_explained_by_it() -> None:
    # email's traffic fell in the same interval checkout slowed: nothing says which came
    # first, so checkout does not account for it
    result = CausalSearch(_fewer_orders_model(FAULT)).run(
        [("service:frontend", None)], T0 + END * MIN
    )
    ranked = {c.entity: c for c in result.causes}
    assert "service:email" in ranked
    assert "only how much it is asked changed" not in ranked["service:email"].explanation
