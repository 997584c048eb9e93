"""Online, event-time, bounded baselines per (entity, signal).

Pure core: every verb takes event time and data as arguments; nothing here reads the clock, the
environment or global state, so a replay and the live stream learn the same thing.

One series (``SeasonalBaseline``) works on fixed event-time intervals (default 60 s). Values that
land in the same interval are averaged; the interval is *learned* once a value for a later interval
arrives or ``flush(now)`` is called with a watermark past its end. Learning an interval:

1. Expectation, by the best tier the history supports:
   ``week``   the same hour of the week, learned over past weeks (week-over-week comparison);
   ``day``    the hour-of-day profile (mean over the weekdays seen so far at that hour);
   ``global`` a fast EWMA level, before one day of history exists.
   Hourly levels are interpolated linearly between hour centres, plus a slow ``offset`` (EWMA of
   the residual against the seasonal profile) that follows drift within the day.
2. Spread: an EWMA of the absolute residual (a mean absolute deviation, turned into a
   sigma-equivalent), times a per-hour-of-day shape, widened while warming up and on the coarser
   tiers (fewer false alarms early, honestly). A series that counts events (``count_scale`` > 0,
   e.g. a rate per second over the interval) never has a spread below its counting noise,
   ``sqrt(max(expected count, 1)) / count_scale``: a rare event's history of mostly-zero
   intervals has a near-zero spread, yet one or two events in an interval are not a deviation.
   A value may bring its own ``exposure`` (the same factor, per value: an error ratio's request
   count ``n``, so its floor is ``sqrt(max(n p, 1)) / n``, the binomial noise of a small
   proportion ``p``, never finer than one event in ``n``), which overrides ``count_scale``; and
   its ``resolution``, the step in which it is known (a quantile interpolated within a histogram
   bucket is only known to lie in that bucket: the bucket's width). The spread is never below
   the series' typical resolution (an EWMA of its values' resolutions, frozen during a
   deviation): moving by one bucket is one sigma, as one event is for a count.
3. Score: ``z = (value - expected) / spread``, direction is its sign. The first value is not
   scored (nothing to compare it with). The second has a level but no learned spread: it is
   scored against a prior, ``prior_spread_relative`` of the level (widened for youth as a
   learned spread would be), or the counting noise when that is wider, and its score is clipped
   to ``z_clip``: a prior says how large a normal change is, not how far beyond normal this one
   is. A series whose level is 0, that counts no events and has no resolution has no prior:
   its second value is not scored.
4. Onset: a two-sided CUSUM on clipped z decides that a deviation is sustained ("alert-worthy");
   its start is then estimated from a ring of the last 32 residuals by the best single change
   point (step or ramp, least squares), falling back to where the CUSUM run began.
5. Learning is winsorized (values clipped to ``expected +- c * spread``, with a much tighter ``c``
   while a deviation is in progress, and the spread frozen), so an incident does not quickly
   become the new normal.

State per series is ~1 KB when serialized (see ``SeasonalBaseline.to_bytes``; measured in tests)
and ~2.3 KB in memory (packed arrays; the float32 hour-of-week levels are 672 B of it).
``BaselineStore`` holds many series under a hard cap; every refused update is counted by reason.

Why not ``river``: river's ``stats.EWMean`` / ``drift.PageHinkley`` are the same recurrences, but
each is a Python object graph with no bytes snapshot (only pickle) and several hundred bytes of
overhead per statistic; a series here needs ~200 statistics in <= 1 KB, so they are kept as
packed arrays instead. The tests cross-check the recurrences against numpy offline.
"""

from __future__ import annotations

import math
import struct
import zlib
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Literal, Protocol

import numpy as np

Tier = Literal["global", "day", "week"]
SeriesKey = tuple[str, str]

HOURS_PER_DAY = 24
HOURS_PER_WEEK = 168
SECONDS_PER_HOUR = 3600.0
ONSET_RING_LENGTH = 32
MAX_BUCKET_COUNT = 15  # hour-of-week observation counts are packed in 4 bits
_RING_STEPS_PER_SIGMA = 4.0  # residuals are stored as int8 quarter-sigmas (+-31.75)
_RING_MISSING = -128
SCORE_LIMIT = 127 / _RING_STEPS_PER_SIGMA
"""Recent scores are kept to this magnitude: a score at it says "at least this far"."""
_MAD_TO_SIGMA = math.sqrt(math.pi / 2.0)  # E|X| = sigma * sqrt(2/pi) for a normal X
_NONE_INDEX = -(2**63)
_NAN_DAY = [math.nan] * 24
_ONES_DAY = [1.0] * 24
_EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday; Monday = 0
# config fields that only change how a value is scored, never what is learned: a snapshot
# written under one value restores under another
_SCORING_ONLY = frozenset({"prior_spread_relative"})


@dataclass(frozen=True, slots=True)
class BaselineConfig:
    """Tuning for every series of a store. Part of the snapshot's identity (``fingerprint``)."""

    interval_s: float = 60.0
    utc_offset_s: float = 0.0  # shifts hour-of-day / day-of-week to a local time zone
    # EWMA memories in event-time seconds (alpha = interval_s / memory), so behaviour does not
    # depend on the interval length
    level_memory_s: float = 1800.0  # global-tier level, before a day of history exists
    scale_memory_s: float = 86400.0  # |residual| scale
    shape_memory_s: float = 3600.0  # per-hour-of-day spread shape (~1 day of that hour)
    offset_memory_s: float = 7200.0  # drift of the level against the seasonal profile
    week_alpha_min: float = 0.25  # hour-of-week buckets: running mean, then EWMA over ~4 weeks
    winsorize_z: float = 4.0
    winsorize_z_in_deviation: float = 1.5
    z_clip: float = 6.0  # a single interval adds at most z_clip - slack to the CUSUM
    cusum_slack: float = 1.0
    cusum_threshold: float = 8.0
    cusum_cap: float = 12.0  # bounds how long an alert outlives its cause
    min_intervals_to_alert: int = 30
    # values are winsorized around the expectation from this many learned intervals on (not
    # only once alerting starts): an incident early in a series' life bends its level and
    # spread by at most ``winsorize_z`` spreads per interval
    winsorize_after: int = 4
    warmup_spread_gain: float = 2.0  # spread * (1 + gain / sqrt(intervals learned))
    tier_spread_global: float = 1.5
    tier_spread_day: float = 1.2
    min_spread_relative: float = 0.005
    min_spread_absolute: float = 1e-9
    # the spread assumed, relative to the level, for the second value a series ever has (the
    # first has set the level, no spread is learned yet). Scoring only: not in the fingerprint.
    # Series measured normal vary by this order from interval to interval (the median robust
    # relative change of a latency series on PetShop's normal data: average 0.07, p95 0.12);
    # widened for youth (x 2.4), a value must move by about 70 % of its level to reach 3
    # spreads. 0 leaves the second value unscored.
    prior_spread_relative: float = 0.1

    def __post_init__(self) -> None:
        if not (self.interval_s > 0 and math.isfinite(self.interval_s)):
            raise ValueError(f"interval_s must be positive, got {self.interval_s}")
        if self.cusum_cap < self.cusum_threshold:
            raise ValueError("cusum_cap must be >= cusum_threshold")

    def alpha(self, memory_s: float) -> float:
        return min(1.0, self.interval_s / memory_s)

    def fingerprint(self) -> int:
        """CRC of every field that shapes the learned state (all but ``_SCORING_ONLY``): a
        snapshot only restores under a config that would have learned the same state."""
        values = [float(getattr(self, f.name)) for f in fields(self) if f.name not in _SCORING_ONLY]
        return zlib.crc32(struct.pack(f"<{len(values)}d", *values))


@dataclass(frozen=True, slots=True)
class Deviation:
    """How far one value is from its baseline, and whether that is a sustained deviation."""

    t_s: float  # start of the interval scored (event time, unix seconds)
    value: float
    expected: float
    spread: float  # sigma-equivalent used for the score
    score: float  # robust z: (value - expected) / spread
    direction: int  # +1 above the baseline, -1 below
    alert_worthy: bool
    onset_s: float | None  # estimated start of the sustained deviation, when alert-worthy
    tier: Tier


@dataclass(frozen=True, slots=True)
class SeriesDeviation:
    entity: str
    signal: str
    deviation: Deviation


class Baseline(Protocol):
    """The verbs every baseline implementation offers (the conformance suite checks them)."""

    @property
    def intervals_learned(self) -> int: ...
    @property
    def late_values(self) -> int: ...
    @property
    def alerts_raised(self) -> int: ...
    def update(
        self, t_unix_s: float, value: float, exposure: float = 0.0, resolution: float = 0.0
    ) -> None: ...
    def flush(self, now_unix_s: float) -> None: ...
    def score(self, t_unix_s: float, value: float, exposure: float = 0.0) -> Deviation: ...
    def deviation(self) -> Deviation | None: ...
    def onset(self) -> float | None: ...
    def expected(self, t_unix_s: float) -> tuple[float, float, Tier]: ...
    def hour_of_week_profile(self) -> list[float | None]: ...
    def to_bytes(self) -> bytes: ...


def _hour_of_week(hour_index: int) -> int:
    day, hour_of_day = divmod(hour_index, HOURS_PER_DAY)
    return ((day + _EPOCH_WEEKDAY) % 7) * HOURS_PER_DAY + hour_of_day


def _to_float16(x: float) -> float:
    return float(struct.unpack("<e", struct.pack("<e", x))[0])


def _to_float32(x: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


def _quantize_residual(z: float) -> int:
    return max(-127, min(127, round(z * _RING_STEPS_PER_SIGMA)))


def _weighted(a: float, wa: float, b: float, wb: float) -> float:
    total = wa + wb
    return (a * wa + b * wb) / total if total > 0 else a


def _best_change_point(residuals: Sequence[float | None], first_index: int) -> int:
    """Interval index where a single upward shift most likely began.

    ``residuals`` are direction-signed z values for consecutive intervals starting at
    ``first_index`` (None where an interval had no data). For every candidate start the
    least-squares fit of a step (constant shift) and of a ramp (shift growing linearly from the
    start) is scored by its explained sum of squares; the best candidate wins.
    """
    best_index = first_index + len(residuals) - 1
    best_fit = -math.inf
    sum_s = sum_sx = sum_x = sum_xx = 0.0
    for count, offset in enumerate(range(len(residuals) - 1, -1, -1), start=1):
        # moving the start one interval earlier adds 1 to every ramp abscissa after it
        s = residuals[offset] or 0.0
        sum_sx += sum_s + s
        sum_xx += 2.0 * sum_x + count
        sum_x += count
        sum_s += s
        step_fit = sum_s * sum_s / count if sum_s > 0 else 0.0
        ramp_fit = sum_sx * sum_sx / sum_xx if sum_sx > 0 else 0.0
        fit = max(step_fit, ramp_fit)
        if fit > best_fit + 1e-9:
            best_fit = fit
            best_index = first_index + offset
    return best_index


_HEADER = struct.Struct("<2sBI")
_V2_SCALARS = struct.Struct("<qqdIqdIddIdBddqqbqqdIId")
# pending exposure / resolution sums; exposure and resolution (float32, rounded in memory too)
_V3_EXTRA = struct.Struct("<ddff")
_SCALARS = struct.Struct(_V2_SCALARS.format + "ddff")
_TIERS: tuple[Tier, ...] = ("global", "day", "week")
_MAGIC = b"WB"
_VERSION = 3  # 2: count_scale; 3: per-value exposure and resolution
_LEVELS_BYTES = HOURS_PER_WEEK * 4
_COUNTS_BYTES = HOURS_PER_WEEK // 2
_SHAPE_FORMAT = struct.Struct(f"<{HOURS_PER_DAY}e")
_V1_SCALARS_SIZE = _V2_SCALARS.size - 8  # version 1 had no count_scale (the last scalar)
SNAPSHOT_BYTES = (
    _HEADER.size
    + _SCALARS.size
    + _LEVELS_BYTES
    + _COUNTS_BYTES
    + _SHAPE_FORMAT.size
    + ONSET_RING_LENGTH
)
_SNAPSHOT_BYTES_BY_VERSION = {
    1: SNAPSHOT_BYTES - _V3_EXTRA.size - 8,
    2: SNAPSHOT_BYTES - _V3_EXTRA.size,
    3: SNAPSHOT_BYTES,
}


def snapshot_size(version: int) -> int:
    """Length of a series snapshot of ``version`` (ValueError for an unknown version)."""
    size = _SNAPSHOT_BYTES_BY_VERSION.get(version)
    if size is None:
        raise ValueError(f"unknown baseline snapshot version {version}")
    return size


def _opt(index: int | None) -> int:
    return _NONE_INDEX if index is None else index


def _from_opt(raw: int) -> int | None:
    return None if raw == _NONE_INDEX else raw


class SeasonalBaseline:
    """Baseline of one series: robust level and spread with hour-of-day / hour-of-week seasonality,
    CUSUM onset detection and a direction-aware score. See the module docstring for the model."""

    __slots__ = (
        "_acc_count",
        "_acc_hour",
        "_acc_sum",
        "_alert_direction",
        "_count_scale",
        "_exposure",
        "_pending_exposure",
        "_pending_resolution",
        "_resolution",
        "_alert_onset",
        "_alerts_raised",
        "_cusum_neg",
        "_cusum_pos",
        "_day_profile",
        "_first_interval",
        "_global_level",
        "_last_interval",
        "_last_value",
        "_late_values",
        "_n",
        "_neg_start",
        "_offset",
        "_offset_tier",
        "_open_interval",
        "_pending_count",
        "_pending_sum",
        "_pos_start",
        "_ring",
        "_scale",
        "_shape",
        "_week_count",
        "_week_level",
        "config",
    )

    def __init__(self, config: BaselineConfig | None = None, count_scale: float = 0.0) -> None:
        if not (count_scale >= 0.0 and math.isfinite(count_scale)):
            raise ValueError(f"count_scale must be finite and >= 0, got {count_scale}")
        self.config = config or BaselineConfig()
        # values times count_scale are event counts per interval (a rate per second measured
        # over interval_s seconds: count_scale = interval_s); 0 for anything else
        self._count_scale = count_scale
        self._week_level = array("f", [math.nan] * HOURS_PER_WEEK)
        self._week_count = bytearray(HOURS_PER_WEEK)
        self._day_profile = array("d", _NAN_DAY)  # derived from the week buckets
        self._shape = array("f", _ONES_DAY)  # float16-rounded values
        self._ring = array("b", [_RING_MISSING] * ONSET_RING_LENGTH)
        self._first_interval: int | None = None
        self._open_interval: int | None = None
        self._last_interval: int | None = None  # last interval learned
        self._pending_sum = 0.0
        self._pending_count = 0
        self._pending_exposure = 0.0  # sums over the open interval's values, like _pending_sum
        self._pending_resolution = 0.0
        self._exposure = 0.0  # exposure of the last learned interval (0: use count_scale)
        self._resolution = 0.0  # typical resolution of the values (EWMA), 0: exact values
        self._acc_hour: int | None = None
        self._acc_sum = 0.0
        self._acc_count = 0
        self._global_level = 0.0
        self._scale = 0.0
        self._n = 0
        self._offset = 0.0
        self._offset_tier: Tier = "global"
        self._cusum_pos = 0.0
        self._cusum_neg = 0.0
        self._pos_start: int | None = None
        self._neg_start: int | None = None
        self._alert_direction = 0
        self._alert_onset: int | None = None
        self._last_value = 0.0
        self._late_values = 0
        self._alerts_raised = 0

    # ------------------------------------------------------------------ reads
    @property
    def intervals_learned(self) -> int:
        return self._n

    @property
    def late_values(self) -> int:
        """Values dropped because their interval had already been learned."""
        return self._late_values

    @property
    def alerts_raised(self) -> int:
        """Number of sustained-deviation episodes started so far."""
        return self._alerts_raised

    @property
    def count_scale(self) -> float:
        """Factor turning a value into events per interval (0: the series is not a count)."""
        return self._count_scale

    @property
    def exposure(self) -> float:
        """Factor turning the last learned value into events counted (its own exposure, else
        ``count_scale``); 0 when the series is not a count."""
        return self._exposure or self._count_scale

    @property
    def resolution(self) -> float:
        """Typical step in which the series' values are known (0: exact)."""
        return self._resolution

    @property
    def first_seen_s(self) -> float | None:
        if self._first_interval is None:
            return None
        return self._first_interval * self.config.interval_s

    def hour_of_week_profile(self) -> list[float | None]:
        """Learned level per hour of the week (Monday 00:00 first); None where never seen."""
        return [
            level if count else None
            for level, count in zip(self._week_level, self._week_count, strict=True)
        ]

    def expected(self, t_unix_s: float) -> tuple[float, float, Tier]:
        """Expected value, spread (sigma-equivalent) and tier used at event time ``t``."""
        expected, spread, tier, _ = self._expectation(t_unix_s)
        return expected, spread, tier

    def onset(self) -> float | None:
        """Estimated start (unix s) of the sustained deviation in progress, else None."""
        if self._alert_direction == 0 or self._alert_onset is None:
            return None
        return self._alert_onset * self.config.interval_s

    def deviation(self) -> Deviation | None:
        """The sustained deviation in progress, scored at the last learned interval."""
        if self._alert_direction == 0 or self._last_interval is None:
            return None
        interval_s = self.config.interval_s
        t_start = self._last_interval * interval_s
        expected, spread, tier, _ = self._expectation(t_start + interval_s / 2)
        z = (self._last_value - expected) / spread
        return Deviation(
            t_s=t_start,
            value=self._last_value,
            expected=expected,
            spread=spread,
            score=z,
            direction=self._alert_direction,
            alert_worthy=True,
            onset_s=self.onset(),
            tier=tier,
        )

    def recent_scores(self) -> list[tuple[float, float]]:
        """(interval start in unix s, robust z) of the last learned intervals still remembered
        (up to the onset ring's length), oldest first; unknown intervals are left out."""
        last = self._last_interval
        if last is None:
            return []
        out = []
        for interval in range(last - ONSET_RING_LENGTH + 1, last + 1):
            raw = self._ring[interval % ONSET_RING_LENGTH]
            if raw != _RING_MISSING:
                out.append((interval * self.config.interval_s, raw / _RING_STEPS_PER_SIGMA))
        return out

    def score(self, t_unix_s: float, value: float, exposure: float = 0.0) -> Deviation:
        """Score ``value`` as if it were the next interval's value (``exposure`` as in
        ``update``; 0: the last learned one). Does not change the state."""
        config = self.config
        interval = math.floor(t_unix_s / config.interval_s)
        expected, spread, tier, _ = self._expectation(
            (interval + 0.5) * config.interval_s, exposure
        )
        z, spread = self._z(value, expected, spread, exposure)
        direction = 1 if z >= 0 else -1
        alert_worthy = False
        onset_interval: int | None = None
        if self._n >= config.min_intervals_to_alert:
            clipped = max(-config.z_clip, min(config.z_clip, z))
            pos = min(config.cusum_cap, max(0.0, self._cusum_pos + clipped - config.cusum_slack))
            neg = min(config.cusum_cap, max(0.0, self._cusum_neg - clipped - config.cusum_slack))
            if self._alert_direction != 0:
                still = pos if self._alert_direction > 0 else neg
                if still > 0:
                    alert_worthy = True
                    direction = self._alert_direction
                    onset_interval = self._alert_onset
            if not alert_worthy and max(pos, neg) > config.cusum_threshold:
                alert_worthy = True
                direction = 1 if pos >= neg else -1
                run_start = self._pos_start if direction > 0 else self._neg_start
                if (self._cusum_pos if direction > 0 else self._cusum_neg) <= 0:
                    run_start = interval
                onset_interval = self._estimate_onset(direction, interval, run_start, z)
        return Deviation(
            t_s=interval * config.interval_s,
            value=value,
            expected=expected,
            spread=spread,
            score=z,
            direction=direction,
            alert_worthy=alert_worthy,
            onset_s=None if onset_interval is None else onset_interval * config.interval_s,
            tier=tier,
        )

    # ----------------------------------------------------------------- writes
    def update(
        self, t_unix_s: float, value: float, exposure: float = 0.0, resolution: float = 0.0
    ) -> None:
        """Add one value at event time ``t``. Values of an already learned interval are dropped
        and counted (``late_values``).

        ``exposure``: ``value * exposure`` is the number of events the value counted (an error
        ratio's request count; 0: the series' ``count_scale``). ``resolution``: the step in which
        the value is known (a histogram quantile's bucket width; 0: exact). Values of one
        interval are averaged, and so are their exposures and resolutions."""
        if not (math.isfinite(value) and math.isfinite(t_unix_s)):
            raise ValueError(f"non-finite sample ({t_unix_s!r}, {value!r})")
        if not (0.0 <= exposure < math.inf and 0.0 <= resolution < math.inf):
            raise ValueError(f"exposure and resolution must be finite and >= 0 ({t_unix_s!r})")
        interval = math.floor(t_unix_s / self.config.interval_s)
        open_interval = self._open_interval
        if open_interval is None:
            self._open_interval = interval
            if self._first_interval is None:
                self._first_interval = interval
        elif interval > open_interval:
            self._learn_pending(open_interval)
            self._open_interval = interval
        elif interval < open_interval:
            self._late_values += 1
            return
        self._pending_sum += value
        self._pending_exposure += exposure
        self._pending_resolution += resolution
        self._pending_count += 1

    def _learn_pending(self, interval: int) -> None:
        count = self._pending_count
        if count:
            self._learn(
                interval,
                self._pending_sum / count,
                self._pending_exposure / count,
                self._pending_resolution / count,
            )
        self._pending_sum = self._pending_exposure = self._pending_resolution = 0.0
        self._pending_count = 0

    def flush(self, now_unix_s: float) -> None:
        """Event-time watermark: learn the open interval if it ended by ``now``."""
        open_interval = self._open_interval
        if open_interval is None or not self._pending_count:
            return
        if (open_interval + 1) * self.config.interval_s <= now_unix_s:
            self._learn_pending(open_interval)
            self._open_interval = open_interval + 1

    # ------------------------------------------------------------ the model
    def _week_level_at(self, hour_index: int) -> float | None:
        bucket = _hour_of_week(hour_index)
        return self._week_level[bucket] if self._week_count[bucket] else None

    def _day_level_at(self, hour_index: int) -> float | None:
        level = self._day_profile[hour_index % HOURS_PER_DAY]
        return None if math.isnan(level) else level

    def _expectation(
        self, t_unix_s: float, exposure: float = 0.0
    ) -> tuple[float, float, Tier, float]:
        """(expected, spread, tier, seasonal level without the drift offset); ``exposure`` of the
        value to be scored (0: the last learned value's, else ``count_scale``)."""
        config = self.config
        hours = (t_unix_s + config.utc_offset_s) / SECONDS_PER_HOUR
        hour_index = math.floor(hours)
        position = hours - hour_index - 0.5  # -0.5 .. 0.5 around the hour's centre
        neighbour = hour_index + 1 if position >= 0 else hour_index - 1
        weight = abs(position)
        tier: Tier = "week"
        factor = 1.0
        seasonal = self._week_level_at(hour_index)
        if seasonal is not None:
            other = self._week_level_at(neighbour)
        else:
            tier, factor = "day", config.tier_spread_day
            seasonal = self._day_level_at(hour_index)
            other = self._day_level_at(neighbour) if seasonal is not None else None
        if seasonal is None:
            tier, factor = "global", config.tier_spread_global
            seasonal = self._global_level
            expected = seasonal
        else:
            if other is not None:
                seasonal = seasonal * (1.0 - weight) + other * weight
            expected = seasonal + (self._offset if tier == self._offset_tier else 0.0)
        spread = (
            _MAD_TO_SIGMA
            * self._scale
            * self._shape[hour_index % HOURS_PER_DAY]
            * factor
            * (1.0 + config.warmup_spread_gain / math.sqrt(self._n + 1))
        )
        floor = max(
            config.min_spread_relative * abs(expected), config.min_spread_absolute, self._resolution
        )
        scale = exposure or self._exposure or self._count_scale
        if scale > 0.0:
            # counting noise: k events expected in an interval vary by sqrt(k), and a count is
            # never known finer than one event, so a rate's spread is at least
            # sqrt(max(expected count, 1)) / count_scale whatever the history's spread was
            # (for a proportion p of n trials: sqrt(max(n p, 1)) / n, the binomial
            # sqrt(p (1 - p) / n) for small p and never below one event in n)
            floor = max(floor, math.sqrt(max(expected * scale, 1.0)) / scale)
        return expected, max(spread, floor), tier, seasonal

    def _z(
        self, value: float, expected: float, spread: float, exposure: float
    ) -> tuple[float, float]:
        """Score of ``value`` against ``expected`` and the spread it is scored with. With one
        value learned, no spread is: the prior (``prior_spread_relative`` of the level, widened
        for youth as ``_expectation`` widens a learned spread) or the counting noise (``spread``
        is its floor, as is the values' resolution), whichever is wider, with the score clipped
        to ``z_clip``; unscored (0) when there is none of them (a level of 0 that counts
        nothing, known to no resolution)."""
        n = self._n
        if n >= 2:
            return (value - expected) / spread, spread
        config = self.config
        if n == 0 or config.prior_spread_relative <= 0:
            return 0.0, spread
        prior = (
            config.prior_spread_relative
            * abs(expected)
            * (1.0 + config.warmup_spread_gain / math.sqrt(n + 1))
        )
        counted = (exposure or self._exposure or self._count_scale) > 0.0
        if prior <= 0.0 and not counted and self._resolution <= 0.0:
            return 0.0, spread
        spread = max(prior, spread)
        z = (value - expected) / spread
        return max(-config.z_clip, min(config.z_clip, z)), spread

    def _close_hour(self) -> None:
        if self._acc_hour is None or not self._acc_count:
            return
        self._fold_hour(self._acc_hour, self._acc_sum / self._acc_count)
        self._acc_hour = None
        self._acc_sum = 0.0
        self._acc_count = 0

    def _fold_hour(self, hour_index: int, mean: float) -> None:
        bucket = _hour_of_week(hour_index)
        count = self._week_count[bucket]
        if count == 0:
            self._week_level[bucket] = mean
        else:
            alpha = max(1.0 / (count + 1), self.config.week_alpha_min)
            level = self._week_level[bucket]
            self._week_level[bucket] = level + alpha * (mean - level)
        self._week_count[bucket] = min(MAX_BUCKET_COUNT, count + 1)
        self._refresh_day_profile(bucket % HOURS_PER_DAY)

    def _refresh_day_profile(self, hour_of_day: int) -> None:
        total = 0.0
        seen = 0
        for bucket in range(hour_of_day, HOURS_PER_WEEK, HOURS_PER_DAY):
            if self._week_count[bucket]:
                total += self._week_level[bucket]
                seen += 1
        self._day_profile[hour_of_day] = total / seen if seen else math.nan

    def _push_residual(self, interval: int, z: float) -> None:
        ring = self._ring
        last = self._last_interval
        if last is not None and interval > last + 1:
            for missing in range(max(last + 1, interval - ONSET_RING_LENGTH + 1), interval):
                ring[missing % ONSET_RING_LENGTH] = _RING_MISSING
        ring[interval % ONSET_RING_LENGTH] = _quantize_residual(z)

    def _recent_residuals(self, end: int) -> list[float | None]:
        """Ring contents for intervals end-31 .. end-1 (oldest first), None where unknown."""
        out: list[float | None] = []
        last = self._last_interval
        for interval in range(end - ONSET_RING_LENGTH + 1, end):
            raw = self._ring[interval % ONSET_RING_LENGTH]
            known = (
                last is not None and last - ONSET_RING_LENGTH < interval <= last
            ) and raw != _RING_MISSING
            out.append(raw / _RING_STEPS_PER_SIGMA if known else None)
        return out

    def _estimate_onset(self, direction: int, end: int, run_start: int | None, z: float) -> int:
        first = end - ONSET_RING_LENGTH + 1
        if run_start is not None and run_start < first:
            return run_start  # the CUSUM run is older than the ring: trust the run
        residuals = self._recent_residuals(end)
        residuals.append(_quantize_residual(z) / _RING_STEPS_PER_SIGMA)
        signed = [None if r is None else direction * r for r in residuals]
        return _best_change_point(signed, first)

    @property
    def spacing(self) -> int:
        """Intervals between this series' recent values when they come regularly that sparse:
        the shortest gap between the values still in the onset ring (5-minute metrics at a 60 s
        interval: 5); 1 with fewer than two of them."""
        last = self._last_interval
        if last is None:
            return 1
        known = [
            i
            for i in range(last - ONSET_RING_LENGTH + 1, last + 1)
            if self._ring[i % ONSET_RING_LENGTH] != _RING_MISSING
        ]
        if len(known) < 2:
            return 1
        return min(b - a for a, b in zip(known, known[1:], strict=False))

    def _spacing(self, interval: int) -> int:
        """Intervals the value of ``interval`` stands for: the gap since the last learned one
        when the series is regularly that sparse (``spacing``: every gap between the values
        still in the onset ring is at least as long), else 1 (values every interval, or bursts
        such as a job's latency, which only exists while it runs: a long silence before a burst
        is no evidence of how fast its level drifts)."""
        last = self._last_interval
        if last is None or interval - last <= 1:
            return 1
        return min(interval - last, self.spacing)

    def _learn(self, interval: int, value: float, exposure: float, resolution: float) -> None:
        config = self.config
        # EWMA memories are event time: a value standing for k intervals weighs as k of them
        steps = self._spacing(interval)

        def alpha_of(memory_s: float) -> float:
            a = config.alpha(memory_s)
            return a if steps == 1 else 1.0 - (1.0 - a) ** steps

        t_mid = (interval + 0.5) * config.interval_s
        hour_index = math.floor((t_mid + config.utc_offset_s) / SECONDS_PER_HOUR)
        if self._acc_hour is not None and hour_index != self._acc_hour:
            self._close_hour()
        self._exposure = _to_float32(exposure)
        expected, spread, tier, seasonal = self._expectation(t_mid)
        n = self._n
        # the first value has nothing to be compared with: it sets the level, and its
        # "residual" against the empty state does not enter the spread; the second has a level
        # but no spread yet: it is scored against the prior (``_z``)
        z, _ = self._z(value, expected, spread, exposure)
        warm = n >= config.min_intervals_to_alert

        # onset detection on the residual, before learning from it
        if warm:
            clipped = max(-config.z_clip, min(config.z_clip, z))
            pos = max(0.0, self._cusum_pos + clipped - config.cusum_slack)
            neg = max(0.0, self._cusum_neg - clipped - config.cusum_slack)
            if pos > 0 and self._cusum_pos <= 0:
                self._pos_start = interval
            if neg > 0 and self._cusum_neg <= 0:
                self._neg_start = interval
            self._cusum_pos = pos = min(config.cusum_cap, pos)
            self._cusum_neg = neg = min(config.cusum_cap, neg)
            direction = self._alert_direction
            if direction != 0 and (pos if direction > 0 else neg) <= 0:
                self._alert_direction = direction = 0
                self._alert_onset = None
            if direction == 0 and max(pos, neg) > config.cusum_threshold:
                direction = 1 if pos >= neg else -1
                run_start = self._pos_start if direction > 0 else self._neg_start
                self._alert_onset = self._estimate_onset(direction, interval, run_start, z)
                self._alert_direction = direction
                self._alerts_raised += 1
        self._push_residual(interval, z)
        self._last_interval = interval
        self._last_value = value

        # learning, winsorized around the expectation
        if n >= max(2, config.winsorize_after):
            c = (
                config.winsorize_z_in_deviation
                if self._alert_direction != 0
                else config.winsorize_z
            )
            value = max(expected - c * spread, min(expected + c * spread, value))
        alpha = max(1.0 / (n + 1), alpha_of(config.level_memory_s))
        self._global_level += alpha * (value - self._global_level)
        if self._alert_direction == 0:
            scale_alpha = max(1.0 / (n + 1), alpha_of(config.scale_memory_s))
            self._resolution = _to_float32(
                self._resolution + scale_alpha * (resolution - self._resolution)
            )
        if self._alert_direction == 0 and n > 0:
            residual = abs(value - expected)
            scale_alpha = max(1.0 / n, alpha_of(config.scale_memory_s))
            self._scale += scale_alpha * (residual - self._scale)
            if self._scale > 0:
                hour_of_day = hour_index % HOURS_PER_DAY
                shape = self._shape[hour_of_day]
                ratio = min(residual / self._scale, 5.0)
                shape += alpha_of(config.shape_memory_s) * (ratio - shape)
                self._shape[hour_of_day] = _to_float16(max(0.2, min(5.0, shape)))
        if tier != self._offset_tier:
            # the drift learned against one tier's profile means nothing against another's
            self._offset = 0.0
            self._offset_tier = tier
        if tier != "global":
            offset_alpha = alpha_of(config.offset_memory_s)
            self._offset += offset_alpha * (value - seasonal - self._offset)
        if self._acc_hour is None:
            self._acc_hour = hour_index
        self._acc_sum += value
        self._acc_count += 1
        self._n = n + 1

    # ------------------------------------------------------------- merging
    def merge(self, other: SeasonalBaseline) -> SeasonalBaseline:
        """A new baseline as if it had learned both streams; neither input changes.

        Exact: hour-of-week bucket means while each bucket has seen <= 4 hours in total (the
        running-mean regime; weighted by per-bucket counts), values pending in the same open
        interval or hour, counters, first-seen. Approximate: the EWMA level, scale and spread
        shape (weighted by intervals learned), and the recent dynamics (drift offset, CUSUM,
        residual ring, deviation in progress), taken from the side that is further in event time
        after the other side's open interval has been learned. Commutative; associative up to
        floating-point rounding while bucket counts stay below 15.
        """
        if other.config.fingerprint() != self.config.fingerprint():
            raise ValueError("cannot merge baselines with different configs")
        if other._count_scale != self._count_scale:
            raise ValueError("cannot merge a count series with a series of another kind")
        newer, older = self, other
        if self._recency_key() < other._recency_key():
            newer, older = other, self
        merged = SeasonalBaseline.from_bytes(newer.to_bytes(), newer.config)
        if older._open_interval is not None and older._open_interval == newer._open_interval:
            merged._pending_sum += older._pending_sum
            merged._pending_exposure += older._pending_exposure
            merged._pending_resolution += older._pending_resolution
            merged._pending_count += older._pending_count
        elif older._pending_count:
            assert older._open_interval is not None
            older = SeasonalBaseline.from_bytes(older.to_bytes(), older.config)
            assert older._open_interval is not None
            older.flush((older._open_interval + 1) * older.config.interval_s)
        if older._acc_count and older._acc_hour == merged._acc_hour:
            merged._acc_sum += older._acc_sum
            merged._acc_count += older._acc_count
            older_acc = None
        else:
            older_acc = (older._acc_hour, older._acc_sum, older._acc_count)

        for bucket in range(HOURS_PER_WEEK):
            count_new, count_old = merged._week_count[bucket], older._week_count[bucket]
            if count_old == 0:
                continue
            if count_new == 0:
                merged._week_level[bucket] = older._week_level[bucket]
            else:
                merged._week_level[bucket] = _weighted(
                    merged._week_level[bucket], count_new, older._week_level[bucket], count_old
                )
            merged._week_count[bucket] = min(MAX_BUCKET_COUNT, count_new + count_old)
        if older_acc is not None and older_acc[0] is not None and older_acc[2]:
            merged._fold_hour(older_acc[0], older_acc[1] / older_acc[2])

        n_new, n_old = newer._n, older._n
        merged._global_level = _weighted(newer._global_level, n_new, older._global_level, n_old)
        merged._scale = _weighted(newer._scale, n_new, older._scale, n_old)
        merged._resolution = _to_float32(
            _weighted(newer._resolution, n_new, older._resolution, n_old)
        )
        merged._shape = array(
            "f",
            [
                _to_float16(_weighted(a, n_new, b, n_old))
                for a, b in zip(newer._shape, older._shape, strict=True)
            ],
        )
        merged._n = min(2**32 - 1, n_new + n_old)
        firsts = [f for f in (newer._first_interval, older._first_interval) if f is not None]
        merged._first_interval = min(firsts) if firsts else None
        merged._late_values = min(2**32 - 1, newer._late_values + older._late_values)
        merged._alerts_raised = min(2**32 - 1, newer._alerts_raised + older._alerts_raised)
        merged._rebuild_day_profile()
        return merged

    def _recency_key(self) -> tuple[int, int, bytes]:
        return (
            _opt(self._open_interval),
            _opt(self._last_interval),
            self.to_bytes(),  # deterministic tie-break keeps merge commutative
        )

    def _rebuild_day_profile(self) -> None:
        for hour_of_day in range(HOURS_PER_DAY):
            self._refresh_day_profile(hour_of_day)

    # ---------------------------------------------------------- snapshots
    def to_bytes(self) -> bytes:
        """Compact, versioned, pickle-free snapshot (``SNAPSHOT_BYTES`` long, under 1 KB)."""
        counts = bytes(
            self._week_count[i] | (self._week_count[i + 1] << 4)
            for i in range(0, HOURS_PER_WEEK, 2)
        )
        return b"".join(
            (
                _HEADER.pack(_MAGIC, _VERSION, self.config.fingerprint()),
                _SCALARS.pack(
                    _opt(self._first_interval),
                    _opt(self._open_interval),
                    self._pending_sum,
                    self._pending_count,
                    _opt(self._acc_hour),
                    self._acc_sum,
                    self._acc_count,
                    self._global_level,
                    self._scale,
                    self._n,
                    self._offset,
                    _TIERS.index(self._offset_tier),
                    self._cusum_pos,
                    self._cusum_neg,
                    _opt(self._pos_start),
                    _opt(self._neg_start),
                    self._alert_direction,
                    _opt(self._alert_onset),
                    _opt(self._last_interval),
                    self._last_value,
                    self._late_values,
                    self._alerts_raised,
                    self._count_scale,
                    self._pending_exposure,
                    self._pending_resolution,
                    self._exposure,
                    self._resolution,
                ),
                self._week_level.tobytes(),
                counts,
                _SHAPE_FORMAT.pack(*self._shape),
                self._ring.tobytes(),
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes, config: BaselineConfig | None = None) -> SeasonalBaseline:
        """Restore a snapshot written under the same ``config`` (checked by fingerprint). Older
        versions restore: version 1 (before ``count_scale``) with ``count_scale`` 0, versions 1
        and 2 (before per-value exposure and resolution) with neither (exposure from
        ``count_scale``, exact values)."""
        config = config or BaselineConfig()
        if len(data) < _HEADER.size or data[:2] != _MAGIC:
            raise ValueError(f"not a baseline snapshot (starts {data[:3]!r})")
        magic, version, fingerprint = _HEADER.unpack_from(data, 0)
        if len(data) != snapshot_size(version):  # an unknown version is refused here
            raise ValueError(
                f"baseline snapshot version {version} must be {snapshot_size(version)} "
                f"bytes, got {len(data)}"
            )
        if version < _VERSION:
            at = _HEADER.size + (_V1_SCALARS_SIZE if version == 1 else _V2_SCALARS.size)
            data = (
                _HEADER.pack(_MAGIC, _VERSION, fingerprint)
                + data[_HEADER.size : at]
                + (struct.pack("<d", 0.0) if version == 1 else b"")
                + _V3_EXTRA.pack(0.0, 0.0, 0.0, 0.0)
                + data[at:]
            )
        if fingerprint != config.fingerprint():
            raise ValueError("baseline snapshot was written under a different BaselineConfig")
        baseline = cls(config)
        (
            first_interval,
            open_interval,
            baseline._pending_sum,
            baseline._pending_count,
            acc_hour,
            baseline._acc_sum,
            baseline._acc_count,
            baseline._global_level,
            baseline._scale,
            baseline._n,
            baseline._offset,
            offset_tier,
            baseline._cusum_pos,
            baseline._cusum_neg,
            pos_start,
            neg_start,
            baseline._alert_direction,
            alert_onset,
            last_interval,
            baseline._last_value,
            baseline._late_values,
            baseline._alerts_raised,
            baseline._count_scale,
            baseline._pending_exposure,
            baseline._pending_resolution,
            baseline._exposure,
            baseline._resolution,
        ) = _SCALARS.unpack_from(data, _HEADER.size)
        for name in (
            "_count_scale",
            "_pending_exposure",
            "_pending_resolution",
            "_exposure",
            "_resolution",
        ):
            number = getattr(baseline, name)
            if not (number >= 0.0 and math.isfinite(number)):
                raise ValueError(f"corrupt baseline snapshot ({name.lstrip('_')} {number})")
        if offset_tier >= len(_TIERS):
            raise ValueError(f"corrupt baseline snapshot (tier {offset_tier})")
        baseline._offset_tier = _TIERS[offset_tier]
        baseline._first_interval = _from_opt(first_interval)
        baseline._open_interval = _from_opt(open_interval)
        baseline._acc_hour = _from_opt(acc_hour)
        baseline._pos_start = _from_opt(pos_start)
        baseline._neg_start = _from_opt(neg_start)
        baseline._alert_onset = _from_opt(alert_onset)
        baseline._last_interval = _from_opt(last_interval)
        offset = _HEADER.size + _SCALARS.size
        baseline._week_level = array("f")
        baseline._week_level.frombytes(data[offset : offset + _LEVELS_BYTES])
        offset += _LEVELS_BYTES
        counts = bytearray(HOURS_PER_WEEK)
        for i, packed in enumerate(data[offset : offset + _COUNTS_BYTES]):
            counts[2 * i] = packed & 0x0F
            counts[2 * i + 1] = packed >> 4
        baseline._week_count = counts
        offset += _COUNTS_BYTES
        baseline._shape = array("f", _SHAPE_FORMAT.unpack_from(data, offset))
        offset += _SHAPE_FORMAT.size
        baseline._ring = array("b")
        baseline._ring.frombytes(data[offset : offset + ONSET_RING_LENGTH])
        baseline._rebuild_day_profile()
        return baseline

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SeasonalBaseline):
            return NotImplemented
        return self.to_bytes() == other.to_bytes()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"SeasonalBaseline(intervals={self._n}, level={self._global_level:.6g}, "
            f"alert={self._alert_direction})"
        )


_STORE_HEADER = struct.Struct("<4sBIQIH")
_STORE_MAGIC = b"WLBS"
_STORE_VERSION = 1


class BaselineStore:
    """(entity, signal) -> SeasonalBaseline under a hard cap on the number of series.

    Every refused update is counted by reason: ``series_cap`` (a new series beyond
    ``max_series``), ``non_finite`` (NaN / inf value or time), ``bad_exposure_or_resolution``
    (negative, NaN or infinite).
    """

    def __init__(
        self,
        config: BaselineConfig | None = None,
        max_series: int = 100_000,
        count_scale: Callable[[str, str], float] | None = None,
    ) -> None:
        if max_series < 0:
            raise ValueError("max_series must be >= 0")
        self.config = config or BaselineConfig()
        self.max_series = max_series
        # (entity, signal) -> count_scale of a new series (see SeasonalBaseline); None: all 0
        self.count_scale = count_scale
        self._series: dict[SeriesKey, SeasonalBaseline] = {}
        self._refusals: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._series)

    def __contains__(self, key: object) -> bool:
        return key in self._series

    def get(self, entity: str, signal: str) -> SeasonalBaseline | None:
        return self._series.get((entity, signal))

    def keys(self) -> list[SeriesKey]:
        return sorted(self._series)

    @property
    def refusals(self) -> dict[str, int]:
        return dict(self._refusals)

    def _refuse(self, reason: str, count: int = 1) -> None:
        self._refusals[reason] = self._refusals.get(reason, 0) + count

    def update(
        self,
        entity: str,
        signal: str,
        t_unix_s: float,
        value: float,
        exposure: float = 0.0,
        resolution: float = 0.0,
    ) -> bool:
        """Add one sample (``exposure``, ``resolution``: see ``SeasonalBaseline.update``); False
        (and counted) when refused."""
        if not (math.isfinite(value) and math.isfinite(t_unix_s)):
            self._refuse("non_finite")
            return False
        if not (0.0 <= exposure < math.inf and 0.0 <= resolution < math.inf):
            self._refuse("bad_exposure_or_resolution")
            return False
        key = (entity, signal)
        baseline = self._series.get(key)
        if baseline is None:
            if len(self._series) >= self.max_series:
                self._refuse("series_cap")
                return False
            scale = 0.0 if self.count_scale is None else self.count_scale(entity, signal)
            baseline = self._series[key] = SeasonalBaseline(self.config, scale)
        baseline.update(t_unix_s, value, exposure, resolution)
        return True

    def update_many(
        self,
        keys: Sequence[SeriesKey],
        ts: Sequence[float] | np.ndarray,
        values: Sequence[float] | np.ndarray,
        exposures: Sequence[float] | np.ndarray | None = None,
        resolutions: Sequence[float] | np.ndarray | None = None,
    ) -> int:
        """Add a batch (parallel sequences, e.g. columns of an Arrow batch; ``exposures`` and
        ``resolutions`` optional, see ``SeasonalBaseline.update``); returns accepted."""
        if not len(keys) == len(ts) == len(values):
            raise ValueError("keys, ts and values must have the same length")
        zeros = [0.0] * len(keys)
        columns = []
        for column in (ts, values, exposures, resolutions):
            if column is None:
                column = zeros
            elif len(column) != len(keys):
                raise ValueError("exposures and resolutions must have the length of keys")
            columns.append(column.tolist() if isinstance(column, np.ndarray) else column)
        series = self._series
        accepted = 0
        for key, t, value, exposure, resolution in zip(keys, *columns, strict=True):
            baseline = series.get(key)
            if baseline is None or not (
                math.isfinite(value)
                and math.isfinite(t)
                and 0.0 <= exposure < math.inf
                and 0.0 <= resolution < math.inf
            ):
                accepted += self.update(key[0], key[1], t, value, exposure, resolution)
                continue
            baseline.update(t, value, exposure, resolution)
            accepted += 1
        return accepted

    def advance(self, now_unix_s: float) -> None:
        """Event-time watermark for every series: learn intervals that ended by ``now``."""
        for baseline in self._series.values():
            baseline.flush(now_unix_s)

    def deviations(self, now_unix_s: float) -> list[SeriesDeviation]:
        """Sustained deviations in progress (with onset), after ``advance(now)``."""
        self.advance(now_unix_s)
        out = []
        for key in sorted(self._series):
            deviation = self._series[key].deviation()
            if deviation is not None:
                out.append(SeriesDeviation(key[0], key[1], deviation))
        return out

    def merge(self, other: BaselineStore) -> None:
        """Fold ``other`` into this store (in place); same keys are merged, new keys respect the
        cap (each series that does not fit counts one ``series_cap`` refusal)."""
        if other.config.fingerprint() != self.config.fingerprint():
            raise ValueError("cannot merge stores with different configs")
        for key in sorted(other._series):
            theirs = other._series[key]
            mine = self._series.get(key)
            if mine is not None:
                self._series[key] = mine.merge(theirs)
            elif len(self._series) < self.max_series:
                self._series[key] = SeasonalBaseline.from_bytes(theirs.to_bytes(), self.config)
            else:
                self._refuse("series_cap")
        for reason, count in other._refusals.items():
            self._refuse(reason, count)

    def snapshot(self) -> bytes:
        """Every series (sorted by key, so equal stores give equal bytes) and the counters."""
        parts = [
            _STORE_HEADER.pack(
                _STORE_MAGIC,
                _STORE_VERSION,
                self.config.fingerprint(),
                self.max_series,
                len(self._series),
                len(self._refusals),
            )
        ]
        for reason in sorted(self._refusals):
            encoded = reason.encode()
            parts.append(struct.pack("<B", len(encoded)) + encoded)
            parts.append(struct.pack("<Q", self._refusals[reason]))
        for entity, signal in sorted(self._series):
            for text in (entity, signal):
                encoded = text.encode()
                parts.append(struct.pack("<I", len(encoded)) + encoded)
            parts.append(self._series[(entity, signal)].to_bytes())
        return b"".join(parts)

    def restore(self, data: bytes) -> None:
        """Replace this store's contents with a ``snapshot()`` taken under the same config."""
        magic, version, fingerprint, max_series, n_series, n_reasons = _STORE_HEADER.unpack_from(
            data, 0
        )
        if magic != _STORE_MAGIC or version != _STORE_VERSION:
            raise ValueError(f"not a baseline store snapshot (magic {magic!r}, version {version})")
        if fingerprint != self.config.fingerprint():
            raise ValueError("store snapshot was written under a different BaselineConfig")
        offset = _STORE_HEADER.size
        refusals: dict[str, int] = {}
        for _ in range(n_reasons):
            (length,) = struct.unpack_from("<B", data, offset)
            reason = data[offset + 1 : offset + 1 + length].decode()
            offset += 1 + length
            (refusals[reason],) = struct.unpack_from("<Q", data, offset)
            offset += 8
        series: dict[SeriesKey, SeasonalBaseline] = {}
        for _ in range(n_series):
            texts = []
            for _field in range(2):
                (length,) = struct.unpack_from("<I", data, offset)
                texts.append(data[offset + 4 : offset + 4 + length].decode())
                offset += 4 + length
            version = data[offset + 2]
            size = snapshot_size(version)
            payload = data[offset : offset + size]
            offset += size
            baseline = SeasonalBaseline.from_bytes(payload, self.config)
            if version == 1 and self.count_scale is not None:  # version 1: no kind yet
                baseline._count_scale = self.count_scale(texts[0], texts[1])
            series[(texts[0], texts[1])] = baseline
        if offset != len(data):
            raise ValueError("trailing bytes after the last series in a store snapshot")
        self.max_series = max_series
        self._series = series
        self._refusals = refusals


def learn_series(
    baseline: SeasonalBaseline, samples: Iterable[tuple[float, float]]
) -> SeasonalBaseline:
    """Feed ``(t, value)`` samples in order; returns the baseline (convenience for tests/replays)."""
    for t, value in samples:
        baseline.update(t, value)
    return baseline
