"""Coreset baselines: real training images chosen class by class (HCDC, Ding et al., ICLR 2024, Table 1).

* ``random``: a uniform sample of each class.
* ``kcenter``: greedy k-center (farthest-point) selection (Farahani & Hekmatfar 2009; Sener &
  Savarese, ICLR 2018) on the embeddings of a ConvNet trained on the training split.
* ``herding``: herding (Welling, ICML 2009, as used by Rebuffi et al.'s iCaRL, CVPR 2017) on the
  same embeddings: each pick brings the mean of the picked embeddings closest to the class mean.

The proxy's extra tensor ``train_source`` holds the positions of the picked images in the
training split.
"""

from __future__ import annotations

import time
from typing import ClassVar

import torch
from torch import Tensor

from ...checkpoint import Checkpoints
from ...data.image import ImageData
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
from .nets import embed, new_convnet, train_epochs


def _picked(data: ImageData, x: Tensor, source: Tensor, timings: dict[str, float]) -> Synthesis:
    """The synthesis made of the training images at positions ``source``."""
    return Synthesis(x[source], data.y_train[source], timings, tensors={"train_source": source})


@register_image_condenser("random")
class RandomCoreset(ImageCondenser):
    """Random: ``ipc`` training images per class drawn uniformly without replacement."""

    defaults: ClassVar[dict] = BASELINE_DEFAULTS
    choices: ClassVar[dict[str, tuple]] = BASELINE_CHOICES

    def synthesize(self, data: ImageData, ipc: int, seed: int, progress: bool, checkpoints: Checkpoints) -> Synthesis:
        start = time.perf_counter()
        g = seeded_generator(seed, SYNTHESIS_STREAM)
        members = class_indices(data.y_train, data.num_classes)
        source = torch.cat([m[torch.randperm(m.numel(), generator=g)[:ipc]] for m in members])
        return _picked(data, data.normalized("train"), source, {"sample": time.perf_counter() - start})


def kcenter_greedy(features: Tensor, k: int, first: int) -> Tensor:
    """Greedy k-center: start at ``first``, then repeatedly pick the point farthest from all picked ones.

    Euclidean distances in float64; ties go to the lowest position. Returns k positions in pick order.
    """
    f = features.double()
    picked = [first]
    nearest = (f - f[first]).norm(dim=1)  # distance of every point to its closest picked point
    for _ in range(k - 1):
        i = int(nearest.argmax())
        picked.append(i)
        nearest = torch.minimum(nearest, (f - f[i]).norm(dim=1))
    return torch.tensor(picked)


def herding(features: Tensor, k: int) -> Tensor:
    """Herding: repeatedly pick the unpicked point bringing the mean of the picked points closest to the mean of all.

    Euclidean distances in float64; ties go to the lowest position. Returns k positions in pick order.
    """
    f = features.double()
    target = f.mean(0)
    total = torch.zeros_like(target)
    available = torch.ones(len(f), dtype=torch.bool)
    picked = []
    for t in range(k):
        gap = (target - (total + f) / (t + 1)).norm(dim=1).masked_fill(~available, float("inf"))
        i = int(gap.argmin())
        picked.append(i)
        available[i] = False
        total = total + f[i]
    return torch.tensor(picked)


class EmbeddingCoreset(ImageCondenser):
    """A class-wise selection on the embeddings (penultimate features) of a ConvNet trained on the training split.

    The ConvNet (``width``, ``depth``) trains for ``epochs`` with SGD (learning rate ``lr``,
    momentum 0.9, weight decay 5e-4, batches of ``batch_size``) from a seeded initialisation.
    Subclasses choose the images of one class from its embeddings in :meth:`select`.
    """

    defaults: ClassVar[dict] = {**BASELINE_DEFAULTS, "epochs": 5, "width": 64, "depth": 3, "batch_size": 256, "lr": 0.01}
    choices: ClassVar[dict[str, tuple]] = BASELINE_CHOICES

    def select(self, features: Tensor, k: int, generator: torch.Generator) -> Tensor:
        """Positions of ``k`` rows of one class's ``features`` [n, d]."""
        raise NotImplementedError

    def synthesize(self, data: ImageData, ipc: int, seed: int, progress: bool, checkpoints: Checkpoints) -> Synthesis:
        o = self.options
        start = time.perf_counter()
        g = seeded_generator(seed, SYNTHESIS_STREAM)
        x = data.normalized("train")
        net = new_convnet(data, o["width"], o["depth"], g)
        opt = torch.optim.SGD(net.parameters(), lr=o["lr"], momentum=0.9, weight_decay=5e-4)
        train_epochs(net, opt, x, data.y_train, o["epochs"], o["batch_size"], g, progress=progress)
        features = embed(net.eval(), x)
        trained = time.perf_counter()
        members = class_indices(data.y_train, data.num_classes)
        source = torch.cat([m[self.select(features[m], ipc, g)] for m in members])
        timings = {"embedding": trained - start, "selection": time.perf_counter() - trained}
        return _picked(data, x, source, timings)


@register_image_condenser("kcenter")
class KCenterCoreset(EmbeddingCoreset):
    """K-Center: per class, greedy farthest-point selection (:func:`kcenter_greedy`) from a random first image."""

    def select(self, features: Tensor, k: int, generator: torch.Generator) -> Tensor:
        first = int(torch.randint(len(features), (1,), generator=generator))
        return kcenter_greedy(features, k, first)


@register_image_condenser("herding")
class HerdingCoreset(EmbeddingCoreset):
    """Herding: per class, the greedy mean-matching selection of :func:`herding`."""

    def select(self, features: Tensor, k: int, generator: torch.Generator) -> Tensor:
        return herding(features, k)
