"""Shared fixtures: one embedded broker per test session, on a free loopback port.

Integration tests go through it for real (produce, consume in a group, topic creation); nothing
is mocked. The broker dies with the test process even if pytest is killed.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.platform import Platform
from pipeline.settings import Settings

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    data_dir = tmp_path_factory.mktemp("worldline-data")
    settings = Settings(data_dir=data_dir)
    with Platform(settings) as p:
        yield p


@pytest.fixture(scope="session")
def bootstrap(platform: Platform) -> str:
    return platform.bootstrap_servers


@pytest.fixture()
def cli_env(platform: Platform) -> dict[str, str]:
    """Environment for running the `worldline` CLI as a subprocess against the session broker."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORLDLINE_")}
    env["WORLDLINE_BOOTSTRAP_SERVERS"] = platform.bootstrap_servers
    env["WORLDLINE_DATA_DIR"] = str(platform.settings.data_dir)
    env["COLUMNS"] = "200"
    return env


def worldline_cmd() -> list[str]:
    return [sys.executable, "-m", "pipeline.cli"]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); treat it as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def listening(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0
