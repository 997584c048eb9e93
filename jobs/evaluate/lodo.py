"""Every dataset side by side, and the calibration judged leave-one-dataset-out.

Reads what ``worldline evaluate simulator|petshop|bundle --json`` wrote: each case's answer,
its calibration features (``jobs.causal.calibration``, in the search's ``stats``) and whether
its top cause was right. For each dataset family in turn, the calibration is fitted on the
other families (each family weighing the same in the fit) and scored on the one left out; the
held-out probabilities of all folds are pooled for one ECE. The fit on every family is the one
to ship (``SearchConfig.calibration``).

ECE is measured where a cause is published: answered (not abstained) cases that name one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jobs.causal import calibration
from jobs.causal.calibration import Calibration
from jobs.evaluate.bundle import read_jsonl, read_manifest, services_named

METHODS = ("worldline", "baro", "nsigma")


@dataclass
class Case:
    """One published answer: its features and whether its top cause was right."""

    family: str
    stats: dict[str, float]
    right: bool
    probability: float


@dataclass
class Dataset:
    """One dataset's scores (fault cases; specificity on fault-free alerts) and its cases."""

    family: str
    name: str
    n: int
    top1: dict[str, float]
    top3: dict[str, float]
    abstain: float
    specificity: float
    cases: list[Case] = field(default_factory=list)

    @property
    def ece(self) -> float:
        return calibration.ece([c.probability for c in self.cases], [c.right for c in self.cases])


def _mean(xs: Sequence[float]) -> float:
    return float(np.mean(xs)) if len(xs) else math.nan


def _calibrated(stats: dict[str, Any]) -> bool:
    return calibration.PREFIX + "odds" in stats


def from_simulator(doc: dict[str, Any]) -> Dataset:
    """``worldline evaluate simulator --json``: alerted fault runs and fault-free runs."""
    realism = doc.get("suite", {}).get("realism", "full")
    faults = [c for c in doc["cases"] if c.get("fault", True) and c["alerted"]]
    normals = [c for c in doc["cases"] if not c.get("fault", True)]
    top1 = {"worldline": _mean([float(c["hits"][0] and not c["abstained"]) for c in faults])}
    top3 = {"worldline": _mean([float(any(c["hits"][:3]) and not c["abstained"]) for c in faults])}
    for m in METHODS[1:]:
        top1[m] = _mean([float(c["baselines"][m]["hits"][0]) for c in faults])
        top3[m] = _mean([float(any(c["baselines"][m]["hits"][:3])) for c in faults])
    # the calibration learns from every answer the search gave, the fault runs where no alert
    # fired included (searched on the gateway's latency after the onset): accuracy is scored
    # on alerted runs, but what a doubtful answer looks like is in all of them
    searched = [c for c in doc["cases"] if c.get("fault", True)]
    cases = [
        Case("simulator", c["stats"], bool(c.get("fault", True) and c["hits"][0]), c["probability"])
        for c in searched + normals
        if c["ranked"] and not c["abstained"] and _calibrated(c.get("stats", {}))
    ]
    return Dataset(
        "simulator",
        f"simulator ({realism})",
        len(faults),
        top1,
        top3,
        _mean([float(c["abstained"]) for c in faults]),
        _mean([float(not c["ranked"] or c["abstained"]) for c in normals]),
        cases,
    )


def from_petshop(doc: dict[str, Any]) -> Dataset:
    """``worldline evaluate petshop --json``: issues of the split it ran, and normal windows."""
    cases: list[Case] = []
    top1: dict[str, list[float]] = {m: [] for m in METHODS}
    top3: dict[str, list[float]] = {m: [] for m in METHODS}
    abstained: list[float] = []
    for c in doc["cases"]:
        truth = c["root_cause"]
        for m in METHODS:
            ranked = c["answers"][m]["ranked"]
            top1[m].append(float(ranked[:1] == [truth]))
            top3[m].append(float(truth in ranked[:3]))
        answer = c["answers"]["worldline"]
        abstained.append(float(not answer["ranked"]))
        if answer["ranked"] and _calibrated(answer.get("stats", {})):
            cases.append(
                Case(
                    "petshop", answer["stats"], answer["ranked"][0] == truth, answer["probability"]
                )
            )
    normals = doc.get("normal", [])
    return Dataset(
        "petshop",
        f"PetShop ({doc.get('split', 'test')})",
        len(doc["cases"]),
        {m: _mean(v) for m, v in top1.items()},
        {m: _mean(v) for m, v in top3.items()},
        _mean(abstained),
        _mean([float(not n["answers"]["worldline"]) for n in normals]),
        cases,
    )


def from_bundle(doc: dict[str, Any], bundle: Path | None = None) -> Dataset:
    """``worldline evaluate bundle --json``: the first record of every labelled alert."""
    path = bundle or Path(doc["bundle"])
    labels = read_jsonl(path / "labels.jsonl")
    pod_to_service = dict(read_manifest(path).get("entities", {}).get("pod_to_service", {}))
    top1: dict[str, list[float]] = {m: [] for m in METHODS}
    top3: dict[str, list[float]] = {m: [] for m in METHODS}
    abstained: list[float] = []
    cases: list[Case] = []
    for label in labels:
        truth = label["root_cause_service"]
        for m in METHODS:
            record = doc["answers"].get(m, {}).get("first", {}).get(label["alert_fingerprint"])
            named = services_named(record, pod_to_service)
            answered = record is not None and not record.get("abstained")
            top1[m].append(float(answered and named[:1] == [truth]))
            top3[m].append(float(answered and truth in named[:3]))
            if m == "worldline":
                abstained.append(float(not answered))
                if answered and named and _calibrated(record.get("stats", {})):
                    cases.append(
                        Case(
                            "bundle",
                            record["stats"],
                            named[0] == truth,
                            record["causes"][0]["probability"],
                        )
                    )
    return Dataset(
        "bundle",
        f"replay bundle {path.name}",
        len(labels),
        {m: _mean(v) for m, v in top1.items()},
        {m: _mean(v) for m, v in top3.items()},
        _mean(abstained),
        math.nan,
        cases,
    )


@dataclass
class Fold:
    family: str
    n: int
    ece_published: float  # the probabilities as the search published them
    ece_held_out: float  # refitted without this family
    fitted: Calibration


def leave_one_out(datasets: Sequence[Dataset], l2: float = 1.0) -> tuple[list[Fold], float]:
    """One fold per family; the pooled ECE of every fold's held-out probabilities."""
    cases = [c for d in datasets for c in d.cases]
    families = sorted({c.family for c in cases})
    folds, pooled_p, pooled_y = [], [], []
    for family in families:
        train = [c for c in cases if c.family != family]
        test = [c for c in cases if c.family == family]
        if not train or not test:
            continue
        fitted = fit_balanced(train, l2)
        p = [fitted.probability(c.stats) for c in test]
        y = [c.right for c in test]
        pooled_p += p
        pooled_y += y
        published = calibration.ece([c.probability for c in test], y)
        folds.append(Fold(family, len(test), published, calibration.ece(p, y), fitted))
    return folds, calibration.ece(pooled_p, pooled_y)


def fit_balanced(cases: Sequence[Case], l2: float = 1.0) -> Calibration:
    """The calibration fitted on ``cases``, each family weighing the same in total."""
    count: dict[str, int] = {}
    for c in cases:
        count[c.family] = count.get(c.family, 0) + 1
    return calibration.fit(
        [c.stats for c in cases],
        [c.right for c in cases],
        l2=l2,
        weights=[1.0 / count[c.family] for c in cases],
    )


def _f(x: float) -> str:
    return "–" if x is None or math.isnan(x) else f"{x:.2f}"


def render(datasets: Sequence[Dataset], folds: Sequence[Fold], pooled: float, l2: float) -> str:
    lines = [
        "| dataset | n | top-1 | top-3 | abstain | specificity | ECE | BARO top-1 | top-3"
        " | N-Sigma top-1 | top-3 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for d in datasets:
        lines.append(
            f"| {d.name} | {d.n} | {_f(d.top1['worldline'])} | {_f(d.top3['worldline'])}"
            f" | {_f(d.abstain)} | {_f(d.specificity)} | {_f(d.ece)} | {_f(d.top1['baro'])}"
            f" | {_f(d.top3['baro'])} | {_f(d.top1['nsigma'])} | {_f(d.top3['nsigma'])} |"
        )
    lines += [
        "",
        f"Calibration left one dataset family out (fitted on the others, L2 {l2:g};"
        " ECE over published answers):",
        "",
        "| held-out family | n | ECE as published | ECE held out |",
        "|---|---|---|---|",
    ]
    for f in folds:
        lines.append(f"| {f.family} | {f.n} | {_f(f.ece_published)} | {_f(f.ece_held_out)} |")
    lines.append(f"| **pooled held-out** | {sum(f.n for f in folds)} | | {pooled:.3f} |")
    all_cases = [c for d in datasets for c in d.cases]
    if all_cases:
        shipped = fit_balanced(all_cases, l2)
        lines += [
            "",
            "Fitted on every family (`SearchConfig.calibration`: intercept, then "
            + ", ".join(calibration.FEATURES)
            + "):",
            "",
            "    (" + ", ".join(f"{v:.3f}" for v in shipped.as_sequence()) + ")",
        ]
    return "\n".join(lines)
