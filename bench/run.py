"""gpuloader's benchmark against named baselines: ``make bench`` (quick), ``make bench-full`` (full).

Usage: ``python bench/run.py [--profile quick|full|smoke] [--suites host,augment,device_rows]
[--rounds N] [--jobs N] [--spawn fork|fresh] [--out DIR]`` plus each suite's own flags
(``--help`` lists them; the host suite's: ``--modes``, ``--datasets``, ``--disk-*``).

Three parts, each readable on its own (bench/README.md):

- the cases: one module per suite (``SUITES``) says which case processes to run
  and reports on them: ``host.py`` (gpuloader against the seed Sequence,
  tf.data, Keras's arrays and a bare NumPy gather, in RAM, in ``fit``, from disk
  and on scikit-learn's digits; its cases in ``cases.py``), ``augment.py``
  (keyed augmentation against tf.data and Keras layers) and ``device_rows.py``
  (``device.py`` and ``device_fit.py`` when a CUDA device is usable);
- the runner (``runner.py``): every case in a process of its own, the rounds
  interleaved (round 1 runs every case of every suite, then round 2 ...), a
  progress line per case process with an estimate of the time left;
- the report (``report.py``): each suite's tables, then one summary of every
  target (ratios of medians of this same run against named baselines, the
  stronger form of each peer), ``<out>/bench.json`` and the host chart
  ``<out>/bench.png``.

Profiles: ``quick`` (the default) is what a newcomer waits for; ``full`` is
the long version the README's figures come from (3 rounds, longer epochs, the
fit mode on both datasets with every case, a 2.46 GB disk file, the
augmentation fit rows, fresh interpreters for every case); ``smoke`` checks the
machinery (small data, 2 processes at a time; timings mean nothing).

Exit status: 0 when every case ran (whether or not the targets are met), 1
when a case failed.
"""

from __future__ import annotations

import argparse
import compileall
import importlib
import os
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import report
import runner
from suite import Case, Plan, Result

#: The suites, in the order their cases run within a round. To add one, write a module with
#: ``plan(args)`` and ``report(plan, results)`` (bench/README.md) and add its name here.
SUITES = ("host", "augment", "augment_mask", "ingest", "cold", "device_rows")

PROFILES = {
    "quick": "make bench: about 4 minutes on a quiet 2-core machine, case processes forked after the imports",
    "full": "make bench-full: the README's figures, about 30 minutes on 2 cores",
    "smoke": "a check of the machinery; timings mean nothing",
}
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None, modules: dict[str, ModuleType]) -> tuple[argparse.ArgumentParser, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=list(PROFILES), default="quick",
                        help="; ".join(f"{name}: {about}" for name, about in PROFILES.items()) + " (default quick)")
    parser.add_argument("--suites", default=",".join(SUITES), help=f"comma-separated from {', '.join(SUITES)}")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of every case (default: each suite's)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="case processes at a time (default 1, 2 for smoke); above 1 timings are not comparable")
    parser.add_argument("--spawn", choices=("fork", "fresh"), default=None,
                        help="forkable cases forked by bench/zygote.py after its imports (quick's default) or fresh "
                        "interpreters (full's default); always fresh with --jobs above 1")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default bench/results)")
    for module in modules.values():
        if hasattr(module, "add_arguments"):
            module.add_arguments(parser)
    args = parser.parse_args(argv)
    args.jobs = args.jobs or (2 if args.profile == "smoke" else 1)
    if args.jobs < 1 or (args.rounds is not None and args.rounds < 1):
        parser.error("--rounds and --jobs must be at least 1")
    args.spawn = "fresh" if args.jobs > 1 else args.spawn or ("fork" if args.profile == "quick" else "fresh")
    args.out = args.out.resolve()
    return parser, args


def load_suites() -> dict[str, ModuleType]:
    return {name: importlib.import_module(name) for name in SUITES}


def make_plans(
    parser: argparse.ArgumentParser, args: Any, modules: dict[str, ModuleType]
) -> tuple[list[Plan], dict[str, ModuleType]]:
    """Each chosen suite's plan, and the module of each plan's suite; a flag a suite refuses is a usage error."""
    chosen = [name.strip() for name in args.suites.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in modules]
    if unknown or not chosen:
        parser.error(f"--suites: unknown or empty {unknown or args.suites!r}; choose from {', '.join(SUITES)}")
    try:
        plans = {name: module.plan(args) for name, module in modules.items() if name in chosen}
    except ValueError as error:
        parser.error(str(error))
    return list(plans.values()), {plan.suite: modules[name] for name, plan in plans.items()}


def print_header(args: Any, plans: list[Plan], machine: dict[str, Any]) -> None:
    counts = ", ".join(f"{plan.suite} {len(plan.cases)} x {plan.rounds}" for plan in plans if plan.cases)
    alone = any(case.alone for plan in plans for case in plan.cases)
    print(
        f"gpuloader benchmark, profile {args.profile}: {counts} rounds; each case in its own process, rounds "
        f"interleaved ({args.jobs} at a time{'; disk cases alone' if alone and args.jobs > 1 else ''})"
    )
    for plan in plans:
        if plan.skipped:
            print(f"{plan.suite}: skipped ({plan.skipped})")
            continue
        print(f"{plan.suite}:")
        print("\n".join(line if line.startswith("  ") else f"  {line}" for line in plan.about))
    print(f"load average at start: {report.loadavg()} ({machine['cpu_count']} CPUs)")
    if args.profile == "smoke" or args.jobs > 1:
        print("note: a smoke run (small data or parallel processes); its timings are not meaningful")


def progress_figure(modules: dict[str, ModuleType]) -> runner.Figure:
    """The figure on a progress line: the suite's own, else the median epoch in ms or s."""

    def figure(plan: Plan, case: Case, result: Result) -> str:
        own = getattr(modules[plan.suite], "progress_figure", None)
        if own is not None:
            return own(case, result)
        seconds = result.get("median_s")
        return "done" if seconds is None else f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"

    return figure


def write_report(args: Any, modules: dict[str, ModuleType], plans: list[Plan],
                 results: dict[str, dict[str, list[Result]]], context: dict[str, Any]) -> int:
    """Each suite's tables, bench.json and the summary of every target; the number of failed case processes."""
    reports = {plan.suite: modules[plan.suite].report(plan, results[plan.suite]) for plan in plans if plan.cases}
    for suite, done in reports.items():
        print(f"\n{suite}:\n{done.text}")
    every = [result for by_case in results.values() for rounds in by_case.values() for result in rounds]
    failures = sum("error" in result for result in every)
    targets = [target for done in reports.values() for target in done.targets]
    machine = context["machine"]
    machine["loadavg_end"] = list(os.getloadavg())
    fingerprint_end = report.source_fingerprint()
    json_path = args.out / "bench.json"
    report.write_json(json_path, {
        "profile": args.profile, "jobs": args.jobs, "spawn": args.spawn, "machine": machine,
        "source": {"gpuloader_sha256_at_start": context["fingerprint"], "gpuloader_sha256_at_end": fingerprint_end},
        "suites": {plan.suite: {"skipped": plan.skipped} if not plan.cases else {
            "rounds": plan.rounds, "prepared": plan.prepared, **reports[plan.suite].data} for plan in plans},
        "targets": [vars(target) for target in targets], "failures": failures,
        "total_s": time.perf_counter() - context["started"],
    })
    files = [json_path, *(path for done in reports.values() for path in done.files)]
    print(f"\nwrote {', '.join(str(path) for path in files)}\n")
    print(f"SUMMARY: every target (ratios of medians of this run; profile {args.profile}, load average "
          f"{report.loadavg()} at the end)")
    print(report.format_targets(targets))
    if fingerprint_end != context["fingerprint"]:
        print("WARNING: gpuloader/ changed while the benchmark ran; its rounds measured different code")
    if failures:
        print(f"{failures} case process(es) failed (see FAILED above)")
    return failures


def main(argv: list[str] | None = None) -> int:
    modules = load_suites()
    parser, args = parse_args(argv, modules)
    context = {"started": time.perf_counter(), "machine": report.machine_info(),
               "fingerprint": report.source_fingerprint()}
    plans, modules = make_plans(parser, args, modules)
    # The package's bytecode written once, as any install has it: with $PYTHONDONTWRITEBYTECODE set, every case
    # process compiled gpuloader's modules again inside its timings (60 ms for the loader's 32 modules here).
    compileall.compile_dir(str(Path(__file__).resolve().parent.parent / "gpuloader"), quiet=1)
    print_header(args, plans, context["machine"])
    args.out.mkdir(parents=True, exist_ok=True)
    results = runner.run_rounds(
        plans, progress_figure(modules), jobs=args.jobs, spawn=args.spawn, timings=args.out / "timings.json"
    )
    failures = write_report(args, modules, plans, results, context)
    print(f"total {runner.clock(time.perf_counter() - context['started'])} (m:ss)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
