"""What the loader accepts and refuses at construction (issue 9, items 10-13).

Every refusal names the rule, the value received and the fix; everything
accepted serves correct batches.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import id_data, sample_ids

from gpuloader import Loader, inputs
from gpuloader.handoff import check_transform_output, dtype_problem, hand_off

ml_dtypes = pytest.importorskip("ml_dtypes")  # installed with TensorFlow

# ---------------------------------------------------------------- item 11: lists of numbers


def test_a_list_of_number_lists_is_one_array_not_a_structure_of_inputs():
    rows = [[float(i), i + 0.5] for i in range(10)]
    loader = Loader(rows, list(range(10)), batch_size=4, shuffle=False, verbose=False)
    assert loader.num_samples == 10
    x, y = loader[0]
    np.testing.assert_array_equal(np.asarray(x), np.asarray(rows[:4]))
    assert np.asarray(y).tolist() == [0, 1, 2, 3]


def test_deeper_lists_of_numbers_and_rows_as_tuples_are_one_array_too():
    images = np.arange(6 * 2 * 3).reshape(6, 2, 3)
    loader = Loader(images.tolist(), batch_size=4, shuffle=False, verbose=False)
    assert loader.num_samples == 6 and len(loader) == 2
    (x,) = loader[0]
    assert not isinstance(x, tuple) and tuple(x.shape) == (4, 2, 3)
    np.testing.assert_array_equal(np.asarray(x), images[:4])
    pairs = Loader([(i, -i) for i in range(5)], batch_size=4, shuffle=False, verbose=False)
    (x,) = pairs[1]
    assert pairs.num_samples == 5 and np.asarray(x).tolist() == [[4, -4]]


def test_a_list_of_arrays_and_a_tuple_of_lists_stay_structures_of_inputs():
    a, b = np.zeros((10, 2), np.float32), np.ones((10, 3), np.float32)
    x = Loader([a, b], batch_size=4, verbose=False)[0][0]
    assert isinstance(x, tuple) and [tuple(part.shape) for part in x] == [(4, 2), (4, 3)]
    loader = Loader(([1, 2, 3], [4, 5, 6]), batch_size=3, shuffle=False, verbose=False)
    two = loader[0][0]
    assert loader.num_samples == 3 and isinstance(two, tuple)
    assert [np.asarray(part).tolist() for part in two] == [[1, 2, 3], [4, 5, 6]]


def test_a_list_of_numpy_scalars_is_one_array():
    labels = [np.int64(i % 3) for i in range(9)]  # what iterating an int64 array gives
    loader = Loader(np.zeros((9, 2)), labels, batch_size=9, shuffle=False, verbose=False)
    assert np.asarray(loader[0][1]).tolist() == [i % 3 for i in range(9)]
    flags = Loader([np.float32(0.5), np.bool_(True), 2], batch_size=3, shuffle=False, verbose=False)
    assert np.asarray(flags[0][0]).tolist() == [0.5, 1.0, 2.0]


# ---------------------------------------------------------------- item 13: messages


def test_a_list_of_string_labels_is_refused_as_strings_not_as_missing_files():
    with pytest.raises(TypeError, match=r"y is a list of 4 strings \('cat', 'dog', 'cat', \.\.\.\).*encode them as "
                       r"integer ids.*np\.unique"):
        Loader(np.zeros((4, 2)), ["cat", "dog", "cat", "bird"], verbose=False)


def test_a_list_of_npy_paths_that_do_not_exist_is_still_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"x shard 0: the file '.*a\.npy' does not exist"):
        Loader([str(tmp_path / "a.npy"), str(tmp_path / "b.npy")], verbose=False)


@pytest.mark.parametrize("empty", [[], ()])
def test_an_empty_list_says_what_to_give(empty):
    with pytest.raises(ValueError, match=r"x is an empty (list|tuple); give the data: an array, a list of numbers, "
                       r"or a non-empty list of \.npy paths"):
        Loader(empty, verbose=False)


@pytest.mark.parametrize("name", ["bfloat16", "float8_e4m3fn", "float8_e5m2"])
def test_ml_dtypes_floats_are_refused_at_construction_with_the_cast_to_make(name, tmp_path):
    # DLPack (NumPy's exporter, to TensorFlow and torch) refuses them: checked, BufferError at every batch.
    data = np.ones((8, 2), getattr(ml_dtypes, name))
    message = rf"x has dtype {name} \(an ml_dtypes type.*float16.*float32: value\.astype\(np\.float32\)"
    with pytest.raises(TypeError, match=message):
        Loader(data, verbose=False)
    path = tmp_path / "bf.npy"
    np.save(path, data)  # stored as raw bytes ("|V2"), the ml_dtypes type is lost
    if np.dtype(data.dtype).kind == "V":
        with pytest.raises(TypeError, match=r"dtype \|V\d \(raw bytes: np.save writes bfloat16.*astype\(np.float32\)"):
            Loader(path, device="disk", verbose=False)


@pytest.mark.parametrize(("dtype", "fix"), [(np.longdouble, "np.float64"), (np.clongdouble, "np.complex128")])
def test_long_double_is_refused_at_construction(dtype, fix):
    if np.dtype(dtype) in (np.dtype(np.float64), np.dtype(np.complex128)):
        pytest.skip("long double is float64 on this platform")
    with pytest.raises(TypeError, match=rf"x has dtype {np.dtype(dtype)} \(long double.*astype\({fix}\)"):
        Loader(np.zeros((8, 2), dtype), verbose=False)


def test_structured_and_raw_byte_dtypes_say_what_to_pass():
    records = np.zeros(4, dtype=[("a", "f4"), ("b", "i4")])
    with pytest.raises(TypeError, match=r"structured array with fields a, b.*value\[field\]"):
        Loader(records, verbose=False)
    with pytest.raises(TypeError, match=r"raw bytes.*value\.view\(np\.uint8\)"):
        Loader(np.zeros(4, "V8"), verbose=False)


def test_every_dtype_accepted_at_construction_is_handed_to_tensorflow():
    """The refusal list is the hand-off's: what passes construction must pass DLPack into TensorFlow."""
    for code in "?bBhHiIlLqQefdFD":
        dtype = np.dtype(code)
        loader = Loader(np.zeros((4, 2), dtype), batch_size=4, verbose=False)
        assert loader[0][0].shape == (4, 2), dtype
    for dtype in (np.longdouble, np.clongdouble, ml_dtypes.bfloat16, "V8", ">f4"):
        if np.dtype(dtype) in (np.dtype(np.float64), np.dtype(np.complex128)):
            continue  # long double is float64 on this platform
        assert dtype_problem(dtype, "x") is not None, dtype
        if dtype is ml_dtypes.bfloat16:  # refused as an input, but a batch of it (augment.Normalize) goes over
            assert hand_off(np.zeros(4, dtype), "tensorflow").dtype.name == "bfloat16"
            continue
        with pytest.raises(BufferError):
            hand_off(np.zeros(4, dtype), "tensorflow")


# ---------------------------------------------------------------- item 12: silently accepted values


def test_a_masked_array_is_refused_with_fill_and_mask_as_input():
    x = np.ma.masked_array(np.arange(6.0).reshape(3, 2), mask=[[0, 1], [0, 0], [1, 0]])
    with pytest.raises(TypeError, match=r"x is a masked array \(np\.ma, 2 of 6 values masked\).*mask would be "
                       r"dropped.*value\.filled\(0\).*np\.ma\.getmaskarray\(value\)"):
        Loader(x, verbose=False)
    with pytest.raises(TypeError, match=r"y\[0\] is a masked array"):
        Loader(np.zeros((3, 2)), [np.ma.masked_array([1, 2, 3])], verbose=False)


CLASS_WEIGHTS = [
    ("negative", {0: 1.0, 1: -2.0}, r"finite and >= 0.*class 1 has -2\.0"),
    ("nan", {0: float("nan"), 1: 1.0}, r"finite and >= 0.*class 0 has nan"),
    ("inf", {0: 1.0, 1: float("inf")}, r"finite and >= 0.*class 1 has inf"),
    ("not a number", {0: 1.0, 1: "high"}, r"must be numbers; class 1 has 'high'"),
    ("fractional key", {0: 1.0, 1.5: 2.0}, r"keys must be integer class indices; received the key 1\.5"),
    ("string key", {"cat": 1.0}, r"keys must be integer class indices; received the key 'cat'"),
]


@pytest.mark.parametrize(("case", "weights", "message"), CLASS_WEIGHTS, ids=[c[0] for c in CLASS_WEIGHTS])
def test_class_weights_must_be_finite_non_negative_numbers_for_integer_classes(case, weights, message):
    with pytest.raises(ValueError, match=message):
        Loader(np.zeros((4, 2)), np.array([0, 1, 1, 0]), class_weight=weights, verbose=False)


def test_float_labels_with_class_weight_must_be_whole_numbers():
    x = np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match=r"integer class labels; y \(dtype float32\) holds 0\.7 at sample 1 \(2 "
                       r"non-integer value\(s\) in all\).*y\.astype\(np\.int64\).*sample_weight"):
        Loader(x, np.array([0.0, 0.7, 1.0, 0.2], np.float32), class_weight={0: 1.0, 1: 3.0}, verbose=False)
    with pytest.raises(ValueError, match=r"holds nan at sample 0"):
        Loader(x, np.array([np.nan, 0, 1, 1]), class_weight={0: 1.0, 1: 3.0}, verbose=False)
    whole = Loader(x, np.array([0.0, 1.0, 1.0, 0.0]), class_weight={0: 1.0, 1: 3.0}, batch_size=4, shuffle=False,
                   verbose=False)
    assert np.asarray(whole[0][2]).tolist() == [1.0, 3.0, 3.0, 1.0]
    binary = Loader(x, np.array([[0.0], [1.0], [1.0], [0.0]]), class_weight={0: 2, 1: 0}, batch_size=4,
                    shuffle=False, verbose=False)
    assert np.asarray(binary[0][2]).tolist() == [2.0, 0.0, 0.0, 2.0]


def test_check_host_memory_limit():
    assert inputs.check_host_memory_limit(None) is None
    assert inputs.check_host_memory_limit(8 * 1024**3) == 8 * 1024**3
    assert inputs.check_host_memory_limit(8e9) == 8_000_000_000
    assert inputs.check_host_memory_limit(np.int64(5)) == 5 and inputs.check_host_memory_limit(0) == 0
    for bad in ("lots", 1.5, float("inf"), True, [1]):
        with pytest.raises(TypeError, match=rf"host_memory_limit must be a number of bytes \(an int\) or None; "
                           rf"received {re_value(bad)}\. Pass e\.g\."):
            inputs.check_host_memory_limit(bad)
    with pytest.raises(ValueError, match=r"host_memory_limit must be >= 0 bytes; received -5\. Pass e\.g\."):
        inputs.check_host_memory_limit(-5)


def re_value(value) -> str:
    import re

    return re.escape(repr(value))


# These go through Loader: they pass once loader.py calls the checks (see the report to the loader's owner).
@pytest.mark.parametrize(("limit", "error"), [("lots", TypeError), (-5, ValueError)])
def test_a_wrong_host_memory_limit_is_refused_even_when_the_data_is_in_ram(limit, error):
    with pytest.raises(error, match="host_memory_limit"):
        Loader(np.zeros((4, 2)), host_memory_limit=limit, verbose=False)


def test_verbose_must_be_a_bool():
    with pytest.raises(TypeError, match=r"verbose must be True or False; received 'loud'"):
        Loader(np.zeros((4, 2)), verbose="loud")


# ---------------------------------------------------------------- item 10: what a transform returns


def test_check_transform_output_says_what_to_return():
    import tensorflow as tf

    batch = (np.ones((4, 2), np.float32), np.arange(4))
    structure, leaves = check_transform_output(batch, "tensorflow")
    assert structure.rebuild(leaves)[1] is batch[1]
    read_only = np.broadcast_to(np.float32(1), (4, 2))
    with pytest.raises(TypeError, match=r"transform output\[0\] is a read-only NumPy array.*Return a writable array.*"
                       r"xp\.asarray\(value, copy=True\)"):
        check_transform_output((read_only, batch[1]), "tensorflow")
    check_transform_output((read_only, batch[1]), "torch")  # torch's DLPack import takes read-only arrays
    with pytest.raises(TypeError, match=r"transform output\[0\] is a TensorFlow tensor \(EagerTensor\).*arrays of "
                       r"xp.*Compute with xp"):
        check_transform_output((tf.constant(batch[0]), batch[1]), "tensorflow")
    with pytest.raises(TypeError, match=r"transform output\[1\] has dtype >i8 in non-native byte order.*"
                       r"newbyteorder\('='\)"):
        check_transform_output((batch[0], batch[1].astype(">i8")), "tensorflow")
    with pytest.raises(TypeError, match=r"transform output\[0\] has dtype bfloat16.*float32"):
        check_transform_output((batch[0].astype(ml_dtypes.bfloat16),), "jax")
    with pytest.raises(TypeError, match=r"must return a tuple \(x,\), \(x, y\) or \(x, y, sample_weight\)"):
        check_transform_output(batch[0], "tensorflow")
    with pytest.raises(TypeError, match="not an array of the namespace xp"):
        check_transform_output((batch[0].tolist(),), "tensorflow")


@pytest.mark.parametrize("returned", ["read-only", "tf.Tensor"])
def test_a_transform_returning_what_tensorflow_cannot_take_is_told_what_to_return(returned):
    import tensorflow as tf

    def transform(batch, xp):
        x, y = batch
        if returned == "read-only":
            return np.broadcast_to(x[:1], x.shape), y
        return tf.constant(x) * 2, y

    x, y = id_data(20)
    loader = Loader(x, y, batch_size=4, transform=transform, verbose=False)
    with pytest.raises(TypeError, match="read-only NumPy array" if returned == "read-only" else "TensorFlow tensor"):
        loader[0]


def test_a_transform_returning_writable_xp_arrays_still_serves():
    x, y = id_data(20)
    loader = Loader(x, y, batch_size=4, seed=0, transform=lambda b, xp: (xp.asarray(b[0], copy=True) * 2, b[1]),
                    verbose=False)
    xs, ys = loader[0]
    assert [i // 2 for i in sample_ids(xs)] == np.asarray(ys).tolist()


# ---------------------------------------------------------------- inputs with a function of their own
def _hf_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    return datasets.Dataset.from_dict({"a": np.zeros((8, 3), np.float32)})


def _tf_dataset(tmp_path):
    tf = pytest.importorskip("tensorflow")
    return tf.data.Dataset.from_tensor_slices(np.zeros((8, 3), np.float32))


def _folder(tmp_path):
    (tmp_path / "images" / "cats").mkdir(parents=True)
    return str(tmp_path / "images")


@pytest.mark.parametrize(
    ("make", "fix"),
    [
        (_hf_dataset, r"is a Hugging Face datasets\.Dataset, not an array.*gpuloader\.from_hf_dataset\(dataset, x="),
        (_tf_dataset, r"is a tf\.data\.Dataset, not an array.*gpuloader\.from_tf_dataset\(dataset\)"),
        (_folder, r"is the folder .*images', not an array.*gpuloader\.image_dataset_from_directory\(folder\)"),
    ],
)
def test_a_dataset_or_a_folder_given_to_loader_names_its_own_function(tmp_path, make, fix):
    with pytest.raises(TypeError, match=fix):
        Loader(make(tmp_path), verbose=False)
