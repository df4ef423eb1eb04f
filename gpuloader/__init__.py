"""gpuloader: Keras batches from preloaded arrays, on the GPU when they fit.

``import gpuloader`` imports neither Keras, TensorFlow nor CuPy; ``Loader`` and
``BackupAndRestore`` are loaded on first use (they subclass Keras classes). ``info()``
imports what it reports on when called (``python -m gpuloader info`` prints it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# info.py imports only NumPy and placement at module level; importing it here (not in
# __getattr__) keeps ``gpuloader.info`` the function even after ``gpuloader.info`` the
# module is imported (the import system would bind the submodule over the name).
from gpuloader.info import info
from gpuloader.permutation import permutation
from gpuloader.placement import GPUUnavailableError, Plan
from gpuloader.sources import SourceChangedError

if TYPE_CHECKING:
    from gpuloader.ingest.folder import image_dataset_from_directory
    from gpuloader.ingest.hf import from_hf_dataset
    from gpuloader.ingest.tfdata import from_tf_dataset
    from gpuloader.loader import Loader
    from gpuloader.resume import BackupAndRestore

__all__ = [
    "BackupAndRestore", "GPUUnavailableError", "Loader", "Plan", "SourceChangedError", "from_hf_dataset",
    "from_tf_dataset", "image_dataset_from_directory", "info", "permutation",
]
__version__ = "0.1.0"


_INGEST = {"image_dataset_from_directory": "folder", "from_hf_dataset": "hf", "from_tf_dataset": "tfdata"}


def __getattr__(name: str) -> Any:
    if name == "Loader":
        from gpuloader.loader import Loader

        return Loader
    if name == "BackupAndRestore":
        from gpuloader.resume import BackupAndRestore

        return BackupAndRestore
    if name in _INGEST:  # Pillow, datasets and TensorFlow are imported only when these are called
        import importlib

        return getattr(importlib.import_module(f"gpuloader.ingest.{_INGEST[name]}"), name)
    raise AttributeError(f"module 'gpuloader' has no attribute {name!r}")
