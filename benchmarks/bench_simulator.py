"""Simulator throughput in bulk mode: generated spans per second per core (goal >= 200k).

Prints, in the same run, the vectorized path (simulate + serialize OTLP bytes with numpy patching
of precomputed span templates) next to the naive reference (the same spans built one protobuf
``Span`` message at a time), and the full pipeline with metrics, logs and alerts switched on.
Times are process CPU time (after two warm-up slices), so the numbers are per core; on a
machine shared with other work they still vary by 20-30 % from run to run.

    .venv/bin/python benchmarks/bench_simulator.py [--services 100] [--rate 2000] [--seconds 60]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from jobs.simulator.simulation import RunConfig, Simulation
from jobs.simulator.telemetry import encode_spans_reference

START_S = 1_763_730_000.0


def bulk(
    services: int, rate: float, seconds: float, telemetry: bool, slice_s: float = 5.0
) -> tuple[int, float, int]:
    config = RunConfig(
        start_s=START_S,
        scenario="database-slowdown",
        seed=1,
        services=services,
        warmup_s=seconds / 2,
        duration_s=seconds / 2,
        peak_rate=rate,
        slice_s=slice_s,
        metrics=telemetry,
        logs=telemetry,
        alerts=telemetry,
    )
    sim = Simulation(config)
    spans = 0
    payload = 0
    slices = sim.slices()
    for _ in range(2):  # warm up: span templates and trace plans are built on first use
        next(slices)
    t = time.process_time()
    for result in slices:
        spans += result.span_count
        payload += sum(len(r.value) for r in result.records if r.topic == "otlp_spans")
    return spans, time.process_time() - t, payload


def naive(services: int, rate: float, max_spans: int) -> tuple[int, float, bool]:
    sim = Simulation(
        RunConfig(
            start_s=START_S,
            seed=1,
            services=services,
            warmup_s=5.0,
            duration_s=0.0,
            peak_rate=rate,
            metrics=False,
            logs=False,
            alerts=False,
        )
    )
    (result,) = list(sim.slices())
    batch = result.spans.take(np.arange(min(max_spans, len(result.spans))))
    t = time.process_time()
    records = encode_spans_reference(sim.span_encoder, batch, sim.versions)
    elapsed = time.process_time() - t
    sample = batch.take(np.arange(min(2000, len(batch))))
    fast_sample = sim.span_encoder.encode(sample, sim.versions)
    identical = fast_sample == encode_spans_reference(sim.span_encoder, sample, sim.versions)
    assert sum(len(v) for _, v in records) > 0
    return len(batch), elapsed, identical


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument(
        "--rate", type=float, default=2000.0, help="edge requests/s at the daily peak"
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="simulated seconds per run")
    args = parser.parse_args()

    spans, cpu, payload = bulk(args.services, args.rate, args.seconds, telemetry=False)
    fast_rate = spans / cpu
    print(
        f"bulk spans (simulate + OTLP encode): {spans:>10,} spans in {cpu:6.2f} s CPU = {fast_rate:>10,.0f} spans/s/core ({payload / spans:.0f} B/span)"
    )
    full_spans, full_cpu, _ = bulk(args.services, args.rate, args.seconds, telemetry=True)
    print(
        f"full pipeline (+ metrics, logs, alerts): {full_spans:>7,} spans in {full_cpu:6.2f} s CPU = {full_spans / full_cpu:>10,.0f} spans/s/core"
    )
    n, naive_cpu, identical = naive(args.services, args.rate, 50_000)
    naive_rate = n / naive_cpu
    print(
        f"naive reference (one protobuf Span at a time, encode only): {n:,} spans = {naive_rate:>10,.0f} spans/s/core"
    )
    print(
        f"ratio bulk / naive-encode-only: {fast_rate / naive_rate:.1f}x   goal >= 200,000 spans/s/core: {'met' if fast_rate >= 200_000 else 'NOT met'}"
    )
    print(f"fast bytes == reference bytes on a 2,000-span sample: {identical}")
    for slice_s in (5.0, 15.0):
        big, big_cpu, _ = bulk(500, 500.0, args.seconds, telemetry=False, slice_s=slice_s)
        print(
            f"500 services, 500 req/s, {slice_s:.0f} s slices (few traces per template):"
            f" {big / big_cpu:>10,.0f} spans/s/core"
        )


if __name__ == "__main__":
    main()
