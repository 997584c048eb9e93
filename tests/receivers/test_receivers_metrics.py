"""``/metrics`` of a receiver running in this process (samples in memory), and the Grafana
dashboard in ``infra/`` read against it."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.receivers.conftest import ReceiverHarness

DASHBOARD = Path(__file__).resolve().parents[2] / "infra" / "grafana" / "worldline.json"
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "gauge": ("",),
    "summary": ("", "_count", "_sum"),
}


def exposed(receiver: ReceiverHarness) -> dict[str, str]:
    """Every name a query may use -> the type of its family, from a real scrape."""
    answer = receiver.post("/metrics", b"", method="GET")
    assert answer.status == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    names: dict[str, str] = {}
    for family in text_string_to_metric_families(answer.body.decode()):
        for suffix in SUFFIXES.get(family.type, ("",)):
            names[family.name + suffix] = family.type
        for sample in family.samples:
            names[sample.name] = family.type
    return names


def dashboard_queries() -> list[tuple[str, str]]:
    doc = json.loads(DASHBOARD.read_text())
    out = []
    for panel in doc["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    return out


def test_metrics_are_served_in_the_exposition_format(receiver: ReceiverHarness) -> None:
    names = exposed(receiver)
    for name, kind in (
        ("worldline_records_in_total", "counter"),
        ("worldline_deadletters_total", "counter"),
        ("worldline_consumer_lag", "gauge"),
        ("worldline_broker_up", "gauge"),
        ("worldline_model_size", "gauge"),
        ("worldline_model_cap", "gauge"),
        ("worldline_search_duration_seconds_bucket", "histogram"),
        ("worldline_stage_restarts_total", "counter"),
    ):
        assert names.get(name) == kind, name


def test_a_refused_request_is_counted_by_its_reason(receiver: ReceiverHarness) -> None:
    def refused() -> float:
        answer = receiver.post("/metrics", b"", method="GET")
        for family in text_string_to_metric_families(answer.body.decode()):
            for s in family.samples:
                if s.name == "worldline_http_refused_total" and s.labels == {
                    "reason": "unsupported_media_type"
                }:
                    return s.value
        return 0.0

    before = refused()
    assert receiver.post("/v1/traces", b"x", {"Content-Type": "text/plain"}).status == 415
    receiver.deadletters(1)
    assert refused() == before + 1


def test_every_metric_the_dashboard_queries_is_exposed(receiver: ReceiverHarness) -> None:
    names = exposed(receiver)
    queries = dashboard_queries()
    assert len(queries) >= 20
    used: set[str] = set()
    for title, expr in queries:
        found = set(re.findall(r"\bworldline_[A-Za-z0-9_:]+", expr))
        assert found, f"panel {title!r} queries no worldline metric: {expr}"
        missing = sorted(found - set(names))
        assert not missing, f"panel {title!r} queries {missing}, not in /metrics"
        used |= found
    # the dashboard shows what the metrics are for
    for name in (
        "worldline_consumer_lag",
        "worldline_records_in_total",
        "worldline_bytes_in_total",
        "worldline_deadletters_total",
        "worldline_model_size",
        "worldline_model_cap",
        "worldline_model_watermark_seconds",
        "worldline_search_duration_seconds_bucket",
        "worldline_stage_restarts_total",
    ):
        assert name in used, name


def test_dashboard_is_importable_json() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert doc["title"] and doc["uid"] and doc["schemaVersion"] >= 30
    [variable] = doc["templating"]["list"]
    assert variable["type"] == "datasource" and variable["query"] == "prometheus"
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for panel in doc["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"


def test_metrics_need_the_token_when_one_is_set(receiver: ReceiverHarness) -> None:
    guarded = receiver.start_extra(token="s3cret")
    answer = receiver.post("/metrics", b"", method="GET", port=guarded.port)
    assert answer.status == 401 and answer.headers["www-authenticate"] == "Bearer"
    answer = receiver.post(
        "/metrics", b"", {"Authorization": "Bearer s3cret"}, method="GET", port=guarded.port
    )
    assert answer.status == 200 and b"worldline_records_in_total" in answer.body
    assert receiver.post("/healthz", b"", method="GET", port=guarded.port).status == 200
