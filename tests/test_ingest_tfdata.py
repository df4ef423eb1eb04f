"""gpuloader.from_tf_dataset: a finite tf.data pipeline of fixed-shape samples read once into the cache."""

from __future__ import annotations

import numpy as np
import pytest

import gpuloader
from gpuloader.ingest import tfdata

tf = pytest.importorskip("tensorflow")


def pipeline(n=600):
    x = np.arange(n * 4, dtype=np.float32).reshape(n, 4)
    y = (np.arange(n) % 5).astype(np.int64)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).map(lambda a, b: (a * 2.0, b))
    return dataset, x * 2, y


def test_elements_are_read_once_and_served_by_the_tiers(tmp_path, monkeypatch):
    dataset, x, y = pipeline()
    loader = gpuloader.from_tf_dataset(dataset, cache_dir=tmp_path, batch_size=50, shuffle=False, verbose=False)
    assert loader.placement == "host"
    xb, yb = loader[3]
    np.testing.assert_array_equal(np.asarray(xb), x[150:200])
    np.testing.assert_array_equal(np.asarray(yb), y[150:200])

    def refuse(*args, **kwargs):
        raise AssertionError("the pipeline ran again")

    monkeypatch.setattr(tfdata, "_materialise", refuse)
    rebuilt_pipeline, _, _ = pipeline()  # the same pipeline built again: the same key
    again = gpuloader.from_tf_dataset(rebuilt_pipeline, cache_dir=tmp_path, batch_size=50, shuffle=False,
                                      verbose=False)
    np.testing.assert_array_equal(np.asarray(again[3][0]), x[150:200])
    other = tf.data.Dataset.from_tensor_slices((x, y)).map(lambda a, b: (a * 3.0, b))
    with pytest.raises(AssertionError, match="ran again"):  # another pipeline is another entry
        gpuloader.from_tf_dataset(other, cache_dir=tmp_path, verbose=False)


def test_dict_elements_and_a_shuffled_epoch_see_every_sample(tmp_path):
    n = 130
    dataset = tf.data.Dataset.from_tensor_slices({"image": np.arange(n * 6, dtype=np.uint8).reshape(n, 2, 3),
                                                  "id": np.arange(n)})
    loader = gpuloader.from_tf_dataset(dataset, cache_dir=tmp_path, batch_size=32, seed=3, verbose=False)
    ids = np.concatenate([np.asarray(batch[0]["id"]) for batch in loader])
    assert sorted(ids.tolist()) == list(range(n)) and ids.tolist() != list(range(n))


def test_from_generator_needs_a_cache_key_and_then_works(tmp_path):
    def rows():
        for i in range(40):
            yield np.full(3, i, np.float32), i

    spec = (tf.TensorSpec((3,), tf.float32), tf.TensorSpec((), tf.int64))
    dataset = tf.data.Dataset.from_generator(rows, output_signature=spec)
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(40))
    with pytest.raises(ValueError, match="pass cache_key="):
        gpuloader.from_tf_dataset(dataset, cache_dir=tmp_path, verbose=False)
    loader = gpuloader.from_tf_dataset(dataset, cache_key="rows-v1", cache_dir=tmp_path, batch_size=40,
                                       shuffle=False, verbose=False)
    np.testing.assert_array_equal(np.asarray(loader[0][1]), np.arange(40))


def test_a_wrong_cardinality_is_refused_and_nothing_is_cached(tmp_path):
    dataset = tf.data.Dataset.range(10).filter(lambda v: v < 5).map(lambda v: tf.cast(v, tf.float32))
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(7))
    with pytest.raises(ValueError, match=r"does not hold the 7 samples.*assert_cardinality\(n\)"):
        gpuloader.from_tf_dataset(dataset, cache_key="short", cache_dir=tmp_path, verbose=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d.repeat(), "infinite"),
        (lambda d: d.filter(lambda a, b: b > 0), "unknown"),
        (lambda d: d.batch(8), r"elements are batches.*unbatch\(\)"),
        (lambda d: d.map(lambda a, b: (tf.boolean_mask(a, a > 2.0), b)), r"shape \(None,\), not fixed"),
        (lambda d: tf.data.Dataset.from_tensor_slices(tf.ragged.constant([[1], [2, 3]])), "ragged"),
        (lambda d: tf.data.Dataset.from_tensor_slices(["a", "b"]), "dtype string"),
        (lambda d: d.map(lambda a, b: (a, b, b, b)), "tuples of 4"),
        (lambda d: d.take(0), "empty"),
        # bfloat16 would be written to .npy as raw 'V2' bytes: was NumPy's bare "No cast function available."
        (lambda d: d.map(lambda a, b: (tf.cast(a, tf.bfloat16), b)), r"dtype bfloat16.*cannot hold.*tf\.cast"),
    ],
)
def test_refused_with_the_rule_and_the_fix(tmp_path, make, message):
    dataset, _, _ = pipeline(20)
    with pytest.raises(ValueError, match=message):
        gpuloader.from_tf_dataset(make(dataset), cache_dir=tmp_path, verbose=False)


def test_take_makes_an_infinite_dataset_finite(tmp_path):
    dataset, x, _ = pipeline(20)
    loader = gpuloader.from_tf_dataset(dataset.repeat().take(30), cache_dir=tmp_path, batch_size=30, shuffle=False,
                                       verbose=False)
    np.testing.assert_array_equal(np.asarray(loader[0][0]), np.concatenate([x, x[:10]]))


@pytest.mark.parametrize(
    "make",
    [
        lambda d: d.shuffle(20).batch(4, drop_remainder=True),
        lambda d: d.batch(4, drop_remainder=True).map(lambda a, b: (a + 1.0, b)),
        lambda d: d.padded_batch(4, drop_remainder=True),
        lambda d: tf.data.Dataset.zip((d.batch(2, drop_remainder=True), d.batch(2, drop_remainder=True))),
    ],
)
def test_a_batched_dataset_is_refused_even_with_fixed_shapes(tmp_path, make):
    dataset, _, _ = pipeline(20)
    fix = r"unbatch\(\)\.apply\(tf\.data\.experimental\.assert_cardinality\(n\)\)"  # unbatch() alone has no count
    with pytest.raises(ValueError, match=rf"elements are batches.*BatchDataset.*{fix}.*allow_batched=True"):
        gpuloader.from_tf_dataset(make(dataset), cache_dir=tmp_path, verbose=False)
    assert list(tmp_path.iterdir()) == []


def test_a_hugging_face_dataset_is_refused_naming_its_function(tmp_path):
    datasets = pytest.importorskip("datasets")
    with pytest.raises(TypeError, match=r"received Dataset\. It is a Hugging Face.*gpuloader\.from_hf_dataset"):
        gpuloader.from_tf_dataset(datasets.Dataset.from_dict({"a": [1, 2]}), cache_dir=tmp_path)


def test_a_seeded_mix_of_datasets_is_samples_though_its_selector_is_batched(tmp_path):
    dataset, x, _ = pipeline(20)
    # sample_from_datasets picks each element's source from a batched stream of random numbers (its selector
    # input); the elements themselves are single samples.
    mixed = tf.data.Dataset.sample_from_datasets([dataset.take(10), dataset.skip(10)], seed=3)
    loader = gpuloader.from_tf_dataset(mixed.apply(tf.data.experimental.assert_cardinality(20)), cache_dir=tmp_path,
                                       batch_size=20, shuffle=False, verbose=False)
    assert sorted(np.asarray(loader[0][0])[:, 0].tolist()) == sorted(x[:, 0].tolist())


def test_batches_unbatched_again_are_samples_and_allow_batched_takes_windows(tmp_path):
    dataset, x, _ = pipeline(20)
    unbatched = dataset.batch(4).unbatch().apply(tf.data.experimental.assert_cardinality(20))
    loader = gpuloader.from_tf_dataset(unbatched, cache_dir=tmp_path, batch_size=20,
                                       shuffle=False, verbose=False)
    np.testing.assert_array_equal(np.asarray(loader[0][0]), x)
    series = tf.data.Dataset.range(12).batch(3, drop_remainder=True)  # windows of a series: one sample each
    windows = gpuloader.from_tf_dataset(series, cache_dir=tmp_path, allow_batched=True, batch_size=4,
                                        shuffle=False, verbose=False)
    np.testing.assert_array_equal(np.asarray(windows[0][0]), np.arange(12).reshape(4, 3))


@pytest.mark.parametrize("cache_key", [None, "augmented-v1"])
@pytest.mark.parametrize("random_step", ["tf.random", "keras layer"])
def test_random_augmentation_in_the_pipeline_is_refused_even_with_a_cache_key(tmp_path, random_step, cache_key):
    """Read once into the cache, its draws would be replayed every epoch: refused, naming augment=."""
    import keras

    dataset, _, _ = pipeline(20)
    noise = keras.layers.GaussianNoise(1.0)
    if random_step == "tf.random":
        def step(a, b):
            return a + tf.random.uniform([4]), b
    else:
        def step(a, b):
            return noise(a, training=True), b
    with pytest.raises(ValueError, match=r"draws random numbers.*replayed every epoch.*augment=.*allow_random=True"):
        gpuloader.from_tf_dataset(dataset.map(step), cache_key=cache_key, cache_dir=tmp_path, verbose=False)
    loader = gpuloader.from_tf_dataset(dataset.map(step), cache_key="one-draw", allow_random=True,
                                       cache_dir=tmp_path, batch_size=20, verbose=False)
    assert loader.num_samples == 20


def test_a_seeded_stateless_draw_is_the_same_every_run_and_accepted(tmp_path):
    dataset, x, _ = pipeline(20)
    noisy = dataset.map(lambda a, b: (a + tf.random.stateless_uniform([4], seed=[1, 2]), b))
    loader = gpuloader.from_tf_dataset(noisy, cache_dir=tmp_path, batch_size=20, shuffle=False, verbose=False)
    assert np.asarray(loader[0][0]).shape == x.shape


@pytest.fixture
def no_global_seed():
    """No tf.random.set_seed in force (another test may have set one): shuffle() without a seed is then unseeded."""
    from tensorflow.python.eager import context

    previous = context.global_seed()
    tf.random.set_seed(None)
    yield
    tf.random.set_seed(previous)


def loose_order():
    options = tf.data.Options()
    options.deterministic = False
    return options


@pytest.mark.parametrize(
    "make",
    [
        # A split of one unseeded order: each part cached by another run would overlap the other (17 of 30 rows
        # of a validation part were training rows, in a process that found the training part cached).
        lambda d: d.shuffle(20, reshuffle_each_iteration=False).take(15),
        lambda d: d.shuffle(20).map(lambda a, b: (a + 1.0, b)).skip(5),
        lambda d: d.map(lambda a, b: (a + 1.0, b), num_parallel_calls=2, deterministic=False).take(15),
        lambda d: d.shuffle(20).shard(2, 0),
        lambda d: d.map(lambda a, b: (a + 1.0, b), num_parallel_calls=2).with_options(loose_order()).skip(5),
        lambda d: tf.data.Dataset.range(2).interleave(lambda i: d.shuffle(20))
        .apply(tf.data.experimental.assert_cardinality(40)).take(30),
    ],
)
def test_a_split_of_an_order_that_changes_from_run_to_run_is_refused_naming_the_seed(tmp_path, make, no_global_seed):
    dataset, _, _ = pipeline(20)
    with pytest.raises(ValueError, match=r"selects samples by position.*differs from run to run.*overlap.*"
                                         r"shuffle\(n, seed=0\)"):
        gpuloader.from_tf_dataset(make(dataset), cache_dir=tmp_path, verbose=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match=r"RandomDataset without a seed.*replayed every epoch"):
        gpuloader.from_tf_dataset(tf.data.Dataset.zip((dataset, tf.data.Dataset.random().take(20))),
                                  cache_dir=tmp_path, verbose=False)


def test_an_unseeded_shuffle_that_nothing_splits_is_accepted(tmp_path):
    """Every sample once whatever the order (the Loader reshuffles), also after a take made before it."""
    dataset, x, _ = pipeline(20)
    for shuffled, rows in ((dataset.shuffle(20), x), (dataset.take(15).shuffle(15), x[:15])):
        loader = gpuloader.from_tf_dataset(shuffled, cache_dir=tmp_path, batch_size=len(rows), verbose=False)
        np.testing.assert_array_equal(np.sort(np.asarray(loader[0][0])[:, 0]), rows[:, 0])


def test_a_seeded_shuffle_or_random_source_is_the_same_every_run_and_accepted(tmp_path):
    dataset, x, _ = pipeline(20)
    split = dataset.shuffle(20, seed=3, reshuffle_each_iteration=False)
    train = gpuloader.from_tf_dataset(split.take(15), cache_dir=tmp_path, batch_size=15, shuffle=False, verbose=False)
    rest = gpuloader.from_tf_dataset(split.skip(15), cache_dir=tmp_path, batch_size=5, shuffle=False, verbose=False)
    rows = np.concatenate([np.asarray(train[0][0]), np.asarray(rest[0][0])])
    np.testing.assert_array_equal(np.sort(rows[:, 0]), np.sort(x[:, 0]))  # a split: every row once
    numbers = tf.data.Dataset.random(seed=4).take(6)  # seeded: the same numbers every run, not a random step
    loader = gpuloader.from_tf_dataset(numbers, cache_dir=tmp_path, batch_size=6, shuffle=False, verbose=False)
    np.testing.assert_array_equal(np.asarray(loader[0][0]), list(numbers.as_numpy_iterator()))


def test_rebuild_reads_the_pipeline_again_and_later_calls_open_the_new_entry(tmp_path, monkeypatch):
    n = 60
    old = tf.data.Dataset.from_tensor_slices(np.zeros((n, 2), np.float32))
    new = tf.data.Dataset.from_tensor_slices(np.ones((n, 2), np.float32))  # the data's new version, same key
    call = {"cache_key": "rows-v1", "cache_dir": tmp_path, "batch_size": n, "shuffle": False, "verbose": False}
    assert np.asarray(gpuloader.from_tf_dataset(old, **call)[0][0]).max() == 0
    stale = gpuloader.from_tf_dataset(new, **call)  # same key: the old entry, as documented
    assert np.asarray(stale[0][0]).max() == 0
    rebuilt = gpuloader.from_tf_dataset(new, rebuild=True, **call)
    assert np.asarray(rebuilt[0][0]).min() == 1

    def refuse(*args, **kwargs):
        raise AssertionError("the pipeline ran again")

    monkeypatch.setattr(tfdata, "_materialise", refuse)
    later = gpuloader.from_tf_dataset(new, **call)
    assert np.asarray(later[0][0]).min() == 1
    assert len([entry for entry in tmp_path.iterdir() if entry.name.startswith("tfdata-")]) == 1


def test_complex_elements_are_cached_as_the_loader_takes_complex_arrays(tmp_path):
    values = (np.arange(12) + 1j * np.arange(12)).astype(np.complex64).reshape(6, 2)
    dataset = tf.data.Dataset.from_tensor_slices(values)
    loader = gpuloader.from_tf_dataset(dataset, cache_dir=tmp_path, batch_size=6, shuffle=False, verbose=False)
    np.testing.assert_array_equal(np.asarray(loader[0][0]), values)
    with pytest.raises(ValueError, match=r"dtype string; .* Decode strings"):
        gpuloader.from_tf_dataset(tf.data.Dataset.from_tensor_slices(["a", "b"]), cache_dir=tmp_path, verbose=False)
