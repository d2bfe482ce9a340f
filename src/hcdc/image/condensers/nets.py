"""Network and image helpers shared by the image condensers: DC's ConvNet for a dataset, minibatch
training, embeddings, real class batches and the initial synthetic images.

DC (Zhao et al., ICLR 2021), DSA (Zhao & Bilen, ICML 2021) and DM (Zhao & Bilen, WACV 2023) all
draw fresh ConvNets, sample real batches class by class and start from real images of the class;
the coresets embed images with a trained ConvNet.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from ...data.image import ImageData
from ...models.convnet import ConvNet
from ..augment import sample_augmentation


def new_convnet(data: ImageData, width: int, depth: int, generator: torch.Generator) -> ConvNet:
    """A randomly initialised ConvNet for ``data``'s images and classes."""
    h, w, c = data.image_shape
    return ConvNet(c, data.num_classes, (h, w), width=width, depth=depth, generator=generator)


def train_epochs(
    net: ConvNet,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
    strategy: str | None = None,
    progress: bool = False,
) -> None:
    """Train ``net`` on (x, y) with cross-entropy for ``epochs`` seeded shuffles in batches of ``batch_size`` (fused norm).

    With an augmentation ``strategy`` each batch is augmented, every image with its own random
    transform (DSA's training-time augmentation).
    """
    for _ in tqdm(range(epochs), desc="training", unit="epoch", disable=not progress):
        for idx in torch.randperm(len(y), generator=generator).split(batch_size):
            xb = x[idx]
            if strategy is not None:
                xb = sample_augmentation(generator, strategy, batch=len(idx))(xb)
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(net(xb, fused_norm=True), y[idx]).backward()
            optimizer.step()


@torch.no_grad()
def embed(net: ConvNet, x: Tensor, batch_size: int = 1024) -> Tensor:
    """``net.features`` of every image of ``x``, computed in batches with the fused norm [N, embedding_dim]."""
    return torch.cat([net.features(xb, fused_norm=True) for xb in x.split(batch_size)])


def real_batch(x: Tensor, members: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """``n`` images of ``x`` drawn without replacement among positions ``members`` (all of them if fewer)."""
    return x[members[torch.randperm(members.numel(), generator=generator)[:n]]]


def initial_images(x: Tensor, members: list[Tensor], ipc: int, init: str, generator: torch.Generator) -> Tensor:
    """Starting synthetic images, ``ipc`` per class in class order: distinct random real images of the
    class (``init="real"``) or standard normal noise in normalised units (``init="noise"``)."""
    if init == "noise":
        return torch.randn(len(members) * ipc, *x.shape[1:], generator=generator)
    return torch.cat([real_batch(x, m, ipc, generator) for m in members]).clone()
