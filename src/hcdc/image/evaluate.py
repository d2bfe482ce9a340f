"""How a proxy ranks NAS-Bench-201 architectures against the ground truth (the protocol of HCDC's Table 1).

Ranking on a proxy. The paper ranks by validation accuracy. On a proxy's few validation images
(200 for the cpu protocol) accuracies tie often, so the proxy score of an architecture is its mean
validation accuracy with the mean validation loss as tie-breaker: ``acc − 1e-6 · loss / max
loss`` (the loss term is below one image's worth of accuracy for any validation set under a
million images, so it only orders exact ties). The evaluation also records Spearman/Kendall of
the loss alone. The true ranking is by mean validation accuracy on the (subset of the) original
validation split.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..artifacts import Proxy
from ..data.image import ImageData
from ..errors import ConfigError
from ..metrics import check_rankable, ranking_report
from .cache import CACHE_FORMAT, cache_file, cached_per_architecture
from .groundtruth import ImageGroundTruth
from .protocol import ImageProtocol
from .space import Architecture
from .training import default_device, score_architecture, train_networks

TIE_BREAK = 1e-6  # weight of the normalised loss in the proxy score (see the module docstring)


def proxy_score(acc: Tensor | Sequence[float], loss: Tensor | Sequence[float]) -> Tensor:
    """Accuracy with the loss as tie-breaker: ``acc − 1e-6 · loss / max(loss)`` (higher is better)."""
    acc, loss = torch.as_tensor(acc, dtype=torch.float64), torch.as_tensor(loss, dtype=torch.float64)
    top = float(loss.abs().max()) if len(loss) else 0.0
    return acc - TIE_BREAK * loss / (top if top > 0 else 1.0)


@dataclass
class ImageProxyEvaluation:
    """How a proxy ranks architectures: its scores, the truth, the ranking report, Perf and the oracle's Perf."""

    archs: list[Architecture]
    proxy_acc: Tensor
    proxy_loss: Tensor
    proxy_score: Tensor
    truth: ImageGroundTruth
    report: dict[str, float]
    perf: float  # true test accuracy of the proxy's pick
    oracle_perf: float  # true test accuracy of the architecture with the best true validation accuracy
    pick: int
    oracle_pick: int
    seconds: float  # training + scoring time of every architecture on the proxy, cached ones as first measured
    computed: int  # architectures trained in this call (the rest came from the cache)
    wall_seconds: float  # wall time of this call

    def row(self) -> dict:
        return {**self.report, "perf": self.perf, "oracle_perf": self.oracle_perf, "pick": self.archs[self.pick].to_str(),
                "oracle_pick": self.archs[self.oracle_pick].to_str(), "seconds": self.seconds,
                "seconds_per_arch": self.seconds / len(self.archs), "computed": self.computed,
                "wall_seconds": self.wall_seconds}

    def scores(self) -> dict:
        """Per-architecture proxy numbers, JSON-ready."""
        return {"score": self.proxy_score.tolist(), "val_acc": self.proxy_acc.tolist(), "val_loss": self.proxy_loss.tolist()}


def proxy_images(proxy: Proxy, protocol: ImageProtocol) -> tuple[Tensor, Tensor]:
    """The proxy's images at the protocol's resolution (average-pooled when larger)."""
    x = proxy.tensors["x"].float()
    h, w = x.shape[-2:]
    r = protocol.resolution
    if r is not None and (h, w) != (r, r):
        if h < r or w < r or h % r or w % r:
            raise ConfigError(f"the proxy's {h}x{w} images cannot be average-pooled to the protocol's {r}x{r}")
        x = F.avg_pool2d(x, (h // r, w // r))
    return x, proxy.tensors["y"]


def proxy_parts(proxy: Proxy, protocol: ImageProtocol,
                device: torch.device | str | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x_train, y_train, x_val, y_val) of an image proxy, its images at the protocol's resolution (on ``device``,
    default the CPU)."""
    if proxy.kind != "image":
        raise ConfigError(f"expected an image proxy, got a {proxy.kind} proxy")
    x, y = proxy_images(proxy, protocol)
    train, val = proxy.tensors["train_mask"], proxy.tensors["val_mask"]
    return tuple(t.to(device) if device is not None else t for t in (x[train], y[train], x[val], y[val]))


def proxy_scores_path(parts: tuple[Tensor, Tensor, Tensor, Tensor], num_classes: int, protocol: ImageProtocol,
                      cache: str | Path | None = None, device: torch.device | str | None = None) -> Path:
    """The cache file of the per-architecture numbers on the proxy whose :func:`proxy_parts` are ``parts``.

    Keyed by a hash of those tensors (the images at the protocol's resolution and their labels) and the class
    count, by :meth:`~hcdc.image.protocol.ImageProtocol.proxy_key` (how networks train on them) and the numeric precision, as the
    ground truth's (:func:`~hcdc.image.groundtruth.ground_truth_path`).
    """
    digest = hashlib.sha256(f"classes:{num_classes}:".encode())
    for t in parts:
        t = t.detach().cpu().contiguous()
        digest.update(f"{t.dtype}:{tuple(t.shape)}:".encode())
        digest.update(t.numpy().tobytes())
    return cache_file(cache, "image_proxy_scores", f"{digest.hexdigest()[:16]}-{protocol.proxy_key()}", protocol, device)


def score_on_proxy(arch: Architecture, parts: tuple[Tensor, Tensor, Tensor, Tensor], num_classes: int,
                   protocol: ImageProtocol, *, device: torch.device | str | None = None) -> dict[str, float]:
    """A proxy's numbers for ``arch`` (``parts`` from :func:`proxy_parts`): trained ``protocol.proxy_epochs`` epochs
    on the training part once per seed of ``protocol.proxy_seeds``, scored on the validation part; mean ``acc`` and
    ``loss``."""
    return scores_on_proxy([arch], parts, num_classes, protocol, device=device)[0]


def scores_on_proxy(archs: Sequence[Architecture], parts: tuple[Tensor, Tensor, Tensor, Tensor], num_classes: int,
                    protocol: ImageProtocol, *, device: torch.device | str | None = None) -> list[dict[str, float]]:
    """:func:`score_on_proxy` for each of ``archs``, their networks trained ``protocol.stack`` at a time."""
    device = default_device(device)
    x_tr, y_tr, x_val, y_val = parts
    jobs = [(arch, seed) for arch in archs for seed in protocol.seeds_on_proxy]
    trained = train_networks(jobs, x_tr, y_tr, protocol, num_classes=num_classes, epochs=protocol.epochs_on_proxy,
                             device=device)
    runs = [score_architecture(arch, params, x_val, y_val, protocol, device=device) for (arch, _), params in zip(jobs, trained)]
    per_arch = len(protocol.seeds_on_proxy)
    return [{m: float(np.mean([r[m] for r in runs[i : i + per_arch]])) for m in ("acc", "loss")}
            for i in range(0, len(runs), per_arch)]



def evaluate_image_proxy(
    proxy: Proxy,
    data: ImageData | None,
    archs: Sequence[Architecture],
    protocol: ImageProtocol,
    truth: ImageGroundTruth,
    *,
    cache: str | Path | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> ImageProxyEvaluation:
    """Rank ``archs`` on ``proxy`` and compare with ``truth`` (from :func:`~hcdc.image.groundtruth.image_ground_truth`).

    Each architecture trains ``protocol.proxy_epochs`` epochs on the proxy's training part, once per
    seed of ``protocol.proxy_seeds``, and is scored on the proxy's validation part; the proxy score
    is the mean accuracy with the mean loss as tie-breaker (:func:`proxy_score`). The report holds
    Spearman / Kendall / top-5 overlap / regret of that score against the true validation accuracy
    (:func:`hcdc.metrics.ranking_report`), plus ``spearman_acc`` (accuracy alone, ties averaged)
    and ``spearman_loss`` / ``kendall_loss`` (the loss alone). ``perf`` is the true test accuracy of
    the proxy's best architecture (the first on ties), ``oracle_perf`` that of the truly best one.
    ``data`` (optional) is checked against the proxy's dataset name and class count.

    Each architecture's proxy numbers are cached as soon as its chunk of networks is trained, in one JSON file
    per proxy (:func:`proxy_scores_path`, under ``<cache>/image_proxy_scores/``, default
    :func:`hcdc.paths.cache_dir`), so an interrupted evaluation resumes and a repeated one trains nothing.
    """
    start = time.perf_counter()
    archs = list(archs)
    if proxy.kind != "image":
        raise ConfigError(f"evaluate_image_proxy needs an image proxy, got a {proxy.kind} proxy")
    if [a.to_str() for a in truth.archs] != [a.to_str() for a in archs]:
        raise ConfigError("the ground truth is for other architectures than those to evaluate")
    check_rankable(len(archs), "architectures")
    if data is not None and (data.num_classes != proxy.num_classes or data.name != proxy.meta["dataset"]):
        raise ConfigError(f"the proxy is of '{proxy.meta['dataset']}' with {proxy.num_classes} classes, "
                          f"the data '{data.name}' has {data.num_classes}")
    device = default_device(device)
    parts = proxy_parts(proxy, protocol)
    path = proxy_scores_path(parts, proxy.num_classes, protocol, cache, device)
    header = {"format": CACHE_FORMAT, "dataset": proxy.meta["dataset"], "method": proxy.meta["method"],
              "num_classes": proxy.num_classes, "training": protocol.proxy_training()}
    keys, on_device = [a.to_str() for a in archs], None

    def train_and_score(chunk: list[str]) -> dict[str, dict]:
        nonlocal on_device
        if on_device is None:  # moved to the device only when something is missing
            on_device = tuple(t.to(device) for t in parts)
        results = scores_on_proxy([Architecture.parse(k) for k in chunk], on_device, proxy.num_classes, protocol,
                                  device=device)
        return dict(zip(chunk, results))

    known, computed, seconds = cached_per_architecture(path, header, keys, train_and_score, protocol,
                                                        protocol.seeds_on_proxy, device, f"proxy {proxy.meta['method']}",
                                                        progress)
    acc_t = torch.tensor([known[k]["acc"] for k in keys], dtype=torch.float64)
    loss_t = torch.tensor([known[k]["loss"] for k in keys], dtype=torch.float64)
    score = proxy_score(acc_t, loss_t)
    true = truth.val_acc.numpy()
    report = ranking_report(score.numpy(), true, proxy_higher_is_better=True, k=min(5, len(archs)))
    by_loss = ranking_report(loss_t.numpy(), true, proxy_higher_is_better=False, k=min(5, len(archs)))
    by_acc = ranking_report(acc_t.numpy(), true, proxy_higher_is_better=True, k=min(5, len(archs)))
    report.update(spearman_acc=by_acc["spearman"], spearman_loss=by_loss["spearman"], kendall_loss=by_loss["kendall"])
    pick = int(np.argmax(score.numpy()))
    oracle = int(np.argmax(true))
    return ImageProxyEvaluation(archs, acc_t, loss_t, score, truth, report, float(truth.test_acc[pick]),
                                float(truth.test_acc[oracle]), pick, oracle, seconds, computed,
                                time.perf_counter() - start)
