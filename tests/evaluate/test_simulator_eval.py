"""The simulator suite end to end on a small run: one fault scenario and one fault-free run,
one seed, through simulate -> bundle -> backfill -> alert -> search -> metrics and the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from jobs.causal.calibration import Calibration, features
from jobs.causal.search import SearchConfig
from jobs.evaluate.cli import evaluate
from jobs.evaluate.simulator import Outcome, probabilities, with_probability

pytestmark = [pytest.mark.slow]


def _in_unit(x: float) -> bool:
    return not math.isnan(x) and 0.0 <= x <= 1.0


def test_small_simulator_run(tmp_path: Path) -> None:
    out = tmp_path / "sim.json"
    result = CliRunner().invoke(
        evaluate,
        ["simulator", "--scenario", "database-slowdown", "--seeds", "1", "--json", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert "| fault class |" in result.output and "Specificity" in result.output
    doc = orjson.loads(out.read_bytes())
    assert doc["dataset"] == "simulator" and doc["seeds"] == [1]
    summary = doc["summary"]
    assert summary["cases"] == 2
    [row] = summary["per_class"].values()
    assert row["scenarios"] == ["database-slowdown"] and _in_unit(row["abstention"])
    for method in ("worldline", "baro", "nsigma"):
        for key in ("top1", "top3", "avg5"):
            assert _in_unit(summary["overall"][method][key])
    w = summary["overall"]["worldline"]
    assert w["top1"] <= w["avg5"] + 1e-9 and w["top1"] <= w["top3"]
    cal = summary["calibration"]
    assert _in_unit(cal["ece"]) and cal["n"] == 2
    assert sum(r["n"] for r in cal["reliability"]) == 2
    assert summary["specificity"]["n"] == 1 and _in_unit(summary["specificity"]["worldline"])
    cases = {c["scenario"]: c for c in doc["cases"]}
    assert set(cases) == {"database-slowdown", "normal"}
    db = cases["database-slowdown"]
    assert db["alerted"] and db["hits"][0], db  # the demo's case: the injected database first
    assert set(db["baselines"]) == {"baro", "nsigma"}
    assert _in_unit(db["probability"])


def test_the_size_of_the_simulated_system_is_an_option() -> None:
    from jobs.evaluate.simulator import SuiteConfig

    assert SuiteConfig(services=40).run("normal", 1).services == 40
    refused = CliRunner().invoke(evaluate, ["simulator", "--services", "5"])
    assert refused.exit_code == 2 and "10<=x<=500" in refused.output, refused.output


def test_the_settled_answer_waits_for_the_alerts_interval_to_close() -> None:
    from jobs.evaluate.simulator import SETTLE_SLACK_S, settled_ms
    from pipeline.worldmodel.model import WorldModelConfig

    config = WorldModelConfig()
    start = 1_795_138_800.0  # an interval boundary (1-minute intervals)
    # an alert starting 20 s into an interval, notified at once: answered once the interval
    # has ended, the allowed lateness has passed and telemetry moved the watermark on
    expected = start + config.interval_s + config.allowed_lateness_s + SETTLE_SLACK_S
    assert settled_ms(int((start + 20) * 1000), start + 20) == int(expected * 1000)
    # notified long after its interval closed: answered at notification
    late_ms = int((start + 600) * 1000)
    assert settled_ms(late_ms, start + 20) == late_ms


def test_a_refitted_temperature_recomputes_the_margin_the_map_reads() -> None:
    logits = [6.0, 4.0, 1.0]
    stats = features(0.9, (logits[0] - logits[1]) / 0.5, 2.0, False, 1, True, False)
    case = Outcome(
        "s",
        1,
        "c",
        True,
        True,
        ["a", "b", "c"],
        logits,
        0.9,
        False,
        None,
        [True] * 5,
        {},
        {},
        stats,
    )
    mapping = (0.1, 0.5, -0.4, 0.0)
    config = SearchConfig(temperature=2.0, null_logit=3.0, calibration=mapping)
    (out,) = with_probability([case], config)
    raw = float(probabilities(logits, 2.0, 3.0)[0])
    expected = Calibration.from_sequence(mapping).probability(
        features(raw, (logits[0] - logits[1]) / 2.0, None, False, 1, True, False)
    )
    assert out.probability == pytest.approx(expected)
    # at the search's own temperature the margin it published stands
    (same,) = with_probability([case], SearchConfig(temperature=0.5, calibration=mapping))
    assert same.probability == pytest.approx(Calibration.from_sequence(mapping).probability(stats))
