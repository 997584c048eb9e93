"""The topic registry: every Kafka topic worldline reads or writes, in one place.

Each entry says what the key is, how many partitions the topic needs, how the value is
encoded and which schema it follows, which stage produces it and which stages consume it.
The broker is never trusted to auto-create a topic (the embedded broker would make it with
4 partitions, which breaks co-partitioned tables), so every topic here is created up front
with its partition count. Names are defaults; settings can rename any topic.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Encoding = Literal["otlp_proto", "json"]


@dataclass(frozen=True)
class TopicSpec:
    """One topic of the registry.

    ``value_schema`` names either a JSON Schema file in ``schemas/`` (for ``json`` topics) or
    the OTLP protobuf message each record holds (for ``otlp_proto`` topics).
    """

    name: str
    key: str
    partitions: int
    encoding: Encoding
    value_schema: str
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    description: str
    internal: bool = False


OTLP_TRACES = "opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest"
OTLP_METRICS = "opentelemetry.proto.collector.metrics.v1.ExportMetricsServiceRequest"
OTLP_LOGS = "opentelemetry.proto.collector.logs.v1.ExportLogsServiceRequest"

REGISTRY: tuple[TopicSpec, ...] = (
    TopicSpec(
        name="otlp_spans",
        key="empty (Collector default) or trace id",
        partitions=4,
        encoding="otlp_proto",
        value_schema=OTLP_TRACES,
        producers=("otel-collector", "receiver", "simulator"),
        consumers=("ingest-spans", "world-model"),
        description="OTLP trace export requests, as the Collector's Kafka exporter writes them",
    ),
    TopicSpec(
        name="otlp_metrics",
        key="empty (Collector default)",
        partitions=4,
        encoding="otlp_proto",
        value_schema=OTLP_METRICS,
        producers=("otel-collector", "receiver", "simulator"),
        consumers=("ingest-metrics", "world-model"),
        description="OTLP metric export requests, also Prometheus remote_write translated by the receiver",
    ),
    TopicSpec(
        name="otlp_logs",
        key="empty (Collector default)",
        partitions=4,
        encoding="otlp_proto",
        value_schema=OTLP_LOGS,
        producers=("otel-collector", "receiver", "simulator"),
        consumers=("ingest-logs", "world-model"),
        description="OTLP log export requests, also Loki push translated by the receiver",
    ),
    TopicSpec(
        name="alerts",
        key="group key of the Alertmanager notification",
        partitions=1,
        encoding="json",
        value_schema="alerts.schema.json",
        producers=("alertmanager-webhook", "simulator"),
        consumers=("causal-search",),
        description="Alertmanager webhook payloads, version 4",
    ),
    TopicSpec(
        name="changes",
        key="entity name the change applies to",
        partitions=1,
        encoding="json",
        value_schema="changes.schema.json",
        producers=("ci-hooks", "simulator"),
        consumers=("world-model",),
        description="Deploys, config pushes, feature-flag flips and scaling actions",
    ),
    TopicSpec(
        name="causes.ranked",
        key="incident id",
        partitions=1,
        encoding="json",
        value_schema="causes.ranked.schema.json",
        producers=("causal-search",),
        consumers=("users",),
        description="Ranked, calibrated, evidence-backed causes, one record per incident update",
    ),
    TopicSpec(
        name="deadletter",
        key="source topic",
        partitions=1,
        encoding="json",
        value_schema="deadletter.schema.json",
        producers=("ingest-spans", "ingest-metrics", "ingest-logs", "receiver", "causal-search"),
        consumers=("users",),
        description="Every record that could not be decoded or validated, with the reason",
    ),
    TopicSpec(
        name="segments.sealed",
        key="signal",
        partitions=1,
        encoding="json",
        value_schema="segments.sealed.schema.json",
        producers=("ingest-spans", "ingest-metrics", "ingest-logs"),
        consumers=("world-model", "causal-search"),
        description="Manifest of each sealed columnar segment",
        internal=True,
    ),
    TopicSpec(
        name="graph.deltas",
        key="edge or node id",
        partitions=1,
        encoding="json",
        value_schema="graph.deltas.schema.json",
        producers=("world-model",),
        consumers=("causal-search",),
        description="Dependency-graph changes: nodes and edges appearing, updated or expiring",
        internal=True,
    ),
)

BY_NAME: Mapping[str, TopicSpec] = {t.name: t for t in REGISTRY}


def spec(name: str) -> TopicSpec:
    """Return the registry entry for a logical topic name, with a clear error if unknown."""
    try:
        return BY_NAME[name]
    except KeyError:
        known = ", ".join(sorted(BY_NAME))
        raise KeyError(f"unknown topic {name!r}; the registry has: {known}") from None


def resolve(logical: str, overrides: Mapping[str, str]) -> str:
    """The actual Kafka topic name for a logical registry name, after settings overrides."""
    spec(logical)
    return overrides.get(logical, logical)


def logical_name(actual: str, overrides: Mapping[str, str]) -> str | None:
    """The registry name for an actual topic name, or None if it is not one of ours."""
    for t in REGISTRY:
        if overrides.get(t.name, t.name) == actual:
            return t.name
    return None
