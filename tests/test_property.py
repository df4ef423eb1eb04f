"""Property: over random sizes, batch sizes and seeds, every sample is served exactly once per epoch."""

from __future__ import annotations

import numpy as np
from conftest import sample_ids
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuloader import Loader


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 300),
    batch_size=st.integers(1, 64),
    seed=st.integers(0, 2**64 - 1),
    shuffle=st.booleans(),
    drop_remainder=st.booleans(),
    epochs=st.integers(1, 3),
)
def test_exactly_once_per_epoch(n, batch_size, seed, shuffle, drop_remainder, epochs):
    if drop_remainder and n < batch_size:
        return  # refused at construction, tested in test_contract
    x = np.arange(n, dtype=np.int32)
    y = np.arange(n, dtype=np.float64) * 2
    loader = Loader(x, y, batch_size=batch_size, seed=seed, shuffle=shuffle,
                    drop_remainder=drop_remainder, verbose=False)
    for _ in range(epochs):
        seen = []
        for i in range(len(loader)):
            bx, by = loader[i]
            ids = sample_ids(bx)
            assert (np.asarray(by) == np.asarray(ids) * 2).all()
            assert len(ids) == batch_size or (not drop_remainder and i == len(loader) - 1)
            seen.extend(ids)
        assert len(seen) == len(set(seen))
        expected = n - n % batch_size if drop_remainder else n
        assert len(seen) == expected
        if not shuffle:
            assert seen == list(range(expected))
        loader.on_epoch_end()
