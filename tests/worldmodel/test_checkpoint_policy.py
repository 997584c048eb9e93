"""When the world-model worker writes its checkpoint: the causal stage answers an alert from the
checkpoint that holds its data, so one is written soon after the model has caught up."""

from __future__ import annotations

from pipeline.worldmodel.worker import CAUGHT_UP_OVERHEAD, checkpoint_due


def test_a_checkpoint_is_written_every_period_while_segments_keep_coming() -> None:
    assert not checkpoint_due(4.0, 10.0)
    assert checkpoint_due(10.0, 10.0)
    assert checkpoint_due(12.0, 10.0, caught_up=False)


def test_a_model_that_caught_up_is_checkpointed_within_a_second() -> None:
    # the last segment of an alert's data was applied 1.5 s after the last checkpoint: waiting
    # out the period would delay the answer by 8.5 s more
    assert checkpoint_due(1.5, 10.0, caught_up=True, last_took_s=0.02)
    assert not checkpoint_due(0.5, 10.0, caught_up=True, last_took_s=0.02)


def test_checkpoints_for_catching_up_take_a_bounded_share_of_the_time() -> None:
    # a large model whose checkpoint takes 0.6 s is written at most every 6 s for catching up
    took = 0.6
    assert not checkpoint_due(took / CAUGHT_UP_OVERHEAD - 0.1, 10.0, True, took)
    assert checkpoint_due(took / CAUGHT_UP_OVERHEAD, 10.0, True, took)
    assert checkpoint_due(10.0, 10.0, True, 5.0)  # never later than the period
