"""What every run records beside its outputs: package versions, machine, seed, config, timings."""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

_PACKAGES = ("hcdc", "torch", "torch_geometric", "numpy", "scipy", "optuna", "safetensors")


def command_line(script: str, argv: list[str] | None) -> str:
    """How a benchmark script was run, for its results: ``python <folder>/<script> <arguments>``
    (``argv`` None: the process's own arguments)."""
    path = Path(script)
    args = argv if argv is not None else sys.argv[1:]
    return f"python {path.parent.name}/{path.name} {shlex.join(args)}".rstrip()


def package_versions() -> dict[str, str]:
    """Installed versions of Python and the packages a result depends on."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def machine_info() -> dict[str, Any]:
    """The machine a measurement was taken on: OS, CPU, core count, torch threads, GPU if any."""
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


class Timings(dict):
    """Seconds per named stage; ``with timings.stage("name"):`` adds the stage's wall time."""

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self[name] = self.get(name, 0.0) + time.perf_counter() - start


def run_record(config: dict[str, Any], seed: int | None, timings: dict[str, float] | None = None) -> dict[str, Any]:
    """The record written next to a run's outputs (config, seed, versions, machine, timings)."""
    return {
        "config": config,
        "seed": seed,
        "versions": package_versions(),
        "machine": machine_info(),
        "timings": dict(timings or {}),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
