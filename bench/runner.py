"""Run every suite's cases, each in a process of its own, in interleaved rounds, with progress.

Round 1 runs every case of every suite once (in plan order), round 2 again,
and so on (a suite with fewer rounds drops out after its last): after
``tf.data`` has run in a process, later work there runs about 2x slower
(shared/notes/pitfalls.md, item 5), so no two cases share a process, and
spreading each case's rounds over the run spreads the machine's slow moments
over every case alike.

A case process is a fresh interpreter, or (``spawn="fork"``, for the cases
marked ``forkable``) a child forked by ``bench/zygote.py``, which imported
TensorFlow, Keras and gpuloader once and ran nothing: about 4 s of imports
saved per case on 2 cores. With ``jobs`` above 1 the cases of a round run that
many at a time (their timings are then not comparable), except the ``alone``
ones, which run one at a time after the others.

Progress: one line per finished case process, every suite's counted (case k
of n), with the time elapsed and an estimate of the time left: the sum, over
the case processes still to run, of that case's own duration in an earlier
round of this run, else in the last run with the same arguments
(``<out>/timings.json``), else the mean of its suite's cases so far (of every
case so far, before any of its suite has run). The line says how many of the
cases left are such guesses.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Protocol

from suite import HOST_ENV, Case, Plan, Result

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
FIRST_GUESS_S = 8.0  # the estimate of a case before any case has finished


def case_env(case: Case | None = None) -> dict[str, str]:
    """The environment of a case process: this process's, with the case's settings on top."""
    return {**os.environ, **(case.env if case is not None else HOST_ENV)}


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

    def run(self, case: Case) -> dict[str, Any]:
        """Fork a child running ``<script>.main(args)``; its exit status ("timeout" past the limit), its output."""
        assert self.process.stdin is not None and self.process.stdout is not None
        request = {"argv": list(case.args), "module": Path(case.script).stem, "timeout": case.timeout_s}
        self.process.stdin.write(json.dumps(request) + "\n")
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


def run_case(case: Case, zygote: Zygote | None = None) -> Result:
    """Run one case in a process of its own; its JSON result, or ``{"error": ...}`` when it failed."""
    start = time.perf_counter()
    if zygote is not None and case.forkable:
        reply = zygote.run(case)
        code, stdout, stderr, spawn = reply["rc"], reply["stdout"], reply["stderr"], "fork"
    else:
        command = [sys.executable, str(BENCH_DIR / case.script), *case.args]
        try:
            done = subprocess.run(
                command, cwd=ROOT, env=case_env(case), capture_output=True, text=True, timeout=case.timeout_s
            )
            code, stdout, stderr = done.returncode, done.stdout, done.stderr
        except subprocess.TimeoutExpired:
            code, stdout, stderr = "timeout", "", ""
        spawn = "fresh"
    if code == "timeout":
        return {"error": f"timed out after {case.timeout_s:.0f} s", "process_s": time.perf_counter() - start}
    result = _parse_result(case, code, stdout, stderr)
    result.update(process_s=time.perf_counter() - start, spawn=spawn)
    return result


def _parse_result(case: Case, code: int, stdout: str, stderr: str) -> Result:
    """The case's JSON: its last stdout line starting with ``{``, or its ``result_file``."""
    if case.result_file is not None:
        found = code == 0 and case.result_file.exists()
        if found:
            return {**json.loads(case.result_file.read_text()), "stdout": stdout}
        lines = []
    else:
        lines = [line for line in stdout.splitlines() if line.startswith("{")]
        if code == 0 and lines:
            return json.loads(lines[-1])
    tail = "\n".join(stderr.strip().splitlines()[-15:])
    return {"error": f"exit status {code}:\n{tail}"}


class Figure(Protocol):
    def __call__(self, plan: Plan, case: Case, result: Result) -> str: ...


class Progress:
    """Prints "case k of n, elapsed, estimated time left" as case processes finish (see the module doc)."""

    def __init__(self, todo: list[tuple[int, Plan, Case]], previous: dict[str, float], figure: Figure) -> None:
        self.todo = [(round_index, plan.suite, case) for round_index, plan, case in todo]
        self.total = len(self.todo)
        self.previous = previous
        self.figure = figure
        self.seconds: dict[tuple[str, str], list[float]] = {}
        self.started = time.perf_counter()

    def estimate(self) -> tuple[float, int]:
        """Seconds left by the rule of the module doc, and how many of the cases left are guesses."""
        every = [s for values in self.seconds.values() for s in values]
        left, guessed = 0.0, 0
        for _, suite, case in self.todo:
            own = self.seconds.get((suite, case.name))
            if own:
                left += statistics.mean(own)
                continue
            if timing_key(suite, case) in self.previous:
                left += self.previous[timing_key(suite, case)]
                continue
            guessed += 1
            same = [s for (name, _), values in self.seconds.items() if name == suite for s in values]
            left += statistics.mean(same or every or [FIRST_GUESS_S])
        return left, guessed

    def opening(self) -> str:
        """The estimate before the first case: from the last run's timings where there are some."""
        left, guessed = self.estimate()
        if guessed == self.total:
            return f"{self.total} case processes; no timings of an earlier run here: the estimate firms up as they run"
        return (
            f"{self.total} case processes, about {clock(left)} by the last run's timings"
            + (f" ({guessed} not timed then, guessed at {clock(FIRST_GUESS_S)} each)" if guessed else "")
        )

    def finished(self, round_index: int, plan: Plan, case: Case, result: Result) -> None:
        self.todo.remove((round_index, plan.suite, case))
        seconds = result.get("process_s", 0.0)
        self.seconds.setdefault((plan.suite, case.name), []).append(seconds)
        left, guessed = self.estimate()
        done = self.total - len(self.todo)
        figure = "FAILED" if "error" in result else self.figure(plan, case, result)
        rough = f" ({guessed} not yet timed)" if guessed else ""
        print(
            f"[{done:>3}/{self.total}] round {round_index + 1} {plan.suite:<7} {case.shown:<30} {figure:<40} "
            f"({seconds:4.1f} s)  elapsed {clock(time.perf_counter() - self.started)}, "
            f"about {clock(left)} left{rough}",
            flush=True,
        )

    def timings(self) -> dict[str, float]:
        """Each case's mean seconds per process in this run, for the next run's estimate."""
        return {f"{suite}|{name}": statistics.mean(values) for (suite, name), values in self.seconds.items()}


def timing_key(suite: str, case: Case) -> str:
    """The key of a case in ``timings.json``: suite and name, plus its arguments (other profiles differ)."""
    return f"{suite}|{case.name}|{' '.join(case.args)}"


def clock(seconds: float) -> str:
    """``m:ss``."""
    seconds = max(0, round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def schedule(plans: list[Plan]) -> list[tuple[int, Plan, Case]]:
    """Every (round, plan, case) of the run in order: each round runs every suite that has one left."""
    rounds = max((plan.rounds for plan in plans if plan.cases), default=0)
    return [
        (round_index, plan, case)
        for round_index in range(rounds)
        for plan in plans
        if round_index < plan.rounds
        for case in plan.cases
    ]


def run_rounds(
    plans: list[Plan], figure: Figure, jobs: int = 1, spawn: str = "fresh", timings: Path | None = None
) -> dict[str, dict[str, list[Result]]]:
    """Set up every plan, run the schedule, clean up; every result, by suite and case name.

    Each result carries its ``round`` (1-based). ``timings`` is read for the
    estimate and rewritten with this run's durations.
    """
    results: dict[str, dict[str, list[Result]]] = {plan.suite: {case.name: [] for case in plan.cases} for plan in plans}
    todo = schedule(plans)
    zygote: Zygote | None = None
    try:
        for plan in plans:
            if plan.setup is not None and plan.cases:
                plan.prepared = plan.setup()
        if spawn == "fork" and any(case.forkable for _, _, case in todo):
            zygote = Zygote()
            print(f"case processes: forked by bench/zygote.py, which imported the libraries in {zygote.import_s:.1f} s")
        else:
            print("case processes: fresh interpreters")
        progress = Progress(todo, _read_timings(timings), figure)
        print(progress.opening(), flush=True)
        _run_schedule(todo, progress, results, zygote, jobs)
    finally:
        if zygote is not None:
            zygote.close()
        for plan in plans:
            if plan.cleanup is not None:
                plan.cleanup()
    if timings is not None:
        _write_timings(timings, todo, progress)
    return results


def _run_schedule(
    todo: list[tuple[int, Plan, Case]], progress: Progress, results: dict[str, dict[str, list[Result]]],
    zygote: Zygote | None, jobs: int,
) -> None:
    """Run ``todo`` in order (``jobs`` at a time within a round, the ``alone`` cases after the others)."""

    def record(round_index: int, plan: Plan, case: Case, result: Result) -> None:
        result["round"] = round_index + 1
        results[plan.suite][case.name].append(result)
        progress.finished(round_index, plan, case, result)
        if "error" in result:
            print(f"FAILED {plan.suite} {case.shown} (round {round_index + 1}): {result['error']}", flush=True)

    if jobs == 1:
        for round_index, plan, case in todo:
            record(round_index, plan, case, run_case(case, zygote))
        return
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for current in sorted({round_index for round_index, _, _ in todo}):
            now = [item for item in todo if item[0] == current]
            futures = {pool.submit(run_case, item[2]): item for item in now if not item[2].alone}
            for future in as_completed(futures):
                record(*futures[future], future.result())
            for item in now:
                if item[2].alone:
                    record(*item, run_case(item[2]))


def _read_timings(path: Path | None) -> dict[str, float]:
    try:
        return {key: float(value) for key, value in json.loads(path.read_text()).items()} if path else {}
    except (OSError, ValueError, AttributeError):
        return {}


def _write_timings(path: Path, todo: list[tuple[int, Plan, Case]], progress: Progress) -> None:
    """Keep the previous timings and add this run's (by :func:`timing_key`)."""
    measured = progress.timings()
    timings = _read_timings(path)
    for _, plan, case in todo:
        seconds = measured.get(f"{plan.suite}|{case.name}")
        if seconds is not None:
            timings[timing_key(plan.suite, case)] = seconds
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(timings, indent=1, sort_keys=True) + "\n")
