"""On-disk inputs whose files change under a running loader (issue 9, item 9).

A memory map over a file truncated under it kills the process with SIGBUS at
the next read past the new end, and a file rewritten in place is read through
the old header. The loader compares every file a batch reads from with the file
it opened and raises :class:`SourceChangedError` naming it. A file deleted or
replaced by a rename keeps serving the data that was opened.

The truncation cases run in a subprocess: had the check failed, the SIGBUS
would have killed pytest itself. They share one subprocess (one TensorFlow
import), each reporting its own outcome.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import id_data, sample_ids

from gpuloader import Loader
from gpuloader.sources import SourceChangedError
from gpuloader.sources import npy as sources_lib

ROWS, FEATURES = 1000, 5

TRUNCATION_SCRIPT = r'''
import json, os, sys, traceback
import numpy as np

from gpuloader import Loader
from gpuloader.sources import SourceChangedError

ROWS, FEATURES = 1000, 5
base = sys.argv[1]


def data():
    x = np.repeat(np.arange(ROWS, dtype=np.float32)[:, None], FEATURES, axis=1)
    return x, np.arange(ROWS, dtype=np.int64)


def save(name, array):
    path = os.path.join(base, name)
    np.save(path, array)
    return path


def cut(path, rows=10):
    """Truncate a .npy to its header and ``rows`` rows, in place (same inode)."""
    offset = np.load(path, mmap_mode="r").offset
    os.truncate(path, offset + rows * FEATURES * 4)


def getitem():
    x, y = data()
    path = save("x.npy", x)
    loader = Loader(path, y, batch_size=100, seed=1, device="disk", verbose=False)
    loader[0]
    cut(path)
    return path, lambda: loader[1]


def unshuffled():
    x, y = data()
    path = save("x.npy", x)
    loader = Loader(path, y, batch_size=100, shuffle=False, device="disk", verbose=False)
    cut(path)
    return path, lambda: loader[9]


def workers():
    x, y = data()
    path = save("x.npy", x)
    loader = Loader(path, y, batch_size=50, seed=2, device="disk", workers=3, max_queue_size=3, verbose=False)
    batches = loader.get_numpy_iterator()
    next(batches)
    cut(path)
    return path, lambda: list(batches)


def shard_list():
    x, y = data()
    paths = [save(f"s{i}.npy", part) for i, part in enumerate(np.split(x, 4))]
    loader = Loader(paths, y, batch_size=100, shuffle=False, device="disk", verbose=False)
    cut(paths[3])
    first = loader[0]  # rows 0-99, all in shard 0: its file is unchanged
    assert np.asarray(first[1]).tolist() == list(range(100)), "shard 0's batch changed"
    return paths[3], lambda: loader[9]


def shard_list_shuffled():
    x, y = data()
    paths = [save(f"s{i}.npy", part) for i, part in enumerate(np.split(x, 4))]
    loader = Loader(paths, y, batch_size=100, seed=4, device="disk", verbose=False)
    cut(paths[2])
    return paths[2], lambda: loader[0]


def worker_shards():
    x, y = data()
    path = save("x.npy", x)
    loader = Loader(path, y, batch_size=100, seed=3, num_shards=2, shard_index=1, device="disk", verbose=False)
    cut(path)
    return path, lambda: loader[2]


def rewritten_smaller():
    x, y = data()
    path = save("x.npy", x)
    loader = Loader(path, y, batch_size=100, seed=5, device="disk", verbose=False)
    np.save(path, np.zeros((50, 2)))  # np.save to the same path: same inode, other shape, dtype and size
    return path, lambda: loader[0]


def fit():
    import keras

    x, y = data()
    path = save("x.npy", x)
    loader = Loader(path, y % 2, batch_size=50, seed=6, device="disk", workers=2, verbose=False)

    class CutAfterTwoBatches(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                cut(path)

    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    return path, lambda: model.fit(loader, epochs=2, verbose=0, callbacks=[CutAfterTwoBatches()])


for name in sys.argv[2:]:
    print(json.dumps({"start": name}), flush=True)
    try:
        path, read = globals()[name]()  # reads before the change must be served
    except Exception as error:
        outcome = {"name": name, "outcome": f"setup raised {type(error).__name__}", "message": str(error)}
    else:
        try:
            read()
            outcome = {"name": name, "path": path, "outcome": "served"}
        except SourceChangedError as error:
            outcome = {"name": name, "path": path, "outcome": "SourceChangedError", "message": str(error)}
        except Exception as error:
            outcome = {"name": name, "outcome": type(error).__name__, "message": traceback.format_exc()[-2000:]}
    print(json.dumps(outcome), flush=True)
'''

TRUNCATIONS = [
    "getitem", "unshuffled", "workers", "shard_list", "shard_list_shuffled", "worker_shards",
    "rewritten_smaller", "fit",
]


@pytest.fixture(scope="module")
def truncation_outcomes(tmp_path_factory):
    """Run every truncation case in one subprocess; a case that crashed it is reported with the signal."""
    base = tmp_path_factory.mktemp("truncated")
    script = base / "truncate.py"
    script.write_text(TRUNCATION_SCRIPT)
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    outcomes = {}
    remaining = list(TRUNCATIONS)
    while remaining:  # after a crash, the cases left run in a fresh process
        case_dir = base / remaining[0]
        case_dir.mkdir()
        done = subprocess.run(
            [sys.executable, str(script), str(case_dir), *remaining],
            capture_output=True, text=True, timeout=300, env=env,
        )
        started = None
        for line in done.stdout.splitlines():
            if not line.startswith("{"):
                continue
            record = json.loads(line)
            if "start" in record:
                started = record["start"]
            else:
                outcomes[record["name"]] = record
                started = None
        if started is None:
            if done.returncode != 0:
                raise AssertionError(f"the truncation script failed:\n{done.stderr[-3000:]}")
            break
        crash = (
            signal.Signals(-done.returncode).name if done.returncode < 0 else f"exit status {done.returncode}"
        )
        outcomes[started] = {"name": started, "outcome": f"process killed ({crash})", "message": done.stderr[-2000:]}
        remaining = remaining[remaining.index(started) + 1 :]
    return outcomes


@pytest.mark.parametrize("case", TRUNCATIONS)
def test_a_file_truncated_or_rewritten_under_the_loader_raises_naming_it(truncation_outcomes, case):
    outcome = truncation_outcomes[case]
    assert outcome["outcome"] == "SourceChangedError", outcome
    message = outcome["message"]
    assert repr(outcome["path"]) in message  # the file, by name
    assert "rewritten in place (size " in message  # what changed
    assert "Build a new Loader" in message and "os.replace" in message  # the fix


@pytest.fixture
def x_file(tmp_path):
    x, y = id_data(ROWS, features=FEATURES)
    path = tmp_path / "x.npy"
    np.save(path, x)
    return x, y, path


def rewrite_later(path: Path, array: np.ndarray) -> None:
    """np.save to the same path (same inode), a clock tick after the loader opened it."""
    time.sleep(0.05)  # file times have the kernel clock's tick (up to 10 ms) as granularity
    np.save(path, array)


@pytest.mark.parametrize("workers", [1, 3])
def test_a_file_rewritten_in_place_at_the_same_size_raises_instead_of_serving_garbage(x_file, workers):
    _, y, path = x_file
    loader = Loader(path, y, batch_size=100, seed=0, device="disk", workers=workers, verbose=False)
    assert sample_ids(loader[0][0]) == np.asarray(loader[0][1]).tolist()
    other = np.arange(ROWS * FEATURES, dtype=np.int32).reshape(500, 2 * FEATURES)  # the same bytes in all
    rewrite_later(path, other)
    assert os.path.getsize(path) == np.load(path, mmap_mode="r").offset + ROWS * FEATURES * 4
    with pytest.raises(SourceChangedError, match=r"rewritten in place \(modified: mtime_ns"):
        loader[1]
    with pytest.raises(SourceChangedError, match=re.escape(repr(str(path)))):
        list(loader.get_numpy_iterator())


def test_a_larger_rewrite_of_a_shard_raises_naming_that_shard(tmp_path):
    x, y = id_data(ROWS, features=FEATURES)
    paths = [tmp_path / f"s{i}.npy" for i in range(4)]
    for path, part in zip(paths, np.split(x, 4)):
        np.save(path, part)
    loader = Loader(paths, y, batch_size=100, seed=1, device="disk", verbose=False)
    rewrite_later(paths[1], np.zeros((400, FEATURES), np.float64))
    with pytest.raises(SourceChangedError, match=rf"{re.escape(str(paths[1]))}.*size \d+ -> \d+ bytes"):
        loader[0]


def test_a_deleted_or_renamed_over_file_keeps_serving_the_data_it_opened(x_file, tmp_path):
    x, y, path = x_file
    loader = Loader(path, y, batch_size=100, seed=2, device="disk", verbose=False)
    before = [np.asarray(loader[i][0]).copy() for i in range(3)]
    replacement = tmp_path / "new.npy"
    np.save(replacement, np.zeros((10, 3), np.float64))
    os.replace(replacement, path)  # a rename over the old path: a new inode there
    assert [np.asarray(loader[i][0]).tolist() for i in range(3)] == [b.tolist() for b in before]
    os.remove(path)
    assert [np.asarray(loader[i][0]).tolist() for i in range(3)] == [b.tolist() for b in before]
    assert sorted(i for batch in Loader(x, y, batch_size=100, seed=2, verbose=False).get_numpy_iterator()
                  for i in sample_ids(batch[0])) == list(range(ROWS))


def test_a_shard_renamed_over_keeps_serving(tmp_path):
    x, y = id_data(400, features=FEATURES)
    paths = [tmp_path / f"s{i}.npy" for i in range(2)]
    for path, part in zip(paths, np.split(x, 2)):
        np.save(path, part)
    loader = Loader(paths, y, batch_size=100, seed=3, device="disk", verbose=False)
    replacement = tmp_path / "new.npy"
    np.save(replacement, np.full((3, FEATURES), -1.0))
    os.replace(replacement, paths[0])
    batches = list(loader.get_numpy_iterator())
    assert sorted(i for batch in batches for i in sample_ids(batch[0])) == list(range(400))


def rewrite_from_another_process(path: Path, array: np.ndarray) -> None:
    """np.save to the same path (same inode) by another process, a clock tick after the loader opened it."""
    time.sleep(0.05)
    staged = path.with_suffix(".new.npy")
    np.save(staged, array)
    code = "import shutil, sys; shutil.copyfile(sys.argv[1], sys.argv[2])"  # rewrites in place, like np.save
    subprocess.run([sys.executable, "-c", code, str(staged), str(path)], check=True)


def test_a_writable_map_rewritten_in_place_by_another_writer_raises_instead_of_serving_garbage(x_file):
    _, y, path = x_file
    mapped = np.load(path, mmap_mode="r+")  # the caller's writable map (issue 17)
    loader = Loader(mapped, y, batch_size=100, seed=0, device="disk", verbose=False)
    assert sample_ids(loader[0][0]) == np.asarray(loader[0][1]).tolist()
    other = np.arange(ROWS * FEATURES, dtype=np.int32).reshape(500, 2 * FEATURES)  # the same bytes in all
    inode = os.stat(path).st_ino
    rewrite_from_another_process(path, other)
    assert os.stat(path).st_ino == inode and os.path.getsize(path) == mapped.offset + mapped.nbytes
    changed = r"rewritten in place \(modified: mtime_ns.*opened writable \(mode 'r\+'\)"
    with pytest.raises(SourceChangedError, match=changed):
        loader[1]


def test_writes_through_a_writable_map_count_as_changes_and_an_array_view_of_it_serves_them(tmp_path):
    """The rule for writable maps: the loader cannot tell who wrote, so any write after it opened the file
    is a change; data updated in place under a running loader is passed as an array in memory."""
    path = tmp_path / "w.npy"
    mapped = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(100, 4))
    mapped[:] = 1.0
    mapped.flush()  # saved: the next write through the map moves the modification time
    watched = Loader(mapped, batch_size=10, shuffle=False, device="disk", verbose=False)
    in_memory = Loader(np.asarray(mapped), batch_size=10, shuffle=False, device="host", verbose=False)
    assert np.asarray(watched[0][0]).tolist() == [[1.0] * 4] * 10
    time.sleep(0.05)
    mapped[:10] = 7.0  # the caller updates its data through its own writable map
    with pytest.raises(SourceChangedError, match=r"writes made through it after the loader was built count too.*"
                       r"np\.asarray\(mapped\)"):
        watched[0]
    assert np.asarray(in_memory[0][0]).tolist() == [[7.0] * 4] * 10


def test_a_map_whose_file_was_already_truncated_is_refused_at_construction(x_file):
    _, _, path = x_file
    mapped = np.load(path, mmap_mode="r")
    os.truncate(path, mapped.offset + 40)
    with pytest.raises(SourceChangedError, match=r"shorter than its memory map.*SIGBUS"):
        Loader(mapped, device="disk", verbose=False)


def test_each_batch_stats_only_the_shards_it_reads(tmp_path, monkeypatch):
    x, _ = id_data(1000, features=2)
    paths = [tmp_path / f"s{i}.npy" for i in range(10)]
    for path, part in zip(paths, np.split(x, 10)):
        np.save(path, part)
    loader = Loader(paths, batch_size=50, shuffle=False, device="disk", verbose=False)
    shard_names = {str(path) for path in paths}
    statted: list[str] = []
    real_stat = os.stat

    def recording_stat(path, *args, **kwargs):
        if os.fspath(path) in shard_names:
            statted.append(os.fspath(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(sources_lib.os, "stat", recording_stat)
    loader[3]  # rows 150-199: shard 1 only
    assert statted == [str(paths[1])]
    statted.clear()
    loader[19]  # rows 950-999: shard 9 only
    assert statted == [str(paths[9])]
