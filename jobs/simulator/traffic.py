"""Traffic seasonality: request rate as a function of event time (daily and weekly shape + noise).

``rate_at`` is pure (time in, rate out); the slowly drifting noise is a separate AR(1) walk whose
state the caller carries, so a run is reproducible from its seed slice after slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DAY_S = 86400.0
WEEK_S = 7 * DAY_S


@dataclass(frozen=True)
class Seasonality:
    peak_rate: float = 200.0
    """Requests per second at the edge at the daily peak on a weekday."""
    trough_ratio: float = 0.35
    peak_hour: float = 14.0
    weekend_ratio: float = 0.7
    noise_sd: float = 0.03

    def daily_factor(self, t_s: np.ndarray | float) -> np.ndarray:
        hour = (np.asarray(t_s, dtype=np.float64) % DAY_S) / 3600.0
        wave = 0.5 + 0.5 * np.cos(2 * np.pi * (hour - self.peak_hour) / 24.0)
        return self.trough_ratio + (1.0 - self.trough_ratio) * wave**1.5

    def weekly_factor(self, t_s: np.ndarray | float) -> np.ndarray:
        # 1970-01-01 was a Thursday: day index 2 and 3 from there are Saturday and Sunday
        day = np.floor(np.asarray(t_s, dtype=np.float64) / DAY_S).astype(np.int64) % 7
        return np.where((day == 2) | (day == 3), self.weekend_ratio, 1.0)

    def rate_at(self, t_s: np.ndarray | float) -> np.ndarray:
        """Expected requests per second at the edge at event time ``t_s`` (Unix seconds)."""
        return self.peak_rate * self.daily_factor(t_s) * self.weekly_factor(t_s)


class TrafficNoise:
    """A mean-reverting multiplicative drift around 1, advanced once per time slice."""

    def __init__(self, sd: float, rng: np.random.Generator, reversion: float = 0.1) -> None:
        self.sd = sd
        self.rng = rng
        self.reversion = reversion
        self.level = 0.0

    def step(self) -> float:
        self.level += -self.reversion * self.level + self.sd * float(self.rng.standard_normal())
        return float(np.exp(self.level))
