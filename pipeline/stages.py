"""Stage processes: each pipeline stage runs as its own ``worldline worker <stage>`` process.

``worldline up`` starts them beside the broker; in production each runs on its own (compose
service, systemd unit, pod). A child gets the parent's effective settings through
``WORLDLINE_*`` variables and dies with its parent (``PR_SET_PDEATHSIG``). The supervisor
records each stage's pid and state in ``runtime/stages.json`` (read by ``/healthz``) and gives
every child a directory for its metric samples (``pipeline.selfmetrics``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from pipeline import registry
from pipeline.broker import die_with_parent
from pipeline.settings import ENV_PREFIX, SUPERVISOR_ENV, Settings, environment

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiproc_dir(settings: Settings) -> Path:
    """Where the stages under ``up`` write their metric samples (``pipeline.selfmetrics``)."""
    return Path(settings.data_dir).resolve() / "metrics" / "processes"


def stages_file(settings: Settings) -> Path:
    """Where the supervisor records each stage's pid and state, for ``/healthz``."""
    return Path(settings.data_dir) / "runtime" / "stages.json"


def read_stage_states(settings: Settings) -> dict[str, dict[str, Any]]:
    """stage -> {pid, running, returncode, restarts}; empty without a supervisor."""
    with contextlib.suppress(FileNotFoundError, ValueError, orjson.JSONDecodeError):
        states = orjson.loads(stages_file(settings).read_bytes()).get("stages", {})
        return {str(k): dict(v) for k, v in states.items()}
    return {}


def settings_environment(settings: Settings, bootstrap: str) -> dict[str, str]:
    """Environment that makes a child process see exactly ``settings`` on ``bootstrap``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.update(environment(settings))
    env[ENV_PREFIX + "BOOTSTRAP_SERVERS"] = bootstrap
    env[ENV_PREFIX + "DATA_DIR"] = str(Path(settings.data_dir).resolve())
    env[SUPERVISOR_ENV] = str(os.getpid())
    env[MULTIPROC_ENV] = str(multiproc_dir(settings))
    return env


@dataclass
class StageProcess:
    stage: str
    proc: subprocess.Popen[bytes]
    log_path: Path


RESTART_BACKOFF_S = (1.0, 60.0)  # first wait before restarting a crashed stage, and the most
STABLE_AFTER_S = 60.0  # a stage that ran this long before crashing restarts at the first wait


@dataclass
class Restart:
    """What ``StageSupervisor.restart_crashed`` did about one crashed stage."""

    stage: str
    returncode: int
    restarts: int  # restarts of this stage so far, this one included
    waited_s: float  # how long it waited (backoff) before starting it again


@dataclass
class StageSupervisor:
    """Starts, watches, restarts (with backoff) and stops the stage processes of a platform.
    Time is passed in (``now``: monotonic seconds), so the backoff is testable."""

    settings: Settings
    bootstrap: str
    running: list[StageProcess] = field(default_factory=list)
    restarts: dict[str, int] = field(default_factory=dict)
    started_at: dict[str, float] = field(default_factory=dict)
    backoff: dict[str, float] = field(default_factory=dict)
    down_since: dict[str, float] = field(default_factory=dict)

    def start(self, stages: list[str], now: float = 0.0) -> None:
        # samples of an earlier run would add to this run's totals
        path = multiproc_dir(self.settings)
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True, exist_ok=True)
        for stage in stages:
            self.running.append(self._launch(stage))
            self.started_at[stage] = now
        self.write_states()

    def write_states(self) -> None:
        """Record each stage's pid and state in ``stages_file`` (atomically)."""
        states = {}
        for s in self.running:
            code = s.proc.poll()
            states[s.stage] = {
                "pid": s.proc.pid,
                "running": code is None and s.stage not in self.down_since,
                "returncode": code,
                "restarts": self.restarts.get(s.stage, 0),
            }
        path = stages_file(self.settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        doc = {"supervisor_pid": os.getpid(), "written_at": time.time(), "stages": states}
        tmp.write_bytes(orjson.dumps(doc))
        os.replace(tmp, path)

    def _launch(self, stage: str) -> StageProcess:
        env = settings_environment(self.settings, self.bootstrap)
        logs = Path(self.settings.data_dir) / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{stage}.log"
        with log_path.open("ab") as log:
            argv = registry.stage(stage).argv
            proc = subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli", *argv],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        return StageProcess(stage, proc, log_path)

    def exited(self) -> list[StageProcess]:
        """Stages whose process ended (a crash, since only ``stop`` ends them on purpose)."""
        return [s for s in self.running if s.proc.poll() is not None]

    def restart_crashed(self, now: float) -> list[Restart]:
        """Start again every crashed stage whose backoff has passed: the wait doubles from
        RESTART_BACKOFF_S[0] with each crash up to RESTART_BACKOFF_S[1], and is back at the
        first after a stage ran STABLE_AFTER_S. Returns what was restarted."""
        done = []
        for i, s in enumerate(self.running):
            if s.proc.poll() is None:
                continue
            stage = s.stage
            if stage not in self.down_since:
                ran = now - self.started_at.get(stage, now)
                first, most = RESTART_BACKOFF_S
                previous = self.backoff.get(stage)
                self.backoff[stage] = (
                    first if previous is None or ran >= STABLE_AFTER_S else min(most, previous * 2)
                )
                self.down_since[stage] = now
                self.write_states()
            waited = now - self.down_since[stage]
            if waited < self.backoff[stage]:
                continue
            self.running[i] = self._launch(stage)
            self.started_at[stage] = now
            del self.down_since[stage]
            self.restarts[stage] = self.restarts.get(stage, 0) + 1
            code = s.proc.returncode if s.proc.returncode is not None else -1
            done.append(Restart(stage, code, self.restarts[stage], waited))
        if done:
            self.write_states()
        return done

    def stop(self, timeout_s: float = 20.0, only: tuple[str, ...] | None = None) -> None:
        """Stop every stage (or those named in ``only``): SIGTERM, then SIGKILL after
        ``timeout_s``."""
        chosen = [s for s in self.running if only is None or s.stage in only]
        for s in chosen:
            if s.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    s.proc.send_signal(signal.SIGTERM)
        for s in chosen:
            try:
                s.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    s.proc.kill()
                s.proc.wait(timeout=5)
        self.running = [s for s in self.running if s not in chosen]
        if not self.running:
            stages_file(self.settings).unlink(missing_ok=True)
