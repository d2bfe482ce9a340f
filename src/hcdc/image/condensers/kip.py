"""Kernel inducing points: KIP (Nguyen, Chen & Lee, "Dataset Meta-Learning from Kernel Ridge-Regression", ICLR 2021).

KIP learns a support set (the synthetic images X_s, optionally their label vectors y_s) such that
kernel ridge regression (KRR) fitted on the support set predicts the labels of real images:
for a batch of ``batch_target`` real target images (X_t, y_t) drawn uniformly from the training
split, the loss is

    L = ½ ‖y_t − K_ts (K_ss + λ I)⁻¹ y_s‖² / n_t,    λ = ridge · tr(K_ss) / n_s,

with K_ts = k(X_t, X_s), K_ss = k(X_s, X_s) and the ridge scaled by the mean diagonal of K_ss as
in KIP's code (``reg * trace(K) / n``), so the loss does not change when the kernel is scaled.
The loss is ½ the squared error summed over classes and averaged over targets (KIP's code
averages over classes too, a constant factor C that Adam does not see). Labels are KIP's
mean-centred one-hot vectors: ``one_hot(y) − 1/C`` (:func:`centered_one_hot`). Adam
(``lr``) updates the images and, with ``learn_labels=True``, the support labels; the proxy's
integer labels stay the class each image was started from, and learned label vectors are kept in
the proxy tensor ``label_vectors`` [ipc·C, C].

The kernel (``kernel``):

* ``"ntk"``: the empirical neural tangent kernel Θ(x, x') = ⟨∂f(x)/∂θ, ∂f(x')/∂θ⟩ of a randomly
  initialised ConvNet (:class:`~hcdc.models.convnet.ConvNet`, ``width``, ``depth``) with one
  scalar output, its Jacobians computed per image with ``torch.func.vmap(grad(...))``
  (:func:`parameter_jacobian`). KIP uses the infinite-width NTK (neural-tangents); the empirical
  NTK of freshly sampled finite networks is the standard stand-in. For an infinitely wide net
  the NTK is the same for every logit, hence one scalar output.
* ``"nngp"``: random features, the inner product of the last-block features (the embedding
  before the linear layer) of a random ConvNet, divided by their number: a Monte-Carlo estimate
  of the network's NNGP kernel.

Every iteration draws ``nets`` fresh random networks and averages their kernels (a fresh sample
per step, as in KIP's finite-width experiments, so the support set does not fit the quirks of one
network). The norm is the ConvNet's primitive instance norm: the image gradient of an NTK is a
second derivative. The KRR solve runs in float64.

The metadata's ``matching_history`` holds each iteration's KRR loss; a non-finite loss stops the
run with a ConfigError.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, grad, vmap

from ...checkpoint import Checkpoints, LoopState
from ...data.image import ImageData
from ...errors import ConfigError
from ...models.convnet import ConvNet
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
from .nets import initial_images

KERNELS = ("ntk", "nngp")


def centered_one_hot(y: Tensor, num_classes: int) -> Tensor:
    """KIP's regression targets: one-hot rows of ``y`` minus 1/C (each row sums to zero), float32 [N, C]."""
    return F.one_hot(y, num_classes).float() - 1.0 / num_classes


def kernel_network(data: ImageData, width: int, depth: int, generator: torch.Generator) -> ConvNet:
    """A random ConvNet for ``data``'s images with one scalar output, frozen: the network behind KIP's kernel."""
    h, w, c = data.image_shape
    return ConvNet(c, 1, (h, w), width=width, depth=depth, generator=generator).requires_grad_(False)


def parameter_jacobian(net: ConvNet, x: Tensor, chunk: int = 128) -> Tensor:
    """The per-image gradient of ``net``'s scalar output w.r.t. all its parameters, flattened [N, P].

    Computed with ``torch.func.vmap(grad(...))`` in chunks of ``chunk`` images; differentiable
    w.r.t. ``x`` (the NTK's image gradient is a second derivative; the primitive norm keeps it exact).
    """
    params = {name: p.detach() for name, p in net.named_parameters()}

    def output(p: dict[str, Tensor], image: Tensor) -> Tensor:
        return functional_call(net, p, (image.unsqueeze(0),)).squeeze()

    per_image = vmap(grad(output), in_dims=(None, 0))
    rows = []
    for xb in x.split(chunk):
        jac = per_image(params, xb)
        rows.append(torch.cat([jac[name].flatten(1) for name in params], 1))
    return torch.cat(rows)


def kernel_features(net: ConvNet, kernel: str, x: Tensor) -> Tensor:
    """Features φ(x) [N, D] whose inner products are the kernel: NTK Jacobians or scaled NNGP embeddings."""
    if kernel == "ntk":
        return parameter_jacobian(net, x)
    if kernel == "nngp":
        return net.features(x) / math.sqrt(net.embedding_dim)
    raise ConfigError(f"unknown KIP kernel {kernel!r}; known: {', '.join(KERNELS)}")


def kernel_matrix(nets: Sequence[ConvNet], kernel: str, x1: Tensor, x2: Tensor | None = None) -> Tensor:
    """k(x1, x2) [N1, N2] averaged over ``nets``; ``x2=None`` gives the symmetric k(x1, x1)."""
    total = None
    for net in nets:
        f1 = kernel_features(net, kernel, x1)
        k = f1 @ (f1 if x2 is None else kernel_features(net, kernel, x2)).T
        total = k if total is None else total + k
    total = total / len(nets)
    return (total + total.T) / 2 if x2 is None else total


def support_target_kernels(nets: Sequence[ConvNet], kernel: str, x_s: Tensor, x_t: Tensor) -> tuple[Tensor, Tensor]:
    """(K_ss [n_s, n_s], K_ts [n_t, n_s]) averaged over ``nets``; only the support side is differentiated."""
    k_ss, k_ts = None, None
    for net in nets:
        f_s = kernel_features(net, kernel, x_s)
        with torch.no_grad():
            f_t = kernel_features(net, kernel, x_t)
        ss, ts = f_s @ f_s.T, f_t @ f_s.T
        k_ss, k_ts = (ss, ts) if k_ss is None else (k_ss + ss, k_ts + ts)
    k_ss = (k_ss + k_ss.T) / (2 * len(nets))
    return k_ss, k_ts / len(nets)


def krr_predict(k_ss: Tensor, k_ts: Tensor, y_s: Tensor, ridge: float) -> Tensor:
    """Kernel ridge regression's prediction ``K_ts (K_ss + λ I)⁻¹ y_s`` with λ = ridge·tr(K_ss)/n_s (KIP's scaling).

    The linear system is solved in float64; the result has ``k_ts``'s dtype. ``ridge=0`` is plain
    kernel regression (interpolation when K_ss is invertible).
    """
    n = k_ss.shape[0]
    k = k_ss.double()
    reg = ridge * torch.trace(k) / n
    alpha = torch.linalg.solve(k + reg * torch.eye(n, dtype=k.dtype), y_s.double())
    return (k_ts.double() @ alpha).to(k_ts.dtype)


def krr_loss(k_ss: Tensor, k_ts: Tensor, y_s: Tensor, y_t: Tensor, ridge: float) -> Tensor:
    """KIP's loss ``½ ‖y_t − krr_predict(...)‖² / n_t`` (squared error summed over classes, mean over targets)."""
    return 0.5 * (y_t - krr_predict(k_ss, k_ts, y_s, ridge)).square().sum() / y_t.shape[0]


@register_image_condenser("kip")
class KIPCondenser(ImageCondenser):
    """KIP: a support set whose kernel ridge regression predicts real images' labels, under random-network kernels.

    Defaults follow KIP's code where it applies (Adam lr 0.01, ridge 1e-6 relative to the mean
    kernel diagonal, mean-centred one-hot labels); the kernel network is narrow (width 32) so an
    empirical NTK is affordable on a CPU. At ipc 10, width 32, ten classes of 32x32 images and
    256 targets, one iteration takes about 1 s on one thread with the NTK, 0.3 s with the NNGP kernel.
    """

    defaults: ClassVar[dict] = {
        **BASELINE_DEFAULTS,
        "iterations": 1000,
        "batch_target": 256,
        "lr": 0.01,
        "ridge": 1e-6,
        "width": 32,
        "depth": 3,
        "kernel": "ntk",
        "nets": 1,
        "learn_labels": False,
        "init": "real",
    }
    choices: ClassVar[dict[str, tuple]] = {**BASELINE_CHOICES, "kernel": KERNELS, "init": ("real", "noise"), "learn_labels": (False, True)}
    minimum: ClassVar[dict[str, int]] = {"iterations": 0}

    def check_options(self) -> None:
        if not isinstance(self.options["learn_labels"], bool):
            raise ConfigError(f"image condenser 'kip' option 'learn_labels' must be True or False, got {self.options['learn_labels']!r}")

    def synthesize(self, data: ImageData, ipc: int, seed: int, progress: bool, checkpoints: Checkpoints) -> Synthesis:
        o = self.options
        start = time.perf_counter()
        g = seeded_generator(seed, SYNTHESIS_STREAM)
        x_real = data.normalized("train")
        y_real = centered_one_hot(data.y_train, data.num_classes)
        members = class_indices(data.y_train, data.num_classes)
        x_syn = initial_images(x_real, members, ipc, o["init"], g).requires_grad_()
        y_cls = torch.arange(data.num_classes).repeat_interleave(ipc)
        y_syn = centered_one_hot(y_cls, data.num_classes).requires_grad_(o["learn_labels"])
        learned = [x_syn, y_syn] if o["learn_labels"] else [x_syn]
        opt = torch.optim.Adam(learned, lr=o["lr"])
        history = []
        tensors = {"x_syn": x_syn, "y_syn": y_syn} if o["learn_labels"] else {"x_syn": x_syn}
        loop = checkpoints.loop("kip", o["iterations"], LoopState(tensors, {"opt": opt}, {"g": g}, {"history": history}),
                                "KIP", progress)
        for _ in loop:
            nets = [kernel_network(data, o["width"], o["depth"], g) for _ in range(o["nets"])]
            target = torch.randperm(len(y_real), generator=g)[: o["batch_target"]]
            k_ss, k_ts = support_target_kernels(nets, o["kernel"], x_syn, x_real[target])
            loss = krr_loss(k_ss, k_ts, y_syn, y_real[target], o["ridge"])
            if not torch.isfinite(loss):
                raise ConfigError(f"KIP diverged at iteration {len(history)} (KRR loss {loss.item()}): lower lr or raise ridge")
            opt.zero_grad(set_to_none=True)
            for p, gp in zip(learned, torch.autograd.grad(loss, learned)):
                p.grad = gp
            opt.step()
            history.append(loss.item())
            loop.bar.set_postfix(krr=f"{history[-1]:.4f}")
        timings = {"synthesis": loop.seconds(start)}
        tensors = {"label_vectors": y_syn.detach().clone()} if o["learn_labels"] else {}
        return Synthesis(x_syn.detach(), y_cls, timings, tensors=tensors, meta={"matching_history": history})
