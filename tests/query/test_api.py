from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from pipeline.api import QUERY_PREFIX, build_query_app
from pipeline.segments.store import SegmentStore
from pipeline.settings import Settings
from pipeline.testing import fill_store, span_request

NOW = dt.datetime(2026, 11, 20, 14, 0, tzinfo=dt.UTC)


def test_query_endpoints_answer_and_audit(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path / "segments")
    fill_store(store, 3, NOW)
    root = web.Application()
    root.add_subapp(QUERY_PREFIX, build_query_app(Settings(data_dir=tmp_path)))
    trace_id = span_request(1).resource_spans[0].scope_spans[0].spans[0].trace_id.hex()

    async def run() -> None:
        async with TestClient(TestServer(root, host="127.0.0.1")) as client:
            r = await client.get(f"{QUERY_PREFIX}/logs", params={"severity": "error", "limit": "3"})
            assert r.status == 200
            rows = (await r.json())["rows"]
            assert 0 < len(rows) <= 3 and all(row["severity_number"] >= 17 for row in rows)
            r = await client.get(f"{QUERY_PREFIX}/traces/{trace_id}")
            assert {s["trace_id"] for s in (await r.json())["rows"]} == {trace_id}
            r = await client.get(
                f"{QUERY_PREFIX}/metrics",
                params=[("name", "process.cpu.utilization"), ("label", "service.name=cart")],
            )
            [series] = (await r.json())["rows"]
            assert series["labels"]["service.name"] == "cart"
            r = await client.get(f"{QUERY_PREFIX}/templates")
            assert any("payment call failed" in t["template"] for t in (await r.json())["rows"])
            r = await client.get(f"{QUERY_PREFIX}/metrics")
            assert r.status == 400 and "name is required" in (await r.json())["error"]
            r = await client.get(f"{QUERY_PREFIX}/logs", params={"since": "yesterday-ish"})
            assert r.status == 400

    asyncio.run(run())
    audit = [
        orjson.loads(line) for line in (tmp_path / "audit" / "api.jsonl").read_bytes().splitlines()
    ]
    assert [a["status"] for a in audit] == [200, 200, 200, 200, 400, 400]
    assert audit[0]["query"] == {"severity": ["error"], "limit": ["3"]}
