"""Host benchmark of gpuloader against named baselines (``make bench``).

Usage: ``python bench/run.py [--rounds N] [--quick] [--modes epoch,fit,disk]
[--datasets mnist,cifar] [--out DIR] [--jobs N] [--disk-dir DIR] [--disk-rows N]
[--disk-batches B] [--keep-disk-data]``

Every case runs in a process of its own (``bench/cases.py``), and the cases are
interleaved across rounds (round 1: A B C D, round 2: A B C D, ...): after
``tf.data`` has run in a process, later work there runs about 2x slower
(shared/notes/pitfalls.md, item 5). A case's figure for one round is the median
of its timed epochs; its reported figure is the median over rounds. Speedups
are ``baseline seconds / gpuloader seconds`` from the medians of the same run.

Mode ``disk`` reads a ``.npy`` pair from storage (``x`` float32 rows of 3072
values, 12 KiB a row, and int32 labels; 200000 rows, 2.46 GB, by default),
written once per run into ``--disk-dir`` (default ``bench/results/disk_data``,
git-ignored) in chunks, reused by every round and deleted at the end unless
``--keep-disk-data``. Its cases (``cases.DISK_CASES``) time the first
``--disk-batches`` batches of each epoch (300 by default, the same for every
case), and before every epoch each case evicts the files from the page cache
with ``posix_fadvise(POSIX_FADV_DONTNEED)`` (``bench/pagecache.py``), so every
epoch reads cold. The driver checks once that the eviction works (cached bytes
by ``mincore``, the same batches cold then warm) and prints the evidence, and a
table of peak memory per case. Disk cases always run one at a time, whatever
``--jobs``: a page another process maps cannot be evicted.

Writes ``<out>/bench.json`` (every raw figure, the machine, the targets) and
``<out>/bench.png``; ``<out>`` defaults to ``bench/results``. When a CUDA device
is usable, ``bench/device.py`` adds the device rows. Exit status: 0 when every
case ran (whether or not the targets are met), 1 when a case failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import cases
import pagecache
import synthetic

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
DEFAULT_OUT = BENCH_DIR / "results"
GPULOADER = "gpuloader"

# Timed epochs per case process (after one warm-up epoch), tuned so that the
# default run (5 rounds, both modes and datasets) takes about 10 minutes on 2 cores,
# and the disk mode alone about 5 more.
TIMED_EPOCHS = {"epoch": 30, "fit": 12, "disk": 3}
QUICK_ROWS = 4096
QUICK_ROUNDS = 2
QUICK_JOBS = 2
CASE_TIMEOUT_S = 600
DEFAULT_DISK_DIR = DEFAULT_OUT / "disk_data"
DISK_ROWS = 200_000  # 2.46 GB of x
DISK_BATCHES = 300  # timed per epoch: 76800 of the 200000 rows
QUICK_DISK_ROWS = 16_384  # 201 MB
QUICK_DISK_BATCHES = 16
EVICTION_CHECK_BATCHES = 50
DISK_SPACE_MARGIN = 1 << 30

# Minimum speedup of gpuloader over each baseline: baseline seconds / gpuloader seconds.
TARGETS: dict[str, dict[str, float]] = {
    "epoch": {"seed": 1.5, "tfdata": 3.0, "gather": 0.75},
    "fit": {"seed": 1.4, "arrays": 1.3, "tfdata": 1.2},
    "disk": {"seed": 2.0},
}


def case_env() -> dict[str, str]:
    """The environment of a case process: TensorFlow quiet, Keras on TensorFlow, the rest inherited."""
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["KERAS_BACKEND"] = "tensorflow"
    return env


def run_case(
    case: str, dataset: str, mode: str, rows: int | None, epochs: int, extra: list[str] | None = None
) -> dict[str, Any]:
    """Run one case in a fresh process; return its JSON, or ``{"error": ...}`` when it failed."""
    command = [sys.executable, str(BENCH_DIR / "cases.py"), case, dataset, mode, "--epochs", str(epochs)]
    if rows is not None:
        command += ["--rows", str(rows)]
    command += extra or []
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, env=case_env(), capture_output=True, text=True, timeout=CASE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {CASE_TIMEOUT_S} s"}
    process_s = time.perf_counter() - start
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        return {"error": f"exit status {done.returncode}:\n{tail}"}
    result = json.loads(lines[-1])
    result["process_s"] = process_s
    return result


Key = tuple[str, str, str]  # (mode, dataset, case)


def summarise(plan: list[Key], raw: dict[Key, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Median over rounds of each case's per-round median, with its spread and batches per second."""
    rows = []
    for key in plan:
        mode, dataset, case = key
        good = [result for result in raw[key] if "error" not in result]
        row: dict[str, Any] = {"mode": mode, "dataset": dataset, "case": case, "rounds_ok": len(good)}
        if good:
            per_round = [result["median_s"] for result in good]
            median = statistics.median(per_round)
            row.update(
                per_round_s=per_round,
                median_s=median,
                min_s=min(per_round),
                max_s=max(per_round),
                batches=good[0]["batches"],
                batches_per_s=good[0]["batches"] / median,
            )
            if mode == "disk":
                row.update(_disk_figures(good))
        rows.append(row)
    return rows


def _disk_figures(good: list[dict[str, Any]]) -> dict[str, Any]:
    """Memory and I/O of a disk case: medians over rounds of each round's figure (its worst epoch)."""

    def median_of(name: str) -> float:
        return statistics.median(result[name] for result in good)

    return {
        "peak_rss_anon_delta_bytes": median_of("peak_rss_anon_delta_bytes"),
        "peak_rss_anon_delta_max_bytes": max(result["peak_rss_anon_delta_bytes"] for result in good),
        "vm_hwm_bytes": median_of("vm_hwm_bytes"),
        "vm_hwm_reset": all(epoch["vm_hwm_reset"] for result in good for epoch in result["epochs"]),
        "peak_rss_file_bytes": statistics.median(
            max(epoch["peak_rss_file_bytes"] for epoch in result["epochs"]) for result in good
        ),
        "storage_read_bytes": median_of("storage_read_bytes"),
        "cpu_s": statistics.median(
            statistics.median(epoch["cpu_user_s"] + epoch["cpu_sys_s"] for epoch in result["epochs"])
            for result in good
        ),
        "cpu_sys_s": statistics.median(
            statistics.median(epoch["cpu_sys_s"] for epoch in result["epochs"]) for result in good
        ),
        "cached_after_eviction_max_bytes": max(result["cached_after_eviction_bytes"] for result in good),
        "requested_bytes": good[0]["batches"] * good[0]["batch_size"] * _row_bytes(good[0]),
    }


def _row_bytes(result: dict[str, Any]) -> int:
    return int(result["file_bytes"] // result["rows"])


def speedups(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """gpuloader against every other case of the same mode and dataset: baseline_s / gpuloader_s."""
    medians = {(row["mode"], row["dataset"], row["case"]): row.get("median_s") for row in summary}
    ratios = []
    for (mode, dataset, case), baseline_s in medians.items():
        if case == GPULOADER:
            continue
        gpuloader_s = medians.get((mode, dataset, GPULOADER))
        ratio = baseline_s / gpuloader_s if baseline_s and gpuloader_s else None
        ratios.append(
            {
                "mode": mode,
                "dataset": dataset,
                "baseline": case,
                "baseline_s": baseline_s,
                "gpuloader_s": gpuloader_s,
                "speedup": ratio,
            }
        )
    return ratios


def check_targets(ratios: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """PASS/FAIL of every target that has a measured ratio (MISSING when a case failed)."""
    checks = []
    for ratio in ratios:
        minimum = TARGETS.get(ratio["mode"], {}).get(ratio["baseline"])
        if minimum is None:
            continue
        speedup = ratio["speedup"]
        status = "MISSING" if speedup is None else "PASS" if speedup >= minimum else "FAIL"
        checks.append({**ratio, "target": minimum, "status": status})
    return checks


def format_table(summary: list[dict[str, Any]], ratios: list[dict[str, Any]]) -> str:
    """The results as a fixed-width table, one row per case."""
    by_case = {(r["mode"], r["dataset"], r["baseline"]): r["speedup"] for r in ratios}
    header = (
        f"{'mode':<6} {'dataset':<8} {'case':<10} {'median s':>9} {'min s':>9} {'max s':>9} "
        f"{'batches/s':>10} {'gpuloader speedup':>18}"
    )
    lines = [header, "-" * len(header)]
    for row in summary:
        key = (row["mode"], row["dataset"], row["case"])
        if "median_s" not in row:
            lines.append(f"{key[0]:<6} {key[1]:<8} {key[2]:<10} {'failed':>9}")
            continue
        speedup = by_case.get(key)
        shown = "-" if row["case"] == GPULOADER else "n/a" if speedup is None else f"{speedup:.2f}x"
        lines.append(
            f"{key[0]:<6} {key[1]:<8} {key[2]:<10} {row['median_s']:>9.4f} {row['min_s']:>9.4f} "
            f"{row['max_s']:>9.4f} {row['batches_per_s']:>10.0f} {shown:>18}"
        )
    return "\n".join(lines)


def format_disk_table(summary: list[dict[str, Any]]) -> str:
    """Peak memory and bytes read from storage per disk case (MB = 10**6 bytes)."""
    header = (
        f"{'case':<10} {'batches/s':>10} {'peak RssAnon':>13} {'VmHWM':>9} {'peak RssFile':>13} "
        f"{'read/epoch':>11} {'CPU s (sys)':>12} {'cached at start':>16}"
    )
    lines = [header, "-" * len(header)]
    for row in summary:
        if row["mode"] != "disk" or "median_s" not in row:
            continue
        lines.append(
            f"{row['case']:<10} {row['batches_per_s']:>10.1f} {_mb(row['peak_rss_anon_delta_bytes']):>13} "
            f"{_mb(row['vm_hwm_bytes']):>9} {_mb(row['peak_rss_file_bytes']):>13} "
            f"{_mb(row['storage_read_bytes']):>11} {row['cpu_s']:>5.2f} ({row['cpu_sys_s']:.2f}) "
            f"{_mb(row['cached_after_eviction_max_bytes']):>16}"
        )
    return "\n".join(lines)


def _mb(value: float) -> str:
    return f"{value / 1e6:.0f} MB"


def format_eviction(evidence: dict[str, Any]) -> str:
    """The page-cache evidence of :func:`pagecache.check_eviction` in a few lines."""
    fincore = evidence["fincore_after_eviction_bytes"]
    return "\n".join(
        [
            f"  cached bytes of x.npy: {_mb(evidence['cached_before_eviction_bytes'])} before eviction, "
            f"{_mb(evidence['cached_after_eviction_bytes'])} after (mincore)"
            + ("" if fincore is None else f", {_mb(fincore)} (fincore)"),
            f"  the same {evidence['batches']} shuffled batches (x[rows] on a memmap, "
            f"{_mb(evidence['requested_bytes'])} of rows): cold {evidence['cold_s']:.3f} s reading "
            f"{_mb(evidence['cold_storage_read_bytes'])} from storage, then warm {evidence['warm_s']:.3f} s reading "
            f"{_mb(evidence['warm_storage_read_bytes'])}",
            f"  {_mb(evidence['cached_after_cold_read_bytes'])} of x.npy cached after the cold pass; read from "
            f"storage / rows asked for = {evidence['cold_storage_read_bytes'] / evidence['requested_bytes']:.1f}x "
            "(above 1: the kernel's read-ahead around each page fault)",
        ]
    )


def format_targets(checks: list[dict[str, Any]]) -> str:
    """One PASS/FAIL line per target."""
    lines = []
    for check in checks:
        speedup = "n/a" if check["speedup"] is None else f"{check['speedup']:.2f}x"
        lines.append(
            f"  {check['status']:<7} {check['mode']:<6} {check['dataset']:<6} gpuloader vs "
            f"{check['baseline']:<7} {speedup:>7}  (target >= {check['target']:g}x)"
        )
    return "\n".join(lines)


def device_rows(out: Path, quick: bool) -> dict[str, Any]:
    """Run ``bench/device.py`` when a CUDA device is usable and print its table; otherwise say why not.

    Its process inherits ``KERAS_BACKEND`` (device.py picks one when it is unset:
    the GPU machine has no TensorFlow).
    """
    from gpuloader import _cuda

    status = _cuda.probe()
    if not status.usable:
        print(f"device rows: skipped ({status.reason})")
        return {"skipped": status.reason}
    script = BENCH_DIR / "device.py"
    if not script.exists():
        print("device rows: skipped (bench/device.py is missing)")
        return {"skipped": "bench/device.py is missing", "device": status.name}
    target = out / "device.json"
    command = [sys.executable, str(script), "--json", str(target)] + (["--quick"] if quick else [])
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=CASE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        print(f"device rows: failed (timed out after {CASE_TIMEOUT_S} s)")
        return {"error": f"timed out after {CASE_TIMEOUT_S} s"}
    if done.returncode != 0 or not target.exists():
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        print(f"device rows: failed (exit status {done.returncode}):\n{tail}")
        return {"error": f"exit status {done.returncode}", "stderr_tail": tail}
    print(f"device rows ({target}):")
    print(done.stdout.rstrip())
    result = json.loads(target.read_text())
    fit_target = out / "device_fit.json"
    command = [sys.executable, str(BENCH_DIR / "device_fit.py"), "--json", str(fit_target)]
    command += ["--rounds", "1", "--epochs", "1"] if quick else []
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    print(done.stdout.rstrip() if done.returncode == 0 else f"device fit rows: failed:\n{done.stderr[-2000:]}")
    result["fit"] = json.loads(fit_target.read_text()) if fit_target.exists() else {"error": done.stderr[-2000:]}
    return result


def source_fingerprint() -> str:
    """SHA-256 of gpuloader's source files, to notice code that changes while the benchmark runs."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "gpuloader").rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def machine_info() -> dict[str, Any]:
    """CPU count, platform, package versions, git commit and date of this run."""
    versions = {}
    for package in ("numpy", "tensorflow", "tensorflow-cpu", "keras", "gpuloader", "matplotlib"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    cpu_model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": cpu_model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "git_commit": commit,
        "git_dirty": bool(dirty.strip()),
        "env": {name: os.environ.get(name) for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")},
    }


def write_chart(summary: list[dict[str, Any]], ratios: list[dict[str, Any]], path: Path, title: str) -> None:
    """Bars of median seconds per epoch (min-max over rounds), one panel per mode, speedups on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(dict.fromkeys(row["mode"] for row in summary))
    by_case = {(r["mode"], r["dataset"], r["baseline"]): r["speedup"] for r in ratios}
    figure, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4.5), squeeze=False)
    for axis, mode in zip(axes[0], modes):
        rows = [row for row in summary if row["mode"] == mode and "median_s" in row]
        datasets = list(dict.fromkeys(row["dataset"] for row in rows))
        names = list(cases.MODES[mode])
        width = 0.8 / len(names)
        for index, name in enumerate(names):
            picked = [next((r for r in rows if r["dataset"] == d and r["case"] == name), None) for d in datasets]
            xs = [d + (index - (len(names) - 1) / 2) * width for d in range(len(datasets))]
            heights = [r["median_s"] * 1000 if r else 0.0 for r in picked]
            errors = [
                [(r["median_s"] - r["min_s"]) * 1000 if r else 0.0 for r in picked],
                [(r["max_s"] - r["median_s"]) * 1000 if r else 0.0 for r in picked],
            ]
            axis.bar(xs, heights, width, yerr=errors, capsize=3, label=name)
            for x, height, dataset in zip(xs, heights, datasets):
                speedup = by_case.get((mode, dataset, name))
                if speedup is not None:
                    axis.annotate(
                        f"{speedup:.2f}x",
                        (x, height),
                        ha="center",
                        va="bottom",
                        fontsize=7,
                        xytext=(0, 4),
                        textcoords="offset points",
                    )
        axis.set_xticks(range(len(datasets)), datasets)
        if mode == "disk" and rows:
            axis.set_ylabel(f"ms per {rows[0]['batches']} cold batches (median; lower is better)")
        else:
            axis.set_ylabel("ms per epoch (median over rounds; lower is better)")
        axis.set_title(f"{mode}: label = baseline s / gpuloader s")
        axis.legend(fontsize=8)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=None, help="rounds of every case (default 5; 2 with --quick)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: {QUICK_ROWS} rows ({QUICK_DISK_ROWS} and {QUICK_DISK_BATCHES} batches for disk), "
        f"{QUICK_ROUNDS} rounds, 1 timed epoch, {QUICK_JOBS} processes at a time",
    )
    parser.add_argument(
        "--modes", default="epoch,fit,disk", help="comma-separated: epoch, fit, disk (default all three)"
    )
    parser.add_argument(
        "--datasets", default="mnist,cifar", help="comma-separated: mnist, cifar (default both; not for disk)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default bench/results)")
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help=f"case processes at a time (default 1; {QUICK_JOBS} with --quick); above 1 timings are not comparable",
    )
    parser.add_argument(
        "--disk-dir",
        type=Path,
        default=DEFAULT_DISK_DIR,
        help="disk mode: folder for its x.npy and y.npy, (over)written there and deleted at the end "
        "(default bench/results/disk_data)",
    )
    parser.add_argument(
        "--disk-rows",
        type=int,
        default=None,
        help=f"disk mode: rows of x.npy, 12 KiB each (default {DISK_ROWS}; {QUICK_DISK_ROWS} with --quick)",
    )
    parser.add_argument(
        "--disk-batches",
        type=int,
        default=None,
        help=f"disk mode: timed batches per epoch (default {DISK_BATCHES}; {QUICK_DISK_BATCHES} with --quick)",
    )
    parser.add_argument(
        "--keep-disk-data", action="store_true", help="disk mode: keep x.npy and y.npy (reused by the next run)"
    )
    args = parser.parse_args(argv)
    args.modes = _choices(parser, "--modes", args.modes, cases.MODES)
    args.datasets = _choices(parser, "--datasets", args.datasets, synthetic.SPECS)
    args.rounds = args.rounds or (QUICK_ROUNDS if args.quick else 5)
    args.jobs = args.jobs or (QUICK_JOBS if args.quick else 1)
    if args.rounds < 1 or args.jobs < 1:
        parser.error("--rounds and --jobs must be at least 1")
    args.disk_rows = args.disk_rows or (QUICK_DISK_ROWS if args.quick else DISK_ROWS)
    args.disk_batches = args.disk_batches or (QUICK_DISK_BATCHES if args.quick else DISK_BATCHES)
    if not 1 <= args.disk_batches <= args.disk_rows // synthetic.BATCH_SIZE:
        parser.error(f"--disk-batches must be in [1, --disk-rows / {synthetic.BATCH_SIZE}]")
    return args


def _choices(parser: argparse.ArgumentParser, flag: str, value: str, known: Any) -> list[str]:
    picked = [item.strip() for item in value.split(",") if item.strip()]
    unknown = [item for item in picked if item not in known]
    if unknown or not picked:
        parser.error(f"{flag}: unknown or empty {unknown or value!r}; choose from {', '.join(known)}")
    return picked


def prepare_disk(args: argparse.Namespace) -> dict[str, Any]:
    """Write (or reuse) the disk mode's ``.npy`` pair, check that eviction works, print both."""
    directory = args.disk_dir.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    x_path, y_path = (directory / name for name in synthetic.DISK_FILES)
    x_shape = (args.disk_rows, *synthetic.DISK_SAMPLE_SHAPE)
    reused = synthetic.npy_matches(x_path, x_shape, synthetic.DISK_DTYPE) and synthetic.npy_matches(
        y_path, (args.disk_rows,), "int32"
    )
    needed = synthetic.disk_nbytes(args.disk_rows)
    if not reused:
        present = sum(path.stat().st_size for path in (x_path, y_path) if path.exists())
        free = shutil.disk_usage(directory).free + present
        if free < needed + DISK_SPACE_MARGIN:
            raise SystemExit(
                f"disk mode: {directory} has {free / 1e9:.1f} GB free, the files need {needed / 1e9:.2f} GB "
                "plus 1 GB of margin; pass --disk-dir elsewhere or a smaller --disk-rows"
            )
    start = time.perf_counter()
    try:
        synthetic.write_npy(directory, args.disk_rows)
    except BaseException:
        if not args.keep_disk_data:
            remove_disk_data(directory)  # no half-written files left behind
        raise
    write_s = time.perf_counter() - start
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    file_bytes = x_path.stat().st_size + y_path.stat().st_size
    print(
        f"disk mode: x.npy {args.disk_rows} x {synthetic.DISK_SAMPLE_SHAPE[0]} {synthetic.DISK_DTYPE} + y.npy "
        f"int32 = {file_bytes / 1e9:.2f} GB in {directory} ({'reused' if reused else f'written in {write_s:.1f} s'}); "
        f"RAM {ram / 1e9:.1f} GB, so the files fit in the page cache: every epoch is made cold by eviction"
    )
    print(f"page cache: {pagecache.METHOD} before each epoch (warm-up included); /proc/sys/vm/drop_caches not used")
    evidence = pagecache.check_eviction(
        x_path, [x_path, y_path], min(EVICTION_CHECK_BATCHES, args.disk_batches), synthetic.BATCH_SIZE
    )
    print("page-cache check (driver process):")
    print(format_eviction(evidence))
    return {
        "dir": str(directory),
        "rows": args.disk_rows,
        "sample_shape": list(synthetic.DISK_SAMPLE_SHAPE),
        "dtype": synthetic.DISK_DTYPE,
        "file_bytes": file_bytes,
        "ram_bytes": ram,
        "reused": reused,
        "write_s": write_s,
        "batches_per_epoch": args.disk_batches,
        "warmup_batches": min(args.disk_batches, cases.DISK_WARMUP_BATCHES),
        "gpuloader_workers": cases.DISK_WORKERS,
        "gpuloader_max_queue_size": cases.DISK_MAX_QUEUE,
        "page_cache": f"{pagecache.METHOD} before each epoch",
        "page_cache_check": evidence,
    }


def remove_disk_data(directory: Path) -> None:
    """Delete the disk mode's files, and their folder when that leaves it empty."""
    for name in synthetic.DISK_FILES:
        (directory / name).unlink(missing_ok=True)
    try:
        directory.rmdir()
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    machine = machine_info()
    fingerprint = source_fingerprint()
    rows = QUICK_ROWS if args.quick else None
    epochs = {mode: 1 if args.quick else TIMED_EPOCHS[mode] for mode in args.modes}
    datasets = {mode: [cases.DISK_DATASET] if mode == "disk" else args.datasets for mode in args.modes}
    plan = [(mode, dataset, case) for mode in args.modes for dataset in datasets[mode] for case in cases.MODES[mode]]
    in_ram = [mode for mode in args.modes if mode != "disk"]
    sizes = "; " + ", ".join(f"{name} {rows or synthetic.SPECS[name].rows} rows" for name in args.datasets)
    print(
        f"gpuloader host benchmark: {len(plan)} cases x {args.rounds} rounds, each case in its own process "
        f"({args.jobs} at a time{'; disk cases 1 at a time' if 'disk' in args.modes and args.jobs > 1 else ''}); "
        f"batch {synthetic.BATCH_SIZE}{sizes if in_ram else ''}"
    )
    per_process = [f"1 warm-up epoch + {epochs[m]} timed epochs ({m} mode)" for m in in_ram]
    if "disk" in args.modes:
        per_process.append(
            f"a {min(args.disk_batches, cases.DISK_WARMUP_BATCHES)}-batch warm-up + {epochs['disk']} timed epochs "
            f"of their first {args.disk_batches} batches ({args.disk_batches * synthetic.BATCH_SIZE} of "
            f"{args.disk_rows} rows, the same for every case; disk mode)"
        )
    print("per process: " + "; ".join(per_process))
    if args.quick or args.jobs > 1:
        print("note: a smoke run (small data or parallel processes); its timings are not meaningful")

    disk: dict[str, Any] | None = None
    disk_args: list[str] = []
    raw: dict[Key, list[dict[str, Any]]] = {key: [] for key in plan}
    failures = 0
    try:
        if "disk" in args.modes:
            disk = prepare_disk(args)
            disk_args = ["--disk-dir", disk["dir"], "--batches", str(args.disk_batches)]

        def run(key: Key) -> dict[str, Any]:
            mode, dataset, case = key
            if mode == "disk":
                return run_case(case, dataset, mode, None, epochs[mode], disk_args)
            return run_case(case, dataset, mode, rows, epochs[mode])

        # Disk cases run alone: another process's mapped pages could not be evicted.
        parallel = [key for key in plan if key[0] != "disk"]
        alone = [key for key in plan if key[0] == "disk"]
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for round_index in range(args.rounds):
                round_start = time.perf_counter()
                results = dict(zip(parallel, pool.map(run, parallel)))
                results.update((key, run(key)) for key in alone)
                for key in plan:
                    result = results[key]
                    result["round"] = round_index + 1
                    raw[key].append(result)
                    if "error" in result:
                        failures += 1
                        print(f"FAILED {' '.join(key)} (round {round_index + 1}): {result['error']}")
                print(f"round {round_index + 1}/{args.rounds} done in {time.perf_counter() - round_start:.0f} s")
    finally:
        if disk is not None and not args.keep_disk_data:
            remove_disk_data(Path(disk["dir"]))
    if disk is not None:
        disk["kept"] = args.keep_disk_data

    source = {"gpuloader_sha256_at_start": fingerprint, "gpuloader_sha256_at_end": source_fingerprint()}
    if source["gpuloader_sha256_at_start"] != source["gpuloader_sha256_at_end"]:
        print("WARNING: gpuloader/ changed while the benchmark ran; its rounds measured different code")
    summary = summarise(plan, raw)
    ratios = speedups(summary)
    checks = check_targets(ratios)
    print()
    print(format_table(summary, ratios))
    print()
    if disk is not None:
        print(
            f"disk mode, memory and I/O per epoch of {args.disk_batches} batches (medians over rounds; memory: "
            "each round's worst epoch):\n"
            "  peak RssAnon = highest RssAnon sampled after any batch minus RssAnon before the epoch\n"
            "  VmHWM = peak resident set of the process (VmRSS: anonymous + file pages, mapped file pages "
            "included)" + (", reset before each epoch" if _all_reset(summary) else ", over its life") + "\n"
            "  peak RssFile = file pages mapped (memory maps, libraries); read/epoch = bytes read from storage "
            "(/proc/self/io)\n"
            "  CPU s = user + system seconds of the process per epoch (sys: system alone; 2 cores = 2 s per s); "
            "cached at start = bytes of the files still cached after the eviction (worst epoch)"
        )
        print(format_disk_table(summary))
        print(
            f"  rows asked for per epoch: {_mb(args.disk_batches * synthetic.BATCH_SIZE * _disk_row_bytes(disk))}; "
            f"files: {_mb(disk['file_bytes'])}; page cache: {disk['page_cache']}"
        )
        print()
    print("targets (speedup = baseline s / gpuloader s, medians of this run):")
    print(format_targets(checks))
    print()

    args.out.mkdir(parents=True, exist_ok=True)
    device = device_rows(args.out, args.quick)
    total_s = time.perf_counter() - started
    report = {
        "config": {
            "rounds": args.rounds,
            "quick": args.quick,
            "jobs": args.jobs,
            "modes": args.modes,
            "datasets": args.datasets,
            "rows": rows,
            "batch_size": synthetic.BATCH_SIZE,
            "warmup_epochs": 1,
            "timed_epochs": epochs,
            "cases": {mode: list(cases.MODES[mode]) for mode in args.modes},
        },
        "machine": machine,
        "source": source,
        "disk": disk,
        "summary": summary,
        "speedups": ratios,
        "targets": checks,
        "device": device,
        "raw": [{"mode": m, "dataset": d, "case": c, "rounds": raw[m, d, c]} for m, d, c in plan],
        "failures": failures,
        "total_s": total_s,
    }
    json_path, png_path = args.out / "bench.json", args.out / "bench.png"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    title = (
        f"gpuloader host benchmark, {machine['date']}, {machine['cpu_count']} CPUs, "
        f"{args.rounds} rounds{' (quick)' if args.quick else ''}"
    )
    write_chart(summary, ratios, png_path, title)
    print(f"wrote {json_path} and {png_path}; total {time.perf_counter() - started:.0f} s")
    return 1 if failures else 0


def _all_reset(summary: list[dict[str, Any]]) -> bool:
    return all(row.get("vm_hwm_reset", True) for row in summary if row["mode"] == "disk")


def _disk_row_bytes(disk: dict[str, Any]) -> int:
    return int(disk["file_bytes"] // disk["rows"])


if __name__ == "__main__":
    sys.exit(main())
