"""Dependency-graph benchmark: spans/s per core through ``EdgeStore.observe_spans`` against a
naive per-span Python reference in the same run (printed as a ratio), and snapshot bytes per
edge.

The workload is a synthetic topology (services calling a fixed set of callees, one database
each, two pods per service): each trace is a root server span, a client/server pair and an
uninstrumented database client span. Batches are cut by time, and one server span in five is
delayed to the next batch, so pairing across batches is exercised. Polars is limited to one
thread so the rate is per core.

Run: .venv/bin/python benchmarks/bench_graph.py [--traces N] [--services S] [--batches B]
"""

from __future__ import annotations

import os

os.environ.setdefault("POLARS_MAX_THREADS", "1")

import argparse  # noqa: E402
import time  # noqa: E402
from collections import defaultdict, deque  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from pipeline.worldmodel.graph import EdgeStore, GraphConfig  # noqa: E402
from schemas.segments import SPANS  # noqa: E402

BASE_NS = 1_763_647_380_000_000_000
S = 1_000_000_000


def synthetic_batches(
    n_traces: int, n_services: int, n_batches: int, seed: int = 7
) -> tuple[list[pa.Table], list[int]]:
    """SPANS tables (4 spans per trace) and the event time ``now`` of each batch."""
    rng = np.random.default_rng(seed)
    callees = rng.integers(0, n_services, size=(n_services, 5))
    caller = rng.integers(0, n_services, n_traces)
    callee = callees[caller, rng.integers(0, 5, n_traces)]
    callee = np.where(callee == caller, (callee + 1) % n_services, callee)
    duration_s = 600.0
    start = BASE_NS + np.sort(rng.integers(0, int(duration_s * S), n_traces))
    trace_hi = rng.integers(1, 2**62, n_traces, dtype=np.int64).astype("<u8")
    ids = rng.integers(1, 2**62, (n_traces, 4), dtype=np.int64).astype("<u8")
    pods = rng.integers(0, 2, n_traces)

    # rows per trace: root (caller), client (caller), server (callee), db client (callee)
    service = np.stack([caller, caller, callee, callee], axis=1)
    kind = np.tile(np.array([2, 3, 2, 3], dtype=np.int8), (n_traces, 1))
    parent = np.stack([np.zeros(n_traces, "<u8"), ids[:, 0], ids[:, 1], ids[:, 2]], axis=1)
    starts = np.stack([start, start + 100_000, start + 200_000, start + 300_000], axis=1)
    durations = rng.integers(1_000_000, 40_000_000, (n_traces, 4))
    status = np.where(rng.random((n_traces, 4)) < 0.02, 2, 0).astype(np.int8)
    pod = np.stack([pods, pods, pods, pods], axis=1)

    batch_of_trace = (start - BASE_NS) * n_batches // int(duration_s * S)
    delayed = rng.random(n_traces) < 0.2
    batch = np.repeat(batch_of_trace[:, None], 4, axis=1)
    batch[:, 2] = np.minimum(n_batches - 1, batch[:, 2] + delayed)

    flat = {
        "service": service.ravel(),
        "kind": kind.ravel(),
        "parent": parent.ravel(),
        "span": ids.ravel(),
        "trace": np.repeat(trace_hi, 4),
        "start": starts.ravel(),
        "duration": durations.ravel(),
        "status": status.ravel(),
        "pod": pod.ravel(),
        "batch": batch.ravel(),
        "is_db": np.tile(np.array([False, False, False, True]), n_traces),
    }
    service_names = np.array([f"svc-{i:04d}" for i in range(n_services)], dtype=object)
    tables, nows = [], []
    for b in range(n_batches):
        rows = flat["batch"] == b
        tables.append(_table({k: v[rows] for k, v in flat.items()}, service_names))
        nows.append(BASE_NS + int((b + 1) * duration_s * S / n_batches))
    return tables, nows


def _table(cols: dict[str, np.ndarray], service_names: np.ndarray) -> pa.Table:
    n = len(cols["span"])
    names = service_names[cols["service"]]
    trace = np.zeros((n, 2), "<u8")
    trace[:, 0] = cols["trace"]
    parent_valid = cols["parent"] != 0
    is_db = cols["is_db"]
    db_names = [f"{name}-db" if db else None for name, db in zip(names, is_db, strict=True)]
    hosts = np.array([f"node-{i % 16}" for i in range(len(service_names) * 2)], dtype=object)
    pod_index = cols["service"] * 2 + cols["pod"]
    pod_names = np.char.add(np.char.add(names.astype(str), "-pod-"), cols["pod"].astype(str))
    columns: dict[str, Any] = {
        "trace_id": _fixed_binary(trace, 16),
        "span_id": _fixed_binary(cols["span"], 8),
        "parent_span_id": _fixed_binary(cols["parent"], 8, valid=parent_valid),
        "service": names.tolist(),
        "name": np.where(is_db, "SELECT", "GET /").tolist(),
        "kind": cols["kind"],
        "start_unix_nano": cols["start"],
        "duration_ns": cols["duration"],
        "status_code": cols["status"],
        "host_name": hosts[pod_index].tolist(),
        "pod_name": pod_names.tolist(),
        "db_system": ["postgresql" if db else None for db in is_db],
        "db_name": db_names,
    }
    arrays = []
    for field in SPANS:
        value = columns.get(field.name)
        if value is None:
            arrays.append(pa.nulls(n, field.type))
        elif pa.types.is_dictionary(field.type):
            arrays.append(pa.array(value, pa.string()).dictionary_encode().cast(field.type))
        elif isinstance(value, pa.Array):
            arrays.append(value)
        else:
            arrays.append(pa.array(value, field.type))
    return pa.Table.from_arrays(arrays, schema=SPANS)


def _fixed_binary(words: np.ndarray, width: int, valid: np.ndarray | None = None) -> pa.Array:
    n = len(words)
    validity = None if valid is None else pa.array(valid).buffers()[1]
    data = pa.py_buffer(np.ascontiguousarray(words, dtype="<u8").tobytes())
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), n, [validity, data])


class NaiveGraph:
    """What a quick script would do: one Python dict step per span (pairing, virtual nodes,
    infrastructure edges), durations kept in lists for the quantiles."""

    def __init__(self, wait_ns: int) -> None:
        self.wait_ns = wait_ns
        self.parents: dict[tuple[bytes, bytes], dict[str, Any]] = {}
        self.children: dict[tuple[bytes, bytes], dict[str, Any]] = {}
        self.waiting: deque[tuple[int, tuple[bytes, bytes]]] = deque()
        self.edges: dict[tuple[str, str, str], list[Any]] = defaultdict(lambda: [0, 0, []])

    def observe(self, table: pa.Table, now: int) -> None:
        for span in table.to_pylist():
            key = (span["trace_id"], span["span_id"])
            service = span["service"]
            if span["pod_name"]:
                self._add(service, span["pod_name"], "runs_on", span)
                self._add(span["pod_name"], span["host_name"], "runs_on", span)
            parent_key = (span["trace_id"], span["parent_span_id"])
            parent = self.parents.get(parent_key)
            if parent is not None:
                parent["matched"] = True
                if parent["service"] != service:
                    self._add(parent["service"], service, "calls", parent)
            elif span["parent_span_id"] is not None and span["kind"] == 2:
                self.children[parent_key] = span
            child = self.children.pop(key, None)
            if child is not None and child["service"] != service:
                span["matched"] = True
                self._add(service, child["service"], "calls", span)
            if span["kind"] == 3:
                span.setdefault("matched", False)
                self.parents[key] = span
                end = span["start_unix_nano"] + span["duration_ns"]
                self.waiting.append((end + self.wait_ns, key))
        while self.waiting and self.waiting[0][0] <= now:
            _, key = self.waiting.popleft()
            span = self.parents.pop(key)
            if not span["matched"] and span["db_system"]:
                target = f"{span['db_system']}:{span['db_name']}"
                self._add(span["service"], target, "calls", span)

    def _add(self, source: str, target: str, relation: str, span: dict[str, Any]) -> None:
        edge = self.edges[(source, target, relation)]
        edge[0] += 1
        edge[1] += span["status_code"] == 2
        edge[2].append(span["duration_ns"])

    def stats(self) -> dict[tuple[str, str, str], tuple[float, float]]:
        out = {}
        for key, (_, _, durations) in self.edges.items():
            ordered = sorted(durations)
            out[key] = (ordered[len(ordered) // 2], ordered[int(len(ordered) * 0.95)])
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=60_000)
    parser.add_argument("--services", type=int, default=300)
    parser.add_argument("--batches", type=int, default=12)
    args = parser.parse_args()

    tables, nows = synthetic_batches(args.traces, args.services, args.batches)
    spans = sum(t.num_rows for t in tables)
    config = GraphConfig(pairing_wait_s=30.0, interval_s=60.0, expiry_s=900.0)
    wait_ns = int(config.pairing_wait_s * S)
    final = nows[-1] + 2 * wait_ns

    store = EdgeStore(config)
    started = time.perf_counter()
    deltas = 0
    for table, now in zip(tables, nows, strict=True):
        deltas += len(store.observe_spans(table, now))
    deltas += len(store.advance(final))
    store_s = time.perf_counter() - started

    naive = NaiveGraph(wait_ns)
    started = time.perf_counter()
    for table, now in zip(tables, nows, strict=True):
        naive.observe(table, now)
    naive.observe(tables[0].slice(0, 0), final)
    naive.stats()
    naive_s = time.perf_counter() - started

    calls = {(k.source.name, k.target.name) for k in store.edges if k.relation == "calls"}
    naive_calls = {(s, t) for s, t, r in naive.edges if r == "calls"}
    snapshot = store.snapshot()
    elements = len(store.edges) + len(store.nodes)
    print(f"spans: {spans:,} in {len(tables)} batches, {args.services} services")
    print(
        f"EdgeStore.observe_spans: {spans / store_s:,.0f} spans/s per core "
        f"({store_s:.2f} s, {deltas:,} deltas)"
    )
    print(f"naive per-span reference: {spans / naive_s:,.0f} spans/s ({naive_s:.2f} s)")
    print(f"ratio: {naive_s / store_s:.1f}x faster than the naive reference")
    print(
        f"edges: {len(store.edges):,} (calls {len(calls):,}; naive calls {len(naive_calls):,}, "
        f"same set: {calls == naive_calls}); nodes {len(store.nodes):,}; "
        f"pending spans {store.pending_spans}; dropped {dict(store.dropped)}"
    )
    print(
        f"snapshot: {len(snapshot):,} B, {len(snapshot) / max(1, len(store.edges)):,.0f} B per edge "
        f"({len(snapshot) / max(1, elements):,.0f} B per edge or node)"
    )


if __name__ == "__main__":
    main()
