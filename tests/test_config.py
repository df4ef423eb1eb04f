"""One configuration value: checked once, read by every part, and parts built from it alone."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from gpuloader import Loader, inputs, sharding
from gpuloader.config import LoaderConfig
from gpuloader.layout import lay_out
from gpuloader.orders import Orders
from gpuloader.passes import KerasPasses
from gpuloader.permutation import MAX_SEED, permutation
from gpuloader.pipeline import BatchPipeline
from gpuloader.schedule import SIGNATURE_KEYS, EpochSchedule, state_signature

PACKAGE = Path(__file__).resolve().parents[1] / "gpuloader"
ARGUMENTS = dict(
    batch_size=8, shuffle=True, seed=5, drop_remainder=False, device="host", transform=None, data_format=None,
    gpu_memory_fraction=0.5, host_memory_limit=None, num_shards=None, shard_index=None, verbose=False,
    workers=1, max_queue_size=10,
)


def test_check_config_resolves_every_argument_once_and_the_value_is_immutable():
    config = inputs.check_config(**{**ARGUMENTS, "seed": None, "host_memory_limit": 8e9, "device": None})
    assert 0 <= config.seed <= MAX_SEED  # drawn once, here
    assert config.host_memory_limit == 8_000_000_000 and config.device in ("auto", "gpu", "host", "disk")
    assert config.data_format == "channels_last" and (config.num_shards, config.shard_index) == (1, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.batch_size = 16
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        inputs.check_config(**{**ARGUMENTS, "batch_size": 0})
    with pytest.raises(ValueError, match="num_shards=2 needs an explicit seed"):
        inputs.check_config(**{**ARGUMENTS, "seed": None, "num_shards": 2, "shard_index": 0})


def test_a_workers_seed_is_derived_in_one_place_and_wraps_at_2_64():
    assert LoaderConfig(batch_size=1, seed=MAX_SEED, shard_index=2).order_seed() == 1
    assert LoaderConfig(batch_size=1, seed=7, shard_index=3).order_seed(10) == sharding.shard_seed(10, 3) == 13


def test_the_orders_of_a_shard_are_keyed_by_its_seed_and_reseeding_drops_the_old_ones():
    orders = Orders(np, 50, LoaderConfig(batch_size=10, seed=9, shard_index=1))
    np.testing.assert_array_equal(orders.order(3), permutation(np, 50, 10, 3))
    orders.reseed(20)
    assert orders.seed == 20 and orders.ahead is None
    np.testing.assert_array_equal(orders.order(3), permutation(np, 50, 21, 3))


def test_the_state_signature_is_read_from_the_config():
    config = LoaderConfig(batch_size=8, shuffle=False, drop_remainder=True, num_shards=3, shard_index=2)
    signature = state_signature(config, 40, ["float32 ()"], [])
    assert list(signature) == list(SIGNATURE_KEYS)
    assert signature == {"num_samples": 40, "batch_size": 8, "shuffle": False, "drop_remainder": True,
                         "num_shards": 3, "shard_index": 2, "inputs": ["float32 ()"], "augment": []}


def test_the_parts_built_from_a_config_serve_what_the_loader_serves():
    x, y = np.arange(50, dtype=np.float32), np.arange(50) % 3
    config = inputs.check_config(**ARGUMENTS)
    structure, leaves, names = inputs.flatten_parts(x, y, None)
    layout = lay_out(leaves, names, config)
    orders = Orders(layout.store.xp, layout.store.n, config)
    schedule = EpochSchedule(orders, 7, state_signature(config, 50, inputs.describe_leaves(leaves), []), False)
    passes = KerasPasses(schedule, BatchPipeline(layout, structure, config, orders), config)
    served = [np.asarray(batch[0]) for batch in passes.iterate("numpy")]
    loader = Loader(x, y, batch_size=8, seed=5, device="host", verbose=False)
    expected = [np.asarray(batch[0]) for batch in loader.get_numpy_iterator()]
    assert len(served) == len(expected) == 7 and [len(batch) for batch in served] == [8] * 6 + [2]
    np.testing.assert_array_equal(np.concatenate(served), x[permutation(np, 50, 5, 0)])  # epoch 0's order
    for mine, theirs in zip(served, expected):
        np.testing.assert_array_equal(mine, theirs)
    assert schedule.get_state() == loader.get_state()  # both moved on to the same next batch


def _parameters(function: ast.FunctionDef) -> int:
    arguments = function.args
    return (len(arguments.posonlyargs) + len(arguments.args) - 1 + len(arguments.kwonlyargs)
            + (arguments.vararg is not None))


def test_no_constructor_but_the_loaders_takes_over_five_parameters_and_no_class_is_over_250_lines():
    crowded, long = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef):
                continue
            name = f"{path.relative_to(PACKAGE.parent)}:{node.name}"
            if node.end_lineno - node.lineno + 1 > 250:
                long.append(name)
            for init in (item for item in node.body if isinstance(item, ast.FunctionDef)):
                if init.name == "__init__" and node.name != "Loader" and _parameters(init) > 5:
                    crowded.append(f"{name} ({_parameters(init)})")
    assert crowded == [] and long == []
