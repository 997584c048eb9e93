"""The search's physical rules on metrics-only worlds (a given call graph, 5-minute rows).

Each world: a day and a half of seeded normal rows, then a 5-row incident window whose third
row starts the fault; the alert is on ``front``. Loaded through the PetShop loader, i.e. the
same OTLP -> MetricColumns -> WorldModel path as any metrics source."""

from __future__ import annotations

import math
from typing import Any

import networkx as nx
import numpy as np
import pytest

from jobs.causal.search import CausalSearch, SearchConfig, SearchResult
from jobs.causal.search.result import _iso
from jobs.evaluate.petshop import INTERVAL_S, Frame, apply_frame, new_model
from pipeline.worldmodel.model import WorldModel

T0 = 1_700_000_400.0  # a Tuesday, 22:20 UTC
NORMAL_ROWS = 432  # 36 h
INCIDENT_ROWS = 5
FAULT_ROW = 2  # of the incident window

# (component, metric, statistic) -> (typical level, relative noise)
Levels = dict[tuple[str, str, str], tuple[float, float]]


def _levels(latency: dict[str, float], extra: Levels | None = None) -> Levels:
    out: Levels = {}
    for component, typical in latency.items():
        out[(component, "latency", "Average")] = (typical, 0.04)
        out[(component, "latency", "p50")] = (typical * 0.8, 0.04)
        out[(component, "latency", "p99")] = (typical * 2.5, 0.06)
        out[(component, "availability", "Average")] = (100.0, 0.0)
        out[(component, "requests", "Sum")] = (600.0, 0.05)
    out.update(extra or {})
    return out


def _frame(
    levels: Levels,
    fault: dict[tuple[str, str, str], float],
    seed: int = 7,
    fault_rows: int = INCIDENT_ROWS - FAULT_ROW,
    delays: dict[tuple[str, str, str], int] | None = None,
) -> Frame:
    """The normal rows then the incident window: ``fault`` adds to a column for ``fault_rows``
    rows from ``FAULT_ROW`` of the window on, ``delays`` rows later for the columns named there."""
    rng = np.random.default_rng(seed)
    columns = sorted(levels)
    rows = NORMAL_ROWS + INCIDENT_ROWS
    times = T0 + INTERVAL_S * np.arange(rows)
    values = np.empty((rows, len(columns)))
    for j, column in enumerate(columns):
        level, noise = levels[column]
        values[:, j] = level * (1.0 + noise * rng.standard_normal(rows))
        if column[1] == "availability":
            values[:, j] = np.minimum(values[:, j], 100.0)
        first = NORMAL_ROWS + FAULT_ROW + (delays or {}).get(column, 0)
        values[first : first + fault_rows, j] += fault.get(column, 0.0)
    return Frame(times, columns, values)


def _world(
    graph: list[tuple[str, str]],
    levels: Levels,
    fault: dict[tuple[str, str, str], float],
    seed: int = 7,
    fault_rows: int = INCIDENT_ROWS - FAULT_ROW,
    delays: dict[tuple[str, str, str], int] | None = None,
) -> tuple[WorldModel, float]:
    """Learn the normal rows, apply the incident window (``_frame``), return the model and the
    time to search at."""
    frame = _frame(levels, fault, seed, fault_rows, delays)
    model = new_model(graph, T0)
    offset = apply_frame(model, frame.rows(0, NORMAL_ROWS), "rules", 0)
    apply_frame(model, frame.rows(NORMAL_ROWS, len(frame)), "rules", offset)
    return model, float(frame.timestamps[-1]) + INTERVAL_S


def _search(world: tuple[WorldModel, float], signal: str, **config: float) -> SearchResult:
    model, t_s = world
    return CausalSearch(model, SearchConfig(**config)).run([("service:front", signal)], t_s)


def _top(result: SearchResult) -> str | None:
    return None if result.abstained or not result.causes else result.causes[0].entity


def _accounted_for(result: SearchResult, entity: str) -> str | None:
    """Why another candidate accounts for ``entity``'s deviation, from its cause record (None
    when nothing does); ``entity`` must be ranked."""
    cause = next(c for c in result.causes if c.entity == entity)
    _, found, why = cause.explanation.partition("what accounts for it: ")
    return why.rstrip(".") if found else None


def _rank(result: SearchResult, entity: str) -> int:
    return [c.entity for c in result.causes].index(entity)


def test_a_dependency_too_little_slower_does_not_explain_a_slow_service() -> None:
    # app gets 0.4 s slower; its database deviates too, at the same time, by 2 ms: the database
    # cannot account for app's slowdown even called ten times per request
    levels = _levels({"front": 0.2, "app": 0.08, "db": 0.005})
    world = _world(
        [("front", "app"), ("app", "db")],
        levels,
        {
            ("front", "latency", "Average"): 0.4,
            ("front", "latency", "p99"): 0.4,
            ("app", "latency", "Average"): 0.4,
            ("app", "latency", "p50"): 0.4,
            ("app", "latency", "p99"): 0.4,
            ("db", "latency", "Average"): 0.002,
            ("db", "latency", "p99"): 0.004,
        },
    )
    result = _search(world, "latency.average")
    assert _top(result) == "service:app"
    assert _accounted_for(result, "service:app") is None
    # with the accounting off (a dependency explains whatever its size), the database wins
    loose = _search(world, "latency.average", explain_fraction=0.0)
    assert _top(loose) == "service:db"


def test_a_rise_of_the_alerted_statistic_under_the_evidence_threshold_still_counts() -> None:
    # the alert is on front's p99; app is much slower in its median and mean, and its p99 rose
    # too, by less than the evidence threshold in its own (noisy) spreads but by far more than
    # a tenth of front's rise: app is not "too little slower" to account for front
    levels = _levels({"front": 0.2, "app": 0.08, "lambda": 0.05})
    world = _world(
        [("front", "app"), ("front", "lambda")],
        levels,
        {
            ("front", "latency", "Average"): 0.06,
            ("front", "latency", "p99"): 0.3,  # ~10 spreads
            ("app", "latency", "Average"): 0.06,
            ("app", "latency", "p50"): 0.06,
            ("app", "latency", "p99"): 0.025,  # ~2 spreads, a twelfth of front's rise
            ("lambda", "requests", "Sum"): 3000.0,  # more calls only: weak evidence
        },
    )
    result = _search(world, "latency.p99")
    assert _top(result) == "service:app"
    # a rise within the noise (under the weak threshold) is none: app would be too little
    # slower, weighed as little as lambda's traffic, which is larger
    noise = _search(world, "latency.p99", small_rise_z=4.0)
    assert _top(noise) == "service:lambda"


def test_a_rise_beyond_the_kept_score_limit_still_accounts_for_the_dependent() -> None:
    # db is typically 5 ms with 0.1 ms of noise; it gets 0.4 s slower, thousands of spreads:
    # its kept score saturates, and "saturated score x spread" (a few ms) must not read as a
    # rise too small to account for app's 0.4 s
    levels = _levels({"front": 0.2, "app": 0.08, "db": 0.005})
    levels[("db", "latency", "Average")] = (0.005, 0.02)
    world = _world(
        [("front", "app"), ("app", "db")],
        levels,
        {
            ("front", "latency", "Average"): 0.4,
            ("app", "latency", "Average"): 0.4,
            ("db", "latency", "Average"): 0.4,
        },
    )
    result = _search(world, "latency.average")
    assert _top(result) == "service:db"
    assert (_accounted_for(result, "service:app") or "").startswith("explained by service:db")
    assert _rank(result, "service:app") > _rank(result, "service:db")


def test_a_leaf_failing_with_an_instrumented_sibling_is_the_callers_view_of_it() -> None:
    # front calls app (which calls db) and, separately, lb: the load balancer in front of app,
    # which the graph knows only as a leaf. app fails; lb's failures (the same requests, seen
    # from front's side of the balancer) are a little deeper. app is the cause.
    levels = _levels({"front": 0.2, "app": 0.08, "db": 0.01, "lb": 0.09})
    world = _world(
        [("front", "app"), ("front", "lb"), ("app", "db")],
        levels,
        {
            ("front", "availability", "Average"): -4.0,
            ("app", "availability", "Average"): -6.0,
            ("lb", "availability", "Average"): -9.0,
        },
    )
    result = _search(world, "availability.average")
    assert _top(result) == "service:app"
    assert "view of service:app" in (_accounted_for(result, "service:lb") or "")
    assert _rank(result, "service:lb") > _rank(result, "service:app")
    # with the rule off, the leaf that deviates most wins
    assert (
        _top(_search(world, "availability.average", off=("leaf_is_sibling_view",))) == "service:lb"
    )
    # the same requests seen from both sides of the balancer: the leaf's view may show the
    # failures an interval before the service's own rows do, and is still the service's
    later = _world(
        [("front", "app"), ("front", "lb"), ("app", "db")],
        levels,
        {
            ("front", "availability", "Average"): -4.0,
            ("app", "availability", "Average"): -6.0,
            ("lb", "availability", "Average"): -9.0,
        },
        delays={("app", "availability", "Average"): 1},
    )
    assert _top(_search(later, "availability.average")) == "service:app"


def test_a_failing_leaf_is_not_taken_for_a_sibling_that_depends_on_it() -> None:
    # app calls the leaf store too: app failing may be store's doing, so store stays the cause
    levels = _levels({"front": 0.2, "app": 0.08, "store": 0.01})
    world = _world(
        [("front", "app"), ("front", "store"), ("app", "store")],
        levels,
        {
            ("front", "availability", "Average"): -4.0,
            ("app", "availability", "Average"): -6.0,
            ("store", "availability", "Average"): -9.0,
        },
    )
    assert _top(_search(world, "availability.average")) == "service:store"


def test_an_asynchronous_dependency_slowing_down_is_not_why_the_caller_is_slow() -> None:
    # front hands work to a state machine that typically takes 3 s (longer than front's p99 of
    # 0.5 s: front does not wait for it); it gets 6 s slower while app gets 0.3 s slower
    levels = _levels({"front": 0.2, "app": 0.08, "statemachine": 3.0, "worker": 2.5})
    world = _world(
        [("front", "app"), ("front", "statemachine"), ("statemachine", "worker")],
        levels,
        {
            ("front", "latency", "Average"): 0.3,
            ("front", "latency", "p99"): 0.3,
            ("app", "latency", "Average"): 0.3,
            ("app", "latency", "p50"): 0.3,
            ("statemachine", "latency", "Average"): 6.0,
            ("statemachine", "latency", "p50"): 6.0,
            ("worker", "latency", "Average"): 6.0,
            ("worker", "latency", "p50"): 6.0,
        },
    )
    result = _search(world, "latency.average")
    assert _top(result) == "service:app"
    ranked = [c.entity for c in result.causes]
    assert "service:worker" not in ranked and "service:statemachine" not in ranked
    # without the rule the deepest slow node would win
    assert _top(_search(world, "latency.average", async_margin=math.inf)) == "service:worker"


def test_what_runs_behind_an_asynchronous_hop_cannot_fail_the_callers_requests() -> None:
    # the worker behind the state machine fails clearly while front's availability looks
    # normal: front never waits for the worker, so its failures say nothing about front's
    levels = _levels({"front": 0.2, "app": 0.08, "statemachine": 3.0, "worker": 2.5})
    graph = [("front", "app"), ("front", "statemachine"), ("statemachine", "worker")]
    fault = {("worker", "availability", "Average"): -5.0}
    result = _search(_world(graph, levels, fault), "availability.average")
    assert result.abstained and "no incident to explain" in (result.abstain_reason or "")
    # a synchronous path (front waits for the state machine) makes the same failure the answer
    sync = _search(_world(graph, levels, fault), "availability.average", async_margin=math.inf)
    assert _top(sync) == "service:worker"


def _lambda_asked_more() -> tuple[WorldModel, float]:
    """front slows with app (~9 sigma of app's latency) while lambda is called 100 sigma more,
    as fast as ever."""
    levels = _levels({"front": 0.2, "app": 0.08, "lambda": 0.05})
    return _world(
        [("front", "app"), ("front", "lambda")],
        levels,
        {
            ("front", "latency", "Average"): 0.06,
            ("app", "latency", "Average"): 0.03,
            ("app", "latency", "p50"): 0.03,
            ("lambda", "requests", "Sum"): 3000.0,
        },
    )


def test_inbound_traffic_alone_ranks_below_a_slow_dependency() -> None:
    world = _lambda_asked_more()
    result = _search(world, "latency.average")
    assert _top(result) == "service:app"
    assert "service:lambda" in [c.entity for c in result.causes]
    # counted like any other evidence, the far larger traffic deviation would win
    assert _top(_search(world, "latency.average", traffic_weight=1.0)) == "service:lambda"


def test_a_cause_shows_why_its_evidence_counts_less_and_its_logit_adds_up() -> None:
    config = SearchConfig()
    result = _search(_lambda_asked_more(), "latency.average")
    lam = next(c for c in result.causes if c.entity == "service:lambda")
    ranked = next(e for e in lam.evidence if "discounts" in e)
    assert ranked["signal"].startswith("requests")
    reasons = [d["reason"] for d in ranked["discounts"]]
    assert "traffic" in reasons
    traffic = ranked["discounts"][reasons.index("traffic")]
    assert traffic["factor"] == config.traffic_weight and traffic["weight"] < 0
    # the surprise of the deviation itself, then what each discount takes from it: the
    # weights of a cause's evidence add up to its logit
    deviation = min(abs(ranked["score"]), config.z_cap)
    assert ranked["weight"] == pytest.approx(config.w_strength * math.log1p(deviation), abs=1e-3)
    total = sum(e.get("weight", 0.0) for e in lam.evidence) + sum(
        d["weight"] for d in ranked["discounts"]
    )
    assert total == pytest.approx(lam.logit, abs=0.01)
    assert "inbound traffic only -" in lam.explanation


def _app_slows_front(
    also: dict[tuple[str, str, str], float],
) -> dict[tuple[str, str, str], float]:
    """front slower with app (~9 sigma of app's latency), and ``also`` at the same time."""
    return {
        ("front", "latency", "Average"): 0.06,
        ("app", "latency", "Average"): 0.03,
        ("app", "latency", "p50"): 0.03,
        **also,
    }


def test_saturation_its_own_requests_do_not_feel_ranks_below_a_slow_dependency() -> None:
    # front gets slower with app; cache's memory jumps to a new level at the same time while
    # cache answers as fast as ever: its memory harmed no request, so app is why front is slow
    memory = ("cache", "memory", "Average")
    levels = _levels({"front": 0.2, "app": 0.08, "cache": 0.01}, {memory: (500.0, 0.02)})
    fault = _app_slows_front({memory: 1000.0})  # 100 sigma
    graph = [("front", "app"), ("front", "cache")]
    result = _search(_world(graph, levels, fault), "latency.average")
    assert _top(result) == "service:app"
    assert "service:cache" in [c.entity for c in result.causes]
    # counted like any other evidence, the far larger memory deviation would win
    loose = _search(_world(graph, levels, fault), "latency.average", traffic_weight=1.0)
    assert _top(loose) == "service:cache"
    # with neither cache's latency nor its failures measured, its memory is all there is
    unseen = {
        k: v
        for k, v in levels.items()
        if not (k[0] == "cache" and k[1] in ("latency", "availability"))
    }
    assert _top(_search(_world(graph, unseen, fault), "latency.average")) == "service:cache"


def test_latency_its_callers_saw_while_it_served_as_fast_ranks_below_a_slow_dependency() -> None:
    # front gets slower with app; at the same time db's latency as its callers measure it
    # (client side) jumps while db's own server-side latency stays as it was: the time was
    # lost before reaching db, so app is why front is slow
    client = ("db", "client.latency", "p90")
    server = ("db", "server.latency", "p90")
    levels = _levels({"front": 0.2, "app": 0.08}, {client: (0.01, 0.04), server: (0.008, 0.04)})
    fault = _app_slows_front({client: 0.01})  # 25 sigma
    graph = [("front", "app"), ("front", "db")]
    result = _search(_world(graph, levels, fault), "latency.average")
    assert _top(result) == "service:app"
    assert "service:db" in [c.entity for c in result.causes]
    # counted like any other evidence, the far larger client-side deviation would win
    loose = _search(_world(graph, levels, fault), "latency.average", traffic_weight=1.0)
    assert _top(loose) == "service:db"
    # without db's server side measured, the client side is all there is
    unseen = {k: v for k, v in levels.items() if k != server}
    assert _top(_search(_world(graph, unseen, fault), "latency.average")) == "service:db"
    # and when the server side rose too, db itself is slow
    slow = fault | {server: 0.008}
    assert _top(_search(_world(graph, levels, slow), "latency.average")) == "service:db"


def test_a_failing_symptom_is_explained_by_a_failing_dependency_not_a_slow_one() -> None:
    levels = _levels({"front": 0.2, "app": 0.08, "cache": 0.002})
    world = _world(
        [("front", "app"), ("front", "cache")],
        levels,
        {
            ("front", "availability", "Average"): -4.0,
            ("app", "availability", "Average"): -8.0,
            ("cache", "latency", "Average"): 0.004,  # much stronger z, but only slower
            ("cache", "latency", "p50"): 0.004,
        },
    )
    result = _search(world, "availability.average")
    assert _top(result) == "service:app"
    # weighed like any evidence, the cache's stronger (but harmless here) slowdown would win
    assert _top(_search(world, "availability.average", traffic_weight=1.0)) == "service:cache"


def test_an_alert_its_own_signal_does_not_show_is_answered_only_for_a_strong_dependency() -> None:
    levels = _levels({"front": 0.2, "app": 0.08})
    quiet = _world([("front", "app")], levels, {})
    result = _search(quiet, "availability.average")
    assert result.abstained and not result.causes
    assert "no incident to explain" in (result.abstain_reason or "")
    failing = _world([("front", "app")], levels, {("app", "availability", "Average"): -30.0})
    result = _search(failing, "availability.average")
    assert _top(result) == "service:app"
    # the symptom itself looks normal: "nothing is wrong" keeps at least even odds
    assert result.stats["model_probability"] == pytest.approx(0.5, abs=0.01)
    assert not math.isnan(result.causes[0].logit)


def test_a_failure_alert_its_own_signal_does_not_show_is_answered_for_a_failing_dependency() -> (
    None
):
    # front's availability looks normal to its baseline, app fails clearly (about 10 spreads:
    # far below the 20 a quiet alert needs of any harm) while the alert names failures
    levels = _levels({"front": 0.2, "app": 0.08, "other": 0.05})
    world = _world(
        [("front", "app"), ("front", "other")],
        levels,
        {
            ("app", "availability", "Average"): -5.0,
            ("app", "latency", "Average"): 0.008,
            ("other", "availability", "Average"): -2.0,  # fails too, less clearly
        },
    )
    result = _search(world, "availability.average")
    assert _top(result) == "service:app"
    assert result.stats["model_probability"] <= 0.5 + 1e-9
    # the one that fails less clearly is ranked too, as an alternative
    assert [c.entity for c in result.causes[:2]] == ["service:app", "service:other"]
    off = _search(world, "availability.average", off=("failures_corroborate",))
    assert off.abstained and "no incident to explain" in (off.abstain_reason or "")
    # a latency alert is not answered by a failing dependency it does not show
    latency = _search(world, "latency.average")
    assert latency.abstained and "no incident to explain" in (latency.abstain_reason or "")


def test_a_quiet_failure_alert_ranks_the_failing_dependency_before_a_merely_slower_one() -> None:
    # front's availability looks normal; app fails clearly, slow gets a lot slower (far more
    # spreads than app's failure, but under the 20 a quiet alert needs of latency): the alert is
    # answered because app fails, and slow's latency alone would not have answered it
    levels = _levels({"front": 0.2, "app": 0.08, "slow": 0.05})
    world = _world(
        [("front", "app"), ("front", "slow")],
        levels,
        {
            ("app", "availability", "Average"): -5.0,
            ("slow", "latency", "Average"): 0.045,  # about 13 spreads
        },
    )
    result = _search(world, "availability.average")
    assert [c.entity for c in result.causes[:2]] == ["service:app", "service:slow"]
    # ranked on strength alone, the slower one comes first
    loose = _search(world, "availability.average", traffic_weight=1.0)
    assert _top(loose) == "service:slow"


def test_latency_statistics_keep_what_follows_the_qualifiers() -> None:
    from jobs.causal.search import _latency_unit, _LatencyAccounts

    histogram = "db.client.operation.duration{db.system=postgresql,server.address=db}"
    assert _LatencyAccounts.statistic(histogram + ".p95") == "db.client.operation.duration.p95"
    assert _LatencyAccounts.statistic(histogram + ".p50") != _LatencyAccounts.statistic(
        histogram + ".p95"
    )
    # a caller's view of a peer and the peer's own spans compare by statistic
    assert _LatencyAccounts.statistic("edge.latency_p95_ms{peer=db}") == "latency_p95_ms"
    assert _LatencyAccounts.statistic("span.latency_p95_ms") == "latency_p95_ms"
    assert _LatencyAccounts.statistic("requests.sum") is None
    assert _latency_unit("http.server.request.duration_seconds{route=/a}.p99") == "seconds"
    assert _latency_unit("latency.p90") == ""


def _failing_app(store_slower: bool) -> tuple[WorldModel, float]:
    """front -> app -> store: app fails and slows down, and so does front through it;
    ``store_slower``: the store gets slower too, enough to account for app's slowdown."""
    deltas: dict[tuple[str, str, str], float] = {
        ("front", "availability", "Average"): -4.0,
        ("app", "availability", "Average"): -8.0,
        ("app", "latency", "Average"): 0.1,
        ("app", "latency", "p50"): 0.1,
    }
    if store_slower:
        deltas[("store", "latency", "Average")] = 0.1
        deltas[("store", "latency", "p50")] = 0.1
    levels = _levels({"front": 0.2, "app": 0.08, "store": 0.05})
    return _world([("front", "app"), ("app", "store")], levels, deltas)


def test_a_dependency_only_slower_does_not_explain_a_failing_service() -> None:
    # app fails and slows down (it retries its own errors); its object store gets slower at the
    # same time, enough to account for app's slowdown, but nothing fails there
    world = _failing_app(store_slower=True)
    result = _search(world, "availability.average")
    assert _top(result) == "service:app"
    assert _accounted_for(result, "service:app") is None
    # when a slower dependency may explain failures too, the store wins
    assert _top(_search(world, "availability.average", off=("failures_need_failures",))) == (
        "service:store"
    )


def _blip_levels() -> Levels:
    """front's, app's and other's availability are noisy (a typical 99.5 %, learned spread
    about 0.5 percentage points)."""
    levels = _levels({"front": 0.2, "app": 0.08, "other": 0.05})
    for component in ("front", "app", "other"):
        levels[(component, "availability", "Average")] = (99.5, 0.002)
    return levels


def test_a_weakly_alerted_failure_is_answered_only_by_a_dependency_failing_now() -> None:
    # front's availability falls about 2 spreads (under the symptom threshold) while app's
    # falls 10: the alerted signal looks normal, so the alert is answered for a dependency
    # that clearly fails now, with "nothing is wrong" kept at least as likely
    levels = _blip_levels()
    deltas = {("front", "availability", "Average"): -0.9, ("app", "availability", "Average"): -4.0}
    result = _search(
        _world([("front", "app"), ("front", "other")], levels, deltas),
        "availability.average",
    )
    assert _top(result) == "service:app"
    assert result.symptom_onset_s is None  # no alerted deviation to time against
    assert result.stats["model_probability"] <= 0.5 + 1e-9
    # one interval of it, over by the time of the search: nothing fails now, and the weak
    # dip alone is no incident to explain (no rule takes a dip under the threshold for the
    # alerted deviation because something else deviated with it)
    blip = _world([("front", "app"), ("front", "other")], levels, deltas, fault_rows=1)
    quiet = _search(blip, "availability.average")
    assert quiet.abstained and not quiet.causes


def test_a_weak_alerted_dip_alone_is_no_incident() -> None:
    # front dips as weakly, but nothing it depends on is harmed: still nothing to explain
    levels = _blip_levels()
    world = _world(
        [("front", "app"), ("front", "other")],
        levels,
        {
            ("front", "availability", "Average"): -0.9,
            ("other", "requests", "Sum"): 600.0,  # 20 spreads more calls: traffic, no harm
        },
        fault_rows=1,
    )
    result = _search(world, "availability.average")
    assert result.abstained and not result.causes


def test_a_weak_latency_alert_is_not_corroborated_by_a_slower_dependency() -> None:
    # latency moves together a little all the time: front 2 spreads slower while app is 8
    # spreads slower is not taken for the alerted incident (only failures corroborate)
    levels = _levels({"front": 0.2, "app": 0.08})
    world = _world(
        [("front", "app")],
        levels,
        {("front", "latency", "Average"): 0.045, ("app", "latency", "Average"): 0.026},
        fault_rows=1,
    )
    result = _search(world, "latency.average")
    assert result.abstained and "no incident to explain" in (result.abstain_reason or "")


def test_a_cause_is_as_persistent_as_the_symptom_it_recovered_with() -> None:
    # front fails for one interval and recovers, and so does app (about 4.5 spreads): two calm
    # intervals follow. Measured to the window's end, app deviated one interval in three
    # (strength 4.5 x sqrt(1/3) < 3: no evidence); measured while the symptom lasted (plus the
    # one-interval onset tolerance), one in two (4.5 x sqrt(1/2) > 3)
    levels = _blip_levels()
    world = _world(
        [("front", "app"), ("front", "other")],
        levels,
        {("front", "availability", "Average"): -3.0, ("app", "availability", "Average"): -2.2},
        fault_rows=1,
    )
    assert _top(_search(world, "availability.average")) == "service:app"
    whole_window = _search(world, "availability.average", off=("until_symptom_ends",))
    assert _top(whole_window) != "service:app"


def test_a_failure_is_not_explained_by_a_dependency_that_is_only_called_less() -> None:
    # front fails; the queue it publishes to gets far fewer messages (front fails before
    # publishing): the queue changed because front did, not the other way round
    levels = _levels({"front": 0.2, "queue": 0.01})
    levels[("front", "availability", "Average")] = (99.5, 0.002)
    world = _world(
        [("front", "queue")],
        levels,
        {("front", "availability", "Average"): -4.0, ("queue", "requests", "Sum"): -500.0},
    )
    result = _search(world, "availability.average")
    assert "service:queue" not in [c.entity for c in result.causes]
    assert any(r.entity == "service:queue" for r in result.ruled_out)
    # counted like any evidence (weighed down as traffic), the queue is a candidate
    loose = _search(world, "availability.average", off=("failures_need_harm",))
    assert "service:queue" in [c.entity for c in loose.causes]


def test_a_dependency_that_began_failing_after_its_caller_does_not_explain_it() -> None:
    # app fails first; its database fails one interval later (app's retries overload it):
    # the database is app's consequence, not its cause
    levels = _levels({"front": 0.2, "app": 0.08, "db": 0.005})
    for component in ("front", "app", "db"):
        levels[(component, "availability", "Average")] = (99.5, 0.002)
    world = _world(
        [("front", "app"), ("app", "db")],
        levels,
        {
            ("front", "availability", "Average"): -2.0,
            ("app", "availability", "Average"): -4.0,
            ("db", "availability", "Average"): -4.0,
        },
        delays={("db", "availability", "Average"): 1},
    )
    result = _search(world, "availability.average")
    assert _top(result) == "service:app"
    assert _accounted_for(result, "service:app") is None
    # within the onset tolerance alone, the later database explains app and wins
    loose = _search(world, "availability.average", off=("explain_needs_precedence",))
    assert (_accounted_for(loose, "service:app") or "").startswith("explained by service:db")
    assert _top(loose) == "service:db"


def test_a_condition_that_held_while_the_symptom_was_normal_does_not_explain_it() -> None:
    # lb, a dependency of front, fails every request from the window's first row on while
    # front stays healthy for two intervals; then app fails and front with it: lb's failure
    # held and front did not follow, so app is why front began failing
    levels = _levels({"front": 0.2, "app": 0.08, "lb": 0.01})
    for component in ("front", "app", "lb"):
        levels[(component, "availability", "Average")] = (99.5, 0.002)
    lb = ("lb", "availability", "Average")
    world = _world(
        [("front", "app"), ("front", "lb")],
        levels,
        {
            ("front", "availability", "Average"): -2.0,
            ("app", "availability", "Average"): -4.0,
            lb: -99.0,
        },
        fault_rows=INCIDENT_ROWS,
        delays={lb: -FAULT_ROW},
    )
    result = _search(world, "availability.average")
    assert _top(result) == "service:app"
    assert [c.entity for c in result.causes[:2]] == ["service:app", "service:lb"]
    # counted in full, lb's (far larger) failure wins
    loose = _search(world, "availability.average", standing_weight=1.0)
    assert _top(loose) == "service:lb"
    # the same failure beginning with front's is its cause
    together = _search(
        _world(
            [("front", "app"), ("front", "lb")],
            levels,
            {("front", "availability", "Average"): -2.0, lb: -99.0},
        ),
        "availability.average",
    )
    assert _top(together) == "service:lb"


def test_a_duration_of_failed_requests_is_latency_not_failure() -> None:
    from jobs.causal.search import _is_failure

    errored = "http.client.request.duration{error.type=500,http.response.status_code=500}"
    assert not _is_failure(errored + ".p95")  # how long failing took
    assert _is_failure(errored + ".rate_per_s")  # how often it failed
    assert _is_failure("span.error_ratio") and _is_failure("availability.average")
    assert not _is_failure("span.latency_p95_ms") and not _is_failure("requests.sum")


def test_shifted_load_is_never_both_ways_and_spares_a_failing_dependency() -> None:
    import networkx as nx

    from jobs.causal.search import Evidence, HypothesisBatch
    from jobs.causal.search.explain import shifted_load

    # caller sends more requests to both a and b while its own traffic did not grow
    entities = ["service:a", "service:b", "service:caller"]

    def shifted(b_errors: bool) -> dict[int, int]:
        series = [
            ("service:caller", "edge.rate_per_s{peer=service:a}"),
            ("service:caller", "edge.rate_per_s{peer=service:b}"),
            ("service:caller", "edge.error_ratio{peer=service:b}"),
        ]
        n = len(series)
        strength = np.array([8.0, 8.0, 8.0 if b_errors else 0.0])
        batch = HypothesisBatch(
            entity=np.array([0, 1, 1]),
            series=series,
            modality=np.zeros(n, dtype=np.int8),
            up_is_bad=np.array([False, False, True]),
            z=np.full((n, 3), 8.0),
            t0_s=0.0,
            interval_s=60.0,
            entities=entities,
        )
        ev = Evidence(np.full(n, 8.0), strength, np.zeros(n), np.ones(n), np.full(n, 120.0))
        graph = nx.MultiDiGraph([("service:caller", "service:a"), ("service:caller", "service:b")])
        idx = {e: i for i, e in enumerate(entities)}
        return shifted_load(
            SearchConfig(),
            np.array([True, True, False]),
            batch,
            ev,
            graph,
            idx,
            np.zeros(3),
            np.full(3, 120.0),
            np.array([8.0, 8.0, 0.0]),
            60.0,
        )

    # each would explain the other's extra load: neither is explained away
    assert shifted(b_errors=False) == {}
    # b fails: its extra requests are retries of what failed, its failure stands; a's extra
    # load is b's doing
    assert shifted(b_errors=True) == {0: 1}


def _young_world(values: list[list[float]]) -> tuple[WorldModel, float]:
    """front calls app; only these rows of (front, app) latency have ever been seen."""
    columns = [("front", "latency", "Average"), ("app", "latency", "Average")]
    times = T0 + INTERVAL_S * np.arange(len(values))
    model = new_model([("front", "app")], T0)
    apply_frame(model, Frame(times, columns, np.array(values)), "rules", 0)
    return model, float(times[-1]) + INTERVAL_S


def test_a_cold_start_counts_young_scores() -> None:
    # five intervals in all, front and app about 3x slower from the third: with no history
    # to speak of, the young scores (spreads widened for youth) are all the evidence there is
    steady = [[0.20, 0.08], [0.21, 0.082], [0.6, 0.5], [0.6, 0.5], [0.6, 0.5]]
    world = _young_world(steady)
    result = _search(world, "latency.average")
    assert _top(result) == "service:app"
    assert 0.35 <= result.stats["model_probability"] <= 4 / 5 + 1e-9
    # without the cold start the scores of so young a series are not trusted
    off = _search(world, "latency.average", off=("cold_start",))
    assert off.abstained and "too little history" in (off.abstain_reason or "")


def test_a_fault_at_the_second_value_ever_seen_is_read_against_the_prior_spread() -> None:
    # one normal value, then front twice and app 3.5 times slower: no spread is learned yet,
    # the prior on it (a tenth of the level, widened for youth) is all there is, and it says
    # both moved far more than normal; app accounts for front's rise
    world = _young_world([[0.10, 0.18], [0.21, 0.65]])
    model, _ = world
    front = model.baselines.get("service:front", "latency.average")
    assert [round(z, 1) for _, z in front.recent_scores()] == [0.0, 4.5]
    result = _search(world, "latency.average")
    assert _top(result) == "service:app"
    assert result.stats["cold_start"] == 1.0
    assert result.stats["model_probability"] <= 4 / 5 + 1e-9
    # a normal second value (within a tenth) says nothing is wrong
    calm = _search(_young_world([[0.10, 0.18], [0.105, 0.19]]), "latency.average")
    assert calm.abstained and not calm.causes


def test_an_incident_that_began_in_the_warm_up_is_read_from_the_young_scores() -> None:
    # fifteen intervals in all (the warm-up), front and app about 3x slower over the last
    # four: every score that shows the incident is a young one, so the trusted scores alone
    # say the alert's signal is normal; the search reads the young ones as a cold start
    rng = np.random.default_rng(3)
    rows = [[0.20 * (1 + 0.04 * a), 0.08 * (1 + 0.04 * b)] for a, b in rng.standard_normal((15, 2))]
    for row in rows[11:]:
        row[0] += 0.4
        row[1] += 0.4
    world = _young_world(rows)
    model, _ = world
    assert model.baselines.get("service:front", "latency.average").intervals_learned == 15
    result = _search(world, "latency.average")
    assert _top(result) == "service:app"
    assert result.stats["model_probability"] <= 4 / 5 + 1e-9
    assert result.stats["cold_start"] == 1.0
    off = _search(world, "latency.average", off=("cold_start",))
    assert off.abstained and "nowhere" in (off.abstain_reason or "")


def test_an_alert_with_too_little_history_says_so() -> None:
    # five intervals in all, and nothing moves in them: the alert cannot be judged
    world = _young_world([[0.20, 0.08], [0.21, 0.082], [0.2, 0.08], [0.205, 0.081], [0.2, 0.08]])
    result = _search(world, "latency.average")
    assert result.abstained and not result.causes
    assert "5 interval(s) of history" in (result.abstain_reason or "")
    assert "too little history" in (result.abstain_reason or "")


def test_a_quiet_alert_is_not_answered_by_a_harm_that_began_after_it_fired() -> None:
    # front's availability looks normal; app begins failing two intervals after the alert
    # fired: searched later (a follow-up), app's failure cannot be why the alert fired
    levels = _levels({"front": 0.2, "app": 0.08})
    app = ("app", "availability", "Average")
    model, t_s = _world([("front", "app")], levels, {app: -5.0}, delays={app: 2})
    alert_s = T0 + INTERVAL_S * (NORMAL_ROWS + FAULT_ROW)
    search = CausalSearch(model, SearchConfig())
    later = search.run([("service:front", "availability.average")], t_s, alert_s)
    assert later.abstained and not later.causes
    # an alert fired when app was already failing is answered for it
    now = search.run([("service:front", "availability.average")], t_s)
    assert _top(now) == "service:app"


def test_a_quiet_alert_is_not_answered_by_a_chronic_failure_that_held_before_it_fired() -> None:
    # front's availability looks normal throughout; lb has failed every request since long
    # before the search's window (a chronic condition); app begins failing when the alert
    # fires: lb's failure held while front was measured normal and no alert fired, so it ranks
    # behind app's (it is still ranked: it may yet matter)
    levels = _levels({"front": 0.2, "app": 0.08, "lb": 0.01})
    lb = ("lb", "availability", "Average")
    window = SearchConfig().window_intervals
    graph = [("front", "app"), ("front", "lb")]
    model, t_s = _world(
        graph,
        levels,
        {("app", "availability", "Average"): -2.0, lb: -99.0},
        fault_rows=window + 2 * INCIDENT_ROWS,
        delays={lb: -FAULT_ROW - window},
    )
    alert_s = T0 + INTERVAL_S * (NORMAL_ROWS + FAULT_ROW)
    symptoms: list[tuple[str, str | None]] = [("service:front", "availability.average")]
    result = CausalSearch(model, SearchConfig()).run(symptoms, t_s, alert_s)
    assert result.symptom_onset_s is None  # the alerted signal itself never deviates
    assert [c.entity for c in result.causes[:2]] == ["service:app", "service:lb"]
    # counted in full and not timed against the alert, lb's failure wins (far larger, though
    # weighed down for its age)
    loose = CausalSearch(model, SearchConfig(standing_weight=1.0, w_early=0.0))
    assert _top(loose.run(symptoms, t_s, alert_s)) == "service:lb"
    # a failure that began in the window, even intervals before the alert fired (alerts wait),
    # is the answer
    recent = _world(graph, levels, {lb: -99.0}, delays={lb: -1})
    search = CausalSearch(recent[0], SearchConfig())
    assert _top(search.run(symptoms, recent[1], alert_s)) == "service:lb"


def test_one_call_to_a_rarely_called_dependency_is_no_deviation() -> None:
    # sts is called now and then in the afternoons and evenings (once in about every third
    # row), never in the mornings; in the fault's first row, a morning, it is called once: one
    # request is counting noise, not a deviation
    levels = _levels({"front": 0.2, "app": 0.08})
    fault = {
        ("front", "latency", "Average"): 0.1,
        ("app", "latency", "Average"): 0.1,
        ("app", "latency", "p50"): 0.1,
    }
    frame = _frame(levels, fault)
    hours = (frame.timestamps // 3600) % 24
    calls = np.where((hours >= 12) & (np.arange(len(frame)) % 3 == 0), 1.0, 0.0)
    assert hours[NORMAL_ROWS + FAULT_ROW] < 12
    calls[NORMAL_ROWS + FAULT_ROW] = 1.0
    frame = Frame(
        frame.timestamps,
        [*frame.columns, ("sts", "requests", "Sum")],
        np.column_stack([frame.values, calls]),
    )
    model = new_model([("front", "app"), ("front", "sts")], T0)
    offset = apply_frame(model, frame.rows(0, NORMAL_ROWS), "rules", 0)
    apply_frame(model, frame.rows(NORMAL_ROWS, len(frame)), "rules", offset)
    result = _search((model, float(frame.timestamps[-1]) + INTERVAL_S), "latency.average")
    assert _top(result) == "service:app"
    assert "service:sts" not in [c.entity for c in result.causes]
    assert any(r.entity == "service:sts" and "no deviation" in r.reason for r in result.ruled_out)


def test_an_unobserved_alerted_signal_does_not_date_the_symptom_by_the_entity_s_past() -> None:
    """The alert's signal is none of worldline's series (an SLO): the alerted entity's own
    earlier deviation (another incident's) is no onset that a cause must precede."""
    world = _world(
        [("front", "app")],
        _levels({"front": 0.2, "app": 0.08}),
        {("front", "availability", "Average"): -20.0, ("app", "latency", "Average"): 0.4},
        fault_rows=INCIDENT_ROWS,
        delays={("front", "availability", "Average"): -FAULT_ROW, ("app", "latency", "Average"): 1},
    )
    model, t_s = world
    result = CausalSearch(model, SearchConfig()).run([("service:front", None)], t_s)
    assert result.symptom_onset_s is None
    assert "service:app" in [c.entity for c in result.causes]
    assert not any(
        r.entity == "service:app" and "after the symptom" in r.reason for r in result.ruled_out
    )


def test_an_slo_alert_is_less_likely_about_a_harm_that_held_long_before_it_fired() -> None:
    """The alert names no signal worldline receives (an SLO): the store's memory has been far
    up for an hour (an earlier incident's, left standing), app slowed down just before the
    alert. Alerts fire minutes into a harm, not an hour: app ranks first."""
    memory = ("store", "memory", "usage")
    levels = _levels(
        {"front": 0.2, "app": 0.08},
        {memory: (40.0, 0.005), ("store", "requests", "Sum"): (600, 0.05)},
    )
    graph = [("front", "app"), ("front", "store")]
    fault = {
        memory: 6.0,  # 30 sigma
        ("app", "latency", "Average"): 0.03,  # ~9 sigma
        ("app", "latency", "p50"): 0.03,
        ("front", "latency", "Average"): 0.06,
    }
    world = _world(graph, levels, fault, fault_rows=INCIDENT_ROWS + 12, delays={memory: -12})
    model, t_s = world
    result = CausalSearch(model, SearchConfig()).run([("service:front", None)], t_s)
    assert result.symptom_onset_s is None
    assert _top(result) == "service:app"
    assert "service:store" in [c.entity for c in result.causes]
    # without the term, the far larger standing deviation ranks first
    flat = CausalSearch(model, SearchConfig(w_early=0.0)).run([("service:front", None)], t_s)
    assert _top(flat) == "service:store"
    # an alert on front's latency dates the symptom itself: the term does not apply
    on_latency = [("service:front", "latency.average")]
    dated = CausalSearch(model, SearchConfig()).run(on_latency, t_s)
    undated = CausalSearch(model, SearchConfig(w_early=0.0)).run(on_latency, t_s)
    assert dated.symptom_onset_s is not None and dated.causes
    assert [(c.entity, c.logit) for c in dated.causes] == [
        (c.entity, c.logit) for c in undated.causes
    ]


def test_a_series_that_often_deviates_in_its_history_is_weaker_evidence() -> None:
    """Two dependencies deviate alike now; one of them had a deviation episode every few hours
    of its history (a flat series that jumps every so often): the other ranks first."""
    levels = _levels({"front": 0.2, "app": 0.08, "jumpy": 0.08})
    fault = {
        ("front", "latency", "Average"): 0.4,
        ("app", "latency", "Average"): 0.4,
        ("jumpy", "latency", "Average"): 0.4,
    }
    frame = _frame(levels, fault)
    column = frame.columns.index(("jumpy", "latency", "Average"))
    for start in range(40, NORMAL_ROWS - 20, 30):  # 2.5 h apart, 20 min each
        frame.values[start : start + 4, column] += 0.4
    model = new_model([("front", "app"), ("front", "jumpy")], T0)
    offset = apply_frame(model, frame.rows(0, NORMAL_ROWS), "rules", 0)
    apply_frame(model, frame.rows(NORMAL_ROWS, len(frame)), "rules", offset)
    t_s = float(frame.timestamps[-1]) + INTERVAL_S
    jumpy = model.baselines.get("service:jumpy", "latency.average")
    calm = model.baselines.get("service:app", "latency.average")
    assert jumpy is not None and calm is not None
    assert jumpy.alerts_raised > calm.alerts_raised + 5
    ranked = CausalSearch(model, SearchConfig()).run([("service:front", "latency.average")], t_s)
    p = {c.entity: c.probability for c in ranked.causes}
    assert ranked.causes[0].entity == "service:app" and p["service:app"] > 2 * p["service:jumpy"]
    # without the term the two are a tie
    flat = CausalSearch(model, SearchConfig(episode_rate_ref=0.0)).run(
        [("service:front", "latency.average")], t_s
    )
    tie = {c.entity: c.probability for c in flat.causes}
    assert abs(tie["service:jumpy"] - tie["service:app"]) < 0.01


def test_a_dependency_explains_a_dependent_only_by_a_harm_its_callers_feel() -> None:
    """The store's memory rose before the incident (and nothing is known of its latency); the
    middle service it serves then slowed down: the store's memory does not explain that."""
    levels = _levels(
        {"front": 0.2, "mid": 0.08},
        {("store", "memory", "usage"): (40.0, 0.005), ("store", "requests", "Sum"): (600, 0.05)},
    )
    world = _world(
        [("front", "mid"), ("mid", "store")],
        levels,
        {
            ("store", "memory", "usage"): 6.0,
            ("mid", "latency", "Average"): 0.4,
            ("front", "latency", "Average"): 0.4,
        },
        fault_rows=INCIDENT_ROWS,
        delays={("store", "memory", "usage"): -FAULT_ROW},
    )
    result = _search(world, "latency.average")
    assert _top(result) == "service:mid"
    assert "service:store" not in (_accounted_for(result, "service:mid") or "")


def test_an_alert_on_an_unobserved_signal_is_a_cold_start_when_the_model_is_young() -> None:
    """No alerted series to judge history by: the candidates' series are as young as the model
    (minutes of data), so their young scores count, with the cold start's ceiling."""
    levels = _levels({"front": 0.2, "app": 0.08})
    full = _frame(levels, {("app", "latency", "Average"): 0.4})
    keep = slice(NORMAL_ROWS - 6, NORMAL_ROWS + INCIDENT_ROWS)
    young = Frame(full.timestamps[keep], full.columns, full.values[keep])
    model = new_model([("front", "app")], float(young.timestamps[0]))
    apply_frame(model, young.rows(0, len(young)), "rules", 0)
    t_s = float(young.timestamps[-1]) + INTERVAL_S
    result = CausalSearch(model, SearchConfig()).run([("service:front", None)], t_s)
    assert result.stats["cold_start"] == 1.0
    assert result.causes and result.causes[0].entity == "service:app"
    assert result.stats["model_probability"] <= 0.8 + 1e-9


def test_a_dependency_slow_since_long_before_does_not_explain_a_new_slowdown() -> None:
    """The store has been slow since well before (another incident); the middle service that
    calls it slowed down only now: calls propagate at once, so the store's old slowness is not
    why the middle service changed now."""
    world = _world(
        [("front", "mid"), ("mid", "store")],
        _levels({"front": 0.2, "mid": 0.08, "store": 0.02}),
        {
            ("store", "latency", "Average"): 0.2,
            ("mid", "latency", "Average"): 0.4,
            ("front", "latency", "Average"): 0.4,
        },
        fault_rows=INCIDENT_ROWS,
        delays={("store", "latency", "Average"): -FAULT_ROW},
    )
    result = _search(world, "latency.average")
    assert "service:store" not in (_accounted_for(result, "service:mid") or "")
    assert "service:mid" in [c.entity for c in result.causes]


def test_an_slo_alert_is_not_cut_at_the_end_of_an_earlier_episode() -> None:
    # front failed for one interval two intervals ago and recovered (an earlier incident); app
    # is far slower in the last interval. The alert names no signal worldline receives (an
    # SLO): it says the symptom is going on now, so the window is not cut where front's
    # earlier run ended, and app's deviation at the alert is evidence
    levels = _blip_levels()
    world = _world(
        [("front", "app"), ("front", "other")],
        levels,
        {
            ("front", "availability", "Average"): -3.0,
            ("app", "latency", "Average"): 0.4,
            ("app", "latency", "p50"): 0.4,
            ("app", "latency", "p99"): 0.4,
        },
        fault_rows=1,
        delays={
            ("app", "latency", "Average"): 2,
            ("app", "latency", "p50"): 2,
            ("app", "latency", "p99"): 2,
        },
    )
    model, t_s = world
    result = CausalSearch(model, SearchConfig()).run([("service:front", None)], t_s)
    assert _top(result) == "service:app"
    assert result.causes[0].signal.startswith("latency")


def test_a_candidate_another_accounts_for_has_at_most_the_odds_of_a_coincidence() -> None:
    from jobs.causal.search.model import explained_away

    config = SearchConfig()
    survivors = np.array([0, 1, 2, 3])
    logits = np.array([5.0, 6.0, 3.0, 1.0])
    strength = np.array([10.0, 20.0, 5.0, 2.0])

    def evidence(i: int) -> float:
        return config.w_strength * math.log1p(strength[i])

    # 2 accounts for 0, which accounts for 1; 3 is on its own
    out = explained_away(config, logits, survivors, strength, nx.DiGraph([(0, 1), (2, 0)]))
    assert out[2] == 3.0 and out[3] == 1.0
    assert out[0] == pytest.approx(3.0 - evidence(2))
    assert out[1] == pytest.approx(out[0] - evidence(0))
    # a candidate already less likely keeps its own odds
    kept = explained_away(
        config, np.array([0.5, 6.0]), np.array([0, 1]), strength, nx.DiGraph([(1, 0)])
    )
    assert kept[0] == pytest.approx(0.5)
    # two that would each account for the other are each held against the other's own odds
    out = explained_away(config, logits, survivors, strength, nx.DiGraph([(0, 1), (1, 0)]))
    assert out[0] == pytest.approx(6.0 - evidence(1))
    assert out[1] == pytest.approx(5.0 - evidence(0))
    # one ruled out (not a survivor: entity 7) holds no one below it
    out = explained_away(config, logits, survivors, strength, nx.DiGraph([(7, 1), (2, 0)]))
    assert out[1] == 6.0 and out[0] == pytest.approx(3.0 - evidence(2))


def test_an_undated_alert_is_less_likely_about_a_harm_over_before_it_fired() -> None:
    """An SLO alert: the store's memory jumped far (30 spreads) for two intervals and was back
    to normal ten minutes before the alert; app slowed down with it and is still slow. Alerts
    fire while their harm holds: a harm over before the alert's grace is less likely what it
    fired for, and app ranks first."""
    memory = ("store", "memory", "usage")
    slow = [("app", "latency", "Average"), ("app", "latency", "p50")]
    front = ("front", "latency", "Average")
    levels = _levels({"front": 0.2, "app": 0.08}, {memory: (40.0, 0.005)})
    fault = {memory: 6.0, front: 0.06, **dict.fromkeys(slow, 0.04)}
    # every fault from the incident window's first row to its last
    frame = _frame(levels, fault, fault_rows=INCIDENT_ROWS, delays=dict.fromkeys(fault, -FAULT_ROW))
    frame.values[NORMAL_ROWS + 2 :, frame.columns.index(memory)] -= 6.0
    model = new_model([("front", "app"), ("front", "store")], T0)
    offset = apply_frame(model, frame.rows(0, NORMAL_ROWS), "rules", 0)
    apply_frame(model, frame.rows(NORMAL_ROWS, len(frame)), "rules", offset)
    t_s = float(frame.timestamps[-1]) + INTERVAL_S
    result = CausalSearch(model, SearchConfig()).run([("service:front", None)], t_s)
    assert result.symptom_onset_s is None
    # (weak evidence both, abstained on: the ranking is the point)
    assert result.causes[0].entity == "service:app"
    store = next(c for c in result.causes if c.entity == "service:store")
    over = next(
        e for e in store.evidence if e.get("summary", "").startswith("its evidence was over")
    )
    # back to normal 15 minutes before the alert: 6 minutes beyond the grace (4 minutes and
    # the 5-minute interval its end is known to within)
    assert over["weight"] == pytest.approx(6 * SearchConfig().w_early)
    # without the term, the larger deviation ranks first
    flat = CausalSearch(model, SearchConfig(w_early=0.0)).run([("service:front", None)], t_s)
    assert flat.causes[0].entity == "service:store"


def test_a_cause_is_published_with_the_onset_of_the_deviation_it_is_ranked_by() -> None:
    """app's traffic fell two intervals before its latency rose: it is ranked by its latency,
    and its onset is when that began, not its earliest deviation in the window."""
    requests = ("app", "requests", "Sum")
    slow = [("app", "latency", "Average"), ("app", "latency", "p50"), ("app", "latency", "p99")]
    front = [("front", "latency", "Average"), ("front", "latency", "p99")]
    levels = _levels({"front": 0.2, "app": 0.08})
    fault = {requests: -550.0, **dict.fromkeys(slow, 0.2), **dict.fromkeys(front, 0.2)}
    world = _world(
        [("front", "app")], levels, fault, fault_rows=INCIDENT_ROWS, delays={requests: -2}
    )
    result = _search(world, "latency.average")
    app = next(c for c in result.causes if c.entity == "service:app")
    assert app.signal.startswith("latency")
    ranked = next(e for e in app.evidence if e.get("signal") == app.signal and "weight" in e)
    traffic = next(e for e in app.evidence if e.get("signal", "").startswith("requests"))
    assert traffic["onset"] < ranked["onset"]
    assert app.onset_s is not None and _iso(app.onset_s) == ranked["onset"]
    assert f"from {ranked['onset']}" in app.explanation


def test_how_long_a_harm_held_before_an_undated_alert_counts_in_time_not_intervals() -> None:
    from jobs.causal.search.evidence import EntityEvidence
    from jobs.causal.search.model import terms, total

    config = SearchConfig()
    n = 4
    ents = EntityEvidence(
        best_strength=np.full(n, 10.0),
        onset=np.zeros(n),
        sources=np.ones(n),
        last_dev=np.zeros(n),
        directed=np.ones(n, dtype=bool),
        harm_strength=np.full(n, 10.0),
        felt_strength=np.full(n, 10.0),
        felt_onset=np.zeros(n),
    )
    fired = 100_000.0
    # harms that began 1, 4, 20 and 30 minutes before the alert
    ranked_onset = fired - 60.0 * np.array([1.0, 4.0, 20.0, 30.0])
    names = [f"service:{k}" for k in "abcd"]
    for step_s in (15.0, 60.0, 300.0):
        out = total(
            terms(
                config,
                np.arange(n),
                names,
                dict.fromkeys(names, 1),
                ents,
                np.full(n, 10.0),
                {},
                np.zeros(n),
                None,
                step_s,
                ranked_onset,
                fired,
            )
        )
        # within the grace (4 minutes, and an interval for the onset's uncertainty) nothing
        assert out[0] == out[1], step_s
        # beyond it, w_early per minute, whatever the interval
        assert out[3] - out[2] == pytest.approx(config.w_early * 10), step_s
        assert out[2] < out[1], step_s


def test_a_causes_odds_are_published_term_by_term() -> None:
    # app fails (and slows down), and so does front because of it: each cause carries the terms
    # of its logit, in its explanation and, for the ranked evidence, timing, topology and
    # explaining away, as evidence items with their weight in logits
    world = _failing_app(store_slower=False)
    result = _search(world, "availability.average")
    assert _top(result) == "service:app"
    for cause in result.causes:
        total = cause.explanation.rsplit("(total ", 1)[1].split(")")[0]
        assert float(total) == pytest.approx(cause.logit, abs=0.006), cause.explanation
        weighted = [e for e in cause.evidence if "weight" in e]
        # the ranked series' weight is its surprise: w_strength * log1p(strength)
        ranked = [e for e in weighted if e.get("signal") == cause.signal]
        assert len(ranked) == 1 and ranked[0]["weight"] > 0, cause.evidence
        if "further views" not in cause.explanation:
            # every other term is an item, and what discounts the ranked series one of its
            # discounts: the weights add up to the logit
            discounts = [d["weight"] for e in weighted for d in e.get("discounts", [])]
            total_weight = sum(e["weight"] for e in weighted) + sum(discounts)
            assert total_weight == pytest.approx(cause.logit, abs=0.01)
    app = next(c for c in result.causes if c.entity == "service:app")
    topology = [e for e in app.evidence if e["type"] == "topology"]
    assert topology and topology[0]["summary"] == "1 hop(s) from the symptom"
    assert topology[0]["weight"] == pytest.approx(SearchConfig().w_depth)
    # front is accounted for by app: held below it, and the item says by how much
    front = next(c for c in result.causes if c.entity == "service:front")
    away = [e for e in front.evidence if e["type"] == "explaining_away"]
    assert len(away) == 1 and away[0]["weight"] < 0
    assert front.logit < app.logit


def test_among_rows_at_the_cap_a_cause_is_ranked_by_its_best_timed_one() -> None:
    """Scores at the cap tie: which of them a cause is ranked and published by is decided by
    their timing terms (an undated alert: the one that began later, or is not over), not by
    the order of the series."""
    from types import SimpleNamespace

    from jobs.causal.search.ranking import best_rows

    batch: Any = SimpleNamespace(entities=["service:a", "service:b"], entity=np.array([0, 0, 0, 1]))
    weighted = np.array([30.0, 30.0, 12.0, 5.0])
    timing = np.array([-2.0, 0.0, 0.0, -1.0])  # row 0 began long before the alert
    strength, rows = best_rows(batch, weighted, timing)
    assert rows.tolist() == [1, 3]
    assert strength.tolist() == [30.0, 5.0]
    # without timing (a dated alert): the first of the tied rows
    assert best_rows(batch, weighted)[1].tolist() == [0, 3]
    # a stronger row is the cause row whatever its timing
    weighted[0] = 31.0
    assert best_rows(batch, weighted, timing)[1].tolist() == [0, 3]
