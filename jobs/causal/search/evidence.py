"""Evidence: the hypotheses as columns (``HypothesisBatch``), each one's peak, onset and
persistence computed for the whole batch at once (``evaluate``), the evidence of each candidate
entity drawn from its rows (``EntityEvidence``), and whether one entity's latency or failures can
account for another's (``_LatencyAccounts``)."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from jobs.causal.search.config import SearchConfig
from jobs.causal.search.signals import LATENCY_LIKE, PEER, _bare, _family, _is_failure, _owner
from pipeline.worldmodel.baseline import SCORE_LIMIT
from pipeline.worldmodel.model import WorldModel


@dataclass
class HypothesisBatch:
    """Columnar hypotheses: row i is (candidate entity, series)."""

    entity: np.ndarray  # int index into ``entities``
    series: list[tuple[str, str]]
    modality: np.ndarray  # 0 traces, 1 logs, 2 metrics
    up_is_bad: np.ndarray  # bool: only increases are harmful (else both directions)
    z: np.ndarray  # (n, window) robust z per interval, nan where unknown
    t0_s: float  # start of the window's first interval
    interval_s: float
    entities: list[str]
    down_is_bad: np.ndarray | None = None  # bool: only decreases are harmful
    # intervals between the alerted series' values when they come sparser than one per interval
    # (5-minute metrics at a 60 s interval: 5): tolerances and recency count in values, not
    # in empty intervals
    spacing: int = 1
    # per row: the share of its learned intervals in which the series began a deviation episode
    # (``SeasonalBaseline.alerts_raised``)
    episode_rate: np.ndarray | None = None

    @property
    def step_s(self) -> float:
        """Event time between the alerted series' values."""
        return self.interval_s * self.spacing

    def __len__(self) -> int:
        return len(self.series)


@dataclass
class Evidence:
    """Per-hypothesis evidence, computed for the whole batch at once."""

    peak: np.ndarray  # signed z at the peak (harmful direction)
    strength: np.ndarray  # |peak| clipped, times persistence
    onset_s: np.ndarray  # nan where the series never deviated
    persistence: np.ndarray
    end_s: np.ndarray | None = None  # start of the last interval of the deviating run
    # the run already deviates at the window's first known interval: older than the window
    chronic: np.ndarray | None = None
    # start of the first calm interval measured after the run: it was over by then; nan while
    # the run lasts to the last value measured (a gap after it is no evidence of calm)
    calm_s: np.ndarray | None = None


def evaluate(batch: HypothesisBatch, config: SearchConfig) -> Evidence:
    """Peak, onset and persistence of every hypothesis, vectorised over the batch."""
    z = batch.z
    n, w = z.shape if z.ndim == 2 else (0, config.window_intervals)
    if n == 0:
        empty = np.zeros(0)
        return Evidence(empty, empty, empty, empty, empty, np.zeros(0, dtype=bool))
    filled = np.nan_to_num(z, nan=0.0)
    harmful = _harmful(batch, filled)
    # the peak is taken among the deviations still going on near the window's end: a run
    # that was over long before (an isolated spike of a low-traffic series) is weighed down
    dev_h = harmful >= config.z_min
    run_end = np.empty((n, w), dtype=np.int64)
    run_end[:, w - 1] = w - 1
    for t in range(w - 2, -1, -1):
        run_end[:, t] = np.where(dev_h[:, t + 1], run_end[:, t + 1], t)
    stale = run_end < w - 1 - config.recent_intervals * batch.spacing
    peak_idx = (harmful * np.where(stale, config.stale_weight, 1.0)).argmax(axis=1)
    rows = np.arange(n)
    peak_z = filled[rows, peak_idx]
    sign = np.sign(peak_z)
    deviating = (np.abs(filled) >= config.z_min) & (np.sign(filled) == sign[:, None])
    idx = np.arange(w)[None, :]
    known = ~np.isnan(z)
    # the run of deviating values around the peak: from the first after the last calm value
    # before it to the last before the first calm value after it. Intervals without a value
    # neither end nor start a run (a series sparser than the interval has gaps between its
    # values; a gap is no evidence of calm)
    calm = known & ~deviating
    calm_before = np.where(calm & (idx <= peak_idx[:, None]), idx, -1).max(axis=1)
    calm_after = np.where(calm & (idx > peak_idx[:, None]), idx, w).min(axis=1)
    start = np.where(deviating & (idx > calm_before[:, None]), idx, w).min(axis=1)
    last = np.where(deviating & (idx < calm_after[:, None]), idx, -1).max(axis=1)
    valid = deviating[rows, peak_idx]
    onset = np.where(valid, batch.t0_s + start * batch.interval_s, np.nan)
    end = np.where(valid, batch.t0_s + last * batch.interval_s, np.nan)
    after = idx >= start[:, None]
    counted = (after & known).sum(axis=1)
    persistence = np.where(
        counted > 0, (deviating & after).sum(axis=1) / np.maximum(counted, 1), 0.0
    )
    strength = np.where(valid, np.minimum(np.abs(peak_z), config.z_cap) * np.sqrt(persistence), 0.0)
    # a run that already deviates at the window's first known interval is older than the window:
    # a chronic condition, not the start of this incident
    first_known = np.where(known, idx, w).min(axis=1)
    chronic = valid & (start <= first_known)
    strength = np.where(chronic, strength * config.chronic_weight, strength)
    strength = np.where(stale[rows, peak_idx], strength * config.stale_weight, strength)
    calm_at = np.where(valid & (calm_after < w), batch.t0_s + calm_after * batch.interval_s, np.nan)
    return Evidence(peak_z, strength, onset, persistence, end, chronic, calm_at)


def _own_mask(batch: HypothesisBatch) -> np.ndarray:
    """Rows that are their entity's own series (not a caller's view of it)."""
    return np.array(
        [
            _owner(series[0]) == batch.entities[k]
            for series, k in zip(batch.series, batch.entity, strict=True)
        ],
        dtype=bool,
    ).reshape(len(batch))


def _in_family(batch: HypothesisBatch, rows: np.ndarray, signal: str | None) -> np.ndarray:
    """``rows`` of the alerted signal's family (all of them when no signal is named)."""
    if signal is None:
        return rows
    family = _family(signal)
    return np.array([r for r in rows if batch.series[r][1].startswith(family)], dtype=np.int64)


def _tolerance(config: SearchConfig, batch: HypothesisBatch) -> float:
    """How much later than another a deviation may begin and still count as simultaneous:
    ``onset_tolerance_s``, and at least the interval an onset is known to within."""
    return max(config.onset_tolerance_s, batch.step_s)


def _harmful(batch: HypothesisBatch, filled: np.ndarray | None = None) -> np.ndarray:
    """Each score in its harmful direction (0 where unknown or harmless); ``filled``: the
    scores with unknown ones as 0, when already at hand."""
    if filled is None:
        filled = np.nan_to_num(batch.z, nan=0.0)
    n = len(batch)
    down = batch.down_is_bad if batch.down_is_bad is not None else np.zeros(n, dtype=bool)
    return np.where(
        batch.up_is_bad[:, None],
        np.maximum(filled, 0.0),
        np.where(down[:, None], np.maximum(-filled, 0.0), np.abs(filled)),
    )


def symptom_spacing(model: WorldModel, symptoms: list[tuple[str, str | None]]) -> int:
    """Intervals between the alerted series' recent values (``SeasonalBaseline.spacing``, the
    sparsest of them): 1 for data at the model's interval."""
    spacing = 1
    for entity, signal in symptoms:
        baseline = model.baselines.get(entity, signal) if signal else None
        if baseline is not None:
            spacing = max(spacing, baseline.spacing)
    return spacing


class _LatencyAccounts:
    """Whether a dependency's deviation can account for a dependent's.

    A dependent that fails needs a dependency that fails (``failures_need_failures``). A slow
    dependent needs a dependency whose latency rose comparably, in absolute units.

    Evidence rows are compared by statistic (``latency_p95_ms`` of ``span.`` and of
    ``edge.{peer=...}`` alike): the dependent's strongest deviating latency row against the
    largest rise of the same statistic among the dependency's rows. Without a common latency
    statistic (or when the dependent is not slow) nothing is decided here."""

    def __init__(
        self, model: WorldModel, batch: HypothesisBatch, ev: Evidence, config: SearchConfig
    ) -> None:
        self.model = model
        self.batch = batch
        self.ev = ev
        self.config = config
        self._excess: dict[tuple[int, bool], float | None] = {}
        n = len(batch)
        # per row: its latency statistic (None: not latency-like), whether it is a latency row
        # and whether it says the entity is slow or fails; per entity: slow, fails
        self.stats = [self.statistic(signal) for _, signal in batch.series]
        self.latency = np.array([s is not None for s in self.stats], dtype=bool).reshape(n)
        failure = np.array([_is_failure(signal) for _, signal in batch.series], dtype=bool).reshape(
            n
        )
        deviating = ev.strength >= config.z_min
        self.slow_rows = deviating & (ev.peak > 0) & self.latency
        n_ent = len(batch.entities)
        self.slow = np.zeros(n_ent, dtype=bool)
        self.fails = np.zeros(n_ent, dtype=bool)
        np.logical_or.at(self.slow, batch.entity, self.slow_rows)
        np.logical_or.at(self.fails, batch.entity, deviating & failure)

    @staticmethod
    def statistic(signal: str) -> str | None:
        if not LATENCY_LIKE.search(signal) or signal.endswith("error_ratio"):
            return None
        # qualifiers go, the statistic after them stays: ``duration{...}.p95`` -> ``duration.p95``
        name = _bare(signal)
        return name.split(".", 1)[1] if name.startswith(("span.", "edge.")) else name

    def excess(self, row: int, below_threshold: bool = False) -> float | None:
        """Absolute rise at the row's peak (peak z times the baseline's spread at its onset);
        with ``below_threshold``, also of a row whose rise stayed under the evidence threshold
        but reached ``small_rise_z`` (its spread at the window's last
        interval): a small rise is still a rise, a rise within the noise is none."""
        key = (row, below_threshold)
        if key not in self._excess:
            value = None
            at = float(self.ev.onset_s[row])
            peak = float(self.ev.peak[row])
            weak = self.config.small_rise_z
            if not math.isfinite(at) and below_threshold and 0 < weak <= peak:
                at = self.batch.t0_s + (self.batch.z.shape[1] - 1) * self.batch.interval_s
            baseline = self.model.baselines.get(*self.batch.series[row])
            if baseline is not None and math.isfinite(at) and peak > 0:
                _, spread, _ = baseline.expected(at)
                if math.isfinite(spread):
                    value = peak * spread
            self._excess[key] = value
        return self._excess[key]

    def rises(self, rows: list[int]) -> dict[str, float]:
        """The largest absolute rise of each latency statistic among ``rows``."""
        out: dict[str, float] = {}
        for r in rows:
            stat = self.stats[r]
            if stat is not None and (x := self.excess(r)) is not None:
                out[stat] = max(out.get(stat, 0.0), x)
        return out

    def can_account(self, row: int, seen: dict[str, float]) -> bool:
        """Whether an entity's own deviating row can account for a rise ``seen`` from outside
        (statistic -> absolute rise, ``rises``): a failure, a statistic not seen, a rise that
        cannot be measured or a score at its limit can; a latency that rose by less than
        ``explain_fraction`` of the same statistic's rise seen cannot."""
        stat = self.stats[row]
        if stat is None or stat not in seen or self.ev.peak[row] >= SCORE_LIMIT:
            return True
        own = self.excess(row)
        return own is None or own >= self.config.explain_fraction * seen[stat]

    def for_(self, dependency: int, dependent: int) -> bool:
        if self.fails[dependency] and self.fails[dependent]:
            return True  # failures account for failures (and for the time spent on them)
        if self.fails[dependent] and self.config.on("failures_need_failures"):
            # a dependency that is only slower does not make its callers fail: had they given
            # up waiting, their calls to it would count as its failures; the dependent's own
            # failures stay unexplained (it may be slow because it fails, retrying)
            return False
        ent = self.batch.entity
        mine = np.flatnonzero((ent == dependent) & self.slow_rows)
        if not len(mine):
            # a dependent that fails without slowing down fails because its dependency
            # fails (errors, availability), not because the dependency is slow: a timeout
            # would have made it wait first
            return not self.fails[dependent] or bool(self.fails[dependency])
        top = int(mine[np.argmax(self.ev.strength[mine])])
        stat = self.stats[top]
        needed = self.excess(top)
        if needed is None or needed <= 0:
            return True
        rows = [int(r) for r in np.flatnonzero(ent == dependency) if self.stats[r] == stat]
        if not rows:
            return True
        if any(self.ev.peak[r] >= SCORE_LIMIT for r in rows):
            # a score kept at its limit says "at least this far": its rise may be any larger
            return True
        return max((x for r in rows if (x := self.excess(r)) is not None), default=0.0) >= (
            self.config.explain_fraction * needed
        )


@dataclass
class EntityEvidence:
    """The evidence of each candidate entity (indexed as ``batch.entities``), drawn from its rows."""

    best_strength: np.ndarray  # its strongest hypothesis
    onset: np.ndarray  # the earliest onset of its strong rows (inf: none)
    # independent views that deviate: modalities (traces, logs, metrics), and callers
    # beyond the first that measure it deviate
    sources: np.ndarray
    last_dev: np.ndarray  # the last interval it was still deviating (strong rows; -inf: never)
    # per row: a signal with a definite harmful direction (latency, errors, saturation,
    # availability...) rather than a two-sided one such as a request rate
    directed: np.ndarray
    harm_strength: np.ndarray  # its strongest directed row
    felt_strength: np.ndarray  # its strongest row of harm its callers feel
    felt_onset: np.ndarray  # the earliest onset of that felt harm (inf: none)


def felt_signal(batch: HypothesisBatch) -> np.ndarray:
    """Per row: a signal of harm a caller feels, latency or failures (not saturation)."""
    return np.array(
        [bool(LATENCY_LIKE.search(sig)) or _is_failure(sig) for _, sig in batch.series],
        dtype=bool,
    ).reshape(len(batch))


def entity_evidence(batch: HypothesisBatch, ev: Evidence, config: SearchConfig) -> EntityEvidence:
    """Entity level: the strongest hypothesis, the earliest strong onset, the modalities, the
    last deviating interval, and how strongly it is harmed in ways its callers feel."""
    n_ent = len(batch.entities)
    ent = batch.entity
    best_strength = np.zeros(n_ent)
    np.maximum.at(best_strength, ent, ev.strength)
    strong = ev.strength >= np.maximum(config.z_min, 0.5 * best_strength[ent])
    onset = np.full(n_ent, np.inf)
    np.minimum.at(onset, ent[strong], np.nan_to_num(ev.onset_s[strong], nan=np.inf))
    modalities = np.zeros((n_ent, 3), dtype=bool)
    deviating = ev.strength >= config.z_min
    modalities[ent[deviating], batch.modality[deviating]] = True
    sources = modalities.sum(axis=1)
    # and each caller beyond the first that measures it deviate: callers see a dependency
    # independently of one another, through their own calls to it
    # ... and, for a caller at fault on its side of its calls (``rules.caller_local`` made its
    # views of its dependencies evidence about it), each dependency beyond the first through
    # whose calls it is seen: its calls to each are measured independently of the others
    observers: dict[int, set[str]] = defaultdict(set)
    through: dict[int, set[str]] = defaultdict(set)
    for r in map(int, np.flatnonzero(deviating)):
        entity, signal = batch.series[r]
        owner = _owner(entity)
        if owner != batch.entities[int(ent[r])]:
            observers[int(ent[r])].add(owner)
        elif (peer := PEER.search(signal)) is not None:
            through[int(ent[r])].add(peer.group(1))
    for k, callers in observers.items():
        sources[k] += len(callers) - 1
    for k, peers in through.items():
        sources[k] += len(peers) - 1
    last_dev = np.full(n_ent, -np.inf)
    ends = ev.end_s if ev.end_s is not None else ev.onset_s
    np.maximum.at(last_dev, ent[strong], np.nan_to_num(ends[strong], nan=-np.inf))
    down = batch.down_is_bad if batch.down_is_bad is not None else np.zeros(len(batch), bool)
    directed = batch.up_is_bad | down
    harm_strength = np.zeros(n_ent)
    np.maximum.at(harm_strength, ent[directed], ev.strength[directed])
    # harm its callers feel: its latency or its failures (its own, or seen on calls to it).
    # Saturation alone (memory, CPU) reaches a dependent only through them
    felt = directed & felt_signal(batch)
    felt_strength = np.zeros(n_ent)
    np.maximum.at(felt_strength, ent[felt], ev.strength[felt])
    felt_rows = felt & (ev.strength >= config.z_min)
    felt_onset = np.full(n_ent, np.inf)
    np.minimum.at(felt_onset, ent[felt_rows], np.nan_to_num(ev.onset_s[felt_rows], nan=np.inf))
    return EntityEvidence(
        best_strength,
        onset,
        sources,
        last_dev,
        directed,
        harm_strength,
        felt_strength,
        felt_onset,
    )
