"""Optuna search over NAS-Bench-201 cells, on an image proxy or on the original data.

The architecture search a proxy is for (HCDC's image experiments, Ding et al., ICLR 2024, Sec. 7):
an Optuna study over the operation on each of the cell's six edges (a categorical per edge, 5^6 =
15,625 cells; Dong & Yang, ICLR 2020). On a proxy, a trial's objective is the proxy's score of
:func:`hcdc.image.evaluate.evaluate_image_proxy`: the accuracy on the proxy's validation part after
training on its training part (:func:`~hcdc.image.evaluate.score_on_proxy`), the loss breaking ties.
On the original data it is the ground truth itself (:func:`~hcdc.image.groundtruth.image_ground_truth`,
validation accuracy after training on the training split, cached per architecture). The best trials
are then trained on the original data and the one with the best validation accuracy there is the
pick (:func:`retrain_finalists`). The study is resumable (:mod:`hcdc.study`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from ..artifacts import Proxy
from ..data.image import ImageData
from ..errors import ConfigError
from ..study import run_batched
from .evaluate import TIE_BREAK, proxy_parts, score_on_proxy
from .groundtruth import ImageGroundTruth, image_ground_truth
from .protocol import ImageProtocol
from .space import EDGES, OPS, Architecture

EDGE_NAMES = tuple(f"edge_{target}_{source}" for target, source in EDGES)  # the study's parameters, one per edge


def trial_value(acc: float, loss: float) -> float:
    """A trial's objective (higher is better): accuracy, then lower loss (``acc − 1e-6 · loss``; nan when
    either is not finite). The same order as :func:`~hcdc.image.evaluate.proxy_score` within a study."""
    return acc - TIE_BREAK * loss if math.isfinite(acc) and math.isfinite(loss) else math.nan


@dataclass
class ArchitectureSearch:
    """The finished trials of an architecture search in trial order and the best one (highest objective)."""

    archs: list[Architecture]
    value: Tensor  # [trials] objective of :func:`trial_value`; -inf for a failed trial
    seconds: float  # wall time of this call (for a resumed study, only the part run now)

    @property
    def best(self) -> Architecture:
        return self.archs[int(torch.argmax(self.value))]

    def ranked(self, k: int) -> list[Architecture]:
        """The ``k`` best distinct architectures of successful trials, best first."""
        out: list[Architecture] = []
        for i in torch.argsort(self.value, descending=True, stable=True).tolist():
            if math.isfinite(float(self.value[i])) and self.archs[i] not in out:
                out.append(self.archs[i])
        return out[:k]

    def as_dict(self) -> dict:
        return {"archs": [a.to_str() for a in self.archs],
                "value": [v if math.isfinite(v) else None for v in self.value.tolist()],
                "best": self.best.to_str(), "best_value": float(self.value.max()), "seconds": self.seconds}


def proxy_objective(proxy: Proxy, protocol: ImageProtocol,
                    device: torch.device | str | None = None) -> Callable[[Architecture], float]:
    """A trial's objective on ``proxy``: :func:`trial_value` of :func:`score_on_proxy`."""
    parts = proxy_parts(proxy, protocol, device)

    def objective(arch: Architecture) -> float:
        result = score_on_proxy(arch, parts, proxy.num_classes, protocol, device=device)
        return trial_value(result["acc"], result["loss"])
    return objective


def truth_objective(data: ImageData, protocol: ImageProtocol,
                    device: torch.device | str | None = None) -> Callable[[Architecture], float]:
    """A trial's objective on the original data: :func:`trial_value` of the ground truth's validation accuracy
    and loss (``data`` already :func:`~hcdc.image.protocol.prepare_data`'d; cached per architecture)."""
    def objective(arch: Architecture) -> float:
        truth = image_ground_truth(data, [arch], protocol, device=device, progress=False)
        return trial_value(float(truth.val_acc[0]), float(truth.val_loss[0]))
    return objective


def search_architectures(objective: Callable[[Architecture], float], trials: int, sampler: str = "tpe",
                         seed: int = 0, batch: int = 1, journal: str | Path | None = None,
                         context: dict | None = None, progress: bool = True) -> ArchitectureSearch:
    """Maximise ``objective`` over NAS-Bench-201 cells with an Optuna study of ``trials`` trials.

    ``objective`` is :func:`proxy_objective` or :func:`truth_objective` (or any map from an
    architecture to a number, higher better, nan for a failed trial). ``batch`` trials are asked
    before any is told (1: the sampler sees every result). ``journal`` keeps the study so that a
    rerun resumes it; ``context`` (JSON-able, e.g. which proxy and protocol) joins the settings a
    resumed study must share with the one in the journal.
    """
    start = time.perf_counter()
    config = {"sampler": sampler, "seed": seed, "batch": batch, "space": "nas-bench-201", **(context or {})}
    done = run_batched("hcdc-architecture-search", config, journal, "maximize", trials, batch, EDGE_NAMES,
                       lambda t: Architecture(tuple(OPS.index(t.suggest_categorical(n, OPS)) for n in EDGE_NAMES)),
                       lambda params: Architecture(tuple(OPS.index(params[n]) for n in EDGE_NAMES)),
                       lambda archs: [objective(a) for a in archs], progress, desc="architecture search")
    value = torch.tensor([v if math.isfinite(v) else -math.inf for _, v in done], dtype=torch.float64)
    return ArchitectureSearch([a for a, _ in done], value, time.perf_counter() - start)


@dataclass
class ArchitectureFinalists:
    """The best architectures of a search trained on the original data (the ground truth's protocol); the
    pick is the one with the best validation accuracy there (ties: the better search objective)."""

    truth: ImageGroundTruth  # of the finalists, best search objective first

    @property
    def pick(self) -> int:
        return int(torch.argmax(self.truth.val_acc))

    def as_dict(self) -> dict:
        t = self.truth
        return {"archs": [a.to_str() for a in t.archs], "val_acc": t.val_acc.tolist(), "test_acc": t.test_acc.tolist(),
                "pick": self.pick, "best": t.archs[self.pick].to_str(), "val_acc_of_pick": float(t.val_acc[self.pick]),
                "test_acc_of_pick": float(t.test_acc[self.pick]), "seconds": t.seconds}


def retrain_finalists(data: ImageData, found: ArchitectureSearch, k: int, protocol: ImageProtocol, *,
                      device: torch.device | str | None = None, progress: bool = True) -> ArchitectureFinalists:
    """Train the ``k`` best distinct architectures of ``found`` on ``data`` (the original data, prepared by
    the protocol) as the ground truth does (cached per architecture) and pick the best by validation accuracy."""
    if k < 1:
        raise ConfigError(f"finalists must be >= 1 (got {k})")
    return ArchitectureFinalists(image_ground_truth(data, found.ranked(k), protocol, device=device, progress=progress))


__all__ = ["EDGE_NAMES", "ArchitectureFinalists", "ArchitectureSearch", "proxy_objective", "retrain_finalists",
           "search_architectures", "trial_value", "truth_objective"]
