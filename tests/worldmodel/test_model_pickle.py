"""A learned world model survives pickling (the simulator evaluation's --cache, process pools)."""

from __future__ import annotations

import pickle

from pipeline.worldmodel.model import WorldModel, WorldModelConfig


def test_a_learned_model_pickles_and_keeps_its_baselines() -> None:
    model = WorldModel(WorldModelConfig(interval_s=60.0))
    for i in range(30):
        model.baselines.update(
            "service:a", "span.rate_per_s", 1_700_000_000.0 + 60 * i, 5.0 + i % 3
        )
    model.baselines.advance(1_700_000_000.0 + 60 * 31)
    copy = pickle.loads(pickle.dumps(model))
    assert copy.baselines.keys() == model.baselines.keys()
    original = model.baselines.get("service:a", "span.rate_per_s")
    restored = copy.baselines.get("service:a", "span.rate_per_s")
    assert original is not None and restored is not None
    assert restored.to_bytes() == original.to_bytes()
    assert copy.checkpoint() == model.checkpoint()
