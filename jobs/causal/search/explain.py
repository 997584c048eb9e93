"""Explaining away: which candidate's deviation another candidate accounts for.

A dependency that deviated no later explains its dependent; a caller harmed before a
dependency's traffic changed explains the dependency, when that is all that changed about it;
an uninstrumented leaf harmed with an instrumented sibling is the caller's view of it; load
shifted from one dependency onto another is explained by the first, and so is what the shifted
one would have explained. What follows for the odds of a candidate another accounts for is the
model's (``model.explained_away``): it stays ranked, below what accounts for it. What a
candidate accounts for on its paths to the symptom (``explained_between``) raises its rank.
"""

from __future__ import annotations

import networkx as nx
import numpy as np

from jobs.causal.search.config import SearchConfig
from jobs.causal.search.evidence import (
    EntityEvidence,
    Evidence,
    HypothesisBatch,
    _LatencyAccounts,
)
from jobs.causal.search.signals import _is_failure, _owner


def sibling_views(
    config: SearchConfig,
    alive: np.ndarray,
    graph: nx.MultiDiGraph,
    idx: dict[str, int],
    names: list[str],
    onset: np.ndarray,
    last_dev: np.ndarray,
    harm_strength: np.ndarray,
    accounts: _LatencyAccounts,
    tolerance: float,
    symptom_ids: set[int],
) -> dict[int, int]:
    """Leaf candidate -> the instrumented sibling it is taken to be a view of.

    The sibling shares a caller with the leaf, calls dependencies of its own (it is
    instrumented), does not reach the leaf (then the leaf could be why it deviates), is
    harmed in the same way (both slow or both failing) from within the onset tolerance of
    the leaf's onset (both measure the same requests: neither precedes the other) and
    still when the leaf's deviation began."""
    out: dict[int, int] = {}
    z_min = config.z_min
    for i in map(int, np.flatnonzero(alive)):
        node = names[i]
        if i in symptom_ids or node not in graph or any(True for _ in graph.successors(node)):
            continue
        siblings = sorted(
            {s for p in graph.predecessors(node) for s in graph.successors(p)} - {node}
        )
        best: tuple[float, int] | None = None
        for sib in siblings:
            j = idx.get(sib)
            if (
                j is None
                or j in symptom_ids
                or harm_strength[j] < z_min
                or not any(True for _ in graph.successors(sib))
                or onset[j] > onset[i] + tolerance
                or last_dev[j] < onset[i] - tolerance
                or not (
                    (accounts.slow[i] and accounts.slow[j])
                    or (accounts.fails[i] and accounts.fails[j])
                )
                or nx.has_path(graph, sib, node)
            ):
                continue
            key = (-float(harm_strength[j]), j)
            if best is None or key < best:
                best = key
        if best is not None:
            out[i] = best[1]
    return out


def shifted_load(
    config: SearchConfig,
    alive: np.ndarray,
    batch: HypothesisBatch,
    ev: Evidence,
    graph: nx.MultiDiGraph,
    idx: dict[str, int],
    onset: np.ndarray,
    last_dev: np.ndarray,
    harm_strength: np.ndarray,
    tolerance: float,
) -> dict[int, int]:
    """Candidate -> the dependency whose failing or slowing shifted load onto it.

    Its extra requests come from callers whose own inbound traffic did not grow, while
    another dependency of theirs was harmed from no later than the onset tolerance after it
    (a cache that misses, a call that fails over). A candidate that fails itself is spared
    (``shift_spares_failing``): its extra requests are its callers retrying what failed."""
    names = batch.entities
    owners = [_owner(e) for e, _ in batch.series]
    rate = np.array(["rate_per_s" in s for _, s in batch.series], dtype=bool)
    strong_up = rate & (ev.strength >= config.z_min) & (ev.peak > 0)
    # callers whose own inbound traffic rose
    grew = {
        names[int(batch.entity[r])]
        for r in np.flatnonzero(strong_up)
        if owners[r] == names[int(batch.entity[r])]
    }
    # candidates that fail: their extra requests are their callers retrying what failed
    failing = np.zeros(len(names), dtype=bool)
    if config.on("shift_spares_failing"):
        failure = np.array([_is_failure(s) for _, s in batch.series], dtype=bool)
        failure = failure.reshape(len(batch))
        np.logical_or.at(failing, batch.entity, failure & (ev.strength >= config.z_min))
    out: dict[int, int] = {}
    for i in map(int, np.flatnonzero(alive & ~failing)):
        rows = np.flatnonzero(strong_up & (batch.entity == i))
        callers = sorted({owners[r] for r in rows if owners[r] != names[i]} - grew)
        if not callers:
            continue
        best: tuple[float, int] | None = None
        for caller in callers:
            if caller not in graph:
                continue
            for dep in sorted(set(graph.successors(caller))):
                j = idx.get(dep)
                if (
                    j is None
                    or j == i
                    or not alive[j]
                    or harm_strength[j] < config.z_min
                    or onset[j] > onset[i] + tolerance
                    or last_dev[j] < onset[i] - tolerance
                ):
                    continue
                if best is None or harm_strength[j] > best[0]:
                    best = (float(harm_strength[j]), j)
        if best is not None:
            out[i] = best[1]
    # two candidates that would each explain the other's extra load explain neither
    return {i: j for i, j in out.items() if out.get(j) != i}


def explained_between(
    config: SearchConfig,
    survivors: np.ndarray,
    graph: nx.MultiDiGraph,
    names: list[str],
    idx: dict[str, int],
    symptom_ids: list[int],
    best_strength: np.ndarray,
    onset: np.ndarray,
) -> np.ndarray:
    """Per survivor: deviating entities on its paths to the symptom (what it accounts for):
    those whose deviation did not begin before the survivor's (with
    ``explain_needs_precedence``; an earlier one is not its consequence)."""
    symptoms = {names[i] for i in symptom_ids}
    precedence = config.on("explain_needs_precedence")
    out = np.zeros(len(survivors))
    for k, i in enumerate(map(int, survivors)):
        node = names[i]
        if node not in graph:
            continue
        between = nx.ancestors(graph, node) - symptoms
        out[k] = sum(
            1
            for other in between
            if (j := idx.get(other)) is not None
            and best_strength[j] >= config.z_min
            and not (precedence and onset[j] < onset[i])
        )
    return out


def explained_by_dependencies(
    config: SearchConfig,
    alive: np.ndarray,
    graph: nx.MultiDiGraph,
    idx: dict[str, int],
    names: list[str],
    ents: EntityEvidence,
    accounts: _LatencyAccounts,
    tolerance: float,
) -> dict[int, list[int]]:
    """Dependent -> the dependencies that explain its deviation (in name order).

    A dependency whose harmful deviation began no later (its strong evidence, or the first
    harm its callers felt from it: a dependency's strongest evidence may come later than the
    first of its harm, a tail that grows after the median moved), and was still going on when the
    dependent's began, explains the dependent's deviation when the harm its callers feel
    began within the tolerance before it: calls propagate a harm at once, so a dependent that
    turned abnormal long after is abnormal for another reason. Its deviation must also be
    able to account for the dependent's (``_LatencyAccounts``)."""
    onset, last_dev = ents.onset, ents.last_dev
    explained_by: dict[int, list[int]] = {}
    for i in map(int, np.flatnonzero(alive)):
        node = names[i]
        if node not in graph:
            continue
        for dep in sorted(set(graph.successors(node))):
            j = idx.get(dep)
            if j is None or j == i or ents.felt_strength[j] < config.z_min:
                continue
            began = min(onset[j], ents.felt_onset[j])
            if (
                began <= onset[i] + (0.0 if config.on("explain_needs_precedence") else tolerance)
                and onset[i] - ents.felt_onset[j] <= tolerance
                and last_dev[j] >= onset[i] - tolerance
                and not (node in graph.successors(dep) and onset[i] < onset[j])
                and accounts.for_(j, i)
            ):
                explained_by.setdefault(i, []).append(j)
    return explained_by


def explained_by_callers(
    config: SearchConfig,
    alive: np.ndarray,
    graph: nx.MultiDiGraph,
    idx: dict[str, int],
    names: list[str],
    ents: EntityEvidence,
    tolerance: float,
    symptom_ids: set[int],
) -> dict[int, int]:
    """Dependency -> a caller that accounts for it: the dependency deviates only in how much
    it is asked (no directed harm of its own: a request rate, bytes received), and the caller
    was harmed in a way its own callers feel (latency, failures) from an earlier interval
    than that began, and still was then. A caller that slows or fails calls its dependencies
    less (or retries them more); the alerted entity's own dependencies are no exception,
    but the alerted entity is never the one explained."""
    out: dict[int, int] = {}
    for i in map(int, np.flatnonzero(alive)):
        node = names[i]
        if i in symptom_ids or node not in graph or ents.harm_strength[i] >= config.z_min:
            continue
        for caller in sorted(set(graph.predecessors(node))):
            j = idx.get(caller)
            if (
                j is not None
                and j != i
                and ents.felt_strength[j] >= config.z_min
                and ents.felt_onset[j] < ents.onset[i]
                and ents.last_dev[j] >= ents.onset[i] - tolerance
            ):
                out[i] = j
                break
    return out


def explained_through_shifted(
    config: SearchConfig,
    alive: np.ndarray,
    batch: HypothesisBatch,
    ev: Evidence,
    graph: nx.MultiDiGraph,
    idx: dict[str, int],
    ents: EntityEvidence,
    accounts: _LatencyAccounts,
    shifted: dict[int, int],
    tolerance: float,
) -> dict[int, tuple[int, int]]:
    """Dependent -> (the dependency that shifted the load, the one it shifted it onto).

    What a shifted dependency would have explained, the dependency that shifted the load
    onto it explains: a cache that misses slows its callers through the database the misses
    fall back to (a caller that sends it the extra requests, or one whose latency its
    slowdown accounts for)."""
    names = batch.entities
    onset, last_dev = ents.onset, ents.last_dev
    sent_more = {
        (_owner(batch.series[r][0]), int(batch.entity[r]))
        for r in np.flatnonzero(
            (ev.strength >= config.z_min)
            & (ev.peak > 0)
            & np.array(["rate_per_s" in sig for _, sig in batch.series], dtype=bool).reshape(
                len(batch)
            )
        )
    }
    through: dict[int, tuple[int, int]] = {}
    for i in map(int, np.flatnonzero(alive)):
        node = names[i]
        if node not in graph:
            continue
        for dep in sorted(set(graph.successors(node))):
            j = idx.get(dep)
            if j is None or j not in shifted:
                continue
            k = shifted[j]
            if (
                k != i
                and alive[k]
                and onset[j]
                <= onset[i] + (0.0 if config.on("explain_needs_precedence") else tolerance)
                and last_dev[j] >= onset[i] - tolerance
                and ((node, j) in sent_more or accounts.for_(j, i))
            ):
                through[i] = (k, j)
                break
    return through


def explain_away(
    config: SearchConfig,
    alive: np.ndarray,
    batch: HypothesisBatch,
    ev: Evidence,
    graph: nx.MultiDiGraph,
    idx: dict[str, int],
    ents: EntityEvidence,
    accounts: _LatencyAccounts,
    tolerance: float,
    symptom_ids: list[int],
    callers_at_fault: frozenset[int] = frozenset(),
) -> list[tuple[int, int, str]]:
    """(candidate, the candidate accounting for it, why) for each candidate among ``alive``
    that another explains: by a dependency, by a harmed caller when only how much it is asked
    changed, as a sibling's view, by shifted load, and through the dependency a shifted load
    fell on. Each step considers the candidates no step before it accounted for. ``callers_at_fault``: candidates whose own side of their calls is at
    fault (``rules.caller_local``): their views of other dependencies deviate, which no one
    dependency of theirs accounts for, so none explains them."""
    names = batch.entities
    alive = alive.copy()
    out: list[tuple[int, int, str]] = []

    def accounted(i: int, by: int, reason: str) -> None:
        alive[i] = False
        out.append((i, by, reason))

    explained = explained_by_dependencies(
        config, alive, graph, idx, names, ents, accounts, tolerance
    )
    for i, deps in sorted(explained.items()):
        if i in callers_at_fault:
            continue
        for j in deps:
            accounted(
                i, j, f"explained by {names[j]}, which it depends on and which deviated no later"
            )
    # how much a dependency is asked is its callers' doing: one that deviates in nothing else,
    # from after a caller of it was harmed, is that caller's consequence
    if config.on("asked_by_harmed_caller"):
        callers = explained_by_callers(
            config, alive, graph, idx, names, ents, tolerance, set(symptom_ids)
        )
        for i, j in sorted(callers.items()):
            accounted(
                i,
                j,
                f"only how much it is asked changed, after {names[j]}, which calls it, was harmed",
            )
    # a leaf (a dependency that calls nothing known: a load balancer, an uninstrumented
    # endpoint) harmed together with an instrumented sibling, the same way and at the same
    # time, is its caller's view of that sibling (a load balancer in front of it)
    if config.on("leaf_is_sibling_view"):
        viewed = sibling_views(
            config,
            alive,
            graph,
            idx,
            names,
            ents.onset,
            ents.last_dev,
            ents.harm_strength,
            accounts,
            tolerance,
            set(symptom_ids),
        )
        for i, j in sorted(viewed.items()):
            accounted(
                i,
                j,
                f"explained by {names[j]}: called by the same caller, harmed the same"
                " way at the same time, and instrumented where it calls nothing: it is"
                f" the caller's view of {names[j]}",
            )
    # shifted load: a dependency whose extra requests come from callers whose own traffic
    # did not grow, while another dependency of theirs deviated no later (a cache that
    # misses, a call that fails over), is explained by that other dependency
    shifted = shifted_load(
        config,
        alive,
        batch,
        ev,
        graph,
        idx,
        ents.onset,
        ents.last_dev,
        ents.harm_strength,
        tolerance,
    )
    for i, j in sorted(shifted.items()):
        accounted(
            i,
            j,
            f"its extra load comes from callers whose own traffic did not grow, while"
            f" {names[j]}, which they also call, deviated no later",
        )
    through = explained_through_shifted(
        config, alive, batch, ev, graph, idx, ents, accounts, shifted, tolerance
    )
    for i, (k, j) in sorted(through.items()):
        accounted(
            i,
            k,
            f"explained by {names[k]} through {names[j]}, which it depends on and"
            f" whose extra load {names[k]} explains",
        )
    return out
