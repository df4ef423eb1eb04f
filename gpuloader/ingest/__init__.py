"""Bring your own data: image folders, Hugging Face datasets and ``tf.data`` decoded once into a cache.

Each input kind is one module (:mod:`.folder`, :mod:`.hf`, :mod:`.tfdata`); all
of them write the same cache (:mod:`.cache`: ``.npy`` files and a manifest,
built atomically) and hand a :class:`gpuloader.Loader` its memory maps, so the
usual tiers apply (GPU if it fits, else RAM, else disk). Nothing here is
imported by ``import gpuloader``; Pillow, ``datasets`` and TensorFlow are
imported when a function that needs them is called.
"""
