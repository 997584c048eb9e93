"""The stage registry: every stage worldline runs, in the order the data flows, in one place.

Each worker stage names the function that builds its faust app by import path
(``"module:function"``) and is resolved only when that stage runs. The shared worker shell
(``pipeline.workers``) therefore knows no stage module, and the stage modules, which import
the shell, are never imported back by it: there is no import circle between the platform and
its stages (``tests/test_structure.py`` checks the whole import graph).

This module imports nothing heavy, so the command line can list the stages cheaply.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.settings import Settings


@dataclass(frozen=True)
class Stage:
    name: str
    argv: tuple[str, ...]
    """The ``worldline`` command that runs it as its own process."""
    summary: str
    """What it reads and writes, one line."""
    builder: str | None = None
    """``"module:function"`` building its faust app, called as ``function(settings=...,
    bootstrap=..., **kwargs)``; None for a stage that is not a faust worker."""
    kwargs: Mapping[str, str] = field(default_factory=dict)
    replicas: bool = False
    """Replicas share its input through their consumer group (as many as its topic has
    partitions)."""

    @property
    def worker(self) -> bool:
        return self.builder is not None


RECEIVER = "receiver"
_INGEST = "pipeline.ingest.worker:build_ingest_app"

STAGES: tuple[Stage, ...] = (
    Stage(
        RECEIVER,
        ("receive",),
        "HTTP (OTLP/HTTP, remote_write, Loki push, Alertmanager webhook) -> otlp_*, alerts",
    ),
    Stage(
        "ingest-logs",
        ("worker", "ingest-logs"),
        "otlp_logs -> log template and log segments",
        _INGEST,
        {"stage": "ingest-logs"},
        replicas=True,
    ),
    Stage(
        "ingest-metrics",
        ("worker", "ingest-metrics"),
        "otlp_metrics -> metric series and point segments",
        _INGEST,
        {"stage": "ingest-metrics"},
        replicas=True,
    ),
    Stage(
        "ingest-spans",
        ("worker", "ingest-spans"),
        "otlp_spans -> span segments",
        _INGEST,
        {"stage": "ingest-spans"},
        replicas=True,
    ),
    Stage(
        "world-model",
        ("worker", "world-model"),
        "sealed segments + changes -> baselines, graph, changes, new templates",
        "pipeline.worldmodel.worker:build_world_model_app",
    ),
    Stage(
        "causal-search",
        ("worker", "causal-search"),
        "alerts + world model -> causes.ranked",
        "jobs.causal.worker:build_causal_app",
    ),
)
BY_NAME: dict[str, Stage] = {s.name: s for s in STAGES}
NAMES: list[str] = [s.name for s in STAGES]
WORKERS: list[str] = [s.name for s in STAGES if s.worker]


def stage(name: str) -> Stage:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r}; known: {', '.join(NAMES)}") from None


def builder(name: str) -> Callable[..., Any]:
    """The function that builds the named worker stage's app (imported now)."""
    spec = stage(name)
    if spec.builder is None:
        raise KeyError(f"stage {name!r} is not a worker stage")
    module, _, function = spec.builder.partition(":")
    built: Callable[..., Any] = getattr(importlib.import_module(module), function)
    return built


def build_app(name: str, settings: Settings, bootstrap: str) -> Any:
    """Build the named worker stage's faust app on ``bootstrap``."""
    return builder(name)(settings=settings, bootstrap=bootstrap, **stage(name).kwargs)
