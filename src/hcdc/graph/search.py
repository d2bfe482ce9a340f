"""Optuna search over the polynomial-filter space, on a proxy or on the original graph.

What a user of hcdc does with a proxy: run the search they would have run on the full data (an
Optuna study over the filter coefficients λ, Akiba et al., KDD 2019) on the proxy instead, and
train the configuration it picks on the full data. Each trial's objective is the proxy's score of
:mod:`hcdc.graph.evaluate`: the validation loss on the proxy's validation nodes after training on
its training nodes with the evaluation protocol (on the original graph, the loss on its validation
nodes). Trials are asked ``batch`` at a time and trained as one stacked model
(:func:`hcdc.graph.train.score_configs`), so a batch costs about as much as one trial.

The study is kept in an Optuna journal file when one is given, so an interrupted search resumes
(:mod:`hcdc.study`).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..errors import ConfigError
from ..study import run_batched
from .space import FilterSpace, TrainProtocol
from .train import NodeGraph, score_configs


@dataclass
class SearchResult:
    """The finished trials of a filter search in trial order and the best one (lowest validation loss)."""

    lam: Tensor  # [trials, K+1]
    val_loss: Tensor  # [trials]; inf for a failed (non-finite) trial
    seconds: float  # wall time of this call (for a resumed study, only the part run now)

    @property
    def best(self) -> Tensor:
        return self.lam[int(torch.argmin(self.val_loss))]

    @property
    def best_val_loss(self) -> float:
        return float(self.val_loss.min())

    def as_dict(self) -> dict:
        return {"lam": self.lam.tolist(), "val_loss": [v if math.isfinite(v) else None for v in self.val_loss.tolist()],
                "best": self.best.tolist(), "best_val_loss": self.best_val_loss, "seconds": self.seconds}


def search_filters(graph: NodeGraph, space: FilterSpace, protocol: TrainProtocol, trials: int,
                   sampler: str = "tpe", seed: int = 0, batch: int = 16, evaluate_on: NodeGraph | None = None,
                   journal: str | Path | None = None, context: dict | None = None,
                   progress: bool = True) -> SearchResult:
    """Minimise the validation loss over λ ∈ ``space`` with an Optuna study of ``trials`` trials.

    ``graph`` is what each configuration trains on (a proxy's training block or the original graph)
    and ``evaluate_on`` what it is scored on (default ``graph``), as in :func:`score_configs`.
    ``journal``: an Optuna journal file that keeps the study, so that a rerun resumes it (with more
    ``trials`` it goes on); ``context`` (JSON-able, e.g. which proxy) joins the settings a resumed
    study must share with the one in the journal.
    """
    start = time.perf_counter()
    names = [f"lambda_{k}" for k in range(space.dim)]
    config = {"sampler": sampler, "seed": seed, "batch": batch, "space": asdict(space), "protocol": protocol.as_dict(),
              **(context or {})}

    def score(batch_lam: list[list[float]]) -> list[float]:
        return score_configs(graph, torch.tensor(batch_lam), protocol, evaluate_on=evaluate_on).val_loss.tolist()

    done = run_batched("hcdc-filter-search", config, journal, "minimize", trials, batch, names,
                       lambda t: [t.suggest_float(n, space.low, space.high) for n in names],
                       lambda params: [params[n] for n in names], score, progress)
    lam = torch.tensor([p for p, _ in done])
    loss = torch.tensor([v if math.isfinite(v) else math.inf for _, v in done])
    return SearchResult(lam, loss, time.perf_counter() - start)


@dataclass
class Finalists:
    """The best trials of a search retrained on the original graph; the pick is the one whose validation
    accuracy there is highest (ties: the better proxy score), a cheap last step that hedges against a
    proxy's errors at the top of its ranking."""

    lam: Tensor  # [k, K+1], in the order of the search's validation loss
    val_acc: Tensor  # [k] on the original graph
    test_acc: Tensor  # [k]
    pick: int  # index into lam
    seconds: float  # training and scoring on the original graph

    def as_dict(self) -> dict:
        return {"lam": self.lam.tolist(), "val_acc": self.val_acc.tolist(), "test_acc": self.test_acc.tolist(),
                "pick": self.pick, "best": self.lam[self.pick].tolist(), "val_acc_of_pick": float(self.val_acc[self.pick]),
                "test_acc_of_pick": float(self.test_acc[self.pick]), "seconds": self.seconds}


def retrain_finalists(graph: NodeGraph, found: SearchResult, k: int,
                      protocol: TrainProtocol = TrainProtocol()) -> Finalists:
    """Train the ``k`` best finished trials of ``found`` on ``graph`` (the original graph, with its test
    nodes) under ``protocol`` (default: the ground truth's) and pick the best by validation accuracy."""
    if k < 1:
        raise ConfigError(f"finalists must be >= 1 (got {k})")
    order = torch.argsort(found.val_loss)[:k]
    lam = found.lam[order[torch.isfinite(found.val_loss[order])]]
    scores = score_configs(graph, lam, protocol)
    return Finalists(lam, scores.val_acc, scores.test_acc, int(torch.argmax(scores.val_acc)), scores.seconds)

