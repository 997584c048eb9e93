from __future__ import annotations

import math
from pathlib import Path

import pytest

from jobs.causal.search import SearchConfig
from jobs.causal.search.config import RULES
from jobs.evaluate import ablate
from jobs.evaluate.ablate import DEFAULT, Ablation
from tests.evaluate.test_bundle_eval import _bundle


def test_variants_turn_each_rule_off_and_parse_extra_ones() -> None:
    configs = ablate.variants(["w_depth=0.3", "off=cold_start", "warmup_intervals=5"])
    assert configs[DEFAULT] == SearchConfig()
    assert configs["w_depth=0.3"].w_depth == 0.3
    assert configs["off=cold_start"].on("cold_start") is False
    assert configs["warmup_intervals=5"].warmup_intervals == 5
    assert configs["standing_weight=1.0"].standing_weight == 1.0
    # every rule of the search is turned off in turn, and differs from the default in that
    # rule only
    assert {k for k in configs if k.startswith("off=")} == {f"off={r}" for r in RULES}
    off = configs["off=failures_need_failures"]
    assert not off.on("failures_need_failures") and off.on("cold_start")
    assert off == SearchConfig(off=("failures_need_failures",))
    assert len(ablate.variants([], rules=False)) == 1


@pytest.mark.parametrize("text", ["nope=1", "w_depth", "off=maybe", "w_depth=nan", "calibration=1"])
def test_a_bad_variant_is_refused_with_its_reason(text: str) -> None:
    with pytest.raises(ValueError):
        ablate.parse_variant(text)


def test_verdicts_read_every_family_and_specificity() -> None:
    result = Ablation()
    for family, base in (("a", 0.8), ("b", 0.6)):
        result.add(family, DEFAULT, base, base, 1.0)
    result.add("a", "needed", 0.7, 0.7, 1.0)
    result.add("b", "needed", 0.6, 0.6, 1.0)
    result.add("a", "mixed", 0.9, 0.9, 1.0)
    result.add("b", "mixed", 0.5, 0.5, 1.0)
    result.add("a", "harmful", 0.9, 0.9, 1.0)
    result.add("b", "harmful", 0.6, 0.6, 1.0)
    result.add("a", "nothing", 0.8, 0.8, 1.0)
    result.add("b", "nothing", 0.6, 0.6, math.nan)
    # a rule that keeps fault-free alerts unanswered is needed even when top-1 is equal
    result.add("a", "specific", 0.8, 0.8, 0.5)
    result.add("b", "specific", 0.6, 0.6, 1.0)
    assert {v: result.verdict(v) for v in result.top1 if v != DEFAULT} == {
        "needed": "needed",
        "mixed": "mixed",
        "harmful": "harmful",
        "nothing": "no effect",
        "specific": "needed",
    }
    table = ablate.render(result)
    assert "| default (top-1) | 0.80 | 0.60 | |" in table
    assert "| mixed | +0.10 | -0.10 | mixed |" in table
    assert "| specific | 0 (spec -0.50) | 0 | needed |" in table


def test_a_bundle_variant_searches_the_same_views_as_the_default(tmp_path: Path) -> None:
    fingerprint, _ = _bundle(tmp_path)
    result = Ablation()
    configs = {
        DEFAULT: SearchConfig(),
        "same": SearchConfig(),
        "never": SearchConfig(abstain_below=1.1),  # abstains on everything
    }
    ablate.bundle_family(result, configs, tmp_path)
    family = f"bundle {tmp_path.name}"
    assert result.top1["same"][family] == result.top1[DEFAULT][family]
    assert result.top1["never"][family] == 0.0
