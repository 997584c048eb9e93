"""The service a telemetry resource is about, with or without ``service.name``."""

from __future__ import annotations

import pytest

from pipeline.ingest.resource import is_unnamed, service_of, workload_of_pod


@pytest.mark.parametrize(
    ("pod", "workload"),
    [
        ("cartservice-579f59597d-wc2lz", "cartservice"),  # a Deployment's
        ("recommendationservice-6cfdd55578-gfj6q", "recommendationservice"),
        ("ts-order-service-7f9b8c6d45-2xk4z", "ts-order-service"),
        ("redis-cart-0", "redis-cart"),  # a StatefulSet's
        ("kafka-12", "kafka"),
        ("fluentd-x7k2p", "fluentd-x7k2p"),  # a DaemonSet's: its suffix alone is ambiguous
        ("frontend-proxy", "frontend-proxy"),  # a name's own last word is no suffix
        ("api-v2-aaaaa-bbbbb", "api-v2-aaaaa-bbbbb"),  # vowels: no generated hash
    ],
)
def test_a_pods_generated_name_says_its_workload(pod: str, workload: str) -> None:
    assert workload_of_pod(pod) == workload


def test_the_service_is_named_by_the_sdk_else_by_the_workload() -> None:
    pod = {"k8s.pod.name": "cartservice-579f59597d-wc2lz", "k8s.node.name": "node-1"}
    assert service_of({"service.name": "cart", **pod}) == "cart"
    # the Collector's kubeletstats and filelog receivers name the pod, not the service
    assert service_of(pod) == "cartservice"
    assert service_of({"service.name": "unknown_service:java", **pod}) == "cartservice"
    assert service_of({"k8s.deployment.name": "cart", **pod}) == "cart"
    assert service_of({"k8s.replicaset.name": "cart-7f9b8c6d45"}) == "cart"
    assert service_of({"k8s.statefulset.name": "db", "k8s.pod.name": "db-0"}) == "db"
    assert service_of({"service.name": "unknown_service:java"}) == "unknown_service:java"
    assert service_of({"host.name": "node-1"}) == "unknown_service"
    assert is_unnamed("unknown_service") and is_unnamed("unknown_service:python")
    assert is_unnamed(None) and not is_unnamed("checkout")


def test_pod_metrics_without_a_service_name_are_their_workloads() -> None:
    # as the Collector's kubeletstats receiver sends them: pod and node, no service.name;
    # a node's own metrics stay the node's
    import json

    from pipeline.worldmodel.signals import MetricDeriver

    def names(resource: dict[str, str]) -> tuple[str, str]:
        info = {"resource_attributes": json.dumps(resource), "attributes": "{}", "name": "cpu"}
        return MetricDeriver._names(info)

    pod = {"k8s.pod.name": "cartservice-579f59597d-wc2lz", "k8s.node.name": "node-1"}
    assert names(pod) == ("service:cartservice", "cpu")
    assert names({"k8s.node.name": "node-1"}) == ("host:node-1", "cpu")
    assert names({}) == ("service:unknown_service", "cpu")
