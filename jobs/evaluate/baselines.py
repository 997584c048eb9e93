"""Two published metric-only RCA baselines, reimplemented from their papers' descriptions.

Both take a matrix of normal history (rows = time, columns = metrics; may be None) and the
incident window, and rank every metric; the caller turns metrics into nodes (first appearance).
Neither has a notion of "no cause": on normal data they still rank, so their specificity is 0.

- **N-Sigma** (the classic 3-sigma rule used as an RCA baseline, e.g. in RCAEval): each metric's
  mean and standard deviation over the normal period; its score is the largest
  ``|x - mean| / std`` over the anomalous period.
- **BARO** (Pham, Ha, Zhang, FSE 2024, "BARO: Robust Root Cause Analysis for Microservices via
  Multivariate Bayesian Online Change Point Detection"): a multivariate Bayesian online change
  point detector (Adams & MacKay 2007, constant hazard, conjugate Normal-Gamma model per metric,
  metrics independent given the run length) finds when the anomaly began; each metric's score is
  then the robust z ``|x - median| / IQR`` (median and interquartile range of the part before
  the change point), its largest value over the part after it.

Missing values (NaN) are ignored by the statistics; a metric with no value is ranked last.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

EPS = 1e-9
BARO_CONTEXT_ROWS = 24  # normal rows BARO's change point detector sees before the window
HAZARD_LAMBDA = 50.0  # expected run length (rows) of the constant-hazard prior


def _fill(data: np.ndarray) -> np.ndarray:
    """Forward- then backward-fill NaN per column; columns with no value become 0."""
    out = data.copy()
    for j in range(out.shape[1]):
        col = out[:, j]
        mask = np.isnan(col)
        if not mask.any():
            continue
        if mask.all():
            col[:] = 0.0
            continue
        idx = np.where(~mask, np.arange(len(col)), 0)
        np.maximum.accumulate(idx, out=idx)
        col[:] = col[idx]
        first = int(np.argmax(~mask))
        col[:first] = col[first]
    return out


def bocpd_change_point(data: np.ndarray, hazard_lambda: float = HAZARD_LAMBDA) -> int | None:
    """Row index where the most recent change began, by multivariate BOCPD: the MAP run length
    ``r`` at the last row says the current regime started at ``len - r``. None when the MAP
    answer is "no change" (the regime started at row 0)."""
    x = _fill(np.asarray(data, dtype=np.float64))
    n, d = x.shape
    if n < 3 or d == 0:
        return None
    # robust standardisation so every metric speaks the same units
    med = np.median(x, axis=0)
    q75, q25 = np.percentile(x, [75, 25], axis=0)
    scale = q75 - q25
    std = x.std(axis=0)
    scale = np.where(scale > EPS, scale, np.where(std > EPS, std, 1.0))
    z = (x - med) / scale
    hazard = 1.0 / hazard_lambda
    mu0, kappa0, alpha0, beta0 = 0.0, 1.0, 1.0, 1.0
    mu = np.full((1, d), mu0)
    kappa = np.full((1, 1), kappa0)
    alpha = np.full((1, 1), alpha0)
    beta = np.full((1, d), beta0)
    log_r = np.array([0.0])  # log P(run length | data so far)
    for t in range(n):
        xt = z[t][None, :]
        df = 2.0 * alpha
        var = beta * (kappa + 1.0) / (alpha * kappa)
        # Student-t log density, summed over independent metrics
        log_pred = (
            _lgamma((df + 1) / 2)
            - _lgamma(df / 2)
            - 0.5 * np.log(np.pi * df * var)
            - (df + 1) / 2 * np.log1p((xt - mu) ** 2 / (df * var))
        ).sum(axis=1)
        growth = log_r + log_pred + math.log(1.0 - hazard)
        change = np.logaddexp.reduce(log_r + log_pred) + math.log(hazard)
        log_r = np.concatenate([[change], growth])
        log_r -= np.logaddexp.reduce(log_r)
        # posterior parameters for run lengths 0 (fresh prior) .. t+1
        new_mu = (kappa * mu + xt) / (kappa + 1.0)
        new_beta = beta + kappa * (xt - mu) ** 2 / (2.0 * (kappa + 1.0))
        mu = np.concatenate([np.full((1, d), mu0), new_mu])
        beta = np.concatenate([np.full((1, d), beta0), new_beta])
        kappa = np.concatenate([[[kappa0]], kappa + 1.0])
        alpha = np.concatenate([[[alpha0]], alpha + 0.5])
    run = int(np.argmax(log_r))
    start = n - run
    return None if start <= 0 else start


def _lgamma(a: np.ndarray) -> np.ndarray:
    from scipy.special import gammaln

    return np.asarray(gammaln(a))


def _rank(scores: np.ndarray, labels: Sequence[str]) -> list[tuple[str, float]]:
    scores = np.where(np.isnan(scores), -np.inf, scores)
    order = np.lexsort((np.arange(len(labels)), -scores))  # ties: column order (deterministic)
    return [(labels[i], float(scores[i])) for i in order]


def _split(
    normal: np.ndarray | None, window: np.ndarray, anomalous_from: int
) -> tuple[np.ndarray, np.ndarray]:
    before = window[:anomalous_from]
    history = before if normal is None or len(normal) == 0 else np.concatenate([normal, before])
    return history, window[anomalous_from:]


def nsigma(
    normal: np.ndarray | None,
    window: np.ndarray,
    labels: Sequence[str],
    anomalous_from: int = 2,
) -> list[tuple[str, float]]:
    """Metrics ranked by max |x - mean| / std of the anomalous rows (``window[anomalous_from:]``)
    against the normal rows (the history and the window's rows before it)."""
    ref, anomalous = _split(normal, window, anomalous_from)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(ref, axis=0) if len(ref) else np.full(window.shape[1], np.nan)
        std = np.nanstd(ref, axis=0) if len(ref) else np.full(window.shape[1], np.nan)
        std = np.where(np.isnan(std) | (std < EPS), EPS, std)
        scores = np.nanmax(np.abs(anomalous - mean) / std, axis=0) if len(anomalous) else mean * 0
    return _rank(np.asarray(scores, dtype=np.float64), labels)


def baro(
    normal: np.ndarray | None,
    window: np.ndarray,
    labels: Sequence[str],
    anomalous_from: int = 2,
    context_rows: int = BARO_CONTEXT_ROWS,
) -> list[tuple[str, float]]:
    """BOCPD on the recent normal rows plus the window finds the change point; metrics are ranked
    by max |x - median| / IQR after it against before it. When the detector finds no change
    inside the data it was given, the alert row (``anomalous_from``) is taken as the change."""
    context = (
        normal[-context_rows:]
        if normal is not None and len(normal)
        else np.zeros((0, window.shape[1]))
    )
    data = np.concatenate([context, window])
    change = bocpd_change_point(data)
    if change is None or change >= len(data):
        change = len(context) + anomalous_from
    before, after = data[:change], data[change:]
    if normal is not None and len(normal) > len(context):  # the whole normal history before it
        before = np.concatenate([normal[: len(normal) - len(context)], before])
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if len(before):
            median = np.nanmedian(before, axis=0)
            q75, q25 = np.nanpercentile(before, [75, 25], axis=0)
            iqr = q75 - q25
        else:
            median = np.full(window.shape[1], np.nan)
            iqr = median
        iqr = np.where(np.isnan(iqr) | (iqr < EPS), EPS, iqr)
        scores = np.nanmax(np.abs(after - median) / iqr, axis=0)
    return _rank(np.asarray(scores, dtype=np.float64), labels)
