"""The search's answer: ranked causes with their evidence, what was ruled out and why, and
whether (and why) it abstained; ``build_cause`` builds a cause's record from its evidence rows."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np

from jobs.causal.search.config import SearchConfig
from jobs.causal.search.evidence import Evidence, HypothesisBatch
from jobs.causal.search.signals import fault_class
from jobs.causal.search.weights import DISCOUNTS
from pipeline.worldmodel.model import WorldModel


@dataclass
class Cause:
    entity: str
    signal: str
    fault_class: str
    onset_s: float | None
    probability: float
    logit: float
    evidence: list[dict[str, Any]]
    path: list[str]
    explanation: str


@dataclass
class RuledOut:
    entity: str
    reason: str
    signal: str | None = None


@dataclass
class SearchResult:
    causes: list[Cause]
    ruled_out: list[RuledOut]
    abstained: bool
    abstain_reason: str | None
    separating_evidence: list[str]
    symptom_onset_s: float | None
    stats: dict[str, float] = field(default_factory=dict)


def build_cause(
    model: WorldModel,
    config: SearchConfig,
    i: int,
    batch: HypothesisBatch,
    ev: Evidence,
    best_row: np.ndarray,
    onset: np.ndarray,
    probability: float,
    logit: float,
    change_for: dict[int, dict[str, Any]],
    graph: nx.MultiDiGraph,
    symptoms: list[str],
    names: list[str],
    accounted_for: str | None = None,
    accounts_for: list[str] | None = None,
    terms: dict[str, float] | None = None,
    factors: dict[str, np.ndarray] | None = None,
) -> Cause:
    """Candidate ``i`` as a cause: its strongest evidence rows as ranked (``best_row`` names
    the one it is ranked by), the change before its deviation, its path to the symptom, and
    why another candidate accounts for its deviation (``accounted_for``), when one does, and
    the candidates whose deviations it accounts for (``accounts_for``). ``terms``: what each
    term of the model (``model.TERMS``, then ``explained_away``) adds to its logit; the ranked
    evidence, the change and the terms of timing, topology and explaining away then carry
    their ``weight`` in logits. ``factors``: per reason, what each row's strength is
    multiplied by when ranking (``weights.Weighting``); the deviation term is then published
    as the surprise of the row's own deviation and what each reason takes from it."""
    row = int(best_row[i])
    discounts = discounted(config, ev, row, factors) if terms is not None else []
    if terms is not None and discounts:
        # the same logit, its deviation term split: the surprise of the deviation itself,
        # then what each reason it counts less for takes from it
        deviation = terms["surprise"] - sum(w for _, _, w in discounts)
        terms = (
            {"surprise": deviation}
            | {f"discount:{name}": w for name, _, w in discounts}
            | {k: v for k, v in terms.items() if k != "surprise"}
        )
    series_entity, signal = batch.series[row]
    rows = np.flatnonzero((batch.entity == i) & (ev.strength >= config.z_min))
    rows = rows[np.argsort(-ev.strength[rows], kind="stable")][:5]
    if row not in rows:
        # the series it is ranked by is always shown: rows counting less (traffic, standing
        # harm) may be stronger
        rows = np.append(rows[:4], row)
    evidence = []
    for r in rows:
        e, s = batch.series[r]
        baseline = model.baselines.get(e, s)
        expected = spread = None
        if baseline is not None and not math.isnan(ev.onset_s[r]):
            exp, spr, _ = baseline.expected(float(ev.onset_s[r]))
            expected, spread = exp, spr
        kind = "metric_deviation"
        if s.startswith(("span.latency", "edge.latency")):
            kind = "trace_latency"
        elif s.startswith(("span.error", "edge.error")):
            kind = "trace_errors"
        elif s.startswith("log."):
            kind = "log_template_rate"
        item: dict[str, Any] = {
            "type": kind,
            "summary": f"{s} of {e}: {ev.peak[r]:+.1f} sigma from its baseline"
            + (f" since {_iso(ev.onset_s[r])}" if not math.isnan(ev.onset_s[r]) else ""),
            "entity": _entity_json(e),
            "signal": s,
            "score": round(float(ev.peak[r]), 3),
            "onset": None if math.isnan(ev.onset_s[r]) else _iso(ev.onset_s[r]),
        }
        if expected is not None and spread is not None and math.isfinite(expected):
            item["baseline"] = round(float(expected), 6)
            item["spread"] = round(float(spread), 6)
            item["observed"] = round(float(expected + ev.peak[r] * spread), 6)
        if terms is not None and r == row:
            item["weight"] = round(terms["surprise"], 3)
            if discounts:
                item["discounts"] = [
                    {
                        "reason": name,
                        "summary": _discount_summary(batch, row, name, factor),
                        "factor": round(factor, 6),
                        "weight": round(weight, 3),
                    }
                    for name, factor, weight in discounts
                ]
        evidence.append(item)
    change = change_for.get(i)
    if change is not None:
        evidence.append(
            {
                "type": "change_event",
                "summary": f"{change['kind']} of {names[i]} at {_iso(int(change['time_unix_nano']) / 1e9)}, before its deviation",
                "change_id": change["change_id"],
            }
            | ({"weight": round(terms["change"], 3)} if terms is not None else {})
        )
    if terms is not None:
        evidence += model_terms(config, terms)
    path = _path(graph, names[i], symptoms)
    fclass = (
        change["kind"]
        if change is not None and change["kind"] in ("deploy", "config", "feature_flag")
        else fault_class(signal, float(ev.peak[row]))
    )
    # the hypothesis is (entity, signal, onset): the onset of the deviation it is ranked by,
    # not the entity's earliest in the window (an earlier incident's, over or still standing)
    at = float(ev.onset_s[row]) if row >= 0 and math.isfinite(ev.onset_s[row]) else onset[i]
    onset_s = None if not math.isfinite(at) else float(at)
    explanation = (
        f"{names[i]}: {signal} deviated {ev.peak[row]:+.1f} sigma"
        + (f" from {_iso(onset_s)}" if onset_s else "")
        + (f", after {change['kind']} {change['change_id']}" if change is not None else "")
        + (f"; it propagates to {path[-1]} via {len(path) - 1} hop(s)" if len(path) > 1 else "")
        + (f"; it accounts for the deviation of {', '.join(accounts_for)}" if accounts_for else "")
        + (
            f"; it is less likely the cause than what accounts for it: {accounted_for}"
            if accounted_for
            else ""
        )
        + (f"; the terms of its logit: {_breakdown(terms)}" if terms else "")
        + "."
    )
    return Cause(
        names[i],
        signal,
        fclass,
        onset_s,
        float(probability),
        float(logit),
        evidence,
        path,
        explanation,
    )


DISCOUNT_NAMES = {
    "older": "earlier condition",
    "too_small": "too small for the symptom",
    "traffic": "inbound traffic only",
    "harmed_no_one": "harmed no one",
    "standing": "standing before the symptom",
    "not_far": "not far beyond normal",
    "often": "deviates often",
}
"""How a cause's explanation names each reason its evidence counts less (``DISCOUNTS``)."""

TERM_NAMES = {
    "surprise": "deviation",
    "sources": "further views",
    "change": "change",
    "depth": "distance",
    "off_graph": "off the graph",
    "propagation": "propagation",
    "late": "began late",
    "early": "held before the alert",
    "over": "over before the alert",
    "explained_away": "explained away",
}


def _discount_summary(batch: HypothesisBatch, row: int, reason: str, factor: float) -> str:
    what = DISCOUNTS[reason]
    if reason == "often" and batch.episode_rate is not None:
        what += f" (episodes begin in {float(batch.episode_rate[row]):.2%} of its intervals)"
    return f"{what}: its strength counts {factor:.2g} times"


def discounted(
    config: SearchConfig, ev: Evidence, row: int, factors: dict[str, np.ndarray] | None
) -> list[tuple[str, float, float]]:
    """Why ``row`` counts less than its deviation when ranking: (reason of ``DISCOUNTS``,
    factor, logits it takes), in the order the factors apply. Each takes what the surprise
    term ``w_strength * log1p(s)`` loses when the strength s is multiplied by its factor, so
    the deviation term is the surprise of the row's own deviation plus them all."""
    peak = min(abs(float(ev.peak[row])), config.z_cap)
    strength = peak * math.sqrt(float(ev.persistence[row]))
    steps: list[tuple[str, float]] = []
    if strength > 0 and float(ev.strength[row]) < strength * (1 - 1e-9):
        steps.append(("older", float(ev.strength[row]) / strength))
    for name, per_row in (factors or {}).items():
        if float(per_row[row]) != 1.0:
            steps.append((name, float(per_row[row])))
    out = []
    s = strength
    for name, factor in steps:
        taken = config.w_strength * (math.log1p(s * factor) - math.log1p(s))
        out.append((name, factor, taken))
        s *= factor
    return out


def _breakdown(terms: dict[str, float]) -> str:
    """The non-zero terms and their total, as a cause's explanation reads them."""
    parts = [
        f"{TERM_NAMES.get(k) or DISCOUNT_NAMES[k.split(':', 1)[1]]} {v:+.2f}"
        for k, v in terms.items()
        if abs(v) >= 0.005
    ]
    return ", ".join(parts) + f" (total {sum(terms.values()):+.2f})"


def model_terms(config: SearchConfig, terms: dict[str, float]) -> list[dict[str, Any]]:
    """Evidence items for the model's terms of timing, topology and explaining away that
    move a cause's logit, each with its ``weight`` (logits)."""
    out: list[dict[str, Any]] = []

    def add(kind: str, term: str, summary: str) -> None:
        if abs(terms.get(term, 0.0)) >= 0.005:
            out.append({"type": kind, "summary": summary, "weight": round(terms[term], 3)})

    if config.w_depth:
        add("topology", "depth", f"{terms['depth'] / config.w_depth:.0f} hop(s) from the symptom")
    add(
        "topology",
        "off_graph",
        "the dependency graph places other candidates on the symptom's past side, not it",
    )
    if config.w_explains:
        n = math.expm1(terms["propagation"] / config.w_explains)
        entities = "entity" if round(n) == 1 else "entities"
        add("topology", "propagation", f"{n:.0f} deviating {entities} between it and the symptom")
    if config.w_late:
        add(
            "timing",
            "late",
            f"its deviation began {terms['late'] / config.w_late:.1f} interval(s) after the"
            " symptom's",
        )
    if config.w_early:
        add(
            "timing",
            "early",
            f"its evidence held {terms['early'] / config.w_early:.1f} min before the alert"
            " beyond the grace",
        )
        add(
            "timing",
            "over",
            f"its evidence was over {terms['over'] / config.w_early:.1f} min before the alert"
            " beyond the grace",
        )
    add("explaining_away", "explained_away", "less likely than what accounts for its deviation")
    return out


def _path(graph: nx.MultiDiGraph, cause: str, symptoms: list[str]) -> list[str]:
    best: list[str] = [cause]
    for symptom in symptoms:
        if symptom in graph and cause in graph:
            try:
                p = nx.shortest_path(graph, symptom, cause)
            except nx.NetworkXNoPath:
                continue
            if len(best) == 1 or len(p) < len(best):
                best = list(reversed(p))
    return best


def _entity_json(key: str) -> dict[str, str]:
    kind, _, name = key.partition(":")
    return {"kind": kind, "name": name}


def _iso(t_s: float | None) -> str:
    import datetime as dt

    if t_s is None or not math.isfinite(t_s):
        return ""
    return dt.datetime.fromtimestamp(t_s, tz=dt.UTC).isoformat().replace("+00:00", "Z")
