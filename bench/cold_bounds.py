"""Bounds of a cold epoch on this machine's storage: how fast can the file's pages come in at all?

Usage: ``python bench/cold_bounds.py [--dir DIR] [--methods a,b,...] [--rounds N]``

Reads ``x.npy`` of ``bench/cold.py``'s data (written by this script if missing, kept) in several ways,
each in a process of its own with the file's pages evicted before (``pagecache.evict``), and reports the
seconds until every page of the file is in the page cache (``mincore`` polled every 5 ms after the
requests were made, at most :data:`WAIT_S`), the bytes then cached and the throughput (cached bytes /
seconds). No TensorFlow, no loader.

One request over the whole file reads only 8 MB on this kernel (6.18): ``MADV_WILLNEED`` and
``POSIX_FADV_WILLNEED`` go through ``force_page_cache_ra``, which caps a request at the larger of the
device's read-ahead (``read_ahead_kb``, 8 MB on this VM's virtio disk) and its largest I/O
(``max_sectors_kb``); ``willneed``, ``fadvise`` and ``madv64`` show it. The methods:

- ``willneed``: one ``madvise(MADV_WILLNEED)`` over the whole mapping;
- ``fadvise``: one ``posix_fadvise(POSIX_FADV_WILLNEED)`` over the whole file;
- ``madv8`` / ``madv64``: ``MADV_WILLNEED`` in 8 MB / 64 MB requests from one thread, in file order
  (what the sweep of :mod:`gpuloader.readahead` does);
- ``madv8x4``: 4 threads, each ``MADV_WILLNEED`` over its quarter in 8 MB requests;
- ``read8``: ``readinto`` of 8 MB buffers from one thread (the kernel's sequential read-ahead);
- ``pread8x4``: 4 threads, each ``os.preadv`` of 8 MB buffers over its quarter;
- ``seedfull`` / ``seedpart``: the seed's access without TensorFlow: ``x[rows]`` on ``np.load(mmap_mode="r")``
  for every batch of a shuffled epoch / its first 40% (the kernel's read-around on faults);
- ``exact40`` / ``exact40x4``: ``MADV_WILLNEED`` over the exact pages of the first 40% of a shuffled epoch's
  rows, sorted and coalesced, from one thread / 4 threads (each a quarter of the runs), then those rows read
  batch by batch (what a read-ahead that knew the consumer stops at 40% could do at best).

The load average is printed before each method.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
METHODS = (
    "willneed", "fadvise", "madv8", "madv64", "madv8x4", "read8", "pread8x4", "seedfull", "seedpart", "exact40",
    "exact40x4",
)
MB = 1 << 20
WAIT_S = 5.0  # a request that has not brought the whole file in by then never will (see the module docstring)


def _all_resident(libc: ctypes.CDLL, base: int, length: int, vector: Any) -> bool:
    import numpy as np

    libc.mincore(base, length, vector.ctypes.data)
    return bool(np.all(vector & 1))


def run_method(method: str, path: Path) -> dict[str, float]:
    import numpy as np
    import pagecache
    import synthetic

    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    size = path.stat().st_size
    pagecache.evict([path, path.with_name("y.npy")])
    fd = os.open(path, os.O_RDONLY)
    mapping = mmap.mmap(fd, size, prot=mmap.PROT_READ)
    pin = np.frombuffer(mapping, dtype=np.uint8)
    base = pin.ctypes.data
    vector = np.zeros(-(-size // mmap.PAGESIZE), dtype=np.uint8)
    read_before = pagecache.storage_read_bytes()
    start = time.perf_counter()

    def madv_range(first: int, end: int, chunk: int) -> None:
        for offset in range(first, end, chunk):
            libc.madvise(base + offset, min(chunk, end - offset), mmap.MADV_WILLNEED)

    def in_threads(target, parts: int = 4) -> None:
        bounds = [size * k // parts // mmap.PAGESIZE * mmap.PAGESIZE for k in range(parts)] + [size]
        threads = [threading.Thread(target=target, args=(bounds[k], bounds[k + 1])) for k in range(parts)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def pread_range(first: int, end: int) -> None:
        buffer = bytearray(8 * MB)
        for offset in range(first, end, 8 * MB):
            os.preadv(fd, [memoryview(buffer)[: min(8 * MB, end - offset)]], offset)

    wait = True
    if method == "willneed":
        libc.madvise(base, size, mmap.MADV_WILLNEED)
    elif method == "fadvise":
        os.posix_fadvise(fd, 0, size, os.POSIX_FADV_WILLNEED)
    elif method == "madv8":
        madv_range(0, size, 8 * MB)
    elif method == "madv64":
        madv_range(0, size, 64 * MB)
    elif method == "madv8x4":
        in_threads(lambda a, b: madv_range(a, b, 8 * MB))
    elif method == "read8":
        with open(path, "rb", buffering=0) as file:
            buffer = bytearray(8 * MB)
            while file.readinto(buffer):
                pass
    elif method == "pread8x4":
        in_threads(pread_range)
    elif method in ("seedfull", "seedpart", "exact40", "exact40x4"):
        x = np.load(path, mmap_mode="r")
        batch = synthetic.BATCH_SIZE
        order = np.random.default_rng(1).permutation(len(x))
        steps = -(-len(x) // batch)
        steps = steps if method == "seedfull" else round(0.4 * steps)
        if method.startswith("exact40"):
            from gpuloader.sources.npy import page_runs

            rows = np.sort(order[: steps * batch])
            xbase = np.frombuffer(x._mmap, dtype=np.uint8).ctypes.data
            firsts, ends = page_runs(x.ctypes.data - xbase + rows * x.strides[0], x.strides[0])
            parts = 4 if method == "exact40x4" else 1
            cuts = [len(firsts) * k // parts for k in range(parts + 1)]

            def request(k: int) -> None:
                for a, b in zip(firsts[cuts[k]:cuts[k + 1]].tolist(), ends[cuts[k]:cuts[k + 1]].tolist()):
                    libc.madvise(xbase + a, b - a, mmap.MADV_WILLNEED)

            threads = [threading.Thread(target=request, args=(k,)) for k in range(parts)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            for i in range(steps):
                x[np.sort(order[i * batch:(i + 1) * batch])]
        else:
            for i in range(steps):
                x[order[i * batch:(i + 1) * batch]]
        wait = False
    requested = time.perf_counter() - start
    if wait:
        while not _all_resident(libc, base, size, vector) and time.perf_counter() - start < WAIT_S:
            time.sleep(0.005)
    seconds = time.perf_counter() - start
    read = pagecache.storage_read_bytes() - read_before
    libc.mincore(base, size, vector.ctypes.data)
    resident = int(np.count_nonzero(vector & 1)) * mmap.PAGESIZE
    del pin
    mapping.close()
    os.close(fd)
    return {
        "seconds": seconds, "requested_s": requested, "read_mb": read / 1e6, "resident_mb": resident / 1e6,
        "mb_per_s": resident / 1e6 / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/gpuloader_cold"))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    args = parser.parse_args()
    path = args.dir / "x.npy"
    if args.method:
        print(json.dumps(run_method(args.method, path)))
        return
    import synthetic

    synthetic.write_npy(args.dir, 100_000)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(BENCH_DIR)]))
    methods = [m for m in args.methods.split(",") if m]
    results: dict[str, list[dict[str, float]]] = {}
    for round_index in range(args.rounds):
        order = methods[round_index % len(methods):] + methods[: round_index % len(methods)]
        for method in order:
            load = os.getloadavg()[0]
            done = subprocess.run(
                [sys.executable, __file__, "--method", method, "--dir", str(args.dir)],
                capture_output=True, text=True, env=env, timeout=300,
            )
            if done.returncode:
                raise RuntimeError(done.stderr[-2000:])
            record = json.loads(done.stdout.splitlines()[-1])
            record["load"] = load
            results.setdefault(method, []).append(record)
            print(
                f"round {round_index + 1} {method:9s} {record['seconds']:.3f} s "
                f"(requests {record['requested_s']:.3f} s)"
                f"  cached {record['resident_mb']:.0f} MB  {record['mb_per_s']:.0f} MB/s  load {load:.2f}",
                flush=True,
            )
    print("medians:")
    for method in methods:
        seconds = [r["seconds"] for r in results[method]]
        print(f"  {method:9s} {statistics.median(seconds):.3f} s ({min(seconds):.3f}-{max(seconds):.3f})")


if __name__ == "__main__":
    sys.path.insert(0, str(BENCH_DIR))
    main()
