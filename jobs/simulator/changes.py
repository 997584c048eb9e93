"""Change events: deploys, config pushes, feature-flag flips and scaling, on a schedule.

Most changes are benign: a deploy only bumps ``service.version`` (visible in the spans' resource
attributes from that moment on), a scale-up only adds a pod. Faults add their own changes (the
deploy that brought a slow query, the config push, the flag flip) through the same type, so the
stream looks the same whether or not a change did harm. ``to_event`` gives the JSON payload of
the ``changes`` topic (``schemas/changes.schema.json``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import numpy as np

from jobs.simulator.topology import Topology

ChangeKind = Literal["deploy", "config", "feature_flag", "scaling"]
_AUTHORS = ("ci", "alice", "bob", "deploy-bot", "carol", "flag-service")
_FLAGS = ("new-checkout-flow", "ranker-v2", "async-invoices", "smart-retries", "dark-mode")
_CONFIG_KEYS = ("http.client.timeout", "cache.ttl", "log.level", "pool.max_size", "rate_limit.rps")


def iso(t_s: float) -> str:
    """RFC 3339 UTC with milliseconds."""
    return datetime.fromtimestamp(t_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass(frozen=True)
class Change:
    change_id: str
    kind: ChangeKind
    service: int
    time_s: float
    summary: str
    author: str
    source: str
    attributes: dict[str, str | int | float | bool | None] = field(default_factory=dict)
    new_version: str | None = None
    replicas_after: int | None = None

    def to_event(self, topo: Topology) -> dict[str, object]:
        return {
            "schema_version": 1,
            "change_id": self.change_id,
            "kind": self.kind,
            "entity": {"kind": "service", "name": topo.services[self.service].name},
            "time": iso(self.time_s),
            "summary": self.summary,
            "author": self.author,
            "source": self.source,
            "attributes": dict(self.attributes),
        }


def bump(version: str, minor: bool) -> str:
    major, mi, patch = (int(x) for x in version.split("."))
    return f"{major}.{mi + 1}.0" if minor else f"{major}.{mi}.{patch + 1}"


def initial_versions(topo: Topology, rng: np.random.Generator) -> list[str]:
    return [
        f"{int(rng.integers(1, 4))}.{int(rng.integers(0, 30))}.{int(rng.integers(0, 10))}"
        for _ in topo.services
    ]


def deploy(
    topo: Topology, service: int, time_s: float, before: str, change_id: str, minor: bool = False
) -> Change:
    after = bump(before, minor)
    name = topo.services[service].name
    return Change(
        change_id=change_id,
        kind="deploy",
        service=service,
        time_s=time_s,
        summary=f"{name} {before} -> {after}",
        author="ci",
        source="ci-pipeline",
        attributes={"service.version.before": before, "service.version.after": after},
        new_version=after,
    )


def config_push(
    topo: Topology, service: int, time_s: float, key: str, before: str, after: str, change_id: str
) -> Change:
    return Change(
        change_id=change_id,
        kind="config",
        service=service,
        time_s=time_s,
        summary=f"{topo.services[service].name}: {key} {before} -> {after}",
        author="config-bot",
        source="config-service",
        attributes={"key": key, "before": before, "after": after},
    )


def flag_flip(topo: Topology, service: int, time_s: float, flag: str, change_id: str) -> Change:
    return Change(
        change_id=change_id,
        kind="feature_flag",
        service=service,
        time_s=time_s,
        summary=f"flag {flag} enabled for {topo.services[service].name}",
        author="flag-service",
        source="flag-service",
        attributes={"flag": flag, "before": False, "after": True},
    )


def benign_schedule(
    topo: Topology,
    versions: list[str],
    start_s: float,
    end_s: float,
    rng: np.random.Generator,
    mean_interval_s: float = 900.0,
) -> list[Change]:
    """Benign changes over [start_s, end_s): about one per ``mean_interval_s``."""
    changes: list[Change] = []
    current = list(versions)
    replicas = [s.replicas for s in topo.services]
    candidates = [s.index for s in topo.services if s.tier != "cron"]
    t = start_s + float(rng.exponential(mean_interval_s))
    n = 0
    while t < end_s:
        svc = candidates[int(rng.integers(len(candidates)))]
        kind = ("deploy", "deploy", "deploy", "config", "feature_flag", "scaling")[
            int(rng.integers(6))
        ]
        cid = f"chg-{int(t)}-{n}"
        if kind == "deploy":
            ch = deploy(topo, svc, t, current[svc], cid, minor=bool(rng.random() < 0.3))
            current[svc] = ch.new_version or current[svc]
        elif kind == "config":
            key = _CONFIG_KEYS[int(rng.integers(len(_CONFIG_KEYS)))]
            revision = int(rng.integers(100, 999))
            ch = config_push(topo, svc, t, key, f"rev{revision}", f"rev{revision + 1}", cid)
        elif kind == "feature_flag":
            ch = flag_flip(topo, svc, t, _FLAGS[int(rng.integers(len(_FLAGS)))], cid)
        else:
            base = topo.services[svc].replicas
            after = base + 1 if replicas[svc] == base else base
            ch = Change(
                change_id=cid,
                kind="scaling",
                service=svc,
                time_s=t,
                summary=f"{topo.services[svc].name} replicas {replicas[svc]} -> {after}",
                author=_AUTHORS[int(rng.integers(len(_AUTHORS)))],
                source="autoscaler",
                attributes={"replicas.before": replicas[svc], "replicas.after": after},
                replicas_after=after,
            )
            replicas[svc] = after
        changes.append(ch)
        n += 1
        t += float(rng.exponential(mean_interval_s))
    return changes
