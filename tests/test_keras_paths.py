"""The paths Keras users take keep the loader's promises, or are refused loudly.

The epoch rule (gpuloader/schedule.py) is checked through ``fit`` on every
backend CI has, each in its own process (Keras picks its backend once per
process): tests/_epoch_rule_script.py trains the scenarios and reports which
order (``permutation(seed, k)``) each Keras epoch trained on.
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

from gpuloader import Loader

SCRIPT = Path(__file__).with_name("_epoch_rule_script.py")


def run_script(backend: str, mode: str, directory: Path) -> dict:
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), mode, str(directory)], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module", params=["tensorflow", "torch"])
def epoch_report(request, tmp_path_factory):
    backend = request.param
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed here")
    directory = tmp_path_factory.mktemp(f"backup-{backend}")
    report = run_script(backend, "run", directory)
    report.update(run_script(backend, "resume", directory))  # a new process, as after a preemption
    return report


def test_backup_and_restore_in_a_new_process_resumes_the_uninterrupted_orders(epoch_report):
    assert epoch_report["backup_before_crash"] == {"0": 0, "1": 1, "2": None}  # crashed as epoch 2 began
    assert epoch_report["backup_new_process"] == {"2": 2, "3": 3}


def test_a_second_training_phase_resumed_in_a_new_process_continues_its_orders(epoch_report):
    # The warm-up fit trained orders 0-1, so phase 2's Keras epochs 0, 1, 2 trained on orders 2, 3, 4.
    assert epoch_report["phase2_before_crash"] == {"0": 2, "1": 3, "2": 4, "3": None}
    assert epoch_report["phase2_resumed"] == {"3": 5, "4": 6, "5": 7}
    assert epoch_report["phase2_rerun_resumed"] == {"3": 5, "4": 6, "5": 7}


def test_backup_and_restore_in_the_same_process_resumes_the_uninterrupted_orders(epoch_report):
    assert epoch_report["backup_same_process"] == {"0": 0, "1": 1, "2": 2, "3": 3}


def test_a_peek_before_fit_does_not_shift_the_epochs(epoch_report):
    assert epoch_report["peek"] == {"0": 0, "1": 1, "2": 2}


def test_the_same_loader_for_training_and_validation_skips_no_order(epoch_report):
    assert epoch_report["validation"] == {"0": 0, "1": 1, "2": 2}


def test_consecutive_one_epoch_fits_train_on_new_orders(epoch_report):
    assert epoch_report["consecutive"] == [0, 1]


def test_loader_item_in_a_callback_is_the_batch_of_the_epoch_being_trained(epoch_report):
    expected = {str(e): {"begin": e, "batch": e, "end": e} for e in range(3)}
    assert epoch_report["callbacks"] == expected


def test_get_state_then_initial_epoch_resumes_exactly(epoch_report):
    assert epoch_report["state"] == {"epoch": 2, "orders": {"2": 2, "3": 3}}


def test_predict_on_a_shuffled_loader_returns_the_input_order(epoch_report):
    assert epoch_report["predict_in_input_order"] is True


# ----------------------------------------------------------- arguments and habits
def data(n=64):
    x = np.repeat(np.arange(n, dtype=np.float32)[:, None], 4, axis=1)
    return x, (np.arange(n) % 2).astype(np.float32)


def model():
    m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    m.compile("sgd", "binary_crossentropy")
    return m


@pytest.mark.parametrize("argument", ["y", "sample_weight", "class_weight"])
def test_fit_arguments_keras_would_drop_are_refused(argument):
    x, y = data()
    loader = Loader(x, y, batch_size=16, seed=0, verbose=False)
    value = {"y": y, "sample_weight": np.ones(64, np.float32), "class_weight": {0: 1.0, 1: 2.0}}[argument]
    with pytest.raises(ValueError, match=rf"{argument} was passed to fit\(\).*Loader"):
        model().fit(loader, epochs=1, verbose=0, **{argument: value})


@pytest.mark.parametrize("argument", ["y", "sample_weight"])
def test_evaluate_arguments_keras_would_drop_are_refused(argument):
    x, y = data()
    loader = Loader(x, y, batch_size=16, shuffle=False, verbose=False)
    value = {"y": y, "sample_weight": np.ones(64, np.float32)}[argument]
    with pytest.raises(ValueError, match=rf"{argument} was passed to evaluate\(\)"):
        model().evaluate(loader, verbose=0, **{argument: value})


def test_fit_batch_size_and_shuffle_are_ignored_with_one_warning_each():
    x, y = data()
    loader = Loader(x, y, batch_size=16, seed=0, verbose=False)
    m = model()
    with pytest.warns(UserWarning) as caught:
        m.fit(loader, epochs=2, batch_size=8, shuffle=False, verbose=0)
    messages = [str(w.message) for w in caught if "gpuloader" in str(w.message)]
    assert len(messages) == 2
    assert any("fit(batch_size=8) is ignored" in m and "batch_size=16" in m for m in messages)
    assert any("fit(shuffle=False) is ignored" in m for m in messages)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m.fit(loader, epochs=1, batch_size=16, verbose=0)  # agrees with the loader: nothing to say


def test_validation_batch_size_warns_once_naming_fit():
    x, y = data()
    train = Loader(x, y, batch_size=16, seed=0, verbose=False)
    val = Loader(x, y, batch_size=16, shuffle=False, verbose=False)
    with pytest.warns(UserWarning) as caught:
        model().fit(train, validation_data=val, validation_batch_size=7, epochs=2, verbose=0)
    messages = [str(w.message) for w in caught if "gpuloader" in str(w.message)]
    assert messages == [messages[0]] and "fit(validation_batch_size=7) is ignored" in messages[0]


def test_predict_with_drop_remainder_warns_that_samples_are_dropped():
    x, _ = data(70)
    loader = Loader(x, batch_size=16, shuffle=False, drop_remainder=True, verbose=False)
    with pytest.warns(UserWarning, match="64 of its 70 samples"):
        predictions = model().predict(loader, verbose=0)
    assert predictions.shape == (64, 1)


def test_evaluating_with_drop_remainder_warns_that_the_same_samples_are_always_left_out():
    x, y = data(70)
    train = Loader(x, y, batch_size=16, seed=0, drop_remainder=True, verbose=False)
    validation = Loader(x, y, batch_size=16, drop_remainder=True, verbose=False)  # e.g. subset="both" kwargs
    with pytest.warns(UserWarning, match=r"fit's validation on a loader with drop_remainder=True scores 64 of its "
                                         r"70 samples, and always leaves out the same last 6"):
        model().fit(train, validation_data=validation, epochs=1, verbose=0)
    with pytest.warns(UserWarning, match=r"evaluate\(\) on a loader with drop_remainder=True scores 64 of its 70"):
        model().evaluate(Loader(x, y, batch_size=16, drop_remainder=True, verbose=False), verbose=0)


def test_a_subclass_overriding_getitem_is_refused_naming_transform():
    class Shaped(Loader):
        def __getitem__(self, index):
            x, y = super().__getitem__(index)
            return x * 2, y

    x, y = data()
    with pytest.raises(TypeError, match=r"Shaped overrides Loader.__getitem__.*transform="):
        Shaped(x, y, batch_size=16, verbose=False)


def test_a_subclass_adding_methods_trains_like_the_loader():
    class WithSummary(Loader):
        def summary(self):
            return f"{len(self)} batches"

    x, y = data()
    loader = WithSummary(x, y, batch_size=16, seed=0, verbose=False)
    assert loader.summary() == "4 batches"
    history = model().fit(loader, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2 and loader.get_state()["epoch"] == 2
