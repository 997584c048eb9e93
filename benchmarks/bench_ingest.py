"""Ingest benchmark: OTLP bytes (as on the topic) -> sealed segments, per core, with references.

Prints items/s per core for spans, log lines and metric samples through the same code the
workers run (``SegmentIngestor.decode`` + ``seal``), bytes per item in the sealed segments (every
segment of the signal counted: metric series as well as points), and the same OTLP payloads
compressed with zstd -3 and -19 as the reference, all in one run. CPU time (process_time) is
used, so the figure is per core.

Workloads: the random-valued test factories (``pipeline.testing``), plus realistic shapes:
- ``spans (traces)``: whole traces of 10-30 spans with fan-out across a dozen services,
  repeated service/operation names, log-normal durations (``trace_requests``);
- ``metric samples (scrapes)``: 2,000 Prometheus-style sample series scraped every 15 s for an
  hour, one export request per scrape (``scrape_requests``). A sample is one Prometheus sample
  (a histogram point is its buckets + sum + count), so the Gorilla reference, computed on the
  same samples in this run (delta-of-delta timestamps + XOR floats, bits counted, no labels), is
  comparable.

    .venv/bin/python benchmarks/bench_ingest.py [--requests N] [--per-segment N] [--quick]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import struct
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import zstandard

from pipeline.ingest.core import KafkaRecord, SegmentIngestor, codec_for
from pipeline.query import LogQuery, trace
from pipeline.segments.store import SegmentStore
from pipeline.testing import (
    log_request,
    metric_request,
    scrape_requests,
    span_request,
    trace_requests,
)

NOW = dt.datetime(2026, 11, 20, 14, 0, tzinfo=dt.UTC)


def _count(topic: str, req: Any) -> int:
    if topic == "otlp_spans":
        return sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans)
    if topic == "otlp_logs":
        return sum(len(sl.log_records) for rl in req.resource_logs for sl in rl.scope_logs)
    n = 0
    for rm in req.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                n += len(getattr(m, kind).data_points) if kind else 0
    return n


def run(
    topic: str, reqs: Sequence[Any], per_segment: int, items: int | None = None
) -> dict[str, float]:
    """Ingest ``reqs`` (``items`` overrides the OTLP item count, e.g. Prometheus samples)."""
    payloads = [r.SerializeToString() for r in reqs]
    items = items or sum(_count(topic, r) for r in reqs)
    raw = sum(len(p) for p in payloads)
    blob = b"".join(payloads)
    t0 = time.process_time()
    z3 = len(zstandard.ZstdCompressor(level=3).compress(blob))
    t_z3 = time.process_time() - t0
    z19 = len(zstandard.ZstdCompressor(level=19).compress(blob))
    with tempfile.TemporaryDirectory() as root:
        store = SegmentStore(root)
        ingestor = SegmentIngestor(store, codec_for(topic, store))
        t0 = time.process_time()
        t_seal = 0.0
        for start in range(0, len(payloads), per_segment):
            records = [
                KafkaRecord(topic, 0, start + i, p)
                for i, p in enumerate(payloads[start : start + per_segment])
            ]
            batch = ingestor.decode(records)
            t1 = time.process_time()
            ingestor.seal(batch, NOW)
            t_seal += time.process_time() - t1
        cpu = time.process_time() - t0
        stored = sum(m.bytes for m in store.manifests())
        latency = query_latency(topic, store, reqs)
    return {
        **latency,
        "items": items,
        "items_per_s": items / cpu,
        "seal_share": t_seal / cpu,
        "raw_B": raw / items,
        "zstd3_B": z3 / items,
        "zstd19_B": z19 / items,
        "stored_B": stored / items,
        "zstd3_items_per_s": items / max(t_z3, 1e-9),
    }


def _median_ms(fn: Any, repeat: int = 7) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def query_latency(topic: str, store: SegmentStore, reqs: Sequence[Any]) -> dict[str, float]:
    """Median wall ms of a trace-by-id and a template search, next to a naive full scan."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if topic == "otlp_spans":
        trace_id = reqs[len(reqs) // 2].resource_spans[0].scope_spans[0].spans[0].trace_id
        ours = _median_ms(lambda: trace(store, trace_id.hex()))

        def naive() -> None:
            for m in store.manifests("spans"):
                t = pq.read_table(store.uri(m))
                t.filter(pc.equal(t["trace_id"], pa.scalar(trace_id, pa.binary(16))))

        return {"query_ms": ours, "naive_query_ms": _median_ms(naive)}
    if topic == "otlp_logs":
        query = LogQuery(store)
        ours = _median_ms(lambda: query.run(template="payment call failed", limit=100))

        def naive_logs() -> None:  # what a store without a template dictionary must do
            for m in store.manifests("logs"):
                t = pq.read_table(store.uri(m))
                for tid, params in zip(
                    t["template_id"].to_pylist(), t["params"].to_pylist(), strict=True
                ):
                    _ = "payment call failed" in query.states.reconstruct(tid, params)

        return {"query_ms": ours, "naive_query_ms": _median_ms(naive_logs, 3)}
    return {}


def gorilla_bytes(series: Sequence[Sequence[tuple[int, float]]]) -> int:
    """Bytes of a Gorilla-style encoding (Pelkonen et al. 2015) of sample series, bits counted.

    Per series: first timestamp and value raw (64 bits each), first delta 14 bits, then
    delta-of-delta with the paper's buckets (1/9/12/16/36 bits) and XOR floats ('0' for equal,
    '10' + meaningful bits inside the previous leading/trailing window, else '11' + 5 + 6 bits
    of header + meaningful bits). Timestamps in ms (Prometheus precision).
    """
    bits = 0
    for points in series:
        if not points:
            continue
        bits += 128
        prev_t, prev_delta = points[0][0], None
        prev_v = struct.unpack(">Q", struct.pack(">d", points[0][1]))[0]
        lead_w, trail_w = 65, 65
        for t, v in points[1:]:
            delta = t - prev_t
            if prev_delta is None:
                bits += 14
            else:
                dod = delta - prev_delta
                bits += (
                    1
                    if dod == 0
                    else 9
                    if -63 <= dod <= 64
                    else 12
                    if -255 <= dod <= 256
                    else 16
                    if -2047 <= dod <= 2048
                    else 36
                )
            prev_t, prev_delta = t, delta
            cur = struct.unpack(">Q", struct.pack(">d", v))[0]
            xor, prev_v = cur ^ prev_v, cur
            if xor == 0:
                bits += 1
                continue
            lead = min(64 - xor.bit_length(), 31)
            trail = (xor & -xor).bit_length() - 1
            if lead_w <= lead and trail_w <= trail:
                bits += 2 + 64 - lead_w - trail_w
            else:
                bits += 2 + 5 + 6 + 64 - lead - trail
                lead_w, trail_w = lead, trail
    return bits // 8


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=400, help="export requests per factory")
    parser.add_argument("--per-segment", type=int, default=200, help="records sealed per segment")
    parser.add_argument("--scrapes", type=int, default=240, help="15 s scrapes (1 request each)")
    parser.add_argument("--quick", action="store_true", help="a quarter of every workload")
    args = parser.parse_args()
    n = args.requests // 4 if args.quick else args.requests
    scrapes = args.scrapes // 4 if args.quick else args.scrapes
    scrape_reqs, samples = scrape_requests(scrapes)
    n_samples = sum(len(s) for s in samples)
    t0 = time.process_time()
    gorilla = gorilla_bytes(samples) / n_samples
    t_gorilla = time.process_time() - t0
    workloads: list[tuple[str, str, Sequence[Any], int, int | None]] = [
        ("spans (factory)", "otlp_spans", [span_request(s, traces=25) for s in range(n)], 0, None),
        ("spans (traces)", "otlp_spans", trace_requests(n // 2), 0, None),
        ("log lines (factory)", "otlp_logs", [log_request(s, lines=60) for s in range(n)], 0, None),
        (
            "metric points (factory)",
            "otlp_metrics",
            [metric_request(s, points=20) for s in range(n)],
            0,
            None,
        ),
        ("metric samples (scrapes)", "otlp_metrics", scrape_reqs, 120, n_samples),
    ]
    print(
        "| workload | items | items/s/core | seal share | OTLP B/item | zstd-3 B/item |"
        " zstd-19 B/item | stored B/item | stored/zstd-19 | zstd-3 items/s/core |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    results: dict[str, dict[str, float]] = {}
    for label, topic, reqs, per_segment, items in workloads:
        r = run(topic, reqs, per_segment or args.per_segment, items)
        results[label] = r
        print(
            f"| {label} | {r['items']:,.0f} | {r['items_per_s']:,.0f} | {r['seal_share']:.0%} |"
            f" {r['raw_B']:.1f} | {r['zstd3_B']:.2f} | {r['zstd19_B']:.2f} | {r['stored_B']:.2f} |"
            f" {r['stored_B'] / r['zstd19_B']:.2f} | {r['zstd3_items_per_s']:,.0f} |"
        )
    print("\n| query | ours ms (median) | naive full scan ms | ratio |\n|---|---:|---:|---:|")
    for label, what in (
        ("spans (traces)", "trace by id"),
        ("log lines (factory)", "template search"),
    ):
        r = results[label]
        print(
            f"| {what} | {r['query_ms']:.1f} | {r['naive_query_ms']:.1f} | {r['naive_query_ms'] / r['query_ms']:.1f}x |"
        )
    scr = results["metric samples (scrapes)"]
    print(
        f"\nscrapes: {len(samples):,} sample series x {scrapes} scrapes, 120 scrapes (30 min) per"
        f" segment; Gorilla-style reference {gorilla:.2f} B/sample"
        f" ({n_samples / max(t_gorilla, 1e-9):,.0f} samples/s bit counting in Python);"
        f" stored/Gorilla {scr['stored_B'] / gorilla:.2f}"
    )
    spans_rate = min(
        results["spans (factory)"]["items_per_s"], results["spans (traces)"]["items_per_s"]
    )
    span_bytes = max(results["spans (factory)"]["stored_B"], results["spans (traces)"]["stored_B"])
    goals = [
        (">= 100k spans/s/core (worse workload)", f"{spans_rate:,.0f}", spans_rate >= 100_000),
        ("<= 30 B/span, ids included (worse workload)", f"{span_bytes:.1f}", span_bytes <= 30),
        ("<= 1.0 B/sample on regular scrapes", f"{scr['stored_B']:.2f}", scr["stored_B"] <= 1.0),
        (
            "metrics below Gorilla on the same samples",
            f"{scr['stored_B'] / gorilla:.2f}x",
            scr["stored_B"] < gorilla,
        ),
    ]
    print("\n| goal | measured | status |\n|---|---:|---|")
    for goal, value, ok in goals:
        print(f"| {goal} | {value} | {'met' if ok else 'NOT met'} |")


if __name__ == "__main__":
    main()
