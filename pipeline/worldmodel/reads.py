"""Reads of the world model, for the CLI and the HTTP API: the graph as of a time, a node's
neighbourhood, the baseline and recent values of a series, current deviations, changes.

They read the world-model worker's last checkpoint (never the live worker's memory), and recent
values are recomputed from the stored segments, so every number can be checked against them.
"""

from __future__ import annotations

import math
import re
from typing import Any

import orjson
import polars as pl

from pipeline.segments.store import SegmentStore
from pipeline.worldmodel.graph import EntityRef, to_dot, to_node_link_json
from pipeline.worldmodel.model import WorldModel
from pipeline.worldmodel.signals import MetricDeriver, log_signals, span_signals
from pipeline.worldmodel.worker import checkpoint_path


class ModelReadError(ValueError):
    """The model cannot answer (no checkpoint yet, unknown entity or series)."""


def load(store: SegmentStore) -> WorldModel:
    path = checkpoint_path(store)
    if not path.exists():
        raise ModelReadError(
            f"no world-model checkpoint at {path}: is the world-model stage running (worldline up)?"
        )
    return WorldModel.restore(path.read_bytes())


def entity_ref(text: str) -> EntityRef:
    kind, sep, name = text.partition(":")
    if not sep or not name:
        raise ModelReadError(f"entity {text!r}: expected kind:name, e.g. service:checkout")
    return EntityRef(kind, name)


def graph(model: WorldModel, at_unix_nano: int | None, fmt: str = "json") -> str:
    t = model.watermark if at_unix_nano is None else at_unix_nano
    g = model.graph.as_of(t)
    if fmt == "dot":
        return to_dot(g)
    if fmt == "json":
        return to_node_link_json(g).decode()
    raise ModelReadError(f"format {fmt!r}: use json or dot")


def neighbourhood(model: WorldModel, entity: str, hops: int, at_unix_nano: int | None) -> str:
    t = model.watermark if at_unix_nano is None else at_unix_nano
    return to_node_link_json(model.graph.neighbourhood(entity_ref(entity), hops, t)).decode()


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def baseline(
    model: WorldModel, entity: str, signal: str, at_unix_nano: int | None = None
) -> dict[str, Any]:
    series = model.baselines.get(entity, signal)
    if series is None:
        keys = model.baselines.keys()
        known = sorted((s for e, s in keys if e == entity), key=lambda s: ("{" in s, s))[:20]
        raise ModelReadError(
            f"no baseline for {entity} {signal}; signals of {entity}: {known or 'none'}"
        )
    t = (model.closed_through if at_unix_nano is None else at_unix_nano) / 1e9
    expected, spread, tier = series.expected(t)
    deviation = series.deviation()
    return {
        "entity": entity,
        "signal": signal,
        "at_unix_s": t,
        "expected": _finite(expected),
        "spread": _finite(spread),
        "tier": str(tier),
        "intervals_learned": series.intervals_learned,
        "deviation": None
        if deviation is None
        else {
            "score": deviation.score,
            "direction": deviation.direction,
            "value": deviation.value,
            "onset_unix_s": deviation.onset_s,
        },
    }


def deviations(model: WorldModel) -> list[dict[str, Any]]:
    out = []
    for d in model.baselines.deviations(model.closed_through / 1e9):
        out.append(
            {
                "entity": d.entity,
                "signal": d.signal,
                "score": d.deviation.score,
                "direction": d.deviation.direction,
                "value": d.deviation.value,
                "expected": d.deviation.expected,
                "onset_unix_s": d.deviation.onset_s,
            }
        )
    return sorted(out, key=lambda r: -abs(r["score"]))


def changes(
    model: WorldModel, since_unix_nano: int | None, until_unix_nano: int | None
) -> list[dict[str, Any]]:
    lo = since_unix_nano if since_unix_nano is not None else -(2**63)
    hi = until_unix_nano if until_unix_nano is not None else 2**63
    return sorted(
        (c for c in model.changes if lo <= int(c["time_unix_nano"]) <= hi),
        key=lambda c: int(c["time_unix_nano"]),
    )


def recent_values(
    store: SegmentStore,
    entity: str,
    signal: str,
    since_unix_nano: int,
    until_unix_nano: int,
    interval_s: float = 60.0,
) -> list[tuple[int, float]]:
    """The series recomputed from the stored segments of the window, per interval."""
    ref = entity_ref(entity)
    service = ref.name.split(" ", 1)[0] if ref.kind in ("service", "operation") else None
    services = [service] if service else None
    peer = re.search(r"\{peer=(?:operation|service):([^ }]+)", signal)
    if services and peer:
        # an edge named by the service or operation that answered its calls: the pairing
        # that named it needs that service's spans too
        services.append(peer.group(1))
    frames: list[pl.DataFrame] = []
    spans = store.select(
        "spans", start_unix_nano=since_unix_nano, end_unix_nano=until_unix_nano, services=services
    )
    if spans and (signal.startswith("span.") or signal.startswith("edge.")):
        import pyarrow as pa

        table = pa.concat_tables([store.read(m) for m in spans], promote_options="permissive")
        frames.append(span_signals(table, interval_s))
    logs = store.select(
        "logs", start_unix_nano=since_unix_nano, end_unix_nano=until_unix_nano, services=services
    )
    if logs and signal.startswith("log."):
        import pyarrow as pa

        frames.append(
            log_signals(
                pa.concat_tables([store.read(m) for m in logs], promote_options="permissive"),
                interval_s,
            )
        )
    if not frames and not (signal.startswith(("span.", "edge.", "log."))):
        import pyarrow as pa

        series = store.manifests("metric_series")
        points = store.select(
            "metrics", start_unix_nano=since_unix_nano, end_unix_nano=until_unix_nano
        )
        if series and points:
            deriver = MetricDeriver(interval_s=interval_s)
            s_table = pa.concat_tables(
                [store.read(m) for m in series], promote_options="permissive"
            )
            p_table = pa.concat_tables(
                [store.read(m) for m in points], promote_options="permissive"
            )
            p_table = p_table.sort_by([("series_id", "ascending"), ("time_unix_nano", "ascending")])
            frames.append(deriver.derive(s_table, p_table))
    if not frames:
        return []
    frame = pl.concat(frames).filter(
        (pl.col("entity") == entity)
        & (pl.col("signal") == signal)
        & (pl.col("interval_start_unix_nano") >= since_unix_nano)
        & (pl.col("interval_start_unix_nano") <= until_unix_nano)
    )
    return [
        (int(t), float(v))
        for t, v in frame.sort("interval_start_unix_nano")
        .select("interval_start_unix_nano", "value")
        .iter_rows()
    ]


def dumps(data: Any) -> str:
    return orjson.dumps(data, default=str).decode()
