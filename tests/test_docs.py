"""Every ```python block of README.md and docs/*.md runs as written.

The blocks of one page run in order as one script, in a new process with an empty working
directory, so a page may build on its earlier blocks but not on anything outside it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks(page: Path) -> list[str]:
    """The page's ```python blocks, in order."""
    return BLOCK.findall(page.read_text(encoding="utf-8"))


def test_the_block_pattern_finds_blocks_and_only_python_ones(tmp_path: Path):
    text = "intro\n```python\nx = 1\n```\n```bash\nmake test\n```\n```python\ny = x\n```\n"
    page = tmp_path / "probe.md"
    page.write_text(text)
    assert python_blocks(page) == ["x = 1\n", "y = x\n"]


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=lambda p: p.name)
def test_every_python_block_of_the_page_runs(page: Path, tmp_path: Path):
    script = "\n".join(python_blocks(page))
    env = dict(os.environ, PYTHONPATH=str(ROOT), KERAS_BACKEND=os.environ.get("KERAS_BACKEND", "tensorflow"))
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{page.name}'s code blocks failed:\n{done.stderr[-4000:]}"
