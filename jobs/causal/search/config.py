"""The causal search's parameters (``SearchConfig``) and the constants its rules share."""

from __future__ import annotations

from dataclasses import dataclass

from jobs.causal.calibration import FEATURES

OFF_GRAPH = -2
"""Hops of a candidate the graph does not place upstream of the symptom (it has a graph)."""


RULES: dict[str, str] = {
    "explain_needs_precedence": "a dependency explains a dependent only when its deviation"
    " began no later (without the onset tolerance): one that began an interval after the"
    " dependent is its consequence. For a dependency, its deviation began with its strongest"
    " evidence or with the first harm its callers felt from it, whichever came first",
    "asked_by_harmed_caller": "a dependency whose only deviation is how much it is asked (no"
    " latency, errors or saturation of its own), from an interval after a caller of it was"
    " harmed in a way that caller's callers feel, is explained by that caller: callers decide"
    " how much they call",
    "shift_spares_failing": "load shifted from another dependency explains a candidate only"
    " when the candidate does not fail: a failing one's extra requests are its callers"
    " retrying what failed",
    "failures_need_failures": "a failing dependent (errors, availability) is explained only by"
    " a failing dependency",
    "failures_need_harm": "an alerted failure is explained only by a candidate harmed in a"
    " signal with a harmful direction (errors, availability, latency, saturation,"
    " restarts...): one whose only change is how much it is called did not make its callers"
    " fail (the callers changed)",
    "failures_corroborate": "an alerted failure whose own signal looks normal is also"
    " answered for a dependency whose failures deviate (by ``z_min``) now: failures are"
    " rare, and the alert names them",
    "leaf_is_sibling_view": "a leaf dependency (it calls nothing known) harmed together with"
    " an instrumented sibling (same caller, same harm, onsets within the tolerance: the same"
    " requests seen from both sides of a balancer, neither precedes the other) is the"
    " caller's view of that sibling, e.g. the load balancer in front of it, and is explained"
    " by it",
    "cold_start": "with less history than the warm-up for the alerted signal (a new"
    " deployment, a service just added), young scores count (their spreads are already"
    " widened for youth), and the confidence they give is capped (``cold_start_odds``)",
    "until_symptom_ends": "persistence is measured up to the alerted deviation's end (plus the"
    " onset tolerance) when the symptom has recovered: a cause must deviate while the"
    " symptom does",
}
"""The search's rules that can be turned off (``SearchConfig.off``), each with what it says."""


@dataclass(frozen=True)
class SearchConfig:
    hops: int = 6
    window_intervals: int = 30
    # a deviation smaller than this is no evidence, the alerted signal's own included; a
    # caller whose directed evidence (latency, errors) about a dependency stays under it
    # measures the dependency healthy
    z_min: float = 3.0
    z_cap: float = 30.0
    # a cause may start this much after the symptom (interval rounding), and at least one
    # interval: an onset is known to within its interval, so at coarse granularity (5-minute
    # metrics) a cause and its effect routinely land in neighbouring intervals
    onset_tolerance_s: float = 120.0
    symptom_recency_s: float = 1800.0  # the alerted deviation must be this recent to be explained
    change_lookback_s: float = 1800.0  # how long before its entity's onset a change can matter
    # logit = w_strength*log1p(z) + w_sources*(sources-1) + w_change*change + w_depth*depth
    # (the alerted entity is a candidate like any other: no term for it). w_strength is the
    # tail index of the scores under "nothing is wrong", P(|z| > s) ~ (1+s)^-w_strength: the
    # surprise of a deviation of s spreads is w_strength*log1p(s)
    w_strength: float = 1.6
    w_sources: float = 0.6
    w_change: float = 0.8
    w_depth: float = 0.15
    # + w_explains*log1p(deviating entities between the symptom and the candidate): a cause
    # accounts for the anomalies on its propagation paths
    w_explains: float = 0.5
    # + w_off_graph for a candidate the dependency graph does not place on the symptom's past
    # side while it places others there: the graph is a prior (it may be partial), not a filter
    w_off_graph: float = -1.0
    # + w_late*(intervals its onset follows the symptom's, within the tolerance): a cause
    # precedes its effects; one that began after the symptom did is less likely its cause
    w_late: float = -0.3
    # an alert whose symptom has no onset to time against (on none of worldline's series, such
    # as an SLO or a probe, or on one that looks normal) says when the symptom became bad
    # enough to page, and alerts fire minutes into a harm: + w_early*(minutes from the onset
    # of a candidate's ranked evidence to the alert, beyond early_grace_s and the interval an
    # onset is known to within). A harm that held that long without the alert firing is less
    # likely what it fired for (an earlier incident's deviation still standing). The same per
    # minute a candidate's evidence was measured back to normal before the alert beyond the
    # grace: alerts fire while their harm holds (an earlier incident's deviation, over). In
    # time, not intervals: how long alerts wait does not depend on the model's interval
    w_early: float = -0.2
    early_grace_s: float = 240.0
    # the "no cause" option (below it, weak evidence loses to "nothing") and the softmax
    # temperature (``worldline evaluate simulator --train-seeds`` fits both)
    null_logit: float = 2.0
    temperature: float = 0.5
    # the published top probability: intercept, then one weight per ``calibration.FEATURES``
    # (``worldline evaluate lodo`` fits it on every dataset family and judges it on each one
    # left out)
    calibration: tuple[float, ...] = (1.182, 0.267, 1.075, -0.404)
    abstain_below: float = 0.35  # top probability under this: abstain, name what would separate
    chronic_weight: float = 0.25  # deviations older than the window count this much
    warmup_intervals: int = 15  # scores of a series' first intervals are not evidence
    # deviations that ended more than this many intervals before the window's end are stale:
    # their peak, and their strength when one is the peak, count this much
    recent_intervals: int = 10
    stale_weight: float = 0.1
    # a dependency whose own latency rose by less than this fraction of a dependent's latency
    # excess (same statistic, absolute units) cannot account for it: even called this many
    # times in sequence per request, it adds too little; the dependent is slow on its own
    explain_fraction: float = 0.1
    # a change in inbound traffic alone (no latency, errors or saturation of its own) says the
    # callers changed, not that the entity harms them; a latency rise too small to account for
    # the alerted one says the entity changed, not that its latency is why; saturation (memory,
    # CPU, pools) while the entity's measured latency and failures stay normal harmed no one
    # through it, nor did a latency of its own that its callers did not wait for (they measured
    # their calls to it as fast): such evidence about a candidate other than the symptom counts
    # this much when ranking
    traffic_weight: float = 0.25
    # a dependency typically slower than this many times the symptom's slowest statistic is
    # not waited for by it (asynchronous): its latency is no evidence for the symptom
    async_margin: float = 1.5
    # an alert whose own signal does not deviate is explained only by a dependency whose
    # harmful signal (latency, errors, availability) deviates at least this much, now, with
    # "nothing is wrong" kept at least as likely as it
    uncorroborated_z: float = 20.0
    # the least rise (in spreads) of a candidate's latency statistic that counts, under
    # ``z_min``, when judging whether the candidate is too little slower to account for the
    # alerted statistic's rise (``explain_fraction``): a tail statistic (p95, p99) is noisy and
    # may rise by less than ``z_min`` of its spreads while rising by far more than that
    # fraction of the alerted one; a rise within the noise is none
    small_rise_z: float = 1.5
    # on a cold start (``RULES``), the best cause is at most ``cold_start_odds`` to one
    # against "nothing is wrong" (p <= 0.8)
    cold_start_odds: float = 4.0
    # a candidate already harmed as much as now (at least ``standing_ratio`` of its peak, in
    # spreads) at an interval before the symptom began (beyond the onset tolerance) while the
    # alerted signal was measured normal is a standing condition: it held and the symptom did
    # not follow, so it does not explain why the symptom began. Its evidence counts
    # ``standing_weight`` when ranking; it is still ranked, and still explains what it can.
    # Measured against the symptom's onset; an alert's time says little about when its signal
    # began to change (alerts wait, burn rates average over hours). When the alerted signal
    # never deviates (an answer for a dependency harmed far beyond its normal, ``far`` in the
    # search), the alert's time is all there is, and only a harm older than the window (a
    # chronic one) that already held at an interval ending before the alert fired, while the
    # alerted signal was measured normal, is standing.
    standing_weight: float = 0.1
    standing_ratio: float = 0.8
    # how often a series deviates in the time it has been learned is how much its deviation
    # now says: a series whose episodes begin in a share r of its intervals above this one
    # ranks with its strength scaled by log(1/r) / log(1 / episode_rate_ref) (a flat series
    # that moves by a little every so often, a noisy counter); 0 turns it off
    episode_rate_ref: float = 0.001
    # rules of ``RULES`` turned off (``worldline evaluate ablate`` turns each off in turn to
    # measure what it does): switches, not parameters of the model
    off: tuple[str, ...] = ()

    def on(self, rule: str) -> bool:
        """Whether ``rule`` (one of ``RULES``) applies."""
        return rule not in self.off

    def __post_init__(self) -> None:
        unknown = sorted(set(self.off) - set(RULES))
        if unknown:
            raise ValueError(
                f"off names rules of the search; {', '.join(unknown)} is none of them"
                f" (the rules: {', '.join(RULES)})"
            )
        if len(self.calibration) != len(FEATURES) + 1:
            raise ValueError(
                f"calibration takes {len(FEATURES) + 1} numbers: an intercept, then one weight"
                f" each for {', '.join(FEATURES)}; got {len(self.calibration)}"
            )
