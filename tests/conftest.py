"""Fixtures shared by the test modules."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest
import torch


def load_bench(name: str) -> ModuleType:
    """The benchmark script ``bench/<name>.py`` as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_readme_snippet(marker: str, loops: str) -> dict:
    """Execute the README's Python example that contains ``marker``, shortened (``loops``, e.g. ``"range(100)"``,
    becomes ``range(5)`` and ``n_trials=20`` becomes 3), in the current folder; its globals."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (snippet,) = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if marker in b]
    small = snippet.replace(loops, "range(5)").replace("n_trials=20", "n_trials=3")
    assert small.count("range(5)") == 1 and small.count("n_trials=3") == 1, "the example's loops changed"
    scope: dict = {}
    exec(compile(small, "README.md", "exec"), scope)
    return scope


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny tensors: a second thread only adds synchronisation (costly on
    a busy 2-core machine), and results stay bit-identical. Modules opt in with ``pytestmark``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
