"""Session fixtures: the fault-free and database-fault runs several test modules look at."""

from __future__ import annotations

import pytest

from tests.simulator.simulated_runs import RunSummary, run_summary


@pytest.fixture(scope="session")
def normal_run() -> RunSummary:
    return run_summary("normal", 7, 30.0)


@pytest.fixture(scope="session")
def database_run() -> RunSummary:
    return run_summary("database-slowdown", 7, 30.0)
