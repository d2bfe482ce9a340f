"""HCDC's synthetic validation set for images, learned by hypergradient alignment over architectures.

Ding et al., "Calibrated Dataset Condensation for Faster Hyperparameter Search" (ICLR 2024),
Sec. 4–5 and Algorithm 1, for neural architecture search in NAS-Bench-201 (Dong & Yang, ICLR
2020). The image counterpart of :mod:`hcdc.graph.calibrate`.

- **Hyperparameters.** λ = the mixing weights ``alpha`` [6, 5] of the relaxed cell of
  :class:`hcdc.image.space.NB201Network` (DARTS' continuous relaxation, used as given, no
  softmax): a discrete architecture is its one-hot point, and the extended space Λ̃ is the product
  of the six per-edge simplices (``projection="simplex"``, the default) or the box [0, 1]^30
  (``"clip"``). On the simplex only the tangent part of a gradient (each edge's row centred)
  changes the network along Λ̃, so both hypergradients are centred per edge before they are
  compared and before λ moves; with ``"clip"`` the full 30-vector is used. Euclidean projection
  onto the simplex keeps many weights exactly zero, and the network skips zero-weight operations
  when it trains, so trajectories stay cheap.
- **S_train** is fixed (any image condenser, DC by default; :mod:`hcdc.image.condensers.hcdc`).
- **S_val** is ``n_val`` learnable images per class with fixed labels, initialised from real
  validation images of their class (``val_init="real"``) or from N(0, 1) noise in normalised
  units (``"noise"``). The paper learns S_val "from scratch" (Algorithm 1 starts from "randomly
  initialized synthetic examples"); with the few dozen alignment steps a CPU budget allows,
  noise would leave S_val far from any image of its class, so real initialisation is the default,
  as in the graph track and in DC/DM/MTT for S_train.
- **Trajectories** (Algorithm 1, lines 1–6). From each candidate architecture λ_i (one-hot) a
  fresh network θ (seeded) trains ``train_steps`` minibatch SGD steps on S_train (batches of
  ``batch_train``, momentum, weight decay, gradient clipping: DC-Bench's recipe), and, with
  ``real_theta=True``, a copy θ_T from the same initialisation trains the same number of steps on
  real minibatches under the same λ. From step ``warmup`` on, every ``align_every`` steps an
  alignment point is recorded at the current (θ, λ):

  * g_T = ∇_λ L*_T (IFT, Neumann series with α = 1/|μ|, μ the Hessian's eigenvalue of largest
    magnitude by power iteration, once per trajectory and side: early in training H is strongly
    indefinite and μ can be negative): training loss on ``real_batches`` real minibatches of ``batch_real``
    images, validation loss on ``batch_val`` real validation images, at θ_T (or at θ_S when
    ``real_theta=False``, the paper's approximation and the cheaper one; NOTES §1). It is a
    constant target, computed once per point.
  * g_S = ∇_λ L*_S: S_train's full-batch training loss (with the weight-decay term), S_val's
    validation loss, at θ_S, by :class:`hcdc.hypergrad.ImplicitHypergradient` with
    ``create_graph=True``, so g_S is a differentiable function of S_val's pixels (the direct term
    ∂_λ L_val is included: α enters the forward pass).
  * S_val takes one Adam step (``lr_val``) on 1 − cos(g_T, g_S) (Algorithm 1, line 7), then λ
    moves one normalised step along the proxy's hypergradient, λ ← P(λ − η g_S/‖g_S‖)
    (``lr_alpha``; line 6), and training goes on under the new λ. (Algorithm 1 moves λ first and
    aligns at the new point; aligning at the current one reuses g_S for the move. The aligned
    points are the same trajectory, shifted by one.) A point where g_T is zero (nothing to align
    with: e.g. a network whose output does not depend on λ there) or either hypergradient is not
    finite is skipped and counted.
  * Points are recorded from ``warmup`` = 20 steps on: at tiny scale, points taken a few steps
    after initialisation gave an alignment loss so rough in S_val's pixels that Adam steps of
    1e-3 did not lower it, while points after 40–60 steps did (tests/test_image_hcdc.py).

  After all candidates of a repeat, S_val may take ``val_steps`` further Adam steps on the mean
  cosine distance over ``bank_batch`` random points of everything recorded so far (as the graph
  track does; 0 by default to keep CPU time down). Trajectories of the next repeat are driven by
  the updated S_val.
- **Why ImplicitHypergradient and not BestResponse.** With 30 hyperparameters a best response
  dθ*/dλ costs 30 Neumann solves per point, while each use of the implicit form costs two (the
  solve and its transpose in backward). Points are used once online (plus ``val_steps`` ·
  ``bank_batch`` / #points times in refits), far below the break-even of 15 uses, so the
  implicit form is cheaper. A point stores only (θ_S, λ, g_T, α); the proxy's Hessian is
  re-linearised when the point is used, so memory does not grow with the number of points.
- **Augmentation.** ``val_strategy`` (a DSA strategy of :mod:`hcdc.image.augment`, ``"none"`` by
  default) applies one random transform to S_val in every proxy validation loss. g_T is a cached
  target and is not augmented, so this asks for an S_val whose alignment survives augmentation
  rather than DSA's siamese matching.

Higher-order derivatives: g_S needs order 2 in the network and its gradient w.r.t. S_val order 3
through the validation loss; NB201Network's group norm is written from primitive ops, whose
derivatives are right at every order (NOTES §2).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from ..checkpoint import NO_SNAPSHOTS, Checkpoints, LoopState
from ..hypergrad import ImplicitHypergradient, TrainHessian, hypergradient
from .augment import sample_augmentation
from .space import EDGES, NUM_ARCHITECTURES, OPS, Architecture, NB201Network

ValLoss = Callable[[dict[str, Tensor], Tensor], Tensor]


@dataclass(frozen=True)
class CalibrationConfig:
    """Options of the alignment loop: Algorithm 1's p (``candidates``), K (``repeats``), T_θ
    (``train_steps``), T_λ (``align_every``) and the step sizes, plus the hypergradient settings."""

    candidates: int = 6
    repeats: int = 1
    train_steps: int = 40
    warmup: int = 20
    align_every: int = 10
    batch_train: int = 64
    lr_net: float = 0.025
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    neumann_terms: int = 8
    power_iterations: int = 8
    real_batches: int = 1
    batch_real: int = 64
    batch_val: int = 128
    lr_val: float = 0.01
    val_steps: int = 0
    bank_batch: int = 8
    lr_alpha: float = 0.1
    projection: str = "simplex"
    real_theta: bool = True
    val_strategy: str = "none"

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class CalibrationResult:
    """The learned validation images, the alignment history (mean 1 − cos per S_val step) and counts."""

    x_val: Tensor
    history: list[float]
    points: int
    skipped: int
    seconds: float
    trajectories: list[list[str]]


@dataclass
class AlignmentPoint:
    """One λ on a trajectory: the proxy's parameters θ_S there, λ itself, the real hypergradient g_T
    (flat, centred per edge on the simplex) and the proxy side's Neumann step α."""

    theta: dict[str, Tensor]
    alpha: Tensor
    g_real: Tensor
    neumann_alpha: float


# --------------------------------------------------------------------------- geometry of Λ̃


def project_simplex(alpha: Tensor) -> Tensor:
    """Euclidean projection of each row of ``alpha`` onto the probability simplex (Duchi et al., ICML 2008)."""
    u, _ = alpha.sort(dim=-1, descending=True)
    css = u.cumsum(dim=-1) - 1
    k = torch.arange(1, alpha.shape[-1] + 1, dtype=alpha.dtype)
    rho = ((u - css / k) > 0).sum(dim=-1, keepdim=True)
    tau = css.gather(-1, rho - 1) / rho.to(alpha.dtype)
    return (alpha - tau).clamp_min(0)


def project(alpha: Tensor, projection: str) -> Tensor:
    """``alpha`` mapped back into Λ̃: per-edge simplex (``"simplex"``) or the box [0, 1] (``"clip"``)."""
    return project_simplex(alpha) if projection == "simplex" else alpha.clamp(0, 1)


def tangent(g: Tensor, projection: str) -> Tensor:
    """A hypergradient [6, 5] as the flat vector compared and followed: centred per edge on the simplex."""
    g = g.reshape(len(EDGES), len(OPS))
    if projection == "simplex":
        g = g - g.mean(dim=1, keepdim=True)
    return g.reshape(-1)


# --------------------------------------------------------------------------- losses


def logits(net: NB201Network, params: dict[str, Tensor], x: Tensor, alpha: Tensor) -> Tensor:
    """``net``'s logits with parameters ``params`` (functional) under mixing weights ``alpha``."""
    return functional_call(net, params, (x, alpha))


def l2(params: dict[str, Tensor]) -> Tensor:
    return sum(p.square().sum() for p in params.values())


def full_batch_train_loss(net: NB201Network, x: Tensor, y: Tensor, weight_decay: float):
    """L_train(θ, λ) on all of (x, y): cross-entropy plus ½·wd·‖θ‖² (what SGD with weight decay minimises)."""

    def loss(params, alpha):
        return F.cross_entropy(logits(net, params, x, alpha), y) + 0.5 * weight_decay * l2(params)

    return loss


def batch_train_loss(net: NB201Network, weight_decay: float):
    """L_train(θ, λ, batch) on a batch (x, y): the minibatch form for the real side's Hessian."""

    def loss(params, alpha, batch):
        x, y = batch
        return F.cross_entropy(logits(net, params, x, alpha), y) + 0.5 * weight_decay * l2(params)

    return loss


def validation_loss(net: NB201Network, x: Tensor, y: Tensor, transform: Callable[[Tensor], Tensor] | None = None) -> ValLoss:
    """L_val(θ, λ) on (x, y) (cross-entropy, no weight decay); ``transform`` is applied to x first."""

    def loss(params, alpha):
        return F.cross_entropy(logits(net, params, x if transform is None else transform(x), alpha), y)

    return loss


# --------------------------------------------------------------------------- hypergradients


def neumann_step(train_loss, theta: dict[str, Tensor], alpha: Tensor, iterations: int, generator: torch.Generator,
                 batches=None) -> float:
    """The Neumann series' step 1/|μ| at (θ, λ), μ the Hessian's eigenvalue of largest magnitude by
    ``iterations`` of power iteration (floored at 1e-4).

    Away from a minimum H is indefinite and μ may be negative; its magnitude is what keeps
    α·H's spectrum within [−1, 1], so directions of negative curvature grow at most 2^J over J terms.
    """
    with torch.no_grad():
        mu = TrainHessian(train_loss, theta, alpha, batches=batches).largest_eigenvalue(iterations, generator)
    return 1.0 / max(abs(mu), 1e-4)


def proxy_hypergradient(point: AlignmentPoint, train_loss, val_loss: ValLoss, terms: int, projection: str,
                        create_graph: bool = True) -> Tensor:
    """g_S at ``point``: the IFT hypergradient of ``val_loss`` (flat, as :func:`tangent`), differentiable in
    tensors captured by ``val_loss`` when ``create_graph``."""
    engine = ImplicitHypergradient(train_loss, point.theta, point.alpha, "neumann", terms=terms, alpha=point.neumann_alpha)
    return tangent(engine(val_loss, create_graph=create_graph, residual=False).grad, projection)


def cosine_distance(g_real: Tensor, g_syn: Tensor) -> Tensor:
    """1 − cos(g_T, g_S) (0 when parallel, 2 when opposite); 1 when either vector is zero."""
    return 1 - F.cosine_similarity(g_syn, g_real, dim=0, eps=1e-12)


def alignment_loss(points: list[AlignmentPoint], train_loss, val_loss: ValLoss, terms: int, projection: str) -> Tensor:
    """Mean cosine distance 1 − cos(g_T, g_S) over ``points`` (Eq. HCDC), differentiable in S_val."""
    return torch.stack([cosine_distance(p.g_real, proxy_hypergradient(p, train_loss, val_loss, terms, projection))
                        for p in points]).mean()


def fit_validation(opt: torch.optim.Optimizer, points: list[AlignmentPoint], train_loss, make_val_loss: Callable[[], ValLoss],
                   config: CalibrationConfig, steps: int, batch: int, g: torch.Generator) -> list[float]:
    """Algorithm 1, line 7, on recorded points: ``steps`` optimiser steps on S_val, each on ``batch`` random points.

    ``make_val_loss()`` gives S_val's validation loss for one step (a fresh augmentation, if any). The mean over
    the points is backpropagated one point at a time (its gradient is the sum of theirs), so only one point's
    double-backward graph is alive at once (eight at once grew one process past 12 GB at the ``cpu`` protocol's
    scale with ``val_steps=10``, and a second job beside it was killed for memory).
    """
    history = []
    for _ in range(steps):
        pick = torch.randperm(len(points), generator=g)[:batch].tolist()
        val_loss = make_val_loss()
        opt.zero_grad(set_to_none=True)
        loss = 0.0
        for i, j in enumerate(pick):
            term = alignment_loss([points[j]], train_loss, val_loss, config.neumann_terms, config.projection) / len(pick)
            term.backward(retain_graph=i < len(pick) - 1)  # val_loss's own graph (an augmentation) is shared
            loss += float(term.detach())
        opt.step()
        history.append(loss)
    return history


# --------------------------------------------------------------------------- trajectories


@dataclass
class RealData:
    """The original data T: normalised training and validation images and labels."""

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor

    def batch(self, split: str, n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        """``n`` random distinct images of ``split`` (all of them when fewer)."""
        x, y = (self.x_train, self.y_train) if split == "train" else (self.x_val, self.y_val)
        idx = torch.randperm(len(y), generator=g)[:n]
        return x[idx], y[idx]


def _sgd(net: NB201Network, config: CalibrationConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(net.parameters(), lr=config.lr_net, momentum=config.momentum, weight_decay=config.weight_decay)


def _train_step(net: NB201Network, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, alpha: Tensor, clip: float) -> None:
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(net(x, alpha), y).backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
    opt.step()


def trajectory_points(
    net: NB201Network,
    s_train: tuple[Tensor, Tensor],
    real: RealData,
    make_val_loss: Callable[[], ValLoss],
    arch: Architecture,
    config: CalibrationConfig,
    opt_val: torch.optim.Optimizer,
    g: torch.Generator,
) -> tuple[list[AlignmentPoint], list[float], Tensor, int]:
    """Algorithm 1, lines 2–8, from the one-hot point of ``arch``, with ``net`` freshly initialised.

    Returns the recorded points, the cosine distance of each online S_val step, the final λ and
    the number of points skipped: where g_T is zero (nothing to align with, e.g. a network whose
    output does not depend on λ there) or either hypergradient is not finite.
    """
    x_tr, y_tr = s_train
    alpha = arch.to_alpha()
    train_s = full_batch_train_loss(net, x_tr, y_tr, config.weight_decay)
    train_real = batch_train_loss(net, config.weight_decay)
    net_t = copy.deepcopy(net) if config.real_theta else None
    opt_s = _sgd(net, config)
    opt_t = _sgd(net_t, config) if net_t is not None else None
    order = torch.randperm(len(y_tr), generator=g)
    cursor = 0
    steps: tuple[float, float] | None = None
    points, history, skipped = [], [], 0
    for step in range(1, config.train_steps + 1):
        if cursor >= len(order):
            order, cursor = torch.randperm(len(y_tr), generator=g), 0
        idx = order[cursor : cursor + config.batch_train]
        cursor += config.batch_train
        _train_step(net, opt_s, x_tr[idx], y_tr[idx], alpha, config.grad_clip)
        if net_t is not None:
            _train_step(net_t, opt_t, *real.batch("train", config.batch_train, g), alpha, config.grad_clip)
        if step < config.warmup or (step - config.warmup) % config.align_every:
            continue
        theta_s = {k: v.detach().clone() for k, v in net.named_parameters()}
        theta_t = {k: v.detach().clone() for k, v in net_t.named_parameters()} if net_t is not None else theta_s
        batches = [real.batch("train", config.batch_real, g) for _ in range(config.real_batches)]
        val_real = validation_loss(net, *real.batch("val", config.batch_val, g))
        if steps is None:  # Neumann steps α = 1/λ_max, once per trajectory and side
            steps = (neumann_step(train_s, theta_s, alpha, config.power_iterations, g),
                     neumann_step(train_real, theta_t, alpha, config.power_iterations, g, batches))
        g_real = hypergradient(train_real, val_real, theta_t, alpha, "neumann", batches=batches, residual=False,
                               terms=config.neumann_terms, alpha=steps[1]).grad
        point = AlignmentPoint(theta_s, alpha.clone(), tangent(g_real, config.projection), steps[0])
        g_syn = proxy_hypergradient(point, train_s, make_val_loss(), config.neumann_terms, config.projection)
        if not (torch.isfinite(point.g_real).all() and point.g_real.norm() > 0 and torch.isfinite(g_syn).all()):
            skipped += 1  # no direction to align with, or a diverged series
            continue
        points.append(point)
        loss = cosine_distance(point.g_real, g_syn)
        opt_val.zero_grad(set_to_none=True)
        loss.backward()
        opt_val.step()
        history.append(float(loss.detach()))
        direction = g_syn.detach().reshape(alpha.shape)
        alpha = project(alpha - config.lr_alpha * direction / direction.norm().clamp_min(1e-12), config.projection)
    return points, history, alpha, skipped


def sample_candidates(n: int, g: torch.Generator, exclude: set[Architecture]) -> list[Architecture]:
    """``n`` distinct architectures drawn uniformly by ``g`` from the cells not in ``exclude`` that have a
    path from input to output (a degenerate cell's network is constant, so it has no hypergradient to align)."""
    out = []
    for i in torch.randperm(NUM_ARCHITECTURES, generator=g).tolist():
        arch = Architecture.from_index(i)
        if arch not in exclude and not arch.is_degenerate():
            out.append(arch)
            if len(out) == n:
                break
    return out


def calibrate_validation(
    s_train: tuple[Tensor, Tensor],
    real: RealData,
    x_val_init: Tensor,
    y_val: Tensor,
    architectures: list[Architecture],
    make_net: Callable[[torch.Generator], NB201Network],
    config: CalibrationConfig,
    g: torch.Generator,
    progress: bool = False,
    checkpoints: Checkpoints = NO_SNAPSHOTS,
) -> CalibrationResult:
    """Learn HCDC's synthetic validation images (see the module docstring) starting from ``x_val_init``.

    ``make_net(g)`` gives a freshly initialised relaxed network; ``architectures`` are the
    trajectories' starting points (Algorithm 1's candidates λ_1..λ_p). With ``checkpoints`` the
    loop over trajectories resumes where an interrupted run stopped (:mod:`hcdc.checkpoint`).
    """
    start = time.perf_counter()
    x_val = x_val_init.clone().requires_grad_(True)
    opt_val = torch.optim.Adam([x_val], lr=config.lr_val)
    strategy = None if config.val_strategy == "none" else config.val_strategy
    net = make_net(g)

    def make_val_loss() -> ValLoss:
        transform = sample_augmentation(g, strategy) if strategy is not None else None
        return validation_loss(net, x_val, y_val, transform)

    points: list[AlignmentPoint] = []
    history: list[float] = []
    skips: list[int] = []
    trajectories: list[list[str]] = []
    state = LoopState({"x_val": x_val}, {"val": opt_val}, {"g": g},
                      {"history": history, "skips": skips, "trajectories": trajectories},
                      {"points": (points, _encode_point, _decode_point)})
    loop = checkpoints.loop("calibration", config.repeats * len(architectures), state, "HCDC validation set", progress,
                            unit="trajectory")
    for t in loop:
        rep, position = divmod(t, len(architectures))
        arch = architectures[position]
        net = make_net(g)
        new, online, end, skip = trajectory_points(net, s_train, real, make_val_loss, arch, config, opt_val, g)
        skips.append(skip)
        points += new
        history += online
        trajectories.append([arch.to_str(), Architecture.from_alpha(end).to_str()])
        loop.bar.set_postfix(align=f"{sum(online) / len(online):.3f}" if online else "-", repeat=rep)
        if position == len(architectures) - 1 and config.val_steps and points:
            train_s = full_batch_train_loss(net, *s_train, config.weight_decay)
            history += fit_validation(opt_val, points, train_s, make_val_loss, config, config.val_steps, config.bank_batch, g)
    return CalibrationResult(x_val.detach().clone(), history, len(points), sum(skips), loop.seconds(start), trajectories)


def _encode_point(point: AlignmentPoint) -> dict[str, Tensor]:
    return {**{f"theta.{k}": v for k, v in point.theta.items()}, "alpha": point.alpha, "g_real": point.g_real,
            "neumann_alpha": torch.tensor(point.neumann_alpha, dtype=torch.float64)}


def _decode_point(tensors: dict[str, Tensor]) -> AlignmentPoint:
    theta = {k[len("theta."):]: v for k, v in tensors.items() if k.startswith("theta.")}
    return AlignmentPoint(theta, tensors["alpha"], tensors["g_real"], float(tensors["neumann_alpha"]))
