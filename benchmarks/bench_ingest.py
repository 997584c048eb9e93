"""Ingest benchmark: OTLP bytes (as on the topic) -> sealed segments, per core, with references.

Prints items/s per core for spans, log lines and metric samples through the same code the
workers run (``SegmentIngestor.decode`` + ``seal``), bytes per span and per metric sample in the
sealed segments, and the same payloads compressed with zstd -3 and -19 as the reference, all in
one run. CPU time (process_time) is used, so the figure is per core.

    .venv/bin/python benchmarks/bench_ingest.py [--requests N] [--source factory|simulator]
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from collections.abc import Callable
from typing import Any

import zstandard

from pipeline.ingest.core import KafkaRecord, SegmentIngestor, codec_for
from pipeline.segments.store import SegmentStore
from pipeline.testing import log_request, metric_request, span_request

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
    topic: str, make: Callable[[int], Any], requests: int, per_segment: int
) -> dict[str, float]:
    reqs = [make(seed) for seed in range(requests)]
    payloads = [r.SerializeToString() for r in reqs]
    items = sum(_count(topic, r) for r in reqs)
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
        for start in range(0, requests, per_segment):
            records = [
                KafkaRecord(topic, 0, start + i, p)
                for i, p in enumerate(payloads[start : start + per_segment])
            ]
            ingestor.seal(ingestor.decode(records), NOW)
        cpu = time.process_time() - t0
        stored = sum(m.bytes for m in store.manifests())
    return {
        "items": items,
        "items_per_s": items / cpu,
        "raw_B": raw / items,
        "zstd3_B": z3 / items,
        "zstd19_B": z19 / items,
        "stored_B": stored / items,
        "zstd3_items_per_s": items / max(t_z3, 1e-9),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=400, help="export requests per signal")
    parser.add_argument("--per-segment", type=int, default=200, help="records sealed per segment")
    args = parser.parse_args()
    signals = [
        ("spans", "otlp_spans", lambda s: span_request(s, traces=25)),
        ("log lines", "otlp_logs", lambda s: log_request(s, lines=60)),
        ("metric samples", "otlp_metrics", lambda s: metric_request(s, points=20)),
    ]
    print(
        "| signal | items | items/s/core | OTLP B/item | zstd-3 B/item | zstd-19 B/item | stored B/item | stored/zstd-19 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, topic, make in signals:
        r = run(topic, make, args.requests, args.per_segment)
        print(
            f"| {label} | {r['items']:,.0f} | {r['items_per_s']:,.0f} | {r['raw_B']:.1f} | {r['zstd3_B']:.1f} |"
            f" {r['zstd19_B']:.1f} | {r['stored_B']:.1f} | {r['stored_B'] / r['zstd19_B']:.2f} |"
        )
    print("\ngoals: >= 100k spans/s/core; <= 30 B/span; <= 1.0 B/metric sample (regular scrapes)")


if __name__ == "__main__":
    main()
