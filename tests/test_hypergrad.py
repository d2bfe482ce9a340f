"""Hypergradients against closed forms and finite differences (float64 throughout)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.func import functional_call

from hcdc.errors import ConfigError
from hcdc.hypergrad import BestResponse, flatten, hypergradient, make_solver, minimize_lbfgs


@pytest.fixture(autouse=True)
def _float64():
    """Every test here runs in float64 (finite differences need it); the default is restored after."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


# ---------------------------------------------------------------- ridge regression, closed form
def _ridge_problem(seed=0, n=200, n_val=100, d=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w_true = torch.randn(d, generator=g)
    y = x @ w_true + 0.3 * torch.randn(n, generator=g)
    xv = torch.randn(n_val, d, generator=g)
    yv = xv @ w_true + 0.3 * torch.randn(n_val, generator=g)
    lam = torch.linspace(-1.0, 0.5, d)  # per-coordinate log weight decay (regulariser only)

    def train_loss(p, h):
        return 0.5 * ((x @ p["w"] - y) ** 2).mean() + 0.5 * (h.exp() * p["w"] ** 2).sum()

    def val_loss_for(xv):
        return lambda p, h: 0.5 * ((xv @ p["w"] - yv) ** 2).mean()

    def theta_star(h):
        a = x.T @ x / n + torch.diag(h.exp())
        return torch.linalg.solve(a, x.T @ y / n)

    def exact(h):
        h = h.clone().requires_grad_(True)
        loss = val_loss_for(xv)({"w": theta_star(h)}, h)
        return torch.autograd.grad(loss, h)[0]

    a = x.T @ x / n + torch.diag(lam.exp())
    return dict(train=train_loss, val_for=val_loss_for, xv=xv, lam=lam, theta=theta_star, exact=exact,
                lmax=float(torch.linalg.eigvalsh(a).max()))


def _rel(a, b):
    return float((flatten(a) - flatten(b)).norm() / flatten(b).norm())


def test_ridge_cg_and_exact_match_closed_form():
    pr = _ridge_problem()
    params = {"w": pr["theta"](pr["lam"])}
    want = pr["exact"](pr["lam"])
    for solver, opts in [("cg", dict(tol=1e-10, max_iter=200)), ("exact", {})]:
        hg = hypergradient(pr["train"], pr["val_for"](pr["xv"]), params, pr["lam"], solver, **opts)
        assert _rel(hg.grad, want) < 1e-4, solver
        assert hg.info.residual < 1e-6
    # λ is a regulariser only: the direct term is exactly zero
    assert torch.count_nonzero(hg.direct) == 0


def test_ridge_neumann_converges_as_terms_grow():
    pr = _ridge_problem()
    params = {"w": pr["theta"](pr["lam"])}
    want = pr["exact"](pr["lam"])
    alpha = 1.0 / pr["lmax"]
    errors = []
    for terms in (0, 1, 4, 16, 64):
        hg = hypergradient(pr["train"], pr["val_for"](pr["xv"]), params, pr["lam"], "neumann", terms=terms, alpha=alpha)
        errors.append(_rel(hg.grad, want))
        assert hg.info.iterations == terms
    assert all(b < a or b < 1e-12 for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-4, errors


def test_neumann_with_too_large_step_diverges_and_is_reported():
    pr = _ridge_problem()
    params = {"w": pr["theta"](pr["lam"])}
    hg = hypergradient(pr["train"], pr["val_for"](pr["xv"]), params, pr["lam"], "neumann", terms=64, alpha=3.0 / pr["lmax"])
    assert hg.info.residual > 1.0


def test_unknown_solver_and_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="unknown inverse-Hessian solver"):
        make_solver("lu")
    with pytest.raises(ConfigError):
        make_solver("neumann", terms=-1)
    with pytest.raises(ConfigError):
        make_solver("cg", tol=0)


# ---------------------------------------------------------------- small MLP, λ in the forward pass
def _mlp_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    torch.manual_seed(seed)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.5)
    x = torch.randn(40, 3, generator=g)
    y = torch.sin(x.sum(1, keepdim=True))
    xv = torch.randn(30, 3, generator=g)
    yv = torch.sin(xv.sum(1, keepdim=True))

    def predict(p, h, inp):
        # λ mixes two input transformations and scales the output: it enters the forward pass.
        mixed = h[0] * inp + h[1] * inp.pow(2)
        return h[2] * functional_call(net, p, (mixed,))

    def train_loss(p, h):
        return ((predict(p, h, x) - y) ** 2).mean() + 5e-2 * sum((w**2).sum() for w in p.values())

    def val_loss_for(xv):
        return lambda p, h: ((predict(p, h, xv) - yv) ** 2).mean()

    params0 = {k: v.detach().clone() for k, v in net.named_parameters()}
    return train_loss, val_loss_for, xv, params0


def _solve_inner(train_loss, params, h, iters=60):
    """θ*(λ) by L-BFGS then Newton polishing (exact Hessian), to ~machine precision."""
    p = minimize_lbfgs(train_loss, params, h, tolerance_grad=1e-12, tolerance_change=1e-14)
    flat = flatten({k: v.detach() for k, v in p.items()})
    shapes = {k: v.detach() for k, v in p.items()}
    from hcdc.hypergrad import unflatten

    f = lambda v: train_loss(unflatten(v, shapes), h)  # noqa: E731
    for _ in range(iters):
        gr = torch.func.grad(f)(flat)
        if gr.norm() < 1e-13:
            break
        flat = flat - torch.linalg.solve(torch.func.hessian(f)(flat), gr)
    return unflatten(flat, shapes)


def test_mlp_hypergradient_matches_finite_differences():
    train_loss, val_for, xv, params0 = _mlp_problem()
    val_loss = val_for(xv)
    lam = torch.tensor([1.0, 0.3, 0.8])
    theta = _solve_inner(train_loss, params0, lam)
    eps = 1e-5
    fd = torch.zeros(3)
    for i in range(3):
        e = torch.zeros(3)
        e[i] = eps
        up = val_loss(_solve_inner(train_loss, theta, lam + e), lam + e)
        down = val_loss(_solve_inner(train_loss, theta, lam - e), lam - e)
        fd[i] = (up - down) / (2 * eps)
    hg_exact = hypergradient(train_loss, val_loss, theta, lam, "exact")
    hg_cg = hypergradient(train_loss, val_loss, theta, lam, "cg", tol=1e-12, max_iter=500)
    assert _rel(hg_exact.grad, fd) < 1e-4
    assert _rel(hg_cg.grad, fd) < 1e-4
    # λ enters the forward pass: the direct term is non-zero and needed
    assert hg_exact.direct.abs().max() > 1e-3
    assert _rel(hg_exact.implicit, fd) > 1e-2


# ---------------------------------------------------------------- gradients w.r.t. validation data
def _objective(hg_fn, xv):
    target = torch.tensor([0.3, -1.0, 0.5])
    hg = hg_fn(xv).grad
    return 1 - torch.nn.functional.cosine_similarity(flatten(hg), target[: flatten(hg).numel()], dim=0)


def _check_data_gradient(hg_fn, xv, eps=1e-6, n_checks=6):
    xv = xv.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(_objective(lambda z: hg_fn(z, True), xv), xv)
    gen = torch.Generator().manual_seed(1)
    idx = torch.randperm(xv.numel(), generator=gen)[:n_checks]
    for i in idx:
        e = torch.zeros(xv.numel())
        e[i] = eps
        e = e.view_as(xv)
        with torch.no_grad():
            fd = (_objective(lambda z: hg_fn(z, False), xv + e) - _objective(lambda z: hg_fn(z, False), xv - e)) / (2 * eps)
        assert abs(float(g.reshape(-1)[i]) - float(fd)) < 1e-6 + 1e-4 * abs(float(fd)), (int(i), float(g.reshape(-1)[i]), float(fd))
    assert g.abs().max() > 0


@pytest.mark.parametrize("solver,opts", [("neumann", dict(terms=20, alpha=0.3)), ("cg", dict(tol=1e-12, max_iter=200))])
def test_data_gradient_with_lambda_in_forward(solver, opts):
    train_loss, val_for, xv, params0 = _mlp_problem()
    lam = torch.tensor([1.0, 0.3, 0.8])
    theta = _solve_inner(train_loss, params0, lam)

    def hg_fn(z, cg):
        return hypergradient(train_loss, val_for(z), theta, lam, solver, create_graph=cg, **opts)

    _check_data_gradient(hg_fn, xv)


@pytest.mark.parametrize("solver,opts", [("neumann", dict(terms=15, alpha=0.3)), ("exact", {})])
def test_best_response_gives_the_same_hypergradient_and_data_gradient(solver, opts):
    """dθ*/dλ precomputed once reproduces the IFT hypergradient of any validation loss, and its data gradient."""
    train_loss, val_for, xv, params0 = _mlp_problem()
    lam = torch.tensor([1.0, 0.3, 0.8])
    theta = _solve_inner(train_loss, params0, lam)
    response = BestResponse(train_loss, theta, lam, solver, **opts)
    assert response.jacobian.shape == (flatten(theta).numel(), 3)
    for shift in (0.0, 0.5):
        ref = hypergradient(train_loss, val_for(xv + shift), theta, lam, solver, **opts).grad
        assert _rel(response(val_for(xv + shift)), ref) < 1e-10
    _check_data_gradient(lambda z, cg: SimpleNamespace(grad=response(val_for(z), create_graph=cg)), xv)


def test_data_gradient_with_regulariser_only_lambda():
    """The trap of NOTES §2: detaching H⁻¹∂θL_val makes this gradient silently zero."""
    pr = _ridge_problem()
    params = {"w": pr["theta"](pr["lam"])}
    alpha = 1.0 / pr["lmax"]

    lam3 = pr["lam"][:3]
    train3 = lambda p, h: pr["train"](p, torch.cat([h, pr["lam"][3:]]))  # noqa: E731

    def hg_fn(z, cg):  # λ restricted to 3 coordinates to match the cosine target
        return hypergradient(train3, pr["val_for"](z), params, lam3, "neumann", terms=10, alpha=alpha, create_graph=cg)

    _check_data_gradient(hg_fn, pr["xv"])


def test_minibatch_neumann_gradient_uses_exact_transpose():
    """With several batches the series is a product of different matrices; its transpose must replay them."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(60, 4, generator=g)
    y = torch.randn(60, generator=g)
    batches = [slice(0, 20), slice(20, 40), slice(40, 60)]
    lam = torch.tensor([0.1, -0.2, 0.3])

    def train_loss(p, h, b):
        return 0.5 * ((x[b] @ p["w"] - y[b]) ** 2).mean() + 0.5 * (h.exp() * p["w"][:3] ** 2).sum()

    params = {"w": torch.randn(4, generator=g)}

    def hg_fn(z, cg):
        val = lambda p, h: ((torch.tanh(z @ p["w"]) * h.sum()) ** 2).mean()  # noqa: E731
        return hypergradient(train_loss, val, params, lam, "neumann", terms=7, alpha=0.5, batches=batches, create_graph=cg)

    _check_data_gradient(hg_fn, torch.randn(10, 4, generator=g))


def test_power_iteration_finds_the_largest_hessian_eigenvalue():
    from hcdc.hypergrad import TrainHessian

    pr = _ridge_problem()
    op = TrainHessian(pr["train"], {"w": pr["theta"](pr["lam"])}, pr["lam"])
    assert abs(op.largest_eigenvalue(200, torch.Generator().manual_seed(0)) - pr["lmax"]) < 1e-6 * pr["lmax"]
