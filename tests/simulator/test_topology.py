from __future__ import annotations

import numpy as np
import pytest

from jobs.simulator import topology
from jobs.simulator.engine import World


@pytest.mark.parametrize("n", [10, 37, 500])
def test_shapes_and_every_service_has_traffic(n: int) -> None:
    topo = topology.generate(n, np.random.default_rng(n))
    tiers = [s.tier for s in topo.services]
    assert tiers.count("gateway") == 1 and tiers.count("frontend") >= 2 and "mid" in tiers
    kinds = {d.kind for d in topo.dependencies}
    assert {"database", "cache", "queue", "external", "service"} <= kinds
    assert any(not d.declared for d in topo.dependencies if d.kind == "cache"), "a hidden cache"
    world = World(topo, 100.0, np.random.default_rng(0))
    visits = topo.entry_weights @ world.op_visits
    per_service = np.zeros(len(topo.services))
    np.add.at(per_service, world.op_service, visits)
    idle = [s.name for s in topo.services if s.tier != "cron" and per_service[s.index] == 0]
    assert idle == []
    assert max(t.size for t in world.templates) <= 200
    # pods live on hosts; every service has at least two replicas (cron: one) plus a spare
    for s in topo.services:
        assert len(s.pods) == s.replicas + 1
        assert all(0 <= topo.pods[p].host < len(topo.hosts) for p in s.pods)


def test_size_bounds() -> None:
    with pytest.raises(ValueError, match="10..500"):
        topology.generate(9, np.random.default_rng(0))
    with pytest.raises(ValueError):
        topology.generate(501, np.random.default_rng(0))


def test_same_seed_same_topology_different_seed_different() -> None:
    a = topology.generate(40, np.random.default_rng(1)).describe()
    b = topology.generate(40, np.random.default_rng(1)).describe()
    c = topology.generate(40, np.random.default_rng(2)).describe()
    assert a == b
    assert a != c
