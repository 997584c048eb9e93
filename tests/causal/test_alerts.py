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
