"""The decode-once cache: one ``.npy`` file per array plus a ``manifest.json``, built atomically.

Where it lives: ``cache_dir`` if given, else ``$GPULOADER_CACHE_DIR``, else
``$XDG_CACHE_HOME/gpuloader``, else ``~/.cache/gpuloader``. Each entry is a
folder named ``<kind>-<source hash>-<content hash>``: the source hash covers
what the user named (a folder and the decode settings, a dataset's column),
the content hash what decides the bytes (every file with its size and
modification time, a dataset's fingerprint). A changed source gets a new
content hash, so it is rebuilt, and the entries of the same source with
another content hash are removed once the new one is in place.

Atomic: an entry is written into a hidden temporary folder beside it, the
manifest last, then renamed into place; a build that fails or is killed
leaves no entry (only a ``.tmp-*`` folder named after its host and process,
removed by the next build of the same source once that process has exited;
another host's is left, for the user to delete).
Two processes building the same entry at once both succeed: each builds in
its own folder, the first rename wins and the other's copy is discarded.

Opening an entry reads the manifest and maps the arrays (``np.load(...,
mmap_mode="r")``): no decode, no copy. Cost: one ``stat`` per array file and a
JSON read.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = 1
ENV_CACHE_DIR = "GPULOADER_CACHE_DIR"
MANIFEST = "manifest.json"


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder cache entries live in (created if missing); see the module docstring for the order."""
    origin = "cache_dir="
    if cache_dir is None:
        cache_dir, origin = os.environ.get(ENV_CACHE_DIR), f"${ENV_CACHE_DIR}"
    if cache_dir is None:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        cache_dir, origin = os.path.join(xdg, "gpuloader"), "the default, $XDG_CACHE_HOME or ~/.cache"
    root = Path(cache_dir).expanduser()  # "~/..." in an argument or a quoted variable is the home folder, not ./~
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _unwritable(root, origin, error) from error
    return root


def _unwritable(root: Path, origin: str, error: OSError) -> OSError:
    """``error`` (an ``OSError`` of the same type) saying that the cache folder cannot be written, and the fix."""
    return type(error)(
        f"the decode-once cache cannot be written in {str(root)!r} ({origin}): {error}. An entry is built there "
        "the first time a source is read (an entry already built is only read). Fix: pass cache_dir= a writable "
        f"folder, or set ${ENV_CACHE_DIR}."
    )


def digest(value: Any) -> str:
    """A stable hash of a JSON-serialisable value (sorted keys)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Entry:
    """A built cache entry: its folder and manifest; :meth:`array` maps one of its arrays."""

    path: Path
    manifest: dict[str, Any]
    built_now: bool

    def array(self, name: str) -> np.ndarray:
        """The array ``name`` as a read-only memory map (nothing is read until rows are asked for)."""
        return np.load(self.path / f"{name}.npy", mmap_mode="r", allow_pickle=False)

    @property
    def names(self) -> list[str]:
        return list(self.manifest["arrays"])


def open_or_build(
    root: Path,
    kind: str,
    source: Mapping[str, Any],
    content: Any,
    build: Callable[[Path], dict[str, Any]],
    rebuild: bool = False,
) -> Entry:
    """The entry for (``source``, ``content``): opened if built before, else built by ``build(folder)``.

    ``build`` writes ``<name>.npy`` files into the folder it is given and
    returns the manifest's extra fields, with ``"arrays"`` naming the files it
    wrote. Its exceptions propagate after the temporary folder is removed.
    ``rebuild=True`` builds even if the entry exists and replaces it under the
    same name, so later calls without ``rebuild`` open the new one.
    """
    source_hash, content_hash = digest(source)[:16], digest(content)[:16]
    name = f"{kind}-{source_hash}-{content_hash}"
    final = root / name
    opened = None if rebuild else _open(final, source, content_hash)
    if opened is not None:
        return opened
    for stale in root.glob(f".tmp-{kind}-{source_hash}-*"):
        if _abandoned(stale):  # left by a build that was killed, not one running now
            shutil.rmtree(stale, ignore_errors=True)
    temporary = root / f".tmp-{name}-{_owner()}-{uuid.uuid4().hex[:8]}"
    try:
        temporary.mkdir()
    except OSError as error:
        raise _unwritable(root, "the cache folder", error) from error
    try:
        extra = build(temporary)
        manifest = {"format": FORMAT, "kind": kind, "source": dict(source), "content_hash": content_hash, **extra}
        with open(temporary / MANIFEST, "w") as file:
            json.dump(manifest, file, default=str)
        if final.exists():
            opened = None if rebuild else _open(final, source, content_hash)
            if opened is not None:  # another process finished the same entry first: use it
                shutil.rmtree(temporary, ignore_errors=True)
                return opened
            shutil.rmtree(final, ignore_errors=True)  # the entry replaced, or unreadable (e.g. an older format)
        try:
            os.rename(temporary, final)
        except OSError:  # another process renamed its copy in first: use that one
            shutil.rmtree(temporary, ignore_errors=True)
            opened = _open(final, source, content_hash)
            if opened is None:
                raise
            return opened
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    for old in root.glob(f"{kind}-{source_hash}-*"):  # the same source, other contents: out of date
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return Entry(final, manifest, built_now=True)


def _owner() -> str:
    """``<host>.<pid>`` of this process, in a temporary folder's name, so another build can tell it is alive."""
    host = "".join(char if char.isalnum() else "_" for char in os.uname().nodename) or "host"
    return f"{host}.{os.getpid()}"


def _abandoned(folder: Path) -> bool:
    """Whether a ``.tmp-*`` build folder provably belongs to no running build: it is this host's and its process
    has exited. Another host's (a shared file system) or an unnamed one is never taken for abandoned: its age
    cannot tell (a long decode writes into its files, not the folder), so it is left for the user to delete."""
    host, _, pid = folder.name.rsplit("-", 2)[-2].rpartition(".")
    if host != _owner().rpartition(".")[0] or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _open(folder: Path, source: Mapping[str, Any], content_hash: str) -> Entry | None:
    """The entry in ``folder`` if it is complete and of this source and content, else None."""
    try:
        with open(folder / MANIFEST) as file:
            manifest = json.load(file)
    except (OSError, ValueError):
        return None
    if manifest.get("format") != FORMAT or manifest.get("content_hash") != content_hash:
        return None
    if digest(manifest.get("source")) != digest(dict(source)):
        return None
    for array_name, spec in manifest["arrays"].items():
        expected = int(np.prod(spec["shape"], dtype=np.int64)) * np.dtype(spec["dtype"]).itemsize
        try:
            size = os.stat(folder / f"{array_name}.npy").st_size
        except OSError:
            return None
        if size < expected:  # truncated or removed by hand: rebuild rather than crash on the map
            return None
    return Entry(folder, manifest, built_now=False)


def new_array(folder: Path, name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """Create ``<folder>/<name>.npy`` of ``shape`` and ``dtype`` and map it for writing."""
    return np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=np.dtype(dtype), shape=shape)


def describe(arrays: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """The manifest's ``arrays`` field for arrays written into an entry."""
    return {name: {"shape": list(array.shape), "dtype": np.dtype(array.dtype).str} for name, array in arrays.items()}
