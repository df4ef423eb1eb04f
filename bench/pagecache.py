"""Cold reads without root: evict a file's pages from the page cache, and measure what is cached.

``/proc/sys/vm/drop_caches`` needs root. Instead, :func:`evict` asks the kernel
to drop one file's clean pages with ``posix_fadvise(POSIX_FADV_DONTNEED)``,
which any process that can open the file may do. The kernel keeps pages that a
process still maps, so :func:`evict` first unmaps this process's pages of the
file (``madvise(MADV_DONTNEED)`` on every mapping of it listed in
``/proc/self/maps``; a read-only shared file mapping simply faults them in
again from the file on the next access). Pages mapped by *another* process stay
cached: run the cases one at a time.

:func:`resident_bytes` counts the file's cached pages with ``mincore``
(the same figure as util-linux ``fincore``), :func:`storage_read_bytes` the
bytes this process made the kernel fetch from storage (``/proc/self/io``), and
:class:`MemoryProbe` reads the resident-set figures of ``/proc/self/status``.
:func:`check_eviction` shows that the eviction works: cached bytes before and
after, and the same batches read cold (after an eviction) and then warm.
Linux only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

MADV_DONTNEED = 4
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_MAP_FAILED = ctypes.c_void_p(-1).value

METHOD = "file pages evicted with POSIX_FADV_DONTNEED (after MADV_DONTNEED on this process's mappings)"


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def unmap_pages(path: str | os.PathLike[str]) -> int:
    """Drop this process's page-table entries for ``path`` (every mapping of it); return the mappings."""
    target = os.path.realpath(path)
    count = 0
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].rstrip("\n") == target:
                start, end = (int(bound, 16) for bound in fields[0].split("-"))
                _check(_libc.madvise(start, end - start, MADV_DONTNEED), f"madvise({target})")
                count += 1
    return count


def evict(paths: list[str] | list[Path]) -> None:
    """Evict every file of ``paths`` from the page cache (clean pages; see the module docstring)."""
    for path in paths:
        unmap_pages(path)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def cache(paths: list[str] | list[Path], chunk: int = 8 << 20) -> None:
    """Read every file of ``paths`` once, so that its pages are in the page cache (a warm epoch's start)."""
    buffer = bytearray(chunk)
    for path in paths:
        with open(path, "rb", buffering=0) as file:
            while file.readinto(buffer):
                pass


def resident_bytes(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(bytes of path in the page cache, file size)``, counted with ``mincore`` on a fresh mapping."""
    size = os.path.getsize(path)
    if size == 0:
        return 0, 0
    page = mmap.PAGESIZE
    fd = os.open(path, os.O_RDONLY)
    try:
        address = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if address in (None, _MAP_FAILED):
            _check(-1, f"mmap({path})")
        try:
            pages = -(-size // page)
            vector = (ctypes.c_ubyte * pages)()
            _check(_libc.mincore(address, size, vector), f"mincore({path})")
            resident = sum(bytes(vector).count(byte) for byte in range(1, 256, 2))  # bit 0 = resident
        finally:
            _libc.munmap(address, size)
    finally:
        os.close(fd)
    return min(resident * page, size), size


def storage_read_bytes() -> int:
    """Bytes this process (all its threads) caused to be read from storage so far."""
    with open("/proc/self/io") as io:
        for line in io:
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    return 0


class MemoryProbe:
    """``/proc/self/status`` figures in bytes, read cheaply enough to sample after every batch."""

    def __init__(self) -> None:
        self._file = open("/proc/self/status", "rb")  # kept open: one seek and read per sample

    def read(self) -> dict[str, int]:
        """``RssAnon``, ``RssFile``, ``VmRSS`` and ``VmHWM`` (the peak of VmRSS) in bytes."""
        self._file.seek(0)
        figures = {}
        for line in self._file.read().split(b"\n"):
            name, _, value = line.partition(b":")
            if name in (b"RssAnon", b"RssFile", b"VmRSS", b"VmHWM"):
                figures[name.decode()] = int(value.split()[0]) * 1024
        return figures

    @staticmethod
    def reset_peak() -> bool:
        """Reset ``VmHWM`` to the current RSS (``/proc/self/clear_refs``, Linux >= 4.0); False if refused."""
        try:
            with open("/proc/self/clear_refs", "w") as refs:
                refs.write("5")
            return True
        except OSError:
            return False

    def close(self) -> None:
        self._file.close()


def fincore(path: str | os.PathLike[str]) -> int | None:
    """Cached bytes of ``path`` as util-linux ``fincore`` reports them; None without it."""
    if shutil.which("fincore") is None:
        return None
    done = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", os.fspath(path)], capture_output=True, text=True
    )
    try:
        return int(done.stdout.split()[0])
    except (IndexError, ValueError):
        return None


def check_eviction(x_path: Path, paths: list[Path], batches: int, batch_size: int) -> dict[str, Any]:
    """Evidence that :func:`evict` makes reads cold: cached bytes and read times, cold then warm.

    Reads the same ``batches`` shuffled batches of ``x_path`` (``x[rows]`` on a
    memory map) twice: right after an eviction, then again at once. Evicts
    again before returning and keeps no mapping open.
    """
    import numpy as np

    drop_caches = "/proc/sys/vm/drop_caches"
    evidence: dict[str, Any] = {
        "method": METHOD,
        # Not used either way: dropping every cache of the machine needs root and
        # disturbs other processes; the per-file eviction needs neither.
        "drop_caches_writable": os.access(drop_caches, os.W_OK),
        "file_bytes": os.path.getsize(x_path),
        "cached_before_eviction_bytes": resident_bytes(x_path)[0],
    }
    evict(paths)
    evidence["cached_after_eviction_bytes"] = resident_bytes(x_path)[0]
    evidence["fincore_after_eviction_bytes"] = fincore(x_path)
    x = np.load(x_path, mmap_mode="r")
    order = np.random.default_rng(0).permutation(len(x))[: batches * batch_size]
    for label in ("cold", "warm"):
        read_before = storage_read_bytes()
        start = time.perf_counter()
        for i in range(batches):
            x[order[i * batch_size : (i + 1) * batch_size]]
        evidence[f"{label}_s"] = time.perf_counter() - start
        evidence[f"{label}_storage_read_bytes"] = storage_read_bytes() - read_before
        evidence[f"cached_after_{label}_read_bytes"] = resident_bytes(x_path)[0]
    evidence["fincore_after_reads_bytes"] = fincore(x_path)
    evidence["batches"] = batches
    evidence["requested_bytes"] = batches * batch_size * x.strides[0]
    del x
    evict(paths)
    evidence["cached_at_end_bytes"] = resident_bytes(x_path)[0]
    return evidence
