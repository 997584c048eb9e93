"""Stage processes: each pipeline stage runs as its own ``worldline worker <stage>`` process.

``worldline up`` starts them beside the broker; in production each runs on its own (compose
service, systemd unit, pod). A child gets the parent's effective settings through
``WORLDLINE_*`` variables and dies with its parent (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import topics
from pipeline.broker import die_with_parent
from pipeline.settings import ENV_PREFIX, FIELDS, Settings

RECEIVER_STAGE = "receiver"


def settings_environment(settings: Settings, bootstrap: str) -> dict[str, str]:
    """Environment that makes a child process see exactly ``settings`` on ``bootstrap``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    for name in FIELDS:
        if name == "topics":
            continue
        value = getattr(settings, name)
        if value is not None:
            env[ENV_PREFIX + name.upper()] = str(value)
    for logical, actual in settings.topics.items():
        env[f"{ENV_PREFIX}TOPIC_{topics.spec(logical).name.replace('.', '_').upper()}"] = actual
    env[ENV_PREFIX + "BOOTSTRAP_SERVERS"] = bootstrap
    env[ENV_PREFIX + "DATA_DIR"] = str(Path(settings.data_dir).resolve())
    return env


@dataclass
class StageProcess:
    stage: str
    proc: subprocess.Popen[bytes]
    log_path: Path


@dataclass
class StageSupervisor:
    """Starts, watches and stops the stage processes of one platform."""

    settings: Settings
    bootstrap: str
    running: list[StageProcess] = field(default_factory=list)

    def start(self, stages: list[str]) -> None:
        env = settings_environment(self.settings, self.bootstrap)
        logs = Path(self.settings.data_dir) / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for stage in stages:
            log_path = logs / f"{stage}.log"
            with log_path.open("ab") as log:
                argv = ["receive"] if stage == RECEIVER_STAGE else ["worker", stage]
                proc = subprocess.Popen(
                    [sys.executable, "-m", "pipeline.cli", *argv],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=die_with_parent,
                )
            self.running.append(StageProcess(stage, proc, log_path))

    def exited(self) -> list[StageProcess]:
        """Stages whose process ended (a crash, since only ``stop`` ends them on purpose)."""
        return [s for s in self.running if s.proc.poll() is not None]

    def stop(self, timeout_s: float = 20.0) -> None:
        for s in self.running:
            if s.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    s.proc.send_signal(signal.SIGTERM)
        for s in self.running:
            try:
                s.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    s.proc.kill()
                s.proc.wait(timeout=5)
        self.running.clear()
