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


def test_fit_takes_loader_class_weights(no_from_generator):
    x, y = separable()
    zero_for_class_1 = Loader(x, y, batch_size=64, seed=0, class_weight={0: 1.0, 1: 0.0}, verbose=False)
    model = tiny_model()
    model.fit(zero_for_class_1, epochs=5, verbose=0)
    # Trained only on class 0, the model predicts class 0 everywhere.
    assert float(model.predict(x, verbose=0).mean()) < 0.3


def test_sample_weights_decide_what_fit_learns(no_from_generator):
    x, y = separable()
    class_0_only = np.where(y == 1, 0.0, 1.0).astype(np.float32)
    weighted, unit = tiny_model(), tiny_model()
    unit.set_weights(weighted.get_weights())
    weighted.fit(Loader(x, y, class_0_only, batch_size=64, seed=0, verbose=False), epochs=5, verbose=0)
    unit.fit(Loader(x, y, np.ones_like(class_0_only), batch_size=64, seed=0, verbose=False), epochs=5, verbose=0)
    assert float(weighted.predict(x, verbose=0).mean()) < 0.3, "zero weights on class 1 were not applied"
    assert float(unit.evaluate(x, y, verbose=0)[1]) > 0.8


def test_sample_weighted_fit_and_evaluate_equal_keras_on_the_same_arrays(no_from_generator):
    """Same start, same batches, same weights: the loader's fit must land where Keras's own array path does."""
    x, y = separable(256)
    weights = np.random.default_rng(1).uniform(0, 2, 256).astype(np.float32)
    keras.utils.set_random_seed(0)
    through_loader, through_arrays, unweighted = tiny_model(), tiny_model(), tiny_model()
    for model in (through_arrays, unweighted):
        model.set_weights(through_loader.get_weights())
    loader = Loader(x, y, weights, batch_size=64, shuffle=False, verbose=False)
    through_loader.fit(loader, epochs=2, verbose=0)
    through_arrays.fit(x, y, sample_weight=weights, batch_size=64, shuffle=False, epochs=2, verbose=0)
    unweighted.fit(x, y, batch_size=64, shuffle=False, epochs=2, verbose=0)
    for got, want, plain in zip(through_loader.get_weights(), through_arrays.get_weights(), unweighted.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert not np.allclose(got, plain, rtol=1e-3), "the weights made no difference to training"
    loss = through_loader.evaluate(loader, verbose=0)[0]
    np.testing.assert_allclose(loss, through_loader.evaluate(x, y, sample_weight=weights, batch_size=64,
                                                             verbose=0)[0], rtol=1e-5)
    assert not np.isclose(loss, through_loader.evaluate(x, y, batch_size=64, verbose=0)[0], rtol=1e-3)


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
    # Training through worker threads is training on the same batches: the same weights as one thread.
    keras.utils.set_random_seed(0)
    model, reference = tiny_model(), tiny_model()
    reference.set_weights(model.get_weights())
    one_thread = Loader(x, y, batch_size=50, seed=2, verbose=False)
    one_thread.set_state(loader.get_state())
    losses = model.fit(loader, epochs=2, verbose=0).history["loss"]
    reference_losses = reference.fit(one_thread, epochs=2, verbose=0).history["loss"]
    np.testing.assert_allclose(losses, reference_losses, rtol=1e-6)
    for got, want in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert losses[1] < losses[0]


def test_get_tf_dataset_says_it_is_not_a_tf_data_dataset():
    x, y = separable(64)
    batches = Loader(x, y, batch_size=16, seed=0, verbose=False).get_tf_dataset()
    with pytest.raises(AttributeError, match=r"not a tf.data.Dataset, so it has no 'take'.*itertools.islice"):
        batches.take(3)
    assert sum(int(batch[0].shape[0]) for batch in batches) == 64
