"""A known graph handed to the world model: ``EdgeStore.add_given_edge``."""

from __future__ import annotations

import pytest

import schemas
from pipeline.worldmodel.graph import EdgeStore, EntityRef

S = 1_000_000_000
T0 = 1_700_000_000 * S
SITE = EntityRef("service", "site")
SEARCH = EntityRef("service", "search")
TABLE = EntityRef("database", "dynamodb:pets")


def test_given_edges_are_read_like_learned_ones_and_never_expire() -> None:
    store = EdgeStore()
    deltas = store.add_given_edge(SITE, SEARCH, "calls", T0)
    deltas += store.add_given_edge(SEARCH, TABLE, "calls", T0)
    for delta in deltas:
        schemas.validate("graph.deltas.schema.json", delta)
    edge_deltas = [d for d in deltas if d["element"]["type"] == "edge"]
    assert [d["op"] for d in edge_deltas] == ["add", "add"]
    assert all(d["element"]["provenance"] == ["given"] for d in edge_deltas)
    assert all(d["element"]["confidence"] == 1.0 for d in edge_deltas)
    assert "stats" not in edge_deltas[0]["element"]  # nothing was observed on it
    assert store.add_given_edge(SITE, SEARCH, "calls", T0 + S) == []  # idempotent

    later = T0 + 30 * 24 * 3600 * S  # far past expiry_s without any span
    store.advance(later)
    assert store.upstream(SITE, 3, later) == {SITE: 0, SEARCH: 1, TABLE: 2}
    graph = store.as_of(later)
    assert graph.has_edge(SITE.key, SEARCH.key, key="calls")
    assert graph.edges[SITE.key, SEARCH.key, "calls"]["provenance"] == ["given"]
    assert store.upstream(SITE, 3, T0 - S) == {}  # not valid before it was given

    restored = EdgeStore.restore(store.snapshot())
    restored.advance(later + 3600 * S)
    assert restored.upstream(SITE, 3, later + 3600 * S) == {SITE: 0, SEARCH: 1, TABLE: 2}


def test_unknown_relation_is_refused() -> None:
    with pytest.raises(ValueError):
        EdgeStore().add_given_edge(SITE, SEARCH, "likes", T0)
