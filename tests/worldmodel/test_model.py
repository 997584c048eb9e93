from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from pipeline.ingest.core import KafkaRecord, SegmentIngestor, codec_for
from pipeline.segments.store import SegmentStore
from pipeline.testing import BASE_NS, kv, log_request, metric_request, span_request
from pipeline.worldmodel.graph import EntityRef
from pipeline.worldmodel.model import COUNTED_RATES, WorldModel, WorldModelConfig, marker
from pipeline.worldmodel.worker import MODEL_SIGNALS, catch_up, merge_order

NOW = dt.datetime(2026, 11, 20, 14, 0, tzinfo=dt.UTC)
MINUTE = 60 * 10**9


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> SegmentStore:
    """Ten minutes of telemetry over two partitions; version 2.0.0 of cart appears at minute 6."""
    store = SegmentStore(tmp_path_factory.mktemp("wm"))
    for topic, make in (
        ("otlp_spans", span_request),
        ("otlp_logs", log_request),
        ("otlp_metrics", metric_request),
    ):
        ingestor = SegmentIngestor(store, codec_for(topic, store))
        for minute in range(10):
            records = []
            for partition in range(2):
                req = make(minute * 10 + partition, start_ns=BASE_NS + minute * MINUTE)
                if topic == "otlp_spans" and minute >= 6:
                    for rs in req.resource_spans:
                        if rs.resource.attributes[0].value.string_value == "cart":
                            del rs.resource.attributes[1]
                            rs.resource.attributes.append(kv("service.version", "2.0.0"))
                records.append(KafkaRecord(topic, partition, minute, req.SerializeToString()))
            ingestor.seal(ingestor.decode(records), NOW)
    return store


def _feed(model: WorldModel, store: SegmentStore, upto: int | None = None) -> int:
    return catch_up(store, model, upto)


def test_signals_reach_baselines_once_intervals_close(store: SegmentStore) -> None:
    model = WorldModel(WorldModelConfig(interval_s=60, allowed_lateness_s=60))
    _feed(model, store)
    keys = set(model.baselines.keys())
    assert ("service:cart", "span.rate_per_s") in keys
    assert ("service:cart", "log.rate_per_s") in keys
    assert ("service:cart", "process.cpu.utilization") in keys
    assert any(s.startswith("edge.latency_p95_ms{peer=database:postgresql:") for _, s in keys)
    # the last minutes are still open (watermark - lateness), the first eight are learned
    assert model.closed_through == BASE_NS + 8 * MINUTE
    baseline = model.baselines.get("service:cart", "span.rate_per_s")
    assert baseline is not None and baseline.intervals_learned == 8


def test_deploys_are_inferred_from_service_version(store: SegmentStore) -> None:
    model = WorldModel()
    _feed(model, store)
    deploys = [c for c in model.changes if c["kind"] == "deploy"]
    assert [c["entity"]["name"] for c in deploys] == ["cart"]
    assert deploys[0]["attributes"] == {
        "service.version.before": "1.0.0",
        "service.version.after": "2.0.0",
    }
    assert BASE_NS + 6 * MINUTE <= deploys[0]["time_unix_nano"] < BASE_NS + 7 * MINUTE


def test_new_templates_are_events(store: SegmentStore) -> None:
    model = WorldModel()
    _feed(model, store)
    assert len(model.known_templates) >= 4
    assert all(e["type"] == "log_template_new" for e in model.events)


def test_replay_and_restart_give_the_same_model(store: SegmentStore, tmp_path: Path) -> None:
    straight = WorldModel()
    _feed(straight, store)
    interrupted = WorldModel()
    _feed(interrupted, store, upto=25)
    restored = WorldModel.restore(interrupted.checkpoint())
    # the restarted worker sees everything again (at-least-once); what it counted is skipped
    assert (
        _feed(restored, store)
        == len([m for m in store.manifests() if m.signal in MODEL_SIGNALS]) - 25
    )
    assert restored.baselines.snapshot() == straight.baselines.snapshot()
    assert restored.checkpoint() == straight.checkpoint()


def _two_lives(root: Path, epochs: tuple[str, str]) -> SegmentStore:
    """Ten minutes of spans on two partitions; the broker restarts after minute 4 and, if its
    epoch changes, numbers the records of minutes 5-9 from offset 0 again."""
    store = SegmentStore(root)
    ingestor = SegmentIngestor(store, codec_for("otlp_spans", store))
    for minute in range(10):
        life = 0 if minute < 5 else 1
        ingestor.set_epoch(epochs[life])
        offset = minute - 5 * life if epochs[0] != epochs[1] else minute
        records = [
            KafkaRecord(
                "otlp_spans",
                partition,
                offset,
                span_request(
                    minute * 10 + partition, start_ns=BASE_NS + minute * MINUTE
                ).SerializeToString(),
            )
            for partition in range(2)
        ]
        ingestor.seal(ingestor.decode(records), NOW)
    return store


def test_segments_of_a_new_broker_epoch_are_applied_not_taken_as_counted(tmp_path: Path) -> None:
    renewed = _two_lives(tmp_path / "renewed", ("aaaa", "bbbb"))
    one_life = _two_lives(tmp_path / "one", ("aaaa", "aaaa"))
    assert len(renewed.manifests("spans")) == len(one_life.manifests("spans")) == 20
    reference = WorldModel()
    _feed(reference, one_life)
    model = WorldModel()
    assert _feed(model, renewed) == 20
    assert model.baselines.snapshot() == reference.baselines.snapshot()
    assert model.closed_through == reference.closed_through
    assert model.applied == {
        "spans@aaaa/otlp_spans/0": 4,
        "spans@aaaa/otlp_spans/1": 4,
        "spans@bbbb/otlp_spans/0": 4,
        "spans@bbbb/otlp_spans/1": 4,
    }
    # a restart from a checkpoint counts nothing twice
    restored = WorldModel.restore(model.checkpoint())
    assert _feed(restored, renewed) == 0
    # what the broker holds now is read in its epoch
    assert model.coverage({"otlp_spans/0": (marker("spans", "bbbb"), 4)})[1]
    assert not model.coverage({"otlp_spans/0": (marker("spans", "bbbb"), 5)})[1]
    # an epoch whose segments are all gone (retention) is forgotten: the map stays bounded
    for m in renewed.manifests("spans"):
        if m.source.epoch == "aaaa":
            Path(renewed.uri(m)).with_suffix("").with_suffix(".manifest.json").unlink()
    renewed.refresh()
    assert _feed(model, renewed) == 0
    assert sorted(model.applied) == ["spans@bbbb/otlp_spans/0", "spans@bbbb/otlp_spans/1"]


def test_merge_order_keeps_partition_order_and_follows_event_time(store: SegmentStore) -> None:
    ordered = merge_order(store.manifests())
    assert len(ordered) == len(store.manifests())  # every signal, known or not
    last: dict[tuple[str, str, int], int] = {}
    for m in ordered:
        key = (m.signal, m.source.topic, m.source.partition)
        assert m.source.last_offset > last.get(key, -1)
        last[key] = m.source.last_offset
    starts = [m.start_unix_nano for m in ordered if m.signal == "spans"]
    assert starts == sorted(starts)


def test_watermark_waits_for_every_partition_of_a_seen_topic(store: SegmentStore) -> None:
    model = WorldModel(WorldModelConfig(topic_partitions=(("otlp_spans", 3),)))
    _feed(model, store)
    # the fixture wrote partitions 0 and 1 only: partition 2 holds time back for spans
    assert model.watermark == 0
    assert model.closed_through <= BASE_NS  # no interval holding data was closed
    assert model.baselines.get("service:cart", "span.rate_per_s") is None


def test_graph_is_learned_at_interval_close(store: SegmentStore) -> None:
    model = WorldModel()
    _feed(model, store)
    graph = model.graph.as_of(BASE_NS + 5 * MINUTE)
    services = {n for n in graph.nodes if n.startswith("service:")}
    assert {"service:cart", "service:checkout", "service:frontend"} <= services
    databases = {n for n in graph.nodes if n.startswith("database:postgresql:")}
    assert databases  # the factory's databases are only seen from client spans
    deltas = model.take_graph_deltas()
    assert deltas and model.take_graph_deltas() == []
    assert {d["op"] for d in deltas} >= {"add"}


def test_each_counted_rate_gets_one_value_per_interval(store: SegmentStore) -> None:
    """Spans and logs close the same intervals; each fills the silence of its own counted rates
    only (a 0 added by the other source would be averaged into the real rate and halve it)."""
    model = WorldModel(WorldModelConfig(interval_s=60, allowed_lateness_s=60))
    fed: list[tuple[int, str, str]] = []
    learn = model._learn

    def recording(signals: pl.DataFrame) -> None:
        fed.extend(
            signals.select("interval_start_unix_nano", "entity", "signal").iter_rows()  # type: ignore[arg-type]
        )
        learn(signals)

    model._learn = recording  # type: ignore[method-assign]
    _feed(model, store)
    counted = [row for row in fed if row[2].startswith(COUNTED_RATES)]
    assert counted and len(counted) == len(set(counted))
    assert {s for _, _, s in counted} >= {"span.rate_per_s", "log.rate_per_s"}
    cart = model.baselines.get("service:cart", "span.rate_per_s")
    assert cart is not None and cart.count_scale == 60.0
    cpu = model.baselines.get("service:cart", "process.cpu.utilization")
    assert cpu is not None and cpu.count_scale == 0.0


def test_sampling_says_when_the_data_is_coarser_than_the_interval() -> None:
    import numpy as np

    from jobs.evaluate.petshop import Frame, apply_frame

    rows = 60
    times = 1_700_000_100.0 + 300.0 * np.arange(rows)  # 5-minute rows
    columns = [("a", "latency", "Average"), ("b", "latency", "p90")]
    frame = Frame(times, columns, np.full((rows, 2), 0.2))
    coarse = WorldModel(WorldModelConfig(interval_s=60.0, allowed_lateness_s=0.0))
    apply_frame(coarse, frame, "t", 0)
    sampling = coarse.sampling()
    assert sampling["series_spacing_intervals"] == 5.0
    assert sampling["series_spacing_s"] == 300.0
    assert sampling["series_sparse_share"] == 1.0
    matched = WorldModel(WorldModelConfig(interval_s=300.0, allowed_lateness_s=0.0))
    apply_frame(matched, frame, "t", 0)
    assert matched.sampling()["series_spacing_intervals"] == 1.0
    assert matched.sampling()["series_sparse_share"] == 0.0
    assert WorldModel(WorldModelConfig(interval_s=60.0)).sampling() == {}


def test_a_checkpoint_keeps_what_a_summary_needs_to_tell_its_next_increase() -> None:
    from pipeline.worldmodel.signals import _Last

    model = WorldModel(WorldModelConfig())
    model.metrics.last[7] = _Last(120, 1100.0, (), 230.0, 60)
    model.metrics.last[8] = _Last(120, 5.0, (1.0, 2.0))
    restored = WorldModel.restore(model.checkpoint())
    assert dict(restored.metrics.last) == dict(model.metrics.last)


def test_a_provisional_close_scores_the_open_intervals_through_the_alert(
    store: SegmentStore,
) -> None:
    model = WorldModel(WorldModelConfig(interval_s=60, allowed_lateness_s=60))
    _feed(model, store)
    assert model.closed_through == BASE_NS + 8 * MINUTE
    copy = WorldModel.restore(model.checkpoint())
    alert_ns = BASE_NS + 9 * MINUTE + 30 * 10**9
    assert copy.provisional(alert_ns) > 0
    # every interval through the one holding the alert is closed in the copy, not in the model
    assert copy.closed_through == BASE_NS + 10 * MINUTE
    assert model.closed_through == BASE_NS + 8 * MINUTE
    learned = copy.baselines.get("service:cart", "span.rate_per_s")
    assert learned is not None and learned.intervals_learned == 10
    before = model.baselines.get("service:cart", "span.rate_per_s")
    assert before is not None and before.intervals_learned == 8
    # closing again up to the same instant is a no-op
    assert copy.provisional(alert_ns) == 0


def test_the_last_partial_interval_counts_events_over_its_covered_part() -> None:
    model = WorldModel(WorldModelConfig(interval_s=60))
    frame = pl.DataFrame(
        {
            "interval_start_unix_nano": [0, MINUTE, MINUTE, MINUTE],
            "entity": ["service:a"] * 4,
            "signal": ["span.rate_per_s", "span.rate_per_s", "span.latency_p95_ms", "x.rate"],
            "value": [2.0, 0.5, 100.0, 3.0],
            "exposure": [60.0, 60.0, 30.0, 60.0],
            "resolution": [0.0] * 4,
        }
    )
    # 30 events seen in the first 15 s of the last minute: 2 per second over 15 s, not 0.5
    out = model._partial(frame, 2 * MINUTE, MINUTE + 15 * 10**9, ("span.rate_per_s",))
    assert out["value"].to_list() == [2.0, 2.0, 100.0, 3.0]
    assert out["exposure"].to_list() == [60.0, 15.0, 30.0, 60.0]
    # a full interval, or no coverage limit, is left as it is
    assert model._partial(frame, 2 * MINUTE, 2 * MINUTE, ("span.rate_per_s",)).equals(frame)
    assert model._partial(frame, 2 * MINUTE, None, ("span.rate_per_s",)).equals(frame)


def test_coverage_is_how_far_the_model_holds_what_the_broker_received(
    store: SegmentStore,
) -> None:
    model = WorldModel(WorldModelConfig(interval_s=60, allowed_lateness_s=60))
    _feed(model, store)
    applied = {
        key.split("/", 1)[1]: (key.split("/", 1)[0], last)
        for key, last in model.applied.items()
        if key.startswith(("spans/", "logs/", "metrics/"))
    }
    covers, complete = model.coverage(applied)
    assert complete and covers == max(model.watermarks.values())
    # one partition holds a record the model has not applied: it holds coverage back at the
    # event time it reached
    behind = dict(applied)
    signal, last = behind["otlp_spans/1"]
    behind["otlp_spans/1"] = (signal, last + 1)
    covers, complete = model.coverage(behind)
    assert not complete and covers == model.watermarks["otlp_spans/1"]
    # a partition the model never saw holds it back at 0
    covers, complete = model.coverage({**applied, "otlp_logs/3": ("logs", 0)})
    assert not complete and covers == 0


def test_a_past_time_is_rebuilt_from_kept_history_and_the_stored_segments(
    store: SegmentStore, tmp_path: Path
) -> None:
    import shutil

    from pipeline.worldmodel.worker import (
        archive_checkpoint,
        history_dir,
        model_at,
        save_model,
    )

    copy = SegmentStore(tmp_path / "store")
    shutil.copytree(store.root, copy.root, dirs_exist_ok=True)
    copy.refresh()
    config = WorldModelConfig(interval_s=60, allowed_lateness_s=60)
    live = WorldModel(config)
    assert model_at(copy, BASE_NS + 9 * MINUTE) is None  # no history kept yet
    kept = []
    for upto in (12, 12, 12, 100):
        _feed(live, copy, upto)
        save_model(copy, live)
        kept.append(archive_checkpoint(copy, live, every_s=60.0, keep=2))
    assert kept.count(True) >= 2 and len(list(history_dir(copy).glob("*.ckpt"))) <= 2
    # the live model has moved on to the end; a search at minute 6 reads the model as it
    # stood then: the segments beginning by then applied to the newest history kept before
    t_ns = BASE_NS + 6 * MINUTE + 30 * 10**9
    past = model_at(copy, t_ns)
    assert past is not None and past.closed_through <= t_ns < live.closed_through
    reference = WorldModel(config)
    for m in merge_order(
        [m for m in copy.manifests() if m.signal in MODEL_SIGNALS and m.start_unix_nano <= t_ns]
    ):
        reference.apply(m, copy.read(m))
        reference.advance()
    assert past.closed_through == reference.closed_through
    assert past.baselines.snapshot() == reference.baselines.snapshot()


def test_live_watermark_is_the_minimum_over_every_partition_that_carries_data() -> None:
    model = WorldModel()
    model.watermarks = {"otlp_spans/0": 10 * MINUTE, "otlp_spans/1": 4 * MINUTE}
    model.applied = {"spans/otlp_spans/0": 99, "spans/otlp_spans/1": 50}
    model.sources = {"otlp_spans/0": ("spans", 99), "otlp_spans/1": ("spans", 50)}
    # partition 1 is fully applied but still carries data: its next rows may be older than
    # partition 0's latest, so it holds time back
    assert model.watermark == 4 * MINUTE
    # once quiet for a while (the shell marks it idle) it stops holding time back...
    model.idle = frozenset({"otlp_spans/1"})
    assert model.watermark == 10 * MINUTE
    # ...unless it holds records not applied yet
    model.sources["otlp_spans/1"] = ("spans", 51)
    assert model.watermark == 4 * MINUTE


def test_silence_is_zero_only_while_the_source_reports() -> None:
    model = WorldModel(WorldModelConfig(interval_s=60))
    model.baselines.update("service:a", "span.rate_per_s", BASE_NS / 1e9, 5.0, 60.0)
    model.baselines.update("service:b", "span.rate_per_s", BASE_NS / 1e9, 5.0, 60.0)
    model.closed_through = BASE_NS + MINUTE
    # minute 1: only b sent spans (a was silent: zero traffic); minute 2: no span at all
    # arrived from anyone (traces missing, a gap); minute 3: only b again
    rows = pl.DataFrame(
        {
            "interval_start_unix_nano": [BASE_NS + MINUTE, BASE_NS + 3 * MINUTE],
            "entity": ["service:b", "service:b"],
            "signal": ["span.rate_per_s", "span.rate_per_s"],
            "value": [4.0, 6.0],
            "exposure": [60.0, 60.0],
            "resolution": [0.0, 0.0],
        }
    )
    filled = model._zero_fill(rows, BASE_NS + 4 * MINUTE, ("span.rate_per_s",))
    zeros = filled.filter(pl.col("value") == 0.0)
    assert zeros["entity"].to_list() == ["service:a", "service:a"]
    assert zeros["interval_start_unix_nano"].to_list() == [BASE_NS + MINUTE, BASE_NS + 3 * MINUTE]
    # nothing at all from the source: no interval is filled
    assert model._zero_fill(rows.clear(), BASE_NS + 4 * MINUTE, ("span.rate_per_s",)).height == 0


def test_the_simulator_searches_the_model_as_the_causal_stage_does(store: SegmentStore) -> None:
    from jobs.evaluate.simulator import as_searched

    model = WorldModel(WorldModelConfig(interval_s=60, allowed_lateness_s=60))
    _feed(model, store)
    alert_s = (BASE_NS + 9 * MINUTE + 30 * 10**9) / 1e9
    view = as_searched(model, alert_s)
    # a copy closed through the alert's interval; the prepared model itself is untouched
    assert view is not model and view.closed_through == BASE_NS + 10 * MINUTE
    assert model.closed_through == BASE_NS + 8 * MINUTE
    # a model that has closed the alert's interval is searched as it is
    earlier_s = (BASE_NS + 7 * MINUTE) / 1e9
    assert as_searched(model, earlier_s) is model


def test_client_metrics_describe_the_dependency_graph_without_traces() -> None:
    """A metrics-only deployment: each service's client metrics name what it calls (OTel
    ``server.address``, ``db.system``/``db.namespace``, ``messaging.*``), so the graph knows the
    dependencies as of their intervals, and forgets them when the metrics stop."""
    model = WorldModel(WorldModelConfig(interval_s=60))
    http = (
        "http.client.request.duration{http.request.method=GET,server.address=%s,server.port=8080}"
    )
    db = "db.client.operation.duration{db.namespace=orders,db.system=postgresql}.p95"
    signals = [
        ("service:front", (http % "cart.prod.svc.cluster.local") + ".p95"),
        ("service:front", (http % "payments.example.com") + ".error_ratio"),
        ("service:cart", db),
        ("service:cart", "http.server.request.duration{http.route=/cart}.p95"),
        (
            "service:cart",
            "messaging.client.sent.messages{messaging.destination.name=orders,messaging.system=kafka}.rate_per_s",
        ),
        (
            "service:worker",
            "messaging.process.duration{messaging.destination.name=orders,messaging.system=kafka}.p95",
        ),
        # a mesh's sidecars: the caller's reports name the callee, the callee's its own requests
        (
            "service:worker",
            "istio_request_duration_milliseconds{destination_workload=cart,reporter=source}.p95",
        ),
        (
            "service:cart",
            "istio_request_duration_milliseconds{destination_workload=cart,reporter=destination}.p95",
        ),
    ]
    rows = pl.DataFrame(
        {
            "interval_start_unix_nano": [BASE_NS] * len(signals),
            "entity": [e for e, _ in signals],
            "signal": [s for _, s in signals],
            "value": [1.0] * len(signals),
            "exposure": [60.0] * len(signals),
            "resolution": [0.0] * len(signals),
        }
    )
    model._observe_described(rows, BASE_NS + MINUTE)
    graph = model.graph.as_of(BASE_NS + MINUTE)
    edges = {(s, t, r): d["provenance"] for s, t, r, d in graph.edges(keys=True, data=True)}
    assert edges == {
        # cart is a service (its server metric names it): the same dependency from both sides
        ("service:front", "service:cart", "calls"): ["client_metric"],
        ("service:front", "external:payments.example.com", "calls"): ["client_metric"],
        ("service:cart", "database:postgresql:orders", "calls"): ["client_metric"],
        ("service:cart", "queue:kafka:orders", "publishes_to"): ["client_metric"],
        ("service:worker", "service:cart", "calls"): ["client_metric"],
    }
    upstream = {
        r.key: h
        for r, h in model.graph.upstream(EntityRef("service", "front"), 3, BASE_NS + MINUTE).items()
    }
    assert upstream == {
        "service:front": 0,
        "service:cart": 1,
        "external:payments.example.com": 1,
        "database:postgresql:orders": 2,
        "queue:kafka:orders": 2,
    }
    # no metric since: past the graph's expiry the dependency is no longer current
    later = BASE_NS + int(model.graph.config.expiry_s * 1e9) + 2 * MINUTE
    model.graph.advance(later)
    assert ("service:front", "service:cart") not in model.graph.as_of(later).edges()
    assert ("service:front", "service:cart") in model.graph.as_of(BASE_NS + MINUTE).edges()


def _gauges(services: list[str], users: range, t_ns: int) -> bytes:
    """One gauge point per service, and one series of its own per user id (a new label set)."""
    request = ExportMetricsServiceRequest()
    for service in services:
        rm = request.resource_metrics.add()
        rm.resource.attributes.append(kv("service.name", service))
        metric = rm.scope_metrics.add().metrics.add(name="process.cpu.utilization", unit="1")
        metric.gauge.data_points.add(time_unix_nano=t_ns, as_double=0.5)
    rm = request.resource_metrics.add()
    rm.resource.attributes.append(kv("service.name", "storm"))
    metric = rm.scope_metrics.add().metrics.add(name="session.bytes", unit="By")
    for user in users:
        point = metric.gauge.data_points.add(time_unix_nano=t_ns, as_double=float(user))
        point.attributes.append(kv("user.id", str(user)))
    return request.SerializeToString()


def test_a_storm_of_new_series_is_refused_at_the_cap_and_known_series_keep_their_signals(
    tmp_path: Path,
) -> None:
    """Three steady series, then 50 new series a minute against a cap of 10: the steady ones
    and the first 7 new ones are kept, every later new one is refused and counted once per
    segment naming it, with its points (stored, not derived), also in a segment of new series
    only."""
    store = SegmentStore(tmp_path)
    ingestor = SegmentIngestor(store, codec_for("otlp_metrics", store))
    steady = ["cart", "checkout", "payment"]
    for minute in range(5):
        users = range(0) if minute == 0 else range(50 * minute, 50 * minute + 50)
        body = _gauges(steady, users, BASE_NS + minute * MINUTE)
        ingestor.seal(ingestor.decode([KafkaRecord("otlp_metrics", 0, minute, body)]), NOW)
    # a segment of new series only: every one of them refused
    body = _gauges([], range(1000, 1050), BASE_NS + 4 * MINUTE + 1)
    ingestor.seal(ingestor.decode([KafkaRecord("otlp_metrics", 0, 5, body)]), NOW)
    model = WorldModel(WorldModelConfig(max_series=10, allowed_lateness_s=0))
    _feed(model, store)
    assert model.points is not None  # only the kept series' points wait for their interval
    assert set(model.points["series_id"].to_list()) <= set(model.metric_series)
    model.provisional(BASE_NS + 4 * MINUTE)

    assert len(model.metric_series) == 10
    assert model.dropped["metric_series_cap"] == 43 + 4 * 50
    assert model.dropped["metric_series_cap_points"] == 43 + 4 * 50
    for service in steady:
        baseline = model.baselines.get(f"service:{service}", "process.cpu.utilization")
        assert baseline is not None and baseline.intervals_learned == 5
    storm = [key for key in model.baselines.keys() if key[0] == "service:storm"]
    assert len(storm) == 7
    restored = WorldModel.restore(model.checkpoint())
    assert restored.metric_series == model.metric_series
    assert restored.dropped == model.dropped


def test_rpc_methods_are_matched_across_instrumentations() -> None:
    from pipeline.worldmodel.peers import operation_servers, peer_entity, rpc_method

    assert rpc_method("hipstershop.CartService/GetCart") == "CartService/GetCart"
    assert rpc_method("/hipstershop.CartService/GetCart") == "CartService/GetCart"
    assert rpc_method("grpc.hipstershop.CartService/GetCart") == "CartService/GetCart"
    assert rpc_method("GET /api/cart") is None
    servers = operation_servers(
        [
            "operation:cart grpc.hipstershop.CartService/GetCart",
            "operation:cart hipstershop.CartService/AddItem",
            "operation:cart /hipstershop.CartService/AddItem",  # one service, two spellings
            "operation:a grpc.health.v1.Health/Check",
            "operation:b grpc.health.v1.Health/Check",  # served by two
            "service:cart",
        ]
    )
    assert servers == {
        "CartService/GetCart": {
            "service:cart": "operation:cart grpc.hipstershop.CartService/GetCart"
        },
        "CartService/AddItem": {"service:cart": "operation:cart /hipstershop.CartService/AddItem"},
        "Health/Check": {
            "service:a": "operation:a grpc.health.v1.Health/Check",
            "service:b": "operation:b grpc.health.v1.Health/Check",
        },
    }
    known = {"service:cart"}
    assert (
        peer_entity("operation:/hipstershop.CartService/GetCart", known, servers)
        == "operation:cart grpc.hipstershop.CartService/GetCart"
    )
    # served by two: the one the caller is known to call, else no match
    health = "operation:grpc.health.v1.Health/Check"
    assert peer_entity(health, known, servers) == health
    assert peer_entity(health, known, servers, ["service:b", "service:cart"]) == (
        "operation:b grpc.health.v1.Health/Check"
    )
    assert peer_entity(health, known, servers, ["service:a", "service:b"]) == health
