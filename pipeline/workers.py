"""The faust shell every worker stage shares: one app configuration, stats files, running a stage.

Each stage (``ingest-*``, ``world-model``, ``causal-search``) builds its app with ``faust_app`` so
every worker behaves the same on any broker (short session timeout, no leader topic, no web
server), writes its counters with ``write_stats``, and runs through ``run_worker``, which finds
the stage's builder in ``pipeline.registry`` (by import path: this module imports no stage).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import faust
import orjson

from pipeline import registry
from pipeline.kafka_auth import KafkaAuth
from pipeline.settings import SUPERVISOR_ENV, Settings


def faust_broker_url(bootstrap: str) -> str:
    return ";".join(f"kafka://{hp.strip()}" for hp in bootstrap.split(","))


def faust_app(settings: Settings, app_id: str, bootstrap: str) -> faust.App:
    """A faust app configured the way every worldline worker needs it on any broker."""
    datadir = settings.data_dir / "faust" / app_id
    datadir.mkdir(parents=True, exist_ok=True)
    return faust.App(
        app_id,
        broker=faust_broker_url(bootstrap),
        broker_credentials=KafkaAuth.from_settings(settings).faust_credentials(),
        store="memory://",
        web_enabled=False,
        topic_disable_leader=True,
        topic_allow_declare=False,
        broker_session_timeout=settings.session_timeout_ms / 1000.0,
        broker_heartbeat_interval=settings.heartbeat_interval_ms / 1000.0,
        consumer_auto_offset_reset="earliest",
        consumer_max_fetch_size=max(settings.max_record_bytes * 2, 8 * 1024 * 1024),
        producer_max_request_size=settings.max_record_bytes + 1024 * 1024,
        datadir=str(datadir),
        stream_wait_empty=False,
        logging_config=None,
    )


def stats_path(settings: Settings, stage: str) -> Path:
    return settings.data_dir / "stats" / f"{stage}.json"


def write_stats(path: Path, counters: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(orjson.dumps(counters, option=orjson.OPT_SORT_KEYS))
    os.replace(tmp, path)


ORPHAN_GRACE_S = 15.0


def exit_when_orphaned(supervisor_pid: int, grace_s: float = ORPHAN_GRACE_S) -> threading.Thread:
    """A stage started by ``up`` must not outlive it: when its parent is gone (the kernel also
    sends it SIGTERM then, ``die_with_parent``) and its graceful shutdown has not ended the
    process within ``grace_s``, the process exits at once (a shutdown stuck on a broker that
    is gone would otherwise keep it alive for good)."""

    def watch() -> None:
        while os.getppid() == supervisor_pid:
            time.sleep(0.5)
        time.sleep(grace_s)
        os._exit(1)

    thread = threading.Thread(target=watch, name="exit-when-orphaned", daemon=True)
    thread.start()
    return thread


def run_worker(settings: Settings, stage: str, bootstrap: str) -> None:
    """Run one stage until SIGINT/SIGTERM (blocking)."""
    supervisor = os.environ.get(SUPERVISOR_ENV)
    if supervisor and supervisor.isdigit():
        exit_when_orphaned(int(supervisor))
    app = registry.build_app(stage, settings, bootstrap)
    from pipeline.selfmetrics import serve_own_metrics

    serve_own_metrics(settings)
    worker = faust.Worker(
        app, loglevel=settings.log_level.lower(), quiet=True, redirect_stdouts=False
    )
    worker.execute_from_commandline()
