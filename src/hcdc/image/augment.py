"""Differentiable siamese augmentation (DSA; Zhao & Bilen, "Dataset Condensation with Differentiable Siamese Augmentation", ICML 2021).

A transform is sampled once, as an :class:`Augmentation` holding the chosen group and its random
draws, and can then be applied to any batch: applying one sample to a real batch and to a
synthetic batch is DSA's *siamese* augmentation. As in DSA's single-transform mode, each sample
picks one group of the strategy (``"color_crop_cutout_flip_scale_rotate"`` by default) and
applies its operations with DSA's default magnitudes:

* ``color``: brightness ``x + (u - 0.5)``, then saturation (scale the deviation from the channel
  mean by ``2u``), then contrast (scale the deviation from the image mean by ``u + 0.5``);
* ``crop``: translation by up to 1/8 of the size in whole pixels, zero fill;
* ``cutout``: a zeroed square of half the size at a random centre (clipped at the border);
* ``flip``: horizontal flip with probability 1/2;
* ``scale``: stretch each axis by a factor in [1/1.2, 1.2] (bilinear resampling);
* ``rotate``: rotation by up to ±15 degrees (bilinear resampling).

Every operation is a differentiable function of the images (gathers, masks and
``affine_grid``/``grid_sample``), so gradients reach synthetic images through it. The draws
are uniforms in [0, 1) mapped to magnitudes when applied, so one sample fits images of any size.
A sample made with ``batch=1`` gives every image the same transform; ``batch=n`` gives each of n
images its own (DSA's augmentation while training a network).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError

DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"

BRIGHTNESS, SATURATION, CONTRAST = 1.0, 2.0, 0.5
CROP_RATIO, CUTOUT_RATIO = 0.125, 0.5
SCALE_RATIO, ROTATE_DEGREES = 1.2, 15.0


def _per_image(u: Tensor) -> Tensor:
    """Draws [m] as [m, 1, 1, 1], broadcasting over a batch of images."""
    return u.view(-1, 1, 1, 1)


def _color(x: Tensor, u: Tensor) -> Tensor:
    x = x + (_per_image(u[:, 0]) - 0.5) * BRIGHTNESS
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_per_image(u[:, 1]) * SATURATION) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_per_image(u[:, 2]) + CONTRAST) + mean


def translate(x: Tensor, dy: Tensor, dx: Tensor) -> Tensor:
    """``out[i, :, r, c] = x[i, :, r - dy[i], c - dx[i]]`` where that pixel exists, else 0 (``dy``, ``dx`` int [m])."""
    n, _, h, w = x.shape
    padded = F.pad(x, (1, 1, 1, 1))
    rows = (torch.arange(h).view(1, h, 1) - dy.view(-1, 1, 1) + 1).clamp(0, h + 1)
    cols = (torch.arange(w).view(1, 1, w) - dx.view(-1, 1, 1) + 1).clamp(0, w + 1)
    batch = torch.arange(n).view(n, 1, 1)
    return padded[batch, :, rows.expand(n, h, w), cols.expand(n, h, w)].permute(0, 3, 1, 2)


def _crop(x: Tensor, u: Tensor) -> Tensor:
    h, w = x.shape[2:]
    shifts = [int(size * CROP_RATIO + 0.5) for size in (h, w)]
    dy, dx = ((u[:, k] * (2 * s + 1)).long() - s for k, s in enumerate(shifts))
    return translate(x, dy, dx)


def _cutout(x: Tensor, u: Tensor) -> Tensor:
    h, w = x.shape[2:]
    keep = []
    for k, size in enumerate((h, w)):
        side = int(size * CUTOUT_RATIO + 0.5)
        start = (u[:, k] * (size + 1 - side % 2)).long() - side // 2
        pos = torch.arange(size).view(1, size)
        keep.append((pos < start.view(-1, 1)) | (pos >= start.view(-1, 1) + side))
    mask = keep[0].unsqueeze(2) | keep[1].unsqueeze(1)  # [m, H, W]: outside the square in rows or in columns
    return x * mask.unsqueeze(1).to(x.dtype)


def _flip(x: Tensor, u: Tensor) -> Tensor:
    return torch.where(_per_image(u[:, 0]) < 0.5, x.flip(3), x)


def _affine(x: Tensor, theta: Tensor) -> Tensor:
    """Bilinear resampling of ``x`` under the 2x3 maps ``theta`` [m, 2, 3] (zero outside)."""
    theta = theta.to(x.dtype).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, align_corners=True)


def _scale(x: Tensor, u: Tensor) -> Tensor:
    factors = u[:, :2] * (SCALE_RATIO - 1 / SCALE_RATIO) + 1 / SCALE_RATIO
    theta = torch.zeros(u.shape[0], 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = factors[:, 0], factors[:, 1]
    return _affine(x, theta)


def _rotate(x: Tensor, u: Tensor) -> Tensor:
    angle = (u[:, 0] - 0.5) * 2 * math.radians(ROTATE_DEGREES)
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, sin, zero], 1), torch.stack([-sin, cos, zero], 1)], 1)
    return _affine(x, theta)


# group name -> (operation, number of uniform draws per image)
GROUPS = {
    "color": (_color, 3),
    "crop": (_crop, 2),
    "cutout": (_cutout, 2),
    "flip": (_flip, 1),
    "scale": (_scale, 2),
    "rotate": (_rotate, 1),
}


def parse_strategy(strategy: str) -> tuple[str, ...]:
    """The groups of an underscore-separated strategy such as ``"color_crop_cutout_flip_scale_rotate"`` (ConfigError if unknown)."""
    groups = tuple(strategy.split("_"))
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise ConfigError(f"unknown augmentation group(s) {unknown} in {strategy!r}; known: {', '.join(GROUPS)}")
    return groups


@dataclass(frozen=True)
class Augmentation:
    """One sampled transform: a group of :data:`GROUPS` and its uniform draws ``u`` [m, k] (m = 1: shared by all images)."""

    group: str
    u: Tensor

    def __call__(self, x: Tensor) -> Tensor:
        """The transformed batch ``x`` [N, C, H, W] (N must equal m unless m = 1)."""
        if self.u.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"augmentation sampled for {self.u.shape[0]} images applied to {x.shape[0]}")
        return GROUPS[self.group][0](x, self.u)


def sample_augmentation(generator: torch.Generator, strategy: str = DEFAULT_STRATEGY, batch: int = 1) -> Augmentation:
    """A random transform from ``strategy``: one group chosen uniformly, draws for ``batch`` images (1: siamese)."""
    groups = parse_strategy(strategy)
    group = groups[int(torch.randint(len(groups), (1,), generator=generator))]
    return Augmentation(group, torch.rand(batch, GROUPS[group][1], generator=generator))
