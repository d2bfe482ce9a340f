"""Implicit-differentiation hypergradients (IFT + Neumann / CG / dense inverse Hessian)."""

from .inner import minimize_lbfgs
from .engine import BestResponse, Hypergradient, ImplicitHypergradient, TrainHessian, flatten, hypergradient, unflatten
from .solvers import (
    SOLVERS,
    ConjugateGradientSolver,
    ExactSolver,
    InverseHessianSolver,
    NeumannSolver,
    SolveInfo,
    make_solver,
    register_solver,
)

__all__ = [
    "BestResponse",
    "Hypergradient",
    "ImplicitHypergradient",
    "TrainHessian",
    "flatten",
    "unflatten",
    "hypergradient",
    "minimize_lbfgs",
    "SOLVERS",
    "ConjugateGradientSolver",
    "ExactSolver",
    "InverseHessianSolver",
    "NeumannSolver",
    "SolveInfo",
    "make_solver",
    "register_solver",
]
