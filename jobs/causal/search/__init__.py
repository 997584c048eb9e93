"""The causal search: from symptoms to ranked, evidence-backed causes, over the world model.

1. Candidates (``candidates``): every entity on the past side of the symptom: upstream in the
   dependency graph as of the alert (k hops, virtual dependencies included) and the pods and
   hosts they run on. Without a graph (metrics only), every entity the baselines know is a
   candidate.
2. Hypotheses (``candidates``): (candidate, series) pairs. A series is evidence for the entity it
   describes: its own series, and the edge series its callers measured
   (``edge.*{peer=<entity>}``); what a signal's name says is in ``signals``.
3. Evidence for all hypotheses at once (``evidence``, numpy, ``HypothesisBatch``): each series'
   robust z over the last intervals -> peak deviation in the harmful direction, onset (start of
   the run of deviating intervals that ends at the peak), persistence. The alerted deviation's
   onset and end are in ``symptom``.
4. Elimination (``rules``): no deviation; deviation began after the symptom's or was over
   before it. A change counts only through a deviation on its own entity after it; a change
   whose entity was ruled out is ruled out with it. The rules that say more than the timing
   (a failure needs a failing cause, a leaf harmed with its sibling is that sibling's view,
   ...) are named in ``config.RULES``, each with what it says. Evidence that stays but says
   less counts less when ranking (``weights``). Which candidate's deviation another accounts for
   (``explain``: a dependency that deviated first, a sibling seen through a balancer, shifted
   load) is the model's to weigh.
5. Each survivor's odds against "nothing is wrong" (``model``: a prior from the graph and
   changes, its evidence, what it accounts for, its timing, and explaining away: a candidate
   another accounts for is ranked below it) become probabilities (``ranking``:
   softmax with a "no cause" option; temperature and weights come from ``SearchConfig``), and
   the search abstains when nothing survives or the leaders cannot be told apart. The answer's
   shape is in ``result``.

Pure and deterministic: the world model and the event time come in as arguments.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

import networkx as nx
import numpy as np

from jobs.causal.search import candidates as _candidates
from jobs.causal.search.config import OFF_GRAPH, SearchConfig
from jobs.causal.search.evidence import (
    EntityEvidence,
    Evidence,
    HypothesisBatch,
    _LatencyAccounts,
    _tolerance,
    entity_evidence,
    evaluate,
    symptom_spacing,
)
from jobs.causal.search.explain import explain_away
from jobs.causal.search.ranking import abstention, calibrate, rank
from jobs.causal.search.result import Cause, RuledOut, SearchResult
from jobs.causal.search.rules import (
    caller_local,
    caller_local_ruled_out,
    changes_before,
    deviating,
    latency_decoupled,
    mistimed,
    over_before_symptom,
)
from jobs.causal.search.signals import (
    PEER,
    _family,
    _is_failure,
    _latency_unit,
    _peer_entity,
    client_metric_peer,
    fault_class,
)
from jobs.causal.search.symptom import (
    harmed_far,
    intervals_past_held,
    model_history,
    quiet_symptom,
    scores_gone,
    symptom_history,
    symptom_onset,
    until_symptom_ends,
)
from jobs.causal.search.weights import rank_weights
from pipeline.worldmodel.model import WorldModel

__all__ = [
    "OFF_GRAPH",
    "PEER",
    "Cause",
    "CausalSearch",
    "EntityEvidence",
    "Evidence",
    "HypothesisBatch",
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
        self,
        candidates: dict[str, int],
        t_s: float,
        warmup_intervals: int | None = None,
        graph: nx.MultiDiGraph | None = None,
    ) -> HypothesisBatch:
        return _candidates.hypotheses(
            self.model, self.config, candidates, t_s, warmup_intervals, graph
        )

    def run(
        self, symptoms: list[tuple[str, str | None]], t_s: float, alert_s: float | None = None
    ) -> SearchResult:
        """Search at event time ``t_s`` (the data through its interval) for an alert fired at
        ``alert_s`` (default ``t_s``; earlier when the answer is a follow-up)."""
        config = self.config
        past = intervals_past_held(self.model, t_s)
        if past is not None:
            # a search long after its time (a follow-up once data resumed after a gap): the
            # scores it would read are gone, which is not the same as normal
            return scores_gone(past)
        # cold start: the alerted signal has less history than the warm-up; young scores are
        # all there is, so they count, with a ceiling on the confidence they can give
        history = symptom_history(self.model, symptoms)
        if history is None:
            # no alerted series to judge by (an SLO, a probe): the candidates' series say how
            # much the model has seen
            history = model_history(self.model)
        cold = config.on("cold_start") and history is not None and history < config.warmup_intervals
        result = self._search(symptoms, t_s, alert_s, cold)
        recency = math.ceil(config.symptom_recency_s / self.model.config.interval_s)
        if (
            config.on("cold_start")
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
        """One search: the candidates' evidence and the alerted deviation's onset, the rules
        ruling candidates out (no deviation, timing, explaining away) in that order, changes,
        the weights each row ranks with, then ranking, abstention and calibration. ``cold``:
        young scores count, and the confidence they can give is capped."""
        started = time.perf_counter()
        model, config = self.model, self.config
        symptom_entities = [e for e, _ in symptoms]
        candidates, graph = self.candidates(symptom_entities, t_s)
        batch = self.hypotheses(candidates, t_s, 0 if cold else None, graph)
        batch.spacing = symptom_spacing(model, symptoms)
        ev = evaluate(batch, config)
        batch, ev = until_symptom_ends(config, symptoms, batch, ev, t_s)
        batch, local = caller_local(config, batch, ev, _LatencyAccounts(model, batch, ev, config))
        scored_ms = (time.perf_counter() - started) * 1000
        decoupled = latency_decoupled(model, config, batch, ev, graph, symptom_entities, t_s)
        if decoupled.any():
            ev = replace(ev, strength=np.where(decoupled, 0.0, ev.strength))
        n_ent = len(batch.entities)
        tolerance = _tolerance(config, batch)
        names = batch.entities
        idx = {e: i for i, e in enumerate(names)}
        onset_s, symptom_known, _ = symptom_onset(config, symptoms, batch, ev, idx, t_s)
        if all(signal is None for _, signal in symptoms):
            # the alerted signal is none of worldline's series (an SLO, a probe): the alert
            # says the symptom exists at its time, not when it began. The entity's own earliest
            # deviation in the window may be an earlier incident's; it is no onset to measure
            # candidates against (they are still evidence about the entity itself)
            onset_s = None
        if onset_s is not None:
            ev = over_before_symptom(ev, onset_s, tolerance)
        accounts = _LatencyAccounts(model, batch, ev, config)
        ents = entity_evidence(batch, ev, config)
        symptom_ids = [idx[e] for e in symptom_entities if e in idx]
        ruled: list[RuledOut] = caller_local_ruled_out(local)
        uncorroborated = False
        far = np.zeros(n_ent, dtype=bool)
        if symptom_known and onset_s is None:
            # the alert fired but its own signal looks normal to the baseline: answer only
            # for a dependency that is harmed far beyond its normal right now
            far, strong_now = harmed_far(
                config, symptoms, batch, ev, ents, symptom_ids, t_s, alert_s, tolerance
            )
            if not strong_now.any():
                return quiet_symptom(model, config, symptoms, batch, n_ent, started, scored_ms)
            uncorroborated = True
        # (a quiet alert answered for a strong dependency: the strong one says there is an
        # incident; every deviating candidate is ranked, as for any alert, those strong ones
        # first, and "nothing is wrong" stays at least as likely as the best)
        alive = deviating(config, symptoms, ents, symptom_ids, far, uncorroborated)
        for i in map(int, np.flatnonzero(~alive)):
            ruled.append(RuledOut(names[i], "no deviation from its baseline in the window"))
        eliminated = mistimed(alive, ents, names, onset_s, tolerance) if onset_s is not None else []
        for i, why in eliminated:
            alive[i] = False
            ruled.append(RuledOut(names[i], why))
        # what accounts for what: a candidate another accounts for stays, ranked below it
        # a caller whose own side of its calls is at fault (``caller_local``) deviates in
        # ways no one dependency of it accounts for
        callers_at_fault = frozenset(idx[caller] for _, caller, _ in local)
        accounted = explain_away(
            config,
            alive,
            batch,
            ev,
            graph,
            idx,
            ents,
            accounts,
            tolerance,
            symptom_ids,
            callers_at_fault,
        )
        change_for, changes_ruled = changes_before(
            model, config, alive, idx, ents.onset, onset_s, t_s
        )
        ruled += changes_ruled
        weighting = rank_weights(
            config,
            symptoms,
            batch,
            ev,
            ents,
            accounts,
            idx,
            symptom_ids,
            onset_s,
            tolerance,
            uncorroborated,
            far,
            t_s,
            alert_s,
        )
        causes, stats = rank(
            model,
            config,
            batch,
            ev,
            ents,
            weighting,
            alive,
            candidates,
            graph,
            idx,
            symptom_entities,
            symptom_ids,
            change_for,
            onset_s,
            cold,
            uncorroborated,
            t_s,
            alert_s,
            accounted,
        )
        abstained, reason, separating = abstention(config, causes)
        if causes and abstained:
            # the calibration is fitted on answers; an abstention publishes the model's own
            # probabilities, those it abstained on
            stats["model_probability"] = round(causes[0].probability, 6)
        elif causes:
            calibrate(config, causes, stats)
        stats |= {
            "cold_start": float(cold),
            "hypotheses": float(len(batch)),
            "candidates": float(n_ent),
            "eliminated": float(n_ent - int(alive.sum())),
            "accounted_for": float(len({i for i, _, _ in accounted})),
            "score_ms": round(scored_ms, 3),
            "search_ms": round((time.perf_counter() - started) * 1000, 3),
        }
        return SearchResult(causes, ruled, abstained, reason, separating, onset_s, stats)
