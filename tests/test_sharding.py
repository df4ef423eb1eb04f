"""Worker shards: what ``drop_remainder`` leaves out of a shard is said in ``loader.plan``, and warned about
when it is more than the shard's own last partial batch (a full batch dropped to keep the step counts equal)."""

from __future__ import annotations

import warnings

import pytest
from conftest import epoch_ids, id_data

from gpuloader import Loader


def shard(n, batch_size, index, *, num_shards=2, drop_remainder=True, shuffle=True):
    return Loader(*id_data(n), batch_size=batch_size, seed=9, num_shards=num_shards, shard_index=index,
                  drop_remainder=drop_remainder, shuffle=shuffle, verbose=False)


def served_per_epoch(loader, epochs=2):
    ids = []
    for _ in range(epochs):
        ids.append(epoch_ids(loader))
        loader.on_epoch_end()
    return ids


def test_a_shard_that_drops_a_full_batch_to_keep_step_counts_equal_says_so_and_warns():
    # 11 samples over 2 shards: 6 and 5. Batch 3: the smallest shard makes 1 full batch, so shard 0 serves 3 of 6.
    with pytest.warns(UserWarning, match=r"shard 0 of 2: drop_remainder: 3 of this shard's 6 samples are left out") \
            as caught:
        larger = shard(11, 3, 0)
    assert "drop_remainder=False serves every sample here, in 2 steps on every shard." in str(caught[0].message)
    plan = str(larger.plan)
    assert "drop_remainder: 3 of this shard's 6 samples are left out of each epoch (other samples each epoch), " \
           "1 full batch of 3 among them, so that every shard takes 1 step" in plan
    assert [len(ids) for ids in served_per_epoch(larger)] == [3, 3]  # what the plan says is what is served


def test_with_shuffle_false_the_plan_says_the_same_samples_are_left_out_every_epoch():
    with pytest.warns(UserWarning, match="full batch"):
        larger = shard(11, 3, 0, shuffle=False)
    assert "(the same samples every epoch, since shuffle=False)" in str(larger.plan)
    first, second = served_per_epoch(larger)
    assert first == second and len(first) == 3


def test_a_shard_that_drops_only_its_own_partial_batch_says_how_many_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        smaller = shard(11, 3, 1)
    assert "drop_remainder: 2 of this shard's 5 samples are left out of each epoch" in str(smaller.plan)
    assert "full batch" not in str(smaller.plan)
    assert [len(ids) for ids in served_per_epoch(smaller)] == [3, 3]


@pytest.mark.parametrize(("n", "drop_remainder"), [(12, True), (11, False)])
def test_a_shard_that_leaves_nothing_out_says_nothing_about_it(n, drop_remainder):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaders = [shard(n, 3, index, drop_remainder=drop_remainder) for index in range(2)]
    for loader in loaders:
        assert "drop_remainder" not in str(loader.plan)
    assert sorted(i for loader in loaders for i in epoch_ids(loader)) == list(range(n))
