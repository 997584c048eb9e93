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

State per series is ~1 KB, serialized (``SeasonalBaseline.to_bytes``, 1017 B) and in memory
(``ROW_BYTES``, 1010 B): ``BaselineStore`` holds every series as one row of typed columns
(``SeriesColumns``), not as an object per series with arrays of its own (about 2.3 KB), and
derives the hour-of-day profile from the hour-of-week levels when it is read. The float32
hour-of-week levels are 672 B of a row. ``BaselineStore`` holds many series under a hard cap;
every refused update is counted by reason.

Why not ``river``: river's ``stats.EWMean`` / ``drift.PageHinkley`` are the same recurrences, but
each is a Python object graph with no bytes snapshot (only pickle) and several hundred bytes of
overhead per statistic; a series here needs ~200 statistics in <= 1 KB, so they are kept as
packed arrays instead. The tests cross-check the recurrences against numpy offline.
"""

from __future__ import annotations

import math
import struct
import sys
import zlib
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal, Protocol

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


def _to_float32(x: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


_FLOAT32_OVERFLOW = 2.0**128 - 2.0**103  # the least double that rounds to infinity in float32


def _check_float32(x: float) -> None:
    """Refuse a finite ``x`` that float32 cannot hold, as packing it would (an ``array("f")``
    column would silently hold infinity)."""
    if not -_FLOAT32_OVERFLOW < x < _FLOAT32_OVERFLOW and math.isfinite(x):
        raise OverflowError("float too large to pack with f format")


def _alphas(config: BaselineConfig) -> tuple[float, float, float, float]:
    """EWMA weights of one interval: level, scale, shape, offset (``BaselineConfig.alpha``)."""
    return (
        config.alpha(config.level_memory_s),
        config.alpha(config.scale_memory_s),
        config.alpha(config.shape_memory_s),
        config.alpha(config.offset_memory_s),
    )


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


_HALF = struct.Struct("<e")
_HALF_BITS = struct.Struct("<H")
_SHAPE_BITS_FORMAT = struct.Struct(f"<{HOURS_PER_DAY}H")
# every float16 bit pattern as the float it stands for: the spread shape is held as float16 bits
# (its values are float16-rounded anyway) and read through this table
_HALF_VALUES = array(
    "d", np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(float).tolist()
)
_TIER_CODES = {tier: code for code, tier in enumerate(_TIERS)}
# offsets of one hour of the day's seven hour-of-week buckets: (level, packed count), Monday first
_WEEKDAY_STEPS = tuple((day * HOURS_PER_DAY, day * HOURS_PER_DAY // 2) for day in range(7))


def _half_bits(x: float) -> int:
    """Bits of ``x`` rounded to float16 (OverflowError beyond float16's range, as packing)."""
    bits: int = _HALF_BITS.unpack(_HALF.pack(x))[0]
    return bits


# The state of every series as typed columns, one row per series (``SeriesColumns``): scalars by
# type, and fixed-length vectors stored row after row in one flat column each.
_FLOAT_COLUMNS = (
    "pending_sum",  # sums over the open interval's values
    "pending_exposure",
    "pending_resolution",
    "acc_sum",  # sum of the learned values of the hour in progress
    "global_level",
    "scale",
    "offset",
    "cusum_pos",
    "cusum_neg",
    "last_value",
    "count_scale",
)
_FLOAT32_COLUMNS = (
    "exposure",  # of the last learned interval (0: use count_scale); float32 as in snapshots
    "resolution",  # typical resolution of the values (EWMA), 0: exact values
)
_INDEX_COLUMNS = (  # interval or hour indexes, _NONE_INDEX for None
    "first_interval",
    "open_interval",
    "last_interval",  # last interval learned
    "acc_hour",
    "pos_start",
    "neg_start",
    "alert_onset",
)
_COUNT_COLUMNS = ("pending_count", "acc_count", "n", "late_values", "alerts_raised")
_SMALL_COLUMNS = ("offset_tier", "alert_direction")  # _TIERS index, -1 / 0 / +1
_COUNTS_PER_ROW = HOURS_PER_WEEK // 2
# flat columns of per-row vectors: name, type code, length per row, initial value
_VECTOR_COLUMNS = (
    ("week_level", "f", HOURS_PER_WEEK, math.nan),
    ("week_count", "B", _COUNTS_PER_ROW, 0),  # two 4-bit counts a byte, low nibble first
    ("shape", "H", HOURS_PER_DAY, _half_bits(1.0)),  # float16 bits
    ("ring", "b", ONSET_RING_LENGTH, _RING_MISSING),
)
_SCALAR_COLUMNS = (
    [(name, "d", 0.0) for name in _FLOAT_COLUMNS]
    + [(name, "f", 0.0) for name in _FLOAT32_COLUMNS]
    + [(name, "q", _NONE_INDEX) for name in _INDEX_COLUMNS]
    + [(name, "I", 0) for name in _COUNT_COLUMNS]
    + [(name, "b", 0) for name in _SMALL_COLUMNS]
)
_NEW_ROW_VECTORS = {
    name: array(code, [fill] * length) for name, code, length, fill in _VECTOR_COLUMNS
}


class SeriesColumns:
    """The state of many series, one row each, in typed ``array`` columns (a few hundred bytes of
    fixed overhead in all, then only the numbers: ``ROW_BYTES`` a series). Rows are appended
    (the arrays grow geometrically) and never removed. ``SeasonalBaseline`` is a view of one
    row. ``array``, not numpy: the model reads and writes one element at a time, which ``array``
    gives as Python floats and ints (a numpy scalar is slower and would carry float32 arithmetic
    into the formulas); numpy reads the columns whole where a step is vectorised
    (``BaselineStore.advance``)."""

    __slots__ = (
        *(name for name, _, _ in _SCALAR_COLUMNS),
        *(name for name, _, _, _ in _VECTOR_COLUMNS),
        "rows",
    )

    pending_sum: array[float]
    pending_exposure: array[float]
    pending_resolution: array[float]
    acc_sum: array[float]
    global_level: array[float]
    scale: array[float]
    offset: array[float]
    cusum_pos: array[float]
    cusum_neg: array[float]
    last_value: array[float]
    count_scale: array[float]
    exposure: array[float]
    resolution: array[float]
    first_interval: array[int]
    open_interval: array[int]
    last_interval: array[int]
    acc_hour: array[int]
    pos_start: array[int]
    neg_start: array[int]
    alert_onset: array[int]
    pending_count: array[int]
    acc_count: array[int]
    n: array[int]
    late_values: array[int]
    alerts_raised: array[int]
    offset_tier: array[int]
    alert_direction: array[int]
    week_level: array[float]
    week_count: array[int]
    shape: array[int]
    ring: array[int]
    rows: int

    def __init__(self) -> None:
        for name, code, _ in _SCALAR_COLUMNS:
            setattr(self, name, array(code))
        for name, code, _, _ in _VECTOR_COLUMNS:
            setattr(self, name, array(code))
        self.rows = 0

    def add_row(self, count_scale: float = 0.0) -> int:
        """A new series in its initial state; returns its row."""
        for name, _, fill in _SCALAR_COLUMNS:
            getattr(self, name).append(fill)
        for name, _, _, _ in _VECTOR_COLUMNS:
            getattr(self, name).extend(_NEW_ROW_VECTORS[name])
        row = self.rows
        self.count_scale[row] = count_scale
        self.rows += 1
        return row

    def copy_row(self, source: SeriesColumns, source_row: int, row: int) -> None:
        """Overwrite ``row`` with ``source``'s ``source_row``."""
        for name, _, _ in _SCALAR_COLUMNS:
            getattr(self, name)[row] = getattr(source, name)[source_row]
        for name, _, length, _ in _VECTOR_COLUMNS:
            at, there = row * length, source_row * length
            getattr(self, name)[at : at + length] = getattr(source, name)[there : there + length]

    def nbytes(self) -> int:
        """Bytes the columns hold (without the arrays' spare capacity)."""
        return sum(len(column) * column.itemsize for column in self._columns())

    def _columns(self) -> list[array[Any]]:
        return [getattr(self, name) for name, _, _ in _SCALAR_COLUMNS] + [
            getattr(self, name) for name, _, _, _ in _VECTOR_COLUMNS
        ]


ROW_BYTES = sum(array(code).itemsize for _, code, _ in _SCALAR_COLUMNS) + sum(
    array(code).itemsize * length for _, code, length, _ in _VECTOR_COLUMNS
)
"""Bytes of in-memory state per series (``SeriesColumns``), its name and index not included."""


class SeasonalBaseline:
    """Baseline of one series: robust level and spread with hour-of-day / hour-of-week seasonality,
    CUSUM onset detection and a direction-aware score. See the module docstring for the model.

    A view of one row of ``SeriesColumns``: a baseline made on its own has columns of one row; one
    from ``BaselineStore.get`` reads and writes the store's row (the store holds no object per
    series)."""

    __slots__ = ("_alphas", "_c", "_r", "config")

    def __init__(self, config: BaselineConfig | None = None, count_scale: float = 0.0) -> None:
        if not (count_scale >= 0.0 and math.isfinite(count_scale)):
            raise ValueError(f"count_scale must be finite and >= 0, got {count_scale}")
        self.config = config or BaselineConfig()
        self._alphas = _alphas(self.config)
        # values times count_scale are event counts per interval (a rate per second measured
        # over interval_s seconds: count_scale = interval_s); 0 for anything else
        self._c = SeriesColumns()
        self._r = self._c.add_row(count_scale)

    @classmethod
    def _view(
        cls,
        config: BaselineConfig,
        columns: SeriesColumns,
        row: int,
        alphas: tuple[float, float, float, float] | None = None,
    ) -> SeasonalBaseline:
        baseline = cls.__new__(cls)
        baseline.config = config
        baseline._alphas = _alphas(config) if alphas is None else alphas
        baseline._c = columns
        baseline._r = row
        return baseline

    # ------------------------------------------------------------------ reads
    @property
    def intervals_learned(self) -> int:
        return self._c.n[self._r]

    @property
    def late_values(self) -> int:
        """Values dropped because their interval had already been learned."""
        return self._c.late_values[self._r]

    @property
    def alerts_raised(self) -> int:
        """Number of sustained-deviation episodes started so far."""
        return self._c.alerts_raised[self._r]

    @property
    def count_scale(self) -> float:
        """Factor turning a value into events per interval (0: the series is not a count)."""
        return self._c.count_scale[self._r]

    @property
    def exposure(self) -> float:
        """Factor turning the last learned value into events counted (its own exposure, else
        ``count_scale``); 0 when the series is not a count."""
        return self._c.exposure[self._r] or self._c.count_scale[self._r]

    @property
    def resolution(self) -> float:
        """Typical step in which the series' values are known (0: exact)."""
        return self._c.resolution[self._r]

    @property
    def first_seen_s(self) -> float | None:
        first = self._c.first_interval[self._r]
        if first == _NONE_INDEX:
            return None
        return first * self.config.interval_s

    def hour_of_week_profile(self) -> list[float | None]:
        """Learned level per hour of the week (Monday 00:00 first); None where never seen."""
        at = self._r * HOURS_PER_WEEK
        levels = self._c.week_level[at : at + HOURS_PER_WEEK]
        return [level if self._count_at(bucket) else None for bucket, level in enumerate(levels)]

    def expected(self, t_unix_s: float) -> tuple[float, float, Tier]:
        """Expected value, spread (sigma-equivalent) and tier used at event time ``t``."""
        expected, spread, tier, _ = self._expectation(t_unix_s)
        return expected, spread, tier

    def onset(self) -> float | None:
        """Estimated start (unix s) of the sustained deviation in progress, else None."""
        c, r = self._c, self._r
        onset = c.alert_onset[r]
        if c.alert_direction[r] == 0 or onset == _NONE_INDEX:
            return None
        return onset * self.config.interval_s

    def deviation(self) -> Deviation | None:
        """The sustained deviation in progress, scored at the last learned interval."""
        c, r = self._c, self._r
        direction = c.alert_direction[r]
        last = c.last_interval[r]
        if direction == 0 or last == _NONE_INDEX:
            return None
        interval_s = self.config.interval_s
        t_start = last * interval_s
        expected, spread, tier, _ = self._expectation(t_start + interval_s / 2)
        value = c.last_value[r]
        z = (value - expected) / spread
        return Deviation(
            t_s=t_start,
            value=value,
            expected=expected,
            spread=spread,
            score=z,
            direction=direction,
            alert_worthy=True,
            onset_s=self.onset(),
            tier=tier,
        )

    def recent_scores(self) -> list[tuple[float, float]]:
        """(interval start in unix s, robust z) of the last learned intervals still remembered
        (up to the onset ring's length), oldest first; unknown intervals are left out."""
        last = self._c.last_interval[self._r]
        if last == _NONE_INDEX:
            return []
        ring, at = self._c.ring, self._r * ONSET_RING_LENGTH
        out = []
        for interval in range(last - ONSET_RING_LENGTH + 1, last + 1):
            raw = ring[at + interval % ONSET_RING_LENGTH]
            if raw != _RING_MISSING:
                out.append((interval * self.config.interval_s, raw / _RING_STEPS_PER_SIGMA))
        return out

    def score(self, t_unix_s: float, value: float, exposure: float = 0.0) -> Deviation:
        """Score ``value`` as if it were the next interval's value (``exposure`` as in
        ``update``; 0: the last learned one). Does not change the state."""
        config = self.config
        c, r = self._c, self._r
        interval = math.floor(t_unix_s / config.interval_s)
        expected, spread, tier, _ = self._expectation(
            (interval + 0.5) * config.interval_s, exposure
        )
        z, spread = self._z(value, expected, spread, exposure)
        direction = 1 if z >= 0 else -1
        alert_worthy = False
        onset_interval: int | None = None
        if c.n[r] >= config.min_intervals_to_alert:
            cusum_pos, cusum_neg = c.cusum_pos[r], c.cusum_neg[r]
            alert_direction = c.alert_direction[r]
            clipped = max(-config.z_clip, min(config.z_clip, z))
            pos = min(config.cusum_cap, max(0.0, cusum_pos + clipped - config.cusum_slack))
            neg = min(config.cusum_cap, max(0.0, cusum_neg - clipped - config.cusum_slack))
            if alert_direction != 0:
                still = pos if alert_direction > 0 else neg
                if still > 0:
                    alert_worthy = True
                    direction = alert_direction
                    onset_interval = _from_opt(c.alert_onset[r])
            if not alert_worthy and max(pos, neg) > config.cusum_threshold:
                alert_worthy = True
                direction = 1 if pos >= neg else -1
                run_start = _from_opt(c.pos_start[r] if direction > 0 else c.neg_start[r])
                if (cusum_pos if direction > 0 else cusum_neg) <= 0:
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
        self._add(t_unix_s, value, exposure, resolution)

    def _add(self, t_unix_s: float, value: float, exposure: float, resolution: float) -> None:
        """``update`` of a value already checked."""
        c, r = self._c, self._r
        interval = math.floor(t_unix_s / self.config.interval_s)
        open_interval = c.open_interval[r]
        if open_interval == _NONE_INDEX:
            c.open_interval[r] = interval
            if c.first_interval[r] == _NONE_INDEX:
                c.first_interval[r] = interval
        elif interval > open_interval:
            self._learn_pending(open_interval)
            c.open_interval[r] = interval
        elif interval < open_interval:
            c.late_values[r] += 1
            return
        c.pending_sum[r] += value
        c.pending_exposure[r] += exposure
        c.pending_resolution[r] += resolution
        c.pending_count[r] += 1

    def _learn_pending(self, interval: int) -> None:
        c, r = self._c, self._r
        count = c.pending_count[r]
        if count:
            self._learn(
                interval,
                c.pending_sum[r] / count,
                c.pending_exposure[r] / count,
                c.pending_resolution[r] / count,
            )
        c.pending_sum[r] = c.pending_exposure[r] = c.pending_resolution[r] = 0.0
        c.pending_count[r] = 0

    def flush(self, now_unix_s: float) -> None:
        """Event-time watermark: learn the open interval if it ended by ``now``."""
        c, r = self._c, self._r
        open_interval = c.open_interval[r]
        if open_interval == _NONE_INDEX or not c.pending_count[r]:
            return
        if (open_interval + 1) * self.config.interval_s <= now_unix_s:
            self._learn_pending(open_interval)
            c.open_interval[r] = open_interval + 1

    # ------------------------------------------------------------ the model
    def _count_at(self, bucket: int) -> int:
        packed = self._c.week_count[self._r * _COUNTS_PER_ROW + (bucket >> 1)]
        return packed >> 4 if bucket & 1 else packed & 0x0F

    def _set_count(self, bucket: int, count: int) -> None:
        counts, at = self._c.week_count, self._r * _COUNTS_PER_ROW + (bucket >> 1)
        packed = counts[at]
        counts[at] = (packed & 0x0F) | (count << 4) if bucket & 1 else (packed & 0xF0) | count

    def _week_level_at(self, hour_index: int) -> float | None:
        day, hour_of_day = divmod(hour_index, HOURS_PER_DAY)
        bucket = ((day + _EPOCH_WEEKDAY) % 7) * HOURS_PER_DAY + hour_of_day  # _hour_of_week
        c, r = self._c, self._r
        packed = c.week_count[r * _COUNTS_PER_ROW + (bucket >> 1)]
        if not (packed >> 4 if bucket & 1 else packed & 0x0F):
            return None
        return c.week_level[r * HOURS_PER_WEEK + bucket]

    def _day_level_at(self, hour_index: int) -> float | None:
        """The hour-of-day profile at ``hour_index``: the mean of that hour's learned
        hour-of-week levels over the weekdays seen (derived when read, never stored)."""
        hour_of_day = hour_index % HOURS_PER_DAY
        c = self._c
        levels, level_at = c.week_level, self._r * HOURS_PER_WEEK + hour_of_day
        counts, count_at = c.week_count, self._r * _COUNTS_PER_ROW + (hour_of_day >> 1)
        shift = 4 if hour_of_day & 1 else 0  # 24 is even: every weekday's bucket alike
        total = 0.0
        seen = 0
        for level_step, count_step in _WEEKDAY_STEPS:
            if (counts[count_at + count_step] >> shift) & 0x0F:
                total += levels[level_at + level_step]
                seen += 1
        if not seen:
            return None
        level = total / seen
        return None if math.isnan(level) else level

    def _expectation(
        self, t_unix_s: float, exposure: float = 0.0
    ) -> tuple[float, float, Tier, float]:
        """(expected, spread, tier, seasonal level without the drift offset); ``exposure`` of the
        value to be scored (0: the last learned value's, else ``count_scale``)."""
        config = self.config
        c, r = self._c, self._r
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
            seasonal = c.global_level[r]
            expected = seasonal
        else:
            if other is not None:
                seasonal = seasonal * (1.0 - weight) + other * weight
            offset = c.offset[r] if tier == _TIERS[c.offset_tier[r]] else 0.0
            expected = seasonal + offset
        shape = _HALF_VALUES[c.shape[r * HOURS_PER_DAY + hour_index % HOURS_PER_DAY]]
        spread = (
            _MAD_TO_SIGMA
            * c.scale[r]
            * shape
            * factor
            * (1.0 + config.warmup_spread_gain / math.sqrt(c.n[r] + 1))
        )
        floor = max(
            config.min_spread_relative * abs(expected), config.min_spread_absolute, c.resolution[r]
        )
        scale = exposure or c.exposure[r] or c.count_scale[r]
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
        c, r = self._c, self._r
        n = c.n[r]
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
        counted = (exposure or c.exposure[r] or c.count_scale[r]) > 0.0
        if prior <= 0.0 and not counted and c.resolution[r] <= 0.0:
            return 0.0, spread
        spread = max(prior, spread)
        z = (value - expected) / spread
        return max(-config.z_clip, min(config.z_clip, z)), spread

    def _close_hour(self) -> None:
        c, r = self._c, self._r
        acc_hour, acc_count = c.acc_hour[r], c.acc_count[r]
        if acc_hour == _NONE_INDEX or not acc_count:
            return
        self._fold_hour(acc_hour, c.acc_sum[r] / acc_count)
        c.acc_hour[r] = _NONE_INDEX
        c.acc_sum[r] = 0.0
        c.acc_count[r] = 0

    def _fold_hour(self, hour_index: int, mean: float) -> None:
        bucket = _hour_of_week(hour_index)
        count = self._count_at(bucket)
        levels, at = self._c.week_level, self._r * HOURS_PER_WEEK + bucket
        if count == 0:
            levels[at] = mean
        else:
            alpha = max(1.0 / (count + 1), self.config.week_alpha_min)
            level = levels[at]
            levels[at] = level + alpha * (mean - level)
        self._set_count(bucket, min(MAX_BUCKET_COUNT, count + 1))

    def _push_residual(self, interval: int, z: float) -> None:
        ring, at = self._c.ring, self._r * ONSET_RING_LENGTH
        last = self._c.last_interval[self._r]
        if last != _NONE_INDEX and interval > last + 1:
            for missing in range(max(last + 1, interval - ONSET_RING_LENGTH + 1), interval):
                ring[at + missing % ONSET_RING_LENGTH] = _RING_MISSING
        ring[at + interval % ONSET_RING_LENGTH] = _quantize_residual(z)

    def _recent_residuals(self, end: int) -> list[float | None]:
        """Ring contents for intervals end-31 .. end-1 (oldest first), None where unknown."""
        out: list[float | None] = []
        ring, at = self._c.ring, self._r * ONSET_RING_LENGTH
        last = self._c.last_interval[self._r]
        for interval in range(end - ONSET_RING_LENGTH + 1, end):
            raw = ring[at + interval % ONSET_RING_LENGTH]
            known = (
                last != _NONE_INDEX and last - ONSET_RING_LENGTH < interval <= last
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
        last = self._c.last_interval[self._r]
        if last == _NONE_INDEX:
            return 1
        ring, at = self._c.ring, self._r * ONSET_RING_LENGTH
        known = [
            i
            for i in range(last - ONSET_RING_LENGTH + 1, last + 1)
            if ring[at + i % ONSET_RING_LENGTH] != _RING_MISSING
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
        last = self._c.last_interval[self._r]
        if last == _NONE_INDEX or interval - last <= 1:
            return 1
        return min(interval - last, self.spacing)

    def _learn(self, interval: int, value: float, exposure: float, resolution: float) -> None:
        config = self.config
        c, r = self._c, self._r
        # EWMA memories are event time: a value standing for k intervals weighs as k of them
        last = c.last_interval[r]
        steps = 1 if last == _NONE_INDEX or interval - last <= 1 else self._spacing(interval)
        alpha_level, alpha_scale, alpha_shape, alpha_offset = self._alphas
        if steps != 1:
            alpha_level = 1.0 - (1.0 - alpha_level) ** steps
            alpha_scale = 1.0 - (1.0 - alpha_scale) ** steps
            alpha_shape = 1.0 - (1.0 - alpha_shape) ** steps
            alpha_offset = 1.0 - (1.0 - alpha_offset) ** steps

        t_mid = (interval + 0.5) * config.interval_s
        hour_index = math.floor((t_mid + config.utc_offset_s) / SECONDS_PER_HOUR)
        acc_hour = c.acc_hour[r]
        if acc_hour != _NONE_INDEX and hour_index != acc_hour:
            self._close_hour()
        _check_float32(exposure)
        c.exposure[r] = exposure  # float32, as in snapshots
        expected, spread, tier, seasonal = self._expectation(t_mid)
        n = c.n[r]
        # the first value has nothing to be compared with: it sets the level, and its
        # "residual" against the empty state does not enter the spread; the second has a level
        # but no spread yet: it is scored against the prior (``_z``)
        z, _ = self._z(value, expected, spread, exposure)
        warm = n >= config.min_intervals_to_alert

        # onset detection on the residual, before learning from it
        if warm:
            clipped = max(-config.z_clip, min(config.z_clip, z))
            cusum_pos, cusum_neg = c.cusum_pos[r], c.cusum_neg[r]
            pos = max(0.0, cusum_pos + clipped - config.cusum_slack)
            neg = max(0.0, cusum_neg - clipped - config.cusum_slack)
            if pos > 0 and cusum_pos <= 0:
                c.pos_start[r] = interval
            if neg > 0 and cusum_neg <= 0:
                c.neg_start[r] = interval
            c.cusum_pos[r] = pos = min(config.cusum_cap, pos)
            c.cusum_neg[r] = neg = min(config.cusum_cap, neg)
            direction = c.alert_direction[r]
            if direction != 0 and (pos if direction > 0 else neg) <= 0:
                c.alert_direction[r] = direction = 0
                c.alert_onset[r] = _NONE_INDEX
            if direction == 0 and max(pos, neg) > config.cusum_threshold:
                direction = 1 if pos >= neg else -1
                run_start = _from_opt(c.pos_start[r] if direction > 0 else c.neg_start[r])
                c.alert_onset[r] = self._estimate_onset(direction, interval, run_start, z)
                c.alert_direction[r] = direction
                c.alerts_raised[r] += 1
        self._push_residual(interval, z)
        c.last_interval[r] = interval
        c.last_value[r] = value

        # learning, winsorized around the expectation
        calm = c.alert_direction[r] == 0
        if n >= max(2, config.winsorize_after):
            w = config.winsorize_z if calm else config.winsorize_z_in_deviation
            value = max(expected - w * spread, min(expected + w * spread, value))
        alpha = max(1.0 / (n + 1), alpha_level)
        level = c.global_level[r]
        c.global_level[r] = level + alpha * (value - level)
        if calm:
            scale_alpha = max(1.0 / (n + 1), alpha_scale)
            typical = c.resolution[r]
            typical += scale_alpha * (resolution - typical)
            _check_float32(typical)
            c.resolution[r] = typical  # float32, as in snapshots
        if calm and n > 0:
            residual = abs(value - expected)
            scale_alpha = max(1.0 / n, alpha_scale)
            scale = c.scale[r]
            scale += scale_alpha * (residual - scale)
            c.scale[r] = scale
            if scale > 0:
                at = r * HOURS_PER_DAY + hour_index % HOURS_PER_DAY
                shape = _HALF_VALUES[c.shape[at]]
                ratio = min(residual / scale, 5.0)
                shape += alpha_shape * (ratio - shape)
                c.shape[at] = _half_bits(max(0.2, min(5.0, shape)))
        if tier != _TIERS[c.offset_tier[r]]:
            # the drift learned against one tier's profile means nothing against another's
            c.offset[r] = 0.0
            c.offset_tier[r] = _TIER_CODES[tier]
        if tier != "global":
            offset_alpha = alpha_offset
            offset = c.offset[r]
            c.offset[r] = offset + offset_alpha * (value - seasonal - offset)
        if c.acc_hour[r] == _NONE_INDEX:
            c.acc_hour[r] = hour_index
        c.acc_sum[r] += value
        c.acc_count[r] += 1
        c.n[r] = n + 1

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
        if other.count_scale != self.count_scale:
            raise ValueError("cannot merge a count series with a series of another kind")
        newer, older = self, other
        if self._recency_key() < other._recency_key():
            newer, older = other, self
        merged = SeasonalBaseline.from_bytes(newer.to_bytes(), newer.config)
        m, mr = merged._c, merged._r
        o, orow = older._c, older._r
        older_open = o.open_interval[orow]
        if older_open != _NONE_INDEX and older_open == m.open_interval[mr]:
            m.pending_sum[mr] += o.pending_sum[orow]
            m.pending_exposure[mr] += o.pending_exposure[orow]
            m.pending_resolution[mr] += o.pending_resolution[orow]
            m.pending_count[mr] += o.pending_count[orow]
        elif o.pending_count[orow]:
            older = SeasonalBaseline.from_bytes(older.to_bytes(), older.config)
            o, orow = older._c, older._r
            older.flush((o.open_interval[orow] + 1) * older.config.interval_s)
        older_acc: tuple[int, float, int] | None
        if o.acc_count[orow] and o.acc_hour[orow] == m.acc_hour[mr]:
            m.acc_sum[mr] += o.acc_sum[orow]
            m.acc_count[mr] += o.acc_count[orow]
            older_acc = None
        else:
            older_acc = (o.acc_hour[orow], o.acc_sum[orow], o.acc_count[orow])

        mine, theirs = mr * HOURS_PER_WEEK, orow * HOURS_PER_WEEK
        for bucket in range(HOURS_PER_WEEK):
            count_new, count_old = merged._count_at(bucket), older._count_at(bucket)
            if count_old == 0:
                continue
            level_old = o.week_level[theirs + bucket]
            if count_new == 0:
                m.week_level[mine + bucket] = level_old
            else:
                m.week_level[mine + bucket] = _weighted(
                    m.week_level[mine + bucket], count_new, level_old, count_old
                )
            merged._set_count(bucket, min(MAX_BUCKET_COUNT, count_new + count_old))
        if older_acc is not None and older_acc[0] != _NONE_INDEX and older_acc[2]:
            merged._fold_hour(older_acc[0], older_acc[1] / older_acc[2])

        c, r = newer._c, newer._r
        n_new, n_old = c.n[r], o.n[orow]
        m.global_level[mr] = _weighted(c.global_level[r], n_new, o.global_level[orow], n_old)
        m.scale[mr] = _weighted(c.scale[r], n_new, o.scale[orow], n_old)
        m.resolution[mr] = _to_float32(_weighted(c.resolution[r], n_new, o.resolution[orow], n_old))
        for hour in range(HOURS_PER_DAY):
            a = _HALF_VALUES[c.shape[r * HOURS_PER_DAY + hour]]
            b = _HALF_VALUES[o.shape[orow * HOURS_PER_DAY + hour]]
            m.shape[mr * HOURS_PER_DAY + hour] = _half_bits(_weighted(a, n_new, b, n_old))
        m.n[mr] = min(2**32 - 1, n_new + n_old)
        firsts = [f for f in (c.first_interval[r], o.first_interval[orow]) if f != _NONE_INDEX]
        m.first_interval[mr] = min(firsts) if firsts else _NONE_INDEX
        m.late_values[mr] = min(2**32 - 1, c.late_values[r] + o.late_values[orow])
        m.alerts_raised[mr] = min(2**32 - 1, c.alerts_raised[r] + o.alerts_raised[orow])
        return merged

    def _recency_key(self) -> tuple[int, int, bytes]:
        return (
            self._c.open_interval[self._r],
            self._c.last_interval[self._r],
            self.to_bytes(),  # deterministic tie-break keeps merge commutative
        )

    # ---------------------------------------------------------- snapshots
    def to_bytes(self) -> bytes:
        """Compact, versioned, pickle-free snapshot (``SNAPSHOT_BYTES`` long, under 1 KB)."""
        c, r = self._c, self._r
        levels = r * HOURS_PER_WEEK
        counts = r * _COUNTS_PER_ROW
        shape = r * HOURS_PER_DAY
        ring = r * ONSET_RING_LENGTH
        return b"".join(
            (
                _HEADER.pack(_MAGIC, _VERSION, self.config.fingerprint()),
                _SCALARS.pack(
                    c.first_interval[r],
                    c.open_interval[r],
                    c.pending_sum[r],
                    c.pending_count[r],
                    c.acc_hour[r],
                    c.acc_sum[r],
                    c.acc_count[r],
                    c.global_level[r],
                    c.scale[r],
                    c.n[r],
                    c.offset[r],
                    c.offset_tier[r],
                    c.cusum_pos[r],
                    c.cusum_neg[r],
                    c.pos_start[r],
                    c.neg_start[r],
                    c.alert_direction[r],
                    c.alert_onset[r],
                    c.last_interval[r],
                    c.last_value[r],
                    c.late_values[r],
                    c.alerts_raised[r],
                    c.count_scale[r],
                    c.pending_exposure[r],
                    c.pending_resolution[r],
                    c.exposure[r],
                    c.resolution[r],
                ),
                c.week_level[levels : levels + HOURS_PER_WEEK].tobytes(),
                c.week_count[counts : counts + _COUNTS_PER_ROW].tobytes(),
                _SHAPE_BITS_FORMAT.pack(*c.shape[shape : shape + HOURS_PER_DAY]),
                c.ring[ring : ring + ONSET_RING_LENGTH].tobytes(),
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes, config: BaselineConfig | None = None) -> SeasonalBaseline:
        """Restore a snapshot written under the same ``config`` (checked by fingerprint). Older
        versions restore: version 1 (before ``count_scale``) with ``count_scale`` 0, versions 1
        and 2 (before per-value exposure and resolution) with neither (exposure from
        ``count_scale``, exact values)."""
        baseline = cls(config)
        baseline._load(data)
        return baseline

    def _load(self, data: bytes) -> None:
        """Overwrite this row with the snapshot ``data`` (see ``from_bytes``); unchanged when
        ``data`` is refused."""
        config = self.config
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
        scalars = _SCALARS.unpack_from(data, _HEADER.size)
        (
            first_interval,
            open_interval,
            pending_sum,
            pending_count,
            acc_hour,
            acc_sum,
            acc_count,
            global_level,
            scale,
            n,
            offset,
            offset_tier,
            cusum_pos,
            cusum_neg,
            pos_start,
            neg_start,
            alert_direction,
            alert_onset,
            last_interval,
            last_value,
            late_values,
            alerts_raised,
            count_scale,
            pending_exposure,
            pending_resolution,
            exposure,
            resolution,
        ) = scalars
        for name, number in (
            ("count_scale", count_scale),
            ("pending_exposure", pending_exposure),
            ("pending_resolution", pending_resolution),
            ("exposure", exposure),
            ("resolution", resolution),
        ):
            if not (number >= 0.0 and math.isfinite(number)):
                raise ValueError(f"corrupt baseline snapshot ({name} {number})")
        if offset_tier >= len(_TIERS):
            raise ValueError(f"corrupt baseline snapshot (tier {offset_tier})")
        c, r = self._c, self._r
        c.first_interval[r] = first_interval
        c.open_interval[r] = open_interval
        c.pending_sum[r] = pending_sum
        c.pending_count[r] = pending_count
        c.acc_hour[r] = acc_hour
        c.acc_sum[r] = acc_sum
        c.acc_count[r] = acc_count
        c.global_level[r] = global_level
        c.scale[r] = scale
        c.n[r] = n
        c.offset[r] = offset
        c.offset_tier[r] = offset_tier
        c.cusum_pos[r] = cusum_pos
        c.cusum_neg[r] = cusum_neg
        c.pos_start[r] = pos_start
        c.neg_start[r] = neg_start
        c.alert_direction[r] = alert_direction
        c.alert_onset[r] = alert_onset
        c.last_interval[r] = last_interval
        c.last_value[r] = last_value
        c.late_values[r] = late_values
        c.alerts_raised[r] = alerts_raised
        c.count_scale[r] = count_scale
        c.pending_exposure[r] = pending_exposure
        c.pending_resolution[r] = pending_resolution
        c.exposure[r] = exposure
        c.resolution[r] = resolution
        offset_at = _HEADER.size + _SCALARS.size
        at = r * HOURS_PER_WEEK
        c.week_level[at : at + HOURS_PER_WEEK] = array(
            "f", data[offset_at : offset_at + _LEVELS_BYTES]
        )
        offset_at += _LEVELS_BYTES
        at = r * _COUNTS_PER_ROW
        c.week_count[at : at + _COUNTS_PER_ROW] = array(
            "B", data[offset_at : offset_at + _COUNTS_BYTES]
        )
        offset_at += _COUNTS_BYTES
        at = r * HOURS_PER_DAY
        c.shape[at : at + HOURS_PER_DAY] = array(
            "H", _SHAPE_BITS_FORMAT.unpack_from(data, offset_at)
        )
        offset_at += _SHAPE_BITS_FORMAT.size
        at = r * ONSET_RING_LENGTH
        c.ring[at : at + ONSET_RING_LENGTH] = array(
            "b", data[offset_at : offset_at + ONSET_RING_LENGTH]
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SeasonalBaseline):
            return NotImplemented
        return self.to_bytes() == other.to_bytes()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        c, r = self._c, self._r
        return (
            f"SeasonalBaseline(intervals={c.n[r]}, level={c.global_level[r]:.6g}, "
            f"alert={c.alert_direction[r]})"
        )


_STORE_HEADER = struct.Struct("<4sBIQIH")
_STORE_MAGIC = b"WLBS"
_STORE_VERSION = 1


class BaselineStore:
    """(entity, signal) -> baseline under a hard cap on the number of series.

    The series' state is one ``SeriesColumns`` (a row per series, ``ROW_BYTES`` each) and a dict
    from (entity, signal) to the row; ``get`` returns a ``SeasonalBaseline`` that is a view of
    the row. Every refused update is counted by reason: ``series_cap`` (a new series beyond
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
        self._columns = SeriesColumns()
        self._rows: dict[SeriesKey, int] = {}
        self._refusals: dict[str, int] = {}
        self._alphas_of: BaselineConfig | None = None
        self._alphas = _alphas(self.config)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, key: object) -> bool:
        return key in self._rows

    def _view(self, row: int, columns: SeriesColumns | None = None) -> SeasonalBaseline:
        config = self.config
        if self._alphas_of is not config:  # EWMA weights computed once per config
            self._alphas = _alphas(config)
            self._alphas_of = config
        columns = self._columns if columns is None else columns
        return SeasonalBaseline._view(config, columns, row, self._alphas)

    def get(self, entity: str, signal: str) -> SeasonalBaseline | None:
        """The series' baseline (a view of its row: updates through it change the store)."""
        row = self._rows.get((entity, signal))
        return None if row is None else self._view(row)

    def keys(self) -> list[SeriesKey]:
        return sorted(self._rows)

    @property
    def refusals(self) -> dict[str, int]:
        return dict(self._refusals)

    @property
    def state_bytes(self) -> int:
        """Bytes of the series' state in the columns (names and index not included)."""
        return self._columns.nbytes()

    def _refuse(self, reason: str, count: int = 1) -> None:
        self._refusals[reason] = self._refusals.get(reason, 0) + count

    def _add(self, entity: str, signal: str, count_scale: float) -> int:
        # a name is shared by every series that has it (an entity has many signals, a signal
        # many entities): one string each, not one per series
        row = self._columns.add_row(count_scale)
        self._rows[(sys.intern(entity), sys.intern(signal))] = row
        return row

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
        row = self._rows.get((entity, signal))
        if row is None:
            if len(self._rows) >= self.max_series:
                self._refuse("series_cap")
                return False
            scale = 0.0 if self.count_scale is None else self.count_scale(entity, signal)
            if not (scale >= 0.0 and math.isfinite(scale)):
                raise ValueError(f"count_scale must be finite and >= 0, got {scale}")
            row = self._add(entity, signal, scale)
        self._view(row).update(t_unix_s, value, exposure, resolution)
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
        rows = self._rows
        cursor = self._view(0)  # moved row to row
        accepted = 0
        for key, t, value, exposure, resolution in zip(keys, *columns, strict=True):
            row = rows.get(key)
            if row is None or not (
                math.isfinite(value)
                and math.isfinite(t)
                and 0.0 <= exposure < math.inf
                and 0.0 <= resolution < math.inf
            ):
                accepted += self.update(key[0], key[1], t, value, exposure, resolution)
                continue
            cursor._r = row
            cursor._add(t, value, exposure, resolution)  # checked above
            accepted += 1
        return accepted

    def advance(self, now_unix_s: float) -> None:
        """Event-time watermark for every series: learn intervals that ended by ``now``."""
        columns = self._columns
        if not columns.rows:
            return
        # only rows with values pending in an interval that ended by now learn anything
        pending = np.frombuffer(columns.pending_count, dtype=np.uint32)
        opened = np.frombuffer(columns.open_interval, dtype=np.int64)
        due = (pending > 0) & (opened != _NONE_INDEX)
        due &= (opened + 1) * self.config.interval_s <= now_unix_s
        rows = np.flatnonzero(due).tolist()
        del pending, opened, due  # the arrays may grow again once no view holds them
        cursor = self._view(0, columns)
        for row in rows:
            cursor._r = row
            cursor.flush(now_unix_s)

    def deviations(self, now_unix_s: float) -> list[SeriesDeviation]:
        """Sustained deviations in progress (with onset), after ``advance(now)``."""
        self.advance(now_unix_s)
        direction = self._columns.alert_direction
        out = []
        for key in sorted(self._rows):
            row = self._rows[key]
            if direction[row] == 0:
                continue
            deviation = self._view(row).deviation()
            if deviation is not None:
                out.append(SeriesDeviation(key[0], key[1], deviation))
        return out

    def merge(self, other: BaselineStore) -> None:
        """Fold ``other`` into this store (in place); same keys are merged, new keys respect the
        cap (each series that does not fit counts one ``series_cap`` refusal)."""
        if other.config.fingerprint() != self.config.fingerprint():
            raise ValueError("cannot merge stores with different configs")
        for key in sorted(other._rows):
            theirs = other._view(other._rows[key])
            row = self._rows.get(key)
            if row is not None:
                mine = self._view(row)
                merged = mine.merge(theirs)
                self._columns.copy_row(merged._c, merged._r, row)
            elif len(self._rows) < self.max_series:
                row = self._add(key[0], key[1], 0.0)
                self._columns.copy_row(theirs._c, theirs._r, row)
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
                len(self._rows),
                len(self._refusals),
            )
        ]
        for reason in sorted(self._refusals):
            encoded = reason.encode()
            parts.append(struct.pack("<B", len(encoded)) + encoded)
            parts.append(struct.pack("<Q", self._refusals[reason]))
        cursor = self._view(0)
        for entity, signal in sorted(self._rows):
            for text in (entity, signal):
                encoded = text.encode()
                parts.append(struct.pack("<I", len(encoded)) + encoded)
            cursor._r = self._rows[(entity, signal)]
            parts.append(cursor.to_bytes())
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
        columns = SeriesColumns()
        rows: dict[SeriesKey, int] = {}
        cursor = self._view(0, columns)
        for _ in range(n_series):
            texts = []
            for _field in range(2):
                (length,) = struct.unpack_from("<I", data, offset)
                texts.append(sys.intern(data[offset + 4 : offset + 4 + length].decode()))
                offset += 4 + length
            version = data[offset + 2]
            size = snapshot_size(version)
            payload = data[offset : offset + size]
            offset += size
            cursor._r = columns.add_row()
            cursor._load(payload)
            if version == 1 and self.count_scale is not None:  # version 1: no kind yet
                columns.count_scale[cursor._r] = self.count_scale(texts[0], texts[1])
            rows[(texts[0], texts[1])] = cursor._r
        if offset != len(data):
            raise ValueError("trailing bytes after the last series in a store snapshot")
        self.max_series = max_series
        self._columns = columns
        self._rows = rows
        self._refusals = refusals


def learn_series(
    baseline: SeasonalBaseline, samples: Iterable[tuple[float, float]]
) -> SeasonalBaseline:
    """Feed ``(t, value)`` samples in order; returns the baseline (convenience for tests/replays)."""
    for t, value in samples:
        baseline.update(t, value)
    return baseline
