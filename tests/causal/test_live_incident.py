"""A live incident through the whole platform, every component real, all on 127.0.0.1.

Three services simulated in this process with the OpenTelemetry SDK (front -> checkout ->
payments, client spans naming their peer, server spans parented across services) send traces to
the receiver over OTLP/HTTP; Debian's Prometheus scrapes their metrics from a tiny /metrics
endpoint served here and remote-writes them to the receiver. The platform runs as processes
(receiver, ingest-spans/metrics/logs, world-model, causal-search) on the session's embedded
broker with its own topics and data dir, at a one-second event-time interval. After a normal
period long enough for the baselines to warm up, payments becomes ten times slower; an
Alertmanager webhook about front's latency follows, and the first causes.ranked record of its
fingerprint must name payments, with the model holding the data up to the alert's startsAt.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import http.client
import math
import random
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest

import schemas
from jobs.causal.search import SearchConfig
from pipeline import kafka, topics
from pipeline.cli import ALL_STAGES
from pipeline.platform import Platform
from pipeline.segments.store import SegmentStore
from pipeline.settings import Settings
from pipeline.worldmodel.worker import checkpoint_path

pytestmark = [pytest.mark.integration, pytest.mark.slow]

pytest.importorskip("opentelemetry.sdk.trace", reason="opentelemetry-sdk not installed")
pytest.importorskip(
    "opentelemetry.exporter.otlp.proto.http",
    reason="opentelemetry-exporter-otlp-proto-http not installed",
)

SEED = 20261120
INTERVAL_S = 1.0  # event-time interval of every derived signal and baseline (the minimum)
ANSWER_WAIT_S = 20.0  # how long the alert's first answer may wait for its data
ANSWER_MARGIN_S = 10.0  # consumer start, a checkpoint write, the search itself
# normal traffic before the fault: the search trusts a series' scores from its
# ``warmup_intervals``-th interval on, and the alerted signal needs at least that much history
# not to be a cold start; twice that, plus the platform's ingest delay, leaves room to spare
NORMAL_INTERVALS = 2 * SearchConfig().warmup_intervals + 10
ALERT_AFTER_INTERVALS = 3  # the alert's startsAt: this many intervals after the fault began
REQUESTS_PER_S = 25.0
SLOWDOWN = 10.0  # the fault: payments' server spans take this many times as long
SERVICES = ("front", "checkout", "payments")
# own work of each service per request, in ms (median of a log-normal)
OWN_MS = {"front": 5.0, "checkout": 10.0, "payments": 20.0}
JITTER = 0.15  # sigma of the log-normal


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _iso(t_s: float) -> str:
    return (
        dt.datetime.fromtimestamp(t_s, tz=dt.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def _parse_iso(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# --------------------------------------------------------------------------- the services


class Services:
    """front -> checkout -> payments, one TracerProvider (resource service.name) per service,
    driven by a background thread at a steady request rate; ``fault`` slows payments down.

    Spans carry explicit start and end times (no sleeping inside a request), so the load is
    steady whatever the machine. The same requests feed the per-service numbers the /metrics
    endpoint exposes."""

    def __init__(self, receiver_url: str, seed: int) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.id_generator import IdGenerator

        ids = random.Random(seed + 1)

        class SeededIds(IdGenerator):
            def generate_span_id(self) -> int:
                return ids.getrandbits(64) or 1

            def generate_trace_id(self) -> int:
                return ids.getrandbits(128) or 1

        self.random = random.Random(seed)
        self.providers: dict[str, TracerProvider] = {}
        self.tracers: dict[str, Any] = {}
        for service in SERVICES:
            provider = TracerProvider(
                resource=Resource.create({"service.name": service, "service.version": "1.0.0"}),
                id_generator=SeededIds(),
            )
            provider.add_span_processor(
                BatchSpanProcessor(
                    OTLPSpanExporter(endpoint=f"{receiver_url}/v1/traces", timeout=10),
                    schedule_delay_millis=200,
                    max_export_batch_size=1024,
                )
            )
            self.providers[service] = provider
            self.tracers[service] = provider.get_tracer("worldline.tests.live")
        self.fault = threading.Event()
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.requests_total = dict.fromkeys(SERVICES, 0)
        self.recent: dict[str, deque[tuple[float, float]]] = {s: deque() for s in SERVICES}
        self.sent = 0
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, name="live-load", daemon=True)

    def start(self) -> Services:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(10)
        for provider in self.providers.values():
            provider.shutdown()

    def _own_ns(self, service: str) -> int:
        ms = OWN_MS[service] * math.exp(self.random.gauss(0.0, JITTER))
        if service == "payments" and self.fault.is_set():
            ms *= SLOWDOWN
        return int(ms * 1e6)

    def _run(self) -> None:
        period = 1.0 / REQUESTS_PER_S
        next_at = time.monotonic()
        while not self.stopping.is_set():
            try:
                self.request()
            except BaseException as e:  # surfaced by the test, never swallowed
                self.errors.append(e)
                return
            next_at += period
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_at = time.monotonic()

    def request(self) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind

        own = {s: self._own_ns(s) for s in SERVICES}
        hop = 300_000  # network time of a call, each way
        pay = own["payments"]
        checkout = own["checkout"] + 2 * hop + pay
        front = own["front"] + 2 * hop + checkout
        t0 = time.time_ns()
        front_tracer = self.tracers["front"]
        checkout_tracer = self.tracers["checkout"]
        payments_tracer = self.tracers["payments"]

        root = front_tracer.start_span(
            "GET /buy",
            kind=SpanKind.SERVER,
            start_time=t0,
            attributes={"http.request.method": "GET", "http.route": "/buy"},
        )
        call_checkout = front_tracer.start_span(
            "POST /checkout",
            context=trace.set_span_in_context(root),
            kind=SpanKind.CLIENT,
            start_time=t0 + own["front"] // 2,
            attributes={"peer.service": "checkout", "http.request.method": "POST"},
        )
        c0 = t0 + own["front"] // 2 + hop
        serve_checkout = checkout_tracer.start_span(
            "POST /checkout",
            context=trace.set_span_in_context(call_checkout),
            kind=SpanKind.SERVER,
            start_time=c0,
            attributes={"http.request.method": "POST", "http.route": "/checkout"},
        )
        call_payments = checkout_tracer.start_span(
            "POST /charge",
            context=trace.set_span_in_context(serve_checkout),
            kind=SpanKind.CLIENT,
            start_time=c0 + own["checkout"] // 2,
            attributes={"peer.service": "payments", "http.request.method": "POST"},
        )
        p0 = c0 + own["checkout"] // 2 + hop
        serve_payments = payments_tracer.start_span(
            "POST /charge",
            context=trace.set_span_in_context(call_payments),
            kind=SpanKind.SERVER,
            start_time=p0,
            attributes={"http.request.method": "POST", "http.route": "/charge"},
        )
        serve_payments.end(end_time=p0 + pay)
        call_payments.end(end_time=p0 + pay + hop)
        serve_checkout.end(end_time=c0 + checkout - 2 * hop)
        call_checkout.end(end_time=c0 + checkout - hop)
        root.end(end_time=t0 + front)

        now = time.monotonic()
        with self.lock:
            for service, duration_ns in (
                ("front", front),
                ("checkout", checkout - 2 * hop),
                ("payments", pay),
            ):
                self.requests_total[service] += 1
                window = self.recent[service]
                window.append((now, duration_ns / 1e9))
                while window and window[0][0] < now - 1.0:
                    window.popleft()
            self.sent += 1

    def exposition(self) -> bytes:
        """Prometheus text exposition (0.0.4): per service, a request counter and the mean
        request duration over the last second, labelled with the service as ``job``."""
        lines = [
            "# HELP live_requests_total Requests served.",
            "# TYPE live_requests_total counter",
        ]
        with self.lock:
            totals = dict(self.requests_total)
            means = {
                s: (sum(d for _, d in w) / len(w) if w else 0.0) for s, w in self.recent.items()
            }
        lines += [f'live_requests_total{{job="{s}"}} {totals[s]}' for s in SERVICES]
        lines += [
            "# HELP live_request_duration_seconds Mean request duration over the last second.",
            "# TYPE live_request_duration_seconds gauge",
        ]
        lines += [f'live_request_duration_seconds{{job="{s}"}} {means[s]!r}' for s in SERVICES]
        return ("\n".join(lines) + "\n").encode()


@contextlib.contextmanager
def metrics_endpoint(services: Services) -> Iterator[int]:
    """Serve ``services.exposition()`` at http://127.0.0.1:<port>/metrics."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404)
                return
            body = services.exposition()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="live-metrics", daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextlib.contextmanager
def prometheus(binary: str, tmp: Path, target_port: int, receiver_port: int) -> Iterator[Path]:
    """Debian's Prometheus scraping the services every second, remote-writing to worldline."""
    config = tmp / "prometheus.yml"
    config.write_text(
        f"""
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: live-services
    honor_labels: true
    static_configs:
      - targets: ["127.0.0.1:{target_port}"]
remote_write:
  - url: http://127.0.0.1:{receiver_port}/api/v1/write
    queue_config:
      batch_send_deadline: 1s
      min_backoff: 100ms
      max_backoff: 1s
"""
    )
    log = tmp / "prometheus.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{_free_port()}",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield log
        assert process.poll() is None, f"prometheus exited: {log.read_text()[-2000:]}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


# --------------------------------------------------------------------------- the platform


def _settings(bootstrap: str, data_dir: Path, http_port: int) -> Settings:
    """Settings of an isolated platform: its own topics and data dir, a short interval."""
    suffix = uuid.uuid4().hex[:8]
    return Settings(
        bootstrap_servers=bootstrap,
        data_dir=data_dir,
        http_port=http_port,
        topics={t.name: f"live-{suffix}-{t.name}" for t in topics.REGISTRY},
        interval_s=INTERVAL_S,
        segment_max_seconds=1.0,
        checkpoint_every_s=1.0,
        answer_wait_s=ANSWER_WAIT_S,
        log_level="INFO",
    )


def _stage_logs(platform: Platform) -> str:
    logs = Path(platform.settings.data_dir) / "logs"
    parts = []
    for path in sorted(logs.glob("*.log")):
        parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-1500:]}")
    return "\n".join(parts)


def _check_alive(platform: Platform) -> None:
    crashed = platform.supervisor.exited() if platform.supervisor else []
    assert not crashed, f"stage {crashed[0].stage} exited\n{_stage_logs(platform)}"


def _http(port: int, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _wait_receiver(platform: Platform, port: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _check_alive(platform)
        with contextlib.suppress(OSError):
            status, _ = _http(port, "GET", "/healthz")
            if status == 200:
                return
        time.sleep(0.2)
    raise AssertionError(f"the receiver never answered on {port}\n{_stage_logs(platform)}")


def _model_state(store: SegmentStore) -> dict[str, Any]:
    """What the world model's last checkpoint holds (for progress checks and failures)."""
    from pipeline.worldmodel.model import WorldModel

    path = checkpoint_path(store)
    if not path.exists():
        return {}
    model = WorldModel.restore(path.read_bytes())
    # intervals close only ``allowed_lateness_s`` behind the data, so early on the spans are
    # still buffered (the search closes them as they stand, on a copy)
    buffered = set() if model.spans is None else set(model.spans.column("service").to_pylist())
    return {
        "applied": dict(model.applied),
        "watermark_s": model.watermark / 1e9,
        "closed_through_s": model.closed_through / 1e9,
        "series": len(model.baselines.keys()),
        "services": sorted(buffered | {e.split(":", 1)[1] for e, _ in model.baselines.keys()}),
    }


async def _first_answer(
    bootstrap: str, topic: str, fingerprint: str, timeout_s: float
) -> tuple[dict[str, Any] | None, float]:
    """The first causes.ranked record naming ``fingerprint`` and when it was read (monotonic)."""
    # returning from inside the loop leaves the tail open: asyncio.run closes it on the way out
    async for record in kafka.tail(
        bootstrap, topic, from_beginning=True, limit=None, idle_timeout_s=timeout_s
    ):
        doc: dict[str, Any] = orjson.loads(record.value or b"{}")
        if fingerprint in doc.get("alert_fingerprints", []):
            return doc, time.monotonic()
    return None, time.monotonic()


def _webhook(fingerprint: str, starts_at_s: float) -> dict[str, Any]:
    labels = {"alertname": "FrontLatencyHigh", "service": "front", "severity": "page"}
    annotations = {"summary": "front p95 latency above 100 ms"}
    return {
        "version": "4",
        "groupKey": '{}:{alertname="FrontLatencyHigh"}',
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "worldline",
        "groupLabels": {"alertname": "FrontLatencyHigh"},
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": "http://127.0.0.1:9093",
        "alerts": [
            {
                "status": "firing",
                "labels": labels,
                "annotations": annotations,
                "startsAt": _iso(starts_at_s),
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://127.0.0.1:9090/graph?g0.expr=front_latency_p95",
                "fingerprint": fingerprint,
            }
        ],
    }


def _excerpt(record: dict[str, Any]) -> str:
    keep = (
        "coverage",
        "symptoms",
        "abstained",
        "abstain_reason",
        "separating_evidence",
        "causes",
        "ruled_out",
        "stats",
    )
    return orjson.dumps(
        {k: record.get(k) for k in keep}, option=orjson.OPT_INDENT_2, default=str
    ).decode()


# --------------------------------------------------------------------------- the test


def test_live_incident_names_the_slow_dependency(bootstrap: str, tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip(
            "prometheus binary not found on PATH: install Debian's package"
            " (apt-get install -y --no-install-recommends prometheus), as .ci/run does"
        )
    started = time.monotonic()
    receiver_port = _free_port()
    settings = _settings(bootstrap, tmp_path / "worldline-data", receiver_port)
    store = SegmentStore(Path(settings.data_dir) / "segments")
    receiver_url = f"http://127.0.0.1:{receiver_port}"
    fingerprint = uuid.uuid4().hex[:16]

    with contextlib.ExitStack() as stack:
        platform = stack.enter_context(Platform(settings, stages=list(ALL_STAGES)))
        _wait_receiver(platform, receiver_port)
        services = Services(receiver_url, SEED)
        stack.callback(services.stop)
        port = stack.enter_context(metrics_endpoint(services))
        prometheus_log = stack.enter_context(prometheus(binary, tmp_path, port, receiver_port))
        load_started = time.time()
        services.start()

        # the normal period: the model must be taking it in as it goes
        fault_at = load_started + NORMAL_INTERVALS * INTERVAL_S
        state: dict[str, Any] = {}
        while time.time() < fault_at:
            _check_alive(platform)
            assert not services.errors, services.errors
            time.sleep(1.0)
            with contextlib.suppress(OSError, ValueError):
                state = _model_state(store)
        assert state.get("watermark_s", 0) > load_started, (
            f"the world model holds no data of the normal period: {state}\n{_stage_logs(platform)}"
        )
        assert set(SERVICES) <= set(state["services"]), state
        assert any(k.split("/", 1)[0].split("@")[0] == "metrics" for k in state["applied"]), (
            f"no Prometheus data reached the world model: {state}\n"
            f"{prometheus_log.read_text()[-2000:]}\n{_stage_logs(platform)}"
        )
        normal_s = time.time() - load_started

        # the fault: payments slows down; the load goes on
        services.fault.set()
        fault_began = time.time()
        starts_at = fault_began + ALERT_AFTER_INTERVALS * INTERVAL_S
        time.sleep(max(0.0, starts_at - time.time()))
        payload = orjson.dumps(_webhook(fingerprint, starts_at))
        posted = time.monotonic()
        status, body = _http(receiver_port, "POST", "/alertmanager/webhook", payload)
        assert status == 200, body

        budget = INTERVAL_S + ANSWER_WAIT_S + ANSWER_MARGIN_S
        record, read_at = asyncio.run(
            _first_answer(bootstrap, settings.topic("causes.ranked"), fingerprint, budget + 30)
        )
        _check_alive(platform)
        assert not services.errors, services.errors
        logs = _stage_logs(platform)
        sent = services.sent

    elapsed = read_at - posted
    assert record is not None, f"no causes.ranked record for {fingerprint}\n{logs}"
    print(
        f"\nlive incident: {sent} requests, normal {normal_s:.1f} s, answer after"
        f" {elapsed:.1f} s, whole test {time.monotonic() - started:.1f} s\n{_excerpt(record)}"
    )
    schemas.validate("causes.ranked.schema.json", record)
    excerpt = _excerpt(record)
    assert record["alert_fingerprints"] == [fingerprint]
    assert elapsed <= budget, f"the answer took {elapsed:.1f} s (budget {budget:.0f} s)"

    coverage = record["coverage"]
    assert abs(_parse_iso(coverage["alert_at"]) - starts_at) < 0.002, excerpt
    assert coverage["complete"] is True, (
        f"the model did not hold the data up to startsAt\n{excerpt}"
    )

    fronts = [s for s in record["symptoms"] if s["entity"] == {"kind": "service", "name": "front"}]
    assert fronts, f"the alert was not mapped to service front\n{excerpt}"
    assert all(s["onset"] is not None for s in fronts), (
        f"the alerted signal shows no onset: the incident's data was not seen\n{excerpt}"
    )
    onset = _parse_iso(fronts[0]["onset"])
    assert fault_began - 2 * INTERVAL_S <= onset <= starts_at + INTERVAL_S, (
        f"symptom onset {fronts[0]['onset']} is not when the fault began ({_iso(fault_began)})"
        f"\n{excerpt}"
    )

    assert record["causes"], f"no cause named\n{excerpt}"
    top = record["causes"][0]
    assert top["entity"]["name"] == "payments", f"the first cause is not payments\n{excerpt}"
    # its evidence is the incident's own: payments' latency (or its callers' view of it),
    # which began deviating with the fault, not a series that already sat at the score cap
    lead = top["evidence"][0]
    assert "latency" in lead["signal"] or "duration" in lead["signal"], excerpt
    described = lead["entity"]["name"]
    assert (
        described == "payments"
        or described.startswith("payments ")
        or "peer=payments" in lead["signal"]
    ), excerpt
    began = _parse_iso(lead["onset"])
    assert fault_began - 2 * INTERVAL_S <= began <= starts_at + INTERVAL_S, excerpt
    assert not any(
        "_bucket" in e.get("signal", "") or "le=" in e.get("signal", "")
        for c in record["causes"]
        for e in c["evidence"]
    ), f"a histogram bucket ranked as a series of its own\n{excerpt}"
    assert record["stats"].get("cold_start") == 0, (
        f"the normal period was too short for the baselines to warm up\n{excerpt}"
    )
