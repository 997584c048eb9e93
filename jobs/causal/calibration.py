"""The published probability of the top cause: a logistic map from what the search saw.

The search's softmax says how the candidates compare with each other and with "nothing is
wrong" under its own model; how often a top cause with that probability is right depends on
things the softmax does not weigh. ``Calibration`` maps features of a search to the probability
that its top cause is the right one, fitted on labelled incidents (``fit``), and judged on
datasets it was not fitted on (``worldline evaluate lodo``).

The map reads only what carries over between deployments (``FEATURES``): how far the top cause
leads the next one, whether the alerted signal was itself seen deviating, whether the model is
young. The search measures more (``MEASURED``, all published in ``stats``), but those say as
much about the deployment as about the answer: the softmax's absolute odds depend on how
strongly "nothing is wrong" competes with the evidence a system's telemetry can give, the
number of sources on which modalities it sends, a score at the cap on its noise, and how long
before the alert the cause began is weighed by the ranking itself.

The ranking never depends on it; abstention stays the search's own decision (its softmax).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

# what the search measures of its top cause, published in its ``stats``:
#   odds     log-odds of the softmax's top probability (clipped to +-ODDS_CLIP)
#   margin   logit gap to the second candidate over the temperature (MARGIN_CLIP alone)
#   lead     log1p(intervals from the top cause's onset to the alert)
#   capped   its strongest evidence is at the search's score cap (``z_cap``)
#   sources  independent sources (traces, logs, metrics; callers measuring it) beyond the first
#   seen     the alerted signal was itself seen deviating
#   cold     the search was a cold start
MEASURED: tuple[str, ...] = ("odds", "margin", "lead", "capped", "sources", "seen", "cold")
# what the map reads, in the order of ``Calibration.weights``
FEATURES: tuple[str, ...] = ("margin", "seen", "cold")
PREFIX = "cal_"
ODDS_CLIP = 8.0
MARGIN_CLIP = 8.0


@dataclass(frozen=True)
class Calibration:
    """p = sigmoid(intercept + weights . features)."""

    intercept: float
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.weights) != len(FEATURES):
            raise ValueError(
                f"calibration needs {len(FEATURES)} weights ({', '.join(FEATURES)}),"
                f" got {len(self.weights)}"
            )

    @classmethod
    def from_sequence(cls, values: Sequence[float]) -> Calibration:
        return cls(float(values[0]), tuple(float(v) for v in values[1:]))

    def as_sequence(self) -> tuple[float, ...]:
        return (self.intercept, *self.weights)

    def probability(self, features: Mapping[str, float]) -> float:
        z = self.intercept + sum(
            w * float(features.get(PREFIX + name, 0.0))
            for w, name in zip(self.weights, FEATURES, strict=True)
        )
        return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))


def log_odds(probability: float) -> float:
    p = min(max(probability, 1e-12), 1 - 1e-12)
    return max(-ODDS_CLIP, min(ODDS_CLIP, math.log(p / (1 - p))))


def features(
    top_probability: float,
    margin: float | None,
    lead_intervals: float | None,
    capped: bool,
    sources: int,
    seen: bool,
    cold: bool,
) -> dict[str, float]:
    """What the search measured of its top cause (``MEASURED``), as ``stats`` entries."""
    values = {
        "odds": log_odds(top_probability),
        "margin": MARGIN_CLIP if margin is None else max(0.0, min(MARGIN_CLIP, margin)),
        "lead": math.log1p(max(0.0, lead_intervals or 0.0)),
        "capped": float(capped),
        "sources": float(max(0, sources - 1)),
        "seen": float(seen),
        "cold": float(cold),
    }
    return {PREFIX + k: round(v, 6) for k, v in values.items()}


def matrix(rows: Sequence[Mapping[str, float]]) -> np.ndarray:
    return np.array(
        [[float(r.get(PREFIX + name, 0.0)) for name in FEATURES] for r in rows], dtype=float
    ).reshape(len(rows), len(FEATURES))


def fit(
    rows: Sequence[Mapping[str, float]],
    right: Sequence[bool],
    l2: float = 1.0,
    weights: Sequence[float] | None = None,
) -> Calibration:
    """The L2-regularised logistic regression of "the top cause is right" on the features
    (maximum likelihood with a Gaussian prior of variance 1/``l2`` on every weight but the
    intercept; ``weights`` per case, e.g. to give each dataset the same total weight)."""
    x = matrix(rows)
    y = np.asarray(right, dtype=float)
    w = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=float)
    w = w / w.sum()

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        z = theta[0] + x @ theta[1:]
        # log(1 + e^z) - y z, stably
        nll = np.logaddexp(0.0, z) - y * z
        p = 1.0 / (1.0 + np.exp(-z))
        g = w * (p - y)
        value = float(w @ nll) + 0.5 * l2 * float(theta[1:] @ theta[1:]) / len(y)
        grad = np.concatenate([[g.sum()], x.T @ g + l2 * theta[1:] / len(y)])
        return value, grad

    start = np.zeros(len(FEATURES) + 1)
    result = minimize(loss, start, jac=True, method="L-BFGS-B")
    return Calibration.from_sequence([float(v) for v in result.x])


def ece(probabilities: Sequence[float], right: Sequence[bool], bins: int = 10) -> float:
    """Expected calibration error over equal-width bins."""
    p = np.asarray(probabilities, dtype=float)
    if not len(p):
        return math.nan
    ok = np.asarray(right, dtype=float)
    which = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.sum() / len(p) * abs(p[mask].mean() - ok[mask].mean())
    return float(total)
