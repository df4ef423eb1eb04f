"""Scaling out: shards across workers, per-replica batches under MirroredStrategy, multi-worker training."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import epoch_ids, id_data, sample_ids

from gpuloader import Loader

HERE = Path(__file__).parent


def shard_loaders(n, num_shards, **kwargs):
    x, y = id_data(n)
    kwargs.setdefault("seed", 21)
    return [Loader(x, y, num_shards=num_shards, shard_index=k, verbose=False, **kwargs) for k in range(num_shards)]


@pytest.mark.parametrize("num_shards", [2, 3])
@pytest.mark.parametrize(("n", "batch_size", "drop"), [(300, 32, False), (301, 32, False), (301, 32, True),
                                                        (1000, 7, True), (10, 4, False)])
def test_shards_together_see_every_sample_once_per_epoch(num_shards, n, batch_size, drop):
    loaders = shard_loaders(n, num_shards, batch_size=batch_size, drop_remainder=drop)
    assert len({len(loader) for loader in loaders}) == 1  # same number of steps on every worker
    for _ in range(3):
        per_shard = [epoch_ids(loader) for loader in loaders]
        union = [i for ids in per_shard for i in ids]
        assert len(union) == len(set(union))
        if drop:
            assert len(union) == num_shards * len(loaders[0]) * batch_size
        else:
            assert sorted(union) == list(range(n))
        for loader in loaders:
            loader.on_epoch_end()


def test_shards_are_fixed_and_shuffled_within_each_epoch():
    first, second = shard_loaders(200, 2, batch_size=10)
    epoch0 = epoch_ids(first)
    first.on_epoch_end()
    epoch1 = epoch_ids(first)
    assert sorted(epoch0) == sorted(epoch1) and epoch0 != epoch1
    assert not set(epoch0) & set(epoch_ids(second))
    assert "shard 0 of 2 (100 of 200 samples" in str(first.plan)


def test_on_disk_shards_read_only_their_own_rows(tmp_path):
    x, y = id_data(120)
    np.save(tmp_path / "x.npy", x)
    disk = [Loader(tmp_path / "x.npy", y, batch_size=16, seed=2, num_shards=3, shard_index=k, device="disk",
                   verbose=False) for k in range(3)]
    ram = shard_loaders(120, 3, batch_size=16, seed=2)
    for on_disk, in_ram in zip(disk, ram):
        assert on_disk.placement == "disk"
        assert epoch_ids(on_disk) == epoch_ids(in_ram)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(num_shards=2, shard_index=2), r"shard_index must be an int in \[0, num_shards=2\); received 2"),
    (dict(num_shards=0, shard_index=0), r"num_shards must be an int >= 1; received 0"),
    (dict(num_shards=3, shard_index=-1), r"received -1"),
    (dict(num_shards=2), r"num_shards and shard_index go together"),
    (dict(num_shards=2, shard_index=0, seed=None), r"num_shards=2 needs an explicit seed"),
    (dict(num_shards=2, shard_index=0, batch_size=5), r"shards of 5 and 6 samples, which make \[1, 2\] batches"),
    (dict(num_shards=20, shard_index=0), r"cannot fill num_shards=20"),
])
def test_wrong_shard_combinations_are_refused(kwargs, message):
    x, y = id_data(11 if kwargs.get("batch_size") == 5 or kwargs.get("num_shards") == 20 else 10)
    kwargs.setdefault("seed", 1)
    with pytest.raises(ValueError, match=message):
        Loader(x, y, verbose=False, **kwargs)


def test_shards_default_from_tf_config(monkeypatch):
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 2}}))
    x, y = id_data(90)
    loader = Loader(x, y, batch_size=10, seed=4, verbose=False)
    assert (loader.num_shards, loader.shard_index) == (3, 2)
    assert "from TF_CONFIG" in str(loader.plan)


@pytest.mark.parametrize(("n", "num_shards", "batch_size"), [(199, 2, 50), (599, 2, 100), (299, 3, 50), (899, 3, 100)])
def test_drop_remainder_serves_full_batches_when_shard_sizes_straddle_a_batch(n, num_shards, batch_size):
    """Shards of 99 and 100 rows with batches of 50: the step count comes from the smaller shard."""
    loaders = shard_loaders(n, num_shards, batch_size=batch_size, drop_remainder=True)
    sizes = [loader.num_samples for loader in loaders]
    steps = min(sizes) // batch_size
    assert max(sizes) // batch_size > steps, "the case must give the shards different counts of full batches"
    for epoch in range(2):
        per_shard = []
        for loader in loaders:
            batches = [sample_ids(loader[i][0]) for i in range(len(loader))]
            assert [len(batch) for batch in batches] == [batch_size] * steps, (
                f"shard {loader.shard_index} of {sizes} rows served batches of {[len(b) for b in batches]}"
            )
            per_shard.append([i for batch in batches for i in batch])
            loader.on_epoch_end()
        union = [i for ids in per_shard for i in ids]
        assert len(union) == len(set(union)) == num_shards * steps * batch_size, f"epoch {epoch}"
    for loader in loaders:  # the same steps through the adapter, which fit iterates
        assert [int(batch[0].shape[0]) for batch in loader.get_tf_dataset()] == [batch_size] * steps


def tf_config(cluster, kind, index):
    return json.dumps({"cluster": cluster, "task": {"type": kind, "index": index}})


def test_the_chief_in_tf_config_owns_a_shard_of_its_own(monkeypatch):
    cluster = {"chief": ["127.0.0.1:1"], "worker": ["127.0.0.1:2", "127.0.0.1:3"]}
    x, y = id_data(90)
    owned = {}
    for kind, index in (("chief", 0), ("worker", 0), ("worker", 1)):
        monkeypatch.setenv("TF_CONFIG", tf_config(cluster, kind, index))
        loader = Loader(x, y, batch_size=10, seed=4, shuffle=False, verbose=False)
        assert loader.num_shards == 3 and "from TF_CONFIG" in str(loader.plan)
        owned[kind, index] = (loader.shard_index, epoch_ids(loader))
    assert [shard for shard, _ in owned.values()] == [0, 1, 2]
    chief, worker0, worker1 = (set(ids) for _, ids in owned.values())
    assert not chief & worker0, "the chief and worker 0 own the same rows"
    assert sorted(chief | worker0 | worker1) == list(range(90)) and len(chief) == len(worker0) == 30



class FakeResolver:
    """The part of a cluster resolver default_shards reads."""

    def __init__(self, cluster, task_type, task_id):
        self._cluster, self.task_type, self.task_id = cluster, task_type, task_id

    def cluster_spec(self):
        return SimpleNamespace(as_dict=lambda: self._cluster)


def test_the_chief_of_an_active_strategy_owns_a_shard_of_its_own(monkeypatch):
    import tensorflow as tf

    cluster = {"chief": ["127.0.0.1:1"], "worker": ["127.0.0.1:2", "127.0.0.1:3"]}
    x, y = id_data(90)
    owned = []
    for kind, index in (("chief", 0), ("worker", 0), ("worker", 1)):
        strategy = SimpleNamespace(cluster_resolver=FakeResolver(cluster, kind, index))
        monkeypatch.setattr(tf.distribute, "has_strategy", lambda: True)
        monkeypatch.setattr(tf.distribute, "get_strategy", lambda strategy=strategy: strategy)
        loader = Loader(x, y, batch_size=10, seed=4, shuffle=False, verbose=False)
        assert "from the active tf.distribute strategy" in str(loader.plan)
        owned.append((loader.num_shards, loader.shard_index, set(epoch_ids(loader))))
    assert [(shards, index) for shards, index, _ in owned] == [(3, 0), (3, 1), (3, 2)]
    assert not owned[0][2] & owned[1][2], "the chief and worker 0 own the same rows"

def run_script(name, env_extra=None, args=(), timeout=240):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env_extra or {}))
    return subprocess.Popen([sys.executable, str(HERE / name), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def finish(process, timeout=240):
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"worker did not finish within {timeout} s: {err[-2000:]}")
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["host", "replicated", "sharded"])
def test_mirrored_strategy_over_two_logical_cpus(layout):
    report = finish(run_script("_mirrored_script.py", args=(layout,)))
    assert report["layout"] == ("" if layout == "host" else layout), report["plan"]
    for epoch in report["epochs"]:
        replica0, replica1 = epoch["seen"]["0"], epoch["seen"]["1"]
        assert epoch["devices_ok"], "a replica's part was not on its own device"
        assert sorted(replica0 + replica1) == list(range(600))
        assert abs(len(replica0) - len(replica1)) <= 64
        if layout != "host":  # replica r's parts were all gathered on fake GPU r
            assert epoch["gathered_on"] == [[0], [1]]
    if layout == "sharded":  # each GPU keeps its own rows every epoch
        assert set(report["epochs"][0]["seen"]["0"]) == set(report["epochs"][1]["seen"]["0"])
    assert report["epochs"][0]["seen"] != report["epochs"][1]["seen"]
    assert report["loss"][-1] < report["loss"][0] and report["accuracy"][-1] > 0.8


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_multi_worker_training_on_two_local_processes():
    workers = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    processes = []
    for index in range(2):
        config = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
        processes.append(run_script("_multiworker_script.py", {"TF_CONFIG": config}, args=(config,)))
    reports = [finish(process) for process in processes]
    assert [(r["num_shards"], r["shard_index"]) for r in reports] == [(2, 0), (2, 1)]
    assert reports[0]["steps"] == reports[1]["steps"] == 8
    assert "shard 1 of 2 (200 of 400 samples, from the active tf.distribute strategy" in reports[1]["plan"] or (
        "from TF_CONFIG" in reports[1]["plan"]
    )
    for epoch in range(3):
        union = reports[0]["seen"][epoch] + reports[1]["seen"][epoch]
        assert sorted(union) == list(range(400))
    assert reports[0]["seen"][0] != reports[0]["seen"][1]
    # Gradients are all-reduced, so both workers hold the same model and report the same loss.
    np.testing.assert_allclose(reports[0]["loss"], reports[1]["loss"], rtol=1e-5)
    assert reports[0]["loss"][-1] < reports[0]["loss"][0] and reports[0]["epoch"] == 3
