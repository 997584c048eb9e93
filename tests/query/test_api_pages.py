"""The query API's limits: pages and cursors, row limits, fresh segments, linear-time template
patterns, the time limit (408) with the server still answering, the OpenAPI document."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from aiohttp.test_utils import TestServer as _Server
from openapi_spec_validator import validate

from pipeline.api import MODEL_PREFIX, OPENAPI_PATH, QUERY_PREFIX, mount_api
from pipeline.ingest.core import KafkaRecord, SegmentIngestor, codec_for
from pipeline.openapi import document
from pipeline.query import LogQuery, regex_matches
from pipeline.segments.store import SegmentStore
from pipeline.settings import Settings
from pipeline.testing import BASE_NS, fill_store, span_request
from pipeline.worldmodel.model import WorldModel
from pipeline.worldmodel.worker import save_model

NOW = dt.datetime(2026, 11, 20, 14, 0, tzinfo=dt.UTC)


def serve(
    settings: Settings,
    body: Callable[[TestClient[Any, Any]], Awaitable[None]],
    token: str | None = None,
) -> None:
    """Run ``body`` against the API mounted as the server mounts it, beside a /healthz."""
    root = web.Application()
    root.router.add_get("/healthz", lambda _r: web.json_response({"status": "ok"}))
    mount_api(root, settings, token)

    async def run() -> None:
        async with TestClient(_Server(root, host="127.0.0.1")) as client:
            await body(client)

    asyncio.run(run())


async def all_pages(
    client: TestClient[Any, Any], path: str, params: dict[str, str]
) -> tuple[list[dict[str, Any]], int]:
    """Every row of a paged answer, following ``next``; and how many pages it took."""
    rows: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        r = await client.get(path, params={**params, **({"cursor": cursor} if cursor else {})})
        assert r.status == 200, await r.text()
        doc = await r.json()
        rows += doc["rows"]
        pages += 1
        cursor = doc["next"]
        if cursor is None:
            return rows, pages
        assert pages < 1000


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    fill_store(SegmentStore(tmp_path / "segments"), 3, NOW)
    return Settings(data_dir=tmp_path)


def test_pages_follow_next_to_every_row_once(settings: Settings) -> None:
    trace_id = span_request(1).resource_spans[0].scope_spans[0].spans[0].trace_id.hex()

    async def body(client: TestClient[Any, Any]) -> None:
        for path, params, key in (
            (f"{QUERY_PREFIX}/logs", {}, "time_unix_nano"),
            (f"{QUERY_PREFIX}/traces/{trace_id}", {}, "start_unix_nano"),
            (
                f"{QUERY_PREFIX}/metrics",
                {"name": "process.cpu.utilization"},
                "series_id",
            ),
            (f"{QUERY_PREFIX}/templates", {}, "template_id"),
        ):
            r = await client.get(path, params={**params, "limit": "10000"})
            whole = await r.json()
            assert whole["next"] is None and len(whole["rows"]) >= 3, path
            paged, pages = await all_pages(client, path, {**params, "limit": "2"})
            assert paged == whole["rows"], path
            assert pages == (len(whole["rows"]) + 1) // 2, path
            keys = [row[key] for row in paged]
            assert keys == sorted(keys), path

    serve(settings, body)


def test_log_pages_split_rows_that_share_a_timestamp(tmp_path: Path) -> None:
    """Ten lines at one nanosecond, read two at a time: each exactly once, in stored order."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.add(key="service.name").value.string_value = "cart"
    sl = rl.scope_logs.add()
    for i in range(10):
        sl.log_records.add(
            time_unix_nano=BASE_NS, severity_number=9
        ).body.string_value = f"same instant line {i}"
    store = SegmentStore(tmp_path / "segments")
    ingestor = SegmentIngestor(store, codec_for("otlp_logs", store))
    ingestor.seal(ingestor.decode([KafkaRecord("otlp_logs", 0, 0, req.SerializeToString())]), NOW)

    async def body(client: TestClient[Any, Any]) -> None:
        rows, pages = await all_pages(client, f"{QUERY_PREFIX}/logs", {"limit": "3"})
        assert [r["line"] for r in rows] == [f"same instant line {i}" for i in range(10)]
        assert pages == 4

    serve(Settings(data_dir=tmp_path), body)


def test_model_changes_and_deviations_are_paged(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path / "segments")
    model = WorldModel()
    for i, t in enumerate((3, 1, 1, 2)):
        model.add_change(
            {
                "schema_version": 1,
                "change_id": f"c{i}",
                "kind": "deploy",
                "entity": {"kind": "service", "name": "cart"},
                "time_unix_nano": BASE_NS + t,
            }
        )
    save_model(store, model)

    async def body(client: TestClient[Any, Any]) -> None:
        rows, pages = await all_pages(client, f"{MODEL_PREFIX}/changes", {"limit": "1"})
        assert [r["change_id"] for r in rows] == ["c1", "c2", "c3", "c0"] and pages == 4
        r = await client.get(f"{MODEL_PREFIX}/deviations")
        assert await r.json() == {"rows": [], "next": None}

    serve(Settings(data_dir=tmp_path), body)


def test_bad_limits_and_cursors_answer_400(settings: Settings) -> None:
    async def body(client: TestClient[Any, Any]) -> None:
        for path in (
            f"{QUERY_PREFIX}/logs",
            f"{QUERY_PREFIX}/templates",
            f"{MODEL_PREFIX}/changes",
        ):
            for limit, says in (
                ("0", "limit 0: must be from 1 to 50"),
                ("51", "limit 51: must be from 1 to 50"),
                ("ten", "expected a whole number from 1 to 50"),
            ):
                r = await client.get(path, params={"limit": limit})
                assert r.status == 400 and says in (await r.json())["error"], (path, limit)
            r = await client.get(path, params={"cursor": "not-a-cursor"})
            assert r.status == 400 and "cursor" in (await r.json())["error"], path
        r = await client.get(f"{QUERY_PREFIX}/logs")  # no limit: the default
        assert len((await r.json())["rows"]) == 7
        r = await client.get(f"{QUERY_PREFIX}/metrics", params={"name": "x", "step": "often"})
        assert r.status == 400 and "step" in (await r.json())["error"]

    serve(settings.model_copy(update={"query_limit_default": 7, "query_limit_max": 50}), body)


def test_a_segment_sealed_after_the_first_query_is_visible(settings: Settings) -> None:
    late = span_request(11)
    trace_id = late.resource_spans[0].scope_spans[0].spans[0].trace_id.hex()

    async def body(client: TestClient[Any, Any]) -> None:
        r = await client.get(f"{QUERY_PREFIX}/traces/{trace_id}")
        assert (await r.json())["rows"] == []
        # another process (ingest) seals a segment with the trace
        writer = SegmentStore(settings.data_dir / "segments")
        ingestor = SegmentIngestor(writer, codec_for("otlp_spans", writer))
        records = [KafkaRecord("otlp_spans", 0, 100, late.SerializeToString())]
        ingestor.seal(ingestor.decode(records), NOW)
        r = await client.get(f"{QUERY_PREFIX}/traces/{trace_id}")
        rows = (await r.json())["rows"]
        assert rows and {s["trace_id"] for s in rows} == {trace_id}

    serve(settings, body)


def test_backtracking_patterns_match_in_linear_time() -> None:
    # Python's re needs about 2**40 steps for this; the linear engine answers at once
    assert regex_matches("(x+x+)+y", ["x" * 40, "x" * 40 + "y"]) == [False, True]
    assert regex_matches("timeout after [0-9]+", ["timeout after 30 s", "ok"]) == [True, False]


def test_bad_or_huge_template_patterns_answer_400(settings: Settings) -> None:
    async def body(client: TestClient[Any, Any]) -> None:
        for pattern, says in (("(", "unclosed group"), ("(x{1000}){1000}", "size limit")):
            r = await client.get(f"{QUERY_PREFIX}/logs", params={"template": pattern})
            assert r.status == 400, pattern
            error = (await r.json())["error"]
            assert "not a usable regular expression" in error and says in error, error
        r = await client.get(f"{QUERY_PREFIX}/logs", params={"template": "(x+x+)+y"})
        assert r.status == 200 and await r.json() == {"rows": [], "next": None}
        r = await client.get(f"{QUERY_PREFIX}/logs", params={"template": "payment call fail.d"})
        assert r.status == 200 and (await r.json())["rows"]

    serve(settings, body)


def test_a_query_past_its_time_limit_is_408_and_the_server_keeps_answering(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A query held in its thread until released: it is answered 408 at its time limit, while
    /healthz and the other threads' queries are answered; released, the thread serves again."""
    release = threading.Event()
    entered = threading.Event()
    page = LogQuery.page

    def held(self: LogQuery, **kwargs: Any) -> Any:
        if kwargs.get("text") == "hold":
            entered.set()
            release.wait(60)
        return page(self, **kwargs)

    monkeypatch.setattr(LogQuery, "page", held)

    async def body(client: TestClient[Any, Any]) -> None:
        try:
            slow = asyncio.ensure_future(
                client.get(f"{QUERY_PREFIX}/logs", params={"text": "hold"})
            )
            while not entered.is_set():
                await asyncio.sleep(0.01)
            health = await client.get("/healthz")
            assert health.status == 200
            other = await client.get(f"{QUERY_PREFIX}/templates")  # the second thread
            assert other.status == 200
            r = await slow
            assert r.status == 408
            assert "time limit of 0.5 s" in (await r.json())["error"]
        finally:
            release.set()
        r = await client.get(f"{QUERY_PREFIX}/logs", params={"text": "payment"})
        assert r.status == 200

    serve(settings.model_copy(update={"query_timeout_s": 0.5, "query_threads": 2}), body)
    audit = [
        orjson.loads(line)
        for line in (settings.data_dir / "audit" / "api.jsonl").read_bytes().splitlines()
    ]
    assert [a["status"] for a in audit] == [200, 408, 200]


def test_openapi_document_is_valid_and_names_every_api_route(settings: Settings) -> None:
    validate(document())
    root = web.Application()
    mount_api(root, settings)
    mounted = set()
    for resource in root.router.resources():
        sub = getattr(resource, "_app", None)
        if sub is None:
            mounted.add(resource.canonical)
            continue
        mounted |= {r.canonical for r in sub.router.resources()}  # prefixed once mounted
    assert mounted == set(document()["paths"])

    async def body(client: TestClient[Any, Any]) -> None:
        r = await client.get(OPENAPI_PATH)
        assert r.status == 401
        r = await client.get(OPENAPI_PATH, headers={"Authorization": "Bearer t"})
        assert r.status == 200 and (await r.json()) == orjson.loads(orjson.dumps(document()))

    serve(settings, body, token="t")


def test_every_api_route_answers_401_without_the_token(settings: Settings) -> None:
    paths = [p.replace("{trace_id}", "ab" * 16) for p in document()["paths"]]

    async def body(client: TestClient[Any, Any]) -> None:
        for path in paths:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "t"}):
                r = await client.get(path, headers=headers)
                assert r.status == 401 and r.headers["WWW-Authenticate"] == "Bearer", path
            r = await client.get(path, headers={"Authorization": "Bearer t"})
            assert r.status != 401, path
        assert (await client.get("/healthz")).status == 200

    serve(settings, body, token="t")
