"""Tiny image datasets and fixtures shared by the image-track tests."""

from __future__ import annotations

import torch

from hcdc.data.image import ImageData
from hcdc.image.space import Architecture

NONE = Architecture((0,) * 6)  # degenerate: no path from input to output, the network predicts a constant
CONV = Architecture.parse("|nor_conv_3x3~0|+|skip_connect~0|nor_conv_3x3~1|+|skip_connect~0|none~1|nor_conv_1x1~2|")
CONV2 = Architecture.parse("|nor_conv_1x1~0|+|avg_pool_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|skip_connect~1|none~2|")


def toy_images(classes: int = 3, train: int = 30, val: int = 10, size: int = 8, seed: int = 0) -> ImageData:
    """Colour blobs: each class a random mean colour plus pixel noise; ``train``/``val`` images per class."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.rand(classes, 1, 1, 3, generator=g) * 200 + 20

    def split(n):
        y = torch.arange(classes).repeat_interleave(n)
        x = (colours[y] + 30 * torch.randn(len(y), size, size, 3, generator=g)).clamp(0, 255).to(torch.uint8)
        return x, y

    (xt, yt), (xv, yv), (xs, ys) = split(train), split(val), split(2)
    return ImageData("toy", tuple(f"c{i}" for i in range(classes)), xt, xv, xs, yt, yv, ys).validate()

