"""The columnar baseline store gives exactly the numbers of the one-object-per-series store it
replaced, restores that store's snapshots, and holds a series in about 1 KB.

``tests/data/baseline-golden`` was written by the one-object-per-series implementation from
``exercise()`` below: the SHA-256 of every number it read (scores, expectations, deviations,
onsets, recent scores, profiles, counters, merges; floats as ``float.hex``), the first records
verbatim, and its store snapshot. Regenerate only on a deliberate change of the model:
``python tests/worldmodel/test_baseline_columns.py``.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import zstandard

from pipeline.worldmodel import baseline
from pipeline.worldmodel.baseline import BaselineConfig, BaselineStore, SeasonalBaseline
from pipeline.worldmodel.model import WorldModel, WorldModelConfig

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "baseline-golden"
MONDAY = 1_699_833_600  # 2023-11-13 00:00:00 UTC
INTERVAL_S = 300.0
DAYS = 9  # past one week: the hour-of-week tier is used, not only the day and global ones
N_SERIES = 12
RECORD_EVERY = 12


def _number(x: float | None) -> str | None:
    return None if x is None else float(x).hex()


def _count_scale(entity: str, signal: str) -> float:
    return INTERVAL_S if signal.endswith("rate_per_s") else 0.0


def _deviation(d: Any) -> list[Any] | None:
    if d is None:
        return None
    return [
        _number(d.t_s),
        _number(d.value),
        _number(d.expected),
        _number(d.spread),
        _number(d.score),
        d.direction,
        d.alert_worthy,
        _number(d.onset_s),
        d.tier,
    ]


def _series_values(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """Per series: the values of ``n`` intervals (NaN where the series sends nothing)."""
    hours = (MONDAY + np.arange(n) * INTERVAL_S) / 3600 % 24
    out = []
    for i in range(N_SERIES):
        base = rng.uniform(0.5, 500) if i != 5 else 0.0  # series 5 stays at 0 until its burst
        daily = 1 + rng.uniform(0.1, 0.5) * np.sin(2 * np.pi * (hours - rng.uniform(0, 24)) / 24)
        values = base * daily + rng.normal(0, 0.05 * base + 0.01, n)
        if i % 4 == 1:  # a step up on day 8
            values[8 * 288 :] += 6 * (0.05 * base + 0.5)
        if i % 4 == 2:  # a ramp down on day 8
            values[8 * 288 :] -= np.linspace(0, 0.8 * base, n - 8 * 288)
        if i == 5:
            values[8 * 288 + 40 : 8 * 288 + 80] = 20.0
        if i % 3 == 0:  # sparse: every third interval
            values[np.arange(n) % 3 != 0] = np.nan
        if i == 7:  # an outage of a day and a half
            values[3 * 288 : 4 * 288 + 144] = np.nan
        out.append(np.abs(values))
    return out


def exercise() -> tuple[list[Any], bytes]:
    """Feed a seeded set of series through the store's API; every number it read, and the
    store's snapshot."""
    rng = np.random.default_rng(19)
    config = BaselineConfig(interval_s=INTERVAL_S)
    store = BaselineStore(config, max_series=N_SERIES + 1, count_scale=_count_scale)
    keys = [
        (f"service:s{i % 5}", f"span.rate_per_s{{i={i}}}" if i % 2 else f"span.latency{{i={i}}}")
        for i in range(N_SERIES)
    ]
    n = DAYS * 288
    series = _series_values(rng, n)
    exposures = rng.uniform(0, 200, (N_SERIES, n)) * (np.arange(N_SERIES) % 4 == 3)[:, None]
    resolutions = rng.uniform(0, 3, (N_SERIES, n)) * (np.arange(N_SERIES) % 5 == 4)[:, None]
    halves = [SeasonalBaseline(config), SeasonalBaseline(config)]  # merged at the end
    records: list[Any] = []
    for k in range(n):
        t = MONDAY + k * INTERVAL_S
        batch_keys, ts, vs, xs, rs = [], [], [], [], []
        for i, key in enumerate(keys):
            value = series[i][k]
            if math.isnan(value):
                continue
            # two values in some intervals (averaged), one of them a little later
            for extra in range(2 if i == 4 else 1):
                batch_keys.append(key)
                ts.append(t + 17.0 * extra)
                vs.append(float(value) + extra)
                xs.append(float(exposures[i, k]))
                rs.append(float(resolutions[i, k]))
        store.update_many(batch_keys, np.array(ts), np.array(vs), xs, rs)
        if k % 50 == 7:  # a late value, counted and dropped
            store.update(*keys[0], t - 2 * INTERVAL_S, 1.0)
        if k % 7 == 3:
            store.update(*keys[3], t, float("nan"))  # refused: non_finite
        halves[k % 2].update(t, float(series[2][k]))
        store.advance(t + INTERVAL_S)
        if k % RECORD_EVERY:
            continue
        for i, key in enumerate(keys):
            baseline = store.get(*key)
            if baseline is None:
                continue
            probe = float(series[i][k]) if not math.isnan(series[i][k]) else 1.0
            score = baseline.score(t + INTERVAL_S, probe * 1.5, exposure=3.0 if i % 2 else 0.0)
            records.append(
                [
                    k,
                    i,
                    _deviation(score),
                    [_number(x) if not isinstance(x, str) else x for x in baseline.expected(t)],
                    _deviation(baseline.deviation()),
                    _number(baseline.onset()),
                    [[_number(a), _number(b)] for a, b in baseline.recent_scores()],
                    baseline.spacing,
                    baseline.intervals_learned,
                    baseline.late_values,
                    baseline.alerts_raised,
                    _number(baseline.exposure),
                    _number(baseline.resolution),
                    _number(baseline.count_scale),
                    _number(baseline.first_seen_s),
                ]
            )
        records.append(
            [
                [e, s, _deviation(d.deviation)]
                for e, s, d in ((d.entity, d.signal, d) for d in store.deviations(t + INTERVAL_S))
            ]
        )
    for key in store.keys():
        baseline = store.get(*key)
        assert baseline is not None
        records.append([key, [_number(x) for x in baseline.hour_of_week_profile()]])
        records.append([key, baseline.to_bytes().hex()])
    merged = halves[0].merge(halves[1])
    records.append(["merge", merged.to_bytes().hex(), merged == halves[1].merge(halves[0])])
    other = BaselineStore(config, max_series=N_SERIES + 1, count_scale=_count_scale)
    for i, key in enumerate(keys[::2]):
        for k in range(0, 600, 1 + i % 3):
            other.update(*key, MONDAY + 8 * 86400 + k * INTERVAL_S, float(series[i][k] or 0.0))
    other.update("service:new", "span.latency", MONDAY + 8 * 86400, 3.0)
    merged_store = BaselineStore(config, max_series=N_SERIES + 1, count_scale=_count_scale)
    merged_store.restore(store.snapshot())
    merged_store.merge(other)
    records.append(["store merge", merged_store.snapshot().hex(), merged_store.refusals])
    records.append(["refusals", store.refusals])
    return records, store.snapshot()


def _digest(records: list[Any]) -> str:
    return hashlib.sha256(json.dumps(records).encode()).hexdigest()


def write_golden() -> None:
    records, snapshot = exercise()
    GOLDEN.mkdir(parents=True, exist_ok=True)
    summary = {
        "records": len(records),
        "records_sha256": _digest(records),
        "snapshot_sha256": hashlib.sha256(snapshot).hexdigest(),
        "first_records": records[:20],
    }
    (GOLDEN / "records.json").write_text(json.dumps(summary, indent=1) + "\n")
    (GOLDEN / "store.snapshot.zst").write_bytes(
        zstandard.ZstdCompressor(level=19).compress(snapshot)
    )


def test_columns_give_every_number_of_the_per_object_store() -> None:
    golden = json.loads((GOLDEN / "records.json").read_text())
    records, snapshot = exercise()
    assert records[:20] == golden["first_records"]
    assert len(records) == golden["records"]
    # the exercise reaches every tier, raises alerts and refuses what it should
    tiers = {r[2][8] for r in records if len(r) == 15}
    assert tiers == {"global", "day", "week"}
    assert any(r[10] > 0 for r in records if len(r) == 15)
    assert any(r[9] > 0 for r in records if len(r) == 15)
    assert _digest(records) == golden["records_sha256"]
    assert hashlib.sha256(snapshot).hexdigest() == golden["snapshot_sha256"]


def test_a_snapshot_of_the_per_object_store_restores_and_learns_on_alike() -> None:
    old = zstandard.ZstdDecompressor().decompress((GOLDEN / "store.snapshot.zst").read_bytes())
    config = BaselineConfig(interval_s=INTERVAL_S)
    restored = BaselineStore(config, count_scale=_count_scale)
    restored.restore(old)
    assert restored.snapshot() == old
    assert len(restored) == N_SERIES
    assert restored.state_bytes == N_SERIES * 1010
    # the restored store goes on learning as the store that wrote the snapshot: one more day
    again = BaselineStore(config, count_scale=_count_scale)
    again.restore(old)
    t0 = MONDAY + DAYS * 86400
    for k in range(288):
        for i, key in enumerate(restored.keys()):
            restored.update(*key, t0 + k * INTERVAL_S, 10.0 + i + k % 7)
            baseline = again.get(*key)
            assert baseline is not None
            baseline.update(t0 + k * INTERVAL_S, 10.0 + i + k % 7)
    restored.advance(t0 + 86400)
    for key in again.keys():
        baseline = again.get(*key)
        assert baseline is not None
        baseline.flush(t0 + 86400)
    assert restored.snapshot() == again.snapshot()
    assert [d.deviation for d in restored.deviations(t0 + 86400)] == [
        d.deviation for d in again.deviations(t0 + 86400)
    ]


def test_a_world_model_checkpoint_round_trips_its_baselines() -> None:
    model = WorldModel(WorldModelConfig(interval_s=60.0))
    rng = np.random.default_rng(3)
    for k in range(90):
        for i in range(40):
            value = float(rng.gamma(2.0, 5.0 + i))
            model.baselines.update(
                f"service:s{i % 7}", f"span.rate_per_s{{m={i}}}", 1.7e9 + 60 * k, value
            )
    model.baselines.advance(1.7e9 + 60 * 91)
    restored = WorldModel.restore(model.checkpoint())
    assert restored.checkpoint() == model.checkpoint()
    for key in model.baselines.keys():
        a, b = model.baselines.get(*key), restored.baselines.get(*key)
        assert a is not None and b is not None
        assert a.to_bytes() == b.to_bytes()
        assert a.score(1.7e9 + 60 * 92, 50.0) == b.score(1.7e9 + 60 * 92, 50.0)
        assert a.count_scale == 60.0


def test_a_series_costs_about_one_kilobyte_in_memory() -> None:
    config = BaselineConfig()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    store = BaselineStore(config, max_series=5000)
    for k in range(3):
        store.update_many(
            [(f"service:s{i % 40}", f"m{i}") for i in range(5000)],
            [1.7e9 + 60 * k] * 5000,
            [float(i % 13) for i in range(5000)],
        )
    store.advance(1.7e9 + 60 * 3)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    # what the store's code and this test allocated: a thread another test left running (a
    # broker client) allocates meanwhile, elsewhere
    mine = (
        tracemalloc.Filter(True, str(Path(baseline.__file__).parent / "*")),
        tracemalloc.Filter(True, __file__),
    )
    held = sum(
        d.size_diff
        for d in after.filter_traces(mine).compare_to(before.filter_traces(mine), "filename")
    )
    assert store.state_bytes == 5000 * 1010  # the numbers: at most 1 KB a series
    # everything the store holds, the series' names and the index to their rows included
    per_series = held / 5000
    assert 1010 < per_series < 1400, per_series


if __name__ == "__main__":
    write_golden()
