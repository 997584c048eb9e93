"""Candidates and hypotheses, from the world model.

Candidates: every entity on the past side of the symptom (upstream in the dependency graph as of
the alert, k hops, virtual dependencies included, and the pods and hosts they run on), and,
the graph being a prior rather than a filter, every other entity the baselines know and every
dependency its callers' series describe. Hypotheses:
(candidate, series) pairs; a series is evidence for the entity it describes: its own series,
the edge series its callers measured (``edge.*{peer=<entity>}``) and the client metrics naming
it as their peer.
"""

from __future__ import annotations

import math

import networkx as nx
import numpy as np

from jobs.causal.search.config import OFF_GRAPH, SearchConfig
from jobs.causal.search.evidence import HypothesisBatch
from jobs.causal.search.signals import (
    PEER,
    _down_is_bad,
    _modality,
    _owner,
    _peer_entity,
    _up_is_bad,
    client_metric_peer,
)
from pipeline.worldmodel.graph import EntityRef
from pipeline.worldmodel.model import WorldModel
from pipeline.worldmodel.peers import operation_servers, rpc_method


def candidates(
    model: WorldModel, config: SearchConfig, symptoms: list[str], t_s: float
) -> tuple[dict[str, int], nx.MultiDiGraph]:
    """Candidate entities -> hops from the nearest symptom, and the graph used."""
    t_ns = int(t_s * 1e9)
    graph = model.graph.as_of(t_ns)
    out: dict[str, int] = {}
    for symptom in symptoms:
        if symptom not in graph:
            continue
        for ref, hops in model.graph.upstream(
            EntityRef.from_key(symptom), config.hops, t_ns
        ).items():
            out[ref.key] = min(out.get(ref.key, hops), hops)
    # the graph is a prior, not a filter: an entity it does not place on the symptom's past
    # side (a metrics-only service, a dependency no trace has shown yet) is still a
    # candidate, at ``OFF_GRAPH`` hops (less likely, ``w_off_graph``); with no graph
    # around the symptom at all every entity is equally placed (-1)
    unplaced = -1 if not out else OFF_GRAPH
    keys = model.baselines.keys()
    for entity, _ in keys:
        # (an operation is evidence about its service, not a candidate of its own)
        if not entity.startswith(("alert:", "operation:")):
            out.setdefault(entity, unplaced)
    # so is a dependency known only from its callers' view of it (a database, a cache or an
    # external API in their client metrics or edges): it has no series of its own
    services = {e for e, _ in keys if e.startswith("service:")}
    operations = operation_servers(e for e, _ in keys)
    for caller, signal in keys:
        peer = described_peer(signal)
        if peer is not None:
            target = _peer_entity(
                peer, services, operations, _callees(graph, caller), model.graph.peer_services
            )
            if target.startswith("operation:") and (
                _owner(target) in services or not names_a_dependency(target)
            ):
                # an operation a known service serves is evidence about that service; a call
                # named by nothing that says what it calls, the caller's view of its own calls
                continue
            out.setdefault(target, unplaced)
    for symptom in symptoms:
        out.setdefault(symptom, 0)
    return out, graph


def names_a_dependency(operation: str) -> bool:
    """Whether an ``operation:<name>`` a client span was named by says what it calls: an RPC
    method names its service (``hipstershop.CartService/GetCart``), an HTTP verb or a
    free-form name does not."""
    return rpc_method(operation.removeprefix("operation:")) is not None


def _callees(graph: nx.MultiDiGraph | None, caller: str) -> list[str]:
    """The services ``caller`` calls in the dependency graph."""
    if graph is None or caller not in graph:
        return []
    return [n for n in graph.successors(caller) if n.startswith("service:")]


def described_peer(signal: str) -> str | None:
    """The dependency a caller-side series describes (an edge's peer, a client metric's), as
    the series names it; None for a series about its own entity."""
    if signal.startswith("edge."):
        found = PEER.search(signal)
        return found.group(1) if found else None
    return client_metric_peer(signal)


def hypotheses(
    model: WorldModel,
    config: SearchConfig,
    candidates: dict[str, int],
    t_s: float,
    warmup_intervals: int | None = None,
    graph: nx.MultiDiGraph | None = None,
) -> HypothesisBatch:
    """Every (candidate, series) pair, with the series' robust scores over the window.
    ``graph``: the dependency graph the candidates come from, which names the service a
    caller's edge reaches when several serve its RPC method."""
    warmup = config.warmup_intervals if warmup_intervals is None else warmup_intervals
    interval = model.config.interval_s
    w = config.window_intervals
    end_interval = math.floor(t_s / interval)
    t0 = (end_interval - w + 1) * interval
    known_services = {e for e in candidates if e.startswith("service:")}
    index = {e: i for i, e in enumerate(sorted(candidates))}
    entity_ids: list[int] = []
    series: list[tuple[str, str]] = []
    keys = model.baselines.keys()
    operations = operation_servers(e for e, _ in keys)
    for key in keys:
        entity, signal = key
        target = entity
        if signal.startswith("edge."):
            peer = PEER.search(signal)
            if peer is None:
                continue
            target = _peer_entity(
                peer.group(1),
                known_services,
                operations,
                _callees(graph, entity),
                model.graph.peer_services,
            )
        else:
            described = client_metric_peer(signal)
            if described is not None:
                target = _peer_entity(
                    described, known_services, answered_by=model.graph.peer_services
                )
        if target not in index and target.startswith("operation:"):
            # an operation that is no candidate of its own is evidence about its service
            # (an SLO alert on a service measures its routes); a call whose name says
            # nothing of what it calls (``GET``), and no span answered, about its caller
            owner = _owner(target)
            target = owner if owner in index or names_a_dependency(target) else entity
        if target in index:
            entity_ids.append(index[target])
            series.append(key)
    n = len(series)
    z = np.full((n, w), np.nan)
    # the share of intervals in which a series began a deviation episode, with a prior of
    # one episode in 1 / episode_rate_ref intervals: a young series is not judged noisy
    prior_intervals = 1.0 / config.episode_rate_ref if config.episode_rate_ref > 0 else 1.0
    episodes = np.full(n, 1.0 / prior_intervals)
    for row, (entity, signal) in enumerate(series):
        baseline = model.baselines.get(entity, signal)
        if baseline is None or baseline.first_seen_s is None:
            continue
        episodes[row] = (baseline.alerts_raised + 1.0) / (
            baseline.intervals_learned + prior_intervals
        )
        # a baseline that has seen little history scores noise as deviation: skip its first intervals
        warm_from = baseline.first_seen_s + warmup * interval
        for t_start, score in baseline.recent_scores():
            col = round((t_start - t0) / interval)
            if 0 <= col < w and t_start >= warm_from:
                z[row, col] = score
    return HypothesisBatch(
        entity=np.array(entity_ids, dtype=np.int64),
        series=series,
        modality=np.array([_modality(s) for _, s in series], dtype=np.int8),
        up_is_bad=np.array([_up_is_bad(s) for _, s in series], dtype=bool),
        z=z,
        t0_s=t0,
        interval_s=interval,
        entities=sorted(candidates),
        down_is_bad=np.array([_down_is_bad(s) for _, s in series], dtype=bool),
        episode_rate=episodes,
    )
