"""Prometheus remote_write 1.0 into OTLP metrics.

Follows the OpenTelemetry Prometheus compatibility rules that apply to remote_write data:
``__name__`` is the metric name, ``job`` and ``instance`` become the resource attributes
``service.name`` and ``service.instance.id`` (series sharing both share a resource), every other
label is a data point attribute. remote_write 1.0 carries no metric types, so every sample is a
gauge point under its original name (``*_total`` names are recognised as counters downstream).
Prometheus staleness markers become points flagged ``FLAG_NO_RECORDED_VALUE``.
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

from pipeline.receivers import protos
from pipeline.receivers.refusals import Refusal

SCOPE_NAME = "worldline.receivers.remote_write"
# the NaN bit pattern Prometheus writes to mark a series as stale
STALE_NAN_BITS = 0x7FF0000000000002
RESOURCE_LABELS = {"job": "service.name", "instance": "service.instance.id"}


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
    """One ResourceMetrics per (job, instance), one gauge per metric name within it."""
    export = ExportMetricsServiceRequest()
    resources: dict[tuple[str, str], Any] = {}
    gauges: dict[tuple[str, str, str], Any] = {}
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
        scope_metrics = resources.get((job, instance))
        if scope_metrics is None:
            resource_metrics = export.resource_metrics.add()
            for label, value in (("job", job), ("instance", instance)):
                if value:
                    attribute = resource_metrics.resource.attributes.add(key=RESOURCE_LABELS[label])
                    attribute.value.string_value = value
            scope_metrics = resource_metrics.scope_metrics.add()
            scope_metrics.scope.name = SCOPE_NAME
            resources[(job, instance)] = scope_metrics
        gauge = gauges.get((job, instance, name))
        if gauge is None:
            metric = scope_metrics.metrics.add(name=name)
            gauge = metric.gauge
            gauges[(job, instance, name)] = gauge
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
