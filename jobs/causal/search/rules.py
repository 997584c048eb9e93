"""Elimination, not down-weighting: the rules that rule a candidate out.

Evidence-level rules first (a dependency only one caller sees deviate; latency that cannot
reach the symptom's requests; deviations over before the symptom began), then candidate-level
ones: no deviation (or, for an alerted failure, no harm), a deviation that began after the
symptom's or was over before it, and changes, which count only through a deviation of their own
entity after them. Explaining away is in ``explain``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import replace
from typing import Any

import networkx as nx
import numpy as np

from jobs.causal.search.config import SearchConfig
from jobs.causal.search.evidence import (
    EntityEvidence,
    Evidence,
    HypothesisBatch,
    _harmful,
    _LatencyAccounts,
)
from jobs.causal.search.result import RuledOut
from jobs.causal.search.signals import LATENCY_LIKE, _is_failure, _latency_unit, _owner
from pipeline.worldmodel.model import WorldModel


def caller_local(
    config: SearchConfig, batch: HypothesisBatch, ev: Evidence, accounts: _LatencyAccounts
) -> tuple[HypothesisBatch, list[tuple[str, str, bool]]]:
    """A dependency that deviates only as one caller measures it, and shows no harm of its own
    (latency, failures) that began with that view and can account for it, is not at fault
    when its other callers measure it healthy, or when that caller sees several such
    dependencies of its own deviate at once: the fault is on that caller's side of the calls
    (its pool, its CPU, its network), which its view of a dependency cannot tell from the
    dependency's. Its rows from that caller become evidence about the caller. Returns the
    batch and (dependency, caller, whether other callers see the dependency healthy)."""
    names = batch.entities
    idx = {e: i for i, e in enumerate(names)}
    owners = [_owner(e) for e, _ in batch.series]
    known = ~np.isnan(batch.z)
    down = batch.down_is_bad if batch.down_is_bad is not None else np.zeros(len(batch), bool)
    directed = batch.up_is_bad | down  # latency, errors, saturation: not traffic
    # harm a caller can feel: latency or failures (saturation reaches it only through them)
    felt = directed & np.array(
        [bool(LATENCY_LIKE.search(sig)) or _is_failure(sig) for _, sig in batch.series],
        dtype=bool,
    ).reshape(len(batch))
    strong = ev.strength >= config.z_min
    harmful = _harmful(batch)
    by_entity: dict[int, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for r, (owner, k) in enumerate(zip(owners, batch.entity, strict=True)):
        by_entity[int(k)][owner].append(r)
    # (dependency, the one caller seeing it deviate, that caller's rows of it, other callers)
    alone: list[tuple[int, str, list[int], int]] = []
    views: dict[str, int] = defaultdict(int)
    for k in sorted(by_entity):
        groups = by_entity[k]
        name = names[k]
        callers = {
            c: rows
            for c, rows in groups.items()
            if c != name and known[rows].sum() >= config.warmup_intervals
        }
        # how unhealthy each caller sees the dependency: its latency, errors or saturation;
        # a change in how much it calls it (a rate) says nothing of the dependency's health
        seen = {
            c: max((float(ev.strength[r]) for r in rows if directed[r]), default=0.0)
            for c, rows in callers.items()
        }
        deviating = [c for c, harm in seen.items() if harm >= config.z_min]
        if len(deviating) != 1 or deviating[0] not in idx:
            continue
        caller = deviating[0]
        own_rows = groups.get(name, [])
        view = [r for r in callers[caller] if directed[r] and strong[r]]
        began = float(np.nanmin(ev.onset_s[view])) - batch.interval_s
        # another caller sees it healthy when it measured it while the caller saw it deviate
        # and none of its scores since then deviates: a brief or sparse rise (too short to be
        # evidence of its own) is no sign of health, and a caller that measured nothing then
        # is no witness (a gap). A dependency at fault is harmed for every caller, so its
        # other callers, taken together, see it healthy when more of them measure it calm
        # than see it rise: with many callers, one of them crossing ``z_min`` once is noise
        since = max(0, math.floor((began - batch.t0_s) / batch.interval_s))
        calm = risen = 0
        for c, rows in callers.items():
            mine = [r for r in rows if directed[r]]
            if c == caller or not any(known[r, since + 1 :].any() for r in mine):
                continue
            if any(harmful[r, since:].max(initial=0.0) >= config.z_min for r in mine):
                risen += 1
            else:
                calm += 1
        if risen and calm <= risen:
            continue
        # harmed on its own side from when the caller saw it deviate (within the onset
        # tolerance), by enough to account for what the caller saw: a latency of its own that
        # rose by less than ``explain_fraction`` of the caller's view of it (same statistic,
        # absolute units) leaves most of the caller's wait on the caller's side. A harm of
        # its own that began later is not what the caller saw
        with_view = began + batch.interval_s + max(config.onset_tolerance_s, batch.step_s)
        own_harm = [
            r for r in own_rows if strong[r] and felt[r] and began <= ev.onset_s[r] <= with_view
        ]
        if own_harm:
            seen = accounts.rises(view)
            if any(accounts.can_account(r, seen) for r in own_harm):
                continue
        views[caller] += 1
        alone.append((k, caller, callers[caller], calm))
    entity = batch.entity.copy()
    local: list[tuple[str, str, bool]] = []
    for k, caller, rows, others in alone:
        # with no other caller to compare, only a dependency with series of its own shows
        # nothing of its own (an uninstrumented one is seen only through its callers)
        if others == 0 and (views[caller] < 2 or not by_entity[k].get(names[k])):
            continue
        entity[rows] = idx[caller]
        local.append((names[k], caller, others > 0))
    if not local:
        return batch, local
    return replace(batch, entity=entity), local


def latency_decoupled(
    model: WorldModel,
    config: SearchConfig,
    batch: HypothesisBatch,
    ev: Evidence,
    graph: nx.MultiDiGraph,
    symptoms: list[str],
    t_s: float,
) -> np.ndarray:
    """Rows of candidates whose deviation cannot reach the symptom's requests.

    A dependency whose *typical* latency (its lowest statistic) exceeds the symptom's
    slowest statistic (same unit) by ``async_margin`` is not waited for by the symptom's
    requests, or by too few of them to matter: if a share f of the symptom's requests
    waited for it, half of that share would be slower than its median, so f / 2 of the
    symptom's requests would exceed it, which their p99 denies unless f < 2%. It is
    called asynchronously (a queue, a state machine) or on a negligible share, and so is
    everything reached only through it. The latency of those candidates is no evidence
    for the symptom, and neither are the errors and availability of what is reached only
    through the asynchronous dependency (the dependency's own failures still are: handing
    work over is a call that can fail)."""
    out = np.zeros(len(batch), dtype=bool)
    latency = [
        (r, unit)
        for r, (_, signal) in enumerate(batch.series)
        if (unit := _latency_unit(signal)) is not None
    ]
    deviating = [
        r
        for r, (_, signal) in enumerate(batch.series)
        if ev.strength[r] >= config.z_min
        and (_latency_unit(signal) is not None or _is_failure(signal))
    ]
    names = batch.entities
    symptom_set = set(symptoms)
    if not any(names[int(batch.entity[r])] not in symptom_set for r in deviating):
        return out
    high: dict[str, float] = {}
    low: dict[int, dict[str, float]] = defaultdict(dict)
    for r, unit in latency:
        entity, signal = batch.series[r]
        baseline = model.baselines.get(entity, signal)
        if baseline is None or baseline.intervals_learned < config.warmup_intervals:
            continue
        level = baseline.expected(t_s)[0]
        if not math.isfinite(level) or level <= 0:
            continue
        k = int(batch.entity[r])
        if names[k] in symptom_set and _owner(entity) == names[k]:
            high[unit] = max(high.get(unit, 0.0), level)
        else:
            low[k][unit] = min(low[k].get(unit, math.inf), level)
    if not high:
        return out
    asynchronous = {
        names[k]
        for k, levels in low.items()
        if names[k] not in symptom_set
        and any(
            unit in high and level > config.async_margin * high[unit]
            for unit, level in levels.items()
        )
    }
    if not asynchronous:
        return out
    # what the symptoms reach through synchronous dependencies only
    synchronous = nx.subgraph_view(graph, filter_node=lambda n: n not in asynchronous)
    reached = set()
    for symptom in symptoms:
        if symptom in synchronous:
            reached |= nx.descendants(synchronous, symptom) | {symptom}
    for r, _ in latency:
        name = names[int(batch.entity[r])]
        if name in asynchronous or (name in graph and name not in reached):
            out[r] = True
    # nor can what runs only behind the asynchronous hop fail the symptom's requests: its
    # errors and availability are no evidence either (the hop's own are: a call that hands
    # work over can itself fail)
    handed_to = {d for n in reached if n in graph for d in graph.successors(n)}
    for r, (_, signal) in enumerate(batch.series):
        name = names[int(batch.entity[r])]
        if name in graph and name not in reached and name not in handed_to and _is_failure(signal):
            out[r] = True
    return out


def caller_local_ruled_out(local: list[tuple[str, str, bool]]) -> list[RuledOut]:
    """Why each dependency ``caller_local`` found is not at fault."""
    return [
        RuledOut(
            dep,
            f"only {caller} sees it deviate; its other callers, taken together, see it healthy:"
            f" the fault is on {caller}'s side of the call"
            if others
            else f"{caller} sees it and its other dependencies deviate at once, and none of"
            f" them shows harm of its own: the fault is on {caller}'s side of the calls",
        )
        for dep, caller, others in local
    ]


def over_before_symptom(ev: Evidence, symptom_onset: float, tolerance: float) -> Evidence:
    """A deviation that was over before the symptom began is no evidence for it."""
    if ev.end_s is None:
        return ev
    over_rows = ev.end_s < symptom_onset - tolerance
    return replace(ev, strength=np.where(over_rows, 0.0, ev.strength))


def deviating(
    config: SearchConfig,
    symptoms: list[tuple[str, str | None]],
    ents: EntityEvidence,
    symptom_ids: list[int],
    far: np.ndarray,
    uncorroborated: bool,
) -> np.ndarray:
    """Candidates that deviate from their baseline in the window (the rest are ruled out).

    An alerted failure (``failures_need_harm``) and a quiet alert answered for a dependency
    harmed far beyond its normal are explained only by a candidate that is itself harmed (in
    a signal with a harmful direction): one whose only change is how much it is called did
    not make its callers fail. The alerted entity itself stays (its alert names its harm),
    except for a quiet alert, where it stays only when it is itself harmed far beyond its
    normal."""
    alive = ents.best_strength >= config.z_min
    if (
        uncorroborated
        or config.on("failures_need_harm")
        and any(signal is not None and _is_failure(signal) for _, signal in symptoms)
    ):
        harmed = ents.harm_strength >= config.z_min
        harmed[symptom_ids] = far[symptom_ids] if uncorroborated else True
        alive &= harmed
    return alive


def mistimed(
    alive: np.ndarray,
    ents: EntityEvidence,
    names: list[str],
    symptom_onset: float,
    tolerance: float,
) -> list[tuple[int, str]]:
    """Candidates among ``alive`` whose deviation began after the symptom's (beyond the
    tolerance), then those whose deviation was over before the symptom's began: neither can
    have caused it. Each with why, in that order."""
    onset, last_dev = ents.onset, ents.last_dev
    out: list[tuple[int, str]] = []
    late = alive & (onset > symptom_onset + tolerance)
    for i in map(int, np.flatnonzero(late)):
        out.append((i, f"its deviation began {onset[i] - symptom_onset:.0f} s after the symptom's"))
    over = alive & ~late & (last_dev < symptom_onset - tolerance)
    for i in map(int, np.flatnonzero(over)):
        out.append(
            (
                i,
                f"its deviation was over {symptom_onset - last_dev[i]:.0f} s before the symptom's began",
            )
        )
    return out


def changes_before(
    model: WorldModel,
    config: SearchConfig,
    alive: np.ndarray,
    idx: dict[str, int],
    onset: np.ndarray,
    symptom_onset: float | None,
    t_s: float,
) -> tuple[dict[int, dict[str, Any]], list[RuledOut]]:
    """Changes count through a deviation of their own entity after them: per surviving
    candidate, the latest change within ``change_lookback_s`` before its onset (up to the onset
    tolerance after it); a change before the symptom that no deviation of its entity
    follows is ruled out, the symptom being explained elsewhere."""
    change_for: dict[int, dict[str, Any]] = {}
    ruled: list[RuledOut] = []
    for change in model.changes:
        entity = f"{change['entity']['kind']}:{change['entity']['name']}"
        t_change = int(change["time_unix_nano"]) / 1e9
        found = idx.get(entity)
        if found is None:
            continue
        i = found
        if (
            alive[i]
            and onset[i] - config.change_lookback_s
            <= t_change
            <= onset[i] + config.onset_tolerance_s
        ):
            if i not in change_for or t_change > int(change_for[i]["time_unix_nano"]) / 1e9:
                change_for[i] = change
        elif (
            symptom_onset is None or t_change <= symptom_onset + config.onset_tolerance_s
        ) and t_change >= (symptom_onset or t_s) - config.change_lookback_s:
            ruled.append(
                RuledOut(
                    f"change:{change['change_id']}",
                    f"no deviation of {entity} follows it before the symptom; the symptom is explained elsewhere",
                )
            )
    return change_for, ruled
