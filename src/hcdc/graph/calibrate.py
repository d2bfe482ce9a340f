"""HCDC's synthetic validation set for graphs, learned by hypergradient alignment.

Ding et al., "Calibrated Dataset Condensation for Faster Hyperparameter Search" (ICLR 2024),
Algorithm 1, for the continuous space of polynomial filters λ ∈ [low, high]^{K+1}:

- S_train (features, adjacency, labels) is fixed, produced by any condenser (GCond by default).
- S_val is ``n_val`` synthetic nodes with learnable features and fixed labels (in the class
  proportions of the real validation nodes), initialised from distinct real validation nodes of
  their class. They form their own block of the proxy graph with no edges to S_train; two of them
  are joined when the real nodes they start from are at most ``val_hops`` hops apart (1: the
  induced subgraph, the default; 2: also nodes sharing a neighbour). On Cora at r = 0.5 with GCond's
  S_train and 40 tuning configurations (a seed disjoint from the table's), the induced block ranks
  at ρ 0.60 before learning and 0.66–0.71 after (Adam fit); the 2-hop block at 0.70 before and 0.65 after, so
  learning is only a gain on the induced block. GCond's learned adjacency applied to S_val links
  mostly nodes of different classes on Cora and inverts the ranking of smoothing filters. So
  L_train on the proxy, its Hessian and mixed partials do not depend on S_val, and the proxy's
  hypergradient is a differentiable function of S_val.
- Trajectories (Algorithm 1, lines 1–6): from each of ``candidates`` sampled configurations λ_i
  (a seed stream disjoint from the evaluation configurations) train θ_S on S_train and θ_T on the
  real graph from the same initialisation with the evaluation protocol; from epoch ``warmup`` on,
  every ``align_every`` epochs record an alignment point: the IFT hypergradient on the real graph,
  g_T (real training and validation nodes), and the proxy's linearised best response dθ_S*/dλ
  (:class:`hcdc.hypergrad.BestResponse`, K+1 solves), both with a Neumann series of
  ``neumann_terms`` = J terms (J = 1 by default: in the Cora ablation of ``bench/graph_table.py``
  J = 1 ranks best of J = 0, 1, 5 and 20, by less than the seed-to-seed spread); then move λ one
  normalised hypergradient step on the proxy (λ ← λ − η g_S/‖g_S‖, clipped to the space).
- Alignment (line 7): because S_train is fixed, g_S(S_val) = ∂_λ L_val + (dθ*/dλ)ᵀ ∂_θ L_val at a
  recorded point needs no Hessian product, so S_val takes ``val_steps`` steps of ``val_optimizer``
  (:data:`VALIDATION_OPTIMIZERS`, step size ``lr_features``) on the mean cosine distance
  1 − cos(g_T, g_S) over all points recorded so far (``bank_batch`` of them per step) instead of one
  noisy step per point. Trajectories of the next repeat are driven by the updated S_val. The
  default, ``normalized-gd`` with ``lr_features`` = 0.1, moves S_val a distance 0.1 along the
  gradient per step, so it changes most the features the alignment loss depends on most. ``adam``
  (the default before, with 1e-4) moves every one of S_val's n_val × F features about
  ``lr_features`` per step, including the many the loss barely depends on: at CiteSeer r = 0.5 each
  validation node's features (which sum to 1) moved an L1 distance of 3.2 on average. The choice and the
  step size were made on tuning configurations disjoint from the table's
  (``bench/graph_val_fit.py``, CiteSeer r = 0.5); ``bench/graph_table.py`` compares the two.

θ_T is trained on the real graph rather than approximated by θ_S (NOTES §1: the faithful option).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..checkpoint import NO_SNAPSHOTS, Checkpoints, LoopState
from ..data.graph import GraphData
from ..hypergrad import BestResponse, hypergradient
from ..models import polyfilter
from .condensers import on_columns, support_features
from .problem import FilterProblem, trainable
from .space import FilterSpace, TrainProtocol


class NormalizedGD(torch.optim.Optimizer):
    """Normalised gradient descent: each step moves the parameters (of all groups' gradients, normalised
    together) a distance ``lr`` along the negative gradient; it keeps no state."""

    def __init__(self, params, lr: float):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return None
        norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"] / max(norm, 1e-12))
        return None


VALIDATION_OPTIMIZERS = {
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr, foreach=True),
    "normalized-gd": NormalizedGD,
}
"""Optimisers of S_val's features by name: ``factory(params, lr)``."""


@dataclass(frozen=True)
class CalibrationConfig:
    """Options of the alignment loop (Algorithm 1's p, K, T_θ, T_λ and step sizes)."""

    candidates: int = 8
    repeats: int = 1
    epochs: int = 200
    align_every: int = 20
    warmup: int = 100
    neumann_terms: int = 1
    lr_features: float = 0.1
    val_steps: int = 100
    bank_batch: int = 32
    lr_lambda: float = 0.1
    power_iterations: int = 8
    val_hops: int = 1
    val_optimizer: str = "normalized-gd"

    def __post_init__(self):
        if self.val_optimizer not in VALIDATION_OPTIMIZERS:
            raise ConfigError(f"unknown val_optimizer {self.val_optimizer!r}; choose from {sorted(VALIDATION_OPTIMIZERS)}")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class CalibrationResult:
    """The learned validation block, the alignment history (mean 1 − cos per S_val step) and the recorded points."""

    x_val: Tensor
    adj_val: Tensor
    y_val: Tensor
    history: list[float]
    points: list[AlignmentPoint]
    seconds: float


@dataclass
class AlignmentPoint:
    """One λ on a trajectory: the proxy's best response there and the real graph's hypergradient g_T."""

    response: BestResponse
    g_real: Tensor


def initial_validation_nodes(data: GraphData, n_val_per_class: Tensor, g: torch.Generator) -> Tensor:
    """Distinct real validation nodes of each class (training nodes where a class has none) to start S_val from."""
    init = []
    for c, n in enumerate(n_val_per_class):
        pool = torch.nonzero(data.val_mask & (data.y == c)).view(-1)
        if len(pool) == 0:
            pool = torch.nonzero(data.train_mask & (data.y == c)).view(-1)
        pick = torch.randperm(len(pool), generator=g)[: int(n)]
        if len(pick) < int(n):
            pick = torch.cat([pick, torch.randint(len(pool), (int(n) - len(pick),), generator=g)])
        init.append(pool[pick])
    return torch.cat(init)


def initial_validation(data: GraphData, n_val_per_class: Tensor, g: torch.Generator, columns: Tensor | None = None,
                       hops: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    """S_val before alignment: (features on ``columns``, adjacency, labels) of the real validation nodes that
    :func:`initial_validation_nodes` draws with ``g``; the block :func:`calibrate_validation` starts from
    (with a generator seeded with its seed), and what :func:`hcdc.graph.unaligned_proxy` puts back."""
    nodes = initial_validation_nodes(data, n_val_per_class, g)
    y = torch.cat([torch.full((int(n),), c, dtype=torch.long) for c, n in enumerate(n_val_per_class)])
    return support_features(data, columns)[nodes].clone(), data.induced_adjacency(nodes, hops=hops), y


def validation_loss(x: Tensor, adj: Tensor, y: Tensor, columns: Tensor | None, num_features: int):
    """S_val's loss ``(θ, λ) -> cross-entropy`` of the validation block (features ``x`` on ``columns``,
    adjacency ``adj``, labels ``y``), differentiable in ``x``."""
    operator = polyfilter.DenseOperator.from_adjacency(adj)

    def loss(p, lam):
        return F.cross_entropy(polyfilter.logits(p, lam, on_columns(x, columns, num_features), operator), y)
    return loss


def trajectory_points(real: FilterProblem, syn: FilterProblem, syn_val_loss, lam0: Tensor, init: dict[str, Tensor],
                      space: FilterSpace, protocol: TrainProtocol, config: CalibrationConfig,
                      g: torch.Generator) -> list[AlignmentPoint]:
    """Algorithm 1, lines 2–6, from λ_0 = ``lam0``: train θ_S and θ_T from ``init`` side by side and record
    an alignment point every ``align_every`` epochs after ``warmup``, stepping λ along the proxy's hypergradient."""
    lam = lam0.clone()
    (theta_s, opt_s), (theta_t, opt_t) = trainable(init, protocol), trainable(init, protocol)
    train_s, train_t = syn.train_loss(protocol.weight_decay), real.train_loss(protocol.weight_decay)
    alphas: tuple[float, float] | None = None
    points = []
    for epoch in range(1, config.epochs + 1):
        syn.train_epoch(theta_s, opt_s, lam, protocol, g)
        real.train_epoch(theta_t, opt_t, lam, protocol, g)
        if epoch < config.warmup or (epoch - config.warmup) % config.align_every:
            continue
        th_s = {k: v.detach().clone() for k, v in theta_s.items()}  # a copy: Adam goes on updating theta_s in place
        th_t = {k: v.detach() for k, v in theta_t.items()}
        if alphas is None:
            alphas = (syn.neumann_alpha(th_s, lam, protocol.weight_decay, config.power_iterations),
                      real.neumann_alpha(th_t, lam, protocol.weight_decay, config.power_iterations))
        g_t = hypergradient(train_t, real.val_loss, th_t, lam, "neumann", residual=False,
                            terms=config.neumann_terms, alpha=alphas[1]).grad
        response = BestResponse(train_s, th_s, lam, "neumann", terms=config.neumann_terms, alpha=alphas[0])
        points.append(AlignmentPoint(response, g_t))
        g_s = response(syn_val_loss)
        lam = space.clamp(lam - config.lr_lambda * g_s / g_s.norm().clamp_min(1e-12))
    return points


def alignment_loss(points: list[AlignmentPoint], syn_val_loss) -> Tensor:
    """Mean cosine distance 1 − cos(g_T, g_S) over ``points``, differentiable in S_val."""
    return torch.stack([1 - F.cosine_similarity(p.response(syn_val_loss, create_graph=True), p.g_real, dim=0)
                        for p in points]).mean()


def fit_validation(opt: torch.optim.Optimizer, points: list[AlignmentPoint], syn_val_loss, steps: int, batch: int,
                   g: torch.Generator) -> list[float]:
    """Algorithm 1, line 7, on recorded points: ``steps`` optimiser steps on S_val, ``batch`` random points each."""
    history = []
    for _ in range(steps):
        pick = torch.randperm(len(points), generator=g)[:batch].tolist()
        loss = alignment_loss([points[j] for j in pick], syn_val_loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
    return history


def calibrate_validation(
    data: GraphData,
    x_train: Tensor,
    adj_train: Tensor,
    y_train: Tensor,
    n_val_per_class: Tensor,
    space: FilterSpace,
    protocol: TrainProtocol,
    config: CalibrationConfig,
    seed: int,
    progress: bool = False,
    columns: Tensor | None = None,
    checkpoints: Checkpoints = NO_SNAPSHOTS,
) -> CalibrationResult:
    """Learn the synthetic validation nodes of an HCDC graph proxy (see the module docstring);
    with ``columns``, their features live on those input columns and are zero elsewhere. With
    ``checkpoints`` the loop over trajectories resumes where an interrupted run stopped."""
    start = time.perf_counter()
    g = torch.Generator().manual_seed(int(seed))
    real = FilterProblem.from_graph_data(data)
    everything = torch.ones_like(y_train, dtype=torch.bool)
    syn = FilterProblem.from_dense(x_train, adj_train, y_train, everything, everything)

    x_start, adj_val, y_val = initial_validation(data, n_val_per_class, g, columns, config.val_hops)
    x_learned = x_start.requires_grad_(True)
    opt_val = VALIDATION_OPTIMIZERS[config.val_optimizer]([x_learned], config.lr_features)
    syn_val_loss = validation_loss(x_learned, adj_val, y_val, columns, data.num_features)

    candidates = space.sample(config.candidates, seed=10_000 + seed)
    points: list[AlignmentPoint] = []
    history: list[float] = []
    state = LoopState({"x_val": x_learned}, {"val": opt_val}, {"g": g}, {"history": history},
                      {"points": (points, _encode_point, _decode_point)})
    loop = checkpoints.loop("calibration", config.repeats * config.candidates, state, "HCDC validation set", progress,
                            unit="trajectory")
    for t in loop:
        rep, position = divmod(t, config.candidates)
        init = polyfilter.init_params(data.num_features, protocol.hidden, data.num_classes, g)
        points += trajectory_points(real, syn, syn_val_loss, candidates[position], init, space, protocol, config, g)
        if position == config.candidates - 1:
            history += fit_validation(opt_val, points, syn_val_loss, config.val_steps, config.bank_batch, g)
            loop.bar.set_postfix(align=f"{history[0]:.3f}->{history[-1]:.3f}" if history else "-", repeat=rep)
    return CalibrationResult(on_columns(x_learned.detach(), columns, data.num_features), adj_val, y_val, history,
                             points, loop.seconds(start))


def _encode_point(point: AlignmentPoint) -> dict[str, Tensor]:
    r = point.response
    return {**{f"theta.{k}": v for k, v in r.params.items()}, "lam": r.hparams, "jacobian": r.jacobian,
            "g_real": point.g_real}


def _decode_point(tensors: dict[str, Tensor]) -> AlignmentPoint:
    theta = {k[len("theta."):]: v for k, v in tensors.items() if k.startswith("theta.")}
    return AlignmentPoint(BestResponse.from_jacobian(theta, tensors["lam"], tensors["jacobian"]), tensors["g_real"])
