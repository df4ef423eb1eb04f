"""The compiled parts: the host kernel of the built-in augmentation ops (gpuloader/augment/_pixels.c) and the
gather of rows by byte offset for Arrow columns (gpuloader/sources/_rows.c), and the stat of many files at once for
the image folders' cache key (gpuloader/ingest/_stat.c).

Everything else is in pyproject.toml. ``optional=True``: without a C compiler the
install still succeeds and the ops (the Arrow gather, the folder's stats) run on their Python path (same bytes,
slower);
``python -m gpuloader info`` says which one is in use.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "gpuloader.augment._pixels",
            sources=["gpuloader/augment/_pixels.c"],
            depends=["gpuloader/augment/_pixels.h"],
            extra_compile_args=["-O3"],
            optional=True,
        ),
        Extension(
            "gpuloader.sources._rows",
            sources=["gpuloader/sources/_rows.c"],
            extra_compile_args=["-O3"],
            optional=True,
        ),
        Extension(
            "gpuloader.ingest._stat",
            sources=["gpuloader/ingest/_stat.c"],
            extra_compile_args=["-O2", "-pthread"],
            extra_link_args=["-pthread"],
            optional=True,
        ),
    ]
)
