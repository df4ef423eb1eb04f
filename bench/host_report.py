"""The host suite's tables and chart (``bench/host.py`` measures; this formats).

Tables: one row per case with gpuloader's speedup over it; the disk mode's
memory and I/O per case; the digits mode's held-out accuracies. The chart
(``bench.png``): bars of median milliseconds per epoch (min-max over rounds),
one panel per mode, the speedup over each baseline on top. MB = 10**6 bytes.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

import cases
import pagecache
import synthetic
from suite import Target

GPULOADER = "gpuloader"


def describe(config: Any) -> list[str]:
    """The header lines of the host suite: its cases per mode and what each process runs."""
    in_ram = [mode for mode in config.modes if mode in ("epoch", "fit")]
    ram_sets = sorted({name for mode in in_ram for name in config.datasets[mode]})
    sizes = ", ".join(f"{name} {config.rows or synthetic.SPECS[name].rows} rows" for name in ram_sets)
    lines = [f"batch {synthetic.BATCH_SIZE}" + (f"; {sizes}" if in_ram else "")]
    for mode in config.modes:
        lines.append(f"  {mode:<6} on {', '.join(config.datasets[mode])}: {', '.join(config.cases[mode])}")
    per_process = [f"1 warm-up epoch + {config.epochs[m]} timed epochs ({m})" for m in in_ram]
    if "disk" in config.modes:
        what = "full epochs" if config.full_disk_epochs else f"epochs of their first {config.disk_batches} batches"
        rows = min(config.disk_batches * synthetic.BATCH_SIZE, config.disk_rows)
        per_process.append(
            f"a {min(config.disk_batches, cases.DISK_WARMUP_BATCHES)}-batch warm-up + {config.epochs['disk']} timed "
            f"{what} ({config.disk_batches} batches, {rows} of {config.disk_rows} rows; disk, one process at a time)"
        )
    if "digits" in config.modes:
        per_process.append(f"{config.epochs['digits']} epochs of fit, the first left out of the median (digits)")
    return [*lines, "  per process: " + "; ".join(per_process)]


def chart_title(config: Any) -> str:
    from report import machine_info

    machine = machine_info()
    changes = " + changes" if machine["git_dirty"] else ""
    return (
        f"gpuloader host benchmark ({config.profile}), {machine['date']}, {machine['cpu_count']} CPUs, "
        f"{config.rounds} rounds, commit {machine['git_commit'][:10]}{changes}"
    )


def config_record(config: Any, targets: list[tuple[str, str, tuple[str, ...], float]]) -> dict[str, Any]:
    """The host suite's configuration, for bench.json."""
    return {
        "profile": config.profile, "rounds": config.rounds, "modes": config.modes, "datasets": config.datasets,
        "rows": config.rows, "batch_size": synthetic.BATCH_SIZE, "warmup_epochs": 1, "timed_epochs": config.epochs,
        "cases": config.cases,
        "targets": [{"mode": m, "gpuloader_case": g, "baselines": list(b), "minimum": t} for m, g, b, t in targets],
    }


def disk_files(config: Any, x_path: Path, y_path: Path, reused: bool, write_s: float) -> dict[str, Any]:
    """What the disk mode's files are, for the report and bench.json."""
    return {
        "dir": str(config.disk_dir), "rows": config.disk_rows, "sample_shape": list(synthetic.DISK_SAMPLE_SHAPE),
        "dtype": synthetic.DISK_DTYPE, "file_bytes": x_path.stat().st_size + y_path.stat().st_size,
        "ram_bytes": os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "reused": reused, "write_s": write_s,
        "batches_per_epoch": config.disk_batches, "full_epochs": config.full_disk_epochs,
        "warmup_batches": min(config.disk_batches, cases.DISK_WARMUP_BATCHES),
        "gpuloader_workers": cases.DISK_WORKERS, "gpuloader_max_queue_size": cases.DISK_MAX_QUEUE,
        "page_cache": f"{pagecache.METHOD} before each epoch",
    }


def format_disk_files(disk: dict[str, Any]) -> str:
    written = "reused" if disk["reused"] else f"written in {disk['write_s']:.1f} s"
    return (
        f"disk mode: x.npy {disk['rows']} x {synthetic.DISK_SAMPLE_SHAPE[0]} {synthetic.DISK_DTYPE} + y.npy "
        f"int32 = {disk['file_bytes'] / 1e9:.2f} GB in {disk['dir']} ({written}); RAM {disk['ram_bytes'] / 1e9:.1f} "
        "GB, so the files fit in the page cache: every epoch is made cold by eviction\n"
        f"page cache: {pagecache.METHOD} before each epoch (warm-up included); /proc/sys/vm/drop_caches not used"
    )


def format_all(config: Any, summary: list[dict[str, Any]], ratios: list[dict[str, Any]], disk: Any) -> str:
    """Every table of the host suite, as printed after the run."""
    parts = [format_table(summary, ratios)]
    if disk is not None:
        parts.append(format_disk_section(summary, config.disk_batches, disk))
    if "digits" in config.modes:
        parts.append(
            f"digits (scikit-learn's load_digits, from its wheel): {config.epochs['digits']} epochs of fit, batch "
            "32, held-out accuracy on the same 359 test images (median over rounds, then each round):\n"
            + format_digits_table(summary, ratios)
        )
    return "\n\n".join(parts)


def format_disk_section(summary: list[dict[str, Any]], batches: int, disk: dict[str, Any]) -> str:
    """The disk mode's memory and I/O table, with what each column means."""
    reset = ", reset before each epoch" if _all_reset(summary) else ", over its life"
    return "\n".join([
        f"disk mode, memory and I/O per epoch of {batches} batches (medians over rounds; memory: each round's "
        "worst epoch):",
        "  peak RssAnon = highest RssAnon sampled after any batch minus RssAnon before the epoch",
        "  VmHWM = peak resident set of the process (VmRSS: anonymous + file pages, mapped file pages included)"
        + reset,
        "  peak RssFile = file pages mapped (memory maps, libraries); read/epoch = bytes read from storage "
        "(/proc/self/io)",
        "  CPU s = user + system seconds of the process per epoch (sys: system alone; 2 cores = 2 s per s); "
        "cached at start = bytes of the files still cached after the eviction (worst epoch)",
        format_disk_table(summary),
        f"  rows asked for per epoch: {_mb(batches * synthetic.BATCH_SIZE * _disk_row_bytes(disk))}; "
        f"files: {_mb(disk['file_bytes'])}; page cache: {disk['page_cache']}",
    ])


def target_line(check: dict[str, Any]) -> Target:
    """One host target as a summary line (ratio = baseline s / gpuloader s; digits: the accuracy spread)."""
    where = f"{check['mode']} {check['dataset']}"
    status = check["status"]
    if check["mode"] == "digits":
        spread = check["accuracy_spread"]
        shown = "n/a" if spread is None else f"{spread:.3f}"
        return Target("host", where, "held-out accuracy spread over cases", shown, f"<= {check['target']:g}", status)
    versus = check["baseline"]
    if len(check["baselines"]) > 1:
        versus = f"{'/'.join(check['baselines'])} (stronger: {check['baseline']})"
    if check["gpuloader_case"] != GPULOADER:
        versus = f"{versus} [{check['gpuloader_case']}]"
    shown = "n/a" if check["speedup"] is None else f"{check['speedup']:.2f}x"
    return Target("host", where, versus, shown, f">= {check['target']:g}x", status)


def disk_figures(good: list[dict[str, Any]]) -> dict[str, Any]:
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



def write_chart(summary: list[dict[str, Any]], ratios: list[dict[str, Any]], path: Path, title: str) -> None:
    """Bars of median seconds per epoch (min-max over rounds), one panel per mode, speedups on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(dict.fromkeys(row["mode"] for row in summary))
    by_case = {(r["mode"], r["dataset"], r["baseline"]): r["speedup"] for r in ratios}
    columns = max(1, min(2, len(modes)))
    lines = max(1, -(-len(modes) // columns))
    figure, axes = plt.subplots(lines, columns, figsize=(7 * columns, 4.8 * lines), squeeze=False)
    for axis in axes.flat[len(modes) :]:
        axis.set_visible(False)
    for axis, mode in zip(axes.flat, modes):
        _draw_mode(axis, mode, [row for row in summary if row["mode"] == mode and "median_s" in row], by_case)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _draw_mode(axis: Any, mode: str, rows: list[dict[str, Any]], by_case: dict[tuple[str, str, str], Any]) -> None:
    """One panel: a group of bars per dataset, one bar per case, labelled with its speedup (digits: accuracy)."""
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
                axis.annotate(label, (x, height), ha="center", va="bottom", fontsize=7, xytext=(0, 4),
                              textcoords="offset points")
    axis.set_xticks(range(len(datasets)), datasets)
    axis.set_ylabel(_y_label(mode, rows))
    axis.set_title(
        f"{mode}: label = held-out accuracy" if mode == "digits" else f"{mode}: label = baseline s / gpuloader s"
    )
    axis.legend(fontsize=7)


def _y_label(mode: str, rows: list[dict[str, Any]]) -> str:
    if mode == "disk" and rows:
        batches = rows[0]["batches"]
        what = f"cold epoch of {batches} batches" if rows[0].get("full_epoch") else f"{batches} cold batches"
        return f"ms per {what} (median; lower is better)"
    if mode == "digits":
        return "ms per epoch of fit (median; lower is better)"
    return "ms per epoch (median over rounds; lower is better)"


def _all_reset(summary: list[dict[str, Any]]) -> bool:
    return all(row.get("vm_hwm_reset", True) for row in summary if row["mode"] == "disk")


def _disk_row_bytes(disk: dict[str, Any]) -> int:
    return int(disk["file_bytes"] // disk["rows"])


