"""``from_tf_dataset``: a finite ``tf.data.Dataset`` (so also TFDS) materialised once into the cache.

Each element is one sample: a tensor, a dict, or a tuple ``(x,)``, ``(x, y)``
or ``(x, y, sample_weight)`` as Keras reads them, every component of a fixed
shape and a numeric or bool dtype. The pipeline runs once, its elements
written into one ``.npy`` per component, then the Loader serves those files by
the usual tiers. Refused, with the rule and the fix: an infinite dataset
(``repeat()``), one of unknown cardinality (``filter``, ``from_generator``),
ragged or sparse components, and components whose shape is not fixed (a
batched dataset has an unknown batch dimension: ``unbatch()`` it). Also refused,
because the cache would silently change what they mean: a dataset whose
elements come out of ``batch()`` (even with ``drop_remainder=True``, whose shapes
are fixed: each batch would become one sample; ``allow_batched=True`` for
elements that are batches on purpose, such as windows of a series), and a
pipeline that draws random numbers or changes a variable (random augmentation:
``tf.random.*``, a Keras random layer), whose draws would be made once and
replayed every epoch (``allow_random=True`` to cache one draw on purpose; the
Loader's ``augment=`` draws anew each epoch); ``Dataset.random()`` given no seed
counts as such a step. So does a ``take``/``skip``/``shard`` of an order that
changes from run to run (a ``shuffle()`` given no seed, ``deterministic=False``):
each part of such a split, cached by another run, would overlap the other. An
unseeded shuffle alone is accepted (the Loader reshuffles anyway). bfloat16
components are refused (a ``.npy`` file cannot hold them).

The cache key is the pipeline's serialized graph (what TensorFlow saves for
it: sources, file names, ops and their constants), its element spec and its
cardinality. A pipeline reading files whose contents change under the same
names is therefore not noticed: pass ``cache_key=`` naming the data's version,
or ``rebuild=True``. A pipeline TensorFlow cannot serialize (a Python
function through ``from_generator`` or ``py_function``) needs ``cache_key``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from gpuloader.ingest import cache as cache_lib
from gpuloader.ingest.progress import Progress

READ_BATCH = 256


def from_tf_dataset(
    dataset: Any,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    cache_key: str | None = None,
    rebuild: bool = False,
    allow_batched: bool = False,
    allow_random: bool = False,
    verbose: bool = True,
    **loader_kwargs: Any,
) -> Any:
    """A :class:`gpuloader.Loader` over every element of a finite ``tf.data.Dataset``, read once.

    Args:
        dataset: a ``tf.data.Dataset`` of single samples with fixed shapes.
        cache_dir: where the cache lives (see :func:`gpuloader.image_dataset_from_directory`).
        cache_key: a string naming this data (and its version); None derives
            the key from the pipeline's serialized graph.
        rebuild: read the pipeline again even if a cache entry exists; the new entry replaces it (later
            calls without ``rebuild`` open the new one).
        allow_batched: accept elements made by ``batch()`` (each one sample, e.g. a window of a series).
        allow_random: accept random ops or variables in the pipeline, drawn once when the cache is built.
        verbose: progress bar while reading (needs tqdm), and the Loader's own.
        **loader_kwargs: passed to the Loader (``batch_size``, ``shuffle``, ...).

    Cost: the first call runs the pipeline once (one pass, at its own speed)
    and writes the elements to disk; later calls map the files.
    """
    import tensorflow as tf

    if not isinstance(dataset, tf.data.Dataset):
        from gpuloader.inputs import other_input_kind

        other = other_input_kind(dataset)
        hint = f" It is {other[0]}. Fix: {other[1]}." if other is not None else ""
        raise TypeError(f"from_tf_dataset takes a tf.data.Dataset; received {type(dataset).__name__}.{hint}")
    count = int(dataset.cardinality().numpy())
    if count == tf.data.INFINITE_CARDINALITY:
        raise ValueError("the dataset is infinite (a repeat() without a count): a cache needs a finite number of "
                         "samples. Drop the repeat() (the Loader serves epochs itself) or take(n) samples.")
    if count == tf.data.UNKNOWN_CARDINALITY:
        raise ValueError(
            "the dataset's number of samples is unknown (filter, from_generator, flat_map ...): the cache is sized "
            "before the pipeline runs. State it: dataset = dataset.apply(tf.data.experimental.assert_cardinality(n)) "
            "(TensorFlow checks it while reading), or dataset.take(n) on an infinite one."
        )
    if count == 0:
        raise ValueError("the dataset is empty (cardinality 0); give at least one sample.")
    # The graph is written once: strictly (refused for state outside it, which the key needs), else leniently
    # for the checks alone; a pipeline's constants can be large (from_tensor_slices embeds its arrays).
    strict, outside = _serialized_graph(tf, dataset, strict=True)
    graph = strict if strict is not None else _serialized_graph(tf, dataset, strict=False)[0]
    if graph is not None:
        _check_graph(graph, allow_batched, allow_random)
    spec = dataset.element_spec
    components = tf.nest.flatten(spec)
    for path, component in zip(_paths(spec), components):
        _check_component(tf, path, component)
    structure = spec
    if isinstance(spec, tuple) and not 1 <= len(spec) <= 3:
        raise ValueError(f"elements are tuples of {len(spec)}; Keras reads (x,), (x, y) or (x, y, sample_weight). "
                         "Group the inputs: dataset.map(lambda *t: ((t[0], t[1]), t[2])) or use a dict.")
    shapes = [[count, *component.shape.as_list()] for component in components]
    dtypes = [np.dtype(component.dtype.as_numpy_dtype).str for component in components]
    if cache_key is None:
        if strict is None:
            raise ValueError(
                "this pipeline has state outside its graph (a Python generator, a py_function, or the random ops "
                f"allow_random=True accepted: {type(outside).__name__}), so the cache cannot tell one such "
                "pipeline's data from another's; pass cache_key='a name for this data and its version'."
            ) from outside
        cache_key = _graph_key(strict)
    content = {"key": cache_key, "shapes": shapes, "dtypes": dtypes}
    source = {"key": cache_key}

    def build(folder: Path) -> dict[str, Any]:
        return _materialise(tf, dataset, folder, shapes, dtypes, verbose)

    entry = cache_lib.open_or_build(cache_lib.cache_root(cache_dir), "tfdata", source, content, build, rebuild)
    arrays = tf.nest.pack_sequence_as(structure, [entry.array(f"c{i}") for i in range(len(components))],
                                      expand_composites=False)
    from gpuloader.loader import Loader

    parts = list(arrays) if isinstance(arrays, tuple) else [arrays]
    return Loader(*parts, verbose=verbose, **loader_kwargs)


def _serialized_graph(tf: Any, dataset: Any, strict: bool) -> tuple[Any, Exception | None]:
    """The pipeline's ``GraphDef`` as TensorFlow writes it, and None with TensorFlow's error where it refuses:
    ``strict`` refuses state outside the graph (a Python generator, ``py_function``, random ops)."""
    from tensorflow.core.framework import graph_pb2

    policy = tf.data.experimental.ExternalStatePolicy
    try:
        serialized = dataset._as_serialized_graph(external_state_policy=policy.FAIL if strict else policy.IGNORE)
    except Exception as error:
        return None, error
    return graph_pb2.GraphDef.FromString(serialized.numpy()), None


def _graph_key(graph: Any) -> str:
    """A hash of the pipeline's graph, the same for the same pipeline built again, in this process or another.

    Function names and the datasets' debug names carry a per-process counter
    (``__inference_..._11``, ``MapDataset:3``); the names are replaced by their
    position in the graph's function library, the debug names left out (``graph`` is changed).
    """
    for node in [*graph.node, *(node for function in graph.library.function for node in function.node_def)]:
        if "metadata" in node.attr:  # the dataset's debug name, numbered per process ("MapDataset:3")
            del node.attr["metadata"]
    text = graph.SerializeToString(deterministic=True)  # TF's own bytes vary with map order
    names = sorted((function.signature.name for function in graph.library.function), key=len, reverse=True)
    for position, name in enumerate(names):
        text = text.replace(name.encode(), f"<function {position}>".encode())
    return hashlib.sha256(text).hexdigest()


#: Dataset ops whose elements are batches of their input's elements.
_BATCHING = frozenset({
    "BatchDataset", "BatchDatasetV2", "PaddedBatchDataset", "PaddedBatchDatasetV2", "ParallelBatchDataset",
    "MapAndBatchDataset", "ExperimentalMapAndBatchDataset", "RebatchDataset", "RebatchDatasetV2",
    "DenseToSparseBatchDataset", "ExperimentalDenseToSparseBatchDataset",
})
_UNBATCHING = frozenset({"UnbatchDataset", "ExperimentalUnbatchDataset"})
#: Dataset ops whose first input picks which of the others gives each element (sample_from_datasets,
#: choose_from_datasets, rejection_resample): its elements (indices, batched or not) are never the data's.
_SELECTOR_FIRST = frozenset({"DirectedInterleaveDataset", "ExperimentalDirectedInterleaveDataset"})
#: Ops whose values differ from one run of the pipeline to the next: random numbers, or variables
#: (a Keras random layer's seed generator is one).
_STATEFUL = frozenset({
    "RandomUniform", "RandomUniformInt", "RandomStandardNormal", "TruncatedNormal",
    "ParameterizedTruncatedNormal", "RandomGamma", "RandomPoisson", "RandomPoissonV2", "RandomShuffle",
    "RandomCrop", "Multinomial", "StatefulUniform", "StatefulUniformInt", "StatefulUniformFullInt",
    "StatefulStandardNormal", "StatefulStandardNormalV2", "StatefulTruncatedNormal", "StatefulRandomBinomial",
    "RngSkip", "RngReadAndSkip", "VarHandleOp", "ReadVariableOp", "AssignVariableOp", "AssignAddVariableOp",
    "AssignSubVariableOp",
})
#: Dataset ops whose elements are random numbers (refused without a seed: the cache would replay one draw).
_RANDOM_DATA = frozenset({"RandomDataset", "RandomDatasetV2", "ExperimentalRandomDataset"})
#: Dataset ops that select elements by their position (a split: take/skip, or shard).
_SELECTING = frozenset({"TakeDataset", "SkipDataset", "ShardDataset"})
#: Dataset ops that draw an order or numbers from their ``seed`` and ``seed2`` inputs (their positions): both 0
#: means no seed was given (nor a global one), so TensorFlow draws one anew on every run. ShuffleDatasetV2
#: takes only a seed generator: unseeded.
_SEEDED = {
    "ShuffleDataset": (2, 3), "ShuffleDatasetV3": (2, 3), "ShuffleAndRepeatDataset": (2, 3),
    "ShuffleAndRepeatDatasetV2": (2, 3), "ShuffleDatasetV2": None, "RandomDataset": (0, 1),
    "RandomDatasetV2": (0, 1), "ExperimentalRandomDataset": (0, 1),
}


def _check_graph(graph: Any, allow_batched: bool, allow_random: bool) -> None:
    """Refuse a batched pipeline or one with random draws, unless allowed (see the module docstring)."""
    nodes = {node.name: node for node in graph.node}
    if not allow_batched:
        batching = _batching_op(nodes, next((node for node in graph.node if node.op == "_Retval"), None))
        if batching is not None:
            raise ValueError(
                f"the dataset's elements are batches (its pipeline ends in {batching}, after which nothing "
                "unbatches): each batch would become one sample, and the Loader would batch the batches. "
                "Fix: drop the batch() (the Loader batches: Loader(..., batch_size=...)), or unbatch it with its "
                "number of samples n stated (TensorFlow does not count an unbatched dataset's samples): "
                "dataset.unbatch().apply(tf.data.experimental.assert_cardinality(n)); "
                "if each element is one sample on purpose (e.g. a window of a series), pass allow_batched=True."
            )
    if not allow_random:
        scopes = [list(graph.node), *(list(function.node_def) for function in graph.library.function)]
        ops = {node.op for scope in scopes for node in scope}
        stateful = sorted(ops & _STATEFUL) + sorted({  # random numbers as data: replayed every epoch
            f"{node.op} without a seed" for scope in scopes for node in scope
            if node.op in _RANDOM_DATA and _unseeded(node, scope)
        })
        if stateful:
            raise ValueError(
                f"the pipeline draws random numbers or changes a variable ({', '.join(stateful)}: random "
                "augmentation, a Keras random layer, or Dataset.random()/sample_from_datasets() given no seed), and "
                "is read once into "
                "the cache: the draws would be made once and the same ones replayed every epoch. Fix: build the "
                "dataset without the random step and augment with the Loader's augment=[...] (drawn anew each "
                "epoch, keyed by seed, epoch and sample) or with layers in the model; pass allow_random=True to "
                "cache one draw on purpose."
            )
        selection = _selection_of_a_changing_order(graph, nodes, scopes)
        if selection is not None:
            raise ValueError(
                f"the pipeline selects samples by position ({selection}) from an order that differs from run "
                "to run (a shuffle() given no seed, or deterministic=False): the cache "
                "keeps one run's selection, so the other part of a take()/skip() or shard() split, cached by "
                "another run (a later process), would overlap it: training rows in the validation set. Fix: "
                "give it a seed, shuffle(n, seed=0) (without one it is not needed here: the Loader shuffles "
                "every epoch), or keep the order deterministic; allow_random=True caches one run's selection on "
                "purpose."
            )


def _selection_of_a_changing_order(graph: Any, nodes: dict[str, Any], scopes: list[list[Any]]) -> str | None:
    """``"<take/skip/shard op> after <op>"`` where a position-selecting op reads an order that changes from run
    to run (an unseeded shuffle upstream, a parallel op with ``deterministic=False``, or such a shuffle inside a
    function of the pipeline, whose place the walk does not follow); None otherwise."""
    options = [node for node in graph.node if node.op == "OptionsDataset"]
    loose = any(not _options_deterministic(node) for node in options)

    def changing(node: Any) -> bool:
        mode = node.attr["deterministic"].s if "deterministic" in node.attr else b""
        return (node.op in _SEEDED and _unseeded(node, graph.node)) or mode == b"false" or (
            loose and mode == b"default")

    inside = next((node.op for scope in scopes[1:] for node in scope
                   if node.op in _SEEDED and _unseeded(node, scope)), None)
    for selector in (node for node in graph.node if node.op in _SELECTING):
        seen: set[str] = set()
        pending = [nodes.get(name.lstrip("^").split(":")[0]) for name in selector.input[:1]]
        while pending:
            current = pending.pop()
            if current is None or current.name in seen or "Dataset" not in current.op:
                continue
            seen.add(current.name)
            if changing(current):
                return f"{selector.op} after {current.op}"
            pending += [nodes.get(name.lstrip("^").split(":")[0]) for name in current.input]
        if inside is not None:
            return f"{selector.op} after a {inside} inside a function of the pipeline"
    return None


def _options_deterministic(node: Any) -> bool:
    """Whether an ``OptionsDataset``'s options leave the order deterministic (TensorFlow's default)."""
    from tensorflow.core.framework import dataset_options_pb2

    options = dataset_options_pb2.Options.FromString(node.attr["serialized_options"].s)
    return not options.HasField("deterministic") or options.deterministic


def _unseeded(node: Any, scope: list[Any]) -> bool:
    """Whether ``node`` is a dataset op that draws from a seed (:data:`_SEEDED`) and was given none.

    Given a seed (its own, or ``tf.random.set_seed``'s), TensorFlow writes a nonzero constant in ``seed`` or
    ``seed2``; without one both are 0 (inside a function ``seed2`` is computed from 0), and a seed is drawn anew
    on every run. An input that is no constant gives no evidence of a seed either.
    """
    if node.op not in _SEEDED:
        return False
    positions = _SEEDED[node.op]
    if positions is None or len(node.input) <= max(positions):
        return True
    constants = {other.name: other for other in scope if other.op == "Const"}
    for position in positions:
        source = constants.get(node.input[position].lstrip("^").split(":")[0])
        if source is None:
            continue
        tensor = source.attr["value"].tensor
        values = list(tensor.int64_val) or np.frombuffer(tensor.tensor_content, np.int64).tolist()
        if any(values):
            return False
    return True


def _batching_op(nodes: dict[str, Any], node: Any) -> str | None:
    """The batching op whose batches reach ``node`` with no unbatching between, or None."""
    seen: set[str] = set()
    pending = [node]
    while pending:
        current = pending.pop()
        if current is None or current.name in seen or current.op in _UNBATCHING:
            continue
        seen.add(current.name)
        if current.op in _BATCHING:
            return current.op
        inputs = current.input[1:] if current.op in _SELECTOR_FIRST else current.input
        for name in inputs:
            parent = nodes.get(name.lstrip("^").split(":")[0])
            if parent is not None and "Dataset" in parent.op:
                pending.append(parent)
    return None


def _paths(spec: Any, prefix: str = "element") -> list[str]:
    """A readable name for each component of the element spec, in ``tf.nest.flatten`` order (dict keys sorted)."""
    if isinstance(spec, dict):
        return [name for key in sorted(spec) for name in _paths(spec[key], f"{prefix}[{key!r}]")]
    if isinstance(spec, (tuple, list)):
        return [name for i, part in enumerate(spec) for name in _paths(part, f"{prefix}[{i}]")]
    return [prefix]


def _check_component(tf: Any, path: str, component: Any) -> None:
    if isinstance(component, tf.RaggedTensorSpec):
        raise ValueError(f"{path} is ragged ({component}); a batch needs one shape per sample. Make it dense with a "
                         "fixed shape: dataset.map(lambda x: x.to_tensor(shape=[...])) (pads and cuts).")
    if not isinstance(component, tf.TensorSpec):
        raise ValueError(f"{path} is a {type(component).__name__}; only dense tensors can be cached. Convert it, "
                         "e.g. tf.sparse.to_dense in a map.")
    if not component.shape.is_fully_defined():
        raise ValueError(
            f"{path} has shape {component.shape}, not fixed; every sample needs the same shape. Resize or pad in a "
            "map (tf.image.resize, tf.ensure_shape); if the dataset is batched (first dimension None), unbatch() it: "
            "the Loader batches."
        )
    if component.dtype == tf.string:
        raise ValueError(f"{path} has dtype string; only numeric and bool tensors can be batched. "
                         "Decode strings in a map (e.g. tf.io.decode_image) or turn them into integer ids.")
    dtype = component.dtype
    if not (dtype.is_floating or dtype.is_integer or dtype.is_bool or dtype.is_complex):
        raise ValueError(f"{path} has dtype {dtype.name} (not data: a handle or variant); only numeric and bool "
                         "tensors can be cached. Map the pipeline to the tensors the model reads.")
    if np.dtype(component.dtype.as_numpy_dtype).kind not in "biufc":  # bfloat16: ml_dtypes' type, no .npy type
        raise ValueError(
            f"{path} has dtype {component.dtype.name}, which the cache's .npy files cannot hold (NumPy writes it as "
            "raw bytes, 'V2'). Fix: cast it in the pipeline, dataset.map(lambda x, y: (tf.cast(x, tf.float32), y)); "
            "for bfloat16 batches cast in the model, or end augment=[...] with Normalize(..., dtype='bfloat16')."
        )


def _batches(tf: Any, dataset: Any, count: int) -> Any:
    """The pipeline's elements in batches of :data:`READ_BATCH`; a wrong ``assert_cardinality`` named."""
    iterator = dataset.batch(READ_BATCH).prefetch(2).as_numpy_iterator()
    while True:
        try:
            yield next(iterator)
        except StopIteration:
            return
        except (tf.errors.FailedPreconditionError, tf.errors.InvalidArgumentError) as error:
            if "expected to contain" not in str(error):
                raise
            raise ValueError(
                f"the dataset does not hold the {count} samples its cardinality states (TensorFlow: "
                f"{str(error).splitlines()[0][:200]}). Fix the count given to "
                "tf.data.experimental.assert_cardinality(n)."
            ) from None


def _materialise(tf: Any, dataset: Any, folder: Path, shapes: list[list[int]], dtypes: list[str],
                 verbose: bool) -> dict[str, Any]:
    """Run the pipeline once, writing its elements into ``c<i>.npy``; the manifest's fields."""
    outs = [cache_lib.new_array(folder, f"c{i}", tuple(shape), dtype)
            for i, (shape, dtype) in enumerate(zip(shapes, dtypes))]
    count = shapes[0][0]
    row = 0
    with Progress(count, f"gpuloader: reading {count} samples", verbose) as progress:
        for batch in _batches(tf, dataset, count):
            parts = tf.nest.flatten(batch)
            size = len(parts[0])
            if row + size > count:
                raise ValueError(f"the dataset gave more than its cardinality of {count} samples; fix the "
                                 "assert_cardinality count.")
            for out, part in zip(outs, parts):
                out[row:row + size] = part
            row += size
            progress.advance(size)
    if row != count:
        raise ValueError(f"the dataset gave {row} samples, not its cardinality of {count}; fix the count.")
    for out in outs:
        out.flush()
    return {"arrays": cache_lib.describe({f"c{i}": out for i, out in enumerate(outs)})}
