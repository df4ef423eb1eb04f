"""One augmented input and the path that runs its ops, chosen once when the loader is built.

The paths, fastest first:

- ``FROM_STORE``: built-in ops on images in RAM, on the host: the C kernel
  (:mod:`~gpuloader.augment.fused`) writes each augmented image into its place in
  the batch's block straight from the stored array, instead of the gather's copy.
- ``CUDA``: the same on a GPU, one ``_cuda.GatherAugment`` launch per batch (per replica).
- ``ON_BATCH``: built-in ops on images read from disk: the gather reads the
  rows, then the C kernel writes the augmented batch in one pass.
- ``NUMPY``: op by op on the host (an op of one's own in the list, or no C extension).
- ``ARRAY_API``: op by op through the array API (a GPU whose kernel does not fit
  or an op of one's own there; the reference path).

Every path gives the same bytes (the tests compare them). What an op produces
(its data format, its table) is asked of the ops, never assumed here.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpuloader import placement as placement_lib
from gpuloader.augment import fused as fused_lib
from gpuloader.augment.apply import apply_augment, output_dtype
from gpuloader.augment.assign import AugmentedInput
from gpuloader.augment.normalize import Normalize

FROM_STORE = "the host kernel, reading the stored images"
CUDA = "one CUDA launch per batch (GatherAugment), reading the stored images"
ON_BATCH = "the host kernel on each gathered batch (images read from disk)"
NUMPY = "op by op on the NumPy path"
ARRAY_API = "op by op through the array API"


@dataclass(frozen=True)
class BatchDraws:
    """What keys one batch's draws: its rows of a store and the dataset index of each.

    Attributes:
        rows: the batch's rows of the store (a slice, or an int64 array in its namespace).
        seed, epoch: the loader's seed and the epoch served.
        ids: ``ids()`` returns the dataset index of each of ``rows`` (int64, the store's namespace).
        id_table: ``id_table()`` returns the dataset index of every row of the store.
    """

    rows: slice | Any
    seed: int
    epoch: int
    ids: Callable[[], Any]
    id_table: Callable[[], Any]


class InputAugmentation:
    """The ops of one input and how they run: built once, called once per batch.

    Args:
        spec: the input's checked ops (:class:`~gpuloader.augment.assign.AugmentedInput`).
        stores: the store of each replica (one on a single device), each holding the input at ``spec.index``.
        on_gpu: the stores are on GPUs.
        ordinals: each store's CUDA device under a per-GPU layout, else None (the current device).
    """

    def __init__(
        self, spec: AugmentedInput, stores: list[Any], on_gpu: bool, ordinals: list[int] | None = None
    ) -> None:
        self.spec = spec
        store = stores[0]
        leaf = store.leaves[spec.index]
        self._table = fused_lib.table_for(spec.ops, leaf)
        #: The dtype of this input's augmented batches (a final ``Normalize`` changes it).
        self.output_dtype = output_dtype(spec.ops, leaf.dtype)
        #: Whether a kernel's output can take the input's place in the gather's block (same dtype).
        self.in_place = self.output_dtype == output_dtype((), leaf.dtype)
        self._kernels: list[Any] = []
        self._why = ""
        if on_gpu:
            runtime = placement_lib.gpu_runtime()
            for replica, replica_store in enumerate(stores):
                device = contextlib.nullcontext() if ordinals is None else runtime.on_device(ordinals[replica])
                with device:
                    leaf = replica_store.leaves[spec.index]
                    self._kernels.append(None if self._table is None else runtime.gather_augment(self._table, leaf))
            self.path = CUDA if all(kernel is not None for kernel in self._kernels) else ARRAY_API
            if self.path == ARRAY_API:
                self._kernels = []
                self._why = _own_op if self._table is None else "its images are too large for the kernel"
        elif store.xp is not np:
            self.path = ARRAY_API
        elif self._table is not None and fused_lib.host_kernel() is not None:
            self.path = FROM_STORE if store.in_ram_on_host else ON_BATCH
        else:
            self.path = NUMPY
            self._why = _own_op if self._table is None else (fused_lib.host_kernel_missing() or "the kernel is off")

    @property
    def index(self) -> int:
        """The input's leaf index in the batch."""
        return self.spec.index

    def describe(self) -> str:
        """How this input is augmented, for ``loader.plan``: e.g. ``"y (x's draws): the host kernel, ..."``."""
        name = self.spec.name if self.spec.follows is None else f"{self.spec.name} ({self.spec.follows}'s draws)"
        return f"{name}: {self.path}" + (f", since {self._why}" if self._why else "")

    def writer(self, draws: BatchDraws, store: Any, replica: int = 0) -> Callable[..., Any] | None:
        """``write(out)``: the augmented batch read from the store, written into ``out`` (this input's place in
        the batch's block when :attr:`in_place`) or, with ``out=None``, into a new buffer of
        :attr:`output_dtype`; None: this path augments the gathered batch (:meth:`apply`)."""
        if self.path == FROM_STORE:
            rows = draws.rows
            indices = np.arange(rows.start, rows.stop, dtype=np.int64) if isinstance(rows, slice) else rows
            source = store.leaves[self.index]
            write = functools.partial(
                fused_lib.gather_augment_host, self._table, source, indices, draws.ids(), draws.seed, draws.epoch,
                stream=self.spec.stream,
            )
            return functools.partial(_into_new, write, (len(indices), *source.shape[1:]), self.output_dtype)
        if self.path == CUDA:  # the kernel reads its rows' dataset indices from the store's table itself
            return functools.partial(
                self._kernels[replica], draws.rows, draws.id_table(), draws.seed, draws.epoch, stream=self.spec.stream
            )
        return None

    def apply(self, images: Any, draws: BatchDraws, xp: Any) -> Any:
        """The augmented batch of this input from its gathered ``images`` (a fresh batch it may write into)."""
        if self.path == ON_BATCH:
            from gpuloader.gather import aligned_empty

            out = aligned_empty(images.shape, self.output_dtype)
            rows = np.arange(images.shape[0], dtype=np.int64)
            return fused_lib.gather_augment_host(
                self._table, images, rows, draws.ids(), draws.seed, draws.epoch, out, stream=self.spec.stream
            )
        return apply_augment(
            self.spec.ops, images, draws.ids(), draws.seed, draws.epoch, xp, overwrite=True, stream=self.spec.stream
        )

    @property
    def normalize(self) -> Normalize | None:
        """The list's final :class:`~gpuloader.augment.normalize.Normalize`, or None."""
        ops = self.spec.ops
        return ops[-1] if ops and type(ops[-1]) is Normalize else None

    def unaugmented(self, images: Any, draws: BatchDraws, xp: Any) -> Any:
        """This input's batch in an evaluation or prediction pass: none of the random ops, but a final
        ``Normalize`` still (the model was trained on its scale and dtype); ``images`` as they are without one."""
        normalize = self.normalize
        if normalize is None:
            return images
        return apply_augment([normalize], images, draws.ids(), draws.seed, draws.epoch, xp, overwrite=True)


_own_op = "the list has an op of your own"


def _into_new(write: Callable[[Any], Any], shape: tuple[int, ...], dtype: np.dtype, out: Any = None) -> Any:
    """``write(out)``, into a new 64-byte aligned host buffer of ``shape`` and ``dtype`` when ``out`` is None."""
    if out is None:
        from gpuloader.gather import aligned_empty

        out = aligned_empty(shape, dtype)
    return write(out)
