"""The model: each surviving candidate's odds of being the cause against "nothing is wrong".

For candidate c, on the log scale (a logit), against the "no cause" option's ``null_logit``:

    logit(c) = prior(c) + evidence(c) + propagation(c) + timing(c)

then held below what accounts for c's deviation (explaining away). What cannot have caused the
symptom at all is ruled out before (``rules``): no deviation in the window, a deviation that
began after the symptom's (beyond the onset tolerance) or was over before it began, and rows
that cannot reach the symptom's requests (an asynchronous dependency's latency, one caller's
view of its own side of the calls).

prior(c)
    Where the dependency graph places it: ``w_depth`` per hop from the symptom (a cause further
    up accounts for more of the path), ``w_off_graph`` when the graph places others on the
    symptom's past side but not c (the graph is a prior, it may be partial), and ``w_change``
    for a deploy, config change or flag on c's entity before its deviation began.
evidence(c)
    ``w_strength * log1p(s)``, s the strength of c's strongest series: its deviation in robust
    spreads of its own normal (the noise model is the baselines'), clipped at ``z_cap``, times
    the square root of its persistence. This is the surprise of the deviation under "nothing
    is wrong" when the scores' tails fall as a power, P(|z| > s) ~ (1 + s) ** -w_strength
    (telemetry spikes far more often than a Gaussian allows): ``w_strength`` is that tail
    index. Doubling a deviation adds about ``w_strength * log 2`` logits, where a Gaussian
    would quadruple its surprise. The strength is further scaled by what that kind of
    deviation says about c (``weights``): a change of inbound traffic, saturation while c's
    requests stay fast and successful, latency its callers saw while c served as fast (or c
    reports while its callers measured their calls to it as fast), or a rise too small to
    account for the alerted one count ``traffic_weight``; a harm that
    already held before the symptom began counts ``standing_weight``; one older than the
    window ``chronic_weight``; one over long ago ``stale_weight``; a series that often
    deviates less. Under the same tail, a factor f on a large strength is a likelihood ratio
    of f ** w_strength: such a deviation is that much more common when c is not the cause
    (0.25 makes it about 9 times, 0.1 about 40 times). Each cause publishes the term split:
    the surprise of its ranked series' own deviation, then what each factor takes from it
    (``result.discounted``, the ranked evidence's ``discounts``). Plus ``w_sources`` per
    independent view beyond the first (traces, logs, metrics, each further caller measuring
    c, and for a caller at fault on its side, each further dependency it is seen through).
propagation(c)
    ``w_explains * log1p(n)``, n the deviating entities between c and the symptom: a cause
    accounts for the anomalies on its propagation paths.
explaining away
    When d accounts for c's deviation (``explain``: a dependency of c whose harm, felt by its
    callers and large enough, began no later; a caller of c harmed before c's only change,
    how much it is asked, began; a sibling c is the caller's view of; load shifted onto c
    from d), "d is the cause" and "c is the cause" explain the same deviations but d's own:
    under "c is the cause" d's deviation is a coincidence, as unlikely as d's evidence says it
    is in normal time. So c's odds against d are at most those of d's evidence term:
    ``logit(c) <= logit(d) - w_strength * log1p(s_d)`` (``explained_away``), applied along
    chains from the candidates nothing accounts for. c stays ranked, below d.
timing(c)
    ``w_late`` per interval c's onset follows the symptom's (within the onset tolerance; later
    than that c is ruled out, ``rules``). For an alert with no onset to time against (an SLO,
    a probe), ``w_early`` per minute c's evidence held before the alert beyond
    ``early_grace_s`` and one interval (what an onset is known to within): alerts fire
    minutes into a harm, whatever the model's interval. And ``w_early`` per minute its
    evidence was measured back to normal before the alert, beyond the same grace: an alert
    fires while its harm holds, so a cause over before then had to leave a harm that outlasted
    it by that much. Both measure the deviation c is ranked by: the hypothesis is c, that
    signal, its onset, and the cause is published with that onset.

A softmax at ``temperature`` over the survivors' logits and ``null_logit`` gives the model's
probabilities (``model_probability`` for the top one); abstention is decided on them. The null
logit rises to the best candidate's when the alerted signal itself looks normal ("nothing is
wrong" stays at least as likely), and to within ``cold_start_odds`` to one of it on a cold
start.

``w_strength`` is a parameter of the noise model (its tail index). The other weights are set
by hand and checked on every dataset family (``worldline evaluate ablate`` turns each off in
turn); they are not yet likelihoods derived from a noise model.
"""

from __future__ import annotations

import math
from typing import Any

import networkx as nx
import numpy as np

from jobs.causal.search.config import OFF_GRAPH, SearchConfig
from jobs.causal.search.evidence import EntityEvidence

TERMS = (
    "surprise",
    "sources",
    "change",
    "depth",
    "propagation",
    "off_graph",
    "late",
    "early",
    "over",
)
"""The terms of a candidate's logit, in the order ``total`` adds them (explaining away comes after);
each cause publishes them (``result.build_cause``)."""


def terms(
    config: SearchConfig,
    survivors: np.ndarray,
    names: list[str],
    candidates: dict[str, int],
    ents: EntityEvidence,
    rank_strength: np.ndarray,
    change_for: dict[int, dict[str, Any]],
    explains: np.ndarray,
    symptom_onset: float | None,
    step_s: float,
    ranked_onset: np.ndarray | None = None,
    fired_s: float | None = None,
    ranked_calm: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Each term of the survivors' logits (``TERMS``, ``SearchConfig``'s weights applied);
    their sum is the logit. ``ranked_onset``: per survivor, the onset of the evidence it ranks
    with; ``ranked_calm``: when that evidence was measured back to normal (nan while it
    lasts); ``fired_s``: when the alert fired."""
    n = len(survivors)
    depth = np.array([max(candidates.get(names[i], 0), 0) for i in survivors], dtype=float)
    off_graph = np.array([candidates.get(names[i]) == OFF_GRAPH for i in survivors], dtype=float)
    out = {
        "surprise": config.w_strength * np.log1p(rank_strength[survivors]),
        "sources": config.w_sources * (ents.sources[survivors] - 1),
        "change": config.w_change * np.array([i in change_for for i in survivors], dtype=float),
        "depth": config.w_depth * depth,
        "off_graph": config.w_off_graph * off_graph,
        "propagation": config.w_explains * np.log1p(explains),
        "late": np.zeros(n),
        "early": np.zeros(n),
        "over": np.zeros(n),
    }
    if symptom_onset is not None and config.w_late:
        after = np.clip((ents.onset[survivors] - symptom_onset) / step_s, 0.0, None)
        out["late"] = config.w_late * np.where(np.isfinite(after), after, 0.0)
    if symptom_onset is None and ranked_onset is not None and fired_s is not None:
        out["early"] = before_alert(config, ranked_onset, fired_s, step_s)
        if ranked_calm is not None:
            out["over"] = before_alert(config, ranked_calm, fired_s, step_s)
    return out


def before_alert(
    config: SearchConfig, at_s: np.ndarray, fired_s: float, step_s: float
) -> np.ndarray:
    """``w_early`` per minute ``at_s`` came before an alert fired at ``fired_s`` beyond
    ``early_grace_s`` and the interval a time is known to within (0 where nan), for an
    alert whose symptom has no onset: the alert's time is all there is to time against. Of
    a deviation's onset, the ``early`` term; of the time it was seen over, the ``over``
    term."""
    held = (fired_s - at_s - config.early_grace_s - step_s) / 60.0
    return config.w_early * np.clip(np.where(np.isfinite(held), held, 0.0), 0.0, None)


def total(parts: dict[str, np.ndarray]) -> np.ndarray:
    """The logits the ``terms`` add up to."""
    out = parts[TERMS[0]].copy()
    for name in TERMS[1:]:
        out = out + parts[name]
    return out


def explained_away(
    config: SearchConfig,
    logits: np.ndarray,
    survivors: np.ndarray,
    rank_strength: np.ndarray,
    relation: nx.DiGraph,
) -> np.ndarray:
    """The logits with each candidate another accounts for (``relation``: an edge from the
    one accounting to the one accounted for, entity indices of ``survivors``) at most its
    explainer's logit less the explainer's evidence term. Chains apply from their first
    explainer; in a cycle (two that would each account for the other) each is held against
    the other's own logit. Only survivors account for others: one ruled out (its deviation
    began after the symptom's, or was over before it) has no odds to hold another below."""
    out = logits.copy()
    pos = {int(h): k for k, h in enumerate(survivors)}
    relation = relation.subgraph([n for n in relation if n in pos])
    if not relation:
        return out
    evidence = config.w_strength * np.log1p(rank_strength)
    cycles = nx.condensation(relation)
    member = cycles.graph["mapping"]
    for component in nx.topological_sort(cycles):
        for c in sorted(cycles.nodes[component]["members"]):
            for d in sorted(relation.predecessors(c)):
                held = logits if member[d] == component else out
                out[pos[c]] = min(out[pos[c]], held[pos[d]] - evidence[d])
    return out


def probabilities(
    config: SearchConfig, logits: np.ndarray, cold: bool, uncorroborated: bool
) -> np.ndarray:
    """Softmax over the logits and the "no cause" option (last)."""
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
    return np.exp(scaled) / np.exp(scaled).sum()
