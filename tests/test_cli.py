"""The `worldline` command line, run as a user would run it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from pipeline import topics
from pipeline.cli import cli
from tests.conftest import pid_alive, worldline_cmd

COMMANDS = [
    "up",
    "status",
    "topics",
    "config",
    "tail",
    "produce",
    "worker",
    "receive",
    "query",
    "create-topics",
]


def test_every_command_explains_itself() -> None:
    runner = CliRunner()
    top = runner.invoke(cli, ["--help"])
    assert top.exit_code == 0
    for name in COMMANDS:
        assert name in top.output
        sub = runner.invoke(cli, [name, "--help"])
        assert sub.exit_code == 0, sub.output
        assert len(sub.output.splitlines()) >= 5
    assert set(COMMANDS) <= set(cli.commands)  # type: ignore[attr-defined]


def test_wrong_setting_is_one_line_naming_it(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORLDLINE_")}
    env["WORLDLINE_BROKER_PORT"] = "ninety"
    env["COLUMNS"] = "80"
    proc = subprocess.run(
        [*worldline_cmd(), "config"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "broker_port='ninety'" in lines[0] and "environment" in lines[0]


def test_config_prints_effective_settings(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["--set", "http_port=5555", "--set", "topics.alerts=am", "config", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["http_port"] == "5555"
    assert data["topics.alerts"] == "am"
    assert data["broker_host"] == "127.0.0.1"


def test_topics_lists_the_registry() -> None:
    result = CliRunner(env={"COLUMNS": "250"}).invoke(cli, ["topics"])
    assert result.exit_code == 0
    for t in topics.REGISTRY:
        assert t.name in result.output


@pytest.mark.integration
def test_produce_validates_then_tail_decodes(cli_env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"version": "4"}))
    proc = subprocess.run(
        [*worldline_cmd(), "produce", "alerts", str(bad)],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "nothing was sent" in proc.stderr

    examples = Path(__file__).resolve().parents[1] / "schemas" / "examples"
    for topic in ("causes.ranked", "otlp_metrics"):
        proc = subprocess.run(
            [*worldline_cmd(), "produce", topic, str(examples / f"{topic}.json")],
            env=cli_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        assert f"{topic} partition" in proc.stdout

    proc = subprocess.run(
        [
            *worldline_cmd(),
            "tail",
            "causes.ranked",
            "--from-beginning",
            "-n",
            "2",
            "--idle-timeout",
            "5",
        ],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    docs = [orjson.loads(line) for line in proc.stdout.splitlines()]
    assert [d["value"]["incident_id"] for d in docs] == [
        "inc-20261120-140300-frontend",
        "inc-20261120-150000-cart",
    ]

    proc = subprocess.run(
        [
            *worldline_cmd(),
            "tail",
            "otlp_metrics",
            "--from-beginning",
            "-n",
            "1",
            "--idle-timeout",
            "5",
        ],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    doc = orjson.loads(proc.stdout.splitlines()[0])
    metric = doc["value"]["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]
    assert metric["name"] == "process.cpu.utilization"

    proc = subprocess.run(
        [*worldline_cmd(), "status"], env=cli_env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if "causes.ranked" in line)
    assert row.split("│")[5].strip() == "2"  # records column: the two records produced


def test_status_without_a_broker_says_what_to_do(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORLDLINE_")}
    env["WORLDLINE_DATA_DIR"] = str(tmp_path)
    proc = subprocess.run(
        [*worldline_cmd(), "status"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "worldline up" in proc.stderr


@pytest.mark.integration
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_up_shows_every_topic_and_stops_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORLDLINE_")}
    env["WORLDLINE_DATA_DIR"] = str(tmp_path)
    env["WORLDLINE_HTTP_PORT"] = "0"
    env["COLUMNS"] = "200"
    proc = subprocess.Popen(
        [*worldline_cmd(), "up"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    runtime = tmp_path / "runtime" / "broker.json"
    deadline = time.monotonic() + 60
    while not runtime.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert runtime.exists(), proc.stderr.read() if proc.stderr else ""
    info = orjson.loads(runtime.read_bytes())
    # the broker and one process per stage (receiver, 3 ingest, world model, search) are its children
    time.sleep(3)  # let it print the status table
    children = [
        int(c) for c in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    ]
    assert len(children) == 1 + 6
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    for t in topics.REGISTRY:
        row = next(line for line in stdout.splitlines() if line.startswith(f"│ {t.name} "))
        assert row.split("│")[3].strip() == str(t.partitions)
    assert "stopped" in stderr
    assert info["pid"] == proc.pid
    assert not any(pid_alive(c) for c in children)
    assert not runtime.exists()


def test_a_crashed_stage_is_restarted_with_backoff(tmp_path: Path) -> None:
    """The supervisor's clock is passed in: the wait doubles with each crash up to the most,
    and is back at the first after a stage has run long enough."""
    from pipeline.settings import Settings
    from pipeline.stages import RESTART_BACKOFF_S, STABLE_AFTER_S, StageProcess, StageSupervisor

    launched: list[str] = []

    class Quick(StageSupervisor):
        def _launch(self, stage: str) -> StageProcess:  # a process that ends at once: a crash
            launched.append(stage)
            proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
            proc.wait()
            return StageProcess(stage, proc, tmp_path / f"{stage}.log")

    supervisor = Quick(Settings(data_dir=tmp_path), "127.0.0.1:1")
    supervisor.start(["world-model"], now=0.0)
    first, most = RESTART_BACKOFF_S
    assert supervisor.restart_crashed(1.0) == []  # crashed after 1 s: wait `first` from now
    [r] = supervisor.restart_crashed(1.0 + first)
    assert (r.stage, r.returncode, r.restarts) == ("world-model", 3, 1)
    t = 1.0 + first
    waits = []
    for _ in range(10):
        assert supervisor.restart_crashed(t) == []  # the next crash is seen: its wait begins
        wait = supervisor.backoff["world-model"]
        waits.append(wait)
        assert supervisor.restart_crashed(t + wait - 0.01) == []
        t += wait
        assert len(supervisor.restart_crashed(t)) == 1
    assert waits[:3] == [2 * first, 4 * first, 8 * first] and max(waits) == most
    assert supervisor.restarts["world-model"] == 11 and len(launched) == 12
    # a stage that ran long enough before crashing starts again after the first wait
    supervisor.restart_crashed(t + STABLE_AFTER_S)
    assert supervisor.backoff["world-model"] == first


def _up(data_dir: Path, stages: str) -> subprocess.Popen[str]:
    """``worldline up`` with only ``stages`` on the embedded broker, its own data dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORLDLINE_")}
    env["WORLDLINE_DATA_DIR"] = str(data_dir)
    env["WORLDLINE_HTTP_PORT"] = "0"
    return subprocess.Popen(
        [*worldline_cmd(), "up", "--stages", stages, "--status-every", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.integration
def test_up_restarts_a_killed_stage_and_counts_it(tmp_path: Path) -> None:
    proc = _up(tmp_path, "world-model")
    try:
        deadline = time.monotonic() + 60
        children: list[int] = []
        while time.monotonic() < deadline and len(children) < 2:
            time.sleep(0.2)
            children = [
                int(c)
                for c in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            ]
        assert len(children) == 2, "the broker and the world-model stage"
        stage = max(children)  # started after the broker
        os.kill(stage, signal.SIGKILL)
        stats = tmp_path / "stats" / "supervisor.json"
        deadline = time.monotonic() + 30
        while not stats.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert orjson.loads(stats.read_bytes())["restarts"] == {"world-model": 1}
        now = [
            int(c) for c in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        ]
        assert len(now) == 2 and stage not in now and proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert "stage world-model exited with code -9; restarted" in stderr


@pytest.mark.integration
def test_up_fails_loudly_when_its_embedded_broker_dies(tmp_path: Path) -> None:
    proc = _up(tmp_path, "")
    runtime = tmp_path / "runtime" / "broker.json"
    deadline = time.monotonic() + 60
    while not runtime.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    time.sleep(3)  # past its start and first status table
    children = [
        int(c) for c in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    ]
    assert len(children) == 1, "the broker"
    os.kill(children[0], signal.SIGKILL)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "the embedded broker exited" in stderr


def test_a_stage_whose_supervisor_died_exits_even_if_its_shutdown_hangs(tmp_path: Path) -> None:
    """A child that ignores SIGTERM (a shutdown stuck on a broker that is gone) still exits
    within its grace once its parent has died."""
    child = (
        "import os, signal, sys, time\n"
        "from pipeline.workers import exit_when_orphaned\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "exit_when_orphaned(os.getppid(), grace_s=1.0)\n"
        "open(sys.argv[1], 'w').write(str(os.getpid()))\n"
        "time.sleep(120)\n"
    )
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            f"subprocess.Popen([sys.executable, '-c', {child!r}, {str(pid_file)!r}])\n"
            "time.sleep(120)\n",
        ]
    )
    deadline = time.monotonic() + 30
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    orphan = int(pid_file.read_text())
    assert pid_alive(orphan)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while pid_alive(orphan) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not pid_alive(orphan)
