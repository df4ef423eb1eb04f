"""The epoch schedule's rule, without Keras: which epoch each pass serves, and what a state names.

Keras calls are stood in for by ``KerasCall`` values (what gpuloader/_keras_compat.py
reads from the trainer's frame); tests/test_keras_paths.py checks the same rule through fit.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import epoch_ids, id_data

from gpuloader import Loader, _keras_compat, permutation
from gpuloader.config import LoaderConfig
from gpuloader.orders import Orders
from gpuloader.schedule import EpochSchedule

KerasCall = _keras_compat.KerasCall
SIGNATURE = {"num_samples": 40, "batch_size": 10, "shuffle": True, "drop_remainder": False,
             "num_shards": 1, "shard_index": 0}


def schedule(seed=3) -> EpochSchedule:
    return EpochSchedule(Orders(np, 40, LoaderConfig(batch_size=10, seed=seed)), 4, SIGNATURE, seed_owns_rows=False)


class Fit:
    """One fit() call: its token lives as long as the call."""

    def __init__(self, initial_epoch=0, steps_per_epoch=None):
        self.initial_epoch, self.steps_per_epoch = initial_epoch, steps_per_epoch

    def at(self, epoch) -> KerasCall:
        return KerasCall("fit", epoch, self.initial_epoch, self.steps_per_epoch, self)


def train(s: EpochSchedule, call: KerasCall, batches=None) -> tuple[int, int, int]:
    """Keras's epoch iterator: on_epoch_begin, then take the pass's batches; (epoch, first, trained)."""
    s.plan_fit_epoch(call)
    running = s.begin_pass(call)
    assert running.shuffled and running.moves_stream and running.augmented
    for _ in range(running.length if batches is None else batches):
        s.served(running)
    s.on_epoch_end()  # Keras's EpochIterator calls it after every pass
    return running.epoch, running.start, running.served


def test_fit_epochs_follow_the_stream():
    s, fit = schedule(), Fit()
    assert [train(s, fit.at(e))[0] for e in range(3)] == [0, 1, 2]


def test_a_fit_starting_at_zero_continues_the_stream():
    s = schedule()
    assert train(s, Fit().at(0))[0] == 0
    assert train(s, Fit().at(0))[0] == 1


def test_short_fits_go_on_where_the_previous_one_stopped_and_finish_the_order_first():
    s = schedule()  # 4 batches per epoch, fit(steps_per_epoch=3) takes 3
    taken = []
    for _ in range(4):
        fit = Fit(steps_per_epoch=3)
        length = s.plan_fit_epoch(fit.at(0))
        running = s.begin_pass(fit.at(0))
        for _ in range(min(3, length)):
            s.served(running)
            taken.append((running.epoch, running.start + running.served - 1))
        s.on_epoch_end()
    assert taken == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2), (1, 3)]  # fits of 3, 1, 3, 1


def test_keras_is_told_the_length_of_a_pass_that_starts_inside_an_order():
    s = schedule()
    train(s, Fit(steps_per_epoch=3).at(0), batches=3)
    assert s.plan_fit_epoch(Fit().at(0)) == 1  # the rest of epoch 0
    assert s.get_state()["epoch"] == 0 and s.get_state()["position"] == 3


def test_a_resumed_fit_with_no_record_trains_the_keras_epochs_order_and_warns():
    s = schedule()
    with pytest.warns(RuntimeWarning, match=r"fit resumes at epoch 2 and nothing records.*set_state"):
        assert train(s, Fit(initial_epoch=2).at(2))[0] == 2


def test_set_epoch_decides_where_the_next_fit_starts():
    s = schedule()
    s.set_epoch(5)
    fit = Fit(initial_epoch=3)
    assert [train(s, fit.at(e))[0] for e in (3, 4)] == [5, 6]


def test_evaluation_and_prediction_serve_the_input_order_and_move_nothing():
    s = schedule()
    for kind in ("evaluate", "predict"):
        running = s.begin_pass(KerasCall(kind, None, 0, None, object()))
        assert (running.epoch, running.shuffled, running.moves_stream, running.length) == (0, False, False, 4)
        assert running.augmented is False
    s.on_epoch_end()
    assert s.epoch == 0 and s.get_state()["epoch"] == 0


def test_loader_items_inside_evaluation_and_prediction_are_what_those_passes_serve():
    s = schedule()
    for kind in ("evaluate", "predict"):
        item = s.item_pass(2, KerasCall(kind, None, 0, None, object()))
        assert (item.shuffled, item.augmented, item.moves_stream) == (False, False, False)
        assert (item.start, item.length) == (2, 1)
    outside = s.item_pass(2, None)
    assert (outside.shuffled, outside.augmented, outside.moves_stream) == (True, True, False)


def test_the_model_building_peek_in_fit_moves_nothing():
    s = schedule()
    peek = s.begin_pass(KerasCall("fit", None, 0, None, object()))
    assert peek.moves_stream is False and peek.augmented is True  # the batch fit will train on builds the model
    s.on_epoch_end()
    assert s.epoch == 0 and s.get_state()["position"] == 0


def test_nothing_about_the_model_decides_an_order():
    class Model:
        class optimizer:
            iterations = 20  # a model that trained elsewhere: its step count is not this loader's history

    s = schedule()
    with pytest.warns(RuntimeWarning, match="nothing records"):
        s.plan_fit_epoch(KerasCall("fit", 3, 3, None, Fit(), model=Model()))
    assert s.begin_pass(KerasCall("fit", 3, 3, None, Fit(), model=Model())).epoch == 3


# ------------------------------------------------------------- outside Keras
def make(seed=3, **kwargs):
    x, y = id_data(40)
    return Loader(x, y, batch_size=10, seed=seed, verbose=False, **kwargs)


def order(seed, epoch):
    return np.asarray(permutation(np, 40, seed, epoch)).tolist()


def test_a_peek_then_on_epoch_end_keeps_the_epoch():
    loader = make()
    loader[0]
    loader.on_epoch_end()
    assert loader.epoch == 0 and epoch_ids(loader) == order(3, 0)


def test_a_manual_loop_over_every_batch_then_on_epoch_end_moves_to_the_next_order():
    loader = make()
    assert epoch_ids(loader) == order(3, 0)
    loader.on_epoch_end()
    assert loader.epoch == 1 and epoch_ids(loader) == order(3, 1)


def iterator_ids(loader):
    return [i for batch in loader.get_numpy_iterator() for i in np.asarray(batch[1]).tolist()]


def test_a_second_full_pass_serves_the_next_epoch():
    loader = make()
    assert iterator_ids(loader) == order(3, 0)
    assert iterator_ids(loader) == order(3, 1)


def test_get_state_after_a_full_pass_names_the_next_epoch_so_a_resume_replays_nothing():
    original = make()
    iterator_ids(original)  # a custom loop went through epoch 0; on_epoch_end not called yet
    state = original.get_state()
    assert state["epoch"] == 1
    resumed = make()
    resumed.set_state(state)
    assert iterator_ids(resumed) == iterator_ids(original) == order(3, 1)


def test_set_epoch_jumps_to_that_order_even_after_the_next_one_was_computed_ahead():
    loader = make()
    iterator_ids(loader)  # epoch 0 served; epoch 1's order is computed ahead on the host
    loader.set_epoch(5)
    assert iterator_ids(loader) == order(3, 5)
    loader.set_epoch(2)
    assert epoch_ids(loader) == order(3, 2)


def test_set_state_with_another_seed_serves_that_seeds_order():
    loader = make(seed=3)
    state = make(seed=9).get_state()
    loader.set_state(state)
    assert loader.seed == 9 and iterator_ids(loader) == order(9, 0)


def test_a_for_loop_over_the_loader_is_a_pass_and_the_next_one_serves_the_next_epoch():
    loader = make()
    first = [i for batch in loader for i in np.asarray(batch[1]).tolist()]
    assert first == order(3, 0) and loader.get_state()["epoch"] == 1
    second = [i for batch in loader for i in np.asarray(batch[1]).tolist()]
    assert second == order(3, 1)


def test_loader_item_is_repeatable_until_on_epoch_end():
    loader = make()
    assert epoch_ids(loader) == epoch_ids(loader) == order(3, 0)
    loader.on_epoch_end()
    assert epoch_ids(loader) == order(3, 1)


def test_a_state_from_inputs_of_another_shape_or_dtype_is_refused():
    x, y = id_data(40)
    state = Loader(x[:, :2], y, batch_size=10, seed=3, verbose=False).get_state()
    with pytest.raises(ValueError, match="inputs="):
        make().set_state(state)
    state = Loader(x.astype(np.float64), y, batch_size=10, seed=3, verbose=False).get_state()
    with pytest.raises(ValueError, match="float64"):
        make().set_state(state)
