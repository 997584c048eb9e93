from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from jobs.simulator import scenarios
from jobs.simulator.bundle import (
    BundleError,
    BundleWriter,
    Compression,
    read_bundle,
    read_labels,
    read_manifest,
    read_topic,
)
from jobs.simulator.cli import simulate
from jobs.simulator.simulation import Record, RunConfig, Simulation
from jobs.simulator.sink import PacedClock
from tests.simulator.simulated_runs import START_S


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_bundle_round_trip(tmp_path: Path, compression: Compression) -> None:
    sim = Simulation(
        RunConfig(
            start_s=START_S,
            scenario="memory-leak",
            seed=2,
            services=10,
            warmup_s=20.0,
            duration_s=20.0,
        )
    )
    records = list(sim.records())
    writer = BundleWriter(tmp_path, compression)
    writer.write_all(records)
    writer.close(sim.labels(), {"seed": 2})
    manifest = read_manifest(tmp_path)
    assert sum(t["records"] for t in manifest["topics"].values()) == len(records)
    back = list(read_bundle(tmp_path))
    assert sorted(back, key=lambda r: (r.timestamp_ms, r.topic, r.value)) == sorted(
        records, key=lambda r: (r.timestamp_ms, r.topic, r.value)
    )
    assert [r.timestamp_ms for r in back] == sorted(r.timestamp_ms for r in back)
    assert read_labels(tmp_path)["faults"][0]["fault_class"] == "memory_leak"
    assert list(read_topic(tmp_path, "changes")) == [r for r in records if r.topic == "changes"]


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_incomplete_or_truncated_bundle_is_an_error(
    tmp_path: Path, compression: Compression
) -> None:
    writer = BundleWriter(tmp_path, compression)
    writer.write(Record("alerts", b"k", b"{}", 1))
    with pytest.raises(BundleError, match="manifest"):
        read_manifest(tmp_path)
    writer.close({}, {})
    path = tmp_path / writer.file_name("alerts")
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(BundleError, match="truncated|corrupt"):
        list(read_topic(tmp_path, "alerts"))


def test_cli_lists_every_scenario_with_a_description() -> None:
    result = CliRunner().invoke(simulate, ["list"])
    assert result.exit_code == 0
    lines = result.output.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(scenarios.SCENARIOS)
    assert all(len(line.split(maxsplit=1)[1]) > 20 for line in lines)


def test_cli_run_writes_a_bundle(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    args = [
        "run",
        "--scenario",
        "noisy-neighbour",
        "--seed",
        "3",
        "--services",
        "10",
        "--warmup",
        "20",
        "--duration",
        "10",
        "--start",
        "2025-11-21T13:00:00Z",
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(simulate, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["run"]["scenario"] == "noisy-neighbour"
    assert manifest["first_timestamp_ms"] >= 1763730000000
    assert json.loads((out / "labels.json").read_text())["faults"][0]["entity"]["kind"] == "host"


def test_cli_run_adds_a_labelled_standing_condition(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    args = ["run", "--scenario", "cpu-saturation", "--seed", "3", "--services", "14"]
    args += ["--warmup", "60", "--duration", "10", "--standing-condition", "30"]
    args += ["--start", "2025-11-21T13:00:00Z", "--out", str(out)]
    result = CliRunner().invoke(simulate, args)
    assert result.exit_code == 0, result.output
    labels = json.loads((out / "labels.json").read_text())
    [condition] = labels["standing_conditions"]
    assert condition["fault_class"] == "heap_growth"
    assert condition["onset"] == "2025-11-21T13:00:30.000Z"
    assert condition["entity"] != labels["faults"][0]["entity"]
    normal = CliRunner().invoke(simulate, ["run", "--standing-condition", "30", "--out", str(out)])
    assert normal.exit_code != 0 and "fault scenario" in normal.output
    early = [*args[:11], "--standing-condition", "90", "--out", str(tmp_path / "b2")]
    result = CliRunner().invoke(simulate, early)
    assert result.exit_code != 0 and "normal history" in result.output


def test_cli_needs_a_destination() -> None:
    result = CliRunner().invoke(simulate, ["run"])
    assert result.exit_code != 0
    assert "destination" in result.output


def test_paced_clock_follows_event_time() -> None:
    now = [100.0]
    clock = PacedClock(now=lambda: now[0])
    assert clock.delay_for(5_000) == 0.0
    assert clock.delay_for(7_500) == pytest.approx(2.5)
    now[0] = 103.0
    assert clock.delay_for(7_500) == 0.0
    assert clock.delay_for(9_000) == pytest.approx(1.0)
