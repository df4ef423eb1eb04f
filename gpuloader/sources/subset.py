"""Some rows of another :class:`~gpuloader.sources.base.Source`, read lazily: one worker's shard of on-disk data."""

from __future__ import annotations

import numpy as np

from gpuloader.sources.base import Source


class RowSubset(Source):
    """Rows ``rows`` (ascending indices) of ``base``; row ``i`` here is row ``rows[i]`` there.

    Ascending rows keep a sorted read sorted, so reads stay in file order.
    """

    def mapped_files(self) -> tuple[np.ndarray | None, list[tuple[int, np.ndarray]]]:
        rows, maps = self.base.mapped_files()
        return (self.rows if rows is None else rows[self.rows]), maps

    def __init__(self, base: Source, rows: np.ndarray) -> None:
        self.base = base
        self.rows = rows
        self.shape = (len(rows), *base.shape[1:])
        self.dtype = base.dtype

    @property
    def on_disk(self) -> bool:  # type: ignore[override]  # as the source it reads from
        return self.base.on_disk

    @property
    def reads_in_any_order(self) -> bool:  # type: ignore[override]  # as the source it reads from
        return self.base.reads_in_any_order

    def describe(self, name: str) -> str:
        return self.base.describe(name)

    def read_sorted(self, rows: np.ndarray, out: np.ndarray) -> None:
        self.base.read_sorted(self.rows[rows], out)

    def read_range(self, start: int, stop: int) -> np.ndarray:
        wanted = self.rows[start:stop]
        out = np.empty((len(wanted), *self.shape[1:]), self.dtype)
        self.base.read_sorted(wanted, out)
        return out

    def check_unchanged(self, rows: slice | np.ndarray | None = None) -> None:
        self.base.check_unchanged(None if rows is None else self.rows[rows])

    def subset(self, rows: np.ndarray) -> Source:
        return RowSubset(self.base, self.rows[rows])

    def advise_random_access(self) -> bool:
        return self.base.advise_random_access()
