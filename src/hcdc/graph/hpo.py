"""Continuous hyperparameter optimisation of the filter coefficients by hypergradient descent.

Lorraine, Vicol & Duvenaud, "Optimizing Millions of Hyperparameters by Implicit Differentiation"
(AISTATS 2020), Algorithm 1: train θ on L_train(θ, λ) and, every ``every`` epochs after a
``warmup``, take an Adam step on λ along the IFT hypergradient of L_val (Neumann series, α =
1/λ_max), clipped to the search space. Run from several starts on one graph (the original or a
proxy); the search's pick is the end point with the lowest final validation loss on that graph.
This is how the paper's Table 2 finds the best filter (its "Perf").
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from ..hypergrad import hypergradient
from ..models import polyfilter
from .problem import FilterProblem, trainable
from .space import FilterSpace, TrainProtocol


@dataclass(frozen=True)
class HPOConfig:
    """Options of hypergradient HPO: starts, schedule, λ's Adam step, Neumann terms."""

    starts: int = 4
    warmup: int = 50
    every: int = 10
    lr: float = 0.05
    neumann_terms: int = 10
    power_iterations: int = 8
    seed: int = 123

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class HPOResult:
    """End points λ [starts, K+1], their final validation losses, the pick, and the trajectories."""

    lam: Tensor
    val_loss: Tensor
    pick: int
    trajectories: list[list[list[float]]]
    seconds: float

    @property
    def best(self) -> Tensor:
        return self.lam[self.pick]


def hypergradient_hpo(problem: FilterProblem, num_features: int, num_classes: int, space: FilterSpace,
                      protocol: TrainProtocol, config: HPOConfig = HPOConfig()) -> HPOResult:
    """Hypergradient descent on λ from ``config.starts`` seeded starts over ``protocol.epochs`` epochs."""
    start = time.perf_counter()
    starts = space.sample(config.starts, seed=config.seed)
    g = torch.Generator().manual_seed(config.seed)
    train_loss = problem.train_loss(protocol.weight_decay)
    ends, losses, trajectories = [], [], []
    for lam0 in starts:
        lam = lam0.clone().requires_grad_(True)
        opt_lam = torch.optim.Adam([lam], lr=config.lr)
        params, opt = trainable(polyfilter.init_params(num_features, protocol.hidden, num_classes, g), protocol)
        alpha, path = None, [lam0.tolist()]
        for epoch in range(1, protocol.epochs + 1):
            problem.train_epoch(params, opt, lam.detach(), protocol, g)
            if epoch < config.warmup or (epoch - config.warmup) % config.every:
                continue
            theta = {k: v.detach() for k, v in params.items()}
            if alpha is None:
                alpha = problem.neumann_alpha(theta, lam.detach(), protocol.weight_decay, config.power_iterations)
            hg = hypergradient(train_loss, problem.val_loss, theta, lam.detach(), "neumann", residual=False,
                               terms=config.neumann_terms, alpha=alpha).grad
            opt_lam.zero_grad(set_to_none=True)
            lam.grad = hg
            opt_lam.step()
            with torch.no_grad():
                lam.copy_(space.clamp(lam))
            path.append(lam.detach().tolist())
        with torch.no_grad():
            losses.append(problem.val_loss({k: v.detach() for k, v in params.items()}, lam.detach()))
        ends.append(lam.detach().clone())
        trajectories.append(path)
    val_loss = torch.stack(losses)
    return HPOResult(torch.stack(ends), val_loss, int(torch.argmin(val_loss)), trajectories, time.perf_counter() - start)
