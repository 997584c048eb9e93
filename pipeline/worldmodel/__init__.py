"""The world model: what "normal" looks like for every signal (baselines) and, later, the
time-versioned dependency graph and the change stream. Pure cores live here; the stream workers
that feed them are thin shells around these classes."""

from pipeline.worldmodel.baseline import (
    SNAPSHOT_BYTES,
    Baseline,
    BaselineConfig,
    BaselineStore,
    Deviation,
    SeasonalBaseline,
    SeriesDeviation,
    SeriesKey,
    Tier,
)

__all__ = [
    "SNAPSHOT_BYTES",
    "Baseline",
    "BaselineConfig",
    "BaselineStore",
    "Deviation",
    "SeasonalBaseline",
    "SeriesDeviation",
    "SeriesKey",
    "Tier",
]
