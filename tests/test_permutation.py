"""The per-epoch order: a permutation, a function of (seed, epoch), identical in every namespace."""

from __future__ import annotations

import array_api_strict as xps
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuloader import permutation
from gpuloader.permutation import MAX_SEED


def test_pinned_order_for_seed_42():
    assert permutation(np, 10, 42, 0).tolist() == [7, 1, 9, 0, 2, 3, 8, 5, 6, 4]
    assert permutation(np, 10, 42, 1).tolist() == [0, 5, 6, 9, 7, 3, 4, 2, 8, 1]


@pytest.mark.parametrize(("n", "seed", "epoch"), [(1, 0, 0), (2, 1, 5), (1000, 123, 7), (60000, MAX_SEED, 10**6)])
def test_array_api_strict_gives_the_bit_identical_order(n, seed, epoch):
    host = permutation(np, n, seed, epoch)
    strict = permutation(xps, n, seed, epoch)
    assert strict.dtype == xps.int64
    np.testing.assert_array_equal(host, np.asarray(strict))


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 5000), seed=st.integers(0, MAX_SEED), epoch=st.integers(0, 10**9))
def test_is_a_permutation(n, seed, epoch):
    order = permutation(np, n, seed, epoch)
    assert order.dtype == np.int64
    assert np.array_equal(np.sort(order), np.arange(n))


def test_epochs_and_seeds_give_different_orders():
    orders = {tuple(permutation(np, 50, seed, epoch).tolist()) for seed in range(4) for epoch in range(4)}
    assert len(orders) == 16


def test_orders_look_uniform():
    # Position of sample 0 over many epochs is spread evenly across 10 slots.
    positions = [int(np.argmax(permutation(np, 10, 5, epoch) == 0)) for epoch in range(5000)]
    counts = np.bincount(positions, minlength=10)
    assert counts.min() > 400 and counts.max() < 600
