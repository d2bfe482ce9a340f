"""HCDC's synthetic validation set for graphs, learned by hypergradient alignment.

Ding et al., "Calibrated Dataset Condensation for Faster Hyperparameter Search" (ICLR 2024),
Algorithm 1, for the continuous space of polynomial filters λ ∈ [low, high]^{K+1}:

- S_train (features, adjacency, labels) is fixed, produced by any condenser (GCond by default).
- S_val is ``n_val`` synthetic nodes with learnable features and fixed labels (in the class
  proportions of the real validation nodes), initialised from distinct real validation nodes of
  their class. They form their own block of the proxy graph with no edges to S_train; the
  adjacency among them is (``val_structure``) the real graph's subgraph induced by the nodes they
  start from (``"induced"``, the default), or the condenser's adjacency model applied to their
  features (``"pge"``; GCond's learned adjacency links mostly nodes of different classes on Cora,
  which inverts the ranking of smoothing filters, so it is not the default). So L_train on the proxy, its Hessian and mixed partials do
  not depend on S_val, and the proxy's hypergradient is a differentiable function of S_val.
- From each of ``candidates`` sampled configurations λ_i (a seed stream disjoint from the
  evaluation configurations) run a trajectory: train θ_S on S_train and θ_T on the real graph from
  the same initialisation with the evaluation protocol; every ``align_every`` epochs compute the
  IFT hypergradient (Neumann series) on the real graph, g_T (real training and validation nodes),
  and on the proxy, g_S; take one Adam step on S_val's features against 1 − cos(g_T, g_S); then
  move λ one normalised hypergradient step on the proxy (λ ← λ − η g_S/‖g_S‖, clipped to the
  space): the HPO trajectory that spans the extended search space. Repeat ``repeats`` times.

θ_T is trained on the real graph rather than approximated by θ_S (NOTES §1: the faithful option).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from ..data.graph import GraphData, row_normalize
from ..hypergrad import TrainHessian, hypergradient
from ..models import polyfilter
from .space import FilterSpace, TrainProtocol


@dataclass(frozen=True)
class CalibrationConfig:
    """Options of the alignment loop (Algorithm 1's p, K, T_θ, T_λ and step sizes)."""

    candidates: int = 8
    repeats: int = 2
    epochs: int = 100
    align_every: int = 10
    warmup: int = 30
    neumann_terms: int = 10
    lr_features: float = 1e-4
    lr_lambda: float = 0.1
    power_iterations: int = 8
    val_structure: str = "induced"

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class CalibrationResult:
    """The learned validation block and the alignment history (1 − cos per step)."""

    x_val: Tensor
    adj_val: Tensor
    y_val: Tensor
    history: list[float]
    seconds: float


def _train_loss(x: Tensor, op, y: Tensor, mask: Tensor, weight_decay: float):
    """L_train(θ, λ): cross-entropy on ``mask`` plus the L2 term that Adam's weight decay optimises."""

    def train_loss(p, lam):
        reg = 0.5 * weight_decay * sum((w**2).sum() for w in p.values())
        return polyfilter.node_loss(p, lam, x, op, y, mask) + reg

    return train_loss


def _adam_step(opt: torch.optim.Optimizer, loss: Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def calibrate_validation(
    data: GraphData,
    x_train: Tensor,
    adj_train: Tensor,
    y_train: Tensor,
    adjacency_fn: Callable[[Tensor], Tensor] | None,
    n_val_per_class: Tensor,
    space: FilterSpace,
    protocol: TrainProtocol,
    config: CalibrationConfig,
    seed: int,
    progress: bool = False,
) -> CalibrationResult:
    """Learn the synthetic validation nodes of an HCDC graph proxy (see the module docstring)."""
    start = time.perf_counter()
    g = torch.Generator().manual_seed(int(seed))
    real_x = polyfilter.SparseFeatures.from_dense(row_normalize(data.x))
    real_op = polyfilter.EdgeListOperator.from_edge_index(data.edge_index, data.num_nodes)
    syn_op = polyfilter.DenseOperator.from_adjacency(adj_train)

    # S_val: features initialised from real validation nodes of each class
    y_val = torch.cat([torch.full((int(n),), c, dtype=torch.long) for c, n in enumerate(n_val_per_class)])
    init = []
    for c, n in enumerate(n_val_per_class):
        pool = torch.nonzero(data.val_mask & (data.y == c)).view(-1)
        if len(pool) == 0:
            pool = torch.nonzero(data.train_mask & (data.y == c)).view(-1)
        pick = torch.randperm(len(pool), generator=g)[: int(n)]
        if len(pick) < int(n):
            pick = torch.cat([pick, torch.randint(len(pool), (int(n) - len(pick),), generator=g)])
        init.append(pool[pick])
    init_nodes = torch.cat(init)
    x_val = row_normalize(data.x)[init_nodes].clone().requires_grad_(True)
    induced = data.induced_adjacency(init_nodes)
    opt_val = torch.optim.Adam([x_val], lr=config.lr_features)

    def val_adjacency(x: Tensor) -> Tensor:
        if config.val_structure == "pge" and adjacency_fn is not None:
            return adjacency_fn(x)
        return induced

    real_train_loss = _train_loss(real_x, real_op, data.y, data.train_mask, protocol.weight_decay)
    syn_train_loss = _train_loss(x_train, syn_op, y_train, torch.ones_like(y_train, dtype=torch.bool), protocol.weight_decay)

    def real_val_loss(p, lam):
        return polyfilter.node_loss(p, lam, real_x, real_op, data.y, data.val_mask)

    def syn_val_loss(p, lam):
        op = polyfilter.DenseOperator.from_adjacency(val_adjacency(x_val))
        return F.cross_entropy(polyfilter.logits(p, lam, x_val, op), y_val)

    candidates = space.sample(config.candidates, seed=10_000 + seed)
    history: list[float] = []
    total = config.repeats * config.candidates
    bar = tqdm(total=total, desc="HCDC validation set", disable=not progress, unit="trajectory")
    for rep in range(config.repeats):
        for i in range(config.candidates):
            lam = candidates[i].clone()
            init_params = polyfilter.init_params(data.num_features, protocol.hidden, data.num_classes, g)
            theta = {side: {k: v.clone().requires_grad_(True) for k, v in init_params.items()} for side in ("S", "T")}
            opts = {side: torch.optim.Adam(theta[side].values(), lr=protocol.lr, weight_decay=protocol.weight_decay)
                    for side in ("S", "T")}
            alphas: dict[str, float] = {}
            for epoch in range(config.epochs):
                syn_logits = polyfilter.logits(theta["S"], lam, x_train, syn_op, protocol.dropout, g)
                _adam_step(opts["S"], F.cross_entropy(syn_logits, y_train))
                real_logits = polyfilter.logits(theta["T"], lam, real_x, real_op, protocol.dropout, g)
                _adam_step(opts["T"], F.cross_entropy(real_logits[data.train_mask], data.y[data.train_mask]))
                if epoch < config.warmup or (epoch - config.warmup) % config.align_every:
                    continue
                th_s = {k: v.detach() for k, v in theta["S"].items()}
                th_t = {k: v.detach() for k, v in theta["T"].items()}
                if not alphas:
                    # α = 1/λ_max(H) so the Neumann series converges (α·λ_max < 2)
                    alphas = {side: 1.0 / max(abs(TrainHessian(loss_fn, th, lam).largest_eigenvalue(config.power_iterations)), 1e-6)
                              for side, loss_fn, th in (("S", syn_train_loss, th_s), ("T", real_train_loss, th_t))}
                g_t = hypergradient(real_train_loss, real_val_loss, th_t, lam, "neumann", residual=False,
                                    terms=config.neumann_terms, alpha=alphas["T"]).grad
                g_s = hypergradient(syn_train_loss, syn_val_loss, th_s, lam, "neumann", residual=False,
                                    terms=config.neumann_terms, alpha=alphas["S"], create_graph=True).grad
                loss = 1 - F.cosine_similarity(g_s, g_t, dim=0)
                opt_val.zero_grad(set_to_none=True)
                loss.backward()
                opt_val.step()
                history.append(float(loss.detach()))
                step = g_s.detach()
                lam = space.clamp(lam - config.lr_lambda * step / step.norm().clamp_min(1e-12))
            bar.update(1)
            bar.set_postfix(align=f"{sum(history[-10:]) / max(1, len(history[-10:])):.3f}", repeat=rep)
    bar.close()
    x_final = x_val.detach()
    with torch.no_grad():
        adj_val = val_adjacency(x_final)
    return CalibrationResult(x_final, adj_val, y_val, history, time.perf_counter() - start)
