"""gpuloader.image_dataset_from_directory: Keras's files, classes, labels and pixels, decoded once into a cache."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import run_python

import gpuloader
from gpuloader.ingest import decode

PIL = pytest.importorskip("PIL.Image")
MODES = {"grayscale": "L", "rgb": "RGB", "rgba": "RGBA"}


def write_folder(root, mode="RGB", size=(12, 10), per_class=(4, 3, 5), ext="png", nested=True, seed=0):
    """Class folders of random images written by Pillow; nested ones get a subfolder of their own."""
    rng = np.random.default_rng(seed)
    channels = len(mode)
    for index, count in enumerate(per_class):
        folder = root / ["class_b", "class_a", "class_c"][index]  # made out of alphanumeric order
        for i in range(count):
            where = folder / "inner" if nested and i == count - 1 else folder
            where.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (size[0], size[1], channels), dtype=np.uint8)
            PIL.fromarray(pixels[..., 0] if channels == 1 else pixels, mode).save(where / f"img_{i:02d}.{ext}")
    return root


def keras_by_file(dataset):
    """{file: (image, label)} of a Keras dataset made with shuffle=False (its file_paths are in batch order)."""
    images, labels = [], []
    for batch in dataset:
        x, y = batch if isinstance(batch, tuple) else (batch, None)
        images += list(x.numpy())
        labels += [None] * len(x) if y is None else list(y.numpy())
    return {path: (image, label) for path, image, label in zip(dataset.file_paths, images, labels)}


def ours_by_file(loader):
    images, labels = [], []
    for batch in loader:
        images += list(np.asarray(batch[0]))
        labels += [None] * len(batch[0]) if len(batch) == 1 else list(np.asarray(batch[1]))
    return {path: (image, label) for path, image, label in zip(loader.file_paths, images, labels)}


@pytest.mark.parametrize("color_mode", ["grayscale", "rgb", "rgba"])
@pytest.mark.parametrize("label_mode", ["int", "categorical", "binary", None])
def test_class_names_labels_and_pixels_equal_keras_for_images_at_image_size(tmp_path, color_mode, label_mode):
    import keras

    per_class = (4, 3) if label_mode == "binary" else (4, 3, 5)
    folder = write_folder(tmp_path / "data", MODES[color_mode], size=(12, 10), per_class=per_class)
    arguments = {"color_mode": color_mode, "label_mode": label_mode, "image_size": (12, 10), "shuffle": False,
                 "batch_size": 5}
    theirs = keras.utils.image_dataset_from_directory(folder, verbose=False, **arguments)
    ours = gpuloader.image_dataset_from_directory(folder, cache_dir=tmp_path / "cache", verbose=False, **arguments)
    expected_names = None if label_mode is None else ["class_a", "class_b", "class_c"][: len(per_class)]
    assert ours.class_names == theirs.class_names == expected_names
    assert ours.file_paths == theirs.file_paths  # same files, same order (nested folders included)
    expected, served = keras_by_file(theirs), ours_by_file(ours)
    assert served.keys() == expected.keys()
    for path, (image, label) in expected.items():
        assert served[path][0].dtype == image.dtype == np.float32
        np.testing.assert_array_equal(served[path][0], image, err_msg=path)
        if label_mode is None:
            assert served[path][1] is None
        else:
            np.testing.assert_array_equal(served[path][1], label, err_msg=path)


def test_shuffled_split_has_keras_files_in_each_subset_and_the_loader_shuffles_them(tmp_path):
    import keras

    folder = write_folder(tmp_path / "data", per_class=(9, 7, 8))
    split = {"validation_split": 0.25, "seed": 1337, "image_size": (12, 10)}
    keras_train, keras_val = keras.utils.image_dataset_from_directory(folder, subset="both", verbose=False, **split)
    train, val = gpuloader.image_dataset_from_directory(folder, subset="both", cache_dir=tmp_path / "c",
                                                        verbose=False, **split)
    assert sorted(train.file_paths) == sorted(keras_train.file_paths)
    assert sorted(val.file_paths) == sorted(keras_val.file_paths)
    only_val = gpuloader.image_dataset_from_directory(folder, subset="validation", cache_dir=tmp_path / "c",
                                                      verbose=False, **split)
    assert only_val.file_paths == val.file_paths
    assert (train.seed, train.shuffle, val.shuffle) == (1337, True, False)
    labels = dict(zip(train.file_paths, np.asarray(train.pipeline.store.leaves[1]).tolist()))  # row i is file_paths[i]
    folders = {path: Path(path).relative_to(folder).parts[0] for path in labels}
    assert labels == {path: train.class_names.index(folders[path]) for path in labels}


def test_a_folder_changed_between_the_training_and_validation_calls_is_warned_about_with_the_overlap(tmp_path):
    folder = write_folder(tmp_path / "data", per_class=(9, 7, 8))
    split = {"validation_split": 0.25, "seed": 1337, "image_size": (12, 10), "cache_dir": tmp_path / "c",
             "verbose": False}
    train = gpuloader.image_dataset_from_directory(folder, subset="training", **split)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same listing: the subsets are apart, nothing to say
        gpuloader.image_dataset_from_directory(folder, subset="validation", **split)
    PIL.fromarray(np.zeros((12, 10, 3), np.uint8)).save(folder / "class_a" / "added.png")
    with pytest.warns(UserWarning, match=r"changed between the subset='training' call.*\d+ of this subset's 6 files "
                                         r"are also in the training loader.*subset=\"both\"") as caught:
        val = gpuloader.image_dataset_from_directory(folder, subset="validation", **split)
    shared = len(set(val.file_paths) & set(train.file_paths))
    assert shared > 0 and f"{shared} of this subset's" in str(caught[0].message)


def test_crop_to_aspect_ratio_takes_keras_centred_window(tmp_path):
    import keras

    folder = write_folder(tmp_path / "data", size=(12, 20), per_class=(2, 2))
    arguments = {"image_size": (12, 12), "crop_to_aspect_ratio": True, "shuffle": False}
    theirs = keras_by_file(keras.utils.image_dataset_from_directory(folder, verbose=False, **arguments))
    served = ours_by_file(gpuloader.image_dataset_from_directory(folder, cache_dir=tmp_path / "c", verbose=False,
                                                                 **arguments))
    for path, (image, _) in theirs.items():
        np.testing.assert_array_equal(served[path][0], image, err_msg=path)


def test_resized_images_are_close_to_keras_not_equal(tmp_path):
    """Pillow's bilinear filter vs tf.image.resize: documented as a difference of a few levels."""
    import keras

    folder = write_folder(tmp_path / "data", size=(8, 8), per_class=(2, 2))
    arguments = {"image_size": (16, 16), "shuffle": False}
    theirs = keras_by_file(keras.utils.image_dataset_from_directory(folder, verbose=False, **arguments))
    served = ours_by_file(gpuloader.image_dataset_from_directory(folder, cache_dir=tmp_path / "c", verbose=False,
                                                                 **arguments))
    difference = np.mean([np.abs(served[p][0] - image).mean() for p, (image, _) in theirs.items()])
    assert served[next(iter(theirs))][0].shape == (16, 16, 3)
    assert 0 < difference < 12


def test_second_call_in_a_new_process_opens_the_cache_without_decoding(tmp_path):
    folder = write_folder(tmp_path / "data")
    cache = tmp_path / "cache"
    first = gpuloader.image_dataset_from_directory(folder, image_size=(12, 10), shuffle=False, cache_dir=cache,
                                                   verbose=False)
    (entry,) = [path for path in cache.iterdir()]
    manifest_time = (entry / "manifest.json").stat().st_mtime_ns
    script = (
        "import sys, json, numpy as np, gpuloader\n"
        "from gpuloader.ingest import decode\n"
        "def refuse(*a, **k): raise AssertionError('decoded again')\n"
        "decode.decode_one = refuse; decode.decode_into = refuse\n"
        f"ld = gpuloader.image_dataset_from_directory({str(folder)!r}, image_size=(12, 10), shuffle=False, "
        f"cache_dir={str(cache)!r}, verbose=False)\n"
        "print(json.dumps([np.asarray(ld[0][0]).tolist(), ld.class_names]))\n"
    )
    done = run_python(["-c", script])
    assert done.returncode == 0, done.stderr[-2000:]
    pixels, names = json.loads(done.stdout.strip().splitlines()[-1])
    np.testing.assert_array_equal(np.asarray(pixels, np.float32), np.asarray(first[0][0]))
    assert names == first.class_names
    assert [path for path in cache.iterdir()] == [entry]
    assert (entry / "manifest.json").stat().st_mtime_ns == manifest_time


def test_a_changed_folder_rebuilds_and_the_old_entry_goes(tmp_path):
    folder = write_folder(tmp_path / "data", per_class=(3, 3))
    cache = tmp_path / "cache"
    arguments = {"image_size": (12, 10), "shuffle": False, "cache_dir": cache, "verbose": False, "dtype": "uint8"}
    before = gpuloader.image_dataset_from_directory(folder, **arguments)
    (old,) = list(cache.iterdir())
    target = folder / "class_a" / "img_00.png"
    PIL.fromarray(np.full((12, 10, 3), 7, np.uint8)).save(target)
    os.utime(target, ns=(1, 1))  # another mtime even on a coarse clock
    after = gpuloader.image_dataset_from_directory(folder, **arguments)
    assert np.all(np.asarray(after[0][0])[0] == 7) and not np.all(np.asarray(before[0][0])[0] == 7)
    (new,) = list(cache.iterdir())
    assert new != old
    PIL.fromarray(np.full((12, 10, 3), 9, np.uint8)).save(folder / "class_b" / "zz_new.png")
    grown = gpuloader.image_dataset_from_directory(folder, **arguments)
    assert grown.num_samples == before.num_samples + 1
    new_file = str(folder / "class_b" / "zz_new.png")
    assert new_file in grown.file_paths and new_file not in before.file_paths


def test_a_corrupt_image_is_named_or_skipped_and_counted(tmp_path):
    folder = write_folder(tmp_path / "data", per_class=(3, 3))
    bad = folder / "class_b" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    cache = tmp_path / "cache"
    arguments = {"image_size": (12, 10), "shuffle": False, "cache_dir": cache, "verbose": False}
    with pytest.raises(decode.DecodeError, match=r"broken\.jpg: cannot be decoded"):
        gpuloader.image_dataset_from_directory(folder, **arguments)
    (entry,) = list(cache.iterdir())  # the decode is kept (good images, the bad one named); no temporary folder
    assert json.loads((entry / "manifest.json").read_text())["skipped"][0][1].startswith(str(bad))
    with pytest.warns(UserWarning, match="1 of 7 images could not be decoded and were skipped"):
        skipped = gpuloader.image_dataset_from_directory(folder, on_error="skip", **arguments)
    assert skipped.num_samples == 6 and not any(path.endswith("broken.jpg") for path in skipped.file_paths)
    good = folder / "class_b" / "img_00.png"
    with PIL.open(good) as image:
        expected = np.asarray(image.convert("RGB"), np.float32)
    index = skipped.file_paths.index(str(good))
    np.testing.assert_array_equal(np.asarray(skipped[0][0])[index], expected)
    with pytest.raises(decode.DecodeError, match=r"broken\.jpg"):  # the cache remembers the bad file
        gpuloader.image_dataset_from_directory(folder, **arguments)


def test_skipped_images_leave_keras_split_as_it_is_and_fixing_them_moves_no_other_file(tmp_path):
    import keras

    folder = write_folder(tmp_path / "data", per_class=(9, 7, 8))
    bad = folder / "class_a" / "broken.png"
    bad.write_bytes(b"not a png")
    split = {"validation_split": 0.3, "seed": 7, "image_size": (12, 10)}
    keras_train, keras_val = keras.utils.image_dataset_from_directory(folder, subset="both", verbose=False, **split)
    with pytest.warns(UserWarning, match="could not be decoded and were skipped"):
        train, val = gpuloader.image_dataset_from_directory(folder, subset="both", on_error="skip", verbose=False,
                                                            cache_dir=tmp_path / "c", **split)
    assert sorted(train.file_paths) == sorted(set(keras_train.file_paths) - {str(bad)})
    assert sorted(val.file_paths) == sorted(set(keras_val.file_paths) - {str(bad)})
    PIL.fromarray(np.zeros((12, 10, 3), np.uint8)).save(bad, format="PNG")  # the file fixed: only it comes back
    train_fixed, val_fixed = gpuloader.image_dataset_from_directory(folder, subset="both", verbose=False,
                                                                    cache_dir=tmp_path / "c", **split)
    assert set(train.file_paths) <= set(train_fixed.file_paths) and set(val.file_paths) <= set(val_fixed.file_paths)


def test_a_subset_whose_every_image_is_skipped_is_refused_naming_them(tmp_path):
    import keras

    folder = write_folder(tmp_path / "data", per_class=(5, 5), nested=False)
    split = {"validation_split": 0.1, "seed": 3, "image_size": (12, 10)}
    (only,) = keras.utils.image_dataset_from_directory(folder, subset="validation", verbose=False, **split).file_paths
    Path(only).write_bytes(b"not a png")
    with pytest.raises(ValueError, match=rf"every image of the validation subset .* was skipped.*{Path(only).name}"):
        gpuloader.image_dataset_from_directory(folder, subset="both", on_error="skip", verbose=False,
                                               cache_dir=tmp_path / "c", **split)


def test_jpeg_files_decode_within_a_few_levels_of_keras(tmp_path):
    import keras

    folder = write_folder(tmp_path / "data", ext="jpg", per_class=(2, 2))
    arguments = {"image_size": (12, 10), "shuffle": False}
    theirs = keras_by_file(keras.utils.image_dataset_from_directory(folder, verbose=False, **arguments))
    served = ours_by_file(gpuloader.image_dataset_from_directory(folder, cache_dir=tmp_path / "c", verbose=False,
                                                                 **arguments))
    for path, (image, _) in theirs.items():  # libjpeg-turbo in both; chroma upsampling differs by a few levels
        assert np.abs(served[path][0] - image).max() <= 4, path
        assert np.abs(served[path][0] - image).mean() < 1.5, path


@pytest.mark.parametrize(
    ("arrange", "arguments", "message"),
    [
        (lambda root: (root / "class_z").mkdir(), {}, "class folder 'class_z' .* has no images"),
        (lambda root: None, {"image_size": None}, None),
        (lambda root: PIL.fromarray(np.zeros((5, 5, 3), np.uint8)).save(root / "class_a" / "small.png"),
         {"image_size": None}, r"images of several sizes and image_size=None.*small\.png: is 5x5, not 12x10"),
        (lambda root: None, {"interpolation": "gaussian"}, "no Pillow filter"),
        (lambda root: None, {"validation_split": 0.2, "subset": "training"}, "needs a seed"),
        (lambda root: None, {"validation_split": 0.2}, "subset and validation_split go together"),
        (lambda root: None, {"batch_size": None}, "batch_size=None"),
        (lambda root: None, {"label_mode": "binary"}, 'label_mode="binary" needs exactly 2 classes; found 3'),
        (lambda root: None, {"class_names": ["class_a", "nope"]}, "class_names must name subfolders"),
        (lambda root: None, {"labels": None, "class_names": ["class_a"]},
         'class_names can only be given with labels="inferred"'),
        (lambda root: None, {"labels": [0.5] * 12, "label_mode": "categorical"}, "categorical.*whole-number"),
        (lambda root: None, {"dtype": "float32", "augment": [gpuloader.augment.Normalize(0, 1, dtype="float16")]},
         r"dtype='float32' and augment's final Normalize\(dtype='float16'\)"),
        # The cache is channels-last: a channels-first flip reversed the colours (RGB to BGR), with only a warning
        # whose fix (Loader(data_format=...)) this function refuses.
        (lambda root: None, {"augment": [gpuloader.augment.RandomFlip(data_format="channels_first")]},
         r"decoded channels-last.*RGB to BGR.*leave data_format out"),
    ],
)
def test_refused_with_the_rule(tmp_path, arrange, arguments, message):
    folder = write_folder(tmp_path / "data")
    arrange(folder)
    call = {"image_size": (12, 10), "cache_dir": tmp_path / "c", "verbose": False, **arguments}
    if message is None:  # image_size=None with equal sizes is accepted: the images' own size
        assert np.asarray(gpuloader.image_dataset_from_directory(folder, **call)[0][0]).shape[1:] == (12, 10, 3)
        return
    with pytest.raises(ValueError, match=message):
        gpuloader.image_dataset_from_directory(folder, **call)


def test_no_images_at_all_is_refused(tmp_path):
    (tmp_path / "empty" / "class_a").mkdir(parents=True)
    (tmp_path / "empty" / "class_a" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="has no images"):
        gpuloader.image_dataset_from_directory(tmp_path / "empty", cache_dir=tmp_path / "c")
    with pytest.raises(ValueError, match="no images found"):
        gpuloader.image_dataset_from_directory(tmp_path / "empty", labels=None, cache_dir=tmp_path / "c")


def test_fit_trains_on_the_loader_with_class_names(tmp_path):
    import keras

    folder = write_folder(tmp_path / "data", size=(8, 8), per_class=(6, 6, 6))
    train = gpuloader.image_dataset_from_directory(folder, image_size=(8, 8), batch_size=4, seed=1,
                                                   cache_dir=tmp_path / "c", verbose=False)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(),
                              keras.layers.Dense(len(train.class_names), activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        history = model.fit(train, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()


def write_numbered(folder, count):
    """``count`` 4x4 PNGs whose pixels hold their index (mod 251), in one class folder."""
    folder.mkdir(parents=True)
    for i in range(count):
        PIL.fromarray(np.full((4, 4, 3), i % 251, np.uint8)).save(folder / f"{i:04d}.png")


def test_the_thread_pool_fills_every_row_and_names_a_bad_file_in_any_chunk(tmp_path, monkeypatch):
    """Several chunks decoded by the threads: each row holds its file, a bad file is skipped and counted."""
    count = 2 * decode.CHUNK + 60
    write_numbered(tmp_path / "data" / "only", count)
    (tmp_path / "data" / "only" / "0200.png").write_bytes(b"not a png")  # in the second chunk

    def no_worker(*args, **kwargs):
        raise AssertionError("a worker process was started for a job the threads should decode")

    monkeypatch.setattr(decode, "_run_workers", no_worker)  # not Popen: importing Keras may start processes
    with pytest.warns(UserWarning, match=f"1 of {count} images could not be decoded"):
        loader = gpuloader.image_dataset_from_directory(tmp_path / "data", image_size=(4, 4), shuffle=False,
                                                        dtype="uint8", batch_size=count, cache_dir=tmp_path / "c",
                                                        verbose=False, on_error="skip")
    expected = np.delete(np.arange(count) % 251, 200)
    np.testing.assert_array_equal(np.asarray(loader[0][0])[:, 0, 0, 0], expected)
    assert str(tmp_path / "data" / "only" / "0200.png") not in loader.file_paths


@pytest.mark.parametrize("slow_in", ["pool", "caller"])
def test_the_rest_of_a_decode_goes_the_way_its_trial_measured_faster_with_the_same_bytes(tmp_path, monkeypatch,
                                                                                          slow_in):
    """Threads lose to one thread where handing the GIL about costs more than it frees (tiny images on 2 cores)."""
    import threading
    import time

    monkeypatch.setattr(decode, "CHUNK", 8)
    monkeypatch.setattr(decode.os, "cpu_count", lambda: 2)
    count = 12 * 8
    write_numbered(tmp_path / "data" / "only", count)
    original, where = decode.decode_rows, {}

    def timed(items, start, *rest):
        in_caller = threading.current_thread() is threading.main_thread()
        where[start] = "caller" if in_caller else "pool"
        if where[start] == slow_in:
            time.sleep(0.03)
        return original(items, start, *rest)

    monkeypatch.setattr(decode, "decode_rows", timed)
    loader = gpuloader.image_dataset_from_directory(tmp_path / "data", image_size=(4, 4), shuffle=False,
                                                    dtype="uint8", batch_size=count, cache_dir=tmp_path / "c",
                                                    verbose=False)
    np.testing.assert_array_equal(np.asarray(loader[0][0])[:, 0, 0, 0], np.arange(count) % 251)
    trial = {0: "caller", 8: "caller", 16: "pool", 24: "pool"}
    assert {start: where[start] for start in trial} == trial
    faster = "caller" if slow_in == "pool" else "pool"
    assert {where[start] for start in range(32, count, 8)} == {faster}


def test_the_progress_bar_counts_every_image_once(tmp_path, monkeypatch):
    pytest.importorskip("tqdm")
    from gpuloader.ingest.progress import Progress

    count = 2 * decode.CHUNK + 7
    write_numbered(tmp_path / "data" / "only", count)
    advanced = []
    original = Progress.advance
    monkeypatch.setattr(Progress, "advance", lambda self, n: (advanced.append(n), original(self, n)))
    gpuloader.image_dataset_from_directory(tmp_path / "data", image_size=(4, 4), cache_dir=tmp_path / "c",
                                           verbose=True, seed=1)
    assert sum(advanced) == count


def test_large_jobs_on_many_cores_go_to_fresh_interpreters_not_forks_of_the_caller(tmp_path, monkeypatch):
    """From PROCESSES_FROM images on more than two cores, worker processes decode; the caller may run
    TensorFlow's threads, whose locks a forked child could inherit held, so they are never forks."""
    count = 2 * decode.CHUNK + 10
    write_numbered(tmp_path / "data" / "only", count)
    started = []
    popen = decode.subprocess.Popen

    def record(*args, **kwargs):
        started.append(args[0])
        return popen(*args, **kwargs)

    def no_fork(*args, **kwargs):
        raise AssertionError("the decode forked the calling process")

    monkeypatch.setattr(decode, "PROCESSES_FROM", count)
    monkeypatch.setattr(decode.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(decode.subprocess, "Popen", record)
    monkeypatch.setattr(os, "fork", no_fork)
    monkeypatch.setattr(os, "register_at_fork", no_fork)
    loader = gpuloader.image_dataset_from_directory(tmp_path / "data", image_size=(4, 4), shuffle=False,
                                                    dtype="uint8", batch_size=count, cache_dir=tmp_path / "c",
                                                    verbose=False)
    assert len(started) == 3 and all("gpuloader.ingest._decode_worker" in command for command in started)
    np.testing.assert_array_equal(np.asarray(loader[0][0])[:, 0, 0, 0], np.arange(count) % 251)


def test_the_files_fingerprint_changes_with_a_name_a_size_or_a_time_and_only_then(tmp_path):
    from gpuloader.ingest.folder import files_fingerprint

    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(b"12345")
        os.utime(tmp_path / name, ns=(10**9, 10**9))
    names = ["a.png", "b.png"]
    paths = [str(tmp_path / name) for name in names]
    before = files_fingerprint(names, paths)
    assert files_fingerprint(names, paths) == before
    assert files_fingerprint(["a.png", "c.png"], paths) != before  # a renamed file, same bytes
    os.utime(paths[1], ns=(2 * 10**9, 2 * 10**9))
    touched = files_fingerprint(names, paths)
    assert touched != before
    (tmp_path / "b.png").write_bytes(b"123456")
    os.utime(paths[1], ns=(2 * 10**9, 2 * 10**9))
    assert files_fingerprint(names, paths) not in (before, touched)


@pytest.mark.parametrize("mtime", ["kept", "changed"])
def test_a_file_rewritten_at_the_same_size_rebuilds(tmp_path, mtime):
    """A new version of a file at the same size, its mtime changed, or kept as cp -p, tar x or rsync -t keep it
    (then its change time tells)."""
    folder = write_folder(tmp_path / "data", ext="bmp", per_class=(2, 2), nested=False)  # BMP size: dimensions only
    arguments = {"image_size": (12, 10), "shuffle": False, "cache_dir": tmp_path / "c", "verbose": False,
                 "dtype": "uint8"}
    gpuloader.image_dataset_from_directory(folder, **arguments)
    target = folder / "class_a" / "img_00.bmp"
    old = target.stat()
    PIL.fromarray(np.full((12, 10, 3), 7, np.uint8)).save(target)
    os.utime(target, ns=(old.st_atime_ns, old.st_mtime_ns) if mtime == "kept" else (10**9, 10**9))
    assert target.stat().st_size == old.st_size
    assert (target.stat().st_mtime_ns == old.st_mtime_ns) == (mtime == "kept")
    after = gpuloader.image_dataset_from_directory(folder, **arguments)
    assert np.all(np.asarray(after[0][0])[after.file_paths.index(str(target))] == 7)


def test_an_unshuffled_split_is_a_slice_of_the_cache_with_keras_files_and_pixels(tmp_path):
    import keras

    folder = write_folder(tmp_path / "data", per_class=(5, 4, 6))
    split = {"validation_split": 0.3, "image_size": (12, 10), "shuffle": False, "batch_size": 4}
    theirs = keras.utils.image_dataset_from_directory(folder, subset="both", verbose=False, **split)
    ours = gpuloader.image_dataset_from_directory(folder, subset="both", cache_dir=tmp_path / "c", verbose=False,
                                                  **split)
    for mine, keras_part in zip(ours, theirs):
        assert mine.file_paths == keras_part.file_paths
        assert isinstance(mine.pipeline.store.leaves[0], np.ndarray)
        expected, served = keras_by_file(keras_part), ours_by_file(mine)
        for path, (image, label) in expected.items():
            np.testing.assert_array_equal(served[path][0], image, err_msg=path)
            assert served[path][1] == label


def test_labels_given_as_numbers_are_served_as_given_like_keras(tmp_path):
    folder = write_folder(tmp_path / "data")
    values = [0.5, 1.5, 2.5, 3.25, 4.75, 5.5, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0]  # one per file, os.walk order
    loader = gpuloader.image_dataset_from_directory(folder, labels=values, image_size=(12, 10), shuffle=False,
                                                    batch_size=12, cache_dir=tmp_path / "c", verbose=False)
    served = np.asarray(loader[0][1])
    assert served.dtype == np.float32
    np.testing.assert_array_equal(served, np.asarray(values, np.float32))
    whole = gpuloader.image_dataset_from_directory(folder, labels=list(range(12)), image_size=(12, 10), shuffle=False,
                                                   batch_size=12, cache_dir=tmp_path / "c", verbose=False)
    assert np.asarray(whole[0][1]).dtype == np.int32


def test_a_final_normalize_decides_the_batch_dtype(tmp_path):
    pytest.importorskip("ml_dtypes")
    folder = write_folder(tmp_path / "data")
    ops = [gpuloader.augment.RandomFlip(), gpuloader.augment.Normalize(127.5, 64.0, dtype="bfloat16")]
    loader = gpuloader.image_dataset_from_directory(folder, image_size=(12, 10), batch_size=4, seed=0,
                                                    cache_dir=tmp_path / "c", verbose=False, augment=ops)
    assert np.asarray(loader[0][0]).dtype.name == "bfloat16"


def test_channels_first_keras_gets_channels_first_batches_and_the_ops_read_the_cache_right(tmp_path):
    import keras

    folder = write_folder(tmp_path / "data", per_class=(8, 8, 8))
    previous = keras.config.image_data_format()
    try:
        keras.config.set_image_data_format("channels_first")
        call = {"image_size": (12, 10), "shuffle": False, "batch_size": 24, "cache_dir": tmp_path / "c",
                "verbose": False, "dtype": "uint8"}
        plain = np.asarray(gpuloader.image_dataset_from_directory(folder, **call)[0][0])
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            flipped = gpuloader.image_dataset_from_directory(folder, augment=[gpuloader.augment.RandomFlip()],
                                                             **call)
        out = np.asarray(flipped[0][0])
        keras_batch = next(iter(keras.utils.image_dataset_from_directory(
            folder, image_size=(12, 10), shuffle=False, batch_size=24, verbose=False)))[0]
    finally:
        keras.config.set_image_data_format(previous)
    assert plain.shape == tuple(keras_batch.shape) == (24, 3, 12, 10)
    moved = (out != plain).any(axis=(1, 2, 3))
    assert 0 < moved.sum() < 24
    np.testing.assert_array_equal(out[moved], plain[moved][..., ::-1])  # horizontal: the width reversed
def test_a_large_jpeg_is_decoded_at_a_reduced_scale_then_filtered_within_a_few_levels(tmp_path, monkeypatch):
    """libjpeg's reduced-scale decode (Pillow's draft) down to twice the target, then the named filter; not for
    nearest (which picks pixels) nor with crop_to_aspect_ratio."""
    from PIL import JpegImagePlugin

    rows, columns = np.mgrid[0:192, 0:256]
    pixels = np.stack([rows, columns, (rows + columns) // 2], axis=-1).astype(np.uint8)
    path = tmp_path / "data" / "only" / "photo.jpg"
    path.parent.mkdir(parents=True)
    PIL.fromarray(pixels).save(path, quality=92)
    drafts = []
    draft = JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft",
                        lambda self, mode, size: (drafts.append((self.size, size)), draft(self, mode, size))[1])
    arguments = {"image_size": (24, 32), "shuffle": False, "dtype": "uint8", "verbose": False}
    served = np.asarray(gpuloader.image_dataset_from_directory(tmp_path / "data", cache_dir=tmp_path / "c",
                                                               **arguments)[0][0])[0]
    assert drafts == [((256, 192), (64, 48))]
    with PIL.open(path) as image:
        full = np.asarray(image.convert("RGB").resize((32, 24), PIL.Resampling.BILINEAR)).astype(int)
    assert np.abs(served - full).max() <= 8 and np.abs(served - full).mean() < 1.5
    for other in ({"interpolation": "nearest"}, {"crop_to_aspect_ratio": True}):
        drafts.clear()
        gpuloader.image_dataset_from_directory(tmp_path / "data", cache_dir=tmp_path / "c", **arguments, **other)
        assert drafts == [], other


@pytest.mark.parametrize("color_mode", ["grayscale", "rgb"])
def test_sixteen_bit_grayscale_pngs_keep_their_range_as_keras_reads_them(tmp_path, color_mode):
    """X-ray, microscopy and depth PNGs are 16-bit: every value maps to its high byte, as TensorFlow's decoder."""
    import keras

    for index, name in enumerate(("normal", "pneumonia")):
        (tmp_path / "data" / name).mkdir(parents=True)
        values = (np.arange(65536, dtype=np.uint32).reshape(256, 256) + index * 97) % 65536
        PIL.fromarray(values.astype(np.uint16)).save(tmp_path / "data" / name / "scan.png")
    ours = ours_by_file(gpuloader.image_dataset_from_directory(
        tmp_path / "data", image_size=(256, 256), shuffle=False, color_mode=color_mode, dtype="uint8",
        cache_dir=tmp_path / "c", verbose=False))
    theirs = keras_by_file(keras.utils.image_dataset_from_directory(
        tmp_path / "data", image_size=(256, 256), shuffle=False, color_mode=color_mode, verbose=False))
    assert sorted(ours) == sorted(theirs)
    for path, (image, _) in theirs.items():
        np.testing.assert_array_equal(ours[path][0], image.astype(np.uint8))
        assert len(np.unique(ours[path][0])) == 256


def test_skipping_that_would_empty_a_class_or_the_whole_folder_is_refused(tmp_path):
    folder = write_folder(tmp_path / "data", per_class=(2, 2), nested=False)
    for image in (folder / "class_a").iterdir():
        image.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    arguments = {"image_size": (12, 10), "cache_dir": tmp_path / "c", "verbose": False, "on_error": "skip"}
    with pytest.raises(decode.DecodeError, match=r"every image of class \['class_a'\] failed to decode"):
        gpuloader.image_dataset_from_directory(folder, **arguments)
    kept = gpuloader.image_dataset_from_directory(folder, class_names=["class_b"], **arguments)
    assert kept.num_samples == 2
    for image in (folder / "class_b").iterdir():
        image.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(decode.DecodeError, match="all 4 images failed to decode"):
        gpuloader.image_dataset_from_directory(folder, labels=None, **arguments)


def test_a_cache_kept_inside_the_image_folder_is_not_taken_for_a_class(tmp_path):
    folder = write_folder(tmp_path / "data", per_class=(2, 2), nested=False)
    arguments = {"image_size": (12, 10), "cache_dir": folder / "cache", "verbose": False}
    first = gpuloader.image_dataset_from_directory(folder, **arguments)
    again = gpuloader.image_dataset_from_directory(folder, **arguments)
    assert first.class_names == again.class_names == ["class_a", "class_b"]
    assert again.num_samples == 4


@pytest.mark.parametrize(
    ("labels", "label_mode", "message"),
    [
        ([-1, 0, 1] * 4, "categorical", r"class ids 0 to 2; labels holds \[-1\]"),  # np.eye would wrap -1 to class 2
        ([0, 1, 5] * 4, "categorical", r"class ids 0 to 2; labels holds \[5\]"),  # was a bare IndexError
        ([3, 4] * 6, "binary", r"0 to 1; labels holds \[3, 4\].*label_mode=\"int\""),
    ],
)
def test_labels_a_label_mode_cannot_encode_are_refused_before_decoding(tmp_path, labels, label_mode, message):
    folder = write_folder(tmp_path / "data")
    with pytest.raises(ValueError, match=message):
        gpuloader.image_dataset_from_directory(folder, labels=labels, label_mode=label_mode, image_size=(12, 10),
                                               cache_dir=tmp_path / "c", verbose=False)
    assert not (tmp_path / "c").exists() or list((tmp_path / "c").iterdir()) == []  # nothing decoded


def test_label_values_keep_their_meaning_arrays_large_ids_and_soft_binary_targets(tmp_path):
    folder = write_folder(tmp_path / "data")
    call = {"image_size": (12, 10), "shuffle": False, "batch_size": 12, "cache_dir": tmp_path / "c", "verbose": False}
    large = [0, 10**10, 2] * 4  # int32 would wrap 10**10 to 1410065408
    served = np.asarray(gpuloader.image_dataset_from_directory(folder, labels=large, **call)[0][1])
    np.testing.assert_array_equal(served, large)
    as_array = gpuloader.image_dataset_from_directory(folder, labels=np.arange(12) % 3, **call)  # a 1-d array
    np.testing.assert_array_equal(np.asarray(as_array[0][1]), np.arange(12) % 3)
    soft = gpuloader.image_dataset_from_directory(folder, labels=[0.25, 1.0] * 6, label_mode="binary", **call)
    np.testing.assert_array_equal(np.asarray(soft[0][1])[:, 0], [0.25, 1.0] * 6)
    with pytest.raises(ValueError, match=r"class_names names \['class_a'\] more than once"):
        gpuloader.image_dataset_from_directory(folder, class_names=["class_a", "class_a", "class_b"], **call)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_float32_batches_are_the_cached_bytes_cast_in_one_aligned_buffer(tmp_path, data_format):
    import keras

    from gpuloader.gather import is_aligned

    folder = write_folder(tmp_path / "data", per_class=(8, 8, 8))
    call = {"image_size": (12, 10), "shuffle": False, "batch_size": 24, "cache_dir": tmp_path / "c", "verbose": False}
    previous = keras.config.image_data_format()
    try:
        keras.config.set_image_data_format(data_format)
        stored = np.asarray(gpuloader.image_dataset_from_directory(folder, dtype="uint8", **call)[0][0])
        loader = gpuloader.image_dataset_from_directory(folder, **call)
        served = np.asarray(loader[0][0])
        _, leaves = loader.pipeline.prepare(0, 0, False)
    finally:
        keras.config.set_image_data_format(previous)
    assert served.dtype == np.float32 and served.shape == stored.shape
    np.testing.assert_array_equal(served, stored.astype(np.float32))
    assert is_aligned(leaves[0])  # the hand-off takes it as it is, with no second copy of the batch


@pytest.mark.parametrize("compiled", [True, False])
def test_stat_files_gives_what_os_stat_gives_and_names_a_missing_file(tmp_path, monkeypatch, compiled):
    from gpuloader.ingest import folder

    if compiled and folder._stat is None:
        pytest.skip("gpuloader.ingest._stat is not built here")
    if not compiled:
        monkeypatch.setattr(folder, "_stat", None)
    paths = []
    for i in range(2100):  # enough for several threads
        path = tmp_path / f"f{i:04d}.png"
        path.write_bytes(b"x" * (i % 37))
        paths.append(str(path))
    os.symlink(paths[5], tmp_path / "link.png")  # followed, as os.stat follows it
    paths.append(str(tmp_path / "link.png"))
    paths.append(str(tmp_path / "n\u00e9e \u6f22.png"))  # a name beyond ASCII
    Path(paths[-1]).write_bytes(b"abc")
    expected = [(s.st_size, s.st_mtime_ns, s.st_ino, s.st_ctime_ns) for s in map(os.stat, paths)]
    np.testing.assert_array_equal(folder.stat_files(paths), np.array(expected, dtype=np.int64))
    gone = [*paths[:1500], str(tmp_path / "gone.png"), *paths[1500:]]
    with pytest.raises(FileNotFoundError) as raised:
        folder.stat_files(gone)
    assert raised.value.filename == str(tmp_path / "gone.png")


def test_the_compiled_stat_builds_without_a_warning_under_wall_wextra(tmp_path):
    import shutil
    import subprocess
    import sysconfig

    compiler = shutil.which((sysconfig.get_config_var("CC") or "cc").split()[0]) or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler")
    source = Path(gpuloader.__file__).parent / "ingest" / "_stat.c"
    command = [compiler, "-O2", "-Wall", "-Wextra", "-pthread", "-fPIC", f"-I{sysconfig.get_paths()['include']}",
               "-c", str(source), "-o", str(tmp_path / "stat.o")]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == "", result.stderr
