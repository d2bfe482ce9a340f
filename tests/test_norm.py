"""Guard: the normalisation used when differentiating through training has right 3rd-order grads."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hcdc.nn import GroupNorm, group_norm


def _third_order(norm, x, v1, v2, w):
    """∇_x ⟨∇_x ⟨∇_x f, v1⟩, v2⟩ for f(x) = ⟨w, tanh(norm(x))⟩ (tanh makes every order non-trivial)."""
    x = x.clone().requires_grad_(True)
    f = (w * torch.tanh(norm(x))).sum()
    (g1,) = torch.autograd.grad(f, x, create_graph=True)
    (g2,) = torch.autograd.grad((g1 * v1).sum(), x, create_graph=True)
    (g3,) = torch.autograd.grad((g2 * v2).sum(), x)
    return g3


def _second_order(norm, x, v1, v2, w):
    x = x.clone().requires_grad_(True)
    f = (w * torch.tanh(norm(x))).sum()
    (g1,) = torch.autograd.grad(f, x, create_graph=True)
    (g2,) = torch.autograd.grad((g1 * v1).sum(), x)
    return (g2 * v2).sum()


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_group_norm_matches_torch_and_finite_differences_at_third_order(groups):
    g = torch.Generator().manual_seed(0)
    x, v1, v2, w = (torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64) for _ in range(4))
    ours = lambda t: group_norm(t, groups)  # noqa: E731
    theirs = lambda t: F.group_norm(t, groups)  # noqa: E731
    assert torch.allclose(ours(x), theirs(x), atol=1e-12)
    third = _third_order(ours, x, v1, v2, w)
    assert torch.allclose(third, _third_order(theirs, x, v1, v2, w), atol=1e-9)
    # finite differences of the (trusted) second-order directional derivative along a direction d
    d = torch.randn(x.shape, generator=g, dtype=torch.float64)
    eps = 1e-5
    fd = (_second_order(ours, x + eps * d, v1, v2, w) - _second_order(ours, x - eps * d, v1, v2, w)) / (2 * eps)
    assert abs(float((third * d).sum()) - float(fd)) < 1e-6 * max(1.0, abs(float(fd)))


def test_group_norm_module_equals_torch_module():
    torch.manual_seed(0)
    ours, theirs = GroupNorm(2, 4), torch.nn.GroupNorm(2, 4)
    with torch.no_grad():
        for p in (ours.weight, theirs.weight, ours.bias, theirs.bias):
            p.copy_(torch.linspace(-1, 1, 4))
    x = torch.randn(3, 4, 5, 5)
    assert torch.allclose(ours(x), theirs(x), atol=1e-5)
    with pytest.raises(ValueError, match="divisible"):
        group_norm(x, 3)
