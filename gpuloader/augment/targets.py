"""Inputs that follow another input's draws: a mask, a depth map, any target shaped like its images.

``augment={"x": ops, "y": augment.Same("x", fill=255)}`` gives ``y`` the ops of
``x`` as each op says a follower should get it (its ``for_target(fill)``):

- an op that moves pixels (``RandomCrop``, ``RandomFlip``) the same op, so each
  sample's crop offset and flip are those of its image and the pair stays in
  register bit for bit; a constant crop pads the follower with ``fill``;
- an op that paints (``Cutout``) the same square, painted with ``fill`` (a
  mask's "ignore" label, say);
- an op that only changes values (a brightness jitter, a normalisation) nothing.

The follower draws from the same words as its input: same seed, epoch, sample,
stream and op positions (an op it skips keeps its place), with the same image
height and width (a cutout's centre depends on them).

Cost: on a kernel path (the host kernel, the CUDA kernel) the follower is
written in its input's pass (``plan.InputAugmentation.join``): each sample's
words and traces are computed once for both, and the follower adds its own
bytes read and written. Op by op (a list with an op of your own) it is a pass
of its own, its words drawn again. ``loader.plan`` says which, and why a
follower on a kernel path keeps a pass of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from gpuloader.augment.ops import AugmentOp, _no_target_rule


@dataclass(frozen=True)
class Same:
    """The augmentation of an input that follows another input's draws (see the module docstring).

    Args:
        input: the key of the input whose ops and draws it follows, as in ``augment``: ``"x"`` when
            ``x`` is one array, else a key (or position) of ``x``; ``("y", key)`` for an input of a dict ``y``.
        fill: the value this input gets where its input's ops paint (a constant crop's border, a
            cutout); needed when they paint, and must fit this input's dtype.
    """

    input: Any
    fill: float | None = None


@dataclass(frozen=True)
class Skipped(AugmentOp):
    """A place kept for an op a follower skips, so that the ops after it draw the same words."""

    skipped: str
    draws: int = 0  # type: ignore[misc]
    data_format: str | None = None  # it reads no pixels: any layout
    geometric: ClassVar[bool] = False

    def apply(self, images: Any, bits: Any, xp: Any) -> Any:
        return images

    def for_target(self, fill: float | None) -> None:
        return None


def follower_ops(ops: list[Any], fill: float | None) -> list[Any]:
    """The ops an input following ``ops`` gets: each op's ``for_target(fill)``, skipped ones kept as places.

    Raises:
        TypeError: an op does not say what a follower gets (no ``for_target``).
        ValueError: an op paints and ``fill`` is None.
    """
    mapped = []
    for op in ops:
        rule = getattr(op, "for_target", None)
        if not callable(rule):
            raise TypeError(_no_target_rule(op))
        mapped.append(rule(fill))
    while mapped and mapped[-1] is None:  # nothing after them draws: no place to keep
        mapped.pop()
    return [Skipped(type(op).__name__, int(op.draws)) if new is None else new for op, new in zip(ops, mapped)]


def moves_pixels(ops: list[Any]) -> list[str]:
    """The names of the ops in ``ops`` that move pixels (their ``geometric`` flag)."""
    return [type(op).__name__ for op in ops if getattr(op, "geometric", False)]
