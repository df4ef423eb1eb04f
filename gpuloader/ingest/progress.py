"""A progress bar for one-time conversions: tqdm when it is installed and ``verbose``, else nothing."""

from __future__ import annotations

from typing import Any


class Progress:
    """Counts items done; shows a tqdm bar on stderr when ``verbose`` and tqdm imports."""

    def __init__(self, total: int, description: str, verbose: bool) -> None:
        self._bar: Any = None
        if not verbose or total == 0:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:  # tqdm is optional: no bar, same result
            return
        self._bar = tqdm(total=total, desc=description, unit="item", leave=False)

    def advance(self, count: int) -> None:
        if self._bar is not None:
            self._bar.update(count)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
