"""`import gpuloader` has no side effects: TensorFlow, Keras and CuPy stay unimported."""

from __future__ import annotations

import json
import subprocess
import sys


def test_import_gpuloader_imports_no_heavy_library():
    code = (
        "import sys, json, gpuloader; "
        "print(json.dumps([m for m in ('tensorflow', 'keras', 'cupy', 'jax', 'torch') if m in sys.modules]))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_loader_is_loaded_on_first_use():
    code = "import gpuloader, keras; print(gpuloader.Loader.__name__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "Loader"
