from __future__ import annotations

import datetime as dt
from pathlib import Path

import orjson
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.query_cli import parse_time
from pipeline.segments.store import SegmentStore
from pipeline.testing import fill_store, span_request

NOW = dt.datetime(2026, 11, 20, 14, 0, tzinfo=dt.UTC)


def test_query_commands_print_json_lines(tmp_path: Path) -> None:
    fill_store(SegmentStore(tmp_path / "segments"), 4, NOW)
    runner = CliRunner()
    base = ["--data-dir", str(tmp_path), "query"]
    out = runner.invoke(cli, [*base, "logs", "--severity", "error", "--limit", "5"])
    assert out.exit_code == 0, out.output
    rows = [orjson.loads(line) for line in out.output.splitlines()]
    assert rows and all(r["severity_number"] >= 17 for r in rows)
    trace_id = span_request(2).resource_spans[0].scope_spans[0].spans[0].trace_id.hex()
    out = runner.invoke(cli, [*base, "trace", trace_id])
    assert out.exit_code == 0, out.output
    assert {orjson.loads(line)["trace_id"] for line in out.output.splitlines()} == {trace_id}
    out = runner.invoke(
        cli, [*base, "metrics", "process.cpu.utilization", "--label", "service.name=frontend"]
    )
    assert out.exit_code == 0, out.output
    [series] = [orjson.loads(line) for line in out.output.splitlines()]
    assert series["labels"]["service.name"] == "frontend"
    bad = runner.invoke(cli, [*base, "trace", "xyz"])
    assert bad.exit_code == 2 and "not hex" in bad.output


def test_parse_time_forms() -> None:
    assert parse_time("15m", NOW) == int((NOW.timestamp() - 900) * 1e9)
    assert parse_time("2026-11-20T13:00:00Z", NOW) == int((NOW.timestamp() - 3600) * 1e9)
    assert parse_time("1763647380", NOW) == 1763647380 * 10**9
    assert parse_time(None, NOW) is None
