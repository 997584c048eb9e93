"""Query API benchmark: what a request costs before it reads any row, against the reference
each choice replaced, both measured in the same run and printed as ratios.

- Manifest refresh per request: ``SegmentStore.refresh_changed`` (a stat per directory, only
  moved directories listed) against ``refresh`` (a listing of every manifest file), on a store
  of N synthetic manifests spread over hour folders written "long ago".
- Template patterns: polars' linear-time matcher (``regex_matches``) against Python's ``re``
  on patterns that backtrack, over a template of K x's (Python's cost doubles with each x).
- The event loop while a query runs: ``/healthz`` round trips answered while a stalled query
  holds a query thread, against the same round trips with no query running.

Run: .venv/bin/python benchmarks/bench_query_api.py [--manifests N] [--xs K]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from pipeline.api import QUERY_PREFIX, mount_api
from pipeline.query import LogQuery, regex_matches
from pipeline.segments.store import SegmentStore
from pipeline.settings import Settings
from pipeline.testing import fill_store


def synthetic_store(root: Path, n: int) -> Path:
    """``n`` copies of one real manifest across 24 hour folders, dated in the past."""
    import datetime as dt

    seed = root / "seed"
    fill_store(SegmentStore(seed), 1, dt.datetime(2026, 11, 20, tzinfo=dt.UTC))
    doc = orjson.loads(next(seed.rglob("*.manifest.json")).read_bytes())
    big = root / "segments"
    for i in range(n):
        rel = f"logs/2026-11-20/{i % 24:02d}"
        (big / rel).mkdir(parents=True, exist_ok=True)
        copy = dict(doc, segment_id=f"s{i}", uri=f"{rel}/s{i}.parquet")
        (big / rel / f"s{i}.manifest.json").write_bytes(orjson.dumps(copy))
    for folder, _dirs, _files in os.walk(big):
        os.utime(folder, ns=(10**18, 10**18))  # past the recent-directory window
    return big


def best_of(fn: Any, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_refresh(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        big = synthetic_store(Path(tmp), n)
        store = SegmentStore(big)
        store.refresh()
        listing = best_of(store.refresh)
        store.refresh_changed()
        assert len(store.manifests()) == n
        stat_only = best_of(store.refresh_changed)
    print(
        f"manifest refresh per request, {n} manifests: refresh {listing * 1e3:.1f} ms, "
        f"refresh_changed {stat_only * 1e3:.2f} ms  (x{listing / stat_only:.0f})"
    )


def bench_patterns(xs: int) -> None:
    text = "x" * xs + " is the marker"
    for pattern in ("(x+x+)+y", "(x*)*y"):
        python = best_of(lambda p=pattern: re.search(p, text), repeat=1)
        linear = best_of(lambda p=pattern: regex_matches(p, [text]))
        print(
            f"template {pattern!r} over {xs} x's: python re {python:.3f} s, "
            f"polars {linear * 1e3:.2f} ms  (x{python / linear:.0f})"
        )


def bench_event_loop() -> None:
    release, entered = threading.Event(), threading.Event()
    page = LogQuery.page

    def held(self: LogQuery, **kwargs: Any) -> Any:
        if kwargs.get("text") == "hold":
            entered.set()
            release.wait(60)
        return page(self, **kwargs)

    LogQuery.page = held  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory() as tmp:
        import datetime as dt

        fill_store(SegmentStore(Path(tmp) / "segments"), 1, dt.datetime.now(dt.UTC))
        root = web.Application()
        root.router.add_get("/healthz", lambda _r: web.json_response({"status": "ok"}))
        mount_api(root, Settings(data_dir=Path(tmp), query_timeout_s=30))

        async def round_trips(client: TestClient[Any, Any]) -> float:
            times = []
            for _ in range(50):
                t = time.perf_counter()
                assert (await client.get("/healthz")).status == 200
                times.append(time.perf_counter() - t)
            return statistics.median(times)

        async def run() -> None:
            async with TestClient(TestServer(root, host="127.0.0.1")) as client:
                idle = await round_trips(client)
                slow = asyncio.ensure_future(
                    client.get(f"{QUERY_PREFIX}/logs", params={"text": "hold"})
                )
                while not entered.is_set():
                    await asyncio.sleep(0.01)
                busy = await round_trips(client)
                release.set()
                await slow
            print(
                f"/healthz median while a query is held: {busy * 1e3:.2f} ms, "
                f"idle {idle * 1e3:.2f} ms  (x{busy / idle:.2f})"
            )

        asyncio.run(run())
    LogQuery.page = page  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifests", type=int, default=20_000)
    parser.add_argument("--xs", type=int, default=24)
    args = parser.parse_args()
    bench_refresh(args.manifests)
    bench_patterns(args.xs)
    bench_event_loop()


if __name__ == "__main__":
    main()
