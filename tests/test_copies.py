"""A Loader is not copied or pickled; each refusal says why and what to do instead (Loader docstring, "Copies")."""

from __future__ import annotations

import copy
import pickle

import pytest
from conftest import epoch_ids, id_data, sample_ids

from gpuloader import Loader


@pytest.fixture
def loader():
    return Loader(*id_data(20), batch_size=4, seed=11, verbose=False)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickling_says_a_loader_is_not_picklable_why_and_what_to_pass_instead(loader, protocol):
    with pytest.raises(TypeError) as refused:
        pickle.dumps(loader, protocol=protocol)
    message = str(refused.value)
    assert message.startswith("a gpuloader.Loader cannot be pickled: it holds the preloaded data")
    assert "in threads (workers=N), not processes" in message
    assert "pass what built it (the arrays or .npy paths" in message and "set_state()" in message


def test_a_shallow_copy_is_refused_because_it_would_share_the_epoch_schedule(loader):
    with pytest.raises(TypeError, match=r"copy.copy\(loader\) is refused: the copy would share the original's epoch"):
        copy.copy(loader)


def test_a_deep_copy_is_refused_because_it_would_duplicate_the_data(loader):
    with pytest.raises(TypeError, match=r"copy.deepcopy\(loader\) is refused: it would duplicate the preloaded data"):
        copy.deepcopy(loader)
    with pytest.raises(TypeError, match="is refused"):  # also inside a structure that is deep-copied
        copy.deepcopy({"train": loader})


def test_subclasses_are_refused_the_same_way():
    class Mine(Loader):
        def describe(self) -> str:
            return repr(self)

    mine = Mine(*id_data(8), batch_size=4, verbose=False)
    for attempt in (pickle.dumps, copy.copy, copy.deepcopy):
        with pytest.raises(TypeError, match=r"gpuloader\.Loader cannot be pickled|is refused"):
            attempt(mine)


def test_a_refused_copy_leaves_the_original_untouched(loader):
    before = epoch_ids(loader)
    for attempt in (pickle.dumps, copy.copy, copy.deepcopy):
        with pytest.raises(TypeError):
            attempt(loader)
    assert epoch_ids(loader) == before and sorted(before) == list(range(20))


def test_the_advised_second_loader_is_independent_and_starts_where_the_original_is(loader):
    x, y = id_data(20)
    list(loader)  # the original trains epoch 0; its next pass serves epoch 1
    second = Loader(x, y, batch_size=4, seed=loader.seed, verbose=False)
    second.set_state(loader.get_state())
    served = [sample_ids(batch[0]) for batch in second]
    assert served == [sample_ids(batch[0]) for batch in loader]  # the same epoch-1 batches
    list(second)  # moving the second loader on does not move the original
    assert loader.get_state()["epoch"] == 2 and second.get_state()["epoch"] == 3
