"""Order-independent content digests of stored rows, to prove a store equals what was produced."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import orjson
import pyarrow as pa


def _canonical(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    return value


def row_digests(table: pa.Table, columns: Iterable[str] | None = None) -> list[str]:
    """One sha256 per row over the chosen columns (all by default), sorted."""
    if columns is not None:
        table = table.select(list(columns))
    out = []
    for row in table.to_pylist():
        data = orjson.dumps(_canonical(row), option=orjson.OPT_SORT_KEYS)
        out.append(hashlib.sha256(data).hexdigest())
    out.sort()
    return out


def content_digest(
    tables: Iterable[pa.Table], columns: Iterable[str] | None = None
) -> tuple[int, str]:
    """(rows, digest) of several tables taken together; equal multisets of rows give equal digests."""
    cols = list(columns) if columns is not None else None
    digests: list[str] = []
    for table in tables:
        digests.extend(row_digests(table, cols))
    digests.sort()
    return len(digests), hashlib.sha256("".join(digests).encode()).hexdigest()
