"""``evaluate replay-baseline``: the metric history, BARO / N-Sigma ranking and the
``causes.ranked`` record on synthetic points, then one alert answered through a real broker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from click.testing import CliRunner
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from jobs.evaluate import replay_baselines as rb
from jobs.evaluate.cli import evaluate
from pipeline.broker import EmbeddedBroker

START_S = 1_000.0
STEP_S = 60.0
N_POINTS = 66  # i = 0 .. 65, one a minute
AT_S = START_S + STEP_S * (N_POINTS - 1) + 30.0  # the alert: 30 s after the last point
FAULT_FROM = 63  # the faulty series holds 20 from this point on
SERVICES = ("cart", "checkout", "email")  # checkout is named only by its pod
CHECKOUT_POD = "checkout-5d8f7c9b4-x2x7q"


def normal_value(i: int) -> float:
    """10 and 12 in turn: mean 11, std 1, median 11, IQR 2 over any even run."""
    return 10.0 + 2.0 * (i % 2)


def value(service: str, metric: str, i: int) -> float:
    if service == "checkout" and metric == "cpu" and i >= FAULT_FROM:
        return 20.0
    return normal_value(i)


def kv(key: str, text: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=text))


def resource_of(service: str) -> Resource:
    if service == "checkout":  # no service.name: the pod name says it
        return Resource(attributes=[kv("k8s.pod.name", CHECKOUT_POD)])
    return Resource(attributes=[kv("service.name", service)])


def request_at(i: int) -> ExportMetricsServiceRequest:
    t_ns = int((START_S + STEP_S * i) * 1e9)
    out = ExportMetricsServiceRequest()
    for service in SERVICES:
        metrics = [
            Metric(
                name=name,
                gauge=Gauge(data_points=[NumberDataPoint(time_unix_nano=t_ns, as_double=v)]),
            )
            for name, v in (("cpu", value(service, "cpu", i)), ("mem", value(service, "mem", i)))
        ]
        out.resource_metrics.append(
            ResourceMetrics(
                resource=resource_of(service), scope_metrics=[ScopeMetrics(metrics=metrics)]
            )
        )
    return out


def alert_payload(fingerprint: str, starts_at: str) -> dict[str, object]:
    labels = {"alertname": "FrontendSLOBurn", "service": "frontend", "severity": "page"}
    return {
        "version": "4",
        "groupKey": '{}:{alertname="FrontendSLOBurn"}',
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "worldline",
        "groupLabels": {"alertname": "FrontendSLOBurn"},
        "commonLabels": labels,
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": [
            {
                "status": "firing",
                "labels": labels,
                "annotations": {},
                "startsAt": starts_at,
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "",
                "fingerprint": fingerprint,
            }
        ],
    }


def history() -> rb.History:
    h = rb.History(keep_s=3600 + 300 + rb.GRACE_S)
    for i in range(N_POINTS):
        h.add_request(request_at(i))
        h.advance(START_S + STEP_S * i)
    return h


# --------------------------------------------------------------------------------- unit


def test_pod_names_map_to_their_workload() -> None:
    assert rb.pod_service("frontend-579b9bff58-t2dbm") == "frontend"
    assert rb.pod_service("product-catalog-668d5f85fb-wckp8") == "product-catalog"
    assert rb.pod_service("redis-0") == "redis"
    assert rb.pod_service("worker") == "worker"


def test_matrices_split_history_and_window_at_the_alert() -> None:
    m = rb.matrices(history(), AT_S, 3600.0, 300.0)
    assert m.step_s == 60.0  # learned from the points' spacing
    assert [(s.service, s.instance, s.metric) for s in m.series] == [
        ("cart", "cart", "cpu"),
        ("cart", "cart", "mem"),
        ("checkout", CHECKOUT_POD, "cpu"),
        ("checkout", CHECKOUT_POD, "mem"),
        ("email", "email", "cpu"),
        ("email", "email", "mem"),
    ]
    # window (AT - 300, AT] holds points 61..65, the history (AT - 3900, AT - 300] points 1..60
    assert m.window.shape == (5, 6) and m.normal.shape == (60, 6)
    assert list(m.window[:, 2]) == [12.0, 10.0, 20.0, 20.0, 20.0]
    assert m.normal[0, 0] == normal_value(1) and m.normal[-1, 0] == normal_value(60)


@pytest.mark.parametrize(
    ("method", "score", "name"),
    [("nsigma", 9.0, "N-Sigma"), ("baro", 4.5, "BARO")],  # |20 - 11| / 1 and / 2
)
def test_the_faulty_series_ranks_first_and_names_its_service(
    method: str, score: float, name: str
) -> None:
    record, m = rb.answer(history(), "fp-1", AT_S, method, 3600.0, 300.0)
    ranked = rb.rank(method, m)
    assert ranked[0].series.metric == "cpu" and ranked[0].series.service == "checkout"
    assert ranked[0].score == pytest.approx(score)
    assert all(r.score <= ranked[0].score / 4 for r in ranked[1:])
    assert record["schema_version"] == 1
    assert record["incident_id"] == f"{method}-fp-1"
    assert record["alert_fingerprints"] == ["fp-1"]
    assert record["generated_at"] == "1970-01-01T01:22:10Z"  # AT_S = 4930 s
    assert record["abstained"] is False and record["abstain_reason"] is None
    causes = record["causes"]
    assert [c["rank"] for c in causes] == [1, 2, 3]
    assert [c["entity"] for c in causes][0] == {"kind": "service", "name": "checkout"}
    assert {c["entity"]["name"] for c in causes[1:]} == {"cart", "email"}
    top = causes[0]
    assert top["signal"] == "cpu" and top["probability"] is None and top["evidence"] == []
    assert top["explanation"].startswith(f"{name}: cpu of {CHECKOUT_POD} scored {score:.3g} (")
    orjson.dumps(record)  # every value serialisable (no inf, no NaN)


def test_no_normal_history_ranks_in_order_of_first_appearance() -> None:
    h = rb.History(keep_s=4500.0)
    for i in (64, 65):
        h.add_request(request_at(i))
    record, m = rb.answer(h, "fp-2", AT_S, "nsigma", 3600.0, 300.0)
    assert len(m.normal) == 0
    assert [c["entity"]["name"] for c in record["causes"]] == ["cart", "checkout", "email"]
    assert "unscored" in record["causes"][0]["explanation"]


def test_sums_histograms_and_anonymous_points() -> None:
    """A cumulative monotonic sum becomes its rate; histograms and points that name no service
    are counted, not kept; a delta sum is taken as it is."""
    h = rb.History(keep_s=1000.0)
    req = ExportMetricsServiceRequest()
    points = [
        NumberDataPoint(time_unix_nano=int(t * 1e9), start_time_unix_nano=1, as_int=total)
        for t, total in ((100, 50), (110, 80), (120, 90), (130, 5))  # a reset at 130
    ]
    requests = Metric(
        name="requests",
        sum=Sum(data_points=points, is_monotonic=True, aggregation_temporality=2),
    )
    errors = Metric(
        name="errors",
        sum=Sum(
            data_points=[NumberDataPoint(time_unix_nano=int(100e9), as_double=3.0)],
            is_monotonic=True,
            aggregation_temporality=1,
        ),
    )
    latency = Metric(
        name="latency",
        histogram=Histogram(data_points=[HistogramDataPoint(time_unix_nano=int(100e9), count=1)]),
    )
    req.resource_metrics.append(
        ResourceMetrics(
            resource=Resource(attributes=[kv("service.name", "api")]),
            scope_metrics=[ScopeMetrics(metrics=[requests, errors, latency])],
        )
    )
    req.resource_metrics.append(
        ResourceMetrics(
            resource=Resource(attributes=[kv("host.name", "h1")]),
            scope_metrics=[ScopeMetrics(metrics=[errors])],
        )
    )
    assert h.add_request(req) == 130.0
    got = {s.metric: list(s.points) for s in h.series.values()}
    assert got == {"requests": [(110.0, 3.0), (120.0, 1.0)], "errors": [(100.0, 3.0)]}
    assert h.dropped == {"not_gauge_or_sum": 1, "no_service": 1, "counter_reset_or_reorder": 1}


def test_history_is_bounded_and_counts_what_it_drops() -> None:
    h = rb.History(keep_s=100.0, max_series=2, max_points=3)
    for i in range(5):
        for metric in ("a", "b", "c"):
            h.add("svc", "svc", metric, (), float(i), 1.0)
    assert len(h.series) == 2 and h.kept() == 6
    assert h.dropped == {"series_cap": 5, "point_cap": 4}
    h.advance(150.0)  # horizon 50: every point is older
    assert h.kept() == 0 and h.expired == 6
    h.add("svc", "svc", "a", (), 10.0, 1.0)
    assert h.dropped["too_old"] == 1


def test_an_alert_waits_for_the_metrics_the_broker_held(monkeypatch: pytest.MonkeyPatch) -> None:
    """The wait before an answer ends once every partition is read up to the high-water mark
    taken when the alert was read, or at the timeout, incomplete."""
    tps = [TopicPartition(rb.METRICS_TOPIC, 0), TopicPartition(rb.METRICS_TOPIC, 1)]

    async def marks(bootstrap: str, asked: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tps[0]: 20, tps[1]: 5}

    monkeypatch.setattr("pipeline.kafka.high_water_marks", marks)

    async def scenario(timeout_s: float) -> tuple[bool, float, int]:
        runner = rb.Runner(rb.RunConfig(bootstrap="unused", method="baro"))
        runner.config.catchup_timeout_s = timeout_s
        runner.applied = {tps[0]: 10, tps[1]: 5}

        async def consume() -> None:
            await asyncio.sleep(0.2)
            runner.applied[tps[0]] = 20
            runner.progressed.set()

        task = asyncio.create_task(consume())
        result = await runner._caught_up(tps)
        await task
        return result

    complete, waited, behind = asyncio.run(scenario(5.0))
    assert complete and 0.15 < waited < 1.0 and behind == 10
    complete, waited, behind = asyncio.run(scenario(0.05))
    assert not complete and waited < 0.2 and behind == 10


def test_help_teaches_the_command() -> None:
    result = CliRunner().invoke(evaluate, ["replay-baseline", "--help"])
    assert result.exit_code == 0
    for word in ("--method", "baro", "nsigma", "--bootstrap-servers", "causes.ranked", "replay.py"):
        assert word in result.output


# --------------------------------------------------------------------------------- broker


@pytest.fixture()
def own_broker() -> Iterator[str]:
    """A broker of its own: the fixed topic names (otlp_metrics, alerts, causes.ranked) stay
    away from the session broker's other tests."""
    with EmbeddedBroker() as broker:
        yield broker.bootstrap_servers


async def _one_alert_through_kafka(bootstrap: str) -> list[tuple[bytes | None, dict[str, object]]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(rb.METRICS_TOPIC, 2, 1),
                NewTopic(rb.ALERTS_TOPIC, 1, 1),
                NewTopic(rb.CAUSES_TOPIC, 1, 1),
            ]
        )
    finally:
        await admin.close()
    stop = asyncio.Event()
    runner: asyncio.Task[None] | None = None
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    answers = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await producer.start()
    await answers.start()
    try:
        # everything is on the broker before the runner starts: its two consumers then race,
        # and the alert must wait until the metrics consumer has read every record
        for i in range(N_POINTS):
            await producer.send(
                rb.METRICS_TOPIC,
                request_at(i).SerializeToString(),
                partition=i % 2,
                timestamp_ms=int((START_S + STEP_S * i) * 1000),
            )
        await producer.flush()
        payload = orjson.dumps(alert_payload("fp-int", rb.iso(AT_S)))
        for _ in range(2):  # a repeated delivery is not answered again
            await producer.send_and_wait(rb.ALERTS_TOPIC, payload, key=b"fp-int")
        config = rb.RunConfig(bootstrap=bootstrap, method="baro", progress_s=0.0)
        runner = asyncio.create_task(rb.Runner(config).run(stop))
        tp = TopicPartition(rb.CAUSES_TOPIC, 0)
        answers.assign([tp])
        await answers.seek_to_beginning(tp)
        got: list[tuple[bytes | None, dict[str, object]]] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15.0
        while loop.time() < deadline and not runner.done():
            for r in (await answers.getmany(tp, timeout_ms=200)).get(tp, []):
                if not got:
                    deadline = loop.time() + 1.5  # time enough for a second answer to show
                got.append((r.key, orjson.loads(r.value or b"")))
        if runner.done():
            runner.result()  # a runner that failed says why
        return got
    finally:
        stop.set()
        if runner is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        await answers.stop()
        await producer.stop()


@pytest.mark.integration
def test_one_alert_gets_one_answer_through_a_broker(own_broker: str) -> None:
    got = asyncio.run(_one_alert_through_kafka(own_broker))
    assert len(got) == 1
    key, record = got[0]
    assert key == b"fp-int"
    assert record["alert_fingerprints"] == ["fp-int"]
    causes = record["causes"]
    assert isinstance(causes, list)
    assert causes[0]["entity"] == {"kind": "service", "name": "checkout"}
    assert causes[0]["signal"] == "cpu"
