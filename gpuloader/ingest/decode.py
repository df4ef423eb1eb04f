"""Decoding images with Pillow into a cache array, in parallel over the machine's cores.

One image (a file path, or encoded bytes as a Hugging Face image column holds
them) becomes one uint8 ``(height, width, channels)`` row: converted to the
colour mode (Pillow's ``L``, ``RGB``, ``RGBA``; an animated GIF gives its first
frame), cropped to the target aspect ratio when asked (the centred window of
Keras's ``smart_resize``), and resized with the Pillow filter named after
Keras's interpolation. An image already at the target size is not resampled.
A JPEG at least twice the target size (both sides) is first decoded by
libjpeg at 1/2, 1/4 or 1/8 scale, never below twice the target, then filtered
(not for ``nearest``, which must pick pixels, nor with ``crop_to_aspect_ratio``).

The rows are decoded in chunks, in parallel, straight into the cache file (a
shared memory map): no pixels are pickled. Small and medium jobs run in the
calling process: nothing to start. Pillow releases the GIL while it inflates,
converts and resamples, but its per-image Python work (about 60-80 us of CPU
for a 28x28 PNG here) holds it, and for tiny images threads handing the GIL
back and forth were slower than one thread (on the same 2-core VM hours apart:
a pool of two 1.57x faster than Keras's epoch, then 1.7x slower than one
thread), so a long job times one thread against the pool on its first chunks
and decodes the rest the faster way. Measured on 2 cores with 5000 28x28 PNGs,
either beat worker processes, whose start-up (a fresh interpreter importing
NumPy and Pillow, 0.2-0.4 s each) cost more than the whole decode. Jobs of
:data:`PROCESSES_FROM` images or more on machines of more than two cores go to
worker processes, which spread that Python work over every core: fresh
interpreters (:mod:`gpuloader.ingest._decode_worker`), never forks of the
caller, which may run TensorFlow's threads.
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gpuloader.ingest.progress import Progress

ALLOWED_FORMATS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
CHANNELS = {"grayscale": 1, "rgb": 3, "rgba": 4, "index": 1}
#: Pillow modes whose stored values ``color_mode="index"`` keeps as they are (palette indices, gray levels, bits).
INDEX_MODES = ("P", "L", "1")
_PIL_MODE = {"grayscale": "L", "rgb": "RGB", "rgba": "RGBA"}
#: Keras's interpolation names with a Pillow filter of the same kind; the others are refused.
FILTERS = {"bilinear": "BILINEAR", "nearest": "NEAREST", "bicubic": "BICUBIC", "area": "BOX", "lanczos3": "LANCZOS"}
#: From this many images, on more than two cores, decode in worker processes (each starts in ~0.2-0.4 s).
PROCESSES_FROM = 20000
CHUNK = 128
#: Decodes of at least this many chunks (plus one per thread) time one thread against the pool first.
TRIAL_CHUNKS = 6
#: A JPEG is decoded at a reduced scale only down to this many times the target size (then filtered).
DRAFT_GAP = 2


@dataclass(frozen=True)
class DecodeSettings:
    """What decides a decoded image's bytes (besides the file): part of the cache key."""

    image_size: tuple[int, int] | None  # (height, width), or None: keep each image's own size
    color_mode: str
    interpolation: str
    crop_to_aspect_ratio: bool

    @property
    def channels(self) -> int:
        return CHANNELS[self.color_mode]


class DecodeError(ValueError):
    """An image could not be decoded (or has another size than the others); the message names it."""


def refuse_channels_first(loader_kwargs: dict[str, Any], what: str) -> None:
    """Decoded images are cached channels-last, and the augmentation ops read the cache: an op, or the Loader's
    ``data_format``, that says channels-first would take the width for the channels (a "horizontal" flip would
    turn RGB into BGR). ``what`` names the images, for the message.

    Raises:
        ValueError: ``data_format="channels_first"`` in ``loader_kwargs``, or an op of ``augment`` with it.
    """
    from gpuloader.augment.apply import ops_and_stream
    from gpuloader.augment.ops import CHANNELS_FIRST

    fix = ("Fix: leave data_format out (of the ops and the call): the ops then read the cache as it is laid "
           "out, whatever keras.config.image_data_format() says.")
    if loader_kwargs.get("data_format") == CHANNELS_FIRST:
        raise ValueError(f"{what} are decoded channels-last, (n, H, W, C), and the augmentation ops read them so; "
                         f"data_format='channels_first' would have them read the width as the channels. {fix}")
    augment = loader_kwargs.get("augment")
    values = augment.values() if isinstance(augment, dict) else [augment] if augment is not None else []
    for value in values:
        ops = ops_and_stream(value)[0]
        for op in ops if isinstance(ops, (list, tuple)) else ():
            if getattr(op, "data_format", None) == CHANNELS_FIRST:
                raise ValueError(f"{what} are decoded channels-last, (n, H, W, C), and the augmentation ops read "
                                 f"them so; {op!r} would take the width for the channels (a horizontal flip would "
                                 f"reverse the colours, RGB to BGR). {fix}")


def check_settings(
    image_size: Any, color_mode: Any, interpolation: Any, crop_to_aspect_ratio: Any
) -> DecodeSettings:
    """The decode settings, or a ValueError naming the rule, the value and the fix."""
    if color_mode not in CHANNELS:
        raise ValueError(f'color_mode must be one of "grayscale", "rgb", "rgba", "index"; received '
                         f"color_mode={color_mode!r}.")
    if image_size is not None:
        if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
            image_size = (image_size, image_size)
        if (not isinstance(image_size, (list, tuple)) or len(image_size) != 2
                or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in image_size)):
            raise ValueError(
                f"image_size must be (height, width), two positive ints, or None to keep the images' own size "
                f"(all equal); received image_size={image_size!r}."
            )
        image_size = (int(image_size[0]), int(image_size[1]))
    interpolation = str(interpolation).lower()
    if interpolation not in FILTERS:
        raise ValueError(
            f"interpolation={interpolation!r} has no Pillow filter of the same kind; use one of "
            f"{sorted(FILTERS)} (Keras's lanczos5, gaussian and mitchellcubic are TensorFlow-only)."
        )
    if not isinstance(crop_to_aspect_ratio, bool):
        raise TypeError(f"crop_to_aspect_ratio must be True or False; received {crop_to_aspect_ratio!r}.")
    if color_mode == "index" and image_size is not None and interpolation != "nearest":
        raise ValueError(
            f'color_mode="index" keeps stored values (class ids of a mask), which a {interpolation} resize would '
            "blend into ids that do not exist. Fix: interpolation=\"nearest\" for this column, or image_size=None."
        )
    return DecodeSettings(image_size, color_mode, interpolation, crop_to_aspect_ratio)


#: Pillow's modes of 16-bit grayscale images ("I" is how some Pillow versions open a 16-bit PNG).
_SIXTEEN_BIT = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})


def decode_one(item: str | bytes, settings: DecodeSettings) -> np.ndarray:
    """One image as uint8 ``(height, width, channels)`` under ``settings``; Pillow's errors propagate."""
    from PIL import Image

    if not isinstance(item, (bytes, bytearray, memoryview)):
        with open(item, "rb") as file:  # one read (the GIL released), then Pillow parses memory: ~15% less CPU
            item = file.read()
    with Image.open(io.BytesIO(item)) as image:
        image.seek(0)  # the first frame of an animation, as Keras
        if image.format == "JPEG" and _draft_allowed(settings):
            # libjpeg decodes at 1/2, 1/4 or 1/8 scale, never below twice the target (Pillow's thumbnail rule),
            # and the filter does the rest: about 4x less CPU for a 512x512 JPEG made 64x64, within a few levels.
            height, width = settings.image_size  # type: ignore[misc]
            image.draft(image.mode, (width * DRAFT_GAP, height * DRAFT_GAP))
        if settings.color_mode == "index":
            if image.mode not in INDEX_MODES:
                raise ValueError(
                    f'color_mode="index" keeps the stored values of palette ("P"), grayscale ("L") or 1-bit '
                    f'images, but this image is mode {image.mode!r}. Fix: color_mode="rgb" or "grayscale" for it.'
                )
            image.load()
            if image.mode == "1":
                image = image.convert("L").point(lambda value: 1 if value else 0)
        elif image.mode in _SIXTEEN_BIT:  # 16-bit grayscale PNG: Pillow's convert would clip at 255
            high = np.right_shift(np.asarray(image).astype(np.uint32), 8)  # TensorFlow keeps the high byte
            image = Image.fromarray(np.minimum(high, 255).astype(np.uint8), "L")
        mode = _PIL_MODE.get(settings.color_mode, image.mode)  # "index": the image's own mode
        if image.mode != mode:
            image = image.convert(mode)
        else:
            image.load()
        if settings.image_size is not None:
            height, width = settings.image_size
            if settings.crop_to_aspect_ratio:
                image = image.crop(_crop_box(image.height, image.width, height, width))
            if (image.height, image.width) != (height, width):
                resample = getattr(Image.Resampling, FILTERS[settings.interpolation])
                image = image.resize((width, height), resample=resample)
        array = np.asarray(image, dtype=np.uint8)
    return array.reshape(array.shape[0], array.shape[1], settings.channels)


def _draft_allowed(settings: DecodeSettings) -> bool:
    """Whether a JPEG may be decoded at a reduced scale: a resize that averages, without a crop window."""
    return settings.image_size is not None and settings.interpolation != "nearest" and not settings.crop_to_aspect_ratio


def _crop_box(height: int, width: int, target_height: int, target_width: int) -> tuple[int, int, int, int]:
    """The centred window of the target's aspect ratio, computed as ``keras.utils.smart_resize`` does."""
    crop_height = max(min(height, int(float(width * target_height) / target_width)), 1)
    crop_width = max(min(width, int(float(height * target_width) / target_height)), 1)
    top = int(float(height - crop_height) / 2)
    left = int(float(width - crop_width) / 2)
    return left, top, left + crop_width, top + crop_height


def image_shape(item: str | bytes, settings: DecodeSettings) -> tuple[int, int, int]:
    """The shape a decoded image will have (the header alone when ``image_size`` is set)."""
    if settings.image_size is not None:
        return (*settings.image_size, settings.channels)
    return tuple(decode_one(item, settings).shape)  # type: ignore[return-value]


def decode_chunk(
    items: Sequence[str | bytes], start: int, out_path: str, settings: DecodeSettings, names: Sequence[str]
) -> list[tuple[int, str]]:
    """Decode ``items`` into rows ``start...`` of the ``.npy`` at ``out_path`` (a worker's entry point)."""
    out = np.load(out_path, mmap_mode="r+")
    problems = decode_rows(items, start, out, settings, names)
    out.flush()
    return problems


def decode_rows(
    items: Sequence[str | bytes], start: int, out: np.ndarray, settings: DecodeSettings, names: Sequence[str]
) -> list[tuple[int, str]]:
    """Decode ``items`` into rows ``start...`` of ``out``; returns (row, problem) pairs for the failures."""
    problems = []
    for offset, item in enumerate(items):
        row = start + offset
        try:
            image = decode_one(item, settings)
        except Exception as error:  # Pillow raises several types for bad files; each is reported by name
            problems.append((row, f"{names[offset]}: cannot be decoded ({type(error).__name__}: {error})"))
            continue
        if image.shape != out.shape[1:]:
            problems.append((row, f"{names[offset]}: is {image.shape[0]}x{image.shape[1]}, not "
                                  f"{out.shape[1]}x{out.shape[2]} like the first image; {_SIZE_FIX}"))
            continue
        out[row] = image
    return problems


_SIZE_FIX = "pass image_size=(height, width) to resize every image to one size"


def decode_into(
    items: Sequence[str | bytes],
    names: Sequence[str],
    out_path: str,
    settings: DecodeSettings,
    description: str,
    verbose: bool,
    processes: int | None = None,
) -> dict[int, str]:
    """Decode every item into the rows of the ``.npy`` at ``out_path``; returns {row: problem} for failures.

    ``processes``: worker processes (None: one per core for jobs of
    :data:`PROCESSES_FROM` images or more on more than two cores, else
    none); with none, a thread per core decodes in this process. Cost: one
    decode per image, spread over the cores.
    """
    n = len(items)
    cores = os.cpu_count() or 1
    if processes is None:
        processes = min(cores, -(-n // CHUNK)) if n >= PROCESSES_FROM and cores > 2 else 0
    starts = list(range(0, n, CHUNK))
    problems: dict[int, str] = {}
    with Progress(n, description, verbose) as progress:
        if processes <= 1:
            out = np.load(out_path, mmap_mode="r+")
            _decode_in_threads(items, names, out, settings, min(cores, len(starts)), progress, problems)
            out.flush()
            return problems
        jobs = [(items[start:start + CHUNK], start, names[start:start + CHUNK]) for start in starts]
        shares = [jobs[worker::processes] for worker in range(processes)]
        for share_problems in _run_workers([share for share in shares if share], out_path, settings, progress):
            problems.update(share_problems)
    return problems


def _decode_in_threads(
    items: Sequence[str | bytes], names: Sequence[str], out: np.ndarray, settings: DecodeSettings, threads: int,
    progress: Progress, problems: dict[int, str],
) -> None:
    """Decode the chunks of ``items`` into ``out`` with ``threads`` threads (none: in this thread).

    Threads pay only where Pillow's GIL-free work outweighs handing the GIL back and forth: for tiny images
    (28x28 PNGs) two threads on a 2-core VM measured 1.7x slower than one (0.8-0.96 s against 0.38-0.6 s
    for 5000). So with :data:`TRIAL_CHUNKS` chunks or more, one chunk after the first is timed in this
    thread, the next ``threads`` chunks in the pool, and the rest go the faster way. The bytes are the same
    either way (each image's decode is deterministic); the trial costs nothing beyond its own chunks.
    """
    starts = list(range(0, len(items), CHUNK))

    def chunk(start: int) -> list[tuple[int, str]]:
        return decode_rows(items[start:start + CHUNK], start, out, settings, names[start:start + CHUNK])

    def serially(chosen: list[int]) -> None:
        for start in chosen:
            problems.update(chunk(start))
            progress.advance(len(items[start:start + CHUNK]))

    if threads <= 1:
        serially(starts)
        return
    if len(starts) >= TRIAL_CHUNKS + threads:
        serially(starts[:1])  # the first chunk pays Pillow's plugin imports: not timed
        began = time.perf_counter()
        serially(starts[1:2])
        one_thread = (time.perf_counter() - began) / CHUNK
        began = time.perf_counter()
        _in_pool(starts[2:2 + threads], chunk, threads, progress, problems, len(items))
        pooled = (time.perf_counter() - began) / (threads * CHUNK)
        rest = starts[2 + threads:]
        if pooled >= one_thread:
            serially(rest)
            return
        starts = rest
    _in_pool(starts, chunk, threads, progress, problems, len(items))


def _in_pool(starts: list[int], chunk: Any, threads: int, progress: Progress, problems: dict[int, str],
            n: int) -> None:
    """``chunk(start)`` of every start, ``threads`` at a time; problems gathered, progress advanced in order."""
    with ThreadPoolExecutor(threads, thread_name_prefix="gpuloader-decode") as pool:
        futures = [pool.submit(chunk, start) for start in starts]
        try:
            for start, future in zip(starts, futures):
                problems.update(future.result())
                progress.advance(min(CHUNK, n - start))
        except BaseException:  # an interrupt or a failure: drop the chunks not yet started
            for future in futures:
                future.cancel()
            raise


def _run_workers(shares: list[list[Any]], out_path: str, settings: DecodeSettings, progress: Progress) -> list[Any]:
    """Each share of jobs decoded by a worker interpreter of its own; their problems, once all have ended.

    Raises:
        RuntimeError: a worker that failed, with the end of what it wrote on its standard error.
    """
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")]))
    errors = [tempfile.TemporaryFile() for _ in shares]  # a file, so a chatty worker never blocks on a pipe
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "gpuloader.ingest._decode_worker"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=error, env=env,
        )
        for error in errors
    ]
    results: list[Any] = [None] * len(workers)
    lock = threading.Lock()

    def follow(index: int) -> None:
        for line in workers[index].stdout:  # type: ignore[union-attr]
            word, _, value = line.decode().strip().partition(" ")
            if word == "done":
                with lock:
                    progress.advance(int(value))
            elif word == "problems":
                results[index] = pickle.loads(bytes.fromhex(value))

    readers = [threading.Thread(target=follow, args=(index,), daemon=True) for index in range(len(workers))]
    for reader in readers:
        reader.start()
    try:
        for worker, share in zip(workers, shares):
            worker.stdin.write(pickle.dumps((settings, out_path, share)))  # type: ignore[union-attr]
            worker.stdin.close()  # type: ignore[union-attr]
        for worker, reader in zip(workers, readers):
            worker.wait()
            reader.join()
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    for worker, result, error in zip(workers, results, errors):
        error.seek(0)
        message = error.read().decode(errors="replace")[-2000:]
        error.close()
        if worker.returncode != 0 or result is None:
            raise RuntimeError(f"an image decode worker failed (exit {worker.returncode}):\n{message}")
    return results
