"""Gradient matching: DC (Zhao, Mopuri & Bilen, "Dataset Condensation with Gradient Matching", ICLR 2021)
and DSA (Zhao & Bilen, "Dataset Condensation with Differentiable Siamese Augmentation", ICML 2021).

Synthetic images start from real images of their class (or noise). Each of ``iterations``
iterations draws a freshly initialised ConvNet and runs ``outer_loop`` matching steps: for every
class, the gradient of the cross-entropy w.r.t. the network's weights on a real batch of the class
(``batch_real`` images) is compared with the gradient on the class's synthetic images by
:func:`matching_distance`, and the sum over classes takes one SGD step on the synthetic images
(``lr_img``, momentum 0.5). Between matching steps the network trains ``inner_loop`` epochs on
the synthetic set (SGD, ``lr_net``, batches of ``batch_train``). The loop counts default to DC's
table by images per class (:data:`DC_LOOPS`). DSA is the same procedure with one random transform
of :mod:`hcdc.image.augment` applied to both the real batch and the synthetic images of each
class before the gradients are taken, and per-image augmentation while the network trains.

The metadata's ``matching_history`` holds each iteration's mean matching distance per class
and step.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
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
from .nets import initial_images, new_convnet, real_batch, train_epochs

# images per class -> (outer_loop, inner_loop), DC's schedule
DC_LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}


def default_loops(ipc: int) -> tuple[int, int]:
    """DC's (outer_loop, inner_loop) for ``ipc``, taken from the nearest tabulated ipc (the smaller on ties)."""
    return DC_LOOPS[min(DC_LOOPS, key=lambda k: (abs(k - ipc), k))]


def matching_distance(real: Sequence[Tensor], syn: Sequence[Tensor]) -> Tensor:
    """DC's gradient distance: over weight tensors, the sum over output units of 1 − cos(real, syn).

    Each gradient is viewed as [out, rest] (conv kernels [out, in·k·k]); 1-D gradients (biases,
    norm scales and shifts) are ignored, as in DC.
    """
    total = syn[0].new_zeros(())
    for gr, gs in zip(real, syn):
        if gr.dim() == 1:
            continue
        gr, gs = gr.flatten(1), gs.flatten(1)
        cos = (gr * gs).sum(1) / (gr.norm(dim=1) * gs.norm(dim=1) + 1e-6)
        total = total + (1 - cos).sum()
    return total


@register_image_condenser("dc")
class DCCondenser(ImageCondenser):
    """DC: synthetic images whose ConvNet weight gradients match those of real batches, class by class.

    ``outer_loop``/``inner_loop`` of None take DC's values for the ipc (:func:`default_loops`).
    ``iterations`` 1000 with the default width 128 is DC's CIFAR recipe: days on a CPU (at ipc 10,
    width 32, ten classes of 32x32 images, one iteration takes about two minutes on one thread).
    """

    defaults: ClassVar[dict] = {
        **BASELINE_DEFAULTS,
        "iterations": 1000,
        "outer_loop": None,
        "inner_loop": None,
        "batch_real": 256,
        "batch_train": 256,
        "width": 128,
        "depth": 3,
        "lr_img": 0.1,
        "lr_net": 0.01,
        "init": "real",
    }
    choices: ClassVar[dict[str, tuple]] = {**BASELINE_CHOICES, "init": ("real", "noise")}
    minimum: ClassVar[dict[str, int]] = {"iterations": 0, "inner_loop": 0}
    strategy: str | None = None  # no augmentation

    def synthesize(self, data: ImageData, ipc: int, seed: int, progress: bool, checkpoints: Checkpoints) -> Synthesis:
        o = self.options
        start = time.perf_counter()
        g = seeded_generator(seed, SYNTHESIS_STREAM)
        outer_default, inner_default = default_loops(ipc)
        outer = o["outer_loop"] if o["outer_loop"] is not None else outer_default
        inner = o["inner_loop"] if o["inner_loop"] is not None else inner_default
        x_real = data.normalized("train")
        members = class_indices(data.y_train, data.num_classes)
        x_syn = initial_images(x_real, members, ipc, o["init"], g).requires_grad_()
        y_syn = torch.arange(data.num_classes).repeat_interleave(ipc)
        opt_img = torch.optim.SGD([x_syn], lr=o["lr_img"], momentum=0.5)
        history = []
        state = LoopState({"x_syn": x_syn}, {"img": opt_img}, {"g": g}, {"history": history})
        loop = checkpoints.loop(self.name, o["iterations"], state, self.name.upper(), progress)
        for _ in loop:
            net = new_convnet(data, o["width"], o["depth"], g)
            params = list(net.parameters())
            opt_net = torch.optim.SGD(params, lr=o["lr_net"])
            losses = []
            for step in range(outer):
                loss = self._matching_loss(net, params, x_real, members, x_syn, ipc, o["batch_real"], g)
                opt_img.zero_grad(set_to_none=True)
                (x_syn.grad,) = torch.autograd.grad(loss, [x_syn])
                opt_img.step()
                losses.append(loss.item() / data.num_classes)
                if step < outer - 1:
                    train_epochs(net, opt_net, x_syn.detach(), y_syn, inner, o["batch_train"], g, self.strategy)
            history.append(sum(losses) / len(losses))
            loop.bar.set_postfix(matching=f"{history[-1]:.4f}")
        timings = {"synthesis": loop.seconds(start)}
        meta = {"matching_history": history, "loops": {"outer": outer, "inner": inner}}
        return Synthesis(x_syn.detach(), y_syn, timings, meta=meta)

    def _matching_loss(
        self,
        net: ConvNet,
        params: list[Tensor],
        x_real: Tensor,
        members: list[Tensor],
        x_syn: Tensor,
        ipc: int,
        batch_real: int,
        g: torch.Generator,
    ) -> Tensor:
        """Σ over classes of :func:`matching_distance` between real-batch and synthetic gradients (differentiable in ``x_syn``).

        Only first derivatives are taken on the real side, so it uses the fused norm (about 5x faster).
        """
        loss = x_syn.new_zeros(())
        for c, m in enumerate(members):
            real, syn = real_batch(x_real, m, batch_real, g), x_syn[c * ipc : (c + 1) * ipc]
            if self.strategy is not None:
                augmentation = sample_augmentation(g, self.strategy)  # siamese: one transform for both batches
                real, syn = augmentation(real), augmentation(syn)
            g_real = torch.autograd.grad(F.cross_entropy(net(real, fused_norm=True), torch.full((len(real),), c)), params)
            g_syn = torch.autograd.grad(F.cross_entropy(net(syn), torch.full((ipc,), c)), params, create_graph=True)
            loss = loss + matching_distance(g_real, g_syn)
        return loss


@register_image_condenser("dsa")
class DSACondenser(DCCondenser):
    """DSA: DC with differentiable siamese augmentation from ``strategy`` (see :mod:`hcdc.image.augment`)."""

    defaults: ClassVar[dict] = {**DCCondenser.defaults, "strategy": DEFAULT_STRATEGY}

    def check_options(self) -> None:
        parse_strategy(self.options["strategy"])

    @property
    def strategy(self) -> str:
        return self.options["strategy"]
