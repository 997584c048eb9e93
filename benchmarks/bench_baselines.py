"""Baselines benchmark: updates/s per core and bytes of state per series, SeasonalBaseline /
BaselineStore against a naive reference in the same run (printed as ratios).

The naive reference keeps every (t, value) and, on each update, scores the value against the
median / MAD of the history at the same hour of day (what a quick script would do).

Run: .venv/bin/python benchmarks/bench_baselines.py [--series N] [--days D]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from pipeline.worldmodel import SNAPSHOT_BYTES, BaselineConfig, BaselineStore

MONDAY = 1_699_833_600
INTERVAL_S = 60.0


class NaiveHourOfDayBaseline:
    """Full history in lists; median / MAD per hour of day recomputed on every update."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.values: list[float] = []

    def update(self, t: float, value: float) -> float:
        score = self.score(t, value)
        self.times.append(t)
        self.values.append(value)
        return score

    def score(self, t: float, value: float) -> float:
        if not self.values:
            return 0.0
        times = np.asarray(self.times)
        values = np.asarray(self.values)
        same_hour = values[(times // 3600) % 24 == (t // 3600) % 24]
        if same_hour.size == 0:
            same_hour = values
        median = float(np.median(same_hour))
        mad = float(np.median(np.abs(same_hour - median))) * 1.4826 or 1e-9
        return (value - median) / mad


def synthetic(n_series: int, days: float, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = int(days * 86400 / INTERVAL_S)
    times = MONDAY + np.arange(n) * INTERVAL_S
    hours = (times / 3600) % 24
    values = np.empty((n_series, n))
    for i in range(n_series):
        base = rng.uniform(10, 1000)
        values[i] = base * (1 + 0.4 * np.sin(2 * np.pi * (hours - rng.uniform(0, 24)) / 24))
        values[i] += rng.normal(0, 0.05 * base, n)
    return times, values


def _feed_store(times: np.ndarray, values: np.ndarray) -> tuple[BaselineStore, float, int]:
    n_series, n = values.shape
    # interleave series per interval, the order a stream delivers them
    keys = [(f"svc-{i}", "rate") for i in range(n_series)] * n
    ts = np.repeat(times, n_series)
    flat = values.T.reshape(-1)
    store = BaselineStore(BaselineConfig(interval_s=INTERVAL_S), max_series=n_series)
    start = time.perf_counter()
    store.update_many(keys, ts, flat)
    return store, time.perf_counter() - start, len(flat)


def bench_store(times: np.ndarray, values: np.ndarray) -> tuple[float, float, int]:
    """(updates/s, bytes in memory per series, snapshot bytes per series incl. keys)."""
    n_series = values.shape[0]
    store, elapsed, updates = _feed_store(times, values)  # timed without tracemalloc
    snapshot = store.snapshot()
    del store
    tracemalloc.start()
    store, _, _ = _feed_store(times, values)
    memory, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return updates / elapsed, memory / n_series, len(snapshot) // n_series


def bench_naive(times: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """(updates/s, bytes in memory per series) of the naive reference."""
    n_series, n = values.shape
    baselines = [NaiveHourOfDayBaseline() for _ in range(n_series)]
    start = time.perf_counter()
    for k, t in enumerate(times.tolist()):
        for i in range(n_series):
            baselines[i].update(t, float(values[i, k]))
    elapsed = time.perf_counter() - start
    del baselines
    tracemalloc.start()
    held = [NaiveHourOfDayBaseline() for _ in range(n_series)]
    for k, t in enumerate(times.tolist()):
        for i in range(n_series):
            held[i].times.append(t)
            held[i].values.append(float(values[i, k]))
    memory, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return n * n_series / elapsed, memory / n_series


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=50)
    parser.add_argument("--days", type=float, default=3.0)
    parser.add_argument("--naive-series", type=int, default=5)
    args = parser.parse_args()

    times, values = synthetic(args.series, args.days)
    rate, memory, snapshot = bench_store(times, values)
    naive_rate, naive_memory = bench_naive(times, values[: args.naive_series])
    hours = args.days * 24
    print(
        f"history: {args.days:g} days of {INTERVAL_S:g}-s intervals ({hours:g} series-hours each)"
    )
    print(f"{'':32} {'updates/s/core':>15} {'state B/series':>15}")
    print(f"{'BaselineStore (SeasonalBaseline)':32} {rate:15,.0f} {memory:15,.0f}  (in memory)")
    print(f"{'':32} {'':15} {snapshot:15,d}  (snapshot; fixed {SNAPSHOT_BYTES})")
    print(
        f"{'naive median/MAD by hour':32} {naive_rate:15,.0f} {naive_memory:15,.0f}  (in memory, grows)"
    )
    print(f"ratio updates/s: {rate / naive_rate:,.1f}x")
    print(f"ratio state in memory: naive/ours {naive_memory / memory:,.1f}x at {args.days:g} days")
    per_day = naive_memory / args.days
    print(f"naive state grows ~{per_day:,.0f} B/series/day; ours is fixed after warm-up")


if __name__ == "__main__":
    main()
