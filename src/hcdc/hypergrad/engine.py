"""Hypergradients by the implicit function theorem, on ``torch.func``.

For an inner problem θ*(λ) = argmin_θ L_train(θ, λ) and an outer loss L_val(θ, λ), the
hypergradient of L*(λ) = L_val(θ*(λ), λ) is (Bengio 2000; Lorraine et al., AISTATS 2020)

    dL*/dλ = ∂_λ L_val − (∂²L_train/∂λ∂θ) H⁻¹ ∂_θ L_val,    H = ∂²L_train/∂θ²,

evaluated at an approximate optimum θ. H⁻¹ is applied by a registered solver (Neumann series,
conjugate gradients, dense); only Hessian-vector products are formed, so memory does not grow
with the number of Neumann terms.

The result is differentiable with respect to anything that enters L_val only (for instance a
learnable synthetic validation set): pass ``create_graph=True``. The solve is a custom autograd
function whose backward applies the transpose of the same approximation, so this costs one more
solve and no stored graph per term. H and the mixed partials are treated as constants: gradients
with respect to data that enters L_train (third order) are not propagated.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor
from torch.func import grad, vjp

from .solvers import InverseHessianSolver, SolveInfo, make_solver

Tree = Tensor | dict[str, Tensor]
TrainLoss = Callable[..., Tensor]  # (params, hparams) or (params, hparams, batch) -> scalar
ValLoss = Callable[[dict[str, Tensor], Tree], Tensor]


def flatten(tree: Tree) -> Tensor:
    """All leaves of a tensor or dict of tensors as one flat vector (dict order)."""
    leaves = [tree] if isinstance(tree, Tensor) else list(tree.values())
    return torch.cat([t.reshape(-1) for t in leaves])


def unflatten(vec: Tensor, like: Tree) -> Tree:
    """Inverse of :func:`flatten`: split ``vec`` into tensors shaped like ``like``."""
    if isinstance(like, Tensor):
        return vec.view_as(like)
    out, i = {}, 0
    for key, t in like.items():
        out[key] = vec[i : i + t.numel()].view_as(t)
        i += t.numel()
    return out


def _detach(tree: Tree) -> Tree:
    return tree.detach() if isinstance(tree, Tensor) else {k: v.detach() for k, v in tree.items()}


class TrainHessian:
    """Matrix-free H = ∂²L_train/∂θ² (+ damping·I) and mixed partials at a fixed (θ, λ).

    ``batches``: None for full batch (``train_loss(params, hparams)``), or a sequence of batches
    (``train_loss(params, hparams, batch)``); product ``step`` uses batch ``step mod len``. The
    full-batch linearisation is built once and reused by every product.
    """

    def __init__(
        self,
        train_loss: TrainLoss,
        params: dict[str, Tensor],
        hparams: Tree,
        batches: Sequence[Any] | None = None,
        damping: float = 0.0,
    ):
        self.train_loss = train_loss
        self.params = _detach(params)
        self.hparams = _detach(hparams)
        self.batches = list(batches) if batches is not None else [None]
        self.num_batches = len(self.batches)
        self.damping = float(damping)
        self._linearised: dict[int, Callable] = {}

    def _loss(self, batch: Any) -> Callable[[dict[str, Tensor], Tree], Tensor]:
        if batch is None:
            return self.train_loss
        return lambda p, h: self.train_loss(p, h, batch)

    def _linearisation(self, b: int) -> Callable:
        """vjp of ∂_θ L_train(·, λ) at θ: products with H on batch ``b`` (cached in full-batch mode)."""
        if b in self._linearised:
            return self._linearised[b]
        grad_theta = grad(self._loss(self.batches[b]), argnums=0)
        _, fn = vjp(lambda p: grad_theta(p, self.hparams), self.params)
        if self.num_batches == 1:
            self._linearised[b] = fn
        return fn

    def matvec(self, v: Tensor, step: int = 0) -> Tensor:
        (hv,) = self._linearisation(step % self.num_batches)(unflatten(v, self.params))
        return flatten(hv) + self.damping * v if self.damping else flatten(hv)

    def mean_matvec(self, v: Tensor) -> Tensor:
        if self.num_batches == 1:
            return self.matvec(v)
        return sum(self.matvec(v, b) for b in range(self.num_batches)) / self.num_batches

    def largest_eigenvalue(self, iterations: int = 30, generator: torch.Generator | None = None) -> float:
        """λ_max(H + δI) by power iteration (Neumann's step is usually α = 1/λ_max).

        Starts from a seeded Gaussian vector when ``generator`` is given, else from the all-ones vector.
        """
        n = flatten(self.params).numel()
        dtype = flatten(self.params).dtype
        v = torch.randn(n, generator=generator, dtype=dtype) if generator is not None else torch.ones(n, dtype=dtype)
        v = v / v.norm()
        est = 0.0
        for _ in range(iterations):
            w = self.mean_matvec(v)
            est = float(v @ w)
            v = w / w.norm().clamp_min(1e-12)
        return est

    def mixed(self, u: Tree) -> Tree:
        """(∂²L_train/∂λ∂θ) u: the derivative in λ of ⟨∂_θ L_train, u⟩ (on the first batch).

        Linearised separately from H so that Hessian-vector products do not also pay for the
        λ-cotangent; it is built once per call.
        """
        grad_theta = grad(self._loss(self.batches[0]), argnums=0)
        _, fn = vjp(lambda h: grad_theta(self.params, h), self.hparams)
        (out,) = fn(u)
        return out


class _InverseHessianProduct(torch.autograd.Function):
    """x = solver(H, b) with backward ∂ℓ/∂b = solverᵀ(H, ∂ℓ/∂x): differentiable, constant memory."""

    @staticmethod
    def forward(ctx, b: Tensor, op: TrainHessian, solver: InverseHessianSolver, box: list) -> Tensor:
        x, iterations = solver.solve(op, b)
        box.append(iterations)
        ctx.op, ctx.solver = op, solver
        return x

    @staticmethod
    def backward(ctx, g: Tensor):
        x, _ = ctx.solver.solve_transpose(ctx.op, g)
        return x, None, None, None


def inverse_hessian_product(
    op: TrainHessian, solver: InverseHessianSolver, b: Tensor, residual: bool = True
) -> tuple[Tensor, SolveInfo]:
    """x ≈ (H + δI)⁻¹ b for a flat vector b, differentiable in b, with solver diagnostics."""
    start = time.perf_counter()
    box: list[int] = []
    x = _InverseHessianProduct.apply(b, op, solver, box)
    info = SolveInfo(solver=solver.name, iterations=box[0])
    if residual:
        with torch.no_grad():
            r = op.mean_matvec(x.detach()) - b.detach()
            info.residual = float(r.norm() / b.detach().norm().clamp_min(1e-30))
    info.seconds = time.perf_counter() - start
    return x, info


@dataclass
class Hypergradient:
    """dL*/dλ = direct + implicit, each shaped like λ; ``info`` holds the solver diagnostics.

    ``direct`` is ∂_λ L_val; ``implicit`` is −(∂²L_train/∂λ∂θ) H⁻¹ ∂_θ L_val.
    """

    grad: Tree
    direct: Tree
    implicit: Tree
    info: SolveInfo


class InnerPoint:
    """The training problem linearised at a fixed (θ, λ): its Hessian operator ``op`` and an inverse-Hessian ``solver``.

    ``train_loss(params, hparams[, batch])`` with optional mini-``batches``; ``damping`` adds δI
    to the Hessian; ``solver`` is a registered name (with ``solver_options``) or an instance.
    """

    def __init__(
        self,
        train_loss: TrainLoss,
        params: dict[str, Tensor],
        hparams: Tree,
        solver: str | InverseHessianSolver = "neumann",
        *,
        batches: Sequence[Any] | Iterable[Any] | None = None,
        damping: float = 0.0,
        **solver_options: Any,
    ):
        self.solver = make_solver(solver, **solver_options)
        self.op = TrainHessian(train_loss, params, hparams, batches=batches, damping=damping)
        self.params, self.hparams = self.op.params, self.op.hparams


class ImplicitHypergradient(InnerPoint):
    """IFT hypergradients for one inner problem at a fixed (θ, λ), reusable across outer losses.

    Build it once per (θ, λ) and call :meth:`__call__` for each validation loss: the Hessian's
    linearisation is shared, which is what learning a synthetic validation set needs.
    """

    def __call__(self, val_loss: ValLoss, *, create_graph: bool = False, residual: bool = True) -> Hypergradient:
        params, hparams = self.params, self.hparams
        with torch.set_grad_enabled(create_graph):
            g_theta, direct = grad(val_loss, argnums=(0, 1))(params, hparams)
            u, info = inverse_hessian_product(self.op, self.solver, flatten(g_theta), residual=residual)
            implicit = unflatten(-flatten(self.op.mixed(unflatten(u, params))), hparams)
            total = unflatten(flatten(direct) + flatten(implicit), hparams)
        if not create_graph:
            total, direct, implicit = _detach(total), _detach(direct), _detach(implicit)
        return Hypergradient(grad=total, direct=direct, implicit=implicit, info=info)


class BestResponse(InnerPoint):
    """The linearised best response dθ*/dλ = −H⁻¹ ∂²L_train/∂θ∂λ at a fixed (θ, λ).

    The IFT's implicit term written the other way round (as in Lorraine et al., AISTATS 2020,
    Eq. 2): with the P×m matrix ``jacobian`` (m = number of hyperparameters, one inverse-Hessian
    solve per hyperparameter), the hypergradient of *any* validation loss is
    ``∂_λ L_val + jacobianᵀ ∂_θ L_val``: no further Hessian products. This is the cheap form when
    λ is low-dimensional and many validation losses (e.g. a synthetic validation set being
    learned) are differentiated at the same (θ, λ). For a symmetric solver it equals
    :class:`ImplicitHypergradient` exactly.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        """The arguments of :class:`InnerPoint`; solves for the m columns of the Jacobian."""
        start = time.perf_counter()
        super().__init__(*args, **kwargs)
        op, solver_ = self.op, self.solver
        # columns of (∂²L/∂λ∂θ)ᵀ: the transpose of the linear map u ↦ (∂²L/∂λ∂θ) u
        _, mixed_t = vjp(lambda u: flatten(op.mixed(unflatten(u, self.params))), torch.zeros_like(flatten(self.params)))
        eye = torch.eye(flatten(self.hparams).numel(), dtype=flatten(self.hparams).dtype)
        columns, iterations = [], 0
        for e in eye:
            (c,) = mixed_t(e)
            x, its = solver_.solve(op, c)
            columns.append(-x)
            iterations += its
        self.jacobian = torch.stack(columns, dim=1)
        self.info = SolveInfo(solver=solver_.name, iterations=iterations, seconds=time.perf_counter() - start)

    @classmethod
    def from_jacobian(cls, params: dict[str, Tensor], hparams: Tree, jacobian: Tensor) -> "BestResponse":
        """The best response at (``params``, ``hparams``) with a Jacobian solved before (e.g. kept in a
        snapshot): no solve is repeated; only :meth:`__call__` is available."""
        response = cls.__new__(cls)
        response.params, response.hparams, response.jacobian = params, hparams, jacobian
        response.info = SolveInfo(solver="restored", iterations=0, seconds=0.0)
        return response

    def __call__(self, val_loss: ValLoss, *, create_graph: bool = False) -> Tensor:
        """dL_val/dλ (flat) at this (θ, λ); differentiable in tensors captured by ``val_loss``
        when ``create_graph``."""
        with torch.set_grad_enabled(create_graph):
            g_theta, direct = grad(val_loss, argnums=(0, 1))(self.params, self.hparams)
            total = flatten(direct) + self.jacobian.T @ flatten(g_theta)
        return total if create_graph else total.detach()


def hypergradient(
    train_loss: TrainLoss,
    val_loss: ValLoss,
    params: dict[str, Tensor],
    hparams: Tree,
    solver: str | InverseHessianSolver = "neumann",
    *,
    batches: Sequence[Any] | None = None,
    damping: float = 0.0,
    create_graph: bool = False,
    residual: bool = True,
    **solver_options: Any,
) -> Hypergradient:
    """dL_val(θ*(λ), λ)/dλ at an (approximately) optimal θ by the implicit function theorem.

    ``train_loss(params, hparams[, batch])`` and ``val_loss(params, hparams)`` return scalars;
    ``params`` is a dict of tensors (e.g. from ``dict(model.named_parameters())`` used with
    ``torch.func.functional_call``); ``hparams`` a tensor or a dict of tensors. ``solver`` is
    ``"neumann"`` (options ``terms``, ``alpha``), ``"cg"`` (``tol``, ``max_iter``), ``"exact"``,
    or a solver instance. With ``create_graph=True`` the result can be back-propagated to any
    tensor captured by ``val_loss``.
    """
    engine = ImplicitHypergradient(
        train_loss, params, hparams, solver, batches=batches, damping=damping, **solver_options
    )
    return engine(val_loss, create_graph=create_graph, residual=residual)
