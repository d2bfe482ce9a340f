"""Solving the inner problem θ*(λ) = argmin_θ L_train(θ, λ) tightly, where IFT hypergradients need it."""

from __future__ import annotations

import torch
from torch import Tensor


def minimize_lbfgs(train_loss, params: dict[str, Tensor], hparams, max_iter: int = 500, tolerance_grad: float = 1e-9,
                   tolerance_change: float = 0.0, history_size: int = 50) -> dict[str, Tensor]:
    """θ minimising ``train_loss(θ, hparams)`` from ``params`` by L-BFGS with a strong-Wolfe line search."""
    p = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    opt = torch.optim.LBFGS(list(p.values()), max_iter=max_iter, tolerance_grad=tolerance_grad,
                            tolerance_change=tolerance_change, history_size=history_size, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = train_loss(p, hparams)
        loss.backward()
        return loss

    opt.step(closure)
    return {k: v.detach() for k, v in p.items()}
