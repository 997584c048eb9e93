"""Prometheus remote_write 1.0 into OTLP metrics, with hand-built requests and with Debian's Prometheus."""

from __future__ import annotations

import math
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import cramjam
import pytest
from conftest import RECEIVER_RECORD_LIMIT, ReceiverHarness

from pipeline import otlp
from pipeline.receivers import protos
from pipeline.receivers.otlp_export import METRICS
from pipeline.receivers.remote_write import SCOPE_NAME, STALE_NAN_BITS

pytestmark = pytest.mark.integration

HEADERS = {
    "Content-Type": "application/x-protobuf",
    "Content-Encoding": "snappy",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
}
STALE_NAN = struct.unpack("<d", struct.pack("<Q", STALE_NAN_BITS))[0]


def write_request(series: list[tuple[dict[str, str], list[tuple[float, int]]]]) -> bytes:
    request = protos.WriteRequest()
    for labels, samples in series:
        entry = request.timeseries.add()
        for name, label_value in sorted(labels.items()):
            entry.labels.add(name=name, value=label_value)
        for sample_value, timestamp_ms in samples:
            entry.samples.add(value=sample_value, timestamp=timestamp_ms)
    return bytes(cramjam.snappy.compress_raw(request.SerializeToString()))


def attributes(message: Any) -> dict[str, str]:
    return {kv.key: kv.value.string_value for kv in message.attributes}


def test_series_become_gauges_grouped_by_job_and_instance(receiver: ReceiverHarness) -> None:
    body = write_request(
        [
            (
                {
                    "__name__": "http_requests_total",
                    "job": "api",
                    "instance": "10.0.0.1:80",
                    "code": "200",
                },
                [(10.0, 1_700_000_000_000), (12.0, 1_700_000_015_000)],
            ),
            (
                {
                    "__name__": "http_requests_total",
                    "job": "api",
                    "instance": "10.0.0.1:80",
                    "code": "500",
                },
                [(1.0, 1_700_000_000_000)],
            ),
            (
                {"__name__": "up", "job": "db", "instance": "10.0.0.2:5432"},
                [(STALE_NAN, 1_700_000_030_000)],
            ),
            ({"job": "nameless"}, [(1.0, 1_700_000_000_000)]),
        ]
    )
    answer = receiver.post("/api/v1/write", body, HEADERS)
    assert answer.status == 204, answer.body

    (record,) = receiver.take("otlp_metrics", 1)
    request: Any = otlp.from_proto(record.value or b"", METRICS.message_type)
    resources = {
        (attrs["service.name"], attrs["service.instance.id"]): rm
        for rm in request.resource_metrics
        for attrs in [attributes(rm.resource)]
    }
    assert set(resources) == {("api", "10.0.0.1:80"), ("db", "10.0.0.2:5432")}
    api = resources[("api", "10.0.0.1:80")].scope_metrics[0]
    assert api.scope.name == SCOPE_NAME
    (counter,) = api.metrics
    assert counter.name == "http_requests_total"
    points = [(attributes(p), p.as_double, p.time_unix_nano) for p in counter.gauge.data_points]
    assert points == [
        ({"code": "200"}, 10.0, 1_700_000_000_000_000_000),
        ({"code": "200"}, 12.0, 1_700_000_015_000_000_000),
        ({"code": "500"}, 1.0, 1_700_000_000_000_000_000),
    ]
    (stale,) = resources[("db", "10.0.0.2:5432")].scope_metrics[0].metrics[0].gauge.data_points
    assert stale.flags == 1 and not stale.HasField("as_double")
    assert receiver.health()["rejected_items"]["/api/v1/write"] >= 1  # the nameless series


def test_a_series_about_a_pod_is_that_pods_workload(receiver: ReceiverHarness) -> None:
    # cAdvisor's series come under the kubelet's job; each is about the pod its labels name
    cpu = "container_cpu_usage_seconds_total"
    body = write_request(
        [
            (
                {
                    "__name__": cpu,
                    "job": "kubelet",
                    "instance": "node-1:10250",
                    "namespace": "shop",
                    "pod": f"cartservice-{pod}",
                    "container": "server",
                },
                [(1.5, 1_700_000_000_000)],
            )
            for pod in ("579f59597d-wc2lz", "579f59597d-x8k2q")
        ]
        + [
            (
                {
                    "__name__": cpu,
                    "job": "kubelet",
                    "instance": "node-1:10250",
                    "namespace": "shop",
                    "pod": "redis-cart-0",
                    "container": "redis",
                },
                [(0.5, 1_700_000_000_000)],
            ),
            ({"__name__": "up", "job": "kubelet", "instance": "node-1:10250"}, [(1.0, 1)]),
        ]
    )
    answer = receiver.post("/api/v1/write", body, HEADERS)
    assert answer.status == 204, answer.body
    (record,) = receiver.take("otlp_metrics", 1)
    request: Any = otlp.from_proto(record.value or b"", METRICS.message_type)
    resources = [attributes(rm.resource) for rm in request.resource_metrics]
    assert sorted((r["service.name"], r.get("k8s.pod.name", "")) for r in resources) == [
        ("cartservice", "cartservice-579f59597d-wc2lz"),
        ("cartservice", "cartservice-579f59597d-x8k2q"),
        ("kubelet", ""),
        ("redis-cart", "redis-cart-0"),
    ]
    pods = [r for r in resources if "k8s.pod.name" in r]
    assert all(r["job"] == "kubelet" and r["k8s.namespace.name"] == "shop" for r in pods)
    assert all(r["service.instance.id"] == "node-1:10250" for r in pods)
    point = request.resource_metrics[0].scope_metrics[0].metrics[0].gauge.data_points[0]
    assert attributes(point) == {"container": "server"}


def test_large_remote_write_is_split_into_records(receiver: ReceiverHarness) -> None:
    series = [
        (
            {
                "__name__": f"metric_{i % 50}",
                "job": f"job{i % 3}",
                "instance": "h:1",
                "path": f"/p/{i}" * 8,
            },
            [(float(i), 1_700_000_000_000)],
        )
        for i in range(5000)
    ]
    body = write_request(series)
    wide = receiver.start_extra(max_request_bytes=4 * RECEIVER_RECORD_LIMIT)
    answer = receiver.post("/api/v1/write", body, HEADERS, port=wide.port)
    assert answer.status == 204
    records = receiver.take("otlp_metrics", 2, settle=0.5)
    assert len(records) >= 2
    assert all(len(record.value or b"") <= RECEIVER_RECORD_LIMIT for record in records)
    values = sorted(
        point.as_double
        for record in records
        for rm in otlp.from_proto(record.value or b"", METRICS.message_type).resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        for point in metric.gauge.data_points
    )
    assert values == [float(i) for i in range(5000)]


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b"\xff\xff\xff\xff\xffnot snappy", 400, "snappy_decode_error"),
        (b"\x05\x00abc", 400, "snappy_decode_error"),
        (
            bytes(cramjam.snappy.compress_raw(b"\x0a\xff\x01garbage")),
            400,
            "remote_write_decode_error",
        ),
        (b"\x80\x80\x80\x80\x01" + b"\x00" * 8, 413, "payload_too_large"),
    ],
    ids=["header", "truncated", "protobuf", "announced-size"],
)
def test_bad_remote_write_is_400_and_dead_lettered(
    receiver: ReceiverHarness, body: bytes, status: int, reason: str
) -> None:
    answer = receiver.post("/api/v1/write", body, HEADERS)
    assert answer.status == status
    assert reason in answer.body.decode()
    (letter,) = receiver.deadletters(1)
    assert (letter["reason"], letter["source"]["endpoint"]) == (reason, "/api/v1/write")
    assert receiver.take("otlp_metrics", 0, settle=0.1) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_debian_prometheus_remote_writes_into_worldline(
    receiver: ReceiverHarness, tmp_path: Path
) -> None:
    binary = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
    )
    if binary is None:
        pytest.skip(
            "prometheus binary not found: install Debian's package (apt-get install -y prometheus)"
        )
    port = _free_port()
    refused_before = receiver.health()["refused"]
    config = tmp_path / "prometheus.yml"
    config.write_text(
        f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: prometheus-self
    static_configs:
      - targets: ["127.0.0.1:{port}"]
remote_write:
  - url: http://127.0.0.1:{receiver.port}/api/v1/write
    queue_config:
      batch_send_deadline: 1s
      min_backoff: 100ms
      max_backoff: 1s
"""
    )
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        seen: dict[str, dict[str, str]] = {}
        resources: set[tuple[str, str]] = set()
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and not {"up", "prometheus_build_info"} <= set(seen):
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            for record in receiver.take("otlp_metrics", 1, timeout=2, settle=0.1):
                request: Any = otlp.from_proto(record.value or b"", METRICS.message_type)
                for rm in request.resource_metrics:
                    resource = attributes(rm.resource)
                    resources.add(
                        (resource.get("service.name", ""), resource.get("service.instance.id", ""))
                    )
                    for sm in rm.scope_metrics:
                        for metric in sm.metrics:
                            for point in metric.gauge.data_points:
                                seen[metric.name] = attributes(point) | {
                                    "value": repr(point.as_double)
                                }
        assert "up" in seen and "prometheus_build_info" in seen, f"only got {sorted(seen)[:20]}"
        assert ("prometheus-self", f"127.0.0.1:{port}") in resources
        assert seen["up"]["value"] == "1.0"
        assert seen["prometheus_build_info"]["version"].startswith("2.")
        assert not math.isnan(float(seen["up"]["value"]))
        assert receiver.health()["refused"] == refused_before, "Prometheus sent nothing we refused"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
