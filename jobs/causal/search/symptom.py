"""The symptom: when the alerted deviation began and ended, whether the alerted signal is known
but quiet, how much history it has, and what answers an alert whose own signal looks normal."""

from __future__ import annotations

import math
import time
from dataclasses import replace

import numpy as np

from jobs.causal.search.config import SearchConfig
from jobs.causal.search.evidence import (
    EntityEvidence,
    Evidence,
    HypothesisBatch,
    _in_family,
    _own_mask,
    _tolerance,
    evaluate,
)
from jobs.causal.search.result import SearchResult
from jobs.causal.search.signals import _is_failure
from pipeline.worldmodel.baseline import ONSET_RING_LENGTH
from pipeline.worldmodel.model import WorldModel


def symptom_onset(
    config: SearchConfig,
    symptoms: list[tuple[str, str | None]],
    batch: HypothesisBatch,
    ev: Evidence,
    idx: dict[str, int],
    t_s: float,
) -> tuple[float | None, bool, float | None]:
    """Onset of the alerted deviation, whether the alerted signal is known but quiet, and the
    start of the last interval the alerted deviation lasted.

    With a signal named and series of it known, only a recent deviation of that signal in
    its harmful direction counts: when there is none, the alert has nothing to explain."""
    onsets = []
    ends = []
    known = False
    recent = t_s - config.symptom_recency_s
    own = _own_mask(batch)
    for entity, signal in symptoms:
        i = idx.get(entity)
        if i is None:
            continue
        mine = np.flatnonzero((batch.entity == i) & own)
        rows = mine[ev.strength[mine] >= config.z_min]
        onset_of = ev.onset_s
        end_of = ev.end_s if ev.end_s is not None else ev.onset_s
        if signal is not None:
            of_signal = _in_family(batch, mine, signal)
            if len(of_signal):
                known = True
                # the alerted signal
                sub = HypothesisBatch(
                    entity=batch.entity[of_signal],
                    series=[batch.series[r] for r in of_signal],
                    modality=batch.modality[of_signal],
                    up_is_bad=batch.up_is_bad[of_signal],
                    z=batch.z[of_signal],
                    t0_s=batch.t0_s,
                    interval_s=batch.interval_s,
                    entities=batch.entities,
                    down_is_bad=None if batch.down_is_bad is None else batch.down_is_bad[of_signal],
                    spacing=batch.spacing,
                )
                sev = evaluate(sub, config)
                sends = sev.end_s if sev.end_s is not None else sev.onset_s
                keep = (sev.strength >= config.z_min) & (sends >= recent)
                # the alert fires now: a deviation still going on near its time is the
                # alerted one, an earlier run that ended (a spike) is not
                ongoing = sends >= t_s - 2 * max(config.onset_tolerance_s, batch.step_s)
                if (keep & ongoing).any():
                    keep &= ongoing
                onset_of = np.full(len(batch), np.nan)
                onset_of[of_signal] = sev.onset_s
                end_of = np.full(len(batch), np.nan)
                end_of[of_signal] = sends
                rows = of_signal[keep]
        if len(rows):
            onsets.append(float(np.nanmin(onset_of[rows])))
            ends.append(float(np.nanmax(end_of[rows])))
    quiet = known and not onsets
    return (min(onsets) if onsets else None), quiet, (max(ends) if ends else None)


def until_symptom_ends(
    config: SearchConfig,
    symptoms: list[tuple[str, str | None]],
    batch: HypothesisBatch,
    ev: Evidence,
    t_s: float,
) -> tuple[HypothesisBatch, Evidence]:
    """The window cut where the alerted deviation ended, when it is over.

    A cause must deviate while the symptom does; whether it still deviates after the
    symptom has recovered says nothing. Persistence (the share of deviating intervals
    since a run began) is measured up to the symptom's last deviating interval plus the
    onset tolerance, so a dependency that failed for as long as the symptom did is as
    persistent as the symptom, however long ago both recovered."""
    if len(batch) == 0 or not config.on("until_symptom_ends"):
        return batch, ev
    if all(signal is None for _, signal in symptoms):
        # the alerted signal is none of worldline's series (an SLO, a probe): the alert says
        # the symptom is going on at its time; an earlier run of the entity's own series that
        # is over belongs to an earlier incident and cuts nothing
        return batch, ev
    idx = {e: i for i, e in enumerate(batch.entities)}
    onset, _, end = symptom_onset(config, symptoms, batch, ev, idx, t_s)
    if end is None or onset is None:
        return batch, ev
    tolerance = _tolerance(config, batch)
    keep = int(math.floor((end + tolerance - batch.t0_s) / batch.interval_s)) + 1
    known = np.flatnonzero(~np.isnan(batch.z).all(axis=0))
    if len(known) == 0 or keep > int(known[-1]) or keep < 1:
        return batch, ev
    cut = replace(batch, z=batch.z[:, :keep])
    return cut, evaluate(cut, config)


def symptom_history(model: WorldModel, symptoms: list[tuple[str, str | None]]) -> int | None:
    """Intervals the alerted signal's series have learned (the most of them), or None
    when no alerted signal is named or known."""
    exact = [
        baseline.intervals_learned
        for e, s in symptoms
        if s is not None and (baseline := model.baselines.get(e, s)) is not None
    ]
    if exact:
        return max(exact)
    learned = [
        baseline.intervals_learned
        for e, s in symptoms
        if s is not None
        for entity, key_signal in model.baselines.keys()
        if entity == e
        and key_signal.startswith(s.split("_")[0])
        and (baseline := model.baselines.get(entity, key_signal)) is not None
    ]
    return max(learned) if learned else None


def model_history(model: WorldModel) -> int | None:
    """Intervals the model's series have learned (the median of them), None without any."""
    learned = [
        baseline.intervals_learned
        for key in model.baselines.keys()
        if (baseline := model.baselines.get(*key)) is not None
    ]
    return int(np.median(learned)) if learned else None


def intervals_past_held(model: WorldModel, t_s: float) -> int | None:
    """How many intervals the model has closed after ``t_s``'s when that is more than the
    ring of recent scores its series keep (``ONSET_RING_LENGTH``): the scores of the
    intervals up to ``t_s`` are gone. None while they are held (or nothing is closed)."""
    if model.closed_through <= 0:
        return None
    interval_ns = int(model.config.interval_s * 1e9)
    last_closed = model.closed_through // interval_ns - 1
    past = last_closed - math.floor(t_s / model.config.interval_s)
    return past if past >= ONSET_RING_LENGTH else None


def scores_gone(past: int) -> SearchResult:
    """The answer to a search at a time whose scores the model no longer holds: it abstains,
    saying why, rather than reading the missing scores as no deviation."""
    reason = (
        f"the world model has closed {past} intervals since the one searched and keeps the"
        f" scores of its last {ONSET_RING_LENGTH}: the data of the searched window is no longer"
        " held"
    )
    return SearchResult([], [], True, reason, [], None, {"intervals_past_held": float(past)})


def quiet_symptom(
    model: WorldModel,
    config: SearchConfig,
    symptoms: list[tuple[str, str | None]],
    batch: HypothesisBatch,
    n_ent: int,
    started: float,
    scored_ms: float,
) -> SearchResult:
    """The answer to an alert whose own signal deviates nowhere recently and that no
    dependency harmed far beyond its normal answers: it abstains, saying why."""
    names = ", ".join(f"{e} {s}" for e, s in symptoms)
    reason = (
        f"the alerted signal ({names}) deviates from its baseline nowhere in the last"
        f" {config.symptom_recency_s:.0f} s: there is no incident to explain"
    )
    history = symptom_history(model, symptoms)
    if history is not None and history < config.warmup_intervals:
        reason = (
            f"the alerted signal ({names}) has {history} interval(s) of history"
            f" (scores are trusted from {config.warmup_intervals}) and does not"
            " deviate in it: too little history to tell an incident from its normal"
        )
    stats = {
        "quiet_symptom": 1.0,
        "hypotheses": float(len(batch)),
        "candidates": float(n_ent),
        "eliminated": float(n_ent),
        "score_ms": round(scored_ms, 3),
        "search_ms": round((time.perf_counter() - started) * 1000, 3),
    }
    return SearchResult([], [], True, reason, [f"{e} {s}" for e, s in symptoms], None, stats)


def harmed_far(
    config: SearchConfig,
    symptoms: list[tuple[str, str | None]],
    batch: HypothesisBatch,
    ev: Evidence,
    ents: EntityEvidence,
    symptom_ids: list[int],
    t_s: float,
    alert_s: float | None,
    tolerance: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Entities harmed far beyond their normal, and those of them (symptoms aside) harmed so
    now and since the alert's time at the latest.

    The alert fired but its own signal looks normal to the baseline: it is answered only for
    a dependency that is harmed far beyond its normal right now (``uncorroborated_z``), or,
    for an alerted failure, one whose failures deviate (``z_min``) right now
    (``failures_corroborate``)."""
    n_ent = len(batch.entities)
    recent_end = t_s - 2 * max(config.onset_tolerance_s, batch.step_s)
    far = ents.harm_strength >= config.uncorroborated_z
    if config.on("failures_corroborate") and any(
        signal is not None and _is_failure(signal) for _, signal in symptoms
    ):
        failure_rows = ents.directed & np.array(
            [_is_failure(signal) for _, signal in batch.series], dtype=bool
        ).reshape(len(batch))
        fail_strength = np.zeros(n_ent)
        np.maximum.at(fail_strength, batch.entity[failure_rows], ev.strength[failure_rows])
        far |= fail_strength >= config.z_min
    # ... and whose harm began by the alert's time: what began after it did not fire it
    fired_by = (t_s if alert_s is None else alert_s) + tolerance
    strong_now = far & (ents.last_dev >= recent_end) & (ents.onset <= fired_by)
    strong_now[symptom_ids] = False
    return far, strong_now
