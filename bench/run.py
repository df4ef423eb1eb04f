"""Host benchmark of gpuloader against named baselines (``make bench``, ``make bench-full``).

Usage: ``python bench/run.py [--profile quick|full|smoke] [--rounds N] [--modes epoch,fit,disk,digits]
[--datasets mnist,cifar] [--out DIR] [--jobs N] [--disk-dir DIR] [--disk-rows N]
[--disk-batches B] [--keep-disk-data]``

Profiles (``PROFILES``): ``quick`` (the default, ``make bench``: about 5 minutes
on a 2-core machine) and ``full`` (``make bench-full``: the long version the
README's figures come from: 3 rounds, fresh interpreters, about 30 minutes)
run the same peers in every mode they run. Quick runs 2 rounds, fewer timed
epochs, the ``fit`` mode on mnist only with ``steps_per_execution=32`` for its
three strongest cases only (arrays, tfdata_fast, gpuloader), a 403 MB disk file,
and forks its case processes from ``bench/zygote.py`` (a process that imported
TensorFlow, Keras and gpuloader and ran nothing) instead of starting a fresh
interpreter for each, which saves about 4 s of imports per case. ``smoke`` is
a check of the machinery (small data, 1 epoch, 2 processes at a time); its
timings mean nothing.

Every case runs in a process of its own (``bench/cases.py``), and the cases are
interleaved across rounds (round 1: A B C D, round 2: A B C D, ...): after
``tf.data`` has run in a process, later work there runs about 2x slower
(shared/notes/pitfalls.md, item 5). A case's figure for one round is the median
of its timed epochs; its reported figure is the median over rounds. Speedups
are ``baseline seconds / gpuloader seconds`` from the medians of the same run,
against the gpuloader case of the same kind (``X@spe32`` against
``gpuloader@spe32``; on disk, one reader thread against one, four against four).
Targets against tf.data take the stronger (faster) of its two forms. Progress
(case k of n, elapsed, estimated time left) is printed as cases finish; the run
ends with one summary table of every target.

Mode ``disk`` reads a ``.npy`` pair from storage (``x`` float32 rows of 3072
values, 12 KiB a row, and int32 labels; 200000 rows, 2.46 GB, in the full
profile), written once per run into ``--disk-dir`` (default
``bench/results/disk_data``, git-ignored) in chunks, reused by every round and
deleted at the end unless ``--keep-disk-data``. Its cases (``cases.DISK_CASES``)
time full epochs (``--disk-batches`` to time only the first B batches), and
before every epoch each case evicts the files from the page cache with
``posix_fadvise(POSIX_FADV_DONTNEED)`` (``bench/pagecache.py``), so every epoch
starts cold. The file fits in RAM, so within an epoch the pages the kernel reads
around a fault stay cached for later batches (the regime that favours
read-around). The driver checks once that the eviction works (cached bytes by
``mincore``, the same batches cold then warm) and prints the evidence, and a
table of peak memory per case. Disk cases always run one at a time, whatever
``--jobs``: a page another process maps cannot be evicted.

Mode ``digits``: scikit-learn's ``load_digits`` (shipped in its wheel; nothing is
downloaded), a small network trained through each loader; held-out accuracy
side by side and seconds per epoch (``bench/digits.py``).

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
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
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

CASE_TIMEOUT_S = 600
DEFAULT_DISK_DIR = DEFAULT_OUT / "disk_data"
EVICTION_CHECK_BATCHES = 50
DISK_SPACE_MARGIN = 1 << 30
QUICK_FIT_CASES = ("seed", "arrays", "tfdata", "tfdata_fast", "gpuloader", *(
    f"{case}@spe{cases.SPE}" for case in ("arrays", "tfdata_fast", "gpuloader")
))


@dataclass(frozen=True)
class Profile:
    """What one kind of run does: rounds, timed epochs per mode, datasets, cases and disk file."""

    rounds: int
    epochs: dict[str, int]
    datasets: dict[str, tuple[str, ...]]
    disk_rows: int
    disk_batches: int = 0  # 0: full epochs
    rows: int | None = None  # None: the datasets' real sizes
    jobs: int = 1
    spawn: str = "fresh"  # "fork": case processes forked by bench/zygote.py; "fresh": new interpreters
    case_lists: dict[str, tuple[str, ...]] = field(default_factory=dict)  # per mode; default cases.MODES
    about: str = ""


BOTH = ("mnist", "cifar")
PROFILES = {
    "quick": Profile(
        rounds=2,
        epochs={"epoch": 8, "fit": 4, "disk": 2, "digits": 8},
        datasets={"epoch": BOTH, "fit": ("mnist",)},
        disk_rows=32_768,  # 403 MB
        case_lists={"fit": QUICK_FIT_CASES},
        spawn="fork",
        about="about 5 minutes on 2 cores",
    ),
    "full": Profile(
        rounds=3,
        epochs={"epoch": 30, "fit": 12, "disk": 2, "digits": 20},
        datasets={"epoch": BOTH, "fit": BOTH},
        disk_rows=200_000,  # 2.46 GB
        about="about 30 minutes on 2 cores",
    ),
    "smoke": Profile(
        rounds=2,
        epochs={"epoch": 1, "fit": 1, "disk": 1, "digits": 2},
        datasets={"epoch": BOTH, "fit": BOTH},
        disk_rows=16_384,
        disk_batches=16,
        rows=4096,
        jobs=2,
        about="a check of the machinery; timings mean nothing",
    ),
}

# Minimum speedup of gpuloader over a baseline: baseline seconds / gpuloader seconds.
# (mode, gpuloader case, baselines: the target is met against the fastest of them, minimum)
TARGETS: list[tuple[str, str, tuple[str, ...], float]] = [
    ("epoch", "gpuloader", ("seed",), 1.5),
    ("epoch", "gpuloader", ("tfdata", "tfdata_fast"), 3.0),
    ("epoch", "gpuloader", ("gather",), 0.75),
    ("fit", "gpuloader", ("seed",), 1.4),
    ("fit", "gpuloader", ("arrays",), 1.3),
    ("fit", "gpuloader", ("tfdata", "tfdata_fast"), 1.2),
    ("disk", "gpuloader1", ("seed",), 2.0),  # one reader thread each
    ("disk", "gpuloader", ("seed_workers",), 2.0),  # four each
    ("disk", "gpuloader", ("gpuloader1",), 1.0),  # more threads never slower (issue 11.3)
]
DIGITS_ACCURACY_SPREAD = 0.03  # held-out accuracies of the digits cases agree within this (11 of 359 images)
DISK_PAIRS = (
    ("gpuloader1", "seed"), ("gpuloader", "seed_workers"), ("gpuloader1", "tfdata"), ("gpuloader", "gpuloader1")
)


def case_env() -> dict[str, str]:
    """The environment of a case process: TensorFlow quiet, Keras on TensorFlow, the rest inherited."""
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["KERAS_BACKEND"] = "tensorflow"
    return env


class Zygote:
    """``bench/zygote.py``: a process that imported the libraries once and forks one child per case."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(BENCH_DIR / "zygote.py")],
            cwd=ROOT, env=case_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None
        ready = self.process.stdout.readline()
        if not ready.startswith("{"):
            raise RuntimeError("bench/zygote.py did not start (run it alone to see why)")
        self.import_s = json.loads(ready)["import_s"]

    def run(self, argv: list[str]) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"argv": argv, "timeout": CASE_TIMEOUT_S}) + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def run_case(
    case: str, dataset: str, mode: str, rows: int | None, epochs: int, extra: list[str] | None = None,
    zygote: Zygote | None = None,
) -> dict[str, Any]:
    """Run one case in a process of its own; return its JSON, or ``{"error": ...}`` when it failed.

    A fresh interpreter, or a child forked by ``zygote`` (never for the bare
    NumPy gather, whose process must not have TensorFlow imported).
    """
    argv = [case, dataset, mode, "--epochs", str(epochs)]
    if rows is not None:
        argv += ["--rows", str(rows)]
    argv += extra or []
    start = time.perf_counter()
    if zygote is not None and case != "gather":
        reply = zygote.run(argv)
        code, stdout, stderr, spawn = reply["rc"], reply["stdout"], reply["stderr"], "fork"
        if code == "timeout":
            return {"error": f"timed out after {CASE_TIMEOUT_S} s"}
    else:
        command = [sys.executable, str(BENCH_DIR / "cases.py"), *argv]
        try:
            done = subprocess.run(
                command, cwd=ROOT, env=case_env(), capture_output=True, text=True, timeout=CASE_TIMEOUT_S
            )
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {CASE_TIMEOUT_S} s"}
        code, stdout, stderr, spawn = done.returncode, done.stdout, done.stderr, "fresh"
    process_s = time.perf_counter() - start
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if code != 0 or not lines:
        tail = "\n".join(stderr.strip().splitlines()[-15:])
        return {"error": f"exit status {code}:\n{tail}"}
    result = json.loads(lines[-1])
    result["process_s"] = process_s
    result["spawn"] = spawn
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
                row.update(_disk_figures(good), full_epoch=bool(good[0].get("full_epoch")))
            if mode == "digits":
                accuracy = [result["test_accuracy"] for result in good]
                row.update(
                    test_accuracy=statistics.median(accuracy),
                    test_accuracy_per_round=accuracy,
                    epochs=good[0]["epochs"],
                )
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


def pairs(mode: str, names: list[str]) -> list[tuple[str, str]]:
    """(gpuloader case, baseline) pairs of a mode: each baseline against gpuloader of the same kind."""
    if mode == "disk":
        return [pair for pair in DISK_PAIRS if pair[0] in names and pair[1] in names]
    found = []
    for name in names:
        base, spe = cases.split_case(name)
        reference = GPULOADER if spe == 1 else f"{GPULOADER}@spe{spe}"
        if base != GPULOADER and reference in names:
            found.append((reference, name))
    return found


def speedups(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every (gpuloader case, baseline) pair of the same mode and dataset: baseline_s / gpuloader_s."""
    medians = {(row["mode"], row["dataset"], row["case"]): row.get("median_s") for row in summary}
    groups = dict.fromkeys((row["mode"], row["dataset"]) for row in summary)
    ratios = []
    for mode, dataset in groups:
        names = [case for (m, d, case) in medians if (m, d) == (mode, dataset)]
        for reference, baseline in pairs(mode, names):
            baseline_s, gpuloader_s = medians[mode, dataset, baseline], medians[mode, dataset, reference]
            ratio = baseline_s / gpuloader_s if baseline_s and gpuloader_s else None
            ratios.append(
                {
                    "mode": mode,
                    "dataset": dataset,
                    "gpuloader_case": reference,
                    "baseline": baseline,
                    "baseline_s": baseline_s,
                    "gpuloader_s": gpuloader_s,
                    "speedup": ratio,
                }
            )
    return ratios


def check_targets(summary: list[dict[str, Any]], plan_modes: dict[str, list[str]]) -> list[dict[str, Any]]:
    """MET / MISSED of every target of the modes run (MISSING when a case failed or did not run).

    A target with several baselines (tf.data's idiom and its fast form) is
    checked against the fastest of them: the stronger peer.
    """
    medians = {(row["mode"], row["dataset"], row["case"]): row.get("median_s") for row in summary}
    checks = []
    for mode, reference, baselines, minimum in TARGETS:
        for dataset in plan_modes.get(mode, []):
            gpuloader_s = medians.get((mode, dataset, reference))
            timed = {name: medians.get((mode, dataset, name)) for name in baselines}
            present = {name: seconds for name, seconds in timed.items() if seconds}
            strongest = min(present, key=present.__getitem__) if present else None
            ratio = present[strongest] / gpuloader_s if strongest and gpuloader_s else None
            status = "MISSING" if ratio is None else "met" if ratio >= minimum else "MISSED"
            checks.append(
                {
                    "mode": mode,
                    "dataset": dataset,
                    "gpuloader_case": reference,
                    "baselines": list(baselines),
                    "baseline": strongest or "/".join(baselines),
                    "baseline_s": present.get(strongest) if strongest else None,
                    "gpuloader_s": gpuloader_s,
                    "speedup": ratio,
                    "target": minimum,
                    "status": status,
                }
            )
    accuracies = [row["test_accuracy"] for row in summary if row["mode"] == "digits" and "test_accuracy" in row]
    if "digits" in plan_modes:
        spread = max(accuracies) - min(accuracies) if len(accuracies) > 1 else None
        checks.append(
            {
                "mode": "digits",
                "dataset": cases.DIGITS_DATASET,
                "gpuloader_case": GPULOADER,
                "baselines": [row["case"] for row in summary if row["mode"] == "digits"],
                "baseline": "every case",
                "accuracy_spread": spread,
                "target": DIGITS_ACCURACY_SPREAD,
                "status": "MISSING" if spread is None else "met" if spread <= DIGITS_ACCURACY_SPREAD else "MISSED",
            }
        )
    return checks


def format_table(summary: list[dict[str, Any]], ratios: list[dict[str, Any]]) -> str:
    """The results as a fixed-width table, one row per case, with gpuloader's speedup over it."""
    by_case = {(r["mode"], r["dataset"], r["baseline"]): r for r in ratios}
    header = (
        f"{'mode':<6} {'dataset':<7} {'case':<18} {'median s':>9} {'min s':>9} {'max s':>9} "
        f"{'batches/s':>10}  gpuloader speedup"
    )
    lines = [header, "-" * (len(header) + 6)]
    for row in summary:
        key = (row["mode"], row["dataset"], row["case"])
        if "median_s" not in row:
            lines.append(f"{key[0]:<6} {key[1]:<7} {key[2]:<18} {'failed':>9}")
            continue
        ratio = by_case.get(key)
        if ratio is None:
            shown = "-"
        elif ratio["speedup"] is None:
            shown = "n/a"
        else:
            shown = f"{ratio['speedup']:.2f}x" + (
                f" ({ratio['gpuloader_case']})" if ratio["gpuloader_case"] != GPULOADER else ""
            )
        lines.append(
            f"{key[0]:<6} {key[1]:<7} {key[2]:<18} {row['median_s']:>9.4f} {row['min_s']:>9.4f} "
            f"{row['max_s']:>9.4f} {row['batches_per_s']:>10.0f}  {shown}"
        )
    return "\n".join(lines)


def format_digits_table(summary: list[dict[str, Any]], ratios: list[dict[str, Any]]) -> str:
    """Held-out accuracy and seconds per epoch of the digits cases."""
    rows = [row for row in summary if row["mode"] == "digits" and "median_s" in row]
    by_case = {r["baseline"]: r["speedup"] for r in ratios if r["mode"] == "digits"}
    header = f"{'case':<10} {'test accuracy':>13} {'per round':>22} {'s/epoch':>8} {'gpuloader speedup':>18}"
    lines = [header, "-" * len(header)]
    for row in rows:
        per_round = ", ".join(f"{a:.3f}" for a in row["test_accuracy_per_round"])
        speedup = by_case.get(row["case"])
        shown = "-" if speedup is None else f"{speedup:.2f}x"
        lines.append(
            f"{row['case']:<10} {row['test_accuracy']:>13.3f} {per_round:>22} {row['median_s']:>8.3f} {shown:>18}"
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
    """The summary: one line per target, met or missed, with the ratio (baseline s / gpuloader s)."""
    header = f"{'mode':<6} {'dataset':<7} {'gpuloader vs':<46} {'ratio':>7} {'target':>9}  result"
    lines = [header, "-" * (len(header) + 2)]
    for check in checks:
        if check["mode"] == "digits":
            spread = check["accuracy_spread"]
            shown = "n/a" if spread is None else f"{spread:.3f}"
            versus, bound = "held-out accuracy spread over cases", f"<= {check['target']:g}"
        else:
            versus = check["baseline"]
            if len(check["baselines"]) > 1:
                versus = f"{'/'.join(check['baselines'])} (stronger: {check['baseline']})"
            if check["gpuloader_case"] != GPULOADER:
                versus = f"{versus} [{check['gpuloader_case']}]"
            shown = "n/a" if check["speedup"] is None else f"{check['speedup']:.2f}x"
            bound = f">= {check['target']:g}x"
        lines.append(f"{check['mode']:<6} {check['dataset']:<7} {versus:<46} {shown:>7} {bound:>9}  {check['status']}")
    met = sum(check["status"] == "met" for check in checks)
    lines.append(f"{met} of {len(checks)} targets met")
    return "\n".join(lines)


def augment_rows(out: Path, profile: str) -> dict[str, Any]:
    """Run ``bench/augment.py`` (issue 12's host rows: augmented epoch against the plain one, tf.data and
    Keras layers; in the full profile the fit rows too) in processes of its own, and print its tables."""
    if profile == "smoke":
        return {"skipped": "smoke profile"}
    rounds = "3" if profile == "full" else "2"
    command = [sys.executable, str(BENCH_DIR / "augment.py"), "--out", str(out), "--rounds", rounds]
    if profile != "full":
        command += ["--mode", "epoch", "--epochs", "3"]
    print("augmentation rows (bench/augment.py):", flush=True)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    target = out / "augment.json"
    if done.returncode != 0 or not target.exists():
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        print(f"augmentation rows: failed (exit status {done.returncode}):\n{tail}")
        return {"error": f"exit status {done.returncode}", "tail": tail}
    tables = done.stdout[done.stdout.find("Host epochs") :] if "Host epochs" in done.stdout else done.stdout
    print(tables.rstrip())
    return json.loads(target.read_text())


def format_augment_targets(augmented: dict[str, Any]) -> str:
    """The augmentation targets as summary lines (ratios of medians; a figure where there is no target)."""
    lines = []
    for check in augmented.get("targets", []):
        verdict = "figure" if check["met"] is None else "met" if check["met"] else "MISSED"
        lines.append(f"augment {check['ratio']:<52} {check['value']:7.2f}x {check['target']:>9}  {verdict}")
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
    for package in ("numpy", "tensorflow", "tensorflow-cpu", "keras", "gpuloader", "matplotlib", "scikit-learn"):
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
        "loadavg_start": list(os.getloadavg()),
    }


def write_chart(summary: list[dict[str, Any]], ratios: list[dict[str, Any]], path: Path, title: str) -> None:
    """Bars of median seconds per epoch (min-max over rounds), one panel per mode, speedups on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(dict.fromkeys(row["mode"] for row in summary))
    by_case = {(r["mode"], r["dataset"], r["baseline"]): r["speedup"] for r in ratios}
    columns = min(2, len(modes))
    lines = -(-len(modes) // columns)
    figure, axes = plt.subplots(lines, columns, figsize=(7 * columns, 4.8 * lines), squeeze=False)
    for axis in axes.flat[len(modes) :]:
        axis.set_visible(False)
    for axis, mode in zip(axes.flat, modes):
        rows = [row for row in summary if row["mode"] == mode and "median_s" in row]
        datasets = list(dict.fromkeys(row["dataset"] for row in rows))
        names = list(dict.fromkeys(row["case"] for row in rows))
        width = 0.8 / max(1, len(names))
        for index, name in enumerate(names):
            picked = [next((r for r in rows if r["dataset"] == d and r["case"] == name), None) for d in datasets]
            xs = [d + (index - (len(names) - 1) / 2) * width for d in range(len(datasets))]
            heights = [r["median_s"] * 1000 if r else 0.0 for r in picked]
            errors = [
                [(r["median_s"] - r["min_s"]) * 1000 if r else 0.0 for r in picked],
                [(r["max_s"] - r["median_s"]) * 1000 if r else 0.0 for r in picked],
            ]
            axis.bar(xs, heights, width, yerr=errors, capsize=3, label=name)
            for x, height, dataset, row in zip(xs, heights, datasets, picked):
                speedup = by_case.get((mode, dataset, name))
                label = None if speedup is None else f"{speedup:.2f}x"
                if mode == "digits" and row is not None:
                    label = f"acc {row['test_accuracy']:.3f}"
                if label is not None:
                    axis.annotate(
                        label,
                        (x, height),
                        ha="center",
                        va="bottom",
                        fontsize=7,
                        xytext=(0, 4),
                        textcoords="offset points",
                    )
        axis.set_xticks(range(len(datasets)), datasets)
        if mode == "disk" and rows:
            what = f"cold epoch of {rows[0]['batches']} batches" if rows[0].get("full_epoch") else (
                f"{rows[0]['batches']} cold batches"
            )
            axis.set_ylabel(f"ms per {what} (median; lower is better)")
        elif mode == "digits":
            axis.set_ylabel("ms per epoch of fit (median; lower is better)")
        else:
            axis.set_ylabel("ms per epoch (median over rounds; lower is better)")
        axis.set_title(
            f"{mode}: label = held-out accuracy" if mode == "digits" else f"{mode}: label = baseline s / gpuloader s"
        )
        axis.legend(fontsize=7)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="quick",
        help="; ".join(f"{name}: {profile.about}" for name, profile in PROFILES.items()) + " (default quick)",
    )
    parser.add_argument("--rounds", type=int, default=None, help="rounds of every case (default: the profile's)")
    parser.add_argument(
        "--modes", default="epoch,fit,disk,digits", help="comma-separated: epoch, fit, disk, digits (default all)"
    )
    parser.add_argument(
        "--datasets",
        default=None,
        help="comma-separated: mnist, cifar, for the epoch and fit modes (default: the profile's)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default bench/results)")
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="case processes at a time (default: the profile's, 1 but for smoke); above 1 timings are not comparable",
    )
    parser.add_argument(
        "--disk-dir",
        type=Path,
        default=DEFAULT_DISK_DIR,
        help="disk mode: folder for its x.npy and y.npy, (over)written there and deleted at the end "
        "(default bench/results/disk_data)",
    )
    parser.add_argument(
        "--disk-rows", type=int, default=None, help="disk mode: rows of x.npy, 12 KiB each (default: the profile's)"
    )
    parser.add_argument(
        "--disk-batches",
        type=int,
        default=None,
        help="disk mode: timed batches per epoch, 0 for full epochs (default: the profile's; 0 but for smoke)",
    )
    parser.add_argument(
        "--keep-disk-data", action="store_true", help="disk mode: keep x.npy and y.npy (reused by the next run)"
    )
    parser.add_argument(
        "--spawn",
        choices=("fork", "fresh"),
        default=None,
        help="case processes forked by bench/zygote.py after its imports (quick's default) or fresh "
        "interpreters (full's default); always fresh with --jobs above 1",
    )
    args = parser.parse_args(argv)
    profile = PROFILES[args.profile]
    args.modes = _choices(parser, "--modes", args.modes, cases.MODES)
    chosen = None if args.datasets is None else _choices(parser, "--datasets", args.datasets, synthetic.SPECS)
    args.datasets = {
        mode: [cases.DISK_DATASET] if mode == "disk" else [cases.DIGITS_DATASET] if mode == "digits"
        else list(chosen or profile.datasets[mode])
        for mode in args.modes
    }
    args.rounds = args.rounds or profile.rounds
    args.jobs = args.jobs or profile.jobs
    if args.rounds < 1 or args.jobs < 1:
        parser.error("--rounds and --jobs must be at least 1")
    args.disk_rows = args.disk_rows or profile.disk_rows
    args.disk_batches = profile.disk_batches if args.disk_batches is None else args.disk_batches
    full = -(-args.disk_rows // synthetic.BATCH_SIZE)
    if not 0 <= args.disk_batches <= full:
        parser.error(f"--disk-batches must be in [0, {full}] for {args.disk_rows} rows (0: full epochs)")
    args.disk_batches = args.disk_batches or full
    args.full_disk_epochs = args.disk_batches == full
    args.epochs = {mode: profile.epochs[mode] for mode in args.modes}
    args.cases = {mode: list(profile.case_lists.get(mode, cases.MODES[mode])) for mode in args.modes}
    args.rows = profile.rows
    args.spawn = "fresh" if args.jobs > 1 else args.spawn or profile.spawn
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
        "full_epochs": args.full_disk_epochs,
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


class Progress:
    """Prints "case k of n, elapsed, estimated time left" as case processes finish.

    The estimate of a case not yet run: its own duration in an earlier round,
    else the mean of its mode's cases so far, else the mean of all so far (8 s
    before any has finished).
    """

    def __init__(self, plan: list[Key], rounds: int, started: float) -> None:
        self.todo = [(round_index, key) for round_index in range(rounds) for key in plan]
        self.total = len(self.todo)
        self.started = started
        self.seconds: dict[Key, list[float]] = {}
        self.done = 0

    def _guess(self, key: Key) -> float:
        own = self.seconds.get(key)
        if own:
            return statistics.mean(own)
        mode = [s for (m, _, _), values in self.seconds.items() if m == key[0] for s in values]
        every = [s for values in self.seconds.values() for s in values]
        return statistics.mean(mode or every or [8.0])

    def finished(self, round_index: int, key: Key, result: dict[str, Any]) -> None:
        self.done += 1
        self.todo.remove((round_index, key))
        seconds = result.get("process_s", 0.0)
        self.seconds.setdefault(key, []).append(seconds)
        left = sum(self._guess(other) for _, other in self.todo)
        elapsed = time.perf_counter() - self.started
        if "error" in result:
            figure = "FAILED"
        elif key[0] == "digits":
            figure = f"{result['median_s']:.3f} s/epoch, held-out accuracy {result['test_accuracy']:.3f}"
        elif key[0] == "disk":
            figure = f"{result['batches'] / result['median_s']:.0f} batches/s"
        else:
            figure = f"{result['median_s'] * 1000:.1f} ms/epoch"
        print(
            f"[{self.done:>3}/{self.total}] round {round_index + 1} {key[0]:<6} {key[1]:<6} {key[2]:<18} "
            f"{figure:<44} ({seconds:4.1f} s)  elapsed {_clock(elapsed)}, about {_clock(left)} left",
            flush=True,
        )


def _clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    machine = machine_info()
    fingerprint = source_fingerprint()
    rows, epochs = args.rows, args.epochs
    plan: list[Key] = [
        (mode, dataset, case) for mode in args.modes for dataset in args.datasets[mode] for case in args.cases[mode]
    ]
    in_ram = [mode for mode in args.modes if mode in ("epoch", "fit")]
    ram_sets = sorted({name for mode in in_ram for name in args.datasets[mode]})
    sizes = ", ".join(f"{name} {rows or synthetic.SPECS[name].rows} rows" for name in ram_sets)
    print(
        f"gpuloader host benchmark, profile {args.profile}: {len(plan)} cases x {args.rounds} rounds = "
        f"{len(plan) * args.rounds} processes, each case in its own process, interleaved "
        f"({args.jobs} at a time{'; disk cases 1 at a time' if 'disk' in args.modes and args.jobs > 1 else ''}); "
        f"batch {synthetic.BATCH_SIZE}{'; ' + sizes if in_ram else ''}"
    )
    for mode in args.modes:
        shown = ", ".join(args.datasets[mode])
        print(f"  {mode:<6} on {shown}: {', '.join(args.cases[mode])}")
    per_process = [f"1 warm-up epoch + {epochs[m]} timed epochs ({m})" for m in in_ram]
    if "disk" in args.modes:
        what = "full epochs" if args.full_disk_epochs else f"epochs of their first {args.disk_batches} batches"
        per_process.append(
            f"a {min(args.disk_batches, cases.DISK_WARMUP_BATCHES)}-batch warm-up + {epochs['disk']} timed {what} "
            f"({args.disk_batches} batches, {min(args.disk_batches * synthetic.BATCH_SIZE, args.disk_rows)} of "
            f"{args.disk_rows} rows; disk)"
        )
    if "digits" in args.modes:
        per_process.append(f"{epochs['digits']} epochs of fit, the first left out of the median (digits)")
    print("per process: " + "; ".join(per_process))
    print(f"load average at start: {', '.join(f'{v:.2f}' for v in machine['loadavg_start'])} ({os.cpu_count()} CPUs)")
    if args.profile == "smoke" or args.jobs > 1:
        print("note: a smoke run (small data or parallel processes); its timings are not meaningful")

    disk: dict[str, Any] | None = None
    disk_args: list[str] = []
    raw: dict[Key, list[dict[str, Any]]] = {key: [] for key in plan}
    failures = 0
    zygote: Zygote | None = None
    try:
        if "disk" in args.modes:
            disk = prepare_disk(args)
            disk_args = ["--disk-dir", disk["dir"], "--batches", str(args.disk_batches)]
        digits_args: list[str] = []
        if "digits" in args.modes:
            import digits

            digits_args = ["--digits-file", str(digits.write_cache(args.out / "digits_split.npz"))]
        if args.spawn == "fork":
            zygote = Zygote()
            print(f"case processes: forked by bench/zygote.py, which imported the libraries in {zygote.import_s:.1f} s")
        else:
            print("case processes: fresh interpreters")
        progress = Progress(plan, args.rounds, started)

        def run(key: Key) -> dict[str, Any]:
            mode, dataset, case = key
            if mode == "disk":
                return run_case(case, dataset, mode, None, epochs[mode], disk_args, zygote)
            if mode == "digits":
                return run_case(case, dataset, mode, None, epochs[mode], digits_args, zygote)
            return run_case(case, dataset, mode, rows, epochs[mode], zygote=zygote)

        def record(round_index: int, key: Key, result: dict[str, Any]) -> None:
            nonlocal failures
            result["round"] = round_index + 1
            raw[key].append(result)
            progress.finished(round_index, key, result)
            if "error" in result:
                failures += 1
                print(f"FAILED {' '.join(key)} (round {round_index + 1}): {result['error']}")

        # Disk cases run alone: another process's mapped pages could not be evicted.
        parallel = [key for key in plan if key[0] != "disk"]
        alone = [key for key in plan if key[0] == "disk"]
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for round_index in range(args.rounds):
                if args.jobs == 1:
                    for key in plan:
                        record(round_index, key, run(key))
                    continue
                futures = {pool.submit(run, key): key for key in parallel}
                for future in as_completed(futures):
                    record(round_index, futures[future], future.result())
                for key in alone:
                    record(round_index, key, run(key))
    finally:
        if zygote is not None:
            zygote.close()
        if disk is not None and not args.keep_disk_data:
            remove_disk_data(Path(disk["dir"]))
    if disk is not None:
        disk["kept"] = args.keep_disk_data

    source = {"gpuloader_sha256_at_start": fingerprint, "gpuloader_sha256_at_end": source_fingerprint()}
    changed = source["gpuloader_sha256_at_start"] != source["gpuloader_sha256_at_end"]
    summary = summarise(plan, raw)
    ratios = speedups(summary)
    checks = check_targets(summary, args.datasets)
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
    if "digits" in args.modes:
        print(
            f"digits (scikit-learn's load_digits, from its wheel): {epochs['digits']} epochs of fit, batch "
            "32, held-out accuracy on the same 359 test images (median over rounds, then each round):"
        )
        print(format_digits_table(summary, ratios))
        print()

    args.out.mkdir(parents=True, exist_ok=True)
    augmented = augment_rows(args.out, args.profile)
    device = device_rows(args.out, args.profile == "smoke")
    machine["loadavg_end"] = list(os.getloadavg())
    total_s = time.perf_counter() - started
    report = {
        "config": {
            "profile": args.profile,
            "spawn": args.spawn,
            "rounds": args.rounds,
            "jobs": args.jobs,
            "modes": args.modes,
            "datasets": args.datasets,
            "rows": rows,
            "batch_size": synthetic.BATCH_SIZE,
            "warmup_epochs": 1,
            "timed_epochs": epochs,
            "cases": args.cases,
            "targets": [
                {"mode": m, "gpuloader_case": g, "baselines": list(b), "minimum": t} for m, g, b, t in TARGETS
            ],
        },
        "machine": machine,
        "source": source,
        "disk": disk,
        "summary": summary,
        "speedups": ratios,
        "targets": checks,
        "augment": augmented,
        "device": device,
        "raw": [{"mode": m, "dataset": d, "case": c, "rounds": raw[m, d, c]} for m, d, c in plan],
        "failures": failures,
        "total_s": total_s,
    }
    json_path, png_path = args.out / "bench.json", args.out / "bench.png"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    title = (
        f"gpuloader host benchmark ({args.profile}), {machine['date']}, {machine['cpu_count']} CPUs, "
        f"{args.rounds} rounds, commit {machine['git_commit'][:10]}{' + changes' if machine['git_dirty'] else ''}"
    )
    write_chart(summary, ratios, png_path, title)
    print(f"wrote {json_path} and {png_path}")
    print()
    print(
        f"SUMMARY: every target (ratio = baseline s / gpuloader s, medians of this run; profile {args.profile}, "
        f"{args.rounds} rounds, load average {', '.join(f'{v:.2f}' for v in machine['loadavg_end'])} at the end)"
    )
    print(format_targets(checks))
    if augmented.get("targets"):
        print(format_augment_targets(augmented))
    if changed:
        print("WARNING: gpuloader/ changed while the benchmark ran; its rounds measured different code")
    if failures:
        print(f"{failures} case process(es) failed (see FAILED above)")
    if "error" in augmented:
        print("the augmentation rows failed (see above)")
    print(f"total {_clock(time.perf_counter() - started)} (m:ss)")
    return 1 if failures or "error" in augmented else 0


def _all_reset(summary: list[dict[str, Any]]) -> bool:
    return all(row.get("vm_hwm_reset", True) for row in summary if row["mode"] == "disk")


def _disk_row_bytes(disk: dict[str, Any]) -> int:
    return int(disk["file_bytes"] // disk["rows"])


if __name__ == "__main__":
    sys.exit(main())
