"""A new-series storm through `worldline up`: RSS per stage and per series, against the caps.

Starts the platform as users do (`worldline up`, embedded broker, every stage, a temporary data
directory, 127.0.0.1 on free ports) with the series caps set below the storm, then sends N
(default 1,000,000) series never seen before, one sample each, half by Prometheus remote_write
and half by OTLP/HTTP metrics, in requests of 2,000 series (Prometheus' `max_samples_per_send`)
at a steady pace. A handful of steady series are sent every few seconds throughout, as the
system's normal telemetry. Every second the resident set size (RSS, psutil) of each process is
sampled; once ingest-metrics has read up to the storm's last record and the world model has
closed the storm's intervals (its allowed lateness is set to 10 s so that this comes a minute
after the storm rather than two), it prints per process the RSS before the storm, its peak, after it, and
the growth per series sent, then the world model's sizes against their caps and every drop
counted on `/metrics` by reason.

    .venv/bin/python benchmarks/bench_series_storm.py                 # 1M series (about 5 min on 2 cores)
    .venv/bin/python benchmarks/bench_series_storm.py --series 100000 --cap 20000

The reference in the same run is the RSS before the storm: a stage whose state per series is
bounded by its caps grows by a bounded amount (its cap times its state per series) however
many series arrive, so its growth per series sent shrinks as N grows.
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cramjam
import orjson
import psutil
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from prometheus_client.parser import text_string_to_metric_families

from pipeline.broker import free_port
from pipeline.receivers import protos
from pipeline.testing import kv

REPO = Path(__file__).resolve().parents[1]
SERIES_PER_REQUEST = 2_000
STEADY_SERVICES = 5
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def http_call(port: int, method: str, path: str, body: bytes = b"", headers: Any = None) -> bytes:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(method, path, body=body or None, headers=headers or {})
        response = connection.getresponse()
        data = response.read()
        if response.status >= 300:
            raise RuntimeError(f"{method} {path}: {response.status} {data[:200]!r}")
        return data
    finally:
        connection.close()


def scrape(port: int) -> Samples:
    out: Samples = {}
    text = http_call(port, "GET", "/metrics").decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    """Values of metric ``name`` keyed by its ``label`` (summed over its other labels)."""
    out: dict[str, float] = {}
    for (n, labels), v in samples.items():
        if n == name:
            key = dict(labels).get(label, "")
            out[key] = out.get(key, 0.0) + v
    return out


def partition_values(samples: Samples, name: str, topic: str) -> dict[str, float]:
    """Values of ``name`` for each partition of the registry topic ``topic``."""
    return {
        dict(labels)["partition"]: v
        for (n, labels), v in samples.items()
        if n == name and dict(labels).get("topic") == topic
    }


def remote_write_body(first: int, count: int, t_ms: int) -> bytes:
    """``count`` new series: half gauges, half counters (``*_total``), spread over 20 jobs."""
    request = protos.WriteRequest()
    for n in range(first, first + count):
        series = request.timeseries.add()
        name = "storm_requests_total" if n % 2 else "storm_queue_depth"
        for label, value in (
            ("__name__", name),
            ("job", f"storm-{n % 20}"),
            ("instance", "10.0.0.1:9100"),
            ("user_id", str(n)),
        ):
            series.labels.add(name=label, value=value)
        series.samples.add(value=float(n % 97), timestamp=t_ms)
    return bytes(cramjam.snappy.compress_raw(request.SerializeToString()))


def otlp_body(first: int, count: int, t_ns: int) -> bytes:
    """``count`` new series as OTLP: gauge points, each with its own ``user.id`` attribute."""
    request = ExportMetricsServiceRequest()
    rm = request.resource_metrics.add()
    rm.resource.attributes.extend([kv("service.name", f"storm-otlp-{first % 7}")])
    metric = rm.scope_metrics.add().metrics.add(name="storm.session.bytes", unit="By")
    for n in range(first, first + count):
        point = metric.gauge.data_points.add(time_unix_nano=t_ns, as_double=float(n % 89))
        point.attributes.append(kv("user.id", str(n)))
    return request.SerializeToString()


def steady_body(t_ns: int, rng: random.Random) -> bytes:
    """The system's normal telemetry: one CPU gauge per service."""
    request = ExportMetricsServiceRequest()
    for i in range(STEADY_SERVICES):
        rm = request.resource_metrics.add()
        rm.resource.attributes.extend([kv("service.name", f"steady-{i}")])
        metric = rm.scope_metrics.add().metrics.add(name="process.cpu.utilization", unit="1")
        metric.gauge.data_points.add(time_unix_nano=t_ns, as_double=0.2 + 0.05 * rng.random())
    return request.SerializeToString()


class RssSampler:
    """Samples the RSS of every process once a second from a thread; keeps each one's peak."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> dict[str, int]:
        out = {}
        for name, proc in self.procs.items():
            try:
                out[name] = proc.memory_info().rss
            except psutil.NoSuchProcess:
                out[name] = 0
        for name, value in out.items():
            self.peak[name] = max(self.peak.get(name, 0), value)
        return out

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self.rss()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def wait_for(what: str, ok: Callable[[], bool], timeout_s: float, proc: Any) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"worldline up exited ({proc.returncode}) before {what}")
        try:
            if ok():
                return
        except (OSError, RuntimeError, KeyError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"not {what} within {timeout_s:g} s")
        time.sleep(1.0)


def mb(n: float) -> str:
    return f"{n / 2**20:8.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--series", type=int, default=1_000_000, help="new series to send")
    parser.add_argument(
        "--cap", type=int, default=50_000, help="world_model.max_series (series with a baseline)"
    )
    parser.add_argument(
        "--rate", type=float, default=10_000, help="series per second sent (0: as fast as taken)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    args = parser.parse_args()
    if args.series % SERIES_PER_REQUEST:
        parser.error(f"--series must be a multiple of {SERIES_PER_REQUEST}")

    data_dir = Path(tempfile.mkdtemp(prefix="worldline-storm-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORLDLINE_")}
    env.update(
        WORLDLINE_DATA_DIR=str(data_dir),
        WORLDLINE_HTTP_PORT=str(port),
        WORLDLINE_MONITOR_EVERY_S="2",
        WORLDLINE_WORLD_MODEL_MAX_SERIES=str(args.cap),
        # the storm's last interval closes soon after the storm instead of a minute later
        WORLDLINE_WORLD_MODEL_ALLOWED_LATENESS_S="10",
    )
    up = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "up", "--status-every", "0"],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    rng = random.Random(7)
    stop_steady = threading.Event()
    measured = False
    try:
        stages_path = data_dir / "runtime" / "stages.json"
        wait_for(
            "healthy",
            lambda: orjson.loads(http_call(port, "GET", "/healthz"))["status"] == "ok",
            120,
            up,
        )
        stages = orjson.loads(stages_path.read_bytes())["stages"]
        pids = {name: int(s["pid"]) for name, s in stages.items()}
        pids["up"] = up.pid
        # the embedded broker: the child of `up` that is no stage
        [broker] = [c for c in psutil.Process(up.pid).children() if c.pid not in pids.values()]
        pids["broker"] = broker.pid
        sampler = RssSampler(pids)

        def steady() -> None:
            while not stop_steady.wait(2.0):
                try:
                    body = steady_body(time.time_ns(), rng)
                    http_call(port, "POST", "/v1/metrics", body, _PROTOBUF)
                except (OSError, RuntimeError) as e:
                    print(f"steady series not sent: {e}", file=sys.stderr)

        steady_thread = threading.Thread(target=steady, daemon=True)
        steady_thread.start()
        time.sleep(20)  # the steady series are known and every stage has warmed up
        before = sampler.rss()
        sampler.start()

        print(
            f"storm: {args.series:,} new series, {SERIES_PER_REQUEST:,} per request,"
            f" {'unpaced' if not args.rate else f'{args.rate:,.0f} series/s'};"
            f" world_model.max_series={args.cap:,}",
            flush=True,
        )
        started = time.monotonic()
        requests = args.series // SERIES_PER_REQUEST
        for i in range(requests):
            first = i * SERIES_PER_REQUEST
            if i % 2 == 0:
                body = remote_write_body(first, SERIES_PER_REQUEST, time.time_ns() // 1_000_000)
                http_call(port, "POST", "/api/v1/write", body, _REMOTE_WRITE)
            else:
                body = otlp_body(first, SERIES_PER_REQUEST, time.time_ns())
                http_call(port, "POST", "/v1/metrics", body, _PROTOBUF)
            if args.rate:
                due = started + (first + SERIES_PER_REQUEST) / args.rate
                time.sleep(max(0.0, due - time.monotonic()))
            if (i + 1) % 50 == 0:
                print(f"  {first + SERIES_PER_REQUEST:>9,} sent", flush=True)
        sent_s = time.monotonic() - started
        storm_end_s = time.time()
        print(
            f"sent in {sent_s:.0f} s ({args.series / sent_s:,.0f} series/s); waiting for"
            " every stage to read it and the world model to close its intervals",
            flush=True,
        )

        # the telemetry topic's high-water marks once the storm is in (read by the HTTP server
        # every monitor_every_s): ingest-metrics must read up to them
        time.sleep(3)
        storm_marks = partition_values(scrape(port), "worldline_topic_high_water", "otlp_metrics")
        last_report = [time.monotonic()]

        def settled() -> bool:
            restarted = {
                name: state["restarts"]
                for name, state in orjson.loads(stages_path.read_bytes())["stages"].items()
                if state["restarts"]
            }
            if restarted:  # a crash loop is no measurement
                raise SystemExit(f"stages restarted {restarted}: see {data_dir / 'logs'}")
            samples = scrape(port)
            committed = partition_values(
                samples, "worldline_consumer_committed_offset", "otlp_metrics"
            )
            short = sum(max(0.0, v - committed.get(p, 0.0)) for p, v in storm_marks.items())
            watermark = by_label(samples, "worldline_model_watermark_seconds", "").get("", 0)
            closes_at = storm_end_s + 60 + 10  # interval_s + allowed lateness after the storm
            if time.monotonic() - last_report[0] > 15:
                last_report[0] = time.monotonic()
                print(
                    f"  ingest-metrics {short:.0f} records short of the storm's end, world model"
                    f" {max(0.0, closes_at - watermark):.0f} s short of closing it",
                    flush=True,
                )
            return short == 0 and watermark >= closes_at

        wait_for("settled", settled, 1800, up)
        time.sleep(5)
        settle_s = time.monotonic() - started - sent_s
        after = sampler.rss()
        sampler.stop()
        samples = scrape(port)
        measured = True
        # after the RSS readings: answering it loads the model into the HTTP server
        learned = {}
        for i in range(STEADY_SERVICES):
            query = f"entity=service:steady-{i}&signal=process.cpu.utilization"
            answer = orjson.loads(http_call(port, "GET", f"/api/v1/model/baseline?{query}"))
            learned[f"steady-{i}"] = answer["intervals_learned"]
    finally:
        stop_steady.set()
        up.send_signal(signal.SIGTERM)
        try:
            _, stderr = up.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            up.kill()
            _, stderr = up.communicate()
        if up.returncode not in (0, None) and stderr:
            print(stderr[-2000:], file=sys.stderr)
        if measured and not args.keep:
            subprocess.run(["rm", "-rf", str(data_dir)], check=False)
        else:
            print(f"data directory kept: {data_dir}")

    print(f"\nsettled {settle_s:.0f} s after the last request\n")
    print(f"{'process':<16} {'RSS before':>10} {'peak':>10} {'after':>10}  {'after-before':>12}")
    print(f"{'':<16} {'MiB':>10} {'MiB':>10} {'MiB':>10}  {'B/series':>12}")
    for name in pids:
        grown = after[name] - before[name]
        print(
            f"{name:<16} {mb(before[name]):>10} {mb(sampler.peak[name]):>10}"
            f" {mb(after[name]):>10}  {grown / args.series:>12.1f}"
        )
    total_before, total_after = sum(before.values()), sum(after.values())
    print(
        f"{'all':<16} {mb(total_before):>10} {'':>10} {mb(total_after):>10}"
        f"  {(total_after - total_before) / args.series:>12.1f}"
    )

    print("\nkept against their caps (/metrics worldline_model_size / worldline_model_cap):")
    sizes = by_label(samples, "worldline_model_size", "kind")
    caps = by_label(samples, "worldline_model_cap", "kind")
    for kind in sorted(sizes):
        print(f"  {kind:<22} {sizes[kind]:>12,.0f} / {caps.get(kind, 0):>12,.0f}")
    splits = by_label(samples, "worldline_ingest_item_cap_splits_total", "stage")
    print(
        "\nbatches ingest-metrics sealed in parts at segment_max_items"
        f" (worldline_ingest_item_cap_splits_total): {splits.get('ingest-metrics', 0):,.0f}"
    )
    for family, label in (
        ("worldline_model_dropped", "reason"),
        ("worldline_http_refused_total", "reason"),
        ("worldline_deadletters_total", "reason"),
    ):
        counted = {k: v for k, v in by_label(samples, family, label).items() if v}
        print(f"\n{family} by {label}:" + ("" if counted else " none"))
        for reason, n in sorted(counted.items()):
            print(f"  {reason:<34} {n:>12,.0f}")
    print(
        f"\nthe steady series keep their baselines through the storm (intervals learned): {learned}"
    )
    stored = by_label(samples, "worldline_items_stored_total", "stage")
    print(
        f"\nmetric points stored in segments (worldline_items_stored_total):"
        f" {stored.get('ingest-metrics', 0):,.0f} (the storm's {args.series:,} and the steady"
        " series')"
    )


_PROTOBUF = {"Content-Type": "application/x-protobuf"}
_REMOTE_WRITE = {
    "Content-Type": "application/x-protobuf",
    "Content-Encoding": "snappy",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
}

if __name__ == "__main__":
    main()
