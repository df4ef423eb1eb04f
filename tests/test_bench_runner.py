"""The benchmark's runner and summary (bench/runner.py, bench/host.py, bench/augment.py): no timing here.

The runner runs tiny stand-in case scripts (no TensorFlow) so that what is checked is the machinery:
every case of every suite counted in the progress, rounds interleaved, failures recorded, the time
estimate built from measured durations.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import runner  # noqa: E402
from suite import Case, Plan  # noqa: E402

CASE_SCRIPT = """
import json, sys
name = sys.argv[1]
if name == "broken":
    sys.exit("this case fails on purpose")
print("some output first")
print(json.dumps({"median_s": 0.25, "name": name}))
"""


def _plans(tmp_path: Path, second_rounds: int = 1) -> list[Plan]:
    script = tmp_path / "case.py"
    script.write_text(CASE_SCRIPT)
    first = Plan("one", [Case("a", str(script), ("a",)), Case("b", str(script), ("b",))], rounds=2)
    second = Plan("two", [Case("c", str(script), ("c",))], rounds=second_rounds)
    return [first, second]


def _figure(plan: Plan, case: Case, result: dict) -> str:
    return f"{result['median_s']} s"


def test_every_case_of_every_suite_is_counted_and_rounds_interleave(tmp_path, capsys):
    plans = _plans(tmp_path, second_rounds=2)
    results = runner.run_rounds(plans, _figure, timings=tmp_path / "timings.json")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert [re.match(r"\[\s*(\d+)/(\d+)\]", line).groups() for line in lines] == [
        (str(k), "6") for k in range(1, 7)
    ]
    order = [re.search(r"round (\d+) (\S+)\s+(\S+)", line).groups() for line in lines]
    assert order == [
        ("1", "one", "a"), ("1", "one", "b"), ("1", "two", "c"), ("2", "one", "a"), ("2", "one", "b"),
        ("2", "two", "c"),
    ]
    assert lines[-1].endswith("about 0:00 left")
    assert [result["round"] for result in results["one"]["a"]] == [1, 2]
    assert results["two"]["c"][0]["name"] == "c"  # the last JSON line of the case's stdout


def test_a_suite_with_fewer_rounds_drops_out_after_its_last(tmp_path):
    todo = runner.schedule(_plans(tmp_path, second_rounds=1))
    assert [(round_index, case.name) for round_index, _, case in todo] == [
        (0, "a"), (0, "b"), (0, "c"), (1, "a"), (1, "b")
    ]


def test_a_failing_case_is_recorded_with_its_error_and_the_others_run(tmp_path, capsys):
    script = tmp_path / "case.py"
    script.write_text(CASE_SCRIPT)
    plan = Plan("one", [Case("broken", str(script), ("broken",)), Case("a", str(script), ("a",))], rounds=1)
    results = runner.run_rounds([plan], _figure)
    assert "this case fails on purpose" in results["one"]["broken"][0]["error"]
    assert results["one"]["a"][0]["median_s"] == 0.25
    assert "FAILED one broken (round 1)" in capsys.readouterr().out


def test_the_estimate_uses_a_cases_own_time_then_the_last_runs_then_says_it_guesses(tmp_path):
    plans = _plans(tmp_path, second_rounds=2)
    todo = runner.schedule(plans)
    case_a, case_c = plans[0].cases[0], plans[1].cases[0]
    previous = {runner.timing_key("two", case_c): 30.0}
    progress = runner.Progress(todo, previous, _figure)
    left, guessed = progress.estimate()
    assert guessed == 4  # a and b, both rounds: never timed
    assert left == pytest.approx(2 * 30.0 + 4 * runner.FIRST_GUESS_S)
    progress.finished(0, plans[0], case_a, {"process_s": 2.0, "median_s": 0.1})
    left, guessed = progress.estimate()
    # a (round 2): its own 2 s; b (twice): the mean of its suite so far, 2 s; c (twice): the last run's 30 s
    assert (left, guessed) == (pytest.approx(2.0 + 2 * 2.0 + 2 * 30.0), 2)


def test_timings_are_written_for_the_next_run(tmp_path):
    plans = _plans(tmp_path)
    runner.run_rounds(plans, _figure, timings=tmp_path / "timings.json")
    timings = json.loads((tmp_path / "timings.json").read_text())
    assert set(timings) == {runner.timing_key(plan.suite, case) for plan in plans for case in plan.cases}


def test_setup_runs_before_the_first_case_and_cleanup_after_the_last(tmp_path):
    events = []
    plans = _plans(tmp_path)
    plans[0].setup = lambda: events.append("setup") or {"made": 1}
    plans[0].cleanup = lambda: events.append("cleanup")
    results = runner.run_rounds(plans, lambda plan, case, result: events.append(case.name) or "")
    assert events[0] == "setup" and events[-1] == "cleanup" and len(events) == 2 + 5
    assert plans[0].prepared == {"made": 1} and results["one"]["a"]


def test_host_targets_take_the_stronger_peer_and_say_missing():
    import host

    summary = [
        {"mode": "epoch", "dataset": "mnist", "case": "tfdata", "median_s": 0.9},
        {"mode": "epoch", "dataset": "mnist", "case": "tfdata_fast", "median_s": 0.4},
        {"mode": "epoch", "dataset": "mnist", "case": "gpuloader", "median_s": 0.1},
        {"mode": "epoch", "dataset": "mnist", "case": "seed"},  # failed in every round
    ]
    checks = {tuple(check["baselines"]): check for check in host.check_targets(summary, {"epoch": ["mnist"]})}
    tfdata = checks["tfdata", "tfdata_fast"]
    assert tfdata["baseline"] == "tfdata_fast" and tfdata["speedup"] == pytest.approx(4.0)
    assert tfdata["status"] == "met"
    assert checks["seed",]["status"] == "MISSING"


def test_augment_report_says_missing_when_a_case_failed():
    import argparse

    import augment

    plan = augment.plan(argparse.Namespace(profile="quick", out=Path("/tmp"), rounds=None))
    ok = {"median_s": 0.1, "median_cpu_s": 0.1, "rows": 10, "batches": 1}
    results = {case.name: [dict(ok)] for case in plan.cases}
    results["tfdata"] = [{"error": "exit status 1"}]
    results["keras"] = [{**ok, "median_s": 0.5}]
    targets = {target.what: target for target in augment.report(plan, results).targets}
    assert targets["tfdata / augment"].status == "MISSING"
    assert targets["keras / augment"].status == "met"


def test_a_suite_is_found_by_its_plans_name_even_when_its_module_is_named_otherwise():
    import argparse
    import types

    import run

    module = types.ModuleType("device_like")
    module.plan = lambda args: Plan("device", [], 0, skipped="no device here")
    parser = argparse.ArgumentParser()
    plans, modules = run.make_plans(parser, argparse.Namespace(suites="device_like"), {"device_like": module})
    assert [plan.suite for plan in plans] == ["device"] and modules["device"] is module
