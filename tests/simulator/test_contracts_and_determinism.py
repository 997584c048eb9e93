"""Alerts and changes follow schemas/; same seed gives the same bytes, another seed another incident."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import pytest

import schemas
from jobs.simulator.alerts import FIRING_ENDS_AT
from jobs.simulator.simulation import RunConfig, Simulation
from pipeline import otlp, topics
from tests.simulator.simulated_runs import START_S, RunSummary, run_summary


def digest(config: RunConfig) -> tuple[str, dict[str, object]]:
    sim = Simulation(config)
    h = hashlib.sha256()
    for record in sim.records():
        h.update(record.topic.encode())
        h.update(record.key or b"-")
        h.update(record.timestamp_ms.to_bytes(8, "big"))
        h.update(record.value)
    return h.hexdigest(), sim.labels()


def test_same_seed_same_bytes_different_seed_different_incident() -> None:
    config = RunConfig(
        start_s=START_S,
        scenario="database-slowdown",
        seed=21,
        services=12,
        warmup_s=30.0,
        duration_s=20.0,
    )
    first, labels = digest(config)
    again, labels_again = digest(config)
    assert first == again and labels == labels_again
    other, other_labels = digest(RunConfig(**{**config.__dict__, "seed": 22}))
    assert other != first
    assert (
        other_labels["topology"] != labels["topology"] or other_labels["faults"] != labels["faults"]
    )


def test_alerts_validate_fire_after_onset_on_user_facing_services_only() -> None:
    run = run_summary("external-api-timeouts", 7, 30.0)
    sim = run.sim
    alerts = [orjson.loads(r.value) for r in run.records if r.topic == "alerts"]
    assert alerts, "the external API fault pages someone"
    user_facing = {s.name for s in sim.topology.services if s.user_facing}
    onset_ms = sim.config.onset_s * 1000
    for record in (r for r in run.records if r.topic == "alerts"):
        payload = orjson.loads(record.value)
        schemas.validate("alerts.schema.json", payload)
        assert record.key == payload["groupKey"].encode()
        assert record.timestamp_ms > onset_ms + 60_000, "a realistic detection delay"
        for alert in payload["alerts"]:
            assert alert["labels"]["service"] in user_facing
            if alert["status"] == "firing":
                assert alert["endsAt"] == FIRING_ENDS_AT


def test_changes_validate_and_deploys_show_up_as_versions(normal_run: RunSummary) -> None:
    changes = [orjson.loads(r.value) for r in normal_run.records if r.topic == "changes"]
    for change in changes:
        schemas.validate("changes.schema.json", change)
    sim = Simulation(
        RunConfig(
            start_s=START_S,
            scenario="slow-query-after-deploy",
            seed=4,
            services=12,
            warmup_s=30.0,
            duration_s=10.0,
        )
    )
    (deploy,) = [c for c in sim.changes if c.change_id.startswith("deploy-")]
    before = sim.versions[deploy.service]
    records = list(sim.records())
    events = [orjson.loads(r.value) for r in records if r.topic == "changes"]
    assert any(e["change_id"] == deploy.change_id and e["kind"] == "deploy" for e in events)
    for e in events:
        schemas.validate("changes.schema.json", e)
    assert sim.versions[deploy.service] == deploy.attributes["service.version.after"] != before
    # the deploy rolled the pods: new version, new pod names, same service
    name = sim.topology.services[deploy.service].name
    pods_by_version: dict[str, set[str]] = {}
    for record in records:
        if record.topic != "otlp_spans":
            continue
        request = otlp.from_proto(record.value, topics.OTLP_TRACES)
        for rs in request.resource_spans:
            attrs = {kv.key: kv.value.string_value for kv in rs.resource.attributes}
            if attrs["service.name"] == name:
                pods_by_version.setdefault(attrs["service.version"], set()).add(
                    attrs["k8s.pod.name"]
                )
    assert set(pods_by_version) == {before, sim.versions[deploy.service]}
    assert not pods_by_version[before] & pods_by_version[sim.versions[deploy.service]]


def test_labels_are_not_on_any_topic(database_run: RunSummary) -> None:
    labels = database_run.sim.labels()
    fault: dict[str, Any] = labels["faults"][0]  # type: ignore[index]
    assert fault["fault_class"] == "database_slowdown"
    marker = b"database_slowdown"
    assert not [r for r in database_run.records if marker in r.value]


@pytest.mark.parametrize("n", [9, 501])
def test_topology_size_is_checked(n: int) -> None:
    with pytest.raises(ValueError):
        Simulation(RunConfig(start_s=START_S, services=n))
