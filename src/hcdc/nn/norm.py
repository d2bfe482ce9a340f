"""Group normalisation written from primitive ops (Wu & He, "Group Normalization", ECCV 2018).

Third-order derivatives through PyTorch's fused ``batch_norm`` (train mode), ``instance_norm``
and ``layer_norm`` kernels are wrong on torch 2.13 (NOTES §2); anything that differentiates a
hypergradient or a gradient-matching loss with respect to training data needs order 3. This
version uses only mean/var/elementwise ops, whose derivatives are right at every order. With
``groups == channels`` it is instance norm; with ``groups == 1`` it is layer norm over (C,H,W).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def group_norm(x: Tensor, groups: int, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Normalise ``x`` [N, C, *] over each group of C/groups channels and all spatial positions."""
    n, c = x.shape[:2]
    if c % groups:
        raise ValueError(f"channels ({c}) must be divisible by groups ({groups})")
    g = x.reshape(n, groups, -1)
    mean = g.mean(dim=-1, keepdim=True)
    var = (g - mean).pow(2).mean(dim=-1, keepdim=True)
    out = ((g - mean) / torch.sqrt(var + eps)).reshape(x.shape)
    shape = (1, c) + (1,) * (x.dim() - 2)
    if weight is not None:
        out = out * weight.reshape(shape)
    if bias is not None:
        out = out + bias.reshape(shape)
    return out


class GroupNorm(nn.Module):
    """Drop-in for ``nn.GroupNorm`` built on :func:`group_norm` (correct higher-order grads)."""

    def __init__(self, groups: int, channels: int, eps: float = 1e-5, affine: bool = True):
        super().__init__()
        self.groups, self.channels, self.eps = groups, channels, eps
        self.weight = nn.Parameter(torch.ones(channels)) if affine else None
        self.bias = nn.Parameter(torch.zeros(channels)) if affine else None

    def forward(self, x: Tensor) -> Tensor:
        return group_norm(x, self.groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.groups}, {self.channels}, eps={self.eps}, affine={self.weight is not None}"
