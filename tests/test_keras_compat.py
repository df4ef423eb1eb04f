"""The Keras seam (gpuloader/_keras_compat.py): what it reads of Keras's internals, against the Keras installed.

Every private Keras name gpuloader relies on is read in that one module; these
tests drive each reading through the Keras code that provides it, so a Keras
release that moves one fails here, by name (``make test-keras-oldest`` runs
this file against the oldest Keras the project claims).
"""

from __future__ import annotations

import types
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import id_data

from gpuloader import Loader, _keras_compat, sharding

DataAdapter, tf_batches = _keras_compat.DataAdapter, _keras_compat.tf_batches
distribution_processes, keras_call = _keras_compat.distribution_processes, _keras_compat.keras_call
strategy_of_caller = _keras_compat.strategy_of_caller


def _nested(depth: int, function):
    """``function()`` called through ``depth`` extra frames."""
    if depth == 0:
        return function()
    return _nested(depth - 1, function)


class _ReadsStrategy(DataAdapter):
    """A minimal adapter whose ``get_tf_dataset`` reads the strategy ``depth`` calls below itself."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.seen = None

    def get_tf_dataset(self):
        self.seen = _nested(self.depth, strategy_of_caller)
        return tf_batches(lambda: iter([]))

    num_batches = property(lambda self: 1)
    batch_size = property(lambda self: 1)
    has_partial_batch = property(lambda self: False)
    partial_batch_size = property(lambda self: None)


@pytest.mark.parametrize("depth", [0, 1, 4])
def test_the_tf_trainers_strategy_is_found_at_any_call_depth(depth):
    # Keras's TFEpochIterator hands the adapter to get_tf_dataset() before it stores the model's strategy;
    # a subclass's get_tf_dataset (or any wrapper) adds frames between, and the strategy is still the model's.
    from keras.src.backend.tensorflow.trainer import TFEpochIterator

    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")  # not the strategy in scope (the default one)
    adapter = _ReadsStrategy(depth)
    TFEpochIterator(distribute_strategy=strategy, x=adapter)
    assert adapter.seen is strategy


def test_outside_the_trainer_the_strategy_in_scope_is_used():
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        assert _nested(3, strategy_of_caller) is strategy
    assert strategy_of_caller() is tf.distribute.get_strategy()


def test_a_keras_distribution_over_several_processes_shards_the_loader(monkeypatch):
    # Keras 3.15 names the count num_processes (_num_processes), 3.7 _num_process; the index is _process_id.
    # Stand-ins with each version's attributes: a real DataParallel over several processes needs a cluster
    # (and on Keras 3.7's TF backend cannot be built at all without one).
    for counts in ({"_num_processes": 3}, {"_num_process": 3}):
        distribution = types.SimpleNamespace(_process_id=2, **counts)
        monkeypatch.setattr(keras.distribution, "distribution", lambda distribution=distribution: distribution)
        assert distribution_processes() == (3, 2)
    assert distribution_processes() == (3, 2)
    assert sharding.default_shards() == (3, 2, "the Keras distribution")
    x, y = id_data(30)
    loader = Loader(x, y, batch_size=5, seed=1, verbose=False)
    assert (loader.num_shards, loader.shard_index, loader.num_samples) == (3, 2, 10)


def test_no_keras_distribution_is_one_process(monkeypatch):
    monkeypatch.setattr(keras.distribution, "distribution", lambda: None)
    assert distribution_processes() == (1, 0)
    single = types.SimpleNamespace(_num_processes=1, _num_process=1, _process_id=0)
    monkeypatch.setattr(keras.distribution, "distribution", lambda: single)
    assert distribution_processes() == (1, 0)


def test_a_distribution_whose_process_index_cannot_be_read_is_refused_with_the_fix(monkeypatch):
    class Unknown:
        num_processes = 4

    monkeypatch.setattr(keras.distribution, "distribution", lambda: Unknown())
    with pytest.raises(RuntimeError, match=r"spans 4 processes.*num_shards=4 and shard_index="):
        distribution_processes()


# A stand-in trainer frame: keras_call() recognises fit/evaluate/predict by their name and module.
_TRAINER = {"__name__": "keras.src.backend.tensorflow.trainer"}
exec(
    "def fit(self, x, y=None, batch_size=None, shuffle=True, epoch=None, initial_epoch=0, steps_per_epoch=None):\n"
    "    return read(x)\n",
    _TRAINER,
)


def test_keras_call_reads_the_trainers_arguments_at_any_depth():
    x, y = id_data(20)
    loader = Loader(x, y, batch_size=5, verbose=False)
    for depth in (0, 2):
        _TRAINER["read"] = lambda _loader, depth=depth: _nested(depth, keras_call)
        call = _TRAINER["fit"]("model", loader, batch_size=7)
        assert (call.kind, call.arguments["batch_size"], call.model) == ("fit", 7, "model")
    _TRAINER["read"] = lambda _loader: keras_call()
    assert keras_call() is None


def test_reading_num_batches_has_no_side_effect():
    # Keras reads num_batches at will (its epoch iterator, progress bars); the guards run when a pass is asked for.
    x, y = id_data(20)
    loader = Loader(x, y, batch_size=5, verbose=False)
    _TRAINER["read"] = lambda _loader: _loader.num_batches
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _TRAINER["fit"]("model", loader, y=y, batch_size=7) == 4  # neither raises nor warns
    _TRAINER["read"] = lambda _loader: next(iter(_loader.get_numpy_iterator()))  # a pass starts
    with pytest.raises(ValueError, match=r"y was passed to fit\(\)"):
        _TRAINER["fit"]("model", loader, y=y)
    with pytest.warns(UserWarning, match=r"fit\(batch_size=7\) is ignored"):
        _TRAINER["fit"]("model", loader, batch_size=7)


def test_loader_items_in_an_evaluate_callback_are_the_batches_evaluate_serves():
    # loader[i] from a callback of evaluate/predict: the input order and no augmentation, as those passes.
    from gpuloader import augment

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(24, 8, 8, 3), dtype=np.uint8)
    y = np.arange(24, dtype=np.float32)
    loader = Loader(x, y, batch_size=8, seed=5, augment=[augment.RandomFlip(), augment.Cutout(size=4)],
                    verbose=False)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    seen: dict[str, list] = {"evaluate": [], "predict": []}

    class Peek(keras.callbacks.Callback):
        def __init__(self, kind):
            super().__init__()
            self.kind = kind

        def on_test_batch_end(self, batch, logs=None):
            seen[self.kind].append(loader[batch])

        on_predict_batch_end = on_test_batch_end

    model.evaluate(loader, verbose=0, callbacks=[Peek("evaluate")])
    model.predict(loader, verbose=0, callbacks=[Peek("predict")])
    for kind in ("evaluate", "predict"):
        assert len(seen[kind]) == 3
        images = np.concatenate([np.asarray(batch[0]) for batch in seen[kind]])
        labels = np.concatenate([np.asarray(batch[1]) for batch in seen[kind]])
        assert labels.tolist() == y.tolist() and np.array_equal(images, x), kind
    outside = np.concatenate([np.asarray(loader[i][1]) for i in range(3)])
    assert outside.tolist() != y.tolist()  # outside those passes: the shuffled training order


def test_the_build_peek_in_fit_is_a_batch_of_what_fit_trains_on():
    # fit reads one batch to build the model before its epochs: augmented (a final Normalize's dtype included).
    from gpuloader import augment

    x = np.random.default_rng(1).integers(0, 256, size=(32, 8, 8, 3), dtype=np.uint8)
    loader = Loader(x, np.arange(32, dtype=np.float32), batch_size=8, seed=3, verbose=False,
                    augment=[augment.RandomFlip(), augment.Normalize(mean=127.5, std=64.0)])
    _TRAINER["read"] = lambda _loader: next(iter(_loader.get_numpy_iterator()))
    peek = _TRAINER["fit"]("model", loader)  # epoch=None: fit has not started its epochs
    trained = loader[0]  # outside Keras: batch 0 of the epoch fit trains first
    assert np.asarray(peek[0]).dtype == np.float32
    assert np.array_equal(np.asarray(peek[0]), np.asarray(trained[0]))
    assert loader.get_state()["position"] == 0  # the peek moved nothing
