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
from gpuloader.blocks import BlockPool

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

    An input that follows this one's draws (``augment.Same``: a mask) on the same kernel path joins its pass
    (:meth:`join`): one kernel call then computes each sample's words and traces once and writes this input's
    images and every follower's (each its own pixel size, dtype, fill and format).

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
        self._stores, self._ordinals = stores, ordinals
        store = stores[0]
        leaf = store.leaves[spec.index]
        self._table = fused_lib.table_for(spec.ops, leaf)
        #: The dtype of this input's augmented batches (a final ``Normalize`` changes it).
        self.output_dtype = output_dtype(spec.ops, leaf.dtype)
        #: Whether a kernel's output can take the input's place in the gather's block (same dtype).
        self.in_place = self.output_dtype == output_dtype((), leaf.dtype)
        #: The inputs written in this one's pass (joined followers), and the input whose pass writes this one.
        self.followers: list[InputAugmentation] = []
        self.leader: InputAugmentation | None = None
        self._kernels: list[Any] = []
        self._why = ""
        self._apart = ""  # why a follower on a kernel path runs a pass of its own
        self._blocks = BlockPool()  # host outputs of another dtype than the gather's block (a Normalize's)
        if on_gpu:
            self._kernels = self._gpu_kernels()
            self.path = CUDA if all(kernel is not None for kernel in self._kernels) else ARRAY_API
            if self.path == ARRAY_API:
                self._kernels = []
                self._why = self._no_table() if self._table is None else "its images are too large for the kernel"
        elif store.xp is not np:
            self.path = ARRAY_API
        elif self._table is not None and fused_lib.host_kernel() is not None:
            self.path = FROM_STORE if store.in_ram_on_host else ON_BATCH
        else:
            self.path = NUMPY
            self._why = self._no_table() if self._table is None else (
                fused_lib.host_kernel_missing() or "the kernel is off")

    def _no_table(self) -> str:
        return fused_lib.why_not_fused(self.spec.ops, self._stores[0].leaves[self.spec.index].dtype)

    def _gpu_kernels(self) -> list[Any]:
        """Each replica's ``GatherAugment`` of this input and its followers (None where the kernel does not fit)."""
        runtime = placement_lib.gpu_runtime()
        kernels = []
        for replica, store in enumerate(self._stores):
            device = contextlib.nullcontext() if self._ordinals is None else runtime.on_device(self._ordinals[replica])
            with device:
                leaf = store.leaves[self.index]
                if self._table is None:
                    kernels.append(None)
                elif self.followers:
                    followers = [(f._table, store.leaves[f.index]) for f in self.followers]
                    kernels.append(runtime.gather_augment(self._table, leaf, followers))
                else:
                    kernels.append(runtime.gather_augment(self._table, leaf))
        return kernels

    def join(self, follower: InputAugmentation) -> bool:
        """Write ``follower`` (an input following this one's draws) in this input's pass when both run a kernel
        and its table traces as this one's; else it keeps a pass of its own, and its :meth:`describe` says why."""
        if follower.path not in _KERNEL_PATHS:
            return False
        if self.path != follower.path:
            follower._apart = f"{self.spec.name} runs {self.path}"
        elif not fused_lib.shares_draws(self._table, follower._table):
            follower._apart = f"its ops do not trace as {self.spec.name}'s"
        else:
            self.followers.append(follower)
            if self.path == CUDA:
                kernels = self._gpu_kernels()
                if any(kernel is None for kernel in kernels):
                    self.followers.pop()
                    follower._apart = "the kernel of both does not fit"
                    return False
                self._kernels, follower._kernels = kernels, []
            follower.leader = self
            return True
        return False

    @property
    def index(self) -> int:
        """The input's leaf index in the batch."""
        return self.spec.index

    @property
    def indices(self) -> list[int]:
        """The leaf indices this input's pass writes: its own, then its joined followers'."""
        return [self.index, *(follower.index for follower in self.followers)]

    def describe(self) -> str:
        """How this input is augmented, for ``loader.plan``: e.g. ``"y (x's draws): the host kernel, ..."``."""
        name = self.spec.name if self.spec.follows is None else f"{self.spec.name} ({self.spec.follows}'s draws)"
        text = f"{name}: {self.path}" + (f", since {self._why}" if self._why else "")
        if self.leader is not None:
            text += f", in {self.leader.spec.name}'s pass (one trace per sample writes both)"
        elif self._apart:
            text += f", in a pass of its own (its draws traced again) since {self._apart}"
        return text

    def writer(self, draws: BatchDraws, store: Any, replica: int = 0) -> Callable[[list[Any]], list[Any]] | None:
        """``write(outs)``: the augmented batches of :attr:`indices` read from the store, each written into its
        entry of ``outs`` (that input's place in the batch's block when it is :attr:`in_place`) or, for None, into
        a new buffer of its :attr:`output_dtype`; returns them. None: this path augments the gathered batch
        (:meth:`apply`)."""
        if self.path == FROM_STORE:
            rows = draws.rows
            indices = np.arange(rows.start, rows.stop, dtype=np.int64) if isinstance(rows, slice) else rows
            return functools.partial(self._write_host, store.leaves, indices, draws.ids(), draws)
        if self.path == CUDA:  # the kernel reads its rows' dataset indices from the store's table itself
            kernel = self._kernels[replica]
            call = functools.partial(kernel, draws.rows, draws.id_table(), draws.seed, draws.epoch,
                                     stream=self.spec.stream)
            return call if self.followers else lambda outs: [call(outs[0])]
        return None

    def apply(self, leaves: list[Any], draws: BatchDraws, xp: Any) -> list[Any]:
        """The augmented batches of :attr:`indices` from the batch's gathered ``leaves`` (fresh batches it may
        write into)."""
        if self.path == ON_BATCH:
            first = leaves[self.index]
            rows = np.arange(first.shape[0], dtype=np.int64)
            return self._write_host(leaves, rows, draws.ids(), draws, [None] * len(self.indices))
        return [apply_augment(
            self.spec.ops, leaves[self.index], draws.ids(), draws.seed, draws.epoch, xp, overwrite=True,
            stream=self.spec.stream,
        )]

    def _write_host(
        self, sources: list[Any], rows: np.ndarray, ids: np.ndarray, draws: BatchDraws, outs: list[Any]
    ) -> list[Any]:
        """The host kernel's one pass over ``rows`` of ``sources`` (leaves by index) into ``outs`` (None: a buffer
        of this input's pool, one that nothing holds any more)."""
        targets = [self, *self.followers]
        made = [
            self._blocks.array((len(rows), *sources[target.index].shape[1:]), target.output_dtype)
            if out is None else out
            for target, out in zip(targets, outs)
        ]
        followers = [(f._table, sources[f.index], out) for f, out in zip(self.followers, made[1:])]
        fused_lib.gather_augment_host(
            self._table, sources[self.index], rows, ids, draws.seed, draws.epoch, made[0], stream=self.spec.stream,
            followers=followers,
        )
        return made

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


def input_augmentations(
    specs: list[AugmentedInput], stores: list[Any], on_gpu: bool, ordinals: list[int] | None = None
) -> list[InputAugmentation]:
    """An :class:`InputAugmentation` for each input with ops, each follower joined to its input's pass where
    both can share it (:meth:`InputAugmentation.join`). Cost: construction only."""
    made = [InputAugmentation(spec, stores, on_gpu, ordinals) for spec in specs if spec.ops]
    by_name = {augmentation.spec.name: augmentation for augmentation in made}
    for augmentation in made:
        leader = by_name.get(augmentation.spec.follows)
        while leader is not None and leader.spec.follows in by_name:  # a follower's follower: the first input's
            leader = by_name[leader.spec.follows]
        if leader is not None:
            leader.join(augmentation)
    return made


_KERNEL_PATHS = (FROM_STORE, CUDA, ON_BATCH)
