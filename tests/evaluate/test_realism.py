"""The simulator's realism modes: what each deployment kind delivers of the same incident."""

from __future__ import annotations

import pytest

from jobs.causal.alerts import SymptomMapper, parse_webhook
from jobs.evaluate.simulator import (
    COARSE_SCRAPE_S,
    _alert_payload,
    realistic,
    unobserved,
)
from jobs.simulator.simulation import Record

T0_MS = 1_795_000_000_000 - 1_795_000_000_000 % 3_600_000  # on the hour


def _records() -> list[Record]:
    out = []
    for second in range(0, 900, 15):
        t = T0_MS + second * 1000
        out.append(Record("otlp_metrics", None, b"m", t))
        if second % 30 == 0:
            out.append(Record("otlp_spans", None, b"s", t))
            out.append(Record("otlp_logs", None, b"l", t))
    out.append(Record("alerts", b"k", b"{}", T0_MS + 600_000))
    return out


def _topics(records: list[Record]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for r in records:
        out.setdefault(r.topic, []).append((r.timestamp_ms - T0_MS) // 1000)
    return out


def test_full_delivers_everything() -> None:
    records = _records()
    assert realistic(records, "full") == records


def test_metrics_only_drops_traces_and_logs() -> None:
    topics = _topics(realistic(_records(), "metrics-only"))
    assert set(topics) == {"otlp_metrics", "alerts"}
    assert len(topics["otlp_metrics"]) == 60


def test_trace_windows_keep_one_minute_in_three() -> None:
    topics = _topics(realistic(_records(), "trace-windows"))
    minutes = sorted({s // 60 for s in topics["otlp_spans"]})
    assert minutes == [0, 3, 6, 9, 12]
    assert len(topics["otlp_metrics"]) == 60 and len(topics["otlp_logs"]) == 30


def test_coarse_metrics_keep_one_scrape_per_period() -> None:
    topics = _topics(realistic(_records(), "metrics-300s"))
    assert topics["otlp_metrics"] == [0, COARSE_SCRAPE_S, 2 * COARSE_SCRAPE_S]
    assert len(topics["otlp_spans"]) == 30


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown realism"):
        realistic(_records(), "metrics-only-please")


def test_an_unobserved_alert_names_its_service_but_no_signal() -> None:
    payload = _alert_payload("checkout", T0_MS / 1000)
    known = {"service:checkout"}
    signals = {"service:checkout": ["span.latency_p95_ms", "span.error_ratio"]}
    mapper = SymptomMapper(known, lambda e: signals.get(e, []))
    [named] = parse_webhook(payload)
    assert mapper.map(named).signal == "span.latency_p95_ms"
    [probe] = parse_webhook(unobserved(payload))
    symptom = mapper.map(probe)
    assert symptom.entity == "service:checkout" and symptom.signal is None
    assert probe.starts_at_s == named.starts_at_s
