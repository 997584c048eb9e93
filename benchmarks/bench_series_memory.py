"""World-model memory per series: what one more metric series costs the world-model process.

N new metric series (half gauges, half cumulative counters, 50 services) go through
``WorldModel.apply`` as sealed ``metric_series`` and ``metrics`` segments would, each with a value
in ``--intervals`` consecutive intervals, and the intervals are closed, so every series has its
registry entry, its counter state (counters) and its baseline. Then each component is measured
by what freeing it gives back to tracemalloc (bytes still held, not peaks): the baselines
(``BaselineStore``, series names included), the metric series registry and the counter state.
The RSS delta of the whole feed (``/proc/self/statm``) is measured in a separate process without
tracemalloc; it also holds what the allocators keep after the transient work of an interval of N
points (Arrow and polars buffers, Python objects of the rows), which is a peak of the batch, not
state per series. All are printed per series against the 1 KB goal.

Run: .venv/bin/python benchmarks/bench_series_memory.py [--series 20000 100000] [--intervals 5]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
import tracemalloc
from dataclasses import replace

import pyarrow as pa

from pipeline.segments.store import Manifest, SourceRange
from pipeline.worldmodel.model import WorldModel, WorldModelConfig
from schemas.segments import METRIC_POINTS, METRIC_SERIES

GOAL_BYTES = 1024
BASE_NS = 1_700_000_040 * 10**9
INTERVAL_NS = 60 * 10**9
SERVICES = 50


def _manifest(signal: str, table: pa.Table, offset: int, start: int, end: int) -> Manifest:
    return Manifest(
        segment_id=f"{signal}-{offset}",
        signal=signal,
        path="",
        start_unix_nano=start,
        end_unix_nano=end,
        services=(),
        rows=table.num_rows,
        bytes=0,
        source=SourceRange("otlp_metrics", 0, offset, offset),
        arrow_schema_version=1,
        sealed_at="",
    )


def series_table(n: int) -> pa.Table:
    """``metric_series`` rows as ingest writes them from remote_write."""
    rows = []
    for i in range(n):
        service = f"svc-{i % SERVICES}"
        counter = i % 2 == 1
        rows.append(
            {
                "series_id": i + 1,
                "first_seen_unix_nano": BASE_NS,
                "name": f"app_requests_{i % 97}_total" if counter else f"app_queue_depth_{i % 89}",
                "kind": "sum" if counter else "gauge",
                "unit": "1" if counter else "",
                "temporality": 2 if counter else None,
                "monotonic": counter,
                "service": service,
                "attributes": json.dumps({"instance": f"10.0.{i // 250}.{i % 250}:9100"}),
                "resource_attributes": json.dumps(
                    {"service.name": service, "service.instance.id": f"{service}-0"}
                ),
            }
        )
    return pa.Table.from_pylist(rows, schema=METRIC_SERIES)


def points_table(n: int, interval: int) -> pa.Table:
    t = BASE_NS + interval * INTERVAL_NS + 10**9
    ids = list(range(1, n + 1))
    values = [
        float((i * 7 + interval * 13) % 100) + (interval * 50.0 if i % 2 == 0 else 0.0) for i in ids
    ]
    columns: dict[str, list[object]] = {name: [None] * n for name in METRIC_POINTS.names}
    columns.update(series_id=ids, time_unix_nano=[t] * n, value=values)
    return pa.Table.from_pydict(columns, schema=METRIC_POINTS)


def feed(n: int, intervals: int) -> WorldModel:
    model = WorldModel(
        WorldModelConfig(
            interval_s=60.0,
            allowed_lateness_s=0.0,
            max_series=max(200_000, 2 * n),
            max_buffered_rows=max(2_000_000, 2 * n),
        )
    )
    model.config = replace(model.config, topic_partitions=(("otlp_metrics", 1),))
    series = series_table(n)
    offset = 0
    model.apply(_manifest("metric_series", series, offset, BASE_NS, BASE_NS), series)
    for interval in range(intervals + 1):
        offset += 1
        points = points_table(n, interval)
        start = BASE_NS + interval * INTERVAL_NS
        model.apply(_manifest("metrics", points, offset, start, start + INTERVAL_NS), points)
        model.advance()
    return model


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_rss(n: int, intervals: int) -> dict[str, float]:
    # a small feed first: what the libraries allocate once (polars, pyarrow) is not per series
    warm = feed(200, intervals)
    del warm
    gc.collect()
    before = rss_bytes()
    start = time.perf_counter()
    model = feed(n, intervals)
    elapsed = time.perf_counter() - start
    gc.collect()
    return {
        "rss": rss_bytes() - before,
        "seconds": elapsed,
        "baselines": len(model.baselines),
        "registry": len(model.metric_series),
        "counters": len(model.metrics.last),
    }


def measure_components(n: int, intervals: int) -> dict[str, float]:
    tracemalloc.start()
    model = feed(n, intervals)
    gc.collect()
    out: dict[str, float] = {}

    def held() -> int:
        gc.collect()
        return tracemalloc.get_traced_memory()[0]

    total = held()
    # the numbers of the baselines' rows, without names and index (stores that hold no columns: 0)
    state = getattr(model.baselines, "state_bytes", 0)
    before = held()
    model.metrics.last.clear()
    out["counter state"] = before - held()
    before = held()
    model.metric_series = type(model.metric_series)()
    out["metric series registry"] = before - held()
    before = held()
    model.baselines = type(model.baselines)(model.baselines.config)
    out["baselines"] = before - held()
    out["  of which the rows' numbers"] = state
    del model
    out["whole model"] = total - held()
    tracemalloc.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--intervals", type=int, default=5)
    parser.add_argument("--child", choices=["rss", "components"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        measure = measure_rss if args.child == "rss" else measure_components
        print(json.dumps(measure(args.series[0], args.intervals)))
        return
    print(f"goal: <= {GOAL_BYTES} B of world-model state per series")
    for n in args.series:
        results = {}
        for child in ("rss", "components"):
            done = subprocess.run(
                [sys.executable, __file__, "--child", child, "--series", str(n)]
                + ["--intervals", str(args.intervals)],
                check=True,
                capture_output=True,
                text=True,
            )
            results[child] = json.loads(done.stdout)
        rss, parts = results["rss"], results["components"]
        print(
            f"\n{n:,} series, {args.intervals} intervals each: {rss['baselines']:,} baselines, "
            f"{rss['registry']:,} registry entries, {rss['counters']:,} counter states "
            f"(fed in {rss['seconds']:.1f} s)"
        )
        print(f"  {'component (tracemalloc, held)':32} {'B/series':>10} {'vs goal':>8}")
        for name, size in parts.items():
            print(f"  {name:32} {size / n:10,.0f} {size / n / GOAL_BYTES:7.2f}x")
        print(
            f"  {'RSS delta of the feed':32} {rss['rss'] / n:10,.0f} {rss['rss'] / n / GOAL_BYTES:7.2f}x"
        )


if __name__ == "__main__":
    main()
