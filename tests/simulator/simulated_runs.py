"""Small, fast simulator runs shared by the simulator tests (seeded; nothing reads the clock)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from jobs.simulator.engine import CONSUMER, SERVER, SliceState, SpanBatch
from jobs.simulator.simulation import Record, RunConfig, Simulation

START_S = 1_763_730_000.0  # 2025-11-21T13:00:00Z, a Friday afternoon
SMALL = {"services": 14, "warmup_s": 120.0, "duration_s": 100.0, "peak_rate": 60.0}


@dataclass
class RunSummary:
    """Everything a physics test needs from one run, split at the fault onset."""

    sim: Simulation
    records: list[Record]
    before: list[SpanBatch] = field(default_factory=list)
    after: list[SpanBatch] = field(default_factory=list)
    max_backlog: float = 0.0
    states_before: list[SliceState] = field(default_factory=list)
    states_after: list[SliceState] = field(default_factory=list)

    def spans_with_keys(self, keys: set[int], after: bool) -> SpanBatch:
        """Spans whose span key (operation, or ``n_operations + call``) is in ``keys``."""
        batches = self.after if after else self.before
        wanted = np.array(sorted(keys), dtype=np.int64)
        return SpanBatch.concat(
            [b.take(np.flatnonzero(np.isin(b.span_key, wanted))) for b in batches]
        )

    def mean_state(self, name: str, after: bool) -> np.ndarray:
        states = self.states_after if after else self.states_before
        return np.mean([getattr(s, name) for s in states], axis=0)

    def server_durations(
        self, service: int, after: bool, pods: set[int] | None = None
    ) -> np.ndarray:
        parts = []
        for b in self.after if after else self.before:
            mask = ((b.role == SERVER) | (b.role == CONSUMER)) & (b.service == service)
            if pods is not None:
                mask &= np.isin(b.pod, list(pods))
            parts.append((b.end_ns[mask] - b.start_ns[mask]) / 1e6)
        return np.concatenate(parts) if parts else np.zeros(0)

    def error_ratio(self, service: int, after: bool) -> float:
        total = failed = 0
        for b in self.after if after else self.before:
            mask = (b.role == SERVER) & (b.service == service)
            total += int(mask.sum())
            failed += int((mask & (b.variant > 0)).sum())
        return failed / max(total, 1)

    def operation_latency_ratios(self, q: float = 0.9, min_count: int = 50) -> dict[int, float]:
        """Server/consumer span key -> ratio of the q-quantile of duration, after vs before."""
        ratios = {}
        stacked = {
            side: SpanBatch.concat(batches)
            for side, batches in (("before", self.before), ("after", self.after))
        }
        per_side: dict[str, dict[int, np.ndarray]] = {}
        for side, b in stacked.items():
            mask = (b.role == SERVER) | (b.role == CONSUMER)
            keys, durations = b.span_key[mask], (b.end_ns[mask] - b.start_ns[mask]) / 1e6
            order = np.argsort(keys, kind="stable")
            keys, durations = keys[order], durations[order]
            bounds = np.flatnonzero(np.diff(keys)) + 1
            per_side[side] = {
                int(k[0]): d
                for k, d in zip(np.split(keys, bounds), np.split(durations, bounds), strict=True)
                if len(k)
            }
        for key, before in per_side["before"].items():
            after = per_side["after"].get(key)
            if after is not None and len(before) >= min_count and len(after) >= min_count:
                ratios[key] = float(np.quantile(after, q) / np.quantile(before, q))
        return ratios

    def latency_ratio(self, service: int, q: float = 0.5) -> float:
        before, after = self.server_durations(service, False), self.server_durations(service, True)
        if len(before) < 20 or len(after) < 20:
            return 1.0
        return float(np.quantile(after, q) / np.quantile(before, q))


@functools.cache
def run_summary(
    scenario: str, seed: int = 7, skip_after_onset_s: float = 30.0, **overrides: float
) -> RunSummary:
    """One small run split at the onset; cached, since several tests look at the same run."""
    settings = {"start_s": START_S, "scenario": scenario, "seed": seed, **SMALL, **overrides}
    config = RunConfig(**settings)  # type: ignore[arg-type]
    sim = Simulation(config)
    summary = RunSummary(sim, [])
    for result in sim.slices():
        summary.records.extend(result.records)
        summary.max_backlog = max(summary.max_backlog, float(result.state.queue_backlog.max()))
        if result.t0_s + config.slice_s <= config.onset_s:
            summary.before.append(result.spans)
            summary.states_before.append(result.state)
        elif result.t0_s >= config.onset_s + skip_after_onset_s:
            summary.after.append(result.spans)
            summary.states_after.append(result.state)
    return summary
