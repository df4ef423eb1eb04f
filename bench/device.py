"""Device benchmark: the loader's GPU path against its host path and against the hardware.

No TensorFlow: runs on the lent GPU machine (CuPy, torch, JAX; Keras carried as
wheels), and anywhere else says why it cannot and exits 0. Three measurements,
each after a warm-up, each the median of several repeats:

1. Throughput: batches per second over a full shuffled epoch, batch 256, for
   60000x784 float32, 50000x32x32x3 uint8 and 50000x32x32x3 float32 (x plus int32
   labels). Host is ``Loader(device="host")`` and device ``Loader(device="gpu")``,
   both driven through ``prepare(loader, i)`` (the gather, no hand-off), the
   epoch's permutation included. The device is timed twice: with a stream sync
   after every batch (what a TensorFlow consumer waits for; the target uses
   this) and stream-ordered with one sync per epoch (JAX and torch).
2. Per-batch overhead, batch sizes 32..4096 on 60000x784 float32 already on the
   GPU: wall time of ``prepare(loader, i)`` + stream sync minus the GPU time of the
   gather kernel itself (CUDA events around batches queued back to back behind
   a spin kernel, so the GPU never waits for the CPU): what the loader adds to
   the copy, launch and sync latency included. Beside it, ``cupy.take`` + sync of
   the same rows (the gather a user would write) and ``prepare`` + sync on
   one-byte rows, where the copy costs next to nothing.
3. Gather bandwidth for batches of 1, 8, 32 and 128 MB (rows of 4 KB): the
   device path (``prepare`` + sync, wall clock) against a plain
   device-to-device ``cupy.copyto`` + sync of the same bytes, counting bytes
   read + written. Kernel-only figures from CUDA events (the loader's gather,
   ``cupy.take`` and ``copyto``) are reported beside them.

4. Augmentation (issue 12): a shuffled epoch of 50000x32x32x3 uint8, batch 512,
   ``prepare`` + stream sync per batch, plain against
   ``augment=[RandomCrop(4), RandomFlip(), Cutout(8)]`` (the fused kernel,
   ``_cuda.GatherAugment``: one launch per batch), and the same ops one by one
   through CuPy (the kernel switched off) for reference. Also: the augmented
   epoch's bytes equal the host loader's.

Targets (PASS/FAIL): device >= 10x host batches/s for 50000x32x32x3 float32;
overhead <= 30 us per batch at every batch size; gather >= 0.5 of the copy
bandwidth for batches >= 32 MB; augmented epoch <= 1.10x the plain epoch, with
the host's bytes.

Usage: python3 bench/device.py [--json PATH] [--repeats N] [--quick] [--strict]
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# The repository root on sys.path, so `python3 bench/device.py` needs no install.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Loader subclasses keras.utils.PyDataset, so Keras must import. Where the backend
# asked for (or Keras's default, TensorFlow; `make` exports KERAS_BACKEND=tensorflow)
# is not installed, as on the lent GPU machine, use one that is: the benchmark never
# hands a batch to the backend. JAX must not take 75% of the GPU.
_requested = os.environ.get("KERAS_BACKEND", "tensorflow")
if _requested != "numpy" and importlib.util.find_spec(_requested) is None:
    for _backend in ("torch", "jax", "tensorflow"):
        if importlib.util.find_spec(_backend) is not None:
            print(f"KERAS_BACKEND={_requested} is not installed here; using {_backend} to import Keras")
            os.environ["KERAS_BACKEND"] = _backend
            break
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from gpuloader import _cuda  # noqa: E402  (after the sys.path and environment set-up above)

BATCH_SIZE = 256
THROUGHPUT_CASES = [
    ("60000x784 float32", (60000, 784), np.float32),
    ("50000x32x32x3 uint8", (50000, 32, 32, 3), np.uint8),
    ("50000x32x32x3 float32", (50000, 32, 32, 3), np.float32),
]
SPEEDUP_CASE = "50000x32x32x3 float32"
OVERHEAD_BATCH_SIZES = [32, 64, 128, 256, 512, 1024, 2048, 4096]
BANDWIDTH_BATCH_MB = [1, 8, 32, 128]
BANDWIDTH_ROW_BYTES = 4096
TARGET_SPEEDUP = 10.0
TARGET_OVERHEAD_US = 30.0
TARGET_BANDWIDTH_RATIO = 0.5
TARGET_BANDWIDTH_MIN_MB = 32
MB = 1 << 20


# ------------------------------------------------------------------ timing
def median_seconds(run: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``run()`` over ``repeats`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


_SPIN_SOURCE = r"""
extern "C" __global__ void spin(const long long cycles) {
    const long long start = clock64();
    while (clock64() - start < cycles) {}
}
"""
EVENT_BATCHES = 200  # batches queued behind one spin
SPIN_SECONDS = 0.1


def median_event_seconds(cp: Any, run_batch: Callable[[int], Any], batches: int, repeats: int) -> float:
    """Median GPU time per ``run_batch(i)`` when the GPU never waits for the CPU (CUDA events).

    A one-thread spin kernel holds the stream while up to 200 calls are queued
    behind it, so the calls' kernels then run back to back and the events
    between them time the GPU's work alone, not the launch latency (which the
    wall-clock figures carry). Raises if queueing took longer than the spin.
    """
    spin = cp.RawKernel(_SPIN_SOURCE, "spin")
    cycles = int(SPIN_SECONDS * cp.cuda.Device().attributes["ClockRate"] * 1e3)  # ClockRate is in kHz
    count = min(batches, EVENT_BATCHES)
    run_batch(0)
    cp.cuda.get_current_stream().synchronize()
    times = []
    for _ in range(repeats):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        spin((1,), (1,), (np.int64(cycles),))
        queued_from = time.perf_counter()
        start.record()
        for i in range(count):
            run_batch(i)
        stop.record()
        queued_s = time.perf_counter() - queued_from
        if start.done or queued_s >= SPIN_SECONDS:  # the GPU caught up: the events would time idling
            raise RuntimeError(f"queueing {count} batches took {queued_s:.3f} s, longer than the spin")
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop) / 1e3 / count)
    return statistics.median(times)


def release(cp: Any) -> None:
    gc.collect()
    cp.cuda.Device().synchronize()
    cp.get_default_memory_pool().free_all_blocks()
    cp.get_default_pinned_memory_pool().free_all_blocks()


# ----------------------------------------------------------- measurements
def make_host_data(shape: tuple[int, ...], dtype: Any, rng: np.random.Generator) -> np.ndarray:
    if np.dtype(dtype) == np.uint8:
        return rng.integers(0, 256, shape, dtype=np.uint8)
    return rng.random(shape, dtype=np.float32).astype(dtype, copy=False)


def prepare(loader: Any, position: int, epoch: int | None = None) -> Any:
    """Batch ``position`` of ``epoch`` (default: the current one) gathered where the data lives, no hand-off."""
    return loader.pipeline.prepare(position, loader.epoch if epoch is None else epoch, loader.shuffle)


def epoch_runner(loader: Any, sync: Callable[[], None] | None, per_batch: bool) -> Callable[[], None]:
    """One full epoch of ``prepare`` calls; each call serves the next epoch's order.

    ``sync`` after every batch when ``per_batch`` (what a TensorFlow consumer
    waits for: its ``from_dlpack`` takes no stream), else once at the end (JAX
    and torch take the stream through DLPack and order their work after ours).
    """
    state = {"epoch": 0}

    def run() -> None:
        loader.set_epoch(state["epoch"])
        state["epoch"] += 1
        for i in range(len(loader)):
            prepare(loader, i)
            if per_batch and sync is not None:
                sync()
        if sync is not None:
            sync()

    return run


def measure_throughput(cp: Any, make_loader: Callable[..., Any], repeats: int, scale: float) -> list[dict]:
    rng = np.random.default_rng(0)
    sync = cp.cuda.get_current_stream().synchronize
    rows = []
    for name, shape, dtype in THROUGHPUT_CASES:
        shape = (max(BATCH_SIZE, int(shape[0] * scale)), *shape[1:])
        x = make_host_data(shape, dtype, rng)
        y = rng.integers(0, 10, shape[0]).astype(np.int32)
        on_host = make_loader(x, y, batch_size=BATCH_SIZE, device="host")
        host_s = median_seconds(epoch_runner(on_host, None, False), max(3, repeats // 2))
        del on_host
        on_gpu = make_loader(x, y, batch_size=BATCH_SIZE, device="gpu")
        synced_s = median_seconds(epoch_runner(on_gpu, sync, True), repeats)
        ordered_s = median_seconds(epoch_runner(on_gpu, sync, False), repeats)
        batches = len(on_gpu)
        del on_gpu, x, y
        release(cp)
        row = {
            "case": name,
            "shape": list(shape),
            "batch_size": BATCH_SIZE,
            "batches_per_epoch": batches,
            "host_epoch_ms": host_s * 1e3,
            "device_synced_epoch_ms": synced_s * 1e3,
            "device_ordered_epoch_ms": ordered_s * 1e3,
            "host_batches_per_s": batches / host_s,
            "device_synced_batches_per_s": batches / synced_s,
            "device_ordered_batches_per_s": batches / ordered_s,
            "speedup": host_s / synced_s,
            "speedup_ordered": host_s / ordered_s,
        }
        rows.append(row)
        print(
            f"  {name:24s} host {row['host_batches_per_s']:9.0f}/s  device, synced per batch "
            f"{row['device_synced_batches_per_s']:9.0f}/s (x{row['speedup']:.1f})  stream-ordered "
            f"{row['device_ordered_batches_per_s']:9.0f}/s (x{row['speedup_ordered']:.1f})",
            flush=True,
        )
    return rows


MIN_CALLS = 200  # per timed repeat: a few large batches alone would time mostly noise


def per_batch_wall(run_batch: Callable[[int], Any], batches: int, repeats: int) -> float:
    """Median over repeats of the wall time per call of ``run_batch(i)``, cycling over the batches
    until at least :data:`MIN_CALLS` calls."""
    calls = max(batches, MIN_CALLS)

    def run() -> None:
        for call in range(calls):
            run_batch(call % batches)

    return median_seconds(run, repeats) / calls


def measure_overhead(cp: Any, make_loader: Callable[..., Any], repeats: int, scale: float) -> list[dict]:
    n = max(OVERHEAD_BATCH_SIZES[-1] * 4, int(60000 * scale))
    stream = cp.cuda.get_current_stream()
    data = cp.random.random((n, 784), dtype=cp.float32)
    tiny = cp.zeros((n, 1), dtype=cp.uint8)
    rows = []
    for batch_size in OVERHEAD_BATCH_SIZES:
        loader = make_loader(data, batch_size=batch_size, device="gpu")  # adopted in place, no upload
        tiny_loader = make_loader(tiny, batch_size=batch_size, device="gpu")
        batches = n // batch_size  # full batches only: the same work in every loop
        order = loader.pipeline.order(loader.epoch)
        index_slices = [order[i * batch_size : (i + 1) * batch_size] for i in range(batches)]
        tiny_loader.pipeline.order(tiny_loader.epoch)

        def prepare_and_sync(i: int, loader: Any = loader) -> None:
            prepare(loader, i)
            stream.synchronize()

        def tiny_and_sync(i: int, loader: Any = tiny_loader) -> None:
            prepare(loader, i)
            stream.synchronize()

        def take_and_sync(i: int, index_slices: list[Any] = index_slices, data: Any = data) -> None:
            cp.take(data, index_slices[i], axis=0)
            stream.synchronize()

        prepare_s = per_batch_wall(prepare_and_sync, batches, repeats)
        kernel_s = median_event_seconds(cp, functools.partial(prepare, loader), batches, repeats)
        take_s = per_batch_wall(take_and_sync, batches, repeats)
        tiny_s = per_batch_wall(tiny_and_sync, batches, repeats)
        del loader, tiny_loader, index_slices, order
        row = {
            "batch_size": batch_size,
            "batch_mb": batch_size * 784 * 4 / MB,
            "prepare_sync_us": prepare_s * 1e6,
            "gather_kernel_us": kernel_s * 1e6,
            "overhead_us": (prepare_s - kernel_s) * 1e6,
            "take_sync_us": take_s * 1e6,
            "tiny_row_prepare_sync_us": tiny_s * 1e6,
        }
        rows.append(row)
        print(
            f"  batch {batch_size:5d}: prepare+sync {row['prepare_sync_us']:7.1f} us  gather kernel "
            f"{row['gather_kernel_us']:7.1f} us  overhead {row['overhead_us']:6.1f} us  cupy.take+sync "
            f"{row['take_sync_us']:7.1f} us  1-byte rows {row['tiny_row_prepare_sync_us']:6.1f} us",
            flush=True,
        )
    del data, tiny
    release(cp)
    return rows


def measure_bandwidth(cp: Any, make_loader: Callable[..., Any], repeats: int, scale: float) -> list[dict]:
    columns = BANDWIDTH_ROW_BYTES // 4
    sizes = [mb for mb in BANDWIDTH_BATCH_MB if mb <= max(BANDWIDTH_BATCH_MB) * scale] or BANDWIDTH_BATCH_MB[:1]
    largest_rows = max(sizes) * MB // BANDWIDTH_ROW_BYTES
    n = 4 * largest_rows  # every size gathers from the same store, several batches deep
    stream = cp.cuda.get_current_stream()
    data = cp.random.random((n, columns), dtype=cp.float32)
    rows = []
    for mb in sizes:
        batch_rows = mb * MB // BANDWIDTH_ROW_BYTES
        nbytes = batch_rows * BANDWIDTH_ROW_BYTES
        loader = make_loader(data, batch_size=batch_rows, device="gpu")  # adopted in place
        batches = n // batch_rows
        order = loader.pipeline.order(loader.epoch)
        # Each batch reads other bytes, for the copy as for the gather: no L2 reuse.
        indices = [order[i * batch_rows : (i + 1) * batch_rows] for i in range(batches)]
        sources = [data[i * batch_rows : (i + 1) * batch_rows] for i in range(batches)]
        target = cp.empty_like(sources[0])

        def gather_and_sync(i: int, loader: Any = loader) -> None:
            prepare(loader, i)
            stream.synchronize()

        def copy_and_sync(i: int, sources: list[Any] = sources, target: Any = target) -> None:
            cp.copyto(target, sources[i])
            stream.synchronize()

        def take(i: int, indices: list[Any] = indices, data: Any = data) -> None:
            cp.take(data, indices[i], axis=0)

        def copy(i: int, sources: list[Any] = sources, target: Any = target) -> None:
            cp.copyto(target, sources[i])

        gather_s = per_batch_wall(gather_and_sync, batches, repeats)
        copy_s = per_batch_wall(copy_and_sync, batches, repeats)
        gather_kernel_s = median_event_seconds(cp, functools.partial(prepare, loader), batches, repeats)
        take_kernel_s = median_event_seconds(cp, take, batches, repeats)
        copy_kernel_s = median_event_seconds(cp, copy, batches, repeats)
        moved = 2 * nbytes  # bytes read + bytes written
        row = {
            "batch_mb": mb,
            "batch_rows": batch_rows,
            "gather_us": gather_s * 1e6,
            "copy_us": copy_s * 1e6,
            "gather_gb_per_s": moved / gather_s / 1e9,
            "copy_gb_per_s": moved / copy_s / 1e9,
            "ratio": copy_s / gather_s,
            "gather_kernel_gb_per_s": moved / gather_kernel_s / 1e9,
            "take_kernel_gb_per_s": moved / take_kernel_s / 1e9,
            "copy_kernel_gb_per_s": moved / copy_kernel_s / 1e9,
            "kernel_ratio": copy_kernel_s / gather_kernel_s,
        }
        rows.append(row)
        print(
            f"  {mb:4d} MB: gather+sync {row['gather_gb_per_s']:6.0f} GB/s  "
            f"copy+sync {row['copy_gb_per_s']:6.0f} GB/s  "
            f"ratio {row['ratio']:.2f}  (kernels: gather {row['gather_kernel_gb_per_s']:.0f}, cupy.take "
            f"{row['take_kernel_gb_per_s']:.0f}, copy {row['copy_kernel_gb_per_s']:.0f} GB/s)",
            flush=True,
        )
        del loader, order, indices, sources, target
        release(cp)
    del data
    release(cp)
    return rows


# ---------------------------------------------------------------- targets
AUGMENT_SHAPE, AUGMENT_BATCH, TARGET_AUGMENT_RATIO = (50000, 32, 32, 3), 512, 1.10


def measure_augment(cp: Any, make_loader: Callable[..., Any], repeats: int, scale: float) -> dict:
    """Plain, fused-kernel and op-by-op augmented epochs on the GPU (synced per batch), and a byte check."""
    from gpuloader import _cuda as cuda
    from gpuloader import augment
    from gpuloader.augment.plan import CUDA as CUDA_PATH

    rng = np.random.default_rng(1)
    shape = (max(AUGMENT_BATCH, int(AUGMENT_SHAPE[0] * scale)), *AUGMENT_SHAPE[1:])
    x = make_host_data(shape, np.uint8, rng)
    y = np.arange(shape[0], dtype=np.int32)
    sync = cp.cuda.get_current_stream().synchronize

    def ops() -> list[Any]:
        return [augment.RandomCrop(padding=4), augment.RandomFlip(), augment.Cutout(size=8)]

    plain = make_loader(x, y, batch_size=AUGMENT_BATCH, device="gpu")
    fused = make_loader(x, y, batch_size=AUGMENT_BATCH, device="gpu", augment=ops())
    plain_s = median_seconds(epoch_runner(plain, sync, True), repeats)
    fused_s = median_seconds(epoch_runner(fused, sync, True), repeats)
    built = sum(augmentation.path == CUDA_PATH for augmentation in fused.pipeline.augmentations)
    real = cuda.gather_augment
    cuda.gather_augment = lambda table, leaf: None
    try:
        one_by_one = make_loader(x, y, batch_size=AUGMENT_BATCH, device="gpu", augment=ops())
        one_by_one_s = median_seconds(epoch_runner(one_by_one, sync, True), max(3, repeats // 2))
    finally:
        cuda.gather_augment = real
    on_host = make_loader(x, y, batch_size=AUGMENT_BATCH, device="host", augment=ops())
    same = all(
        cp.asnumpy(prepare(fused, i, 0)[1][0]).tobytes() == np.asarray(prepare(on_host, i, 0)[1][0]).tobytes()
        for i in range(len(fused))
    )
    del plain, fused, one_by_one, on_host, x, y
    release(cp)
    row = {
        "shape": list(shape), "batch_size": AUGMENT_BATCH, "ops": "RandomCrop(4), RandomFlip(), Cutout(8)",
        "plain_epoch_ms": plain_s * 1e3, "fused_epoch_ms": fused_s * 1e3, "one_by_one_epoch_ms": one_by_one_s * 1e3,
        "fused_over_plain": fused_s / plain_s, "one_by_one_over_plain": one_by_one_s / plain_s,
        "fused_kernels_built": built, "same_bytes_as_host": same,
    }
    print(
        f"  plain {row['plain_epoch_ms']:.1f} ms, fused kernel {row['fused_epoch_ms']:.1f} ms "
        f"(x{row['fused_over_plain']:.2f}), ops one by one {row['one_by_one_epoch_ms']:.1f} ms "
        f"(x{row['one_by_one_over_plain']:.2f}); host bytes: {same}",
        flush=True,
    )
    return row


def _target(name: str, value: float, threshold: str, passed: bool) -> dict:
    return {"name": name, "value": value, "threshold": threshold, "pass": passed}


def evaluate_targets(
    throughput: list[dict], overhead: list[dict], bandwidth: list[dict], augmented: dict | None = None
) -> list[dict]:
    targets = []
    if augmented:
        targets.append(_target(
            f"augmented (fused kernel) / plain epoch, {AUGMENT_SHAPE} uint8, batch {AUGMENT_BATCH}",
            augmented["fused_over_plain"], f"<= {TARGET_AUGMENT_RATIO:g}x",
            augmented["fused_over_plain"] <= TARGET_AUGMENT_RATIO,
        ))
        targets.append(_target(
            "augmented batches on the device: the host's bytes (1 = yes)", float(augmented["same_bytes_as_host"]),
            "= 1", bool(augmented["same_bytes_as_host"]),
        ))
    for row in throughput:
        if row["case"] == SPEEDUP_CASE:
            targets.append(_target(
                f"device (synced per batch) / host batches per second, {SPEEDUP_CASE}, batch {BATCH_SIZE}",
                row["speedup"], f">= {TARGET_SPEEDUP:g}x", row["speedup"] >= TARGET_SPEEDUP,
            ))
    if overhead:
        worst = max(overhead, key=lambda row: row["overhead_us"])
        sizes = f"{OVERHEAD_BATCH_SIZES[0]}..{OVERHEAD_BATCH_SIZES[-1]}"
        targets.append(_target(
            f"per-batch overhead, worst of batch sizes {sizes} (batch {worst['batch_size']})",
            worst["overhead_us"], f"<= {TARGET_OVERHEAD_US:g} us", worst["overhead_us"] <= TARGET_OVERHEAD_US,
        ))
    large = [row for row in bandwidth if row["batch_mb"] >= TARGET_BANDWIDTH_MIN_MB]
    if large:
        worst = min(large, key=lambda row: row["ratio"])
        targets.append(_target(
            f"gather / copy bandwidth, batches >= {TARGET_BANDWIDTH_MIN_MB} MB (worst: {worst['batch_mb']} MB)",
            worst["ratio"], f">= {TARGET_BANDWIDTH_RATIO:g}", worst["ratio"] >= TARGET_BANDWIDTH_RATIO,
        ))
    return targets


def print_tables(result: dict) -> None:
    print(f"\nThroughput, batch {BATCH_SIZE} (batches per second, median); device synced per batch as for "
          "TensorFlow, and stream-ordered as for JAX and torch")
    print(f"  {'case':24s} {'host/s':>9s} {'synced/s':>9s} {'speedup':>8s} {'ordered/s':>10s} {'speedup':>8s}")
    for row in result["throughput"]:
        print(
            f"  {row['case']:24s} {row['host_batches_per_s']:9.0f} {row['device_synced_batches_per_s']:9.0f} "
            f"{row['speedup']:7.1f}x {row['device_ordered_batches_per_s']:10.0f} {row['speedup_ordered']:7.1f}x"
        )
    print("\nPer-batch overhead (us, median): prepare + sync (wall) minus the gather kernel's GPU time")
    print(f"  {'batch':>6s} {'MB':>7s} {'prep+sync':>10s} {'kernel':>8s} {'overhead':>9s} {'take+sync':>10s} "
          f"{'1-byte rows':>12s}")
    for row in result["overhead"]:
        print(
            f"  {row['batch_size']:6d} {row['batch_mb']:7.2f} {row['prepare_sync_us']:10.1f} "
            f"{row['gather_kernel_us']:8.1f} {row['overhead_us']:9.1f} {row['take_sync_us']:10.1f} "
            f"{row['tiny_row_prepare_sync_us']:12.1f}"
        )
    print("\nBandwidth (GB/s, read + written): wall clock with sync, and kernels alone (CUDA events)")
    print(f"  {'MB':>5s} {'gather':>8s} {'copy':>8s} {'ratio':>6s} {'gather krn':>11s} {'take krn':>9s} "
          f"{'copy krn':>9s} {'ratio':>6s}")
    for row in result["bandwidth"]:
        print(
            f"  {row['batch_mb']:5d} {row['gather_gb_per_s']:8.0f} {row['copy_gb_per_s']:8.0f} {row['ratio']:6.2f} "
            f"{row['gather_kernel_gb_per_s']:11.0f} {row['take_kernel_gb_per_s']:9.0f} "
            f"{row['copy_kernel_gb_per_s']:9.0f} {row['kernel_ratio']:6.2f}"
        )
    print("\nTargets")
    for target in result["targets"]:
        verdict = "PASS" if target["pass"] else "FAIL"
        print(f"  {verdict}  {target['name']}: {target['value']:.2f} (target {target['threshold']})")


# ------------------------------------------------------------------ main
def write_json(path: str | None, result: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
        print(f"wrote {path}")


def skip(reason: str, json_path: str | None) -> int:
    print(f"device benchmark skipped: {reason}")
    write_json(json_path, {"skipped": True, "reason": reason})
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per measurement (median)")
    parser.add_argument("--quick", action="store_true", help="a tenth of the data: a smoke run, not a result")
    parser.add_argument("--strict", action="store_true", help="exit 2 when a target fails")
    args = parser.parse_args(argv)

    status = _cuda.probe()
    if not status.usable:
        return skip(status.reason, args.json)
    try:
        from gpuloader.loader import Loader
    except Exception as error:
        backend = os.environ.get("KERAS_BACKEND", "tensorflow (default)")
        return skip(f"gpuloader.Loader needs Keras (backend {backend}): {type(error).__name__}: {error}", args.json)
    cp = _cuda.import_cupy()

    def make_loader(*arrays: Any, **kwargs: Any) -> Any:
        loader = Loader(*arrays, seed=0, verbose=False, **kwargs)
        if loader.placement != kwargs["device"]:
            raise RuntimeError(f"asked for {kwargs['device']}, got {loader.plan}")
        return loader

    scale = 0.1 if args.quick else 1.0
    repeats = max(1, args.repeats)
    result: dict[str, Any] = {
        "skipped": False,
        "quick": args.quick,
        "repeats": repeats,
        "device": status.name,
        "device_total_bytes": status.total_bytes,
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "cupy": cp.__version__,
            "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(),
            "cuda_driver": cp.cuda.runtime.driverGetVersion(),
            "keras_backend": os.environ.get("KERAS_BACKEND"),
        },
    }
    print(f"device benchmark on {status.name} (CuPy {cp.__version__}), {repeats} repeats, median")
    started = time.perf_counter()
    print("throughput:", flush=True)
    result["throughput"] = measure_throughput(cp, make_loader, repeats, scale)
    print("per-batch overhead:", flush=True)
    result["overhead"] = measure_overhead(cp, make_loader, repeats, scale)
    print("bandwidth:", flush=True)
    result["bandwidth"] = measure_bandwidth(cp, make_loader, repeats, scale)
    print("augmentation:", flush=True)
    result["augment"] = measure_augment(cp, make_loader, repeats, scale)
    result["targets"] = evaluate_targets(
        result["throughput"], result["overhead"], result["bandwidth"], result["augment"]
    )
    result["all_pass"] = all(target["pass"] for target in result["targets"])
    result["seconds"] = time.perf_counter() - started
    print_tables(result)
    write_json(args.json, result)
    if args.strict and not result["all_pass"]:
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
