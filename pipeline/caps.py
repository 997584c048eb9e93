"""Taking settings into state restored from disk: caps apply at once, the rest as learned.

A component restored from a checkpoint (the world model, a log template miner) was learned
under the config stored with it. A cap (a ``max_*`` field: how many series, edges, templates
it keeps) bounds memory and may change at any restart; any other field (an interval, a memory,
a similarity threshold) shaped what was learned, so the stored value is kept and the setting
that differs is named for the caller to report; it takes effect on a fresh data directory.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

C = TypeVar("C")


def is_cap(name: str) -> bool:
    return name.startswith("max_")


def adopt_caps(learned: C, wanted: C, prefix: str = "") -> tuple[C, list[str]]:
    """``learned`` with every cap of ``wanted``, and the names (``prefix`` + field) of the other
    fields where ``wanted`` differs (kept as learned). Nested configs are left to the caller."""
    caps: dict[str, Any] = {}
    kept: list[str] = []
    for f in dataclasses.fields(learned):  # type: ignore[arg-type]
        old, new = getattr(learned, f.name), getattr(wanted, f.name)
        if is_cap(f.name):
            caps[f.name] = new
        elif old != new and not dataclasses.is_dataclass(old):
            kept.append(prefix + f.name)
    return dataclasses.replace(learned, **caps), kept  # type: ignore[type-var]
