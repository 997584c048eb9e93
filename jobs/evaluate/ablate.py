"""Every rule and weight of the causal search turned off in turn, scored on every dataset family.

A rule or constant of the search is kept only when it holds or improves accuracy on every
dataset family: one that helps the data it was chosen on and costs another is fitted to that
data. ``ablate`` answers, for each of ``RULES`` (and any ``--vary name=value``), what turning it
off does to top-1 on each family next to the default configuration, from the same prepared
cases:

- the simulator, one column per realism mode (cases prepared once, ``--cache`` keeps them);
- PetShop, every issue (train and test);
- a replay bundle offline in event time, first records (each variant searches the same view of
  the model as the default at every alert, so the stream is read once).

Top-1 counts an abstention as a miss, as the replay does. The verdict says what the figures say
about the rule: ``needed`` (off, it costs some family and helps none), ``no effect``, ``mixed``
(off, it costs one family and helps another: fitted to one of them) or ``harmful`` (off, it helps
some family and costs none).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jobs.causal.search import SearchConfig
from jobs.causal.search.config import RULES as search_rules
from jobs.evaluate import petshop, simulator

RULES: tuple[tuple[str, Any], ...] = (
    # the rules of the search (``SearchConfig.off``), each off
    *(("off", rule) for rule in search_rules),
    # thresholds of rules, zero
    ("explain_fraction", 0.0),
    ("small_rise_z", 0.0),
    # ranking weights, zero
    ("w_sources", 0.0),
    ("w_change", 0.0),
    ("w_depth", 0.0),
    ("w_explains", 0.0),
    ("w_off_graph", 0.0),
    ("w_late", 0.0),
    ("w_early", 0.0),
    # down-weighting, none
    ("standing_weight", 1.0),
    ("traffic_weight", 1.0),
    ("chronic_weight", 1.0),
    ("stale_weight", 1.0),
    ("episode_rate_ref", 0.0),
)
DEFAULT = "default"
TOLERANCE = 1e-9


def parse_variant(text: str, base: SearchConfig | None = None) -> tuple[str, dict[str, Any]]:
    """``name=value`` as a variant of ``base``: the value in the field's own type."""
    base = base or SearchConfig()
    name, sep, raw = text.partition("=")
    name = name.strip()
    fields = {f.name for f in dataclasses.fields(SearchConfig)}
    if not sep or name not in fields:
        raise ValueError(f"expected name=value with a SearchConfig field name, got {text!r}")
    current = getattr(base, name)
    value: Any
    if name == "off":
        # rules turned off, besides those the base turns off
        value = (*base.off, *(r.strip() for r in raw.split(",") if r.strip()))
        SearchConfig(off=value)  # names only rules of the search
    elif isinstance(current, bool):
        if raw.lower() not in ("true", "false"):
            raise ValueError(f"{name} takes true or false, got {raw!r}")
        value = raw.lower() == "true"
    elif isinstance(current, int):
        value = int(raw)
    elif isinstance(current, float):
        value = float(raw)
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {raw!r}")
    else:
        raise ValueError(f"{name} cannot be varied here ({type(current).__name__})")
    return f"{name}={raw}", {name: value}


def variants(
    extra: Sequence[str] = (), rules: bool = True, base: SearchConfig | None = None
) -> dict[str, SearchConfig]:
    """The default and each variant: ``RULES`` (when ``rules``) then ``extra``."""
    base = base or SearchConfig()
    out = {DEFAULT: base}
    for name, value in RULES if rules else ():
        if name == "off":
            if base.on(value):
                out[f"off={value}"] = dataclasses.replace(base, off=(*base.off, value))
        elif getattr(base, name) != value:
            out[f"{name}={value}"] = dataclasses.replace(base, **{name: value})
    for text in extra:
        label, change = parse_variant(text, base)
        out[label] = dataclasses.replace(base, **change)
    return out


@dataclass
class Ablation:
    """Top-1 (and top-3, specificity where there are fault-free cases) per family per variant."""

    families: list[str] = field(default_factory=list)
    top1: dict[str, dict[str, float]] = field(default_factory=dict)  # variant -> family -> top-1
    top3: dict[str, dict[str, float]] = field(default_factory=dict)
    specificity: dict[str, dict[str, float]] = field(default_factory=dict)

    def add(
        self, family: str, variant: str, top1: float, top3: float, spec: float = math.nan
    ) -> None:
        if family not in self.families:
            self.families.append(family)
        self.top1.setdefault(variant, {})[family] = top1
        self.top3.setdefault(variant, {})[family] = top3
        self.specificity.setdefault(variant, {})[family] = spec

    def verdict(self, variant: str) -> str:
        """What turning the rule off does, family by family (top-1, then specificity)."""
        worse = better = False
        for family in self.families:
            for table in (self.top1, self.specificity):
                base = table[DEFAULT].get(family, math.nan)
                off = table[variant].get(family, math.nan)
                if math.isnan(base) or math.isnan(off):
                    continue
                worse |= off < base - TOLERANCE
                better |= off > base + TOLERANCE
        if worse and better:
            return "mixed"
        if worse:
            return "needed"
        return "harmful" if better else "no effect"

    def to_json(self) -> dict[str, Any]:
        return {
            "families": self.families,
            "top1": self.top1,
            "top3": self.top3,
            "specificity": self.specificity,
            "verdicts": {v: self.verdict(v) for v in self.top1 if v != DEFAULT},
        }


def simulator_family(
    ablation: Ablation,
    configs: Mapping[str, SearchConfig],
    modes: Sequence[str],
    seeds: Sequence[int],
    cache: Path | None,
    on_case: Callable[[str], None] = lambda _k: None,
) -> None:
    for mode in modes:
        suite = simulator.SuiteConfig(realism=mode)
        cases = simulator.prepare_all(
            list(simulator.FAULT_SCENARIOS),
            seeds,
            suite,
            cache=cache and cache / mode,
            on_case=on_case,
        )
        for name, config in configs.items():
            outs = [simulator.score(p, config) for p in cases]
            faults = [o for o in outs if o.fault and o.alerted]
            normals = [o for o in outs if not o.fault]
            ablation.add(
                f"simulator {mode}",
                name,
                _mean([o.hits[0] and not o.abstained for o in faults]),
                _mean([o.hits[2] and not o.abstained for o in faults]),
                _mean([not o.named_cause for o in normals]),
            )


def petshop_family(
    ablation: Ablation,
    configs: Mapping[str, SearchConfig],
    data: Path,
    on_case: Callable[[str], None] = lambda _k: None,
) -> None:
    scenarios = [petshop.load_scenario(data, n) for n in petshop.discover_scenarios(data)]
    for name, config in configs.items():
        cases: list[petshop.CaseResult] = []
        normals: list[petshop.NormalResult] = []
        for scenario in scenarios:
            c, n = petshop.run_scenario(scenario, ("train", "test"), config=config, on_case=on_case)
            cases += c
            normals += n
        # an abstained answer ranks nothing (``petshop.worldline_answer``): a miss
        ablation.add(
            "petshop",
            name,
            petshop.recall_at(cases, "worldline", 1),
            petshop.recall_at(cases, "worldline", 3),
            petshop.specificity(normals, "worldline"),
        )


def bundle_family(
    ablation: Ablation,
    configs: Mapping[str, SearchConfig],
    bundle: Path,
    progress: Callable[[str], None] = lambda _m: None,
) -> None:
    from jobs.evaluate.bundle import evaluate_bundle

    others = {k: v for k, v in configs.items() if k != DEFAULT}
    run = evaluate_bundle(
        bundle, config=configs[DEFAULT], baselines=(), variants=others, progress=progress
    )
    family = f"bundle {bundle.name}"
    scores = {DEFAULT: run.scores["worldline"]["first"], **run.variant_scores}
    for name, score in scores.items():
        s = score["all"]
        ablation.add(family, name, float(s["AS@1"]), float(s["AS@3"]))


def render(ablation: Ablation) -> str:
    """Top-1 per family: the default's, then each variant's change from it, and its verdict."""
    fams = ablation.families
    head = "| variant (rule off) | " + " | ".join(fams) + " | verdict |"
    lines = [head, "|" + "---|" * (len(fams) + 2)]
    base = ablation.top1[DEFAULT]
    lines.append(f"| {DEFAULT} (top-1) | " + " | ".join(f"{base[f]:.2f}" for f in fams) + " | |")
    for name, row in ablation.top1.items():
        if name == DEFAULT:
            continue
        cells = []
        for f in fams:
            delta = row[f] - base[f]
            spec = ablation.specificity[name].get(f, math.nan)
            spec_base = ablation.specificity[DEFAULT].get(f, math.nan)
            text = "0" if abs(delta) < TOLERANCE else f"{delta:+.2f}"
            if (
                not (math.isnan(spec) or math.isnan(spec_base))
                and abs(spec - spec_base) > TOLERANCE
            ):
                text += f" (spec {spec - spec_base:+.2f})"
            cells.append(text)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ablation.verdict(name)} |")
    return "\n".join(lines)


def _mean(xs: Sequence[bool]) -> float:
    return float(np.mean(xs)) if len(xs) else math.nan
