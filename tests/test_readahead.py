"""The disk tier's read-ahead: which pages are asked for, in which order, and that nothing else changes.

Most tests record every request (``readahead.willneed``) and treat the files
as not cached (``readahead.all_cached`` -> False), since the files a test
writes are in the page cache already. Rows of 4096 bytes in a headerless
file (a ``np.memmap`` at offset 0) make one page one row, so a request's bytes
name its rows exactly.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np
import pytest
from conftest import id_data, sample_ids

from gpuloader import Loader, permutation, placement, readahead
from gpuloader.sources import SourceChangedError, open_source

PAGE = 4096
ROWS, BATCH = 640, 32  # 20 batches
STEPS = ROWS // BATCH


@pytest.fixture
def requests(monkeypatch):
    """Every request as ``(path, first row, end row)`` of one-page rows; the real call is made too."""
    made: list[tuple[str, int, int]] = []
    lock = threading.Lock()
    real = readahead.willneed

    def record(file, start, length):
        with lock:
            made.append((os.path.basename(file.path), start // PAGE, -(-(start + length) // PAGE)))
        real(file, start, length)

    monkeypatch.setattr(readahead, "willneed", record)
    monkeypatch.setattr(readahead, "all_cached", lambda file: False)
    return made


@pytest.fixture
def page_rows(tmp_path):
    """``(x memmap of ROWS rows of one page each, whose values are the row's id; y in RAM)``."""
    x, y = id_data(ROWS, features=PAGE // 4)
    path = tmp_path / "x.raw"
    x.tofile(path)
    return np.memmap(path, dtype=np.float32, mode="r", shape=x.shape), y


def no_sweep(monkeypatch):
    monkeypatch.setattr(readahead, "SWEEP_SHARE", 0.0)


def long_sweep(monkeypatch):
    """A sweep of one page a request, each taking 2 ms (about 1.3 s in all): its thread is still at work when a
    test looks for it, however fast the batches are read."""
    monkeypatch.setattr(readahead, "SWEEP_CHUNK_BYTES", PAGE)
    recorded = readahead.willneed

    def slow(file, start, length):
        time.sleep(0.002)
        recorded(file, start, length)

    monkeypatch.setattr(readahead, "willneed", slow)


def readahead_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "gpuloader-readahead"]


def batch_of(order: np.ndarray) -> dict[int, int]:
    """Row -> the position of its batch in ``order``."""
    return {int(row): position // BATCH for position, row in enumerate(order)}


def wait_until(condition, limit_s: float = 10.0) -> None:
    start = time.monotonic()
    while not condition() and time.monotonic() - start < limit_s:
        time.sleep(0.005)


def test_batches_are_byte_equal_with_and_without_read_ahead(tmp_path, monkeypatch, requests):
    x, y = id_data(1000, features=700)  # rows of 2800 bytes: pages shared between rows
    x[:, 1:] = np.random.default_rng(0).random((1000, 699), dtype=np.float32)
    shards = [tmp_path / f"x{i}.npy" for i in range(3)]
    for path, part in zip(shards, np.array_split(x, 3)):
        np.save(path, part)
    np.save(tmp_path / "y.npy", y)

    def epochs(**kwargs):
        loader = Loader(shards, tmp_path / "y.npy", batch_size=48, seed=3, device="disk", verbose=False, **kwargs)
        out = []
        for _ in range(2):
            batches = []
            for batch in loader.get_numpy_iterator():
                batches.append([np.asarray(part).tobytes() for part in batch])
                wait_until(lambda: requests, limit_s=0.5)  # the read-ahead runs while batches are read
            out.append(batches)
            loader.on_epoch_end()
        return out

    for kwargs in ({}, {"workers": 3}, {"num_shards": 2, "shard_index": 1}):
        with_ahead = epochs(**kwargs)
        assert requests, "the read-ahead ran"
        with monkeypatch.context() as off:
            off.setattr(readahead, "for_pass", lambda *args, **kw: None)
            without = epochs(**kwargs)
        assert with_ahead == without, kwargs
        requests.clear()


def test_the_requested_pages_follow_the_epochs_order(page_rows, monkeypatch, requests):
    no_sweep(monkeypatch)
    x, y = page_rows
    loader = Loader(x, y, batch_size=BATCH, seed=11, device="disk", verbose=False)
    loader.set_epoch(4)
    order = np.asarray(permutation(np, ROWS, 11, 4))
    batches = batch_of(order)
    iterator = loader.get_numpy_iterator()
    for position in range(STEPS):  # wait for each batch's requests to reach the window's end
        assert sample_ids(next(iterator)[0]) == order[position * BATCH : (position + 1) * BATCH].tolist()
        last = min(position + readahead.WINDOW_BATCHES, STEPS - 1)
        wait_until(lambda last=last: {batches[r] for _, a, b in requests for r in range(a, b)} >= set(range(last + 1)))
    iterator.close()
    rows = [row for _, first, end in requests for row in range(first, end)]
    assert [batches[row] for row in rows] == sorted(batches[row] for row in rows), "batch by batch, in order"
    expected = [sorted(order[p * BATCH : (p + 1) * BATCH].tolist()) for p in range(STEPS)]
    assert rows == [row for batch in expected for row in batch], "each batch's rows, ascending, each once"


def test_workers_share_one_read_ahead_that_asks_for_each_page_once(page_rows, monkeypatch, requests):
    no_sweep(monkeypatch)
    x, y = page_rows
    loader = Loader(x, y, batch_size=BATCH, seed=6, device="disk", verbose=False, workers=4, max_queue_size=6)
    most_threads = 0
    for _ in loader.get_numpy_iterator():
        most_threads = max(most_threads, len(readahead_threads()))
        time.sleep(0.01)  # the workers run ahead
    assert most_threads == 1, "one read-ahead per pass, whatever the workers"
    rows = sorted(row for _, first, end in requests for row in range(first, end))
    assert rows == list(range(ROWS)), "every batch's pages asked for once: no worker asks again"


def test_the_window_is_bounded_by_the_batches_started(page_rows, monkeypatch, requests):
    no_sweep(monkeypatch)
    monkeypatch.setattr(readahead, "WINDOW_BATCHES", 3)
    x, y = page_rows
    loader = Loader(x, y, batch_size=BATCH, seed=2, device="disk", verbose=False)
    batches = batch_of(np.asarray(permutation(np, ROWS, 2, 0)))
    iterator = loader.get_numpy_iterator()
    for position in range(6):
        next(iterator)
        wait_until(lambda end=position + 3: max((batches[a] for _, a, _ in requests), default=-1) >= end, limit_s=2.0)
        time.sleep(0.05)  # and no further
        assert max((batches[a] for _, a, _ in requests), default=-1) == position + 3, f"holding batch {position}"
    iterator.close()


def test_the_window_is_bounded_in_bytes_too(page_rows, monkeypatch, requests):
    no_sweep(monkeypatch)
    monkeypatch.setattr(readahead, "WINDOW_BYTES", 2 * BATCH * PAGE)
    ahead = readahead.for_pass([open_source(page_rows[0], "x")], None, BATCH, STEPS)
    assert ahead.window == 2
    big = readahead.for_pass([open_source(page_rows[0], "x")], None, 10 * BATCH, 2)
    assert big.window == 1, "never below one batch"


def test_an_abandoned_iteration_leaves_no_thread(page_rows, requests, monkeypatch):
    x, y = page_rows
    loader = Loader(x, y, batch_size=BATCH, seed=0, device="disk", verbose=False, workers=2)
    long_sweep(monkeypatch)  # the thread is busy when closed
    iterator = loader.get_numpy_iterator()
    next(iterator)
    next(iterator)
    assert readahead_threads()
    iterator.close()
    assert not readahead_threads(), "closing the iteration joins the thread"

    iterator = loader.get_numpy_iterator()
    next(iterator)
    del iterator  # dropped: its finaliser closes it
    assert not readahead_threads()


def test_the_thread_ends_while_a_reference_cycle_keeps_the_abandoned_iteration(page_rows, requests, monkeypatch):
    import gc

    x, y = page_rows
    loader = Loader(x, y, batch_size=BATCH, seed=0, device="disk", verbose=False)
    long_sweep(monkeypatch)
    gc.disable()
    try:
        iterator = loader.get_numpy_iterator()
        next(iterator)
        cycle = [iterator]
        cycle.append(cycle)
        del iterator
        assert readahead_threads()
        start = time.monotonic()
        wait_until(lambda: not readahead_threads(), limit_s=readahead.IDLE_S + 5.0)
        assert not readahead_threads()
        assert time.monotonic() - start < readahead.IDLE_S + 2.0
        count = len(requests)
        time.sleep(0.1)
        assert len(requests) == count, "nothing is requested after the thread ended"
    finally:
        gc.enable()
        del cycle


def test_nothing_is_requested_for_data_in_ram(tmp_path, requests):
    x, y = id_data(500, features=64)
    np.save(tmp_path / "x.npy", x)
    in_ram = Loader(x, y, batch_size=50, seed=0, verbose=False)
    read_into_ram = Loader(tmp_path / "x.npy", y, batch_size=50, seed=0, device="host", verbose=False)
    for loader in (in_ram, read_into_ram):
        assert loader.pipeline.readahead(0, True, 0, len(loader)) is None
        list(loader.get_numpy_iterator())
    assert requests == [] and not readahead_threads()


def test_nothing_is_requested_when_every_page_is_cached(tmp_path):
    x, _ = id_data(2000, features=512)
    path = tmp_path / "x.npy"
    np.save(path, x)
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())  # clean pages can be evicted
    mapped = np.load(path, mmap_mode="r")
    np.asarray(mapped).sum()  # every page read
    assert readahead.for_pass([open_source(mapped, "x")], None, 100, 20) is None
    del mapped  # pages a process maps are not evicted
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    fresh = np.load(path, mmap_mode="r")
    files = readahead._Leaf(open_source(fresh, "x")).files
    if readahead.all_cached(files[0]):
        pytest.skip("this file system keeps the pages cached (tmpfs): nothing to evict")
    ahead = readahead.for_pass([open_source(fresh, "x")], None, 100, 20)
    assert ahead is not None and ahead.sweeps


def test_files_that_fit_are_swept_front_to_back_after_the_first_window(tmp_path, monkeypatch, requests):
    x, y = id_data(ROWS, features=PAGE // 4)
    np.save(tmp_path / "x.npy", x)
    monkeypatch.setattr(readahead, "SWEEP_CHUNK_BYTES", 16 * PAGE)
    monkeypatch.setattr(placement, "available_host_memory", lambda: 1 << 40)
    loader = Loader(tmp_path / "x.npy", y, batch_size=BATCH, seed=0, device="disk", verbose=False)  # y in RAM
    iterator = loader.get_numpy_iterator()
    next(iterator)
    wait_until(lambda: not readahead_threads())  # all requested up to the window past batch 0, then idle
    iterator.close()
    x_pages = -(-(ROWS * PAGE + 128) // PAGE)
    sweep = [request for request in requests if request[1] % 16 == 0 and request[2] - request[1] in (16, x_pages % 16)]
    expected_x = [("x.npy", start, min(start + 16, x_pages)) for start in range(0, x_pages, 16)]
    assert sweep == expected_x, "x.npy read front to back in chunks"
    assert requests.index(sweep[0]) > 0, "the first batches' pages are asked for before the sweep"
    after_sweep = requests[requests.index(sweep[-1]) + 1 :]
    assert after_sweep == [], "the window's batch after the sweep asks for nothing: its pages were swept"


def test_the_first_window_goes_first_then_the_sweep_smallest_file_first(tmp_path, monkeypatch):
    x, y = id_data(ROWS, features=PAGE // 4)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    monkeypatch.setattr(readahead, "all_cached", lambda file: False)
    monkeypatch.setattr(readahead, "SWEEP_CHUNK_BYTES", 64 * PAGE)
    monkeypatch.setattr(placement, "available_host_memory", lambda: 1 << 40)
    leaves = [open_source(tmp_path / name, name) for name in ("x.npy", "y.npy")]
    ahead = readahead.for_pass(leaves, None, BATCH, STEPS)
    window = ahead.window
    ahead._started = 0  # a worker started batch 0 (no thread: the jobs are taken here, in order)
    jobs = []
    while (job := ahead._next_job()) is not None:
        kind, what = job
        if kind == "plan":  # what the thread does with this job
            ahead._sweep = readahead.sweep_jobs(ahead._plan())
        jobs.append((kind, what) if kind != "sweep" else (kind, os.path.basename(what[0].path), what[1][0] // PAGE))
    x_pages = -(-(ROWS * PAGE + 128) // PAGE)
    assert jobs == [
        *(("batch", position) for position in range(window)),
        ("plan", None),
        ("sweep", "y.npy", 0),
        *(("sweep", "x.npy", first) for first in range(0, x_pages, 64)),
    ]  # then nothing: the window past batch 0 would ask for pages the sweep asked for


def test_files_larger_than_the_page_cache_are_not_swept(tmp_path, monkeypatch, requests):
    x, y = id_data(ROWS, features=PAGE // 4)
    np.save(tmp_path / "x.npy", x)
    monkeypatch.setattr(placement, "available_host_memory", lambda: ROWS * PAGE)  # below twice the files' bytes
    loader = Loader(tmp_path / "x.npy", y, batch_size=BATCH, seed=0, device="disk", verbose=False)
    ahead = loader.pipeline.readahead(0, True, 0, len(loader))
    assert ahead is not None and not ahead.sweeps
    ahead.close()


def test_a_workers_shard_sweeps_only_its_own_rows_pages(tmp_path, monkeypatch, requests):
    x, y = id_data(ROWS, features=PAGE // 4)
    x.tofile(tmp_path / "x.raw")  # headerless: page p is row p
    mapped = np.memmap(tmp_path / "x.raw", dtype=np.float32, mode="r", shape=x.shape)
    monkeypatch.setattr(placement, "available_host_memory", lambda: 1 << 40)
    shard = Loader(mapped, y, batch_size=BATCH, seed=0, device="disk", verbose=False, num_shards=4, shard_index=1)
    ahead = shard.pipeline.readahead(0, True, 0, len(shard))
    assert ahead is not None and ahead.sweeps
    swept = sweep_pages(ahead)
    own = {int(row) for xb, _ in shard.get_numpy_iterator() for row in sample_ids(xb)}
    assert swept == sorted(own), "a quarter of the rows: only their pages, in file order, each once"
    ahead.close()


def sweep_pages(ahead) -> list[int]:
    """The pages the sweep of ``ahead`` requests, in request order (its plan, as the thread makes it)."""
    pages = []
    for file, starts, ends in readahead.sweep_jobs(ahead._plan()):
        assert file.row0 == 0 and file.row_bytes == PAGE
        pages.extend(page for start, end in zip(starts.tolist(), ends.tolist()) for page in range(start // PAGE,
                                                                                                  end // PAGE))
    return pages


@pytest.mark.parametrize("first, end", [(12, STEPS), (0, 8), (5, 9)])
def test_a_pass_over_part_of_an_epoch_sweeps_only_the_pages_of_its_batches(page_rows, monkeypatch, first, end):
    monkeypatch.setattr(readahead, "all_cached", lambda file: False)
    monkeypatch.setattr(placement, "available_host_memory", lambda: 1 << 40)
    order = np.asarray(permutation(np, ROWS, 7, 3))
    ahead = readahead.for_pass([open_source(page_rows[0], "x")], order, BATCH, end, first)
    assert ahead.sweeps
    assert sweep_pages(ahead) == sorted(order[first * BATCH : end * BATCH].tolist()), (
        "the rows of batches first .. end - 1, ascending, each page once; no page of another batch"
    )


def test_a_pass_over_the_whole_epoch_sweeps_the_files_front_to_back(page_rows, monkeypatch):
    monkeypatch.setattr(readahead, "all_cached", lambda file: False)
    monkeypatch.setattr(placement, "available_host_memory", lambda: 1 << 40)
    monkeypatch.setattr(readahead, "SWEEP_CHUNK_BYTES", 3 * PAGE)
    order = np.asarray(permutation(np, ROWS, 7, 3))
    ahead = readahead.for_pass([open_source(page_rows[0], "x")], order, BATCH, STEPS)
    jobs = [(a.tolist(), b.tolist()) for _, a, b in readahead.sweep_jobs(ahead._plan())]
    assert jobs == [([start * PAGE], [min(start + 3, ROWS) * PAGE]) for start in range(0, ROWS, 3)]


def test_a_resumed_pass_sweeps_after_its_own_first_window(page_rows, monkeypatch, requests):
    monkeypatch.setattr(readahead, "WINDOW_BATCHES", 2)
    monkeypatch.setattr(placement, "available_host_memory", lambda: 1 << 40)
    x, y = page_rows
    loader = Loader(x, y, batch_size=BATCH, seed=4, device="disk", verbose=False)
    loader.set_state({**loader.get_state(), "epoch": 1, "position": 12})
    order = np.asarray(permutation(np, ROWS, 4, 1))
    iterator = loader.get_numpy_iterator()
    assert sample_ids(next(iterator)[0]) == order[12 * BATCH : 13 * BATCH].tolist()
    wait_until(lambda: not readahead_threads())  # the first window, the sweep, then nothing left
    iterator.close()
    rows = [row for _, first, end in requests for row in range(first, end)]
    window = [sorted(order[p * BATCH : (p + 1) * BATCH].tolist()) for p in (12, 13)]
    assert rows[: 2 * BATCH] == window[0] + window[1], "batches 12 and 13 first, before the sweep"
    assert rows[2 * BATCH :] == sorted(order[12 * BATCH :].tolist()), "then the rest of the epoch's rows only"


@pytest.fixture
def advice(monkeypatch):
    """Every change of a map's read-around as ``(path, advice)``; the real call is made too."""
    made: list[tuple[str, int]] = []
    real = readahead.advise

    def record(file, value):
        made.append((os.path.basename(file.path), value))
        real(file, value)

    monkeypatch.setattr(readahead, "advise", record)
    return made


def test_read_around_is_off_only_while_a_partial_pass_sweeps(tmp_path, monkeypatch, advice):
    import mmap

    monkeypatch.setattr(readahead, "all_cached", lambda file: False)
    monkeypatch.setattr(placement, "available_host_memory", lambda: 1 << 40)
    x, y = id_data(ROWS, features=PAGE // 4)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    loader = Loader(tmp_path / "x.npy", tmp_path / "y.npy", batch_size=BATCH, seed=0, device="disk", verbose=False)
    whole = loader.pipeline.readahead(0, True, 0, STEPS)
    whole.close()
    assert advice == [], "a whole epoch keeps the read-around: every page is needed"
    rest = loader.pipeline.readahead(0, True, 12, STEPS)
    assert sorted(advice) == [("x.npy", mmap.MADV_RANDOM), ("y.npy", mmap.MADV_RANDOM)]
    rest.close()
    assert sorted(advice[2:]) == [("x.npy", mmap.MADV_NORMAL), ("y.npy", mmap.MADV_NORMAL)], "back on close"
    rest.close()
    assert len(advice) == 4, "closing twice advises once"

    advice.clear()  # files larger than memory: the layout turned the read-around off for good
    monkeypatch.setattr(placement, "available_host_memory", lambda: ROWS * PAGE // 2)
    big = Loader(tmp_path / "x.npy", y, batch_size=BATCH, seed=0, device="disk", verbose=False)
    partial = big.pipeline.readahead(0, True, 18, STEPS)  # 2 batches: their pages fit, so they sweep
    assert partial.sweeps
    partial.close()
    assert advice == [], "a map the layout made random stays random"


def test_sweep_jobs_split_long_runs_and_group_short_ones_in_file_order(page_rows):
    file = readahead._Leaf(open_source(page_rows[0], "x")).files[0]
    chunk = 4 * PAGE
    runs = [(file, np.array([0, 12, 14, 16, 30]) * PAGE, np.array([10, 13, 15, 17, 31]) * PAGE)]
    with pytest.MonkeyPatch().context() as patch:
        patch.setattr(readahead, "SWEEP_CHUNK_BYTES", chunk)
        jobs = [(a // PAGE).tolist() + (b // PAGE).tolist() for _, a, b in readahead.sweep_jobs(runs)]
    # starts then ends of each job: 0-4, 4-8, then 8-10 with the next short runs until a chunk is held
    assert jobs == [[0, 4], [4, 8], [8, 12, 14, 10, 13, 15], [16, 30, 17, 31]]


def test_a_file_changed_mid_epoch_still_raises(tmp_path, monkeypatch, requests):
    no_sweep(monkeypatch)
    monkeypatch.setattr(readahead, "WINDOW_BATCHES", 1)  # every batch started asks for one more
    x, y = id_data(ROWS, features=256)
    path = tmp_path / "x.npy"
    np.save(path, x)
    loader = Loader(path, y, batch_size=BATCH, seed=0, device="disk", verbose=False)
    iterator = loader.get_numpy_iterator()
    next(iterator)
    wait_until(lambda: len(requests) > 0)
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) // 2)  # reading the lost half through the map: SIGBUS
    with pytest.raises(SourceChangedError, match=r"x\.npy"):
        next(iterator)
    assert not readahead_threads()
    # Asking for pages past the new end never reads them (a read there would be SIGBUS).
    ahead = readahead.for_pass(loader.pipeline.store.leaves, None, BATCH, STEPS)
    count = len(requests)
    ahead.advance(STEPS - 1)  # the input order: the last batches lie in the lost half
    wait_until(lambda: len(requests) > count + 1, limit_s=5.0)
    ahead.close()
    assert len(requests) > count + 1


class CappedKernel:
    """A page cache whose kernel reads at most ``cap`` bytes of one request and drops the rest, as Linux does."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.cached: set[int] = set()
        self.requests: list[tuple[int, int]] = []

    def willneed(self, file, start, length):
        self.requests.append((start, length))
        self.cached.update(range(start // PAGE, -(-(start + min(length, self.cap)) // PAGE)))

    def cached_prefix(self, file, start, length):
        pages = -(-length // PAGE)
        read = next((k for k in range(pages) if start // PAGE + k not in self.cached), pages)
        return min(length, read * PAGE)


def big_file(tmp_path, pages: int):
    path = tmp_path / "big.raw"
    np.zeros(pages * PAGE, dtype=np.uint8).tofile(path)
    return readahead._mapped_file(np.memmap(path, dtype=np.uint8, mode="r", shape=(pages, PAGE)))


def test_a_request_longer_than_the_kernel_reads_is_asked_for_again_from_where_it_stopped(tmp_path, monkeypatch):
    file = big_file(tmp_path, 512)  # 2 MB
    cap = 48 * PAGE  # 192 KB: the kernel reads this much of any one request
    kernel = CappedKernel(cap)
    monkeypatch.setattr(readahead, "willneed", kernel.willneed)
    monkeypatch.setattr(readahead, "cached_prefix", kernel.cached_prefix)
    readahead.request(file, 0, 300 * PAGE)
    assert kernel.cached == set(range(300)), "every page asked for is read, not only the first request's"
    assert file.limit == cap
    readahead.request(file, 300 * PAGE, 512 * PAGE)
    assert kernel.cached == set(range(512))
    assert all(length <= cap for _, length in kernel.requests[1:]), "once the size is known, requests fit it"


def test_a_sweep_on_a_disk_that_reads_less_per_request_still_reads_every_page(page_rows, monkeypatch):
    """A whole epoch's sweep through the thread, on a kernel reading 40 KB per request: all 640 pages come in."""
    kernel = CappedKernel(10 * PAGE)
    monkeypatch.setattr(readahead, "willneed", kernel.willneed)
    monkeypatch.setattr(readahead, "cached_prefix", kernel.cached_prefix)
    monkeypatch.setattr(readahead, "UNCHECKED_BYTES", 4 * PAGE)
    monkeypatch.setattr(readahead, "SWEEP_CHUNK_BYTES", 64 * PAGE)
    monkeypatch.setattr(readahead, "all_cached", lambda file: False)
    monkeypatch.setattr(placement, "available_host_memory", lambda: 1 << 40)
    ahead = readahead.for_pass([open_source(page_rows[0], "x")], None, BATCH, STEPS)
    assert ahead.sweeps
    ahead.advance(0)
    wait_until(lambda: not readahead_threads())
    ahead.close()
    assert kernel.cached == set(range(ROWS))


def test_the_check_waits_until_the_kernel_has_added_the_pages_of_a_request(tmp_path, monkeypatch):
    """The pages of a request appear over a few ms after the call: the first reading of the cache is too low."""
    file = big_file(tmp_path, 64)
    readings = iter([4 * PAGE, 16 * PAGE, 32 * PAGE, 32 * PAGE, 64 * PAGE])
    monkeypatch.setattr(readahead, "cached_prefix", lambda file, start, length: next(readings))
    assert readahead.settled_prefix(file, 0, 64 * PAGE) == 32 * PAGE, "read until two readings agree"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the page cache is read with Linux's mincore")
def test_a_whole_file_request_reads_every_page_on_this_machines_disk(tmp_path):
    """On the real kernel: 24 MB asked for in one request (Linux reads at most the device's limit of it, 8 MB
    on the machine measured) are all cached afterwards."""
    path = tmp_path / "cold.raw"
    size = 24 << 20
    with open(path, "wb") as handle:
        handle.write(np.random.default_rng(0).bytes(size))
        handle.flush()
        os.fsync(handle.fileno())
    mapped = np.memmap(path, dtype=np.uint8, mode="r", shape=(size // PAGE, PAGE))
    file = readahead._mapped_file(mapped)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    if readahead.cached_prefix(file, 0, size) == size:
        pytest.skip("this filesystem keeps the file's pages cached (tmpfs?): nothing to read")
    readahead.request(file, 0, size)
    wait_until(lambda: readahead.cached_prefix(file, 0, size) == size)
    assert readahead.cached_prefix(file, 0, size) == size


def test_once_the_sweep_has_asked_for_every_page_the_window_stops(page_rows, monkeypatch, requests):
    """A window past a finished sweep would only sort its batches' rows to ask for nothing (0.1 s of CPU an epoch)."""
    monkeypatch.setattr(placement, "available_host_memory", lambda: 1 << 40)
    monkeypatch.setattr(readahead, "WINDOW_BATCHES", 2)
    order = np.asarray(permutation(np, ROWS, 7, 3))
    ahead = readahead.for_pass([open_source(page_rows[0], "x")], order, BATCH, STEPS)
    assert ahead.sweeps
    ranges, runs = [], []
    real, real_run = readahead._Leaf.ranges, readahead.PassReadahead._run
    monkeypatch.setattr(readahead._Leaf, "ranges", lambda leaf, rows: ranges.append(1) or real(leaf, rows))
    monkeypatch.setattr(readahead.PassReadahead, "_run", lambda ahead: runs.append(1) or real_run(ahead))
    ahead.advance(0)
    wait_until(lambda: not readahead_threads())  # the first window, then the sweep, then nothing left
    assert len(ranges) == 2, "the first window's two batches"
    for position in range(1, STEPS):
        ahead.advance(position)
    wait_until(lambda: not readahead_threads())
    ahead.close()
    assert len(ranges) == 2, "no batch's pages were looked up after the sweep asked for all of them"
    assert len(runs) == 1, "and no thread was started again for the later batches (one per batch before)"
    assert sorted(row for _, first, end in requests for row in range(first, end)) == sorted(
        [*order[: 2 * BATCH].tolist(), *range(ROWS)]
    ), "every page asked for: the first window's, then the whole file"
