"""``get_*_iterator(super_batch=N)``: what Keras master asks of every adapter (PR #23527, after 3.15).

The stand-in calls below are the ones Keras master's epoch iterator makes when
``steps_per_execution = N`` runs as one ``lax.scan``: ``adapter.get_jax_iterator(super_batch=N)``
(and the numpy, torch and tf variants). Each item must be N consecutive batches of the
plain pass, stacked leaf by leaf on a new first axis, and a group that cannot stack
comes as a ``PartialBatchList`` of its batches (Keras master's
``data_adapter_utils_test.TestSuperBatchIterator`` states the same rules).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import id_data, sample_ids

from gpuloader import Loader
from gpuloader.superbatch import PartialBatchList, check_super_batch


def plain_pass(loader: Loader, epoch: int) -> list[tuple[np.ndarray, ...]]:
    loader.set_epoch(epoch)
    return [tuple(np.asarray(part) for part in batch) for batch in loader.get_numpy_iterator()]


def super_pass(loader: Loader, epoch: int, count: int) -> list:
    loader.set_epoch(epoch)
    return list(loader.get_numpy_iterator(super_batch=count))


def test_full_groups_are_the_plain_batches_stacked_in_order():
    loader = Loader(*id_data(24), batch_size=3, seed=7, verbose=False)  # 8 batches
    plain = plain_pass(loader, 4)
    items = super_pass(loader, 4, 4)
    assert len(items) == 2
    for g, (x, y) in enumerate(items):
        assert not isinstance(items[g], PartialBatchList)
        assert x.shape == (4, 3, 3) and y.shape == (4, 3)
        for k in range(4):
            np.testing.assert_array_equal(x[k], plain[4 * g + k][0])
            np.testing.assert_array_equal(y[k], plain[4 * g + k][1])
    assert sorted(int(i) for x, y in items for i in y.ravel()) == list(range(24))  # each sample once


@pytest.mark.parametrize(
    ("n", "batch_size", "count", "layout"),
    [
        (10, 2, 3, ["stacked 3", "partial 2"]),  # 5 batches: a short last group
        (11, 2, 3, ["stacked 3", "partial 3"]),  # 6 batches, the last of 1 sample: shapes differ
        (11, 2, 4, ["stacked 4", "partial 2"]),
        (8, 2, 1, ["stacked 1"] * 4),  # Keras stacks groups of one too
    ],
)
def test_groups_that_cannot_stack_come_as_partial_batch_lists_with_every_batch(n, batch_size, count, layout):
    loader = Loader(*id_data(n), batch_size=batch_size, seed=3, verbose=False)
    plain = plain_pass(loader, 2)
    items = super_pass(loader, 2, count)
    seen = []
    for item in items:
        if isinstance(item, PartialBatchList):
            seen.append(f"partial {len(item)}")
            batches = [tuple(np.asarray(part) for part in batch) for batch in item]
        else:
            seen.append(f"stacked {item[0].shape[0]}")
            batches = [tuple(part[k] for part in item) for k in range(item[0].shape[0])]
        for batch in batches:
            np.testing.assert_array_equal(batch[0], plain[0][0])
            plain.pop(0)
    assert seen == layout and plain == []


def test_nested_inputs_keep_their_structure_when_stacked():
    x, y = id_data(12)
    loader = Loader({"a": x, "b": x[:, :1] * 2}, y, batch_size=2, shuffle=False, verbose=False)
    first = next(iter(loader.get_numpy_iterator(super_batch=3)))
    inputs, labels = first
    assert set(inputs) == {"a", "b"}
    assert inputs["a"].shape == (3, 2, 3) and inputs["b"].shape == (3, 2, 1) and labels.shape == (3, 2)
    assert labels.tolist() == [[0, 1], [2, 3], [4, 5]]


def test_no_super_batch_is_the_plain_pass():
    loader = Loader(*id_data(9), batch_size=4, seed=1, verbose=False)
    for value in (None, 0):
        loader.set_epoch(0)
        batches = list(loader.get_numpy_iterator(super_batch=value))
        assert [sample_ids(batch[0]) for batch in batches] == [sample_ids(b[0]) for b in plain_pass(loader, 0)]


def test_a_super_batched_pass_finishes_the_epoch_as_a_plain_pass_does():
    loader = Loader(*id_data(10), batch_size=2, seed=5, verbose=False)
    list(loader.get_numpy_iterator(super_batch=2))
    assert loader.epoch == 0  # finished; the next pass moves on
    list(loader.get_numpy_iterator(super_batch=2))
    assert loader.epoch == 1


@pytest.mark.parametrize("value", [-1, 2.5, True, "2"])
def test_a_wrong_super_batch_is_refused_with_the_rule(value):
    loader = Loader(*id_data(6), batch_size=2, verbose=False)
    with pytest.raises(ValueError, match=r"super_batch must be a positive int .* or None; received"):
        loader.get_jax_iterator(super_batch=value)
    with pytest.raises(ValueError, match="super_batch must be a positive int"):
        check_super_batch(value)


def test_the_tf_trainer_gets_stacked_tensors_too():
    tf = pytest.importorskip("tensorflow")
    loader = Loader(*id_data(8), batch_size=2, shuffle=False, verbose=False)
    items = list(loader.get_tf_dataset(super_batch=2))
    assert len(items) == 2 and isinstance(items[0][0], tf.Tensor)
    assert items[1][1].numpy().tolist() == [[4, 5], [6, 7]]
