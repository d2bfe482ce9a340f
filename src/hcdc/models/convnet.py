"""The ConvNet of dataset condensation (Zhao et al., "Dataset Condensation with Gradient Matching", ICLR 2021).

``depth`` blocks of conv3x3 (``width`` channels, padding 1) → instance norm with affine
parameters → ReLU → 2x2 average pooling, then a linear classifier on the flattened features.
DC's default is width 128, depth 3 (on 32x32 images a 2048-dimensional embedding). The instance
norm is :func:`hcdc.nn.norm.group_norm` with one group per channel, written from primitive ops, so
derivatives of every order are right (NOTES §2); the network is an ordinary ``nn.Module``, usable
with ``torch.func.functional_call``. Parameters are drawn from an optional ``torch.Generator``
with PyTorch's default scheme for conv and linear layers (uniform in ±1/sqrt(fan_in)).

``fused_norm=True`` computes the same norm with PyTorch's fused group-norm kernel instead: about
5x faster on CPU, and its first and second derivatives are right, only the third ones are not
(NOTES §2). The condensers use it where at most first derivatives are taken (real-batch
gradients, network training, embeddings).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.norm import GroupNorm


class ConvNet(nn.Module):
    """DC's ConvNet for ``channels``-channel ``image_size`` images and ``num_classes`` classes."""

    def __init__(
        self,
        channels: int,
        num_classes: int,
        image_size: tuple[int, int],
        width: int = 128,
        depth: int = 3,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        h, w = image_size
        if h >> depth < 1 or w >> depth < 1:
            raise ValueError(f"{depth} 2x2 poolings do not fit {h}x{w} images")
        self.convs = nn.ModuleList(nn.Conv2d(channels if i == 0 else width, width, 3, padding=1) for i in range(depth))
        self.norms = nn.ModuleList(GroupNorm(width, width) for _ in range(depth))
        self.embedding_dim = width * (h >> depth) * (w >> depth)
        self.classifier = nn.Linear(self.embedding_dim, num_classes)
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Fresh random weights and biases (uniform in ±1/sqrt(fan_in)); norm scale 1, shift 0."""
        for layer in (*self.convs, self.classifier):
            bound = 1 / math.sqrt(layer.weight[0].numel())
            for p in (layer.weight, layer.bias):
                p.copy_(torch.rand(p.shape, generator=generator) * (2 * bound) - bound)
        for norm in self.norms:
            norm.weight.fill_(1.0)
            norm.bias.zero_()

    def features(self, x: Tensor, fused_norm: bool = False) -> Tensor:
        """The flattened output of the last block [N, embedding_dim]: the embedding used by coresets and DM."""
        for conv, norm in zip(self.convs, self.norms):
            h = conv(x)
            h = F.group_norm(h, norm.groups, norm.weight, norm.bias, norm.eps) if fused_norm else norm(h)
            x = F.avg_pool2d(torch.relu(h), 2)
        return x.flatten(1)

    def forward(self, x: Tensor, fused_norm: bool = False) -> Tensor:
        """Class logits [N, num_classes] of images ``x`` [N, C, H, W]."""
        return self.classifier(self.features(x, fused_norm))
