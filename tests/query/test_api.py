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


def test_with_a_token_configured_every_query_and_model_route_requires_it(tmp_path: Path) -> None:
    from pipeline.api import MODEL_PREFIX, build_model_app
    from pipeline.receivers.app import HEALTH_PATH

    store = SegmentStore(tmp_path / "segments")
    fill_store(store, 1, NOW)
    settings = Settings(data_dir=tmp_path)
    root = web.Application()
    root.router.add_get(HEALTH_PATH, lambda _r: web.json_response({"status": "ok"}))
    root.add_subapp(QUERY_PREFIX, build_query_app(settings, token="s3cret"))
    root.add_subapp(MODEL_PREFIX, build_model_app(settings, token="s3cret"))
    paths = [f"{QUERY_PREFIX}/logs", f"{QUERY_PREFIX}/templates", f"{MODEL_PREFIX}/changes"]

    async def run() -> None:
        async with TestClient(TestServer(root, host="127.0.0.1")) as client:
            for path in paths:
                r = await client.get(path)
                assert r.status == 401 and r.headers["WWW-Authenticate"] == "Bearer", path
                r = await client.get(path, headers={"Authorization": "Bearer wrong"})
                assert r.status == 401, path
                r = await client.get(path, headers={"Authorization": "Bearer s3cret"})
                # past the token: answered (the model routes say 400 before any checkpoint)
                assert r.status == (200 if path.startswith(QUERY_PREFIX) else 400), path
            assert (await client.get(HEALTH_PATH)).status == 200

    asyncio.run(run())
    audit = [
        orjson.loads(line) for line in (tmp_path / "audit" / "api.jsonl").read_bytes().splitlines()
    ]
    assert [a["status"] for a in audit] == [401, 401, 200, 401, 401, 200, 401, 401, 400]
