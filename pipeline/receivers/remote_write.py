"""Prometheus remote_write 1.0 into OTLP metrics.

Follows the OpenTelemetry Prometheus compatibility rules that apply to remote_write data:
``__name__`` is the metric name, ``job`` and ``instance`` become the resource attributes
``service.name`` and ``service.instance.id`` (series sharing both share a resource), every other
label is a data point attribute. remote_write 1.0 carries no metric types, so every sample is a
gauge point under its original name (``*_total`` names are recognised as counters downstream).
Prometheus staleness markers become points flagged ``FLAG_NO_RECORDED_VALUE``.

A series about a Kubernetes pod that is not the scrape target (cAdvisor's container series under
the kubelet's ``job``, kube-state-metrics', a pod label relabelled onto every target) carries
the pod in its ``pod`` and ``namespace`` labels: its resource is that pod
(``k8s.pod.name``, ``k8s.namespace.name``), its ``service.name`` the workload the pod's
generated name says it belongs to (``ingest.resource.workload_of_pod``), and ``job`` stays a
resource attribute of its own. Otherwise a node's every pod would be one service, the kubelet.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.metrics.v1.metrics_pb2 import DataPointFlags

from pipeline.ingest.resource import workload_of_pod
from pipeline.receivers import protos
from pipeline.receivers.refusals import Refusal

SCOPE_NAME = "worldline.receivers.remote_write"
# the NaN bit pattern Prometheus writes to mark a series as stale
STALE_NAN_BITS = 0x7FF0000000000002
RESOURCE_LABELS = {"job": "service.name", "instance": "service.instance.id"}
POD_LABELS = {"pod": "k8s.pod.name", "namespace": "k8s.namespace.name"}
"""Labels naming the pod a series is about, and the resource attributes they become."""


def is_stale_marker(value: float) -> bool:
    return struct.unpack("<Q", struct.pack("<d", value))[0] == STALE_NAN_BITS


def decode_write_request(body: bytes) -> Any:
    try:
        return protos.WriteRequest.FromString(body)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise Refusal(
            400, "remote_write_decode_error", f"not a prometheus.WriteRequest: {e}"
        ) from None


@dataclass
class Translation:
    request: ExportMetricsServiceRequest
    samples: int
    series_without_name: int


def to_otlp_metrics(write_request: Any) -> Translation:
    """One ResourceMetrics per (job, instance) and pod, one gauge per metric name within it."""
    export = ExportMetricsServiceRequest()
    resources: dict[tuple[str, str, str, str], Any] = {}
    gauges: dict[tuple[str, str, str, str, str], Any] = {}
    samples = 0
    without_name = 0
    for series in write_request.timeseries:
        labels = {label.name: label.value for label in series.labels}
        name = labels.pop("__name__", "")
        if not name:
            without_name += 1
            continue
        job = labels.pop("job", "")
        instance = labels.pop("instance", "")
        pod = labels.pop("pod", "") if labels.get("pod") else ""
        namespace = labels.pop("namespace", "") if pod else ""
        resource_key = (job, instance, pod, namespace)
        scope_metrics = resources.get(resource_key)
        if scope_metrics is None:
            resource_metrics = export.resource_metrics.add()
            if pod:
                attributes = {
                    "service.name": workload_of_pod(pod),
                    "service.instance.id": instance,
                    POD_LABELS["pod"]: pod,
                    POD_LABELS["namespace"]: namespace,
                    "job": job,
                }
            else:
                attributes = {RESOURCE_LABELS["job"]: job, RESOURCE_LABELS["instance"]: instance}
            for key, value in attributes.items():
                if value:
                    attribute = resource_metrics.resource.attributes.add(key=key)
                    attribute.value.string_value = value
            scope_metrics = resource_metrics.scope_metrics.add()
            scope_metrics.scope.name = SCOPE_NAME
            resources[resource_key] = scope_metrics
        gauge = gauges.get((*resource_key, name))
        if gauge is None:
            metric = scope_metrics.metrics.add(name=name)
            gauge = metric.gauge
            gauges[(*resource_key, name)] = gauge
        for sample in series.samples:
            point = gauge.data_points.add(time_unix_nano=max(0, sample.timestamp) * 1_000_000)
            if is_stale_marker(sample.value):
                point.flags = DataPointFlags.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK
            else:
                point.as_double = sample.value
            for key, value in labels.items():
                attribute = point.attributes.add(key=key)
                attribute.value.string_value = value
            samples += 1
    return Translation(export, samples, without_name)
