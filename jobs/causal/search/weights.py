"""Down-weighting: evidence that stays, but counts less when ranking.

Inbound traffic alone says the callers changed; saturation (memory, CPU, pools) while the
entity's requests stay as fast and as successful harmed no one through it, and neither did a
latency its callers saw rise while the entity itself served as fast, nor a latency the entity
reports rising while its callers measured their calls to it as fast; a latency rise too
small to account for the alerted one says the candidate changed, not that it is why; a
standing condition held before the symptom began without it following; a series that often
deviates says little when it deviates now.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from jobs.causal.search.config import SearchConfig
from jobs.causal.search.evidence import (
    EntityEvidence,
    Evidence,
    HypothesisBatch,
    _harmful,
    _in_family,
    _LatencyAccounts,
    _own_mask,
    felt_signal,
)
from jobs.causal.search.signals import LATENCY_LIKE, TRAFFIC, _bare, _is_failure
from pipeline.worldmodel.baseline import SCORE_LIMIT


def too_small_for_symptom(
    config: SearchConfig,
    batch: HypothesisBatch,
    accounts: _LatencyAccounts,
    idx: dict[str, int],
    symptoms: list[tuple[str, str | None]],
) -> np.ndarray:
    """Latency rows of candidates whose rise is too small to account for an alerted
    latency: the alerted statistic rose by X at the symptom, the same statistic of the
    candidate by less than ``explain_fraction`` of X (see ``_LatencyAccounts``; a rise
    under the evidence threshold counts from ``small_rise_z`` spreads on). For an
    alerted failure that does not slow the symptom: the latency rows of candidates that
    do not fail."""
    out = np.zeros(len(batch), dtype=bool)
    others = batch.entity
    for entity, signal in symptoms:
        i = idx.get(entity)
        if i is None or signal is None:
            continue
        not_symptom = others != i
        if _is_failure(signal) and not accounts.slow[i]:
            # failing without slowing down: a dependency that is only slow cannot be why
            out |= not_symptom & ~accounts.fails[others] & accounts.latency
            continue
        stat = accounts.statistic(signal)
        if stat is None:
            continue
        own = [
            r for r in map(int, np.flatnonzero(others == i)) if batch.series[r] == (entity, signal)
        ]
        needed = max((x for r in own if (x := accounts.excess(r)) is not None), default=None)
        if needed is None or needed <= 0:
            continue
        rise: dict[int, float] = defaultdict(float)
        for r in map(int, np.flatnonzero(not_symptom)):
            if accounts.stats[r] == stat:
                k = int(others[r])
                # a score kept at its limit says "at least": the rise may be any larger
                saturated = accounts.ev.peak[r] >= SCORE_LIMIT
                rise[k] = max(rise[k], math.inf if saturated else accounts.excess(r, True) or 0.0)
        small = [k for k, x in rise.items() if x < config.explain_fraction * needed]
        out |= np.isin(others, small) & accounts.latency
    return out


def unfelt(
    config: SearchConfig,
    batch: HypothesisBatch,
    ev: Evidence,
    ents: EntityEvidence,
    outside: np.ndarray,
) -> np.ndarray:
    """Saturation rows (memory, CPU, pools: directed, but not latency or failures) of
    entities whose latency or failures are measured in the recent intervals and stay under
    ``z_min``, latency seen only from outside (``outside_view``) left aside: a resource that
    rose while the entity's requests stayed as fast and as successful harmed no one through
    it. Where its latency is not measured (a host, a metrics-only pod), saturation is all
    there is and counts in full."""
    if len(batch) == 0:
        return np.zeros(0, dtype=bool)
    ent = batch.entity
    felt_row = felt_signal(batch)
    recent = batch.z[:, -max(1, config.recent_intervals * batch.spacing) :]
    measured_row = felt_row & (~np.isnan(recent)).any(axis=1)
    measured = np.zeros(len(batch.entities), dtype=bool)
    measured[ent[measured_row]] = True
    inside = felt_row & ents.directed & ~outside
    felt = np.zeros(len(batch.entities))
    np.maximum.at(felt, ent[inside], ev.strength[inside])
    quiet = measured & (felt < config.z_min)
    return ents.directed & ~felt_row & quiet[ent]


CLIENT_SIDE = re.compile(r"(?:^|[._])client(?:[._]|$)")
SERVER_SIDE = re.compile(r"(?:^|[._])server(?:[._]|$)")
"""A latency measured on the client side of calls (``rpc.client.duration``, a mesh's
source-reported duration) or on the server side of the entity (``http.server.request.duration``,
the destination-reported one)."""


def outside_view(config: SearchConfig, batch: HypothesisBatch) -> np.ndarray:
    """Client-side latency rows of an entity (naming no peer: ``client_metric_peer`` already
    moved those that do) that rise only at intervals where the same entity's server-side
    latency is measured and under ``z_min``: the time was lost outside the entity's own
    handling (on the network, on the caller's side), so the rise says little about the entity
    itself. Without a server-side latency of the entity, the client side is all there is and
    counts in full."""
    out = np.zeros(len(batch), dtype=bool)
    # a qualified series ({peer=...}, {db.system=...}) is a view of something else: not these
    names = [signal if "{" not in signal else "" for _, signal in batch.series]
    latency = np.array([bool(LATENCY_LIKE.search(n)) for n in names], dtype=bool)
    client = latency & np.array([bool(CLIENT_SIDE.search(n)) for n in names], dtype=bool)
    server = latency & np.array([bool(SERVER_SIDE.search(n)) for n in names], dtype=bool)
    if not client.any() or not server.any():
        return out
    return _rises_only_where_calm(config, batch, client, server)


def unseen_by_callers(config: SearchConfig, batch: HypothesisBatch) -> np.ndarray:
    """An entity's own latency rows that rise only at intervals where its callers' views of
    their calls to it are measured and under ``z_min``: the callers did not wait longer, so
    the rise harmed no one through the entity's requests (it reached requests no caller
    measures, or it is the measurement's own). The mirror of ``outside_view``. Without a
    caller's view of it, its own latency is all there is and counts in full."""
    latency = np.array([bool(LATENCY_LIKE.search(s)) for _, s in batch.series], dtype=bool)
    latency = latency.reshape(len(batch))
    own = _own_mask(batch)
    views = latency & ~own
    if not views.any():
        return np.zeros(len(batch), dtype=bool)
    return _rises_only_where_calm(config, batch, latency & own, views)


def _rises_only_where_calm(
    config: SearchConfig, batch: HypothesisBatch, rows: np.ndarray, reference: np.ndarray
) -> np.ndarray:
    """Which of ``rows`` rise (by ``z_min``) only at intervals where the ``reference`` rows
    of the same entity are measured and none of them rises: what the reference measures did
    not move with them. A row whose entity has no reference row is not among them."""
    out = np.zeros(len(batch), dtype=bool)
    harmful = _harmful(batch)
    known = ~np.isnan(batch.z)
    ent = batch.entity
    for r in map(int, np.flatnonzero(rows)):
        rising = harmful[r] >= config.z_min
        same = reference & (ent == ent[r])
        if not rising.any() or not same.any():
            continue
        measured = known[same][:, rising].any(axis=0)
        moved = (harmful[same][:, rising] >= config.z_min).any(axis=0)
        out[r] = bool(measured.all() and not moved.any())
    return out


def standing(
    config: SearchConfig,
    symptoms: list[tuple[str, str | None]],
    batch: HypothesisBatch,
    ev: Evidence,
    idx: dict[str, int],
    began: float | None,
    tolerance: float,
) -> np.ndarray:
    """Rows harmed at least ``standing_ratio`` of their peak at an interval ending before
    the symptom began (less the tolerance) while every series of the alerted signal was
    measured and under ``z_min`` there: conditions the symptom did not follow."""
    out = np.zeros(len(batch), dtype=bool)
    if began is None or len(batch) == 0 or config.standing_weight >= 1.0:
        return out
    w = batch.z.shape[1]
    cols = np.arange(w)
    before = batch.t0_s + (cols + 1) * batch.interval_s <= began - tolerance
    if not before.any():
        return out
    mask = _own_mask(batch)
    own = sorted(
        {
            int(r)
            for entity, signal in symptoms
            if (i := idx.get(entity)) is not None
            for r in _in_family(batch, np.flatnonzero((batch.entity == i) & mask), signal)
        }
    )
    if not own:
        return out
    harmful = _harmful(batch)
    z_own = batch.z[own]
    quiet = before & ~np.isnan(z_own).any(axis=0) & (harmful[own].max(axis=0) < config.z_min)
    if not quiet.any():
        return out
    held = np.where(quiet[None, :], harmful, 0.0).max(axis=1)
    peak = np.minimum(np.abs(ev.peak), SCORE_LIMIT)
    return (
        (ev.strength >= config.z_min)
        & (held >= config.z_min)
        & (held >= config.standing_ratio * peak)
    )


DISCOUNTS: dict[str, str] = {
    "older": "it already deviated before the window, or its peak was over long before: an"
    " earlier condition",
    "too_small": "its latency rose too little to account for the alerted one",
    "traffic": "only how much it is asked changed (inbound traffic), which its callers decide",
    "harmed_no_one": "its saturation or latency did not reach its requests as its callers"
    " measured them",
    "standing": "it already held before the symptom began, and the symptom did not follow",
    "not_far": "the alert is answered for dependencies harmed far beyond their normal; this"
    " evidence is not among them",
    "often": "this series deviates often in normal time",
}
"""Why evidence counts less when ranking, in the order the factors apply (``Weighting``)."""


@dataclass(frozen=True)
class Weighting:
    """Each row's strength as it counts when ranking, and the factors that made it so: per
    reason of ``DISCOUNTS`` (``older`` aside, already in ``Evidence.strength``), one factor
    per row, 1 where the reason does not apply. ``weighted`` is the strength times them all."""

    weighted: np.ndarray
    factors: dict[str, np.ndarray]


def rank_weights(
    config: SearchConfig,
    symptoms: list[tuple[str, str | None]],
    batch: HypothesisBatch,
    ev: Evidence,
    ents: EntityEvidence,
    accounts: _LatencyAccounts,
    idx: dict[str, int],
    symptom_ids: list[int],
    symptom_onset: float | None,
    tolerance: float,
    uncorroborated: bool,
    far: np.ndarray,
    t_s: float,
    alert_s: float | None,
) -> Weighting:
    """Each row's strength as it counts when ranking, with the factors behind it."""
    ent = batch.entity
    n = len(batch)
    factors: dict[str, np.ndarray] = {}

    def discount(reason: str, rows: np.ndarray, factor: float | np.ndarray) -> None:
        factors[reason] = np.where(rows, factor, 1.0) * np.ones(n)

    # latency too small to account for the alerted one: evidence that the candidate
    # changed, weak evidence that it caused the symptom (it may still, another way)
    small = too_small_for_symptom(config, batch, accounts, idx, symptoms)
    # inbound traffic alone is weak evidence about anything but the symptom
    symptom_row = np.isin(ent, np.array(symptom_ids, dtype=np.int64))
    traffic = (
        np.array([bool(TRAFFIC.search(_bare(sig))) for _, sig in batch.series], dtype=bool).reshape(
            n
        )
        & ~ents.directed
    )
    # saturation that harmed no one (its entity's requests measured as fast and successful),
    # and latency its callers saw rise while the entity served as fast as ever, are weak
    # evidence in the same way: the entity changed, or the time was lost before reaching it
    outside = outside_view(config, batch)
    quiet = unfelt(config, batch, ev, ents, outside) | outside | unseen_by_callers(config, batch)
    # one factor for the three, named by the first that applies
    discount("too_small", small, config.traffic_weight)
    discount("traffic", ~small & traffic & ~symptom_row, config.traffic_weight)
    discount("harmed_no_one", ~small & ~traffic & quiet & ~symptom_row, config.traffic_weight)
    if symptom_onset is not None:
        held = standing(config, symptoms, batch, ev, idx, symptom_onset, tolerance)
    elif uncorroborated and ev.chronic is not None:
        # no onset of the alerted deviation to measure against: a harm older than the
        # window that already held at an interval ending before the alert fired (its time
        # is exact: no rounding to tolerate). One that began in the window, before the
        # alert, may be what the alert waited for (alerts fire minutes into a condition)
        fired = t_s if alert_s is None else alert_s
        held = standing(config, symptoms, batch, ev, idx, fired, 0.0) & ev.chronic
    else:
        held = np.zeros(n, dtype=bool)
    discount("standing", held & ~symptom_row, config.standing_weight)
    if uncorroborated:
        # the alert is answered because of the dependencies harmed far beyond their normal
        # (``far``): evidence that alone would not have answered it ranks behind theirs
        discount("not_far", ~far[ent], config.traffic_weight)
    if config.episode_rate_ref > 0 and batch.episode_rate is not None:
        # a series that often deviates is weaker evidence when it deviates now
        rarity = np.log(batch.episode_rate) / math.log(config.episode_rate_ref)
        discount("often", np.ones(n, dtype=bool), np.clip(rarity, 0.0, 1.0))
    weighted = ev.strength.copy()
    for factor in factors.values():
        weighted = weighted * factor
    return Weighting(weighted, factors)
