"""Keras integration: the loader is its own DataAdapter, fit/evaluate/predict never use from_generator."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from gpuloader import Loader


@pytest.fixture
def no_from_generator(monkeypatch):
    """Fail the test if Keras routes the loader through tf.data.Dataset.from_generator."""

    def refuse(*args, **kwargs):
        raise AssertionError("tf.data.Dataset.from_generator was called")

    monkeypatch.setattr(tf.data.Dataset, "from_generator", refuse)


def separable(n=512, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    y = (x[:, :4].sum(axis=1) > 0).astype(np.float32)
    return x, y


def tiny_model(steps_per_execution=1):
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(keras.optimizers.SGD(0.5), "binary_crossentropy", metrics=["accuracy"],
                  steps_per_execution=steps_per_execution)
    return model


@pytest.mark.parametrize("steps_per_execution", [1, 4])
def test_fit_validation_evaluate_predict(no_from_generator, steps_per_execution):
    x, y = separable()
    train = Loader(x, y, batch_size=32, seed=0, verbose=False)
    val = Loader(x, y, batch_size=100, shuffle=False, verbose=False)
    model = tiny_model(steps_per_execution)
    history = model.fit(train, validation_data=val, epochs=4, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert history.history["val_accuracy"][-1] > 0.8
    _, accuracy = model.evaluate(val, verbose=0)
    assert accuracy > 0.8
    predictions = model.predict(Loader(x, batch_size=100, shuffle=False, verbose=False), verbose=0)
    assert predictions.shape == (512, 1)
    np.testing.assert_allclose(predictions, model.predict(x, batch_size=100, verbose=0), rtol=1e-5)


def recording_model(seen: list[list[int]]) -> keras.Model:
    """A model whose first layer records the sample ids (last input column) it trains on, per epoch."""

    class Record(keras.layers.Layer):
        def call(self, inputs):
            tf.py_function(lambda v: seen[-1].extend(int(i) for i in v.numpy()), [inputs[:, -1]], [])
            return inputs[:, :-1]

    model = keras.Sequential([keras.Input((9,)), Record(), keras.layers.Dense(1, activation="sigmoid")])
    model.compile("sgd", "binary_crossentropy", run_eagerly=True)
    return model


class NextEpoch(keras.callbacks.Callback):
    def __init__(self, seen):
        super().__init__()
        self.seen = seen

    def on_epoch_end(self, epoch, logs=None):
        self.seen.append([])


def with_ids(n, **kwargs):
    x, y = separable(n)
    ids = np.arange(n, dtype=np.float32)[:, None]
    return Loader(np.concatenate([x, ids], axis=1), y, verbose=False, **kwargs)


def test_fit_uses_every_sample_once_per_epoch_in_the_loaders_order(no_from_generator):
    seen: list[list[int]] = [[]]
    loader = with_ids(300, batch_size=64, seed=1)
    recording_model(seen).fit(loader, epochs=3, verbose=0, callbacks=[NextEpoch(seen)])
    assert all(sorted(epoch) == list(range(300)) for epoch in seen[:3]) and seen[3] == []
    reference = with_ids(300, batch_size=64, seed=1)
    for epoch in range(3):
        reference.set_epoch(epoch)
        assert seen[epoch] == [int(v) for b in range(len(reference)) for v in reference[b][0].numpy()[:, -1]]


def test_steps_per_epoch_slices_epochs_without_repeating_samples(no_from_generator):
    seen: list[list[int]] = [[]]
    loader = with_ids(300, batch_size=60, seed=2)  # 5 batches per loader epoch
    with pytest.warns(UserWarning, match="ran out of data"):  # Keras cuts the 2nd slice at the loader's end
        recording_model(seen).fit(loader, epochs=4, steps_per_epoch=3, verbose=0, callbacks=[NextEpoch(seen)])
    assert [len(chunk) // 60 for chunk in seen[:4]] == [3, 2, 3, 2]
    flat = [i for chunk in seen for i in chunk]
    assert sorted(flat[:300]) == list(range(300)) and sorted(flat[300:600]) == list(range(300))
    assert flat[:300] != flat[300:600]


def test_fit_takes_sample_weights_and_loader_class_weights(no_from_generator):
    x, y = separable()
    zero_for_class_1 = Loader(x, y, batch_size=64, seed=0, class_weight={0: 1.0, 1: 0.0}, verbose=False)
    model = tiny_model()
    model.fit(zero_for_class_1, epochs=5, verbose=0)
    # Trained only on class 0, the model predicts class 0 everywhere.
    assert float(model.predict(x, verbose=0).mean()) < 0.3
    weighted = Loader(x, y, np.ones(len(x), np.float32), batch_size=64, seed=0, verbose=False)
    tiny_model().fit(weighted, epochs=1, verbose=0)


def test_fit_class_weight_is_refused_loudly():
    x, y = separable()
    with pytest.raises(ValueError, match="class_weight was passed to fit"):
        tiny_model().fit(Loader(x, y, verbose=False), class_weight={0: 1.0, 1: 2.0}, epochs=1, verbose=0)


def test_fit_resumes_the_epoch_order_from_state():
    x, y = separable(256)
    loader = Loader(x, y, batch_size=32, seed=4, verbose=False)
    tiny_model().fit(loader, epochs=2, verbose=0)
    assert loader.epoch == 2
    state = loader.get_state()
    resumed = Loader(x, y, batch_size=32, seed=0, verbose=False)
    resumed.set_state(state)
    tiny_model().fit(resumed, epochs=1, verbose=0)  # Keras's extra on_epoch_end before epoch 1 is a no-op
    assert resumed.epoch == 3


def test_fit_after_set_state_trains_on_the_saved_epochs_order(no_from_generator):
    original = with_ids(200, batch_size=50, seed=9)
    original.set_epoch(5)
    expected = [int(v) for b in range(len(original)) for v in original[b][0].numpy()[:, -1]]
    resumed = with_ids(200, batch_size=50, seed=0)
    resumed.set_state({**original.get_state(), "epoch": 5})
    seen: list[list[int]] = [[]]
    recording_model(seen).fit(resumed, epochs=1, verbose=0, callbacks=[NextEpoch(seen)])
    assert seen[0] == expected


@pytest.mark.parametrize("workers", [1, 3])
def test_workers_prepare_batches_in_order(no_from_generator, workers):
    x, y = separable(1000)
    loader = Loader(x, y, batch_size=50, seed=2, workers=workers, max_queue_size=4, verbose=False)
    expected = [np.asarray(loader[i][1]).tolist() for i in range(len(loader))]
    loader.set_epoch(0)  # every batch went out through loader[i]: the next pass would serve epoch 1
    served = [np.asarray(batch[1]).tolist() for batch in loader.get_tf_dataset()]
    assert served == expected
    history = tiny_model().fit(loader, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2
