"""Alert labels and words -> the symptom entity and the signal the world model has for it."""

from __future__ import annotations

from jobs.causal.alerts import Alert, SymptomMapper

SPANS = {
    "service:frontend": ["span.latency_p95_ms", "span.error_ratio", "span.rate_per_s"],
}
METRICS_ONLY = {
    "service:PetSite": [
        "availability.average",
        "latency.average",
        "latency.p50",
        "latency.p90",
        "latency.p99",
        "requests.sum",
        "edge.latency_p95_ms{peer=service:db}",
    ],
    "service:cart": ["http_server_errors_ratio", "http_server_duration_seconds.p99"],
}


def _alert(name: str, labels: dict[str, str], summary: str = "") -> Alert:
    return Alert(
        "fp", "firing", name, {"alertname": name, **labels}, {"summary": summary}, 0.0, None
    )


def _mapper(signals: dict[str, list[str]]) -> SymptomMapper:
    return SymptomMapper(signals, lambda entity: signals.get(entity, []))


def test_span_derived_signals_are_kept_when_the_entity_has_them() -> None:
    mapper = _mapper(SPANS)
    symptom = mapper.map(_alert("HighLatency", {"service": "frontend"}))
    assert (symptom.entity, symptom.signal) == ("service:frontend", "span.latency_p95_ms")
    errors = mapper.map(_alert("ErrorBudgetBurn", {"service_name": "frontend"}))
    assert errors.signal == "span.error_ratio"


def test_a_metrics_only_entity_gets_its_own_series_of_the_alerted_kind() -> None:
    mapper = _mapper(METRICS_ONLY)
    # no p95: p99 is the next preferred statistic; the caller-side edge series is not its own
    latency = mapper.map(_alert("PetSiteHighLatency", {"service": "PetSite"}))
    assert (latency.entity, latency.signal) == ("service:PetSite", "latency.p99")
    # a statistic the alert names wins
    average = mapper.map(
        _alert("PetSiteSlow", {"service": "PetSite"}, summary="average latency above 1 s")
    )
    assert average.signal == "latency.average"
    # availability is the failure signal it has
    availability = mapper.map(_alert("PetSiteLowAvailability", {"app": "PetSite"}))
    assert availability.signal == "availability.average"
    cart = mapper.map(_alert("CartErrors", {"job": "cart"}))
    assert cart.signal == "http_server_errors_ratio"
    cart_latency = mapper.map(_alert("CartLatencyHigh", {"job": "cart"}))
    assert cart_latency.signal == "http_server_duration_seconds.p99"


def test_a_pod_label_names_the_pod_or_the_workload_that_owns_it() -> None:
    known = {
        "service:cartservice": ["span.latency_p95_ms"],
        "pod:cartservice-6d8f9c7b45-x7k2p": ["k8s.pod.cpu.utilization"],
        "service:redis-cart": ["span.latency_p95_ms"],
        "service:node-exporter-abcde": ["process.cpu.utilization"],
    }
    mapper = _mapper(known)
    pod = mapper.map(_alert("PodCPUThrottled", {"pod": "cartservice-6d8f9c7b45-x7k2p"}))
    assert pod.entity == "pod:cartservice-6d8f9c7b45-x7k2p"
    # a pod worldline has not seen (rescheduled since): the Deployment it belongs to
    moved = mapper.map(_alert("HighLatency", {"k8s_pod_name": "cartservice-6d8f9c7b45-q9zzb"}))
    assert (moved.entity, moved.signal) == ("service:cartservice", "span.latency_p95_ms")
    # a StatefulSet's pod, written namespace/pod
    ordinal = mapper.map(_alert("SlowRedis", {"kubernetes_pod_name": "shop/redis-cart-0"}))
    assert ordinal.entity == "service:redis-cart"
    # a word of the workload's own name is not a generated suffix (it has vowels)
    named = mapper.map(_alert("Down", {"pod": "node-exporter-abcde"}))
    assert named.entity == "service:node-exporter-abcde"
    unknown = mapper.map(_alert("Down", {"pod": "ledger-7c9d8b6f5d-x7k2p"}))
    assert unknown.entity is None


def test_kubernetes_and_mesh_workload_labels_name_the_service() -> None:
    mapper = _mapper(SPANS)
    for label in ("k8s_deployment_name", "k8s.deployment.name", "destination_workload"):
        assert mapper.map(_alert("HighLatency", {label: "frontend"})).entity == "service:frontend"


def test_without_known_series_the_kind_is_all_there_is() -> None:
    mapper = SymptomMapper(["service:PetSite"])
    symptom = mapper.map(_alert("PetSiteHighLatency", {"service": "PetSite"}))
    assert symptom.signal == "span.latency_p95_ms"
    unknown = _mapper(METRICS_ONLY).map(_alert("Something", {"service": "nowhere"}))
    assert unknown.entity is None and "no known entity" in unknown.how


def test_the_alerted_series_family() -> None:
    from jobs.causal.search import _family

    # a span-derived kind covers its statistics; a metric's statistic is itself (an
    # underscore-split prefix would take every "http" series for one)
    assert _family("span.latency_p95_ms") == "span.latency"
    assert _family("http_server_duration_seconds.p99") == "http_server_duration_seconds.p99"
    assert _family("latency.average") == "latency.average"


def _timed(fingerprint: str, starts_at_s: float, status: str = "firing") -> Alert:
    return Alert(
        fingerprint,
        status,
        "HighLatency",
        {"alertname": "HighLatency", "service": "frontend"},
        {},
        starts_at_s,
        None,
    )


def _same(a: str, b: str) -> bool:
    return True


def test_incidents_group_alerts_by_distance_from_their_first_not_chained() -> None:
    from jobs.causal.alerts import IncidentBook, Symptom

    book = IncidentBook(group_window_s=300.0)
    symptom = Symptom("service:frontend", "span.latency_p95_ms", "label service=frontend")
    first, _ = book.add(_timed("a", 1000.0), symptom, _same)
    second, _ = book.add(_timed("b", 1240.0), symptom, _same)
    assert second is first  # 240 s after the first
    # 240 s after the latest but 480 s after the first: a new incident, never a chain
    third, _ = book.add(_timed("c", 1480.0), symptom, _same)
    assert third is not first
    assert first.fingerprints == ["a", "b"] and third.fingerprints == ["c"]
    starts = [a.starts_at_s for a in first.alerts.values()]
    assert max(starts) - min(starts) <= book.group_window_s


def test_an_alert_not_notified_again_within_the_resolve_timeout_is_resolved() -> None:
    from jobs.causal.alerts import IncidentBook, Symptom

    book = IncidentBook(group_window_s=300.0, resolve_timeout_s=600.0)
    symptom = Symptom("service:frontend", "span.latency_p95_ms", "label service=frontend")
    old, _ = book.add(_timed("a", 1000.0), symptom, _same)
    kept, _ = book.add(_timed("b", 1100.0), symptom, _same)
    assert kept is old and old.open
    # "a" is notified again at the book's clock 1500: re-sent, nothing new, but still alive
    assert book.add(_timed("c", 1500.0), symptom, _same)[0] is not old
    assert book.add(_timed("a", 1000.0), symptom, _same) == (old, False)
    # 1800: "b" was last notified at 1100, more than 600 s ago; "a" at 1500
    book.add(_timed("d", 1800.0), symptom, _same)
    assert old.alerts["b"].status == "resolved" and old.alerts["a"].firing
    assert old.open and book.timed_out == 1
    book.add(_timed("e", 2200.0), symptom, _same)
    assert not old.open and old.alerts["a"].ends_at_s == 2100.0
    assert book.timed_out >= 2
