"""Conformance suite for baselines: every check runs against every implementation listed in
``BASELINE_IMPLEMENTATIONS``, with numpy computing the same thing offline where it can, seeded
property tests (hypothesis, derandomized) and seeded behaviour tests on synthetic series."""

from __future__ import annotations

import math
import struct
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.worldmodel import (
    SNAPSHOT_BYTES,
    Baseline,
    BaselineConfig,
    BaselineStore,
    SeasonalBaseline,
)
from pipeline.worldmodel.baseline import snapshot_size

BaselineFactory = Callable[[BaselineConfig], SeasonalBaseline]
BASELINE_IMPLEMENTATIONS: list[BaselineFactory] = [SeasonalBaseline]

MONDAY = 1_699_833_600  # 2023-11-13 00:00:00 UTC, a Monday
HOUR = 3600.0
DAY = 86400.0
PROPERTY_SETTINGS = settings(
    derandomize=True,
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.fixture(params=BASELINE_IMPLEMENTATIONS, ids=lambda factory: factory.__name__)
def make_baseline(request: pytest.FixtureRequest) -> BaselineFactory:
    factory: BaselineFactory = request.param
    return factory


def seasonal_series(
    rng: np.random.Generator, n_intervals: int, interval_s: float, weekend_factor: float = 0.97
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Daily-seasonal level (two harmonics, random phase and amplitude), a mild weekend dip and
    Gaussian noise. Returns (times, values, noise-free level)."""
    times = MONDAY + np.arange(n_intervals) * interval_s
    hours = (times / HOUR) % 24
    weekday = ((times // DAY) + 3) % 7
    base = rng.uniform(10, 1000)
    amplitude = rng.uniform(0.2, 0.6)
    phase = rng.uniform(0, 24)
    shape = np.sin(2 * np.pi * (hours - phase) / 24) + 0.3 * np.sin(
        4 * np.pi * (hours - phase) / 24
    )
    level = base * (1 + amplitude * shape / 1.3) * np.where(weekday >= 5, weekend_factor, 1.0)
    noise = rng.normal(0, 1, n_intervals) * base * rng.uniform(0.02, 0.08)
    return times, level + noise, level


def feed(baseline: Baseline, times: np.ndarray, values: np.ndarray) -> None:
    for t, value in zip(times.tolist(), values.tolist(), strict=True):
        baseline.update(t, value)


# --------------------------------------------------------------------------- conformance
def test_values_in_one_interval_are_learned_as_their_mean(make_baseline: BaselineFactory) -> None:
    config = BaselineConfig()
    baseline = make_baseline(config)
    samples = np.array([3.0, 5.0, 10.0, 2.0])
    for i, value in enumerate(samples.tolist()):
        baseline.update(MONDAY + i * 10.0, value)
    assert baseline.intervals_learned == 0  # still open
    baseline.flush(MONDAY + 60.0)
    assert baseline.intervals_learned == 1
    expected, _, tier = baseline.expected(MONDAY + 90.0)
    assert tier == "global"
    assert expected == pytest.approx(float(np.mean(samples)))


def test_late_values_are_dropped_and_counted(make_baseline: BaselineFactory) -> None:
    baseline = make_baseline(BaselineConfig())
    baseline.update(MONDAY + 120.0, 1.0)
    baseline.update(MONDAY + 240.0, 1.0)
    baseline.update(MONDAY + 10.0, 99.0)
    assert baseline.late_values == 1
    assert baseline.intervals_learned == 1


def test_non_finite_values_are_rejected(make_baseline: BaselineFactory) -> None:
    baseline = make_baseline(BaselineConfig())
    with pytest.raises(ValueError):
        baseline.update(MONDAY, math.nan)


def test_hour_of_week_profile_matches_numpy_hourly_means(make_baseline: BaselineFactory) -> None:
    """Three weeks (bucket counts <= 4: the running-mean regime) against numpy's offline
    mean per hour of the week; winsorization may only move a bucket by a tiny amount."""
    rng = np.random.default_rng(7)
    interval_s = 300.0
    times, values, _ = seasonal_series(rng, int(21 * DAY / interval_s), interval_s)
    baseline = make_baseline(BaselineConfig(interval_s=interval_s))
    feed(baseline, times, values)
    baseline.flush(times[-1] + interval_s)
    hour_index = (times // HOUR).astype(np.int64)
    hour_of_week = (((hour_index // 24) + 3) % 7) * 24 + hour_index % 24
    week = (times - MONDAY) // (7 * DAY)
    learned = baseline.hour_of_week_profile()
    noise = float(np.std(values - _smooth(values)))
    for bucket in range(168):
        # hourly means first, then the mean over the weeks: what the baseline does
        hourly = [
            values[(hour_of_week == bucket) & (week == w)].mean()
            for w in range(3)
            if np.any((hour_of_week == bucket) & (week == w))
        ]
        if bucket == hour_of_week[-1]:
            continue  # the last hour is still being accumulated
        assert learned[bucket] is not None
        assert learned[bucket] == pytest.approx(np.mean(hourly), abs=0.05 * noise)


def _smooth(values: np.ndarray) -> np.ndarray:
    kernel = np.ones(5) / 5
    return np.convolve(values, kernel, mode="same")


def test_week_tier_expectation_is_last_weeks_level(make_baseline: BaselineFactory) -> None:
    """At an hour's centre the week tier's expectation is that hour's learned level (numpy:
    the mean of the same hour in past weeks), plus a drift offset that stays within noise."""
    rng = np.random.default_rng(11)
    interval_s = 300.0
    times, values, _ = seasonal_series(rng, int(15 * DAY / interval_s), interval_s)
    baseline = make_baseline(BaselineConfig(interval_s=interval_s))
    feed(baseline, times, values)
    t_probe = times[-1] + interval_s + 0.5 * HOUR  # next hour's centre (hour 0 of day 15)
    hour_index = int(t_probe // HOUR)
    expected, spread, tier = baseline.expected(t_probe)
    same_hour = (times // HOUR) % 168 == hour_index % 168
    offline = float(values[same_hour].mean())
    assert tier == "week"
    assert expected == pytest.approx(offline, abs=1.5 * spread)


def test_tiers_fall_back_before_a_day_and_a_week(make_baseline: BaselineFactory) -> None:
    rng = np.random.default_rng(3)
    interval_s = 300.0
    times, values, _ = seasonal_series(rng, int(9 * DAY / interval_s), interval_s)
    baseline = make_baseline(BaselineConfig(interval_s=interval_s))
    spreads = {}
    for day_count in (0.5, 3, 8.5):
        stop = int(day_count * DAY / interval_s)
        done = baseline.intervals_learned + (1 if baseline.intervals_learned else 0)
        feed(baseline, times[done:stop], values[done:stop])
        _, spread, tier = baseline.expected(times[stop] + interval_s)
        spreads[tier] = spread
    assert list(spreads) == ["global", "day", "week"]
    assert spreads["global"] > spreads["day"] > spreads["week"]  # wider while warming up


def test_same_stream_gives_identical_state(make_baseline: BaselineFactory) -> None:
    rng = np.random.default_rng(5)
    times, values, _ = seasonal_series(rng, 3000, 60.0)
    first, second = make_baseline(BaselineConfig()), make_baseline(BaselineConfig())
    feed(first, times, values)
    feed(second, times, values)
    assert first.to_bytes() == second.to_bytes()


def test_score_does_not_change_state(make_baseline: BaselineFactory) -> None:
    rng = np.random.default_rng(6)
    times, values, _ = seasonal_series(rng, 500, 60.0)
    baseline = make_baseline(BaselineConfig())
    feed(baseline, times, values)
    before = baseline.to_bytes()
    deviation = baseline.score(times[-1] + 60.0, values[-1] * 10)
    assert deviation.direction == 1 and deviation.score > 5
    assert baseline.to_bytes() == before


# ------------------------------------------------------------------------ properties
samples_strategy = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=20 * 24 * 60),  # minute offsets over ~3 weeks
        st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False),
    ),
    min_size=0,
    max_size=150,
).map(sorted)


def _learn(
    factory: BaselineFactory, samples: list[tuple[int, float]], watermark: bool = False
) -> SeasonalBaseline:
    baseline = factory(BaselineConfig())
    for minute, value in samples:
        baseline.update(MONDAY + minute * 60.0, value)
    if watermark and samples:
        baseline.flush(MONDAY + (samples[-1][0] + 1) * 60.0)
    return baseline


def _profile_close(a: SeasonalBaseline, b: SeasonalBaseline) -> None:
    for left, right in zip(a.hour_of_week_profile(), b.hour_of_week_profile(), strict=True):
        assert (left is None) == (right is None)
        if left is not None and right is not None:
            assert left == pytest.approx(right, rel=1e-5, abs=1e-3)
    assert a.intervals_learned == b.intervals_learned
    assert a.expected(MONDAY)[0] == pytest.approx(b.expected(MONDAY)[0], rel=1e-5, abs=1e-3)


@pytest.mark.parametrize("factory", BASELINE_IMPLEMENTATIONS, ids=lambda f: f.__name__)
@PROPERTY_SETTINGS
@given(samples=samples_strategy)
def test_snapshot_round_trip_and_size(factory: BaselineFactory, samples: list) -> None:
    baseline = _learn(factory, samples)
    data = baseline.to_bytes()
    assert len(data) <= 1024
    restored = SeasonalBaseline.from_bytes(data, BaselineConfig())
    assert restored.to_bytes() == data
    assert restored == baseline
    # and the restored copy keeps learning exactly like the original
    for base in (baseline, restored):
        base.update(MONDAY + 30 * DAY, 1.0)
        base.update(MONDAY + 31 * DAY, 2.0)
    assert restored.to_bytes() == baseline.to_bytes()


@pytest.mark.parametrize("factory", BASELINE_IMPLEMENTATIONS, ids=lambda f: f.__name__)
@PROPERTY_SETTINGS
@given(a=samples_strategy, b=samples_strategy, c=samples_strategy)
def test_merge_is_commutative_and_associative(
    factory: BaselineFactory, a: list, b: list, c: list
) -> None:
    """States as checkpointed after their watermark passed (no half-learned interval: values of
    one interval split over three workers cannot be re-joined, see ``SeasonalBaseline.merge``)."""
    x, y, z = (_learn(factory, samples, watermark=True) for samples in (a, b, c))
    assert x.merge(y) == y.merge(x)  # exactly
    _profile_close(x.merge(y).merge(z), x.merge(y.merge(z)))


@pytest.mark.parametrize("factory", BASELINE_IMPLEMENTATIONS, ids=lambda f: f.__name__)
def test_merge_of_time_split_streams_equals_learning_both(factory: BaselineFactory) -> None:
    """Hour-of-week buckets are exact when two workers learned consecutive weeks."""
    rng = np.random.default_rng(21)
    interval_s = 300.0
    times, values, level = seasonal_series(rng, int(14 * DAY / interval_s), interval_s)
    half = len(times) // 2  # a week boundary, so no hour is split
    config = BaselineConfig(interval_s=interval_s)
    sequential, first, second = factory(config), factory(config), factory(config)
    feed(sequential, times, values)
    feed(first, times[:half], values[:half])
    feed(second, times[half:], values[half:])
    merged = first.merge(second)
    noise = float(np.std(values - level))
    for left, right in zip(
        merged.hour_of_week_profile(), sequential.hour_of_week_profile(), strict=True
    ):
        # exact up to winsorization, which depends on how warm each worker was
        assert left == pytest.approx(right, abs=0.02 * noise)
    assert merged.intervals_learned == sequential.intervals_learned


# ------------------------------------------------------------------------- behaviour
@pytest.mark.parametrize(("n_series", "interval_s"), [(200, 300.0), (25, 60.0)])
def test_seasonal_series_raise_at_most_one_alert_per_1000_series_hours(
    make_baseline: BaselineFactory, n_series: int, interval_s: float
) -> None:
    rng = np.random.default_rng(2024)
    days = 14
    n_intervals = int(days * DAY / interval_s)
    config = BaselineConfig(interval_s=interval_s)
    alerts = 0
    for _ in range(n_series):
        times, values, _ = seasonal_series(rng, n_intervals, interval_s)
        baseline = make_baseline(config)
        feed(baseline, times, values)
        alerts += baseline.alerts_raised
    series_hours = n_series * days * 24
    assert alerts <= series_hours / 1000, f"{alerts} alerts over {series_hours} series-hours"


def _inject(kind: str, values: np.ndarray, start: int, size: float) -> np.ndarray:
    out = values.copy()
    ramp_length = 1 if kind == "step" else 5
    growth = np.minimum(np.arange(1, len(values) - start + 1) / ramp_length, 1.0)
    out[start:] += size * growth
    return out


@pytest.mark.parametrize("kind", ["step", "ramp"])
@pytest.mark.parametrize("direction", [1, -1])
def test_injected_shift_is_flagged_with_onset_and_direction(
    make_baseline: BaselineFactory, kind: str, direction: int
) -> None:
    config = BaselineConfig()
    hits = 0
    seeds = range(6)
    for seed in seeds:
        rng = np.random.default_rng(seed)
        n_intervals = int(8.5 * DAY / config.interval_s)
        times, values, level = seasonal_series(rng, n_intervals, config.interval_s)
        noise = float(np.std(values - level))
        true_onset = int(8 * DAY / config.interval_s) + int(rng.integers(0, 300))
        shifted = _inject(kind, values, true_onset, direction * 6 * noise)
        baseline = make_baseline(config)
        flagged_at = None
        for k, (t, value) in enumerate(zip(times.tolist(), shifted.tolist(), strict=True)):
            baseline.update(t, value)
            if baseline.onset() is not None:
                flagged_at = k
                break
        assert flagged_at is not None and flagged_at > true_onset, "missed or flagged early"
        assert flagged_at - true_onset <= 12, "flagged too late"
        deviation = baseline.deviation()
        assert deviation is not None and deviation.direction == direction
        onset_s = baseline.onset()
        assert onset_s is not None
        estimated = round((onset_s - MONDAY) / config.interval_s)
        hits += abs(estimated - true_onset) <= 1
    # statistical: a positive noise excursion just before the change can pull the estimate
    # back by an interval or two, so allow one miss (steps) or two (5-interval ramps) in six
    required = len(seeds) - 1 if kind == "step" else len(seeds) - 2
    assert hits >= required, f"onset within one interval in {hits}/{len(seeds)} cases"


def test_incident_does_not_quickly_become_normal(make_baseline: BaselineFactory) -> None:
    """Winsorized learning: an hour-long incident barely moves the expectation."""
    rng = np.random.default_rng(9)
    config = BaselineConfig()
    times, values, level = seasonal_series(rng, int(8.2 * DAY / 60), 60.0)
    noise = float(np.std(values - level))
    start = int(8 * DAY / 60)
    shifted = values.copy()
    shifted[start:] += 20 * noise
    baseline = make_baseline(config)
    feed(baseline, times[:start], values[:start])
    expected_before, _, _ = baseline.expected(times[start + 60])
    feed(baseline, times[start : start + 60], shifted[start : start + 60])
    expected_after, spread, _ = baseline.expected(times[start + 60])
    assert abs(expected_after - expected_before) < 2 * noise
    assert baseline.score(times[start + 60], shifted[start + 60]).alert_worthy


# ------------------------------------------------------------------------------ store
def test_store_caps_series_and_counts_every_refusal() -> None:
    store = BaselineStore(max_series=3)
    keys = [(f"svc-{i}", "rate") for i in range(5)]
    accepted = store.update_many(
        keys * 2, np.full(10, float(MONDAY)), np.arange(10, dtype=np.float64)
    )
    assert accepted == 6
    assert len(store) == 3
    assert store.refusals == {"series_cap": 4}
    assert not store.update("svc-0", "rate", MONDAY, math.inf)
    assert store.refusals == {"series_cap": 4, "non_finite": 1}


def test_store_lists_deviations_with_onset_and_round_trips() -> None:
    rng = np.random.default_rng(13)
    config = BaselineConfig(interval_s=300.0)
    store = BaselineStore(config, max_series=10)
    n_intervals = int(8 * DAY / config.interval_s)
    onset_index = n_intervals - 20
    for name in ("checkout", "cart"):
        times, values, level = seasonal_series(rng, n_intervals, config.interval_s)
        if name == "checkout":
            values = values.copy()
            values[onset_index:] -= 8 * np.std(values - level)
        store.update_many([(name, "rate")] * n_intervals, times, values)
    now = MONDAY + n_intervals * config.interval_s
    deviations = store.deviations(now)
    assert [(d.entity, d.signal, d.deviation.direction) for d in deviations] == [
        ("checkout", "rate", -1)
    ]
    onset_s = deviations[0].deviation.onset_s
    assert onset_s is not None
    assert abs(onset_s - (MONDAY + onset_index * config.interval_s)) <= config.interval_s

    restored = BaselineStore(config)
    restored.restore(store.snapshot())
    assert restored.snapshot() == store.snapshot()
    assert restored.keys() == store.keys()
    assert len(store.snapshot()) <= 1100 * len(store)


def test_store_merge_unions_keys_under_the_cap() -> None:
    left, right = BaselineStore(max_series=3), BaselineStore(max_series=3)
    for i in range(3):
        left.update(f"a{i}", "rate", MONDAY, 1.0)
        right.update(f"b{i}", "rate", MONDAY, 2.0)
    right.update("a0", "rate", MONDAY + 60, 3.0)
    right.update("b0", "rate", MONDAY, math.nan)
    left.merge(right)
    assert len(left) == 3
    assert left.refusals == {"series_cap": 4, "non_finite": 1}  # 1 in right, 3 on merge
    merged = left.get("a0", "rate")
    assert merged is not None


def test_default_config_fingerprint_is_stable() -> None:
    # snapshots and world-model checkpoints restore only under the fingerprint that wrote
    # them: a new field or default changes it and makes every deployed checkpoint refuse to
    # load on upgrade. Change this value only together with a way to migrate them.
    assert BaselineConfig().fingerprint() == 3551007656


def test_snapshot_from_another_config_is_refused() -> None:
    baseline = SeasonalBaseline(BaselineConfig(interval_s=60.0))
    with pytest.raises(ValueError):
        SeasonalBaseline.from_bytes(baseline.to_bytes(), BaselineConfig(interval_s=30.0))


def test_recent_scores_report_the_last_residuals() -> None:
    from pipeline.worldmodel.baseline import SeasonalBaseline

    b = SeasonalBaseline()
    for i in range(40):
        b.update(i * 60.0, 10.0 + (i % 3))
    b.update(40 * 60.0, 50.0)  # a jump, learned when the next interval arrives
    b.update(41 * 60.0, 11.0)
    scores = b.recent_scores()
    assert len(scores) == 32
    assert [t for t, _ in scores] == [i * 60.0 for i in range(9, 41)]
    assert scores[-1][1] > 5 and all(abs(z) < 5 for _, z in scores[:-1])


def test_counted_rates_have_a_counting_noise_floor() -> None:
    """A rare event (0.1 expected per minute) scored as a rate: silence has no spread, but one or
    two events in a minute are counting noise, not a sustained deviation; a real burst still is."""
    config = BaselineConfig(interval_s=60.0)
    rng = np.random.default_rng(7)
    plain, counted = SeasonalBaseline(config), SeasonalBaseline(config, count_scale=60.0)
    for i in range(3 * 1440):
        value = float(rng.poisson(0.1)) / 60.0
        for baseline in (plain, counted):
            baseline.update(MONDAY + i * 60.0, value)
    t = MONDAY + 3 * DAY
    assert counted.score(t, 1 / 60.0).score <= 1.0
    assert plain.score(t, 1 / 60.0).score > counted.score(t, 1 / 60.0).score
    assert counted.alerts_raised <= plain.alerts_raised
    assert counted.alerts_raised == 0
    for i in range(10):  # ten events a minute for ten minutes: a burst
        counted.update(t + i * 60.0, 10 / 60.0)
    counted.flush(t + 10 * 60.0)
    deviation = counted.deviation()
    assert deviation is not None and deviation.direction == 1
    assert deviation.onset_s == pytest.approx(t, abs=60.0)
    # the kind of series is part of the snapshot, and only series of one kind merge
    restored = SeasonalBaseline.from_bytes(counted.to_bytes(), config)
    assert restored.count_scale == 60.0 and restored == counted
    with pytest.raises(ValueError):
        plain.merge(counted)


def test_store_assigns_count_scale_per_series() -> None:
    store = BaselineStore(
        BaselineConfig(),
        count_scale=lambda entity, signal: 60.0 if signal.endswith("rate_per_s") else 0.0,
    )
    store.update("service:a", "span.rate_per_s", MONDAY, 1.0)
    store.update("service:a", "span.latency_p95_ms", MONDAY, 1.0)
    rate, latency = (
        store.get("service:a", "span.rate_per_s"),
        store.get("service:a", "span.latency_p95_ms"),
    )
    assert rate is not None and rate.count_scale == 60.0
    assert latency is not None and latency.count_scale == 0.0
    copy = BaselineStore(BaselineConfig())
    copy.restore(store.snapshot())
    assert copy.snapshot() == store.snapshot()


def _downgrade(series: bytes, version: int) -> bytes:
    """A current series snapshot as an older version wrote it: version 2 had no per-value
    exposure and resolution (the last 24 bytes of the scalars), version 1 no count_scale either
    (the 8 bytes before them)."""
    at = 7 + struct.calcsize("<qqdIqdIddIdBddqqbqqdII")
    if version == 1:
        return series[:2] + bytes([1]) + series[3:at] + series[at + 8 + 24 :]
    return series[:2] + bytes([2]) + series[3 : at + 8] + series[at + 8 + 24 :]


def test_version_1_store_snapshots_restore_with_the_store_count_scale() -> None:
    """Checkpoints written before count_scale existed still restore (the series' kind then comes
    from the store's rule)."""
    store = BaselineStore(BaselineConfig())
    for i in range(40):
        store.update("service:a", "span.rate_per_s", MONDAY + 60.0 * i, 1.0 + i % 3)
    current = store.snapshot()
    header = 4 + 1 + 4 + 8 + 4 + 2  # _STORE_HEADER
    keys = 4 + len(b"service:a") + 4 + len(b"span.rate_per_s")
    series = current[header + keys :]
    old = current[: header + keys] + _downgrade(series, 1)
    restored = BaselineStore(BaselineConfig(), count_scale=lambda entity, signal: 60.0)
    restored.restore(old)
    baseline = restored.get("service:a", "span.rate_per_s")
    assert baseline is not None and baseline.count_scale == 60.0
    original = store.get("service:a", "span.rate_per_s")
    assert original is not None
    assert baseline.hour_of_week_profile() == original.hour_of_week_profile()
    assert baseline.intervals_learned == original.intervals_learned == 39


def test_quantised_values_have_a_resolution_floor() -> None:
    """A quantile interpolated within histogram buckets hops between a few positions as the
    true quantile wanders near a bucket bound: with its resolution (the bucket width) that is
    not a deviation; without it, it is. A shift of several buckets still is."""
    config = BaselineConfig(interval_s=60.0)
    rng = np.random.default_rng(11)
    plain, quantised = SeasonalBaseline(config), SeasonalBaseline(config)
    low, high = (0.0121, 0.015), (0.0325, 0.025)  # (value, width of its bucket)
    state = low
    for i in range(3 * 1440):
        if rng.random() < 1 / 20:  # regimes of ~20 minutes on either side of the bound
            state = high if state is low else low
        value = state[0] + float(rng.normal(0.0, 0.0002))
        plain.update(MONDAY + i * 60.0, value)
        quantised.update(MONDAY + i * 60.0, value, resolution=state[1])
    t = MONDAY + 3 * DAY
    assert plain.alerts_raised > 0
    assert quantised.alerts_raised == 0
    assert 0.015 <= quantised.resolution <= 0.025
    assert quantised.expected(t)[1] >= quantised.resolution
    for i in range(10):  # ten times slower, many buckets up
        quantised.update(t + i * 60.0, 0.3, resolution=0.25)
    quantised.flush(t + 10 * 60.0)
    deviation = quantised.deviation()
    assert deviation is not None and deviation.direction == 1
    assert deviation.onset_s == pytest.approx(t, abs=60.0)
    # the resolution learned is part of the snapshot
    restored = SeasonalBaseline.from_bytes(quantised.to_bytes(), config)
    assert restored.resolution == quantised.resolution and restored == quantised


def test_proportions_have_a_binomial_floor() -> None:
    """An error ratio of ~50 requests a minute at 0.2 %: one error in 50 is 2 % (a z of ~4
    against a history of mostly zeros), yet it is binomial noise; with the request count as exposure
    the spread is at least sqrt(max(n p, 1)) / n. A real error burst still alerts."""
    config = BaselineConfig(interval_s=60.0)
    rng = np.random.default_rng(5)
    plain, ratio = SeasonalBaseline(config), SeasonalBaseline(config)
    for i in range(3 * 1440):
        n = int(rng.integers(40, 61))
        value = float(rng.binomial(n, 0.002)) / n
        plain.update(MONDAY + i * 60.0, value)
        ratio.update(MONDAY + i * 60.0, value, exposure=float(n))
    t = MONDAY + 3 * DAY
    assert plain.alerts_raised > 0
    assert ratio.alerts_raised == 0
    expected, spread, _ = ratio.expected(t)
    n = ratio.exposure
    assert 40 <= n <= 60
    assert spread >= math.sqrt(max(expected * n, 1.0)) / n - 1e-12
    assert ratio.score(t, 1 / 50, exposure=50.0).score <= 1.0
    assert plain.score(t, 1 / 50).score > 3.0
    # a smaller sample is noisier: the same ratio scores lower
    assert ratio.score(t, 0.1, exposure=10.0).score < ratio.score(t, 0.1, exposure=1000.0).score
    for i in range(10):  # 30 % errors
        ratio.update(t + i * 60.0, 0.3, exposure=50.0)
    ratio.flush(t + 10 * 60.0)
    deviation = ratio.deviation()
    assert deviation is not None and deviation.direction == 1
    assert deviation.onset_s == pytest.approx(t, abs=60.0)


def test_version_2_snapshots_restore_and_unknown_versions_are_refused() -> None:
    baseline = SeasonalBaseline(BaselineConfig(), count_scale=60.0)
    for i in range(40):
        baseline.update(MONDAY + 60.0 * i, 1.0 + i % 3)
    v2 = _downgrade(baseline.to_bytes(), 2)
    assert len(v2) == snapshot_size(2) == SNAPSHOT_BYTES - 24
    restored = SeasonalBaseline.from_bytes(v2)
    assert restored.count_scale == 60.0 and restored.exposure == 60.0
    assert restored.resolution == 0.0
    assert restored.intervals_learned == baseline.intervals_learned
    assert restored.hour_of_week_profile() == baseline.hour_of_week_profile()
    with pytest.raises(ValueError, match="version 2 must be"):
        SeasonalBaseline.from_bytes(v2[:-1])
    unknown = v2[:2] + bytes([9]) + v2[3:]
    with pytest.raises(ValueError, match="version 9"):
        SeasonalBaseline.from_bytes(unknown)
    store = BaselineStore(BaselineConfig())
    store.update("service:a", "x", MONDAY, 1.0)
    data = store.snapshot()
    at = len(data) - SNAPSHOT_BYTES + 2
    with pytest.raises(ValueError, match="unknown baseline snapshot version 9"):
        BaselineStore(BaselineConfig()).restore(data[:at] + bytes([9]) + data[at + 1 :])


def test_store_takes_exposures_and_resolutions_and_refuses_bad_ones() -> None:
    store = BaselineStore(BaselineConfig())
    keys = [("service:a", "span.error_ratio"), ("service:a", "h.p50"), ("service:a", "x")]
    accepted = store.update_many(
        keys * 2,
        [MONDAY] * 3 + [MONDAY + 60.0] * 3,
        [0.1, 0.02, 1.0] * 2,
        [40.0, 0.0, -1.0] * 2,
        [0.0, 0.015, 0.0] * 2,
    )
    assert accepted == 4
    assert store.refusals == {"bad_exposure_or_resolution": 2}
    ratio, quantile = store.get(*keys[0]), store.get(*keys[1])
    assert ratio is not None and ratio.exposure == 40.0 and ratio.resolution == 0.0
    assert quantile is not None and quantile.exposure == 0.0
    assert quantile.resolution == pytest.approx(0.015)
    assert store.get(*keys[2]) is None
    with pytest.raises(ValueError):
        store.update_many(keys, [MONDAY] * 3, [1.0] * 3, [1.0])


def test_the_first_value_sets_the_level_and_is_no_residual(make_baseline: BaselineFactory) -> None:
    # a level of 100 with noise of about 0.5: before the fix the first value's distance from the
    # empty state (100) was averaged into the spread for a day's worth of intervals
    rng = np.random.default_rng(3)
    b = make_baseline(BaselineConfig(interval_s=300.0))
    values = 100.0 + 0.5 * rng.standard_normal(12)
    times = MONDAY + 300.0 * np.arange(13)
    feed(b, times[:12], values)
    b.flush(float(times[12]))
    scores = b.recent_scores()
    assert scores[0][1] == 0.0  # nothing to compare the first value with
    assert all(abs(z) < 4 for _, z in scores[1:])
    expected, spread, _ = b.expected(float(times[12]))
    assert expected == pytest.approx(100.0, abs=1.0)
    noise_mad = float(np.mean(np.abs(np.diff(values)))) / math.sqrt(2)
    # sigma-equivalent of the residuals, widened while warming up and on the global tier (x4)
    assert spread < 4 * math.sqrt(math.pi / 2) * noise_mad + 1.0
    assert spread < 5.0  # the first value's distance from zero would have made it ~15


def test_an_early_incident_bends_a_young_baseline_only_a_little(
    make_baseline: BaselineFactory,
) -> None:
    # ten quiet intervals, then two intervals of an incident 100x the noise, then quiet again:
    # the incident's second interval must still read as a deviation, and the spread learned
    # from it stay far below what the raw incident values would make it
    rng = np.random.default_rng(5)
    values = 50.0 + 0.5 * rng.standard_normal(24)
    values[10:12] += 50.0
    times = MONDAY + 300.0 * np.arange(25)

    def learn(config: BaselineConfig) -> tuple[float, float]:
        b = make_baseline(config)
        feed(b, times[:24], values)
        b.flush(float(times[24]))
        second = dict(b.recent_scores())[float(times[11])]
        return second, b.expected(float(times[24]))[1]

    second, spread = learn(BaselineConfig(interval_s=300.0))
    # winsorized only once alerting starts (30 intervals), the first incident interval is
    # learned as noise: the second looks nearly normal and the spread stays inflated
    second_loose, spread_loose = learn(BaselineConfig(interval_s=300.0, winsorize_after=30))
    assert second > 5.0 and second_loose < 3.0
    assert spread < 0.5 * spread_loose


def test_memories_are_event_time_whatever_the_interval_the_values_come_in() -> None:
    """5-minute values learned at a 60 s interval (one value in five intervals) follow a level
    shift as fast, in event time, as at a 300 s interval; a burst after a long silence does not
    count its silence."""
    rng = np.random.default_rng(5)
    rows = 2 * 288 + 24  # two days of 5-minute values, then two hours 1.5 spreads higher
    values = 100.0 + 2.0 * rng.standard_normal(rows)
    values[2 * 288 :] += 3.0
    learned = {}
    for interval_s in (300.0, 60.0):
        baseline = SeasonalBaseline(BaselineConfig(interval_s=interval_s))
        for k in range(rows):
            baseline.update(MONDAY + 300.0 * k, float(values[k]))
        baseline.flush(MONDAY + 300.0 * rows)
        learned[interval_s] = baseline.expected(MONDAY + 300.0 * rows)
    (coarse, spread, _), (fine, _, _) = learned[300.0], learned[60.0]
    assert coarse - 100.0 > 1.0  # the shift is being learned
    assert fine == pytest.approx(coarse, abs=0.05 * spread)
    # a job's latency: a burst of values every interval, then silence for an hour
    config = BaselineConfig(interval_s=60.0)
    burst = SeasonalBaseline(config)
    for start in (0.0, 3600.0):
        for k in range(5):
            burst.update(MONDAY + start + 60.0 * k, 1.0 + 0.01 * k)
    burst.update(MONDAY + 7200.0, 1.15)  # the next burst's first value, after the silence
    burst.flush(MONDAY + 7260.0)
    steady = SeasonalBaseline(config)
    for k in range(10):
        steady.update(MONDAY + 60.0 * k, 1.0 + 0.01 * (k % 5))
    steady.update(MONDAY + 600.0, 1.15)
    steady.flush(MONDAY + 660.0)
    assert burst.expected(MONDAY + 7260.0)[0] == pytest.approx(
        steady.expected(MONDAY + 660.0)[0], rel=0.02
    )


def _second_score(config: BaselineConfig, first: float, second: float) -> float:
    """The recorded score of a series' second value (flushed past its interval)."""
    baseline = SeasonalBaseline(config)
    baseline.update(MONDAY, first)
    baseline.update(MONDAY + config.interval_s, second)
    baseline.flush(MONDAY + 2 * config.interval_s)
    scores = baseline.recent_scores()
    assert [t for t, _ in scores] == [MONDAY, MONDAY + config.interval_s]
    return scores[1][1]


def test_a_second_value_is_scored_against_a_prior_on_the_spread() -> None:
    # one value learned, no spread yet: a small change is no deviation, a latency tripling is,
    # but the score is clipped (a prior says how large a normal change is, not how far beyond
    # normal this one is), and a snapshot restores under another prior (scoring only)
    config = BaselineConfig()
    assert 0 < _second_score(config, 0.10, 0.11) < 1.0
    assert _second_score(config, 0.10, 0.30) == pytest.approx(config.z_clip, abs=0.25)
    assert _second_score(config, 1.00, 10.0) == pytest.approx(config.z_clip, abs=0.25)
    # the spread: 0.1 of the level, widened for youth as a learned one is (x 2.41)
    assert _second_score(config, 0.10, 0.15) == pytest.approx(0.05 / 0.0241, abs=0.25)
    assert _second_score(config, 0.10, 0.02) == pytest.approx(-0.08 / 0.0241, abs=0.25)
    assert _second_score(BaselineConfig(prior_spread_relative=0.0), 0.10, 0.30) == 0.0
    # a gauge at 0 that counts nothing has no prior: its second value is not scored
    assert _second_score(config, 0.0, 5.0) == 0.0
    other = BaselineConfig(prior_spread_relative=0.3)
    assert other.fingerprint() == config.fingerprint()
    baseline = SeasonalBaseline(config)
    baseline.update(MONDAY, 0.10)
    baseline.flush(MONDAY + config.interval_s)
    restored = SeasonalBaseline.from_bytes(baseline.to_bytes(), other)
    assert restored.score(MONDAY + config.interval_s, 0.13).score == pytest.approx(
        0.03 / (0.3 * 0.10 * (1 + 2 / math.sqrt(2))), abs=0.25
    )


def test_a_second_count_is_scored_against_its_counting_noise() -> None:
    # a rate that counts events has the counting noise as its spread from the second value on:
    # 0 events, then 4 in an interval, is 4 events against a floor of one
    config = BaselineConfig(interval_s=60.0)
    baseline = SeasonalBaseline(config, count_scale=60.0)
    baseline.update(MONDAY, 0.0)
    baseline.update(MONDAY + 60.0, 4 / 60.0)
    baseline.flush(MONDAY + 120.0)
    assert baseline.recent_scores()[1][1] == pytest.approx(4.0, abs=0.25)
