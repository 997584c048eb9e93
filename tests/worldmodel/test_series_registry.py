"""The metric series registry and the counter state are held compactly and checkpoint as
before: a checkpoint written before they were (``tests/data/baseline-golden/model.checkpoint``,
from ``model_with_metrics()`` below) restores and checkpoints again byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from pipeline.segments.store import Manifest, SourceRange
from pipeline.worldmodel.model import WorldModel, WorldModelConfig
from pipeline.worldmodel.series import MetricSeriesRegistry
from schemas.segments import METRIC_POINTS, METRIC_SERIES

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "baseline-golden"
BASE_NS = 1_700_000_040 * 10**9
MINUTE_NS = 60 * 10**9


def _manifest(signal: str, table: pa.Table, offset: int, start: int) -> Manifest:
    return Manifest(
        segment_id=f"{signal}-{offset}",
        signal=signal,
        path="",
        start_unix_nano=start,
        end_unix_nano=start + MINUTE_NS,
        services=(),
        rows=table.num_rows,
        bytes=0,
        source=SourceRange("otlp_metrics", 0, offset, offset),
        arrow_schema_version=1,
        sealed_at="",
    )


def _series_rows(n: int) -> list[dict[str, object]]:
    return [
        {
            "series_id": i + 1,
            "first_seen_unix_nano": BASE_NS,
            "name": "http_requests_total" if i % 2 else "queue_depth",
            "kind": "sum" if i % 2 else "gauge",
            "unit": "1" if i % 2 else None,
            "temporality": 2 if i % 2 else None,
            "monotonic": bool(i % 2),
            "service": f"svc-{i % 3}",
            "attributes": json.dumps({"instance": f"10.0.0.{i}:9100"}),
            "resource_attributes": json.dumps({"service.name": f"svc-{i % 3}"}),
        }
        for i in range(n)
    ]


def model_with_metrics(n: int = 30, intervals: int = 40) -> WorldModel:
    model = WorldModel(WorldModelConfig(interval_s=60.0, allowed_lateness_s=0.0))
    model.config = WorldModelConfig(
        interval_s=60.0, allowed_lateness_s=0.0, topic_partitions=(("otlp_metrics", 1),)
    )
    series = pa.Table.from_pylist(_series_rows(n), schema=METRIC_SERIES)
    model.apply(_manifest("metric_series", series, 0, BASE_NS), series)
    for k in range(intervals):
        columns: dict[str, list[object]] = {name: [None] * n for name in METRIC_POINTS.names}
        columns["series_id"] = list(range(1, n + 1))
        columns["time_unix_nano"] = [BASE_NS + k * MINUTE_NS + 10**9] * n
        columns["value"] = [float(i * 3 + k * (10 + i % 4) + (k % 5)) for i in range(n)]
        points = pa.Table.from_pydict(columns, schema=METRIC_POINTS)
        model.apply(_manifest("metrics", points, k + 1, BASE_NS + k * MINUTE_NS), points)
        model.advance()
    return model


def test_the_registry_gives_back_every_row_as_stored() -> None:
    rows = _series_rows(20)
    rows[3] = dict(rows[3], extra="kept")  # a row with other keys keeps them, in its order
    registry = MetricSeriesRegistry(rows)
    assert len(registry) == 20 and 4 in registry and 99 not in registry
    assert [registry[i + 1] for i in range(20)] == rows
    assert list(registry[4]) == list(rows[3])
    assert list(registry.values()) == rows
    assert list(registry) == list(range(1, 21))
    # a name many series share is one string
    first, second = registry._rows[1], registry._rows[3]
    assert first[3] is second[3]  # "queue_depth"
    assert registry.pop(1) == rows[0] and 1 not in registry and registry.get(1) is None
    assert MetricSeriesRegistry(registry.values()) == registry


def test_a_checkpoint_written_before_restores_byte_for_byte() -> None:
    old = (GOLDEN / "model.checkpoint").read_bytes()
    restored = WorldModel.restore(old)
    assert len(restored.metric_series) == 30
    assert len(restored.metrics.last) == 15
    assert len(restored.baselines) == 30
    assert restored.checkpoint() == old
    # (a model fed now writes more: refusal counters and the graph its client metrics describe;
    # the baselines' own numbers are checked against golden files in test_baseline_columns)


if __name__ == "__main__":
    (GOLDEN / "model.checkpoint").write_bytes(model_with_metrics().checkpoint())
