"""Which ops each input gets: the ``augment`` argument resolved to inputs, at construction.

``augment`` is a list (``x`` one array), or a dict from an input's key to its
list, an ``augment.Stream`` or an ``augment.Same``. A key is a key (or
position) of a dict (or tuple) ``x``; ``"x"`` is ``x`` when it is one array;
``"y"`` and ``"sample_weight"`` are those parts when they are one array, and
``("y", key)`` an input of a nested ``y`` (``("x", key)`` also names one of ``x``).

Ops without a ``data_format`` of their own follow the Loader's. Two warnings,
once per loader: an image-shaped input (same height and width) that gets no ops
while another gets ops that move pixels (it falls out of register: the fix is
``augment.Same``), and an input whose shape looks like the other data format.
Cost: construction only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gpuloader._structure import Structure
from gpuloader._warn import warn_at_caller
from gpuloader.augment.apply import check_augment, ops_and_stream
from gpuloader.augment.targets import Same, follower_ops, moves_pixels

DATA_FORMATS = ("channels_last", "channels_first")
_PARTS = ("x", "y", "sample_weight")
_CHANNEL_COUNTS = (1, 3, 4)


@dataclass(frozen=True)
class AugmentedInput:
    """One input's ops, as checked at construction.

    Attributes:
        index: the input's leaf index (flatten order of ``x, y, sample_weight``).
        name: its name in messages (``"x"``, ``"y"``, ``"x['image']"``).
        ops: its list of ops, in order.
        stream: the list's stream of words (``augment.Stream``).
        follows: the name of the input whose draws it follows (``augment.Same``), or None.
        data_format: how its images are laid out, ``"channels_last"`` or ``"channels_first"``.
    """

    index: int
    name: str
    ops: list[Any]
    stream: int
    follows: str | None
    data_format: str


def check_data_format(value: Any) -> str:
    """``data_format``: None reads ``keras.config.image_data_format()``; else one of :data:`DATA_FORMATS`."""
    if value is None:
        import keras

        value = keras.config.image_data_format()
    if value not in DATA_FORMATS:
        raise ValueError(
            f"data_format must be 'channels_last' ((n, H, W, C) images) or 'channels_first' ((n, C, H, W)); "
            f"received {value!r}. Fix: data_format='channels_last', or leave it out to follow "
            "keras.config.image_data_format()."
        )
    return value


def image_size(shape: tuple[int, ...], data_format: str) -> tuple[int, int] | None:
    """``(H, W)`` of an array of images ``(n, H, W)`` or 4-d in ``data_format``; None for other ranks."""
    if len(shape) == 3:
        return int(shape[1]), int(shape[2])
    if len(shape) == 4:
        return (int(shape[1]), int(shape[2])) if data_format == "channels_last" else (int(shape[2]), int(shape[3]))
    return None


def assign(
    augment: Any, structure: Structure, leaves: list[Any], names: list[str], data_format: str
) -> list[AugmentedInput]:
    """``augment`` resolved to the inputs it names, each list checked against its input; warns (module docstring).

    Raises:
        TypeError, ValueError: a key names no input (or two), a ``Same`` names an input without ops of its
            own or of another image size, an op refuses its input; each message names the fix.
    """
    if augment is None:
        return []
    resolver = _Keys(structure, names)
    if not isinstance(augment, Mapping):
        if structure.children[0].kind != "leaf":
            raise TypeError(resolver.needs_dict(leaves))
        given = {0: augment}
    else:
        given = {}
        for key, value in augment.items():
            index = resolver.leaf(key)
            if index in given:
                raise ValueError(f"augment names {names[index]} twice (as {key!r} and another key). Fix: name it once.")
            given[index] = value
    entries = {}
    for index, value in given.items():
        if not isinstance(value, Same):
            ops, stream = ops_and_stream(value)
            entries[index] = _entry(index, ops, stream, None, leaves, names, data_format)
    for index, value in given.items():
        if isinstance(value, Same):
            entries[index] = _follower(index, value, resolver, entries, leaves, names, data_format)
    result = [entries[index] for index in given]
    _warn_left_behind(result, leaves, names, data_format)
    _warn_shared_draws(result, leaves)
    return result


def _entry(
    index: int, ops: Any, stream: int, follows: str | None, leaves: list[Any], names: list[str], data_format: str
) -> AugmentedInput:
    shape = tuple(int(size) for size in leaves[index].shape)
    own = data_format
    if isinstance(ops, (list, tuple)):
        ops = [_with_data_format(op, data_format, shape, names[index]) for op in ops]
        own = _format_of(ops, data_format, names[index])
    _warn_other_format(shape, own, names[index])
    checked = check_augment(ops, shape, leaves[index].dtype, names[index], warn_layout=False)
    return AugmentedInput(index, names[index], checked, stream, follows, own)


def _follower(
    index: int, same: Same, resolver: _Keys, entries: dict[int, AugmentedInput], leaves: list[Any],
    names: list[str], data_format: str,
) -> AugmentedInput:
    source_index = resolver.leaf(same.input, f"augment.Same({same.input!r})")
    source = entries.get(source_index)
    if source is None:
        raise ValueError(
            f"augment.Same({same.input!r}) for {names[index]} names {names[source_index]}, which has no ops of its "
            f"own in augment. Fix: give {names[source_index]} its list, e.g. augment={{{same.input!r}: [...], ...}}, "
            "or name the input that has it."
        )
    ops = follower_ops(source.ops, same.fill)
    entry = _entry(index, ops, source.stream, source.name, leaves, names, source.data_format)
    own = image_size(tuple(leaves[index].shape), entry.data_format)
    theirs = image_size(tuple(leaves[source_index].shape), source.data_format)
    if own != theirs:
        raise ValueError(
            f"augment.Same({same.input!r}) gives {names[index]} the draws of {names[source_index]}, but their "
            f"images differ in size: {own} against {theirs} (height, width; shapes {tuple(leaves[index].shape)} "
            f"and {tuple(leaves[source_index].shape)}), so a crop or cutout would land elsewhere. Fix: resize one "
            "to the other's height and width, or give it ops of its own."
        )
    return entry


def _with_data_format(op: Any, data_format: str, shape: tuple[int, ...], name: str) -> Any:
    """``op`` with the Loader's ``data_format`` when it has the field and left it None (follow the Loader).

    An op without the field reads channels-last images only: under ``channels_first`` it is refused for a
    4-d input rather than flip or crop the wrong axes.
    """
    if not hasattr(op, "data_format"):
        if data_format == "channels_first" and len(shape) == 4 and _looks_like_op(op):
            raise ValueError(
                f"{op!r} for {name} reads channels_last images only (it has no data_format), and {name} "
                f"{shape} is read as channels_first (data_format='channels_first'). Fix: give the op a "
                f"data_format field it follows, or transpose {name} to (n, H, W, C) and pass "
                "data_format='channels_last'."
            )
        return op
    if op.data_format is None and dataclasses.is_dataclass(op) and not isinstance(op, type):
        return dataclasses.replace(op, data_format=data_format)
    return op


def _looks_like_op(op: Any) -> bool:
    return not isinstance(op, type) and callable(getattr(op, "apply", None))


def _format_of(ops: list[Any], default: str, name: str) -> str:
    """The data format the ops of one input read it in: theirs (they must agree), else ``default``."""
    formats = {op.data_format for op in ops if getattr(op, "data_format", None) is not None}
    if len(formats) > 1:
        raise ValueError(
            f"the ops for {name} disagree on data_format ({sorted(formats)}): one array has one layout. "
            "Fix: give them the same data_format, or none (they then follow the Loader's)."
        )
    return formats.pop() if formats else default


def _warn_other_format(shape: tuple[int, ...], data_format: str, name: str) -> None:
    if len(shape) != 4:
        return
    first, last = shape[1], shape[3]
    if data_format == "channels_last" and first in _CHANNEL_COUNTS and last not in _CHANNEL_COUNTS:
        looks, axis, fix = "channels_first", f"a channel axis of {first} where channels_last has the height", \
            "(n, H, W, C)"
    elif data_format == "channels_first" and last in _CHANNEL_COUNTS and first not in _CHANNEL_COUNTS:
        looks, axis, fix = "channels_last", f"a channel axis of {last} where channels_first has the width", \
            "(n, C, H, W)"
    else:
        return
    warn_at_caller(
        f"{name} has shape {shape}, which looks {looks} ({axis}), but its augmentation reads it as "
        f"{data_format}: a horizontal flip would then reverse another axis. Fix: pass "
        f"Loader(..., data_format={looks!r}) (or set it on the ops), or transpose {name} to {fix}."
    )


def _warn_left_behind(entries: list[AugmentedInput], leaves: list[Any], names: list[str], data_format: str) -> None:
    """Warn about image-shaped inputs given no ops while another input's ops move pixels (once per input)."""
    given = {entry.index for entry in entries}
    for entry in entries:
        moved = moves_pixels(entry.ops)
        if not moved:
            continue
        size = image_size(tuple(leaves[entry.index].shape), entry.data_format)
        for index, leaf in enumerate(leaves):
            other = image_size(tuple(leaf.shape), data_format)
            if index in given or other is None or size is None:
                continue
            if other == size:
                key = _suggested_key(names[index])
                warn_at_caller(
                    f"augment moves the pixels of {entry.name} ({', '.join(moved)}) but gives {names[index]} no "
                    f"ops, and {names[index]} has the same height and width (shape {tuple(leaf.shape)}): if it is "
                    f"a mask or another image-shaped target, every pair falls out of register. Fix: give it the "
                    f"same draws, augment={{..., {key}: augment.Same({_suggested_key(entry.name)}, fill=255)}} "
                    f"(fill: the value for painted and padded pixels, e.g. an 'ignore' label); if it is not "
                    f"aligned with the images, say so with augment={{..., {key}: []}}."
                )
            elif _scaled_down(size, other):
                warn_at_caller(
                    f"augment moves the pixels of {entry.name} ({', '.join(moved)}) but gives {names[index]} no "
                    f"ops, and {names[index]} {tuple(leaf.shape)} is {entry.name}'s height and width divided by "
                    f"{size[0] // other[0]} (an output-stride mask or heatmap?): if it is aligned with the images, "
                    f"every pair falls out of register, and augment.Same needs the images' own size. Fix: "
                    f"serve {names[index]} at the images' size (augment.Same, then downsample in the model), or "
                    f"say it is not aligned with augment={{..., {_suggested_key(names[index])}: []}}."
                )
            else:
                continue
            given.add(index)


def _scaled_down(size: tuple[int, int], other: tuple[int, int]) -> bool:
    """Whether ``other`` is ``size`` divided by one integer factor of 2 or more on both axes."""
    factor = size[0] // other[0] if other[0] else 0
    return factor >= 2 and other[0] * factor == size[0] and other[1] * factor == size[1]


def _suggested_key(name: str) -> str:
    """A leaf's name as an ``augment`` key: ``"y"``, ``"image"`` for ``x['image']``, ``("y", "mask")``."""
    part, _, rest = name.partition("[")
    part = part.split(" ")[0]
    if not rest:
        return repr(part)
    inner = rest.split("]")[0]
    return inner if part == "x" else f"({part!r}, {inner})"


def _warn_shared_draws(entries: list[AugmentedInput], leaves: list[Any]) -> None:
    """Warn when two inputs of one shape and dtype get equal ops from one stream: equal draws per sample.

    Followers (``augment.Same``) are meant to share their input's draws and are left out.
    """
    own = [entry for entry in entries if entry.follows is None]
    for first, entry in enumerate(own):
        for other in own[first + 1 :]:
            a, b = leaves[entry.index], leaves[other.index]
            if a.shape == b.shape and a.dtype == b.dtype and entry.stream == other.stream and entry.ops == other.ops:
                warn_at_caller(
                    f"augment gives {entry.name} and {other.name} equal ops from the same stream, so each "
                    "sample gets the same crop, flip and cutout in both (two views of the same images come out "
                    f"identical). For draws of their own, give one of them another stream: "
                    f"augment.Stream(ops, 1) for {other.name}; for a mask that follows an image, augment.Same."
                )


class _Keys:
    """Resolves ``augment``'s keys to leaf indices (see the module docstring)."""

    def __init__(self, structure: Structure, names: list[str]) -> None:
        self._parts = structure.children
        self._names = names
        self._first = [sum(part.num_leaves for part in self._parts[:i]) for i in range(len(self._parts))]

    def _child_keys(self, part: int) -> list[Any]:
        node = self._parts[part]
        return list(node.keys) if node.kind == "dict" else list(range(len(node.children)))

    def needs_dict(self, leaves: list[Any]) -> str:
        x = self._parts[0]
        keys = self._child_keys(0)
        hint = ""
        if x.kind != "dict" and len(keys) > 2 and len({tuple(leaf.shape) for leaf in leaves[: len(keys)]}) == 1:
            hint = " If x is a list of images, one per sample, stack it into one array first: x = np.stack(images)."
        return (
            f"x has several inputs ({_shorten(keys)}), so augment must say which: a dict from the input's "
            f"{'key' if x.kind == 'dict' else 'position'} to its list of ops, e.g. augment={{{keys[0]!r}: [...]}}."
            + hint
        )

    def leaf(self, key: Any, where: str = "augment") -> int:
        """The leaf index ``key`` names, or an error listing the keys there are."""
        x = self._parts[0]
        x_keys = [] if x.kind == "leaf" else self._child_keys(0)
        part_key = isinstance(key, str) and key in _PARTS[: len(self._parts)]
        if part_key and _hashable_in(key, x_keys):
            raise ValueError(
                f"{where} key {key!r} is ambiguous: x has an input {key!r}, and {key!r} is also a part of the "
                f"batch. Fix: write ('x', {key!r}) for x[{key!r}], or ({key!r},) for the part {key}."
            )
        if _hashable_in(key, x_keys):
            return self._child(0, key)
        if part_key:
            key = (key,)
        if isinstance(key, tuple) and key and key[0] in _PARTS[: len(self._parts)] and len(key) <= 2:
            part = _PARTS.index(key[0])
            if len(key) == 1:
                if self._parts[part].kind != "leaf":
                    raise ValueError(
                        f"{where} key {key[0]!r} names {key[0]}, which is a nest of arrays "
                        f"({_shorten(self._child_keys(part))}). Fix: name one of them, e.g. ({key[0]!r}, "
                        f"{self._child_keys(part)[0]!r})."
                    )
                return self._first[part]
            if self._parts[part].kind == "leaf" or not _hashable_in(key[1], self._child_keys(part)):
                raise ValueError(self._unknown(key, where))
            return self._child(part, key[1])
        raise ValueError(self._unknown(key, where))

    def _child(self, part: int, key: Any) -> int:
        node = self._parts[part]
        position = self._child_keys(part).index(key)
        if node.children[position].kind != "leaf":
            raise ValueError(f"augment for {_PARTS[part]}[{key!r}] needs one image array there, not a nest of arrays.")
        return self._first[part] + sum(child.num_leaves for child in node.children[:position])

    def _unknown(self, key: Any, where: str) -> str:
        x = self._parts[0]
        others = list(_PARTS[1 : len(self._parts)])
        parts = f"; the other parts are named {others[0]!r} (one array) or ({others[0]!r}, key)" if others else ""
        if x.kind == "leaf":
            return (
                f"{where} names input {key!r}, but x is one array: its key is 'x'{parts}. Fix: e.g. "
                "augment={'x': [...]}, or the list itself."
            )
        return f"{where} names input {key!r}, which x does not have; x has {_shorten(self._child_keys(0))}{parts}."


def _hashable_in(key: Any, keys: list[Any]) -> bool:
    try:
        return key in keys
    except TypeError:
        return False


def _shorten(keys: list[Any]) -> str:
    return repr(keys) if len(keys) <= 6 else f"[{', '.join(map(repr, keys[:3]))}, ..., {keys[-1]!r}]: {len(keys)}"
