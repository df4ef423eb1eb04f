"""Recorded, not guessed: a resumed run trains the batches the uninterrupted run would have, step for step.

The runs go through ``fit`` in processes of their own (tests/_resume_script.py):
the uninterrupted run, the same run killed with SIGKILL at a step, and a new
process that resumes it. An eager layer writes the sample ids of every training
step, so the logs are compared step for step. On TensorFlow every case; on torch
the partial-fit loop and a resume inside an epoch.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
from _resume_script import BATCH, SEED, N, data, model
from conftest import ROOT, TESTS, id_data, sample_ids

import gpuloader
from gpuloader import Loader, permutation
from gpuloader.resume import record_path

SCRIPT = TESTS / "_resume_script.py"
#: case -> steps of the killed run its last checkpoint had saved (what the resumed run must not train again).
SAVED = {"finetune": 20, "mixed": 10, "first_epoch": 3, "first_epoch_keras": 0, "later_epoch": 15, "uneven_steps": 10}
BACKEND_CASES = {
    "tensorflow": ["finetune", "mixed", "first_epoch", "first_epoch_keras", "later_epoch", "uneven_steps"],
    "torch": ["first_epoch"],
}


def script(backend: str, *args: str) -> subprocess.Popen:
    paths = [str(ROOT), str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=os.pathsep.join(paths), TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen([sys.executable, str(SCRIPT), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=ROOT)


def finished(process: subprocess.Popen, killed: bool = False) -> None:
    _, err = process.communicate(timeout=600)
    if killed:
        assert process.returncode == -9, f"the run was not killed where planned:\n{err[-3000:]}"
    else:
        assert process.returncode == 0, err[-3000:]


@pytest.fixture(scope="module", params=["tensorflow", "torch"])
def runs(request, tmp_path_factory):
    """``(directory, backend)`` after the uninterrupted, killed and resumed runs of the backend's cases."""
    backend = request.param
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed here")
    directory = tmp_path_factory.mktemp(f"resume-{backend}")
    cases = BACKEND_CASES[backend]
    finished(script(backend, "reference", str(directory), *cases, "partial_fits"))
    for process in [script(backend, "crash", str(directory), case) for case in cases]:  # in parallel
        finished(process, killed=True)
    finished(script(backend, "resume", str(directory), *cases))
    return directory, backend


def steps(directory: Path, name: str) -> list[list[int]]:
    return [json.loads(line) for line in (directory / f"{name}.jsonl").read_text().splitlines()]


def said(directory: Path, name: str) -> list[str]:
    return json.loads((directory / f"{name}-warnings.json").read_text())


def batches_of(epoch: int) -> list[list[int]]:
    order = np.asarray(permutation(np, N, SEED, epoch)).tolist()
    return [order[i:i + BATCH] for i in range(0, N, BATCH)]


def check_resume(runs, case: str) -> tuple[list, list]:
    directory, backend = runs
    if case not in BACKEND_CASES[backend]:
        pytest.skip(f"{case} runs on TensorFlow only")
    reference, killed, resumed = (steps(directory, f"{case}-{mode}") for mode in ("reference", "crash", "resume"))
    saved = SAVED[case]
    assert killed == reference[:len(killed)] and len(killed) > saved  # killed after its last checkpoint
    assert resumed == reference[saved:], f"the resumed run trained other batches than the uninterrupted one ({case})"
    assert not (directory / f"backup-{case}").exists()  # Keras removed its backup, the record with it
    return reference, said(directory, f"{case}-resume")


@pytest.mark.slow  # the processes of the module's fixture: about 60 s of CPU per backend
def test_fine_tuning_a_loaded_model_resumes_on_the_uninterrupted_batches(runs):
    reference, warned = check_resume(runs, "finetune")  # the loaded model's optimizer had stepped 30 times
    assert reference[20:] == batches_of(2) + batches_of(3) and warned == []


@pytest.mark.slow  # the processes of the module's fixture: about 60 s of CPU per backend
def test_mixed_precision_second_phase_resumes_on_the_uninterrupted_batches(runs):
    reference, warned = check_resume(runs, "mixed")
    directory, _ = runs
    phase1 = steps(directory, "mixed-phase1-reference")
    assert phase1 == batches_of(0) + batches_of(1)
    # The LossScaleOptimizer skipped steps, so its step count is not the loader's history.
    assert json.loads((directory / "mixed-reference-optimizer-steps.json").read_text()) < len(phase1)
    assert reference == [b for epoch in (2, 3, 4, 5) for b in batches_of(epoch)] and warned == []


@pytest.mark.slow  # the processes of the module's fixture: about 60 s of CPU per backend
def test_a_crash_in_the_first_epoch_of_a_second_phase_resumes_after_the_last_saved_step(runs):
    reference, warned = check_resume(runs, "first_epoch")
    assert reference == batches_of(2) + batches_of(3) + batches_of(4) and warned == []


@pytest.mark.slow  # the processes of the module's fixture: about 60 s of CPU per backend
def test_keras_backup_saved_inside_an_epoch_replays_that_epochs_order_and_says_so(runs):
    reference, warned = check_resume(runs, "first_epoch_keras")
    assert reference == batches_of(2) + batches_of(3) + batches_of(4)
    assert len(warned) == 1 and "3 batches are trained again" in warned[0] and "gpuloader.BackupAndRestore" in warned[0]


@pytest.mark.slow  # the processes of the module's fixture: about 60 s of CPU per backend
def test_a_crash_inside_a_later_epoch_resumes_there(runs):
    reference, warned = check_resume(runs, "later_epoch")
    assert reference == batches_of(0) + batches_of(1) + batches_of(2) and warned == []


@pytest.mark.slow  # the processes of the module's fixture: about 60 s of CPU per backend
def test_steps_per_epoch_not_dividing_the_loader_resumes_a_second_phase_on_its_orders(runs):
    reference, warned = check_resume(runs, "uneven_steps")
    directory, _ = runs
    assert steps(directory, "uneven_steps-phase1-reference") == batches_of(0)
    assert reference == batches_of(1) + batches_of(2) and warned == []


@pytest.mark.slow  # the processes of the module's fixture: about 60 s of CPU per backend
def test_a_loop_of_partial_fits_covers_each_order_once_in_order(runs):
    directory, _ = runs
    fits, current = [], []
    for step in steps(directory, "partial_fits-reference"):
        if step == []:
            fits.append(current)
            current = []
        else:
            current.append(step)
    assert [len(f) for f in fits] == [4, 4, 2, 4, 4, 2]  # a fit that reaches the order's end stops there
    assert [b for f in fits for b in f] == batches_of(0) + batches_of(1)


# ------------------------------------------------------------------ in this process (TensorFlow)
def recorded_fit(loader, **kwargs) -> list[list[int]]:
    """Sample ids of every training step of ``model().fit(loader, **kwargs)``."""
    import _resume_script

    class Log(list):
        def write(self, line):
            self.append(json.loads(line))

        def flush(self):
            pass

    log = Log()
    _resume_script.LOG["file"] = log
    try:
        model().fit(loader, verbose=0, **kwargs)
    finally:
        _resume_script.LOG["file"] = None
    return list(log)


def make(**kwargs):
    x, y = data()
    return Loader(x, y, batch_size=BATCH, seed=SEED, verbose=False, **kwargs)


def test_a_fit_resuming_with_no_record_trains_the_keras_epochs_order_and_says_so():
    with pytest.warns(RuntimeWarning, match=r"fit resumes at epoch 2 and nothing records.*set_state"):
        trained = recorded_fit(make(), epochs=4, initial_epoch=2)
    assert trained == batches_of(2) + batches_of(3)


def test_a_fit_after_set_state_of_a_mid_epoch_state_trains_the_rest_of_that_epoch_first():
    first = make()
    assert recorded_fit(first, epochs=1, steps_per_epoch=6) == batches_of(0)[:6]
    state = json.loads(json.dumps(first.get_state()))
    assert (state["epoch"], state["position"]) == (0, 6)
    resumed = make()
    resumed.set_state(state)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # set_state is a record: nothing to warn about
        assert recorded_fit(resumed, epochs=2) == batches_of(0)[6:] + batches_of(1)


def test_a_fit_after_an_iteration_outside_fit_took_batches_goes_on_after_them_and_says_so():
    loader = make()
    next(iter(loader))  # a look at the first batch is a batch taken from the stream
    with pytest.warns(RuntimeWarning, match=r"fit starts at batch 1 of epoch 0.*loader.set_epoch\(0\)"):
        assert recorded_fit(loader, epochs=2) == batches_of(0)[1:] + batches_of(1)
    again = make()
    next(iter(again))
    again.set_epoch(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert recorded_fit(again, epochs=1) == batches_of(0)


@pytest.mark.parametrize("look", ["peek", "whole"])
def test_iterating_the_training_loader_in_a_callback_serves_that_epoch_and_takes_nothing_from_fit(look):
    loader, seen = make(), {}

    class Look(keras.callbacks.Callback):  # e.g. plotting a batch of predictions at every epoch's end
        def on_epoch_end(self, epoch, logs=None):
            batches = iter(loader)
            looked = [next(batches)] if look == "peek" else list(batches)
            seen[epoch] = [np.asarray(batch[0])[:, -1].astype(int).tolist() for batch in looked]  # ids: last column

    trained = recorded_fit(loader, epochs=3, callbacks=[Look()])
    assert trained == batches_of(0) + batches_of(1) + batches_of(2)  # every sample of every epoch, in order
    assert seen == {e: batches_of(e)[:1] if look == "peek" else batches_of(e) for e in range(3)}
    assert loader.get_state()["epoch"] == 3


def test_a_record_is_kept_for_the_training_loader_only_and_named_by_its_signature(tmp_path):
    train, validation = make(), make(shuffle=False)
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"), delete_checkpoint=False)
    recorded_fit(train, epochs=2, validation_data=validation, callbacks=[backup])
    records = sorted(p.name for p in (tmp_path / "backup").glob("gpuloader-*"))
    assert records == [Path(record_path(str(tmp_path / "backup"), train.schedule)).name]
    assert record_path("d", train.schedule) != record_path("d", make(drop_remainder=True).schedule)
    record = json.loads((tmp_path / "backup" / records[0]).read_text())
    assert record["keras"] == {"epoch": 2, "batch": 0} and record["start"] == [2, 0]


def test_a_record_from_another_checkpoint_is_not_used_and_says_so(tmp_path):
    backup_dir = tmp_path / "backup"
    recorded_fit(make(), epochs=2, callbacks=[keras.callbacks.BackupAndRestore(str(backup_dir),
                                                                               delete_checkpoint=False)])
    (backup_dir / "training_metadata.json").write_text(json.dumps({"epoch": 1, "batch": 0}))  # an older save
    with pytest.warns(RuntimeWarning, match="written with another checkpoint"), \
            pytest.warns(RuntimeWarning, match="fit resumes at epoch 1 and nothing records"):
        trained = recorded_fit(make(), epochs=3, callbacks=[keras.callbacks.BackupAndRestore(str(backup_dir))])
    assert trained == batches_of(1) + batches_of(2)  # the no-record rule: order = Keras epoch


def test_a_record_of_the_same_loader_with_another_seed_names_that_seed(tmp_path):
    backup_dir = tmp_path / "backup"
    x, y = data()
    crashed = Loader(x, y, batch_size=BATCH, seed=None, verbose=False)  # seed=None: drawn in this process
    recorded_fit(crashed, epochs=2, callbacks=[keras.callbacks.BackupAndRestore(str(backup_dir),
                                                                               delete_checkpoint=False)])
    (backup_dir / "training_metadata.json").write_text(json.dumps({"epoch": 1, "batch": 0}))
    again = Loader(x, y, batch_size=BATCH, seed=None, verbose=False)  # a new process draws another seed
    with pytest.warns(RuntimeWarning, match=rf"same data with seed={crashed.seed}.*Fix: pass seed={crashed.seed}"):
        recorded_fit(again, epochs=2, callbacks=[keras.callbacks.BackupAndRestore(str(backup_dir))])


def test_a_record_of_a_loader_over_other_data_names_what_differs(tmp_path):
    backup_dir = tmp_path / "backup"
    x, y = data()
    recorded_fit(make(), epochs=2, callbacks=[keras.callbacks.BackupAndRestore(str(backup_dir),
                                                                               delete_checkpoint=False)])
    (backup_dir / "training_metadata.json").write_text(json.dumps({"epoch": 1, "batch": 0}))
    grown = Loader(np.concatenate([x, x[:1]]), np.concatenate([y, y[:1]]), batch_size=BATCH, seed=SEED,
                   verbose=False)  # a sample added to the data between the crash and the resume
    with pytest.warns(RuntimeWarning, match=rf"record of another loader than this one \(num_samples {N} there, "
                                            rf"{N + 1} here\).*Fix: build the loader as that run did"):
        recorded_fit(grown, epochs=2, callbacks=[keras.callbacks.BackupAndRestore(str(backup_dir))])


# ------------------------------------------------------------------ states
def loader_of_ids(**kwargs):
    x, y = id_data(40)
    return Loader(x, y, batch_size=4, seed=3, verbose=False, **kwargs)


def test_a_custom_loop_resumes_inside_an_epoch_through_get_state_and_set_state():
    loader = loader_of_ids()
    iterator = iter(loader)
    taken = [sample_ids(next(iterator)[0]) for _ in range(3)]
    state = json.loads(json.dumps(loader.get_state()))
    assert (state["epoch"], state["position"]) == (0, 3)
    resumed = loader_of_ids()
    resumed.set_state(state)
    rest = [sample_ids(batch[0]) for batch in resumed]
    order = np.asarray(permutation(np, 40, 3, 0)).tolist()
    assert taken + rest == [order[i:i + 4] for i in range(0, 40, 4)]
    following = [sample_ids(batch[0]) for batch in resumed]
    assert following[0] == np.asarray(permutation(np, 40, 3, 1)).tolist()[:4] and len(following) == 10


@pytest.mark.parametrize(("change", "match"), [
    ({"seed": None}, r"seed=None.*int in \[0, 2\*\*64\)"),
    ({"epoch": 2**64}, r"epoch must be an int in \[0, 2\*\*64\); received 18446744073709551616"),
    ({"epoch": -1}, r"epoch must be an int in \[0, 2\*\*64\)"),
    ({"position": 10}, r"position=10.*\[0, 10\)"),
    ({"format": "gpuloader.Loader/2"}, r"format='gpuloader.Loader/2'.*'position': 0"),
])
def test_a_corrupt_state_is_refused_naming_the_rule_and_the_fix(change, match):
    state = {**loader_of_ids().get_state(), **change}
    loader = loader_of_ids()
    with pytest.raises(ValueError, match=match):
        loader.set_state(state)
    assert loader.get_state() == loader_of_ids().get_state()  # nothing half-applied


@pytest.mark.parametrize("missing", ["augment", "position", "seed"])
def test_a_state_without_one_of_its_keys_is_refused(missing):
    state = {key: value for key, value in loader_of_ids().get_state().items() if key != missing}
    with pytest.raises(ValueError, match=rf"lacks \['{missing}'\].*get_state"):
        loader_of_ids().set_state(state)


def test_set_epoch_refuses_an_epoch_past_the_64_bit_key():
    with pytest.raises(ValueError, match=r"set_epoch: epoch must be an int in \[0, 2\*\*64\).*mod 2\*\*64"):
        loader_of_ids().set_epoch(2**64)
    loader_of_ids().set_epoch(2**64 - 1)


def test_backup_and_restore_is_exported_as_a_keras_callback():
    assert issubclass(gpuloader.BackupAndRestore, keras.callbacks.BackupAndRestore)
    public_names = vars(gpuloader)["__all__"]
    assert "BackupAndRestore" in public_names and public_names == sorted(public_names)
