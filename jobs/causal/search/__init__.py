"""The causal search: from symptoms to ranked, evidence-backed causes, over the world model.

1. Candidates: every entity on the past side of the symptom: upstream in the dependency graph
   as of the alert (k hops, virtual dependencies included) and the pods and hosts they run on.
   Without a graph (metrics only), every entity the baselines know is a candidate.
2. Hypotheses: (candidate, series) pairs. A series is evidence for the entity it describes: its
   own series, and the edge series its callers measured (``edge.*{peer=<entity>}``).
3. Evidence for all hypotheses at once (numpy, ``HypothesisBatch``): each series' robust z over
   the last intervals -> peak deviation in the harmful direction, onset (start of the run of
   deviating intervals that ends at the peak), persistence.
4. Elimination, not down-weighting: no deviation; deviation began after the symptom's; explained
   away by a dependency that deviated first. A change counts only through a deviation on its own
   entity after it; a change whose entity was ruled out is ruled out with it.
5. The survivors' scores become probabilities (softmax with a "no cause" option; temperature and
   weights come from ``SearchConfig``, calibrated on labelled scenarios), and the search
   abstains when nothing survives or the leaders cannot be told apart.

Pure and deterministic: the world model and the event time come in as arguments.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import replace
from typing import Any

import networkx as nx
import numpy as np

from jobs.causal import calibration
from jobs.causal.calibration import Calibration
from jobs.causal.search import candidates as _candidates
from jobs.causal.search.config import OFF_GRAPH, SearchConfig
from jobs.causal.search.evidence import (
    Evidence,
    HypothesisBatch,
    _harmful,
    _in_family,
    _LatencyAccounts,
    _own_mask,
    _tolerance,
    evaluate,
    symptom_spacing,
)
from jobs.causal.search.result import Cause, RuledOut, SearchResult, build_cause
from jobs.causal.search.signals import (
    LATENCY_LIKE,
    PEER,
    TRAFFIC,
    _bare,
    _family,
    _is_failure,
    _latency_unit,
    _owner,
    _peer_entity,
    client_metric_peer,
    fault_class,
)
from pipeline.worldmodel.baseline import SCORE_LIMIT
from pipeline.worldmodel.model import WorldModel

__all__ = [
    "CausalSearch",
    "Cause",
    "Evidence",
    "HypothesisBatch",
    "OFF_GRAPH",
    "PEER",
    "RuledOut",
    "SearchConfig",
    "SearchResult",
    "_LatencyAccounts",
    "_family",
    "_is_failure",
    "_latency_unit",
    "_peer_entity",
    "client_metric_peer",
    "evaluate",
    "fault_class",
    "symptom_spacing",
]


class CausalSearch:
    """Search one incident over a world model."""

    def __init__(self, model: WorldModel, config: SearchConfig | None = None) -> None:
        self.model = model
        self.config = config or SearchConfig()

    def candidates(self, symptoms: list[str], t_s: float) -> tuple[dict[str, int], nx.MultiDiGraph]:
        """Candidate entities -> hops from the nearest symptom, and the graph used."""
        return _candidates.candidates(self.model, self.config, symptoms, t_s)

    def hypotheses(
        self, candidates: dict[str, int], t_s: float, warmup_intervals: int | None = None
    ) -> HypothesisBatch:
        return _candidates.hypotheses(self.model, self.config, candidates, t_s, warmup_intervals)

    # ---------------------------------------------------------------------- search
    def run(
        self, symptoms: list[tuple[str, str | None]], t_s: float, alert_s: float | None = None
    ) -> SearchResult:
        """Search at event time ``t_s`` (the data through its interval) for an alert fired at
        ``alert_s`` (default ``t_s``; earlier when the answer is a follow-up)."""
        config = self.config
        # cold start: the alerted signal has less history than the warm-up; young scores are
        # all there is, so they count, with a ceiling on the confidence they can give
        history = self._symptom_history(symptoms)
        if history is None:
            # no alerted series to judge by (an SLO, a probe): the candidates' series say how
            # much the model has seen
            history = self._model_history()
        cold = config.cold_start and history is not None and history < config.warmup_intervals
        result = self._search(symptoms, t_s, alert_s, cold)
        recency = math.ceil(config.symptom_recency_s / self.model.config.interval_s)
        if (
            config.cold_start
            and not cold
            and history is not None
            and history < config.warmup_intervals + recency
            and result.stats.get("quiet_symptom")
        ):
            # just past its warm-up, the alerted signal looks normal in its trusted scores:
            # its deviation may have begun in the warm-up, so the young scores are read too
            # (as a cold start); the quiet answer stands when they show nothing either
            young = self._search(symptoms, t_s, alert_s, True)
            if not young.stats.get("quiet_symptom"):
                return young
        return result

    def _search(
        self,
        symptoms: list[tuple[str, str | None]],
        t_s: float,
        alert_s: float | None,
        cold: bool,
    ) -> SearchResult:
        started = time.perf_counter()
        config = self.config
        symptom_entities = [e for e, _ in symptoms]
        candidates, graph = self.candidates(symptom_entities, t_s)
        batch = self.hypotheses(candidates, t_s, 0 if cold else None)
        batch.spacing = symptom_spacing(self.model, symptoms)
        ev = evaluate(batch, config)
        batch, ev = self._until_symptom_ends(symptoms, batch, ev, t_s)
        batch, local = self._caller_local(batch, ev)
        scored_ms = (time.perf_counter() - started) * 1000
        decoupled = self._latency_decoupled(batch, ev, graph, symptom_entities, t_s)
        if decoupled.any():
            ev = replace(ev, strength=np.where(decoupled, 0.0, ev.strength))
        n_ent = len(batch.entities)
        ent = batch.entity
        tolerance = _tolerance(config, batch)
        names = batch.entities
        idx = {e: i for i, e in enumerate(names)}
        symptom_onset, symptom_known, weak_runs, _ = self._symptom_onset(
            symptoms, batch, ev, idx, t_s
        )
        if all(signal is None for _, signal in symptoms):
            # the alerted signal is none of worldline's series (an SLO, a probe): the alert
            # says the symptom exists at its time, not when it began. The entity's own earliest
            # deviation in the window may be an earlier incident's; it is no onset to measure
            # candidates against (they are still evidence about the entity itself)
            symptom_onset = None
        if symptom_onset is not None and ev.end_s is not None:
            # a deviation that was over before the symptom began is no evidence for it
            over_rows = ev.end_s < symptom_onset - tolerance
            ev = replace(ev, strength=np.where(over_rows, 0.0, ev.strength))
        # latency too small to account for the alerted one: evidence that the candidate
        # changed, weak evidence that it caused the symptom (it may still, another way)
        accounts = _LatencyAccounts(self.model, batch, ev, config)
        small = self._too_small_for_symptom(batch, accounts, idx, symptoms)
        # entity level: the strongest hypothesis, the earliest strong onset, the modalities
        best_strength = np.zeros(n_ent)
        np.maximum.at(best_strength, ent, ev.strength)
        strong = ev.strength >= np.maximum(config.z_min, 0.5 * best_strength[ent])
        onset = np.full(n_ent, np.inf)
        np.minimum.at(onset, ent[strong], np.nan_to_num(ev.onset_s[strong], nan=np.inf))
        modalities = np.zeros((n_ent, 3), dtype=bool)
        deviating = ev.strength >= config.z_min
        modalities[ent[deviating], batch.modality[deviating]] = True
        sources = modalities.sum(axis=1)
        # the last interval each entity was still deviating (strong rows), and whether it
        # deviates in a signal with a definite harmful direction (latency, errors, saturation,
        # availability...) rather than only in a two-sided one such as a request rate
        last_dev = np.full(n_ent, -np.inf)
        ends = ev.end_s if ev.end_s is not None else ev.onset_s
        np.maximum.at(last_dev, ent[strong], np.nan_to_num(ends[strong], nan=-np.inf))
        down = batch.down_is_bad if batch.down_is_bad is not None else np.zeros(len(batch), bool)
        directed = batch.up_is_bad | down
        harm_strength = np.zeros(n_ent)
        np.maximum.at(harm_strength, ent[directed], ev.strength[directed])
        # harm its callers feel: its latency or its failures (its own, or seen on calls to it).
        # Saturation alone (memory, CPU) reaches a dependent only through them
        felt = directed & np.array(
            [bool(LATENCY_LIKE.search(sig)) or _is_failure(sig) for _, sig in batch.series],
            dtype=bool,
        ).reshape(len(batch))
        felt_strength = np.zeros(n_ent)
        np.maximum.at(felt_strength, ent[felt], ev.strength[felt])
        felt_rows = felt & (ev.strength >= config.z_min)
        felt_onset = np.full(n_ent, np.inf)
        np.minimum.at(felt_onset, ent[felt_rows], np.nan_to_num(ev.onset_s[felt_rows], nan=np.inf))
        symptom_ids = [idx[e] for e in symptom_entities if e in idx]
        ruled: list[RuledOut] = [
            RuledOut(
                dep,
                f"only {caller} sees it deviate; its other callers see it healthy: the fault is"
                f" on {caller}'s side of the call",
            )
            for dep, caller in local
        ]
        uncorroborated = False
        weakly = False
        far = np.zeros(n_ent, dtype=bool)
        if symptom_known and symptom_onset is None and weak_runs:
            # the alerted signal moved, but little: it is the alerted deviation when a
            # dependency is clearly harmed over the same intervals
            others = np.ones(n_ent, dtype=bool)
            others[symptom_ids] = False
            failing = np.zeros(n_ent, dtype=bool)
            failure_rows = np.array(
                [_is_failure(signal) for _, signal in batch.series], dtype=bool
            ).reshape(len(batch))
            np.logical_or.at(failing, ent, failure_rows & (ev.strength >= config.z_min))
            for run_onset, run_end in sorted(weak_runs):
                together = (
                    others
                    & failing
                    & (onset <= run_end + tolerance)
                    & (last_dev >= run_onset - tolerance)
                )
                if together.any():
                    symptom_onset = run_onset
                    weakly = True
                    break
        if symptom_known and symptom_onset is None:
            # the alert fired but its own signal looks normal to the baseline: answer only
            # for a dependency that is harmed far beyond its normal right now, or, for an
            # alerted failure, one that clearly fails right now
            recent_end = t_s - 2 * max(config.onset_tolerance_s, batch.step_s)
            far = harm_strength >= config.uncorroborated_z
            if config.uncorroborated_failure_z > 0 and any(
                signal is not None and _is_failure(signal) for _, signal in symptoms
            ):
                failure_rows = directed & np.array(
                    [_is_failure(signal) for _, signal in batch.series], dtype=bool
                ).reshape(len(batch))
                fail_strength = np.zeros(n_ent)
                np.maximum.at(fail_strength, ent[failure_rows], ev.strength[failure_rows])
                far |= fail_strength >= config.uncorroborated_failure_z
            # ... and whose harm began by the alert's time: what began after it did not fire it
            fired_by = (t_s if alert_s is None else alert_s) + tolerance
            strong_now = far & (last_dev >= recent_end) & (onset <= fired_by)
            strong_now[symptom_ids] = False
            if not strong_now.any():
                return self._quiet_symptom(symptoms, batch, n_ent, started, scored_ms)
            uncorroborated = True
        alive = best_strength >= config.z_min
        # (a quiet alert answered for a strong dependency: the strong one says there is an
        # incident; every deviating candidate is ranked, as for any alert, those strong ones
        # first, and "nothing is wrong" stays at least as likely as the best)
        if (
            uncorroborated
            or weakly
            or config.failures_need_harm
            and any(signal is not None and _is_failure(signal) for _, signal in symptoms)
        ):
            # an alerted failure is explained only by a candidate that is itself harmed
            harmed = harm_strength >= config.z_min
            harmed[symptom_ids] = far[symptom_ids] if uncorroborated else True
            alive &= harmed
        for i in map(int, np.flatnonzero(~alive)):
            ruled.append(RuledOut(names[i], "no deviation from its baseline in the window"))
        if symptom_onset is not None:
            late = alive & (onset > symptom_onset + tolerance)
            for i in map(int, np.flatnonzero(late)):
                ruled.append(
                    RuledOut(
                        names[i],
                        f"its deviation began {onset[i] - symptom_onset:.0f} s after the symptom's",
                    )
                )
            alive &= ~late
            over = alive & (last_dev < symptom_onset - tolerance)
            for i in map(int, np.flatnonzero(over)):
                ruled.append(
                    RuledOut(
                        names[i],
                        f"its deviation was over {symptom_onset - last_dev[i]:.0f} s before the symptom's began",
                    )
                )
            alive &= ~over
        # explaining away: a dependency whose harmful deviation began no later, and was still
        # going on when the dependent's began, explains the dependent's deviation when the harm
        # its callers feel began within the tolerance before it: calls propagate a harm at
        # once, so a dependent that turned abnormal long after is abnormal for another reason
        explained_by: dict[int, int] = {}
        for i in map(int, np.flatnonzero(alive)):
            node = names[i]
            if node not in graph:
                continue
            for dep in sorted(set(graph.successors(node))):
                j = idx.get(dep)
                if j is None or j == i or felt_strength[j] < config.z_min:
                    continue
                if (
                    onset[j] <= onset[i] + (0.0 if config.explain_needs_precedence else tolerance)
                    and onset[i] - felt_onset[j] <= tolerance
                    and last_dev[j] >= onset[i] - tolerance
                    and not (node in graph.successors(dep) and onset[i] < onset[j])
                    and accounts.for_(j, i)
                ):
                    explained_by[i] = j
                    break
        for i, j in sorted(explained_by.items()):
            alive[i] = False
            ruled.append(
                RuledOut(
                    names[i],
                    f"explained by {names[j]}, which it depends on and which deviated no later",
                )
            )
        # a leaf (a dependency that calls nothing known: a load balancer, an uninstrumented
        # endpoint) harmed together with an instrumented sibling, the same way and at the same
        # time, is its caller's view of that sibling (a load balancer in front of it)
        if config.leaf_is_sibling_view:
            viewed = self._sibling_views(
                alive,
                graph,
                idx,
                names,
                onset,
                last_dev,
                harm_strength,
                accounts,
                tolerance,
                set(symptom_ids),
            )
            for i, j in sorted(viewed.items()):
                alive[i] = False
                ruled.append(
                    RuledOut(
                        names[i],
                        f"explained by {names[j]}: called by the same caller, harmed the same"
                        " way at the same time, and instrumented where it calls nothing: it is"
                        f" the caller's view of {names[j]}",
                    )
                )
        # shifted load: a dependency whose extra requests come from callers whose own traffic
        # did not grow, while another dependency of theirs deviated no later (a cache that
        # misses, a call that fails over), is explained by that other dependency
        shifted = self._shifted_load(
            alive, batch, ev, graph, idx, onset, last_dev, harm_strength, tolerance
        )
        for i, j in sorted(shifted.items()):
            alive[i] = False
            ruled.append(
                RuledOut(
                    names[i],
                    f"its extra load comes from callers whose own traffic did not grow, while"
                    f" {names[j]}, which they also call, deviated no later",
                )
            )
        # what a shifted dependency would have explained, the dependency that shifted the
        # load onto it explains: a cache that misses slows its callers through the database
        # the misses fall back to (a caller that sends it the extra requests, or one whose
        # latency its slowdown accounts for)
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
                    <= onset[i] + (0.0 if config.explain_needs_precedence else tolerance)
                    and last_dev[j] >= onset[i] - tolerance
                    and ((node, j) in sent_more or accounts.for_(j, i))
                ):
                    through[i] = (k, j)
                    break
        for i, (k, j) in sorted(through.items()):
            alive[i] = False
            ruled.append(
                RuledOut(
                    names[i],
                    f"explained by {names[k]} through {names[j]}, which it depends on and"
                    f" whose extra load {names[k]} explains",
                )
            )
        # changes: they count through a deviation of their own entity after them
        change_for: dict[int, dict[str, Any]] = {}
        for change in self.model.changes:
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
        # ranking strength: inbound traffic alone is weak evidence about anything but the symptom
        symptom_row = np.isin(ent, np.array(symptom_ids, dtype=np.int64))
        traffic = (
            np.array(
                [bool(TRAFFIC.search(_bare(sig))) for _, sig in batch.series], dtype=bool
            ).reshape(len(batch))
            & ~directed
        )
        weighted = ev.strength * np.where(
            (traffic & ~symptom_row) | small, config.traffic_weight, 1.0
        )
        if symptom_onset is not None:
            standing = self._standing(symptoms, batch, ev, idx, symptom_onset, tolerance)
        elif uncorroborated and ev.chronic is not None:
            # no onset of the alerted deviation to measure against: a harm older than the
            # window that already held at an interval ending before the alert fired (its time
            # is exact: no rounding to tolerate). One that began in the window, before the
            # alert, may be what the alert waited for (alerts fire minutes into a condition)
            fired = t_s if alert_s is None else alert_s
            standing = self._standing(symptoms, batch, ev, idx, fired, 0.0) & ev.chronic
        else:
            standing = np.zeros(len(batch), dtype=bool)
        standing &= ~symptom_row
        if standing.any():
            weighted = np.where(standing, weighted * config.standing_weight, weighted)
        if uncorroborated:
            # the alert is answered because of the dependencies harmed far beyond their normal
            # (``far``): evidence that alone would not have answered it ranks behind theirs
            weighted = np.where(far[ent], weighted, weighted * config.traffic_weight)
        if config.episode_rate_ref > 0 and batch.episode_rate is not None:
            # a series that often deviates is weaker evidence when it deviates now
            rarity = np.log(batch.episode_rate) / math.log(config.episode_rate_ref)
            weighted = weighted * np.clip(rarity, 0.0, 1.0)
        rank_strength = np.zeros(n_ent)
        np.maximum.at(rank_strength, ent, weighted)
        # each entity's cause row: its strongest evidence as ranked
        best_row = np.full(n_ent, -1)
        order = np.lexsort((-weighted, ent))
        first = np.ones(len(order), dtype=bool)
        first[1:] = ent[order][1:] != ent[order][:-1]
        best_row[ent[order][first]] = order[first]
        survivors = np.flatnonzero(alive)
        depth = np.array([max(candidates.get(names[i], 0), 0) for i in survivors], dtype=float)
        off_graph = np.array(
            [candidates.get(names[i]) == OFF_GRAPH for i in survivors], dtype=float
        )
        explains = self._explained_between(
            survivors, graph, names, idx, symptom_ids, best_strength, onset
        )
        logits = (
            config.w_strength * np.log1p(rank_strength[survivors])
            + config.w_sources * (sources[survivors] - 1)
            + config.w_change * np.array([i in change_for for i in survivors], dtype=float)
            + config.w_depth * depth
            + config.w_self * np.array([i in symptom_ids for i in survivors], dtype=float)
            + config.w_explains * np.log1p(explains)
            + config.w_off_graph * off_graph
        )
        if symptom_onset is not None and config.w_late:
            after = np.clip((onset[survivors] - symptom_onset) / batch.step_s, 0.0, None)
            logits = logits + config.w_late * np.where(np.isfinite(after), after, 0.0)
        null_logit = config.null_logit
        if cold and len(logits):
            # little history: the best cause is at most ``cold_start_odds`` to one against
            # "nothing is wrong"
            null_logit = max(
                null_logit,
                float(logits.max()) - config.temperature * math.log(config.cold_start_odds),
            )
        if uncorroborated and len(logits):
            # the alerted signal itself looks normal: "nothing is wrong" stays at least as
            # likely as the best cause
            null_logit = max(null_logit, float(logits.max()))
        scaled = np.concatenate([logits, [null_logit]]) / config.temperature
        scaled -= scaled.max()
        probs = np.exp(scaled) / np.exp(scaled).sum()
        order_s = np.argsort(-probs[:-1], kind="stable")
        causes = []
        for rank_i in map(int, order_s):
            i = int(survivors[rank_i])
            causes.append(
                build_cause(
                    self.model,
                    self.config,
                    i,
                    batch,
                    ev,
                    best_row,
                    onset,
                    probs[rank_i],
                    logits[rank_i],
                    change_for,
                    graph,
                    symptom_entities,
                    names,
                )
            )
        stats: dict[str, float] = {}
        if causes:
            top = int(survivors[int(order_s[0])])
            margin = (
                float(logits[order_s[0]] - logits[order_s[1]]) / config.temperature
                if len(order_s) > 1
                else None
            )
            alerted = alert_s if alert_s is not None else t_s
            lead = (alerted - onset[top]) / batch.step_s if np.isfinite(onset[top]) else None
            stats = calibration.features(
                causes[0].probability,
                margin,
                lead,
                bool(best_row[top] >= 0 and abs(ev.peak[best_row[top]]) >= config.z_cap),
                int(sources[top]),
                symptom_onset is not None,
                cold,
            )
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
        if causes:
            self._calibrate(causes, stats)
        stats |= {
            "cold_start": float(cold),
            "hypotheses": float(len(batch)),
            "candidates": float(n_ent),
            "eliminated": float(n_ent - len(survivors)),
            "score_ms": round(scored_ms, 3),
            "search_ms": round((time.perf_counter() - started) * 1000, 3),
        }
        return SearchResult(causes, ruled, abstained, reason, separating, symptom_onset, stats)

    def _calibrate(self, causes: list[Cause], stats: dict[str, float]) -> None:
        """Publish the calibrated probability of the top cause (``calibration``) by setting
        how much of the probability is on "some cause" rather than "nothing is wrong": the
        causes keep their shares of it (ties stay ties), so the top one gets the calibrated
        probability, or all of that mass when its share is smaller. The softmax's own top
        probability stays in ``stats`` as ``model_probability``."""
        raw = causes[0].probability
        target = Calibration.from_sequence(self.config.calibration).probability(stats)
        stats["model_probability"] = round(raw, 6)
        total = sum(c.probability for c in causes)
        if total <= 0.0:
            return
        mass = min(1.0, target * total / raw) if raw > 0.0 else 0.0
        for cause in causes:
            cause.probability = cause.probability / total * mass

    def _until_symptom_ends(
        self,
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
        if len(batch) == 0 or not self.config.until_symptom_ends:
            return batch, ev
        idx = {e: i for i, e in enumerate(batch.entities)}
        onset, _, weak, end = self._symptom_onset(symptoms, batch, ev, idx, t_s)
        if end is None or (onset is None and not weak):
            return batch, ev
        tolerance = _tolerance(self.config, batch)
        keep = int(math.floor((end + tolerance - batch.t0_s) / batch.interval_s)) + 1
        known = np.flatnonzero(~np.isnan(batch.z).all(axis=0))
        if len(known) == 0 or keep > int(known[-1]) or keep < 1:
            return batch, ev
        cut = replace(batch, z=batch.z[:, :keep])
        return cut, evaluate(cut, self.config)

    def _symptom_onset(
        self,
        symptoms: list[tuple[str, str | None]],
        batch: HypothesisBatch,
        ev: Evidence,
        idx: dict[str, int],
        t_s: float,
    ) -> tuple[float | None, bool, list[tuple[float, float]], float | None]:
        """Onset of the alerted deviation, whether the alerted signal is known but quiet, the
        recent weak runs of the alerted signal (onset, end) for corroboration, and the start
        of the last interval the alerted deviation lasted.

        With a signal named and series of it known, only a recent deviation of that signal in
        its harmful direction counts: when there is none, the alert has nothing to explain."""
        config = self.config
        onsets = []
        ends = []
        weak: list[tuple[float, float]] = []
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
                    # the alerted signal, at the (lower) corroboration threshold
                    sub = HypothesisBatch(
                        entity=batch.entity[of_signal],
                        series=[batch.series[r] for r in of_signal],
                        modality=batch.modality[of_signal],
                        up_is_bad=batch.up_is_bad[of_signal],
                        z=batch.z[of_signal],
                        t0_s=batch.t0_s,
                        interval_s=batch.interval_s,
                        entities=batch.entities,
                        down_is_bad=None
                        if batch.down_is_bad is None
                        else batch.down_is_bad[of_signal],
                        spacing=batch.spacing,
                    )
                    sev = evaluate(sub, replace(config, z_min=config.symptom_z_min))
                    sends = sev.end_s if sev.end_s is not None else sev.onset_s
                    keep = (sev.strength >= config.symptom_z_min) & (sends >= recent)
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
                    if not keep.any() and config.symptom_weak_z > 0 and _is_failure(signal):
                        wev = evaluate(sub, replace(config, z_min=config.symptom_weak_z))
                        wends = wev.end_s if wev.end_s is not None else wev.onset_s
                        # a one-interval dip counts: its peak, not its persistence
                        recent_weak = (
                            ~np.isnan(wev.onset_s)
                            & (np.abs(wev.peak) >= config.symptom_weak_z)
                            & (wends >= recent)
                        )
                        weak += [
                            (float(wev.onset_s[r]), float(wends[r]))
                            for r in np.flatnonzero(recent_weak)
                        ]
            if len(rows):
                onsets.append(float(np.nanmin(onset_of[rows])))
                ends.append(float(np.nanmax(end_of[rows])))
        quiet = known and not onsets
        end = max(ends) if ends else (max(e for _, e in weak) if quiet and weak else None)
        return (min(onsets) if onsets else None), quiet, weak if quiet else [], end

    def _sibling_views(
        self,
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
        z_min = self.config.z_min
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

    def _shifted_load(
        self,
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
        config = self.config
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
        if config.shift_spares_failing:
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

    def _caller_local(
        self, batch: HypothesisBatch, ev: Evidence
    ) -> tuple[HypothesisBatch, list[tuple[str, str]]]:
        """A dependency that deviates only as one caller measures it, while its other callers
        measure it healthy and it shows nothing of its own, is not at fault: the fault is on
        that caller's side of the call (its pool, its query, its retries). Its rows from that
        caller become evidence about the caller. Returns the batch and (dependency, caller)."""
        config = self.config
        names = batch.entities
        idx = {e: i for i, e in enumerate(names)}
        owners = [_owner(e) for e, _ in batch.series]
        known = ~np.isnan(batch.z)
        down = batch.down_is_bad if batch.down_is_bad is not None else np.zeros(len(batch), bool)
        directed = batch.up_is_bad | down  # latency, errors, saturation: not traffic
        by_entity: dict[int, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        for r, (owner, k) in enumerate(zip(owners, batch.entity, strict=True)):
            by_entity[int(k)][owner].append(r)
        entity = batch.entity.copy()
        local: list[tuple[str, str]] = []
        for k in sorted(by_entity):
            groups = by_entity[k]
            name = names[k]
            own_rows = groups.get(name, [])
            if any(ev.strength[r] >= config.z_min for r in own_rows):
                continue
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
            if len(callers) < 2 or len(deviating) != 1 or deviating[0] not in idx:
                continue
            if any(harm >= config.quiet_z for c, harm in seen.items() if c != deviating[0]):
                continue
            entity[callers[deviating[0]]] = idx[deviating[0]]
            local.append((name, deviating[0]))
        if not local:
            return batch, local
        return replace(batch, entity=entity), local

    def _too_small_for_symptom(
        self,
        batch: HypothesisBatch,
        accounts: _LatencyAccounts,
        idx: dict[str, int],
        symptoms: list[tuple[str, str | None]],
    ) -> np.ndarray:
        """Latency rows of candidates whose rise is too small to account for an alerted
        latency: the alerted statistic rose by X at the symptom, the same statistic of the
        candidate by less than ``explain_fraction`` of X (see ``_LatencyAccounts``; a rise
        under the evidence threshold counts from ``symptom_weak_z`` spreads on). For an
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
                r
                for r in map(int, np.flatnonzero(others == i))
                if batch.series[r] == (entity, signal)
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
                    rise[k] = max(
                        rise[k], math.inf if saturated else accounts.excess(r, True) or 0.0
                    )
            small = [k for k, x in rise.items() if x < self.config.explain_fraction * needed]
            out |= np.isin(others, small) & accounts.latency
        return out

    def _latency_decoupled(
        self,
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
        config = self.config
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
            baseline = self.model.baselines.get(entity, signal)
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
            if (
                name in graph
                and name not in reached
                and name not in handed_to
                and _is_failure(signal)
            ):
                out[r] = True
        return out

    def _model_history(self) -> int | None:
        """Intervals the model's series have learned (the median of them), None without any."""
        learned = [
            baseline.intervals_learned
            for key in self.model.baselines.keys()
            if (baseline := self.model.baselines.get(*key)) is not None
        ]
        return int(np.median(learned)) if learned else None

    def _symptom_history(self, symptoms: list[tuple[str, str | None]]) -> int | None:
        """Intervals the alerted signal's series have learned (the most of them), or None
        when no alerted signal is named or known."""
        exact = [
            baseline.intervals_learned
            for e, s in symptoms
            if s is not None and (baseline := self.model.baselines.get(e, s)) is not None
        ]
        if exact:
            return max(exact)
        learned = [
            baseline.intervals_learned
            for e, s in symptoms
            if s is not None
            for entity, key_signal in self.model.baselines.keys()
            if entity == e
            and key_signal.startswith(s.split("_")[0])
            and (baseline := self.model.baselines.get(entity, key_signal)) is not None
        ]
        return max(learned) if learned else None

    def _standing(
        self,
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
        config = self.config
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

    def _quiet_symptom(
        self,
        symptoms: list[tuple[str, str | None]],
        batch: HypothesisBatch,
        n_ent: int,
        started: float,
        scored_ms: float,
    ) -> SearchResult:
        names = ", ".join(f"{e} {s}" for e, s in symptoms)
        reason = (
            f"the alerted signal ({names}) deviates from its baseline nowhere in the last"
            f" {self.config.symptom_recency_s:.0f} s: there is no incident to explain"
        )
        history = self._symptom_history(symptoms)
        if history is not None and history < self.config.warmup_intervals:
            reason = (
                f"the alerted signal ({names}) has {history} interval(s) of history"
                f" (scores are trusted from {self.config.warmup_intervals}) and does not"
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

    def _explained_between(
        self,
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
        precedence = self.config.explain_needs_precedence
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
                and best_strength[j] >= self.config.z_min
                and not (precedence and onset[j] < onset[i])
            )
        return out
