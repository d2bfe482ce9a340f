"""Distribution matching: DM (Zhao & Bilen, "Dataset Condensation with Distribution Matching", WACV 2023).

Synthetic images start from real images of their class (or noise). Each of ``iterations``
iterations draws a freshly initialised ConvNet, left untrained, as an embedding (its flattened
last-block features); for every class one random transform of :mod:`hcdc.image.augment` is
applied to a real batch of the class (``batch_real`` images) and to the class's synthetic images
(siamese augmentation, as DM does), and the loss is the squared Euclidean distance between the
two mean embeddings. The sum over classes takes one SGD step on the synthetic images (``lr_img``,
DM's 1.0 by default, momentum 0.5). The metadata's ``matching_history`` holds each iteration's
loss per class.
"""

from __future__ import annotations

import time
from typing import ClassVar

import torch
from torch import Tensor

from ...checkpoint import Checkpoints, LoopState
from ...data.image import ImageData
from ...models.convnet import ConvNet
from ..augment import DEFAULT_STRATEGY, parse_strategy, sample_augmentation
from .base import (
    BASELINE_CHOICES,
    BASELINE_DEFAULTS,
    SYNTHESIS_STREAM,
    ImageCondenser,
    Synthesis,
    class_indices,
    register_image_condenser,
    seeded_generator,
)
from .nets import initial_images, new_convnet, real_batch


def mean_embedding_distance(net: ConvNet, real: Tensor, syn: Tensor) -> Tensor:
    """DM's per-class loss: ``||mean net.features(real) − mean net.features(syn)||²`` (differentiable in ``syn`` only).

    The real side is not differentiated, so it uses the fused norm (about 5x faster).
    """
    with torch.no_grad():
        target = net.features(real, fused_norm=True).mean(0)
    return (target - net.features(syn).mean(0)).square().sum()


@register_image_condenser("dm")
class DMCondenser(ImageCondenser):
    """DM: synthetic images whose mean embedding under random ConvNets matches the real class's, class by class.

    ``iterations`` 20000 with the default width 128 is DM's CIFAR recipe: many hours on a CPU (at
    ipc 10, width 32, ten classes of 32x32 images, one iteration takes about 3 s on one thread).
    """

    defaults: ClassVar[dict] = {
        **BASELINE_DEFAULTS,
        "iterations": 20000,
        "batch_real": 256,
        "width": 128,
        "depth": 3,
        "lr_img": 1.0,
        "init": "real",
        "strategy": DEFAULT_STRATEGY,
    }
    choices: ClassVar[dict[str, tuple]] = {**BASELINE_CHOICES, "init": ("real", "noise")}
    minimum: ClassVar[dict[str, int]] = {"iterations": 0}

    def check_options(self) -> None:
        parse_strategy(self.options["strategy"])

    def synthesize(self, data: ImageData, ipc: int, seed: int, progress: bool, checkpoints: Checkpoints) -> Synthesis:
        o = self.options
        start = time.perf_counter()
        g = seeded_generator(seed, SYNTHESIS_STREAM)
        x_real = data.normalized("train")
        members = class_indices(data.y_train, data.num_classes)
        x_syn = initial_images(x_real, members, ipc, o["init"], g).requires_grad_()
        opt_img = torch.optim.SGD([x_syn], lr=o["lr_img"], momentum=0.5)
        history = []
        state = LoopState({"x_syn": x_syn}, {"img": opt_img}, {"g": g}, {"history": history})
        loop = checkpoints.loop("dm", o["iterations"], state, "DM", progress)
        for _ in loop:
            net = new_convnet(data, o["width"], o["depth"], g).requires_grad_(False)
            loss = x_syn.new_zeros(())
            for c, m in enumerate(members):
                augmentation = sample_augmentation(g, o["strategy"])
                real, syn = real_batch(x_real, m, o["batch_real"], g), x_syn[c * ipc : (c + 1) * ipc]
                loss = loss + mean_embedding_distance(net, augmentation(real), augmentation(syn))
            opt_img.zero_grad(set_to_none=True)
            (x_syn.grad,) = torch.autograd.grad(loss, [x_syn])
            opt_img.step()
            history.append(loss.item() / data.num_classes)
            loop.bar.set_postfix(matching=f"{history[-1]:.4f}")
        timings = {"synthesis": loop.seconds(start)}
        y_syn = torch.arange(data.num_classes).repeat_interleave(ipc)
        return Synthesis(x_syn.detach(), y_syn, timings, meta={"matching_history": history})
