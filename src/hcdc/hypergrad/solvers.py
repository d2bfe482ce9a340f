"""Inverse-Hessian-vector solvers for implicit differentiation, behind one small registry.

A solver approximates ``x = H⁻¹ b`` given only Hessian-vector products ``op.matvec(v, step)``
(see :class:`hcdc.hypergrad.operator.TrainHessian`). Each solver also provides the transpose
of its own approximation (``solve_transpose``), which is what reverse-mode autograd through the
solve needs; for a fixed symmetric H every solver here is its own transpose.

- ``neumann``: the truncated Neumann series of Lorraine, Vicol & Duvenaud, "Optimizing Millions
  of Hyperparameters by Implicit Differentiation" (AISTATS 2020):
  ``H⁻¹ b ≈ α Σ_{j=0..J} (I − αH)^j b``; converges when ``0 < α·λ_max(H) < 2`` and H ≻ 0;
  memory does not grow with J.
- ``cg``: conjugate gradients (Hestenes & Stiefel, 1952) to a relative residual tolerance, as in
  Rajeswaran et al., "Meta-Learning with Implicit Gradients" (NeurIPS 2019).
- ``exact``: forms H densely from n Hessian-vector products and solves it; for small problems
  and for measuring the others' error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
from torch import Tensor

from ..errors import ConfigError
from ..registry import Registry


class HessianOperator(Protocol):
    """What a solver needs: products with H (+ damping) on flat vectors."""

    num_batches: int

    def matvec(self, v: Tensor, step: int = 0) -> Tensor:
        """(H_b + δI) v with the Hessian of mini-batch ``b = step mod num_batches``."""

    def mean_matvec(self, v: Tensor) -> Tensor:
        """(H + δI) v with H averaged over all mini-batches (the full-batch Hessian)."""


@dataclass
class SolveInfo:
    """Diagnostics of one solve: which solver, iterations (HVPs) used, relative residual."""

    solver: str
    iterations: int
    residual: float = math.nan
    seconds: float = 0.0


class InverseHessianSolver:
    """Approximates H⁻¹ b from Hessian-vector products; subclasses register under a name."""

    name: ClassVar[str]

    def solve(self, op: HessianOperator, b: Tensor) -> tuple[Tensor, int]:
        """Return (x ≈ H⁻¹ b, number of Hessian-vector products used)."""
        raise NotImplementedError

    def solve_transpose(self, op: HessianOperator, b: Tensor) -> tuple[Tensor, int]:
        """Apply the transpose of this solver's linear map (itself when H is fixed and symmetric)."""
        return self.solve(op, b)

    def config(self) -> dict:
        return {"solver": self.name, **{k: v for k, v in vars(self).items() if not k.startswith("_")}}


SOLVERS = Registry("inverse-Hessian solver")
register_solver = SOLVERS.register


def make_solver(spec: str | InverseHessianSolver, **kwargs) -> InverseHessianSolver:
    """A solver instance from a registered name and keyword options, or an instance as is."""
    if isinstance(spec, InverseHessianSolver):
        return spec
    return SOLVERS.make(spec, **kwargs)


@register_solver("neumann")
class NeumannSolver(InverseHessianSolver):
    """Truncated Neumann series α Σ_{j=0..J} (I − αH)^j b (Lorraine et al., 2020).

    ``terms`` is J, the number of Hessian-vector products (J = 0 gives α b, i.e. H⁻¹ ≈ αI).
    ``alpha`` must satisfy α·λ_max(H) < 2; it is usually the inner learning rate. With several
    mini-batches, term j uses batch j (a stochastic series) and the transpose replays the same
    batches in reverse order, so gradients through the solve are exact for the approximation.
    """

    def __init__(self, terms: int = 16, alpha: float = 0.01):
        if terms < 0 or not alpha > 0:
            raise ConfigError(f"Neumann series needs terms >= 0 and alpha > 0 (got terms={terms}, alpha={alpha})")
        self.terms, self.alpha = int(terms), float(alpha)

    def solve(self, op: HessianOperator, b: Tensor) -> tuple[Tensor, int]:
        p, acc = b, b
        for j in range(self.terms):
            p = torch.add(p, op.matvec(p, j), alpha=-self.alpha)
            acc = acc + p
        return self.alpha * acc, self.terms

    def solve_transpose(self, op: HessianOperator, b: Tensor) -> tuple[Tensor, int]:
        if op.num_batches == 1:
            return self.solve(op, b)
        # Σ_j (A_j⋯A_1)ᵀ b = Σ_j A_1⋯A_j b by Horner's rule from the last term down.
        s = b
        for j in reversed(range(self.terms)):
            s = b + torch.add(s, op.matvec(s, j), alpha=-self.alpha)
        return self.alpha * s, self.terms


@register_solver("cg")
class ConjugateGradientSolver(InverseHessianSolver):
    """Conjugate gradients on the (batch-averaged) Hessian until ‖Hx − b‖ ≤ tol·‖b‖.

    Needs H (plus damping) positive definite along the Krylov space; stops early and reports
    the iterations used if it meets non-positive curvature.
    """

    def __init__(self, tol: float = 1e-6, max_iter: int = 100):
        if not tol > 0 or max_iter < 1:
            raise ConfigError(f"CG needs tol > 0 and max_iter >= 1 (got tol={tol}, max_iter={max_iter})")
        self.tol, self.max_iter = float(tol), int(max_iter)

    def solve(self, op: HessianOperator, b: Tensor) -> tuple[Tensor, int]:
        x = torch.zeros_like(b)
        r = b.clone()
        p = r.clone()
        rr = r @ r
        stop = (self.tol * b.norm()) ** 2
        it = 0
        while it < self.max_iter and rr > stop:
            hp = op.mean_matvec(p)
            curv = p @ hp
            it += 1
            if curv <= 0:
                break
            step = rr / curv
            x = x + step * p
            r = r - step * hp
            rr_new = r @ r
            p = r + (rr_new / rr) * p
            rr = rr_new
        return x, it


@register_solver("exact")
class ExactSolver(InverseHessianSolver):
    """Dense solve: builds H column by column (n Hessian-vector products), then LU-solves it."""

    def solve(self, op: HessianOperator, b: Tensor) -> tuple[Tensor, int]:
        n = b.numel()
        eye = torch.eye(n, dtype=b.dtype, device=b.device)
        h = torch.stack([op.mean_matvec(eye[i]) for i in range(n)], dim=1)
        h = 0.5 * (h + h.T)
        return torch.linalg.solve(h, b), n
