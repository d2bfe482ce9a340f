"""The image track's ground truth: NAS-Bench-201 architectures trained on the original data under an
:class:`~hcdc.image.protocol.ImageProtocol`, their true validation and test numbers cached per architecture.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..data.image import ImageData, data_fingerprint
from ..errors import ConfigError, DataError
from ..io import number
from .cache import CACHE_FORMAT, cache_file, cached_per_architecture
from .protocol import ImageProtocol, prepare_data
from .space import Architecture
from .training import default_device, score_architecture, train_networks

METRICS = ("val_acc", "val_loss", "test_acc")


@dataclass
class ImageGroundTruth:
    """True scores of ``archs`` (mean over the protocol's seeds) on the original data, in ``archs`` order."""

    archs: list[Architecture]
    val_acc: Tensor
    val_loss: Tensor
    test_acc: Tensor
    per_seed: list[dict]  # per architecture: {seed: {"val_acc", "val_loss", "test_acc"}}
    computed: int  # architectures trained in this call (the rest came from the cache)
    seconds: float  # wall time of this call
    compute_seconds: float  # training + scoring time of all archs, including cached ones (as first measured)
    cache_file: str | None = None

    def as_dict(self) -> dict:
        return {"architectures": [a.to_str() for a in self.archs], "val_acc": self.val_acc.tolist(),
                "val_loss": self.val_loss.tolist(), "test_acc": self.test_acc.tolist(), "computed": self.computed,
                "seconds": self.seconds, "compute_seconds": self.compute_seconds}


def ground_truth_path(data: ImageData, protocol: ImageProtocol, cache: str | Path | None = None,
                      device: torch.device | str | None = None) -> Path:
    """The cache file of ``data`` (already :func:`~hcdc.image.protocol.prepare_data`'d) under ``protocol``.

    Keyed by the data's fingerprint, :meth:`~hcdc.image.protocol.ImageProtocol.truth_key` and the numeric precision
    (bf16 when CUDA autocast is on, else fp32).
    """
    return cache_file(cache, "image_groundtruth", f"{data.name.lower()}-{data_fingerprint(data)}-{protocol.truth_key()}",
                       protocol, device)


def image_ground_truth(
    data: ImageData,
    archs: Sequence[Architecture],
    protocol: ImageProtocol,
    cache: str | Path | None = None,
    *,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> ImageGroundTruth:
    """Mean validation accuracy / loss and test accuracy of ``archs`` trained on ``data`` under ``protocol``.

    ``data`` is first reduced by :func:`~hcdc.image.protocol.prepare_data`. Each architecture is trained once per seed
    of ``protocol.seeds`` on the training split and scored on the validation and test splits.
    Results are cached in one JSON file per (data fingerprint, protocol, precision) under
    ``<cache>/image_groundtruth/`` (default :func:`hcdc.paths.cache_dir`), one entry per
    architecture string; only missing architectures are trained, and each is merged into the file
    as soon as it is done, under an exclusive ``flock`` and with an atomic write, so concurrent
    runs share work without losing or corrupting entries and an interrupted run resumes.
    """
    start = time.perf_counter()
    archs = list(archs)
    if not archs:
        raise ConfigError("image ground truth needs at least one architecture")
    device = default_device(device)
    data = prepare_data(data, protocol)
    if len(data.y_val) == 0:
        raise DataError(f"dataset '{data.name}' has no validation images to rank architectures by")
    path = ground_truth_path(data, protocol, cache, device)
    header = {"format": CACHE_FORMAT, "dataset": data.name, "summary": data.summary(), "protocol": protocol.as_dict(),
              "truth_key": protocol.truth_key()}
    keys = [a.to_str() for a in archs]
    splits = None

    def train_and_score(chunk: list[str]) -> dict[str, dict]:
        nonlocal splits
        if splits is None:  # moved to the device only when something is missing
            splits = {s: (data.normalized(s).to(device), data.split(s)[1].to(device)) for s in ("train", "val", "test")}
        entries: dict[str, dict] = {}
        jobs = [(Architecture.parse(key), seed) for key in chunk for seed in protocol.seeds]
        trained = train_networks(jobs, *splits["train"], protocol, num_classes=data.num_classes, device=device)
        for (arch, seed), params in zip(jobs, trained):
            val = score_architecture(arch, params, *splits["val"], protocol, device=device)
            test = (score_architecture(arch, params, *splits["test"], protocol, device=device)
                    if len(splits["test"][1]) else {"acc": float("nan")})
            seeds = entries.setdefault(arch.to_str(), {})
            seeds[str(seed)] = {"val_acc": val["acc"], "val_loss": val["loss"], "test_acc": test["acc"]}
        return {key: {**{m: float(np.mean([s[m] for s in seeds.values()])) for m in METRICS}, "seeds": seeds}
                for key, seeds in entries.items()}

    known, missing, compute_seconds = cached_per_architecture(path, header, keys, train_and_score, protocol,
                                                               protocol.seeds, device, f"ground truth ({data.name})",
                                                               progress)
    values = {m: torch.tensor([number(known[k][m]) for k in keys], dtype=torch.float64) for m in METRICS}
    return ImageGroundTruth(archs, values["val_acc"], values["val_loss"], values["test_acc"],
                            [known[k]["seeds"] for k in keys], missing, time.perf_counter() - start, compute_seconds,
                            str(path))
