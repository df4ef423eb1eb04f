"""``warn_at_caller``: a warning reported at the first frame outside gpuloader (the user's line)."""

from __future__ import annotations

import os
import sys
import warnings

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn_at_caller(message: str, category: type[Warning] = UserWarning) -> None:
    """Warn with the stack level of the nearest caller outside this package, however deep the call is."""
    level, frame = 2, sys._getframe(1)  # stacklevel 2 is the frame that called this function
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        level, frame = level + 1, frame.f_back
    warnings.warn(message, category, stacklevel=level)
