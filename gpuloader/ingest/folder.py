"""``image_dataset_from_directory``: Keras's function of that name, decoded once into the cache.

The files, class names, labels and training/validation split are those of
``keras.utils.image_dataset_from_directory`` (Keras 3.15, its
``dataset_utils`` module): class folders in alphanumeric order
(or ``class_names``' order), files found by a sorted ``os.walk`` of each, the
list shuffled by ``np.random.RandomState(seed)`` when ``shuffle``, the last
``int(validation_split * n)`` files for validation. The pixels are decoded by
Pillow once, into the cache (:mod:`gpuloader.ingest.cache`), keyed by every
file's path, size, times and inode and the decode settings; a later call,
in any process, walks the folder (one ``stat`` per file), finds the entry and
maps it without decoding (Pillow is not even imported).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gpuloader.blocks import BlockPool
from gpuloader.ingest import cache as cache_lib
from gpuloader.ingest import decode

try:  # the compiled stat of many files (setup.py builds it where a C compiler is found); else os.stat in a loop
    from gpuloader.ingest import _stat
    _STAT_ERROR = ""
except ImportError as _error:  # pragma: no cover - depends on the build
    _stat = None
    _STAT_ERROR = str(_error)

ON_ERROR = ("raise", "skip")
# The splits this process has served, to tell a validation_split call whose folder changed since the call that made
# the other subset: {(folder, split arguments): {subset: (the listing's content hash, its files' hashes, sorted)}}.
_SPLITS_SERVED: dict[tuple[Any, ...], dict[str, tuple[str, np.ndarray]]] = {}


def image_dataset_from_directory(
    directory: str | os.PathLike[str],
    labels: Any = "inferred",
    label_mode: str | None = "int",
    class_names: Sequence[str] | None = None,
    color_mode: str = "rgb",
    batch_size: int = 32,
    image_size: tuple[int, int] | int | None = (256, 256),
    shuffle: bool = True,
    seed: int | None = None,
    validation_split: float | None = None,
    subset: str | None = None,
    interpolation: str = "bilinear",
    follow_links: bool = False,
    crop_to_aspect_ratio: bool = False,
    *,
    dtype: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    on_error: str = "raise",
    verbose: bool = True,
    **loader_kwargs: Any,
) -> Any:
    """Loader(s) over a folder of images, one subfolder per class, decoded once and cached.

    The arguments keep the names and meaning of
    ``keras.utils.image_dataset_from_directory`` (same files, class names and
    order, labels, and split), and each returned :class:`gpuloader.Loader`
    carries ``class_names`` and ``file_paths`` (``file_paths[i]`` is row ``i``
    of the data). Differences:

    - ``image_size=None`` keeps the images' own size (they must all be equal).
      Images already at ``image_size`` have Keras's exact pixels; resized
      ones are resampled by Pillow (``interpolation`` names its filter: area is
      ``BOX``, lanczos3 ``LANCZOS``; Pillow filters antialias when shrinking,
      TensorFlow's ``resize`` does not; values are rounded to uint8), so they
      differ from Keras's by a few levels (a JPEG twice the target size or
      more is first decoded by libjpeg at a reduced scale, down to twice the
      target, except for nearest and crop_to_aspect_ratio). lanczos5,
      gaussian, mitchellcubic and ``pad_to_aspect_ratio`` are not offered.
    - The cache stores uint8, channels-last; ``dtype="float32"`` (Keras's type,
      the default) casts each batch where the data lives, ``dtype="uint8"``
      serves the stored bytes (4x less to move; cast in the model), and an
      ``augment`` list ending in ``Normalize`` decides the dtype itself (leave
      ``dtype`` out). Under ``keras.config.image_data_format() ==
      "channels_first"`` the batches are ``(n, C, H, W)`` as Keras's (one copy
      per batch); the augmentation ops read the channels-last cache either way.
    - ``labels`` given as a list: whole numbers are class ids (int32), other
      numbers are served as given (float32), as Keras serves them.
    - The training order is the loader's own keyed permutation of ``seed``
      (a new one every epoch, all samples), not a shuffle buffer.
    - A corrupt or unreadable image raises an error naming it;
      ``on_error="skip"`` leaves it out and warns with the count. An empty
      class folder, a folder with no images and images of several sizes
      without ``image_size`` are refused.

    Args:
        directory, labels, label_mode, class_names, color_mode, batch_size,
            image_size, shuffle, seed, validation_split, subset, interpolation,
            follow_links, crop_to_aspect_ratio: as in Keras (``batch_size``
            must be an int here).
        dtype: "float32" or "uint8", the image dtype of the batches; None (the default): "float32", or the
            dtype of a final ``Normalize`` in ``augment``.
        cache_dir: where the cache lives (default ``$GPULOADER_CACHE_DIR``, else
            ``$XDG_CACHE_HOME/gpuloader``, else ``~/.cache/gpuloader``).
        on_error: "raise" or "skip" for images that cannot be decoded.
        verbose: progress bar while decoding (needs tqdm) and the Loader's own.
        **loader_kwargs: passed to :class:`gpuloader.Loader` (``device``,
            ``augment``, ``transform``, ``workers``, ...).

    Returns:
        A Loader, or ``(training, validation)`` for ``subset="both"``.

    Cost: the first call decodes every image once, over all cores; later calls
    walk the folder and map the cache (no decode). The loaders then place the
    uint8 images as any ``.npy`` input: GPU if they fit, else RAM, else disk.
    """
    settings, on_error, seed, kind, dtype = _check_arguments(
        labels, label_mode, class_names, color_mode, batch_size, image_size, shuffle, seed, validation_split,
        subset, interpolation, crop_to_aspect_ratio, dtype, on_error, loader_kwargs,
    )
    if labels is None or label_mode is None:
        labels, label_mode = None, None
    directory = os.path.abspath(os.fspath(directory))
    files, file_labels, names = index_directory(directory, _as_list(labels), class_names, follow_links,
                                                skip=str(cache_lib.cache_root(cache_dir).resolve()))
    _check_label_mode(label_mode, file_labels, names)
    entry = build_cache(directory, files, settings, kind, class_names, follow_links, cache_dir, verbose)
    skipped = {int(row): problem for row, problem in entry.manifest["skipped"]}
    if skipped and on_error == "raise":
        raise decode.DecodeError(_listing(skipped, "could not be decoded when the cache was built") +
                                 ' Remove or fix them, or pass on_error="skip" to leave them out.')
    if skipped:
        _refuse_emptied(skipped, files, file_labels, names, labels)
        warnings.warn(f"{len(skipped)} of {len(files)} images could not be decoded and were skipped "
                      f"(on_error='skip'): {_listing(skipped, '')}", stacklevel=2)
    kept = np.array([row for row in range(len(files)) if row not in skipped], dtype=np.int64)
    images = entry.array("images")
    # Keras's split is of the listed files, before any is decoded: skipped files leave the subset Keras puts them
    # in, and the other files stay where Keras (and a later call with the file fixed) puts them.
    order = np.arange(len(files))
    if shuffle:
        np.random.RandomState(seed % 2**32).shuffle(order)  # Keras shuffles the file list so before splitting
    parts = [("training", True), ("validation", False)] if subset == "both" else [(subset, shuffle)]
    loaders = []
    for part, part_shuffle in parts:
        rows = _split(order, validation_split, part, directory)
        if skipped:
            rows = rows[np.isin(rows, kept)]
            if not len(rows):
                raise ValueError(f"every image of the {part} subset of {directory!r} was skipped (on_error='skip'): "
                                 f"{_listing(skipped, '')}. Fix or remove them, or choose another validation_split.")
        rows = np.searchsorted(kept, rows)  # file rows to rows of the cache, which holds the kept files only
        if validation_split:
            _check_split_of_the_same_listing(
                (directory, kind, tuple(class_names or ()), follow_links, seed, float(validation_split), shuffle),
                part, entry.manifest["content_hash"], [files[row] for row in kept[rows]],
            )
        if shuffle:
            rows = np.sort(rows)  # the loader shuffles by its own keyed order; rows ascending read the file in order
        loaders.append(_loader(
            images, rows, kept, files, file_labels, names, label_mode, directory, dtype, batch_size,
            part_shuffle and shuffle, seed, verbose, loader_kwargs,
        ))
    return tuple(loaders) if subset == "both" else loaders[0]


def _check_arguments(
    labels: Any, label_mode: Any, class_names: Any, color_mode: Any, batch_size: Any, image_size: Any,
    shuffle: Any, seed: Any, validation_split: Any, subset: Any, interpolation: Any, crop_to_aspect_ratio: Any,
    dtype: Any, on_error: Any, loader_kwargs: dict[str, Any],
) -> tuple[decode.DecodeSettings, str, int, str, str | None]:
    """Keras's checks, in Keras's words where it has them, plus this function's own."""
    from gpuloader import inputs

    labels = _as_list(labels)
    if not (labels is None or (isinstance(labels, str) and labels == "inferred")):
        if not isinstance(labels, (list, tuple)):
            raise ValueError(
                "labels must be \"inferred\", None, or a list/tuple of integer labels, one per image file in "
                f"the sorted order of os.walk; received labels={labels!r}."
            )
        if class_names:
            raise ValueError('class_names can only be given with labels="inferred"; received '
                             f"class_names={class_names}.")
    if labels is None and class_names:
        raise ValueError("class_names can only be given with labels=\"inferred\" (with labels=None every file "
                         f"of the folder is read, whatever its class); received class_names={list(class_names)}. "
                         "Fix: labels=\"inferred\" to keep those classes, or drop class_names.")
    if class_names is not None and len(set(class_names)) != len(class_names):
        repeated = sorted({name for name in class_names if list(class_names).count(name) > 1})
        raise ValueError(f"class_names names {repeated} more than once: each class folder is one class, read once. "
                         f"Fix: list each name once; received class_names={list(class_names)}.")
    if label_mode not in ("int", "categorical", "binary", None):
        raise ValueError(f'label_mode must be "int", "categorical", "binary" or None; received {label_mode!r}.')
    if batch_size is None:
        raise ValueError("batch_size=None (unbatched samples) is not offered: a Loader serves batches; give an int.")
    if "pad_to_aspect_ratio" in loader_kwargs or "data_format" in loader_kwargs:
        raise ValueError("pad_to_aspect_ratio and data_format are not offered: images are stored channels-last, "
                         "resized (or cropped with crop_to_aspect_ratio=True); transpose in transform= if needed.")
    dtype = _batch_dtype(dtype, loader_kwargs.get("augment"))
    decode.refuse_channels_first(loader_kwargs, "the folder's images")
    if on_error not in ON_ERROR:
        raise ValueError(f'on_error must be "raise" or "skip"; received {on_error!r}.')
    settings = decode.check_settings(image_size, color_mode, interpolation, crop_to_aspect_ratio)
    if (validation_split is not None and not isinstance(validation_split, (int, float))) or (
            validation_split and not 0 < validation_split < 1):
        raise ValueError(f"validation_split must be between 0 and 1; received {validation_split!r}.")
    if bool(validation_split) != bool(subset):
        raise ValueError("subset and validation_split go together: give both (e.g. validation_split=0.2, "
                         f'subset="training") or neither; received validation_split={validation_split!r}, '
                         f"subset={subset!r}.")
    if subset not in ("training", "validation", "both", None):
        raise ValueError(f'subset must be "training", "validation" or "both"; received {subset!r}.')
    if validation_split and shuffle and seed is None:
        raise ValueError("validation_split with shuffle=True needs a seed, so that the training and validation "
                         "subsets of every call are the same files and never overlap; pass seed=... .")
    seed = inputs.check_seed(seed)
    kind = "inferred" if isinstance(labels, str) else "files"
    return settings, on_error, seed, kind, dtype


def _as_list(labels: Any) -> Any:
    """``labels`` given as a 1-d NumPy array, as a list (Keras takes lists and tuples; an array's ``==`` with
    "inferred" would compare element by element)."""
    if isinstance(labels, np.ndarray):
        if labels.ndim != 1:
            raise ValueError(f"labels must be one number per image file; received an array of shape {labels.shape}.")
        return labels.tolist()
    return labels


def _check_label_mode(label_mode: str | None, file_labels: np.ndarray | None, names: list[str] | None) -> None:
    """What ``label_mode`` needs of the labels, checked before any image is decoded.

    Raises:
        ValueError: "binary" without exactly 2 classes, or values outside [0, 1]; "categorical" with labels
            that are not the class ids 0 ... k-1 (a one-hot row of k columns has no place for another value).
    """
    if label_mode == "binary":
        if len(names or ()) != 2:
            raise ValueError(
                f'label_mode="binary" needs exactly 2 classes; found {len(names or ())}: {names}. Use "int" or '
                '"categorical", or pass class_names with two of them.'
            )
        outside = np.unique(file_labels[(file_labels < 0) | (file_labels > 1)]) if file_labels is not None else []
        if len(outside):
            raise ValueError(
                f'label_mode="binary" serves each label as a float32 target of a binary loss, 0 to 1; labels holds '
                f"{outside[:5].tolist()}. Fix: give labels 0 and 1 (e.g. [int(v == {outside.tolist()[0]!r}) for v in "
                'labels]), or label_mode="int".'
            )
    if label_mode != "categorical" or file_labels is None or names is None:
        return
    if file_labels.dtype.kind == "f":
        raise ValueError(
            'label_mode="categorical" needs whole-number class ids in labels; received non-integer values '
            f"such as {file_labels[file_labels != np.round(file_labels)][:3].tolist()}. Fix: label_mode=\"int\" "
            "(served as given, float32) or integer labels."
        )
    outside = np.unique(file_labels[(file_labels < 0) | (file_labels >= len(names))])
    if len(outside):
        raise ValueError(
            f'label_mode="categorical" makes a one-hot row of {len(names)} columns (one per distinct label: '
            f"{names}), so the labels must be the class ids 0 to {len(names) - 1}; labels holds "
            f"{outside[:5].tolist()}, which no column would mark. Fix: number the classes 0 to {len(names) - 1} "
            '(e.g. [sorted(set(labels)).index(v) for v in labels]), or label_mode="int".'
        )


def _batch_dtype(dtype: Any, augment: Any) -> str | None:
    """The images' batch dtype: ``dtype``; None (the default) is ``"float32"``, or a final ``Normalize``'s own
    (returned as None: the batches leave the kernel in that dtype and are not cast again)."""
    from gpuloader.augment import Normalize
    from gpuloader.augment.apply import ops_and_stream

    ops = augment.get("x") if isinstance(augment, dict) else augment
    ops = ops_and_stream(ops)[0] if ops is not None else None
    normalize = ops[-1] if isinstance(ops, (list, tuple)) and ops and type(ops[-1]) is Normalize else None
    if dtype not in (None, "float32", "uint8"):
        raise ValueError(f'dtype must be "float32" (as Keras) or "uint8" (the stored bytes); received {dtype!r}.')
    if normalize is None:
        return dtype or "float32"
    if dtype is not None:
        raise ValueError(
            f"dtype={dtype!r} and augment's final Normalize(dtype={normalize.dtype!r}) both say what the image "
            f"batches are: the Normalize writes {normalize.dtype} in the kernel's pass. Fix: leave dtype out "
            "(the Normalize decides), or change the Normalize's dtype."
        )
    return None


def index_directory(
    directory: str, labels: Any, class_names: Sequence[str] | None, follow_links: bool, skip: str | None = None
) -> tuple[list[str], np.ndarray | None, list[str] | None]:
    """The image files (relative to ``directory``), their labels and the class names, in Keras's unshuffled order.

    ``skip``: a folder inside ``directory`` that is not a class (the cache, when it is kept beside the images).

    Raises:
        ValueError: no such folder, ``class_names`` that are not its subfolders,
            an empty class folder, no images, or labels of the wrong length.
    """
    if not os.path.isdir(directory):
        raise ValueError(f"directory {directory!r} is not a folder; pass the folder that holds one subfolder "
                         "per class.")
    if labels == "inferred":
        subdirs = [name for name in sorted(os.listdir(directory))
                   if os.path.isdir(os.path.join(directory, name)) and not name.startswith(".")
                   and os.path.realpath(os.path.join(directory, name)) != skip]
        if class_names is not None:
            if not set(class_names).issubset(subdirs):
                raise ValueError(f"class_names must name subfolders of {directory!r}: {subdirs} (or some of them); "
                                 f"received class_names={list(class_names)}.")
            subdirs = list(class_names)
    else:
        subdirs = [""]
    files: list[str] = []
    class_of: list[int] = []
    for index, subdir in enumerate(subdirs):
        found = _walk(os.path.join(directory, subdir) if subdir else directory, follow_links)
        if labels == "inferred" and not found:
            raise ValueError(
                f"class folder {subdir!r} in {directory!r} has no images (allowed formats: "
                f"{', '.join(decode.ALLOWED_FORMATS)}): its class would never be seen. Add images, remove the "
                f"folder, or pass class_names=[...] without it."
            )
        files += [subdir + os.sep + name for name in found] if subdir else found
        class_of += [index] * len(found)
    if not files:
        raise ValueError(f"no images found in {directory!r}; allowed formats: {', '.join(decode.ALLOWED_FORMATS)}.")
    if labels == "inferred":
        return files, np.asarray(class_of, dtype=np.int32), list(subdirs)
    if labels is None:
        return files, None, None
    if len(labels) != len(files):
        raise ValueError(f"labels has {len(labels)} entries but {directory!r} holds {len(files)} images; give one "
                         "label per image, in the sorted order of os.walk.")
    values = np.asarray(labels)
    if values.ndim != 1 or values.dtype.kind not in "biuf":
        raise ValueError(f"labels must be a list of numbers, one per image file; received an array of shape "
                         f"{values.shape} and dtype {values.dtype}.")
    whole = values.dtype.kind != "f" or bool(np.all(np.isfinite(values) & (values == np.round(values))))
    # Whole numbers are class ids (int32, as Keras's int labels; int64 beyond int32's range, as Keras serves
    # them); other numbers are served as given (float32).
    int32 = np.iinfo(np.int32)
    if whole and values.min() >= int32.min and values.max() <= int32.max:
        values = values.astype(np.int32)
    elif values.dtype.kind in "iu":
        if values.dtype == np.uint64 and values.max() > np.iinfo(np.int64).max:
            raise ValueError(f"labels holds {values.max()}, beyond int64's range; give labels that int64 holds.")
        values = values.astype(np.int64)
    else:
        values = values.astype(np.float32)
    return files, values, [str(label) for label in sorted(set(values.tolist()))]


def _walk(folder: str, follow_links: bool) -> list[str]:
    """Image files under ``folder``, relative to it, sorted by folder then name (as Keras lists them).

    Paths are cut and joined as strings (``os.path`` calls cost more than the
    walk itself for thousands of files, and this runs on every call).
    """
    found = []
    cut = len(folder) + 1
    for root, _, names in sorted(os.walk(folder, followlinks=follow_links), key=lambda item: item[0]):
        prefix = root[cut:] + os.sep if len(root) >= cut else ""
        found += [prefix + name for name in sorted(names) if name.lower().endswith(decode.ALLOWED_FORMATS)]
    return found


def build_cache(
    directory: str, files: list[str], settings: decode.DecodeSettings, kind: str, class_names: Any,
    follow_links: bool, cache_dir: Any, verbose: bool,
) -> cache_lib.Entry:
    """The cache entry of these files under these settings: opened, or decoded now."""
    paths = [directory + os.sep + name for name in files]
    content = {"files": files_fingerprint(files, paths)}
    source = {"directory": directory, "labels": kind, "class_names": list(class_names) if class_names else None,
              "follow_links": follow_links, "settings": dataclasses.asdict(settings)}

    def build(folder: Path) -> dict[str, Any]:
        return decode_images(paths, paths, settings, folder, f"gpuloader: decoding {len(files)} images", verbose)

    return cache_lib.open_or_build(cache_lib.cache_root(cache_dir), "folder", source, content, build)


def files_fingerprint(names: Sequence[str], paths: Sequence[str]) -> str:
    """A hash of every file's name, size, modification time, inode and change time (what decides the cache's bytes).

    The change time (``st_ctime_ns``, set by the kernel on every write, never
    by ``cp -p``, ``tar`` or ``rsync -t``) and the inode catch a file replaced
    by one of the same size with its old modification time kept; a ``chmod``
    also changes it and costs a rebuild, never a stale image.
    Cost: one ``stat`` per file (2 to 4 us each here), from up to
    ``STAT_THREADS`` threads in C (:func:`stat_files`), then one hash over
    the names and one over the packed numbers.
    """
    import hashlib

    numbers = stat_files(paths)
    hashed = hashlib.sha256("\0".join(names).encode("utf-8", "surrogateescape"))
    hashed.update(numbers.tobytes())
    return hashed.hexdigest()


def compiled_stat_missing() -> str | None:
    """Why the compiled stat of a folder's files (``_stat``) is not in use, with the fix; None when it is."""
    if _stat is not None:
        return None
    return (f"the C extension gpuloader.ingest._stat is not built ({_STAT_ERROR or 'not imported'}); opening an image "
            "folder's cache stats its files with os.stat in a Python loop (the same check, about twice the time). "
            "Fix: install a C compiler and reinstall gpuloader.")


STAT_THREADS = 8
"""At most this many threads stat a folder's files (one per core, and one per 1000 files)."""


def stat_files(paths: Sequence[str]) -> np.ndarray:
    """``(size, mtime_ns, inode, ctime_ns)`` of each path as ``os.stat`` gives them (symbolic links followed),
    an int64 array of shape ``(len(paths), 4)``; ``os.stat``'s OSError for a path that cannot be read.

    Cost: with the compiled ``gpuloader.ingest._stat``, one ``stat`` call per file without the GIL, spread over
    up to :data:`STAT_THREADS` threads; without it, ``os.stat`` in a Python loop (about twice the time here).
    """
    numbers = np.empty((len(paths), 4), dtype=np.int64)
    if _stat is not None and paths:
        threads = max(1, min(STAT_THREADS, os.cpu_count() or 1, len(paths) // 1000))
        blob = b"".join(os.fsencode(path) + b"\0" for path in paths)
        _stat.stat_paths(blob, len(paths), numbers, threads)
        return numbers
    for row, path in enumerate(paths):
        stat = os.stat(path)
        numbers[row] = stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns
    return numbers


def decode_images(
    items: Sequence[str | bytes], names: Sequence[str], settings: decode.DecodeSettings, folder: Path,
    description: str, verbose: bool,
) -> dict[str, Any]:
    """Decode ``items`` into ``folder/images.npy``; the manifest fields (arrays, skipped rows)."""
    shape = _first_shape(items, names, settings)
    images = cache_lib.new_array(folder, "images", (len(items), *shape), np.uint8)
    del images  # the workers write through their own maps
    path = str(folder / "images.npy")
    problems = decode.decode_into(items, names, path, settings, description, verbose)
    sizes = {row: problem for row, problem in problems.items() if decode._SIZE_FIX in problem}
    if sizes:
        raise ValueError("images of several sizes and image_size=None: a batch needs one size. "
                         + _listing(sizes, ""))
    images = np.load(path, mmap_mode="r")
    if problems:
        kept = np.array([row for row in range(len(items)) if row not in problems], dtype=np.int64)
        compact = cache_lib.new_array(folder, "kept", (len(kept), *shape), np.uint8)
        for start in range(0, len(kept), 4096):
            compact[start:start + 4096] = images[kept[start:start + 4096]]
        compact.flush()
        del compact, images
        os.replace(folder / "kept.npy", path)
        images = np.load(path, mmap_mode="r")
    return {"arrays": cache_lib.describe({"images": images}), "skipped": sorted(problems.items())}


def _first_shape(items: Sequence[str | bytes], names: Sequence[str], settings: decode.DecodeSettings) -> tuple:
    """The shape of every decoded image: ``image_size``, or the first decodable image's own size."""
    if settings.image_size is not None:
        return (*settings.image_size, settings.channels)
    for item in items:
        try:
            return decode.image_shape(item, settings)
        except Exception:  # reported by the decode pass with the file's name
            continue
    raise decode.DecodeError(f"none of the {len(items)} images can be decoded, e.g. {names[0]!r}.")


def _refuse_emptied(skipped: dict[int, str], files: list[str], file_labels: np.ndarray | None,
                    names: list[str] | None, labels: Any) -> None:
    """Refuse what skipping left empty: every image, or every image of an inferred class (the empty-folder rule)."""
    if len(skipped) == len(files):
        raise decode.DecodeError(
            f"all {len(files)} images failed to decode (on_error='skip' would leave no data): "
            f"{_listing(skipped, '')} Check the files (a wrong extension, a truncated copy) or the folder."
        )
    if labels == "inferred" and file_labels is not None and names:
        left = np.bincount(np.delete(file_labels, sorted(skipped)), minlength=len(names))
        empty = [names[index] for index in np.flatnonzero(left == 0)]
        if empty:
            theirs = {row: problem for row, problem in skipped.items() if names[file_labels[row]] in empty}
            raise decode.DecodeError(
                f"every image of class {empty} failed to decode, so with on_error='skip' its class would never be "
                f"seen: {_listing(theirs, '')} Fix the files, or pass class_names=[...] without that class."
            )


def _listing(problems: dict[int, str], what: str) -> str:
    shown = [problems[row] for row in sorted(problems)[:5]]
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    return f"{len(problems)} image(s) {what}: " + "; ".join(shown) + more + "." if what else "; ".join(shown) + more


def _check_split_of_the_same_listing(key: tuple[Any, ...], part: str, listing: str, split_files: list[str]) -> None:
    """Warn when the other subset of this split was made earlier in this process from another listing of the folder.

    Keras's split (and this one) keeps the subsets apart only over one file list: a file added or removed between
    the ``subset="training"`` and ``subset="validation"`` calls draws the two from different lists, and the
    validation loader then holds training files. Cost: one hash per file of the subset.
    """
    hashes = np.unique(np.fromiter((hash(name) for name in split_files), dtype=np.int64, count=len(split_files)))
    served = _SPLITS_SERVED.setdefault(key, {})
    other = "validation" if part == "training" else "training"
    if other in served and served[other][0] != listing:
        shared = np.intersect1d(hashes, served[other][1], assume_unique=True)
        if len(shared):
            shared_set = set(shared.tolist())
            example = next(name for name in split_files if hash(name) in shared_set)
            warnings.warn(
                f"the folder {key[0]!r} changed between the subset={other!r} call and this subset={part!r} call "
                f"(same seed and validation_split): the two subsets were drawn from different file lists, and "
                f"{len(shared)} of this subset's {len(split_files)} files are also in the {other} loader made "
                f"earlier (e.g. {example!r}). Fix: subset=\"both\" (one listing for both loaders), or make the "
                f"{other} loader again now.",
                stacklevel=3,
            )
    served[part] = (listing, hashes)


def _split(order: np.ndarray, validation_split: float | None, subset: str | None, directory: str) -> np.ndarray:
    """Keras's split of the (shuffled) file order: the last ``int(split * n)`` for validation."""
    if not validation_split:
        return order
    count = int(validation_split * len(order))
    if count == 0 or count == len(order):
        raise ValueError(f"validation_split={validation_split} of {len(order)} images in {directory!r} leaves "
                         f"{'no validation' if count == 0 else 'no training'} images; choose another split.")
    return order[:-count] if subset == "training" else order[-count:]


def _loader(
    images: np.ndarray, rows: np.ndarray, kept: np.ndarray, files: list[str], file_labels: np.ndarray | None,
    names: list[str] | None, label_mode: str | None, directory: str, dtype: str | None, batch_size: int,
    shuffle: bool,
    seed: int, verbose: bool, loader_kwargs: dict[str, Any],
) -> Any:
    from gpuloader.loader import Loader

    contiguous = len(rows) > 0 and bool(np.all(np.diff(rows) == 1))
    # A slice of the map stays a map (read lazily by the tiers); scattered rows are read into RAM once.
    x = images[int(rows[0]):int(rows[-1]) + 1] if contiguous else np.take(images, rows, axis=0)
    y = None
    if label_mode is not None:
        label = file_labels[kept[rows]]
        if label_mode == "binary":
            y = label.astype(np.float32)[:, None]
        elif label_mode == "categorical":
            y = np.eye(len(names), dtype=np.float32)[label]
        else:
            y = label  # int32 class ids, or float32 values as given
    kwargs = dict(loader_kwargs)
    kwargs["transform"] = _serve(dtype, kwargs.get("transform"))
    # The cache is channels-last whatever Keras's setting: the augmentation ops read it so, before _serve.
    loader = Loader(x, y, batch_size=batch_size, shuffle=shuffle, seed=seed, verbose=verbose,
                    data_format="channels_last", **kwargs)
    loader.class_names = names
    loader.file_paths = [directory + os.sep + files[row] for row in kept[rows].tolist()]
    return loader


def _serve(dtype: str | None, transform: Callable[..., Any] | None) -> Callable[..., Any] | None:
    """The batch transform: the images cast to float32 (``dtype="float32"``, where the data lives) and laid out
    as ``keras.config.image_data_format()`` asks (the cache is channels-last; channels-first costs one copy
    of the batch), then the user's transform."""
    from gpuloader.augment.ops import CHANNELS_FIRST, keras_data_format

    channels_first = keras_data_format() == CHANNELS_FIRST
    if dtype != "float32" and not channels_first:
        return transform

    blocks = BlockPool()  # the batches' buffers, each reused once nothing holds it

    def serve(batch: tuple[Any, ...], xp: Any) -> tuple[Any, ...]:
        images = batch[0]
        if channels_first:
            images = (getattr(xp, "permute_dims", None) or xp.transpose)(images, (0, 3, 1, 2))
        if xp is np and (channels_first or images.dtype != np.float32):
            # One pass (the cast and the layout's copy together) into a buffer the hand-off takes as it is
            # (64-byte aligned): NumPy's own result would be copied once more there.
            out = blocks.array(images.shape, np.float32 if dtype == "float32" else images.dtype)
            np.copyto(out, images, casting="unsafe")
            images = out
        else:
            if channels_first:
                contiguous = getattr(xp, "ascontiguousarray", None)  # CuPy: the copy and the cast in one pass
                if contiguous is not None:
                    images = contiguous(images, dtype=xp.float32 if dtype == "float32" else images.dtype)
            if dtype == "float32" and images.dtype != xp.float32:
                images = xp.astype(images, xp.float32)
        batch = (images, *batch[1:])
        return batch if transform is None else transform(batch, xp)

    return serve
