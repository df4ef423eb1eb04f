"""`import gpuloader` has no side effects: TensorFlow, Keras and CuPy stay unimported."""

from __future__ import annotations

import json
import subprocess
import sys


def test_import_gpuloader_imports_no_heavy_library():
    code = (
        "import sys, json, gpuloader; "
        "print(json.dumps([m for m in ('tensorflow', 'keras', 'cupy', 'jax', 'torch', 'PIL', 'datasets', 'pyarrow') "
        "if m in sys.modules]))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_loader_is_loaded_on_first_use():
    code = "import gpuloader, keras; print(gpuloader.Loader.__name__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "Loader"


def test_input_functions_are_public_and_loaded_on_first_use():
    code = (
        "import sys, gpuloader; f = gpuloader.image_dataset_from_directory; g = gpuloader.from_hf_dataset; "
        "h = gpuloader.from_tf_dataset; "
        "print(f.__module__, g.__module__, h.__module__, [m for m in ('PIL', 'datasets', 'tensorflow') "
        "if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == (
        "gpuloader.ingest.folder gpuloader.ingest.hf gpuloader.ingest.tfdata []"
    )
