"""Reads of the world model through the CLI and the HTTP API, from a real checkpoint."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner

from pipeline.api import MODEL_PREFIX, build_model_app
from pipeline.cli import cli
from pipeline.ingest.core import KafkaRecord, SegmentIngestor, codec_for
from pipeline.segments.store import SegmentStore
from pipeline.settings import Settings
from pipeline.testing import BASE_NS, log_request, metric_request, span_request
from pipeline.worldmodel.model import WorldModel
from pipeline.worldmodel.worker import catch_up, save_model

NOW = dt.datetime(2026, 11, 20, 14, 0, tzinfo=dt.UTC)
MINUTE = 60 * 10**9


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reads")
    store = SegmentStore(root / "segments")
    for topic, make in (
        ("otlp_spans", span_request),
        ("otlp_logs", log_request),
        ("otlp_metrics", metric_request),
    ):
        ingestor = SegmentIngestor(store, codec_for(topic, store))
        for minute in range(8):
            req = make(minute, start_ns=BASE_NS + minute * MINUTE)
            ingestor.seal(
                ingestor.decode([KafkaRecord(topic, 0, minute, req.SerializeToString())]), NOW
            )
    model = WorldModel()
    catch_up(store, model)
    model.add_change(
        {
            "schema_version": 1,
            "change_id": "c1",
            "kind": "config",
            "entity": {"kind": "service", "name": "cart"},
            "time_unix_nano": BASE_NS + MINUTE,
        }
    )
    save_model(store, model)
    return root


def _run(data_dir: Path, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--data-dir", str(data_dir), "model", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_cli_graph_and_neighbourhood(data_dir: Path) -> None:
    doc = orjson.loads(_run(data_dir, "graph", "--at", str((BASE_NS + 3 * MINUTE) / 1e9)))
    ids = {n["id"] for n in doc["nodes"]}
    assert "service:cart" in ids and any(i.startswith("database:postgresql:") for i in ids)
    dot = _run(data_dir, "graph", "--format", "dot")
    assert dot.startswith("digraph") and '"service:cart"' in dot
    near = orjson.loads(
        _run(
            data_dir,
            "neighbourhood",
            "service:cart",
            "--hops",
            "1",
            "--at",
            str((BASE_NS + 3 * MINUTE) / 1e9),
        )
    )
    assert "service:cart" in {n["id"] for n in near["nodes"]}


def test_cli_baseline_changes_and_deviations(data_dir: Path) -> None:
    doc = orjson.loads(_run(data_dir, "baseline", "service:cart", "span.rate_per_s"))
    assert doc["intervals_learned"] >= 5 and doc["expected"] > 0
    [change] = [orjson.loads(line) for line in _run(data_dir, "changes").splitlines()]
    assert change["change_id"] == "c1"
    assert _run(data_dir, "deviations") == ""  # steady factory traffic: nothing deviates
    bad = CliRunner().invoke(
        cli, ["--data-dir", str(data_dir), "model", "baseline", "service:cart", "nope"]
    )
    assert bad.exit_code == 2 and "span.rate_per_s" in bad.output


def test_cli_without_checkpoint_says_what_to_do(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--data-dir", str(tmp_path), "model", "deviations"])
    assert result.exit_code == 1 and "world-model" in result.output


def test_http_model_endpoints(data_dir: Path) -> None:
    root = web.Application()
    root.add_subapp(MODEL_PREFIX, build_model_app(Settings(data_dir=data_dir)))

    async def run() -> None:
        async with TestClient(TestServer(root, host="127.0.0.1")) as client:
            r = await client.get(f"{MODEL_PREFIX}/graph", params={"format": "dot"})
            assert r.status == 200 and (await r.text()).startswith("digraph")
            r = await client.get(
                f"{MODEL_PREFIX}/baseline",
                params={"entity": "service:cart", "signal": "span.rate_per_s"},
            )
            assert (await r.json())["entity"] == "service:cart"
            r = await client.get(f"{MODEL_PREFIX}/changes")
            assert [c["change_id"] for c in (await r.json())["rows"]] == ["c1"]
            r = await client.get(f"{MODEL_PREFIX}/neighbourhood", params={"entity": "cart"})
            assert r.status == 400 and "kind:name" in (await r.json())["error"]

    asyncio.run(run())
