"""The search's physical rules on metrics-only worlds (a given call graph, 5-minute rows).

Each world: a day and a half of seeded normal rows, then a 5-row incident window whose third
row starts the fault; the alert is on ``front``. Loaded through the PetShop loader, i.e. the
same OTLP -> MetricColumns -> WorldModel path as any metrics source."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jobs.causal.search import CausalSearch, SearchConfig, SearchResult
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


def _world(
    graph: list[tuple[str, str]],
    levels: Levels,
    fault: dict[tuple[str, str, str], float],
    seed: int = 7,
) -> tuple[WorldModel, float]:
    """Learn the normal rows, apply the incident window (``fault`` adds to a column from
    ``FAULT_ROW`` on), return the model and the time to search at."""
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
        values[NORMAL_ROWS + FAULT_ROW :, j] += fault.get(column, 0.0)
    frame = Frame(times, columns, values)
    model = new_model(graph, T0)
    offset = apply_frame(model, frame.rows(0, NORMAL_ROWS), "rules", 0)
    apply_frame(model, frame.rows(NORMAL_ROWS, rows), "rules", offset)
    return model, float(times[-1]) + INTERVAL_S


def _search(world: tuple[WorldModel, float], signal: str, **config: float) -> SearchResult:
    model, t_s = world
    return CausalSearch(model, SearchConfig(symptom_z_min=1.5, **config)).run(
        [("service:front", signal)], t_s
    )


def _top(result: SearchResult) -> str | None:
    return None if result.abstained or not result.causes else result.causes[0].entity


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
    assert not any(
        r.entity == "service:app" and "explained by" in r.reason for r in result.ruled_out
    )
    # with the accounting off (a dependency explains whatever its size), the database wins
    loose = _search(world, "latency.average", explain_fraction=0.0)
    assert _top(loose) == "service:db"


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


def test_inbound_traffic_alone_ranks_below_a_slow_dependency() -> None:
    levels = _levels({"front": 0.2, "app": 0.08, "lambda": 0.05})
    world = _world(
        [("front", "app"), ("front", "lambda")],
        levels,
        {
            ("front", "latency", "Average"): 0.03,
            ("app", "latency", "Average"): 0.03,  # ~9 sigma
            ("app", "latency", "p50"): 0.03,
            ("lambda", "requests", "Sum"): 3000.0,  # 100 sigma more calls, same latency
        },
    )
    result = _search(world, "latency.average")
    assert _top(result) == "service:app"
    assert "service:lambda" in [c.entity for c in result.causes]
    # counted like any other evidence, the far larger traffic deviation would win
    assert _top(_search(world, "latency.average", traffic_weight=1.0)) == "service:lambda"


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
    assert result.causes[0].probability == pytest.approx(0.5, abs=0.01)
    assert not math.isnan(result.causes[0].logit)


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


def test_a_dependency_only_slower_does_not_explain_a_failing_service() -> None:
    # app fails and slows down (it retries its own errors); its object store gets slower at the
    # same time, enough to account for app's slowdown, but nothing fails there
    levels = _levels({"front": 0.2, "app": 0.08, "store": 0.05})
    world = _world(
        [("front", "app"), ("app", "store")],
        levels,
        {
            ("front", "availability", "Average"): -4.0,
            ("app", "availability", "Average"): -8.0,
            ("app", "latency", "Average"): 0.1,
            ("app", "latency", "p50"): 0.1,
            ("store", "latency", "Average"): 0.1,
            ("store", "latency", "p50"): 0.1,
        },
    )
    result = _search(world, "availability.average")
    assert _top(result) == "service:app"
    assert not any(
        r.entity == "service:app" and "explained by" in r.reason for r in result.ruled_out
    )
    # when a slower dependency may explain failures too, the store wins
    assert _top(_search(world, "availability.average", failures_need_failures=False)) == (
        "service:store"
    )
