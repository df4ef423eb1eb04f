"""The decode-once cache: entries built atomically, and two builds of one entry at once both succeed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpuloader.ingest import cache

BUILD = """
import sys, time
from pathlib import Path
import numpy as np
import pytest
from gpuloader.ingest import cache

def build(folder):
    out = cache.new_array(folder, "values", (1000,), "<i8")
    time.sleep(float(sys.argv[2]))  # long enough for the other process to start its own build meanwhile
    out[:] = np.arange(1000)
    out.flush()
    return {"arrays": cache.describe({"values": out})}

entry = cache.open_or_build(Path(sys.argv[1]), "test", {"name": "x"}, {"version": 1}, build)
print(int(entry.array("values").sum()), entry.built_now)
"""


def _build_in(root: Path, seconds: float) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    return subprocess.Popen([sys.executable, "-c", BUILD, str(root), str(seconds)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def test_two_processes_building_the_same_entry_at_once_both_get_it(tmp_path):
    first = _build_in(tmp_path, 2.0)
    second = _build_in(tmp_path, 0.2)
    results = [process.communicate(timeout=120) for process in (first, second)]
    assert [process.returncode for process in (first, second)] == [0, 0], [err[-2000:] for _, err in results]
    assert [out.split()[0] for out, _ in results] == [str(sum(range(1000)))] * 2
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".tmp")] == []
    assert len(list(tmp_path.iterdir())) == 1


def test_a_build_folder_is_removed_only_once_its_process_on_this_host_has_exited(tmp_path):
    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                            text=True, check=True)
    host = cache._owner().rpartition(".")[0]
    source_hash = cache.digest({"name": "x"})[:16]
    dead = tmp_path / f".tmp-test-{source_hash}-0000-{host}.{exited.stdout.strip()}-aaaaaaaa"
    alive = tmp_path / f".tmp-test-{source_hash}-0000-{host}.{os.getppid()}-bbbbbbbb"  # a running process
    elsewhere = tmp_path / f".tmp-test-{source_hash}-0000-otherhost.{exited.stdout.strip()}-cccccccc"
    for folder in (dead, alive, elsewhere):
        folder.mkdir()
    os.utime(elsewhere, (1, 1))  # untouched for decades: still not provably dead (a long build on a shared disk)

    def build(folder):
        out = cache.new_array(folder, "values", (3,), "<i8")
        out[:] = 1
        out.flush()
        return {"arrays": cache.describe({"values": out})}

    entry = cache.open_or_build(tmp_path, "test", {"name": "x"}, {"version": 1}, build)
    assert np.asarray(entry.array("values")).tolist() == [1, 1, 1]
    assert not dead.exists()
    assert alive.exists() and elsewhere.exists()


def test_a_cache_folder_that_cannot_be_made_is_named_with_the_fix(tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(OSError, match=r"cache cannot be written in .*a_file.*cache_dir=.*GPULOADER_CACHE_DIR"):
        cache.cache_root(tmp_path / "a_file" / "cache")


def test_a_read_only_cache_folder_without_the_entry_is_named_with_the_fix(tmp_path, monkeypatch):
    real_mkdir = Path.mkdir

    def read_only(path, *args, **kwargs):  # what a folder without write permission gives a non-root user
        if path.name.startswith(".tmp-"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(PermissionError, match=r"cache cannot be written in .*Permission denied.*Fix: pass cache_dir="):
        cache.open_or_build(tmp_path, "test", {"name": "x"}, {"version": 1}, lambda folder: {"arrays": {}})


def test_a_cache_folder_under_the_home_tilde_is_the_home_folder_not_a_folder_named_tilde(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert cache.cache_root("~/models/cache") == tmp_path / "home" / "models" / "cache"
    monkeypatch.setenv(cache.ENV_CACHE_DIR, "~/env-cache")  # quoted in a shell or a .env file: not expanded there
    assert cache.cache_root() == tmp_path / "home" / "env-cache"
    assert not (tmp_path / "~").exists()
