"""Ranking: the survivors' odds (``model``) become probabilities, and the search abstains when
nothing survives or the leaders cannot be told apart. The published top probability is
calibrated (``calibration``) from what the search saw.
"""

from __future__ import annotations

from typing import Any

import networkx as nx
import numpy as np

from jobs.causal import calibration
from jobs.causal.calibration import Calibration
from jobs.causal.search.config import SearchConfig
from jobs.causal.search.evidence import EntityEvidence, Evidence, HypothesisBatch
from jobs.causal.search.explain import explained_between
from jobs.causal.search.model import (
    TERMS,
    before_alert,
    explained_away,
    probabilities,
    terms,
    total,
)
from jobs.causal.search.result import Cause, build_cause
from jobs.causal.search.weights import Weighting
from pipeline.worldmodel.model import WorldModel


def best_rows(
    batch: HypothesisBatch, weighted: np.ndarray, timing: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per entity: its ranked strength (its strongest weighted row) and its cause row (the
    row of that strength; -1 for an entity without rows). Among rows equally strong (scores
    at the cap), the cause row is the one whose ``timing`` terms are the best."""
    n_ent = len(batch.entities)
    ent = batch.entity
    rank_strength = np.zeros(n_ent)
    np.maximum.at(rank_strength, ent, weighted)
    best_row = np.full(n_ent, -1)
    keys = (-weighted, ent) if timing is None else (-timing, -weighted, ent)
    order = np.lexsort(keys)
    first = np.ones(len(order), dtype=bool)
    first[1:] = ent[order][1:] != ent[order][:-1]
    best_row[ent[order][first]] = order[first]
    return rank_strength, best_row


def _at_rows(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``values`` of ``rows``, nan where a row is -1 (an entity without rows)."""
    return np.array([values[r] if r >= 0 else np.nan for r in rows], dtype=float)


def rank(
    model: WorldModel,
    config: SearchConfig,
    batch: HypothesisBatch,
    ev: Evidence,
    ents: EntityEvidence,
    weighting: Weighting,
    alive: np.ndarray,
    candidates: dict[str, int],
    graph: nx.MultiDiGraph,
    idx: dict[str, int],
    symptom_entities: list[str],
    symptom_ids: list[int],
    change_for: dict[int, dict[str, Any]],
    symptom_onset: float | None,
    cold: bool,
    uncorroborated: bool,
    t_s: float,
    alert_s: float | None,
    accounted: list[tuple[int, int, str]],
) -> tuple[list[Cause], dict[str, float]]:
    """The survivors as causes, most probable first, and the features of the top one that
    its calibrated probability is computed from (empty without causes). ``accounted``:
    (candidate, the candidate accounting for its deviation, why), from ``explain``."""
    names = batch.entities
    fired = alert_s if alert_s is not None else t_s
    timing = None
    if symptom_onset is None:
        timing = before_alert(config, ev.onset_s, fired, batch.step_s)
        if ev.calm_s is not None:
            timing = timing + before_alert(config, ev.calm_s, fired, batch.step_s)
    rank_strength, best_row = best_rows(batch, weighting.weighted, timing)
    survivors = np.flatnonzero(alive)
    explains = explained_between(
        config, survivors, graph, names, idx, symptom_ids, ents.best_strength, ents.onset
    )
    parts = terms(
        config,
        survivors,
        names,
        candidates,
        ents,
        rank_strength,
        change_for,
        explains,
        symptom_onset,
        batch.step_s,
        _at_rows(ev.onset_s, best_row[survivors]),
        alert_s if alert_s is not None else t_s,
        None if ev.calm_s is None else _at_rows(ev.calm_s, best_row[survivors]),
    )
    scores = total(parts)
    # who accounts for whom; through chains, a database slowing checkout, which slows the
    # frontend, accounts for both. Only survivors account for others (``explained_away``)
    accounted = [(i, by, why) for i, by, why in accounted if alive[by]]
    relation = nx.DiGraph([(by, i) for i, by, _ in accounted])
    bounded = explained_away(config, scores, survivors, rank_strength, relation)
    parts["explained_away"] = bounded - scores
    scores = bounded
    why: dict[int, str] = {}
    for i, _, reason in accounted:
        why.setdefault(i, reason)
    probs = probabilities(config, scores, cold, uncorroborated)
    order_s = np.argsort(-probs[:-1], kind="stable")
    causes = []
    for rank_i in map(int, order_s):
        i = int(survivors[rank_i])
        causes.append(
            build_cause(
                model,
                config,
                i,
                batch,
                ev,
                best_row,
                ents.onset,
                probs[rank_i],
                scores[rank_i],
                change_for,
                graph,
                symptom_entities,
                names,
                why.get(i),
                sorted(names[e] for e in nx.descendants(relation, i)) if i in relation else [],
                {name: float(parts[name][rank_i]) for name in (*TERMS, "explained_away")},
                weighting.factors,
            )
        )
    stats: dict[str, float] = {}
    if causes:
        top = int(survivors[int(order_s[0])])
        margin = (
            float(scores[order_s[0]] - scores[order_s[1]]) / config.temperature
            if len(order_s) > 1
            else None
        )
        alerted = alert_s if alert_s is not None else t_s
        onset = ents.onset
        lead = (alerted - onset[top]) / batch.step_s if np.isfinite(onset[top]) else None
        stats = calibration.features(
            causes[0].probability,
            margin,
            lead,
            bool(best_row[top] >= 0 and abs(ev.peak[best_row[top]]) >= config.z_cap),
            int(ents.sources[top]),
            symptom_onset is not None,
            cold,
        )
    return causes, stats


def abstention(config: SearchConfig, causes: list[Cause]) -> tuple[bool, str | None, list[str]]:
    """Whether to abstain (on the model's own probabilities), why, and what evidence would
    separate the leading hypotheses."""
    abstained, reason, separating = False, None, []
    if not causes:
        abstained, reason = (
            True,
            "no entity on the past side of the symptom deviates from its baseline before it",
        )
    elif causes[0].probability < config.abstain_below:
        abstained = True
        if len(causes) > 1 and causes[1].probability > 0.5 * causes[0].probability:
            reason = (
                f"the leading hypotheses cannot be told apart (model probabilities {causes[0].entity}"
                f" {causes[0].probability:.2f},"
                f" {causes[1].entity} {causes[1].probability:.2f})"
            )
            separating = [
                f"traces through {causes[0].entity} and {causes[1].entity} during the window",
                f"resource metrics of {causes[0].entity} and {causes[1].entity}",
            ]
        else:
            reason = (
                "the evidence is weak: the best hypothesis has model probability"
                f" {causes[0].probability:.2f}"
            )
            separating = [f"more history or telemetry from {causes[0].entity}"]
    return abstained, reason, separating


def calibrate(config: SearchConfig, causes: list[Cause], stats: dict[str, float]) -> None:
    """Publish the calibrated probability of the top cause (``calibration``) by setting
    how much of the probability is on "some cause" rather than "nothing is wrong": the
    causes keep their shares of it (ties stay ties), so the top one gets the calibrated
    probability, or all of that mass when its share is smaller. The softmax's own top
    probability stays in ``stats`` as ``model_probability``."""
    raw = causes[0].probability
    target = Calibration.from_sequence(config.calibration).probability(stats)
    stats["model_probability"] = round(raw, 6)
    total = sum(c.probability for c in causes)
    if total <= 0.0:
        return
    mass = min(1.0, target * total / raw) if raw > 0.0 else 0.0
    for cause in causes:
        cause.probability = cause.probability / total * mass
