"""The published top probability: features, the logistic fit, leave-one-dataset-out."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from jobs.causal import calibration
from jobs.causal.calibration import Calibration
from jobs.causal.search import CausalSearch, SearchConfig
from jobs.evaluate import lodo
from tests.causal.test_search import DB, END, FAULT, MIN, T0, _model


def _synthetic(n: int, seed: int, shift: float = 0.0) -> tuple[list[dict[str, float]], list[bool]]:
    """Cases whose truth follows p = sigmoid(0.8 * margin - 1.2 * seen + shift)."""
    rng = np.random.default_rng(seed)
    rows, right = [], []
    for _ in range(n):
        p_model = float(rng.uniform(0.2, 0.999))
        margin = float(rng.uniform(0, 6))
        seen = bool(rng.random() < 0.5)
        row = calibration.features(p_model, margin, 3.0, False, 1, seen, False)
        z = 0.8 * row["cal_margin"] - 1.2 * row["cal_seen"] + shift
        rows.append(row)
        right.append(bool(rng.random() < 1 / (1 + math.exp(-z))))
    return rows, right


def test_features_are_clipped_and_named() -> None:
    row = calibration.features(1.0, None, None, True, 3, False, True)
    assert row == {
        "cal_odds": calibration.ODDS_CLIP,
        "cal_margin": calibration.MARGIN_CLIP,
        "cal_lead": 0.0,
        "cal_capped": 1.0,
        "cal_sources": 2.0,
        "cal_seen": 0.0,
        "cal_cold": 1.0,
    }
    assert calibration.features(0.5, -3.0, 9.0, False, 1, True, False)["cal_margin"] == 0.0
    assert calibration.features(0.5, 1.0, 9.0, False, 1, True, False)["cal_lead"] == pytest.approx(
        math.log(10.0)
    )


def test_the_map_reads_only_its_features() -> None:
    row = calibration.features(0.73, 1.0, 4.0, True, 2, True, False)
    mapping = Calibration(0.2, (0.5, -1.0, 0.3))
    expected = 1 / (1 + math.exp(-(0.2 + 0.5 * 1.0 - 1.0)))
    assert mapping.probability(row) == pytest.approx(expected)
    # what the search measures besides (odds, lead, capped, sources) does not move it
    other = calibration.features(0.2, 1.0, 40.0, False, 5, True, False)
    assert mapping.probability(other) == pytest.approx(expected)
    with pytest.raises(ValueError, match="weights"):
        Calibration(0.0, (1.0,))


def test_the_fit_recovers_the_relation_and_calibrates_held_out_cases() -> None:
    rows, right = _synthetic(4000, seed=1)
    fitted = calibration.fit(rows, right, l2=0.1)
    weights = dict(zip(calibration.FEATURES, fitted.weights, strict=True))
    assert weights["margin"] == pytest.approx(0.8, abs=0.15)
    assert weights["seen"] == pytest.approx(-1.2, abs=0.2)
    test_rows, test_right = _synthetic(2000, seed=2)
    raw = [1 / (1 + math.exp(-r["cal_odds"])) for r in test_rows]
    refit = [fitted.probability(r) for r in test_rows]
    assert calibration.ece(raw, test_right) > 0.2
    assert calibration.ece(refit, test_right) < 0.04


def test_leave_one_out_fits_without_the_held_out_family() -> None:
    datasets = []
    for i, family in enumerate(("simulator", "petshop", "bundle")):
        rows, right = _synthetic(600, seed=10 + i)
        cases = [
            lodo.Case(family, r, y, 1 / (1 + math.exp(-r["cal_odds"])))
            for r, y in zip(rows, right, strict=True)
        ]
        nan = {m: math.nan for m in lodo.METHODS}
        datasets.append(lodo.Dataset(family, family, len(cases), nan, nan, 0.0, 1.0, cases))
    folds, pooled = lodo.leave_one_out(datasets)
    assert [f.family for f in folds] == ["bundle", "petshop", "simulator"]
    assert all(f.n == 600 for f in folds)
    assert all(f.ece_published > 0.2 and f.ece_held_out < 0.06 for f in folds)
    assert pooled < 0.05
    # a family that behaves differently is not fitted when it is held out
    shifted = datasets[:2] + [
        replace(
            datasets[2],
            cases=[replace(c, right=False) for c in datasets[2].cases],
        )
    ]
    folds, _ = lodo.leave_one_out(shifted)
    bundle = next(f for f in folds if f.family == "bundle")
    # every held-out answer is wrong: its ECE is the mean probability the others' fit gives
    mean_p = np.mean([bundle.fitted.probability(c.stats) for c in shifted[2].cases])
    assert bundle.ece_held_out == pytest.approx(mean_p) and mean_p > 0.15


def test_the_search_publishes_the_calibrated_probability() -> None:
    model = _model(
        {
            ("service:checkout", f"edge.latency_p95_ms{{peer={DB}}}"): (FAULT, 6.0),
            ("service:checkout", "span.latency_p95_ms"): (FAULT, 4.0),
            ("service:frontend", "edge.latency_p95_ms{peer=service:checkout}"): (FAULT, 4.0),
            ("service:frontend", "span.latency_p95_ms"): (FAULT + 1, 3.0),
        }
    )
    symptoms = [("service:frontend", "span.latency_p95_ms")]
    default = SearchConfig()
    raw = CausalSearch(model, default).run(symptoms, T0 + END * MIN)
    halved = SearchConfig(calibration=(-math.log(2.0), 0.0, 0.0, 0.0))
    published = CausalSearch(model, halved).run(symptoms, T0 + END * MIN)
    assert [c.entity for c in published.causes] == [c.entity for c in raw.causes]
    p_model = raw.stats["model_probability"]
    assert published.stats["model_probability"] == p_model
    # sigmoid(-log 2) = 1/3 whatever the features: the published top probability
    assert published.causes[0].probability == pytest.approx(1 / 3)
    assert all(c.probability <= 1 / 3 for c in published.causes[1:])
    assert sum(c.probability for c in published.causes) <= 1.0 + 1e-9
    # abstention stays the search's own decision (its model probability is above the bar)
    assert p_model > default.abstain_below and not published.abstained
    assert published.stats["cal_seen"] == 1.0 and published.stats["cal_lead"] > 0.0
    # an abstention publishes the model's own probabilities (those it abstained on), not the
    # map's: the calibration is fitted on answers
    unsure = CausalSearch(model, replace(halved, abstain_below=1.0)).run(symptoms, T0 + END * MIN)
    assert unsure.abstained and unsure.stats["model_probability"] == p_model
    assert unsure.causes[0].probability == pytest.approx(p_model, abs=1e-6)


def test_simulator_runs_without_an_alert_teach_the_calibration_not_the_accuracy() -> None:
    stats = {"cal_odds": 2.0, "cal_margin": 1.0}

    def case(fault: bool, alerted: bool, right: bool) -> dict:
        return {
            "fault": fault,
            "alerted": alerted,
            "hits": [right, right, right],
            "ranked": ["service:x"],
            "abstained": False,
            "probability": 0.9,
            "stats": stats,
            "baselines": {m: {"hits": [False] * 3} for m in lodo.METHODS[1:]},
        }

    doc = {"cases": [case(True, True, True), case(True, False, False), case(False, True, False)]}
    dataset = lodo.from_simulator(doc)
    assert dataset.n == 1 and dataset.top1["worldline"] == 1.0
    assert sorted(c.right for c in dataset.cases) == [False, False, True]
