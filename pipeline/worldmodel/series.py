"""The world model's registry of metric series: ``series_id`` -> its ``metric_series`` row.

One entry a series, so held compactly: a row is kept as a tuple of its values (its keys, in
their order, shared by every row with the same keys), and the strings many series repeat (the
metric's name, kind, unit, service, resource attributes) are interned, one string for all of
them. Reads give the row back as a dict equal to the one stored.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

# metric_series columns whose values recur across series
SHARED_FIELDS = frozenset({"name", "kind", "unit", "service", "resource_attributes"})


class MetricSeriesRegistry:
    """``series_id`` -> metric_series row (a dict), in insertion order; a dict-like subset:
    ``len``, ``in``, ``[]``, ``get``, ``pop``, iteration over ids, ``values``."""

    __slots__ = ("_layouts", "_rows")

    def __init__(self, rows: Iterable[Mapping[str, Any]] = ()) -> None:
        # each row: (its keys, then its values); the key tuples are shared
        self._rows: dict[int, tuple[Any, ...]] = {}
        self._layouts: dict[tuple[str, ...], tuple[str, ...]] = {}
        for row in rows:
            self[int(row["series_id"])] = row

    def __setitem__(self, series_id: int, row: Mapping[str, Any]) -> None:
        keys = tuple(row)
        layout = self._layouts.setdefault(keys, keys)
        values = [
            sys.intern(value) if type(value) is str and key in SHARED_FIELDS else value
            for key, value in row.items()
        ]
        self._rows[series_id] = (layout, *values)

    def __getitem__(self, series_id: int) -> dict[str, Any]:
        layout, *values = self._rows[series_id]
        return dict(zip(layout, values, strict=True))

    def get(self, series_id: int) -> dict[str, Any] | None:
        return self[series_id] if series_id in self._rows else None

    def pop(self, series_id: int) -> dict[str, Any]:
        row = self[series_id]
        del self._rows[series_id]
        return row

    def __contains__(self, series_id: object) -> bool:
        return series_id in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[int]:
        return iter(self._rows)

    def values(self) -> Iterator[dict[str, Any]]:
        for series_id in self._rows:
            yield self[series_id]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MetricSeriesRegistry):
            return NotImplemented
        return list(self._rows) == list(other._rows) and all(
            self[s] == other[s] for s in self._rows
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"MetricSeriesRegistry({len(self._rows)} series)"
