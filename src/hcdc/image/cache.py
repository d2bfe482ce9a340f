"""Per-architecture JSON caches of the image track: the ground truth's and each proxy's numbers, filled in chunks
of about one stack so that concurrent runs share work and an interrupted one resumes.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..io import merge_json_entries, read_json_entries
from ..paths import cache_dir
from .protocol import ImageProtocol
from .training import default_device, uses_cuda_tricks

CACHE_FORMAT = 1


def stack_chunks(items: Sequence, protocol: ImageProtocol, seeds: Sequence[int]) -> list[list]:
    """``items`` (architectures) in consecutive groups whose networks, one per seed, fill about one stack."""
    size = max(1, protocol.stack // len(seeds))
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def cached_per_architecture(path: Path, header: dict, keys: Sequence[str], compute, protocol: ImageProtocol,
                            seeds: Sequence[int], device: torch.device, desc: str,
                            progress: bool) -> tuple[dict, int, float]:
    """The entries of the JSON cache ``path`` for the architecture strings ``keys``, how many were computed, and
    their compute time (each entry's ``seconds`` summed, cached ones as first measured).

    Those the file lacks are computed in chunks of about one stack (``compute(chunk)`` → ``{key: entry}``), each
    entry given its ``seconds`` (the chunk's time over its size) and ``device``, and merged into the file as soon
    as its chunk is done (:func:`hcdc.io.merge_json_entries`: under a lock, atomically), so concurrent runs share
    work and an interrupted one resumes from the last finished chunk.
    """
    known = read_json_entries(path, "archs")
    missing = [k for k in dict.fromkeys(keys) if k not in known]
    if missing and protocol.amp and device.type != "cuda":
        warnings.warn(f"{desc}: training {len(missing)} architecture(s) x {len(seeds)} seed(s) of a protocol made for a CUDA "
                      f"GPU on {device.type}; expect it to be very slow (the 'full' protocol's ground truth is about 1,000 "
                      "hours on 2 CPU cores: bench/results/image_stack_full_truth_cpu.md)", stacklevel=3)
    bar = tqdm(total=len(missing), desc=desc, unit="arch", disable=not progress or not missing)
    for chunk in stack_chunks(missing, protocol, seeds):
        t0 = time.perf_counter()
        entries = compute(chunk)
        seconds = (time.perf_counter() - t0) / len(chunk)
        entries = {k: {**e, "seconds": seconds, "device": str(device)} for k, e in entries.items()}
        merge_json_entries(path, "archs", entries, header)
        known.update(entries)
        bar.update(len(chunk))
    bar.close()
    return known, len(missing), float(sum(known[k]["seconds"] for k in dict.fromkeys(keys)))


def cache_file(cache: str | Path | None, folder: str, stem: str, protocol: ImageProtocol,
               device: torch.device | str | None) -> Path:
    """``<cache>/<folder>/<stem>-<precision>.json`` (default cache :func:`hcdc.paths.cache_dir`); the precision is
    bf16 when CUDA autocast is on, else fp32."""
    precision = "bf16" if uses_cuda_tricks(default_device(device), protocol.amp) else "fp32"
    return (Path(cache) if cache is not None else cache_dir()) / folder / f"{stem}-{precision}.json"
