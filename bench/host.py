"""The host suite: gpuloader against named baselines in four modes (its cases: ``bench/cases.py``).

Modes (``cases.MODES``): ``epoch`` (hand one shuffled epoch of batches to the
consumer), ``fit`` (``model.fit`` on a one-Dense-layer model; ``NAME@spe32``
with ``steps_per_execution=32``), ``disk`` (a ``.npy`` pair read cold from
storage: the page cache is emptied of it before every epoch, ``bench/pagecache.py``)
and ``digits`` (scikit-learn's ``load_digits``, a small network trained through
each loader: held-out accuracy side by side). Each case's figure for a round is
the median of its timed epochs; its reported figure is the median over rounds.

Speedups are ``baseline s / gpuloader s`` from the medians of the same run,
against the gpuloader case of the same kind (``X@spe32`` against
``gpuloader@spe32``; on disk, one reader thread against one, four against
four). A target with several baselines (tf.data's idiom and its fast form) is
checked against the fastest of them: the stronger peer.

Profiles (``PROFILES``): ``quick`` (``make bench``) and ``full`` (``make
bench-full``, the figures the README quotes: 3 rounds, longer epochs, fit on
both datasets with every case, a 2.46 GB disk file) run the same peers in every
mode they run; ``smoke`` checks the machinery (small data; timings mean nothing).

The disk mode writes its files once per run into ``--disk-dir`` (default
``bench/results/disk_data``, git-ignored), checks once that the eviction works
(and prints the evidence), and deletes them at the end unless
``--keep-disk-data``. Its cases always run alone: a page another process maps
cannot be evicted.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cases
import host_report
import pagecache
import synthetic
from suite import Case, Plan, Report, Result

SUITE = "host"
GPULOADER = "gpuloader"
EVICTION_CHECK_BATCHES = 50
DISK_SPACE_MARGIN = 1 << 30
QUICK_MODES = ("epoch", "fit", "disk")  # the digits mode (accuracy side by side, no speed target) in full only
QUICK_FIT_CASES = cases.FIT_BASE_CASES  # the @spe32 rows (no target) in full only


@dataclass(frozen=True)
class Profile:
    """What one kind of run does here: rounds, timed epochs per mode, datasets, cases and disk file."""

    rounds: int
    epochs: dict[str, int]
    datasets: dict[str, tuple[str, ...]]
    disk_rows: int
    disk_batches: int = 0  # 0: full epochs
    rows: int | None = None  # None: the datasets' real sizes
    case_lists: dict[str, tuple[str, ...]] = field(default_factory=dict)  # per mode; default cases.MODES
    modes: tuple[str, ...] = tuple(cases.MODES)  # what runs without --modes


BOTH = ("mnist", "cifar")
PROFILES = {
    "quick": Profile(
        rounds=2,
        epochs={"epoch": 8, "fit": 4, "disk": 2, "digits": 8},
        datasets={"epoch": BOTH, "fit": ("mnist",)},
        disk_rows=32_768,  # 403 MB
        case_lists={"fit": QUICK_FIT_CASES},
        modes=QUICK_MODES,
    ),
    "full": Profile(
        rounds=3,
        epochs={"epoch": 30, "fit": 12, "disk": 2, "digits": 20},
        datasets={"epoch": BOTH, "fit": BOTH},
        disk_rows=200_000,  # 2.46 GB
    ),
    "smoke": Profile(
        rounds=2,
        epochs={"epoch": 1, "fit": 1, "disk": 1, "digits": 2},
        datasets={"epoch": BOTH, "fit": BOTH},
        disk_rows=16_384,
        disk_batches=16,
        rows=4096,
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
Key = tuple[str, str, str]  # (mode, dataset, case)


# ------------------------------------------------------------------ options and plan
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The host suite's flags."""
    parser.add_argument(
        "--modes", default=None,
        help="comma-separated: epoch, fit, disk, digits (default: the profile's; quick leaves digits out)",
    )
    parser.add_argument(
        "--datasets", default=None, help="comma-separated: mnist, cifar, for the epoch and fit modes (default: "
        "the profile's)"
    )
    parser.add_argument(
        "--disk-dir", type=Path, default=Path(__file__).resolve().parent / "results" / "disk_data",
        help="disk mode: folder for its x.npy and y.npy, (over)written there and deleted at the end "
        "(default bench/results/disk_data)",
    )
    parser.add_argument(
        "--disk-rows", type=int, default=None, help="disk mode: rows of x.npy, 12 KiB each (default: the profile's)"
    )
    parser.add_argument(
        "--disk-batches", type=int, default=None,
        help="disk mode: timed batches per epoch, 0 for full epochs (default: the profile's; 0 but for smoke)",
    )
    parser.add_argument(
        "--keep-disk-data", action="store_true", help="disk mode: keep x.npy and y.npy (reused by the next run)"
    )


@dataclass(frozen=True)
class Options:
    """The host suite's options, checked: what :func:`plan` runs and :func:`report` describes."""

    profile: str
    rounds: int
    modes: list[str]
    datasets: dict[str, list[str]]
    cases: dict[str, list[str]]
    epochs: dict[str, int]
    rows: int | None
    disk_dir: Path
    disk_rows: int
    disk_batches: int
    keep_disk_data: bool
    out: Path

    @property
    def full_disk_epochs(self) -> bool:
        return self.disk_batches == -(-self.disk_rows // synthetic.BATCH_SIZE)

    def keys(self) -> list[Key]:
        return [(mode, dataset, case) for mode in self.modes for dataset in self.datasets[mode]
                for case in self.cases[mode]]


def options(args: argparse.Namespace) -> Options:
    """Check the flags against the profile; ``ValueError`` names the flag and the choices."""
    profile = PROFILES[args.profile]
    modes = _choices("--modes", args.modes, cases.MODES) if args.modes else list(profile.modes)
    chosen = None if args.datasets is None else _choices("--datasets", args.datasets, synthetic.SPECS)
    datasets = {
        mode: [cases.DISK_DATASET] if mode == "disk" else [cases.DIGITS_DATASET] if mode == "digits"
        else list(chosen or profile.datasets[mode])
        for mode in modes
    }
    disk_rows = args.disk_rows or profile.disk_rows
    disk_batches = profile.disk_batches if args.disk_batches is None else args.disk_batches
    full = -(-disk_rows // synthetic.BATCH_SIZE)
    if not 0 <= disk_batches <= full:
        raise ValueError(f"--disk-batches must be in [0, {full}] for {disk_rows} rows (0: full epochs)")
    return Options(
        profile=args.profile, rounds=args.rounds or profile.rounds, modes=modes, datasets=datasets,
        cases={mode: list(profile.case_lists.get(mode, cases.MODES[mode])) for mode in modes},
        epochs={mode: profile.epochs[mode] for mode in modes}, rows=profile.rows, disk_dir=args.disk_dir.resolve(),
        disk_rows=disk_rows, disk_batches=disk_batches or full, keep_disk_data=args.keep_disk_data, out=args.out,
    )


def _choices(flag: str, value: str, known: Any) -> list[str]:
    picked = [item.strip() for item in value.split(",") if item.strip()]
    unknown = [item for item in picked if item not in known]
    if unknown or not picked:
        raise ValueError(f"{flag}: unknown or empty {unknown or value!r}; choose from {', '.join(known)}")
    return picked


def plan(args: argparse.Namespace) -> Plan:
    """One process of ``bench/cases.py`` per (mode, dataset, case), every round; disk and digits data first."""
    config = options(args)
    digits_file = config.out / "digits_split.npz"
    found = []
    for mode, dataset, name in config.keys():
        argv = [name, dataset, mode, "--epochs", str(config.epochs[mode])]
        if mode == "disk":
            argv += ["--disk-dir", str(config.disk_dir), "--batches", str(config.disk_batches)]
        elif mode == "digits":
            argv += ["--digits-file", str(digits_file)]
        elif config.rows is not None:
            argv += ["--rows", str(config.rows)]
        found.append(Case(
            name="/".join((mode, dataset, name)), script="cases.py", args=tuple(argv),
            label=f"{mode:<6} {dataset:<6} {name}", forkable=name != "gather",  # gather: never TF
            alone=mode == "disk",
        ))
    return Plan(
        suite=SUITE, cases=found, rounds=config.rounds, about=host_report.describe(config), options=config,
        setup=lambda: _setup(config, digits_file), cleanup=lambda: _cleanup(config),
    )


def _setup(config: Options, digits_file: Path) -> dict[str, Any]:
    """Write the disk mode's files (and check the eviction) and the digits split; what was prepared."""
    prepared: dict[str, Any] = {}
    if "disk" in config.modes:
        prepared["disk"] = prepare_disk(config)
    if "digits" in config.modes:
        import digits

        prepared["digits_file"] = str(digits.write_cache(digits_file))
    return prepared


def _cleanup(config: Options) -> None:
    if "disk" in config.modes and not config.keep_disk_data:
        remove_disk_data(config.disk_dir)


# ------------------------------------------------------------------ the disk mode's files
def prepare_disk(config: Options) -> dict[str, Any]:
    """Write (or reuse) the disk mode's ``.npy`` pair, check that eviction works, print both."""
    directory = config.disk_dir
    directory.mkdir(parents=True, exist_ok=True)
    x_path, y_path = (directory / name for name in synthetic.DISK_FILES)
    x_shape = (config.disk_rows, *synthetic.DISK_SAMPLE_SHAPE)
    reused = synthetic.npy_matches(x_path, x_shape, synthetic.DISK_DTYPE) and synthetic.npy_matches(
        y_path, (config.disk_rows,), "int32"
    )
    if not reused:
        _check_space(directory, synthetic.disk_nbytes(config.disk_rows), (x_path, y_path))
    start = time.perf_counter()
    try:
        synthetic.write_npy(directory, config.disk_rows)
    except BaseException:
        if not config.keep_disk_data:
            remove_disk_data(directory)  # no half-written files left behind
        raise
    disk = host_report.disk_files(config, x_path, y_path, reused, time.perf_counter() - start)
    print(host_report.format_disk_files(disk))
    evidence = pagecache.check_eviction(
        x_path, [x_path, y_path], min(EVICTION_CHECK_BATCHES, config.disk_batches), synthetic.BATCH_SIZE
    )
    print("page-cache check (driver process):")
    print(host_report.format_eviction(evidence))
    return {**disk, "page_cache_check": evidence, "kept": config.keep_disk_data}


def _check_space(directory: Path, needed: int, paths: tuple[Path, Path]) -> None:
    present = sum(path.stat().st_size for path in paths if path.exists())
    free = shutil.disk_usage(directory).free + present
    if free < needed + DISK_SPACE_MARGIN:
        raise SystemExit(
            f"disk mode: {directory} has {free / 1e9:.1f} GB free, the files need {needed / 1e9:.2f} GB "
            "plus 1 GB of margin; pass --disk-dir elsewhere or a smaller --disk-rows"
        )


def remove_disk_data(directory: Path) -> None:
    """Delete the disk mode's files, and their folder when that leaves it empty."""
    for name in synthetic.DISK_FILES:
        (directory / name).unlink(missing_ok=True)
    try:
        directory.rmdir()
    except OSError:
        pass


# ------------------------------------------------------------------ the report
def progress_figure(case: Case, result: Result) -> str:
    mode = case.name.split("/")[0]
    if mode == "digits":
        return f"{result['median_s']:.3f} s/epoch, held-out accuracy {result['test_accuracy']:.3f}"
    if mode == "disk":
        return f"{result['batches'] / result['median_s']:.0f} batches/s"
    return f"{result['median_s'] * 1000:.1f} ms/epoch"


def report(plan: Plan, results: dict[str, list[Result]]) -> Report:
    """The tables, the chart, every target and the raw figures of the host suite."""
    config: Options = plan.options
    raw = {tuple(name.split("/")): rounds for name, rounds in results.items()}
    summary = summarise(config.keys(), raw)
    ratios = speedups(summary)
    checks = check_targets(summary, config.datasets)
    chart = config.out / "bench.png"
    host_report.write_chart(summary, ratios, chart, host_report.chart_title(config))
    data = {
        "config": host_report.config_record(config, TARGETS),
        "disk": plan.prepared.get("disk"),
        "summary": summary,
        "speedups": ratios,
        "targets": checks,
        "raw": [{"mode": m, "dataset": d, "case": c, "rounds": raw[m, d, c]} for m, d, c in config.keys()],
    }
    text = host_report.format_all(config, summary, ratios, plan.prepared.get("disk"))
    return Report(text=text, targets=[host_report.target_line(check) for check in checks], data=data, files=[chart])


def summarise(keys: list[Key], raw: dict[Key, list[Result]]) -> list[dict[str, Any]]:
    """Median over rounds of each case's per-round median, with its spread and batches per second."""
    rows = []
    for mode, dataset, case in keys:
        good = [result for result in raw[mode, dataset, case] if "error" not in result]
        row: dict[str, Any] = {"mode": mode, "dataset": dataset, "case": case, "rounds_ok": len(good)}
        if good:
            per_round = [result["median_s"] for result in good]
            median = statistics.median(per_round)
            row.update(
                per_round_s=per_round, median_s=median, min_s=min(per_round), max_s=max(per_round),
                batches=good[0]["batches"], batches_per_s=good[0]["batches"] / median,
            )
            if mode == "disk":
                row.update(host_report.disk_figures(good), full_epoch=bool(good[0].get("full_epoch")))
            if mode == "digits":
                accuracy = [result["test_accuracy"] for result in good]
                row.update(
                    test_accuracy=statistics.median(accuracy), test_accuracy_per_round=accuracy,
                    epochs=good[0]["epochs"],
                )
        rows.append(row)
    return rows


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
    ratios = []
    for mode, dataset in dict.fromkeys((row["mode"], row["dataset"]) for row in summary):
        names = [case for (m, d, case) in medians if (m, d) == (mode, dataset)]
        for reference, baseline in pairs(mode, names):
            baseline_s, gpuloader_s = medians[mode, dataset, baseline], medians[mode, dataset, reference]
            ratios.append({
                "mode": mode, "dataset": dataset, "gpuloader_case": reference, "baseline": baseline,
                "baseline_s": baseline_s, "gpuloader_s": gpuloader_s,
                "speedup": baseline_s / gpuloader_s if baseline_s and gpuloader_s else None,
            })
    return ratios


def check_targets(summary: list[dict[str, Any]], datasets: dict[str, list[str]]) -> list[dict[str, Any]]:
    """MET / MISSED of every target of the modes run (MISSING when a case failed or did not run)."""
    medians = {(row["mode"], row["dataset"], row["case"]): row.get("median_s") for row in summary}
    checks = []
    for mode, reference, baselines, minimum in TARGETS:
        for dataset in datasets.get(mode, []):
            gpuloader_s = medians.get((mode, dataset, reference))
            present = {name: medians[mode, dataset, name] for name in baselines if medians.get((mode, dataset, name))}
            strongest = min(present, key=present.__getitem__) if present else None
            ratio = present[strongest] / gpuloader_s if strongest and gpuloader_s else None
            checks.append({
                "mode": mode, "dataset": dataset, "gpuloader_case": reference, "baselines": list(baselines),
                "baseline": strongest or "/".join(baselines),
                "baseline_s": present.get(strongest) if strongest else None,
                "gpuloader_s": gpuloader_s, "speedup": ratio, "target": minimum,
                "status": "MISSING" if ratio is None else "met" if ratio >= minimum else "MISSED",
            })
    if "digits" in datasets:
        checks.append(_digits_check(summary))
    return checks


def _digits_check(summary: list[dict[str, Any]]) -> dict[str, Any]:
    """The held-out accuracies of the digits cases agree within ``DIGITS_ACCURACY_SPREAD``."""
    accuracies = [row["test_accuracy"] for row in summary if row["mode"] == "digits" and "test_accuracy" in row]
    spread = max(accuracies) - min(accuracies) if len(accuracies) > 1 else None
    return {
        "mode": "digits", "dataset": cases.DIGITS_DATASET, "gpuloader_case": GPULOADER,
        "baselines": [row["case"] for row in summary if row["mode"] == "digits"], "baseline": "every case",
        "accuracy_spread": spread, "target": DIGITS_ACCURACY_SPREAD,
        "status": "MISSING" if spread is None else "met" if spread <= DIGITS_ACCURACY_SPREAD else "MISSED",
    }
