"""Training and scoring NAS-Bench-201 networks as an :class:`~hcdc.image.protocol.ImageProtocol` says, one by one
or several at once as one stacked model.

Normalisation. NAS-Bench-201 normalises with BatchNorm; :class:`~hcdc.image.space.NB201Network`
uses primitive group norm (exact higher-order derivatives, no batch statistics). Its default, one
group per channel (instance norm), cripples these networks: the last norm before the global
average pool rescales every channel of every image to zero mean and unit variance, so the pooled
features carry almost no information (measured here: C=8, 16×16, 2,500 CIFAR-10 images, 4 epochs:
validation accuracy 13.6 % with instance norm, 23.2 % with one group, 25.2 % with two). The
protocols therefore use ``norm_groups=1`` (layer norm over C, H, W, which keeps the per-channel
differences the pool reads); a proxy method that trains NB201 networks (HCDC) should use the same.

Training details: the learning rate follows a per-step cosine from ``lr`` to 0 over all steps
(NAS-Bench-201's schedule), momentum without Nesterov, no data augmentation, the weight decay on
all parameters of the operations in use (the other operations of the relaxed network get no
gradient and stay at their initial values). Initial weights and batch order come from generators
derived from the seed, so a seed gives the same network on a given device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, grad, stack_module_state, vmap

from ..errors import ConfigError, DataError
from .condensers.base import seeded_generator
from .protocol import ImageProtocol
from .space import EDGES, Architecture, NB201Network

INIT_STREAM, SHUFFLE_STREAM = 1000, 1001  # seeded_generator streams of a training seed
EVAL_BATCH = 512


def uses_cuda_tricks(device: torch.device, flag: bool) -> bool:
    """Whether a CUDA-only option of the protocol (``amp``, ``channels_last``) is on: ``flag`` and a CUDA ``device``."""
    return flag and device.type == "cuda"


def train_architecture(
    arch: Architecture,
    x: Tensor,
    y: Tensor,
    protocol: ImageProtocol,
    seed: int,
    *,
    num_classes: int | None = None,
    epochs: int | None = None,
    device: torch.device | str | None = None,
) -> dict[str, Tensor]:
    """Train the NB201Network of ``arch`` on normalised images ``x`` [n, c, h, w] and labels ``y``; return its parameters.

    The result maps parameter names to tensors for ``torch.func.functional_call(NB201Network(...),
    params, (x, arch.to_alpha()))`` (all parameters of the relaxed network; those of the unused
    operations keep their initial values). ``epochs`` overrides ``protocol.epochs`` (0 returns the
    initial weights); ``num_classes`` defaults to ``max(y) + 1``; ``device`` defaults to ``x``'s.
    On CUDA, ``protocol.amp`` trains under bfloat16 autocast and ``protocol.channels_last`` uses
    channels-last tensors. Deterministic on CPU for a given seed.
    """
    device, epochs, num_classes = _training_settings(x, y, protocol, num_classes, epochs, device)
    net = NB201Network(protocol.C, protocol.N, num_classes, x.shape[1], norm_groups=protocol.norm_groups,
                       generator=seeded_generator(seed, INIT_STREAM))
    channels_last = uses_cuda_tricks(device, protocol.channels_last)
    net = net.to(device, memory_format=torch.channels_last) if channels_last else net.to(device)
    x, y = x.to(device), y.to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    alpha = arch.to_alpha(device=device)
    params = list(net.parameters())
    opt = torch.optim.SGD(params, lr=protocol.lr, momentum=protocol.momentum, weight_decay=protocol.weight_decay)
    steps = epochs * math.ceil(len(y) / protocol.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / max(steps, 1))))
    amp = uses_cuda_tricks(device, protocol.amp)
    g = seeded_generator(seed, SHUFFLE_STREAM)
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=g).split(protocol.batch_size):
            idx = idx.to(device)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                logits = net(x[idx], alpha)
            loss = F.cross_entropy(logits.float(), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            used = [p for p in params if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(used, protocol.grad_clip)
            opt.step()
            schedule.step()
    return {k: v.detach() for k, v in net.named_parameters()}


def _training_settings(x: Tensor, y: Tensor, protocol: ImageProtocol, num_classes: int | None, epochs: int | None,
                       device: torch.device | str | None) -> tuple[torch.device, int, int]:
    """The device, epochs and class count a training run uses (defaults filled, bad values rejected)."""
    device = torch.device(device) if device is not None else x.device
    epochs = protocol.epochs if epochs is None else epochs
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ConfigError(f"epochs must be a non-negative integer, got {epochs!r}")
    if x.ndim != 4 or len(x) != len(y) or len(y) == 0:
        raise DataError(f"training images must be [n, c, h, w] with n = len(y) > 0, got {list(x.shape)} and {len(y)} labels")
    return device, epochs, int(y.max()) + 1 if num_classes is None else num_classes


def train_networks(
    jobs: Sequence[tuple[Architecture, int]],
    x: Tensor,
    y: Tensor,
    protocol: ImageProtocol,
    *,
    num_classes: int | None = None,
    epochs: int | None = None,
    device: torch.device | str | None = None,
) -> list[dict[str, Tensor]]:
    """:func:`train_architecture` for every (architecture, seed) of ``jobs``, in order: ``protocol.stack`` of them at
    a time as one stacked model (:func:`train_stacked`), or one by one when ``stack`` is 1."""
    jobs = list(jobs)
    kwargs = {"num_classes": num_classes, "epochs": epochs, "device": device}
    if protocol.stack == 1:
        return [train_architecture(arch, x, y, protocol, seed, **kwargs) for arch, seed in jobs]
    return [params for i in range(0, len(jobs), protocol.stack)
            for params in train_stacked(jobs[i : i + protocol.stack], x, y, protocol, **kwargs)]


def train_stacked(
    jobs: Sequence[tuple[Architecture, int]],
    x: Tensor,
    y: Tensor,
    protocol: ImageProtocol,
    *,
    num_classes: int | None = None,
    epochs: int | None = None,
    device: torch.device | str | None = None,
) -> list[dict[str, Tensor]]:
    """Train the networks of several (architecture, seed) ``jobs`` at once; their parameters, in order.

    The same training as :func:`train_architecture` for each job (its seed's initial weights and batch
    order, SGD with momentum and weight decay, per-network gradient clipping, the cosine schedule), done
    as one step of a stacked model per batch: ``torch.func.vmap`` of the loss gradient over the jobs'
    stacked parameters, images and mixing weights. Each network computes the operations used by any job
    of the stack (the others weigh zero in every job); an operation a job's own cell does not use gets a
    zero gradient in the stack and is left untouched, as :func:`train_architecture` leaves it. Results
    equal one-by-one training up to floating-point rounding (other kernels sum in another order). Jobs
    of the same architecture (its seeds) stack without extra work; different architectures compute the
    union of their operations. On CUDA with ``protocol.amp``, bfloat16 autocast; no channels-last here.
    """
    device, epochs, num_classes = _training_settings(x, y, protocol, num_classes, epochs, device)
    if not jobs:
        return []
    nets = [NB201Network(protocol.C, protocol.N, num_classes, x.shape[1], norm_groups=protocol.norm_groups,
                         generator=seeded_generator(seed, INIT_STREAM)) for _, seed in jobs]
    params = {k: v.detach().to(device) for k, v in stack_module_state(nets)[0].items()}
    used = {arch: _used_parameters(arch, nets[0]) for arch in dict.fromkeys(arch for arch, _ in jobs)}
    mask = {k: torch.tensor([k in used[arch] for arch, _ in jobs], device=device) for k in params}
    skeleton = _skeleton({k: v[0] for k, v in params.items()}, protocol)
    alpha = torch.stack([arch.to_alpha(device=device) for arch, _ in jobs])
    active = [sorted({arch.ops[e] for arch, _ in jobs} - {0}) for e in range(len(EDGES))]
    amp = uses_cuda_tricks(device, protocol.amp)
    x, y = x.to(device), y.to(device)

    def loss(p: dict[str, Tensor], xb: Tensor, yb: Tensor, a: Tensor) -> Tensor:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            out = functional_call(skeleton, p, (xb, a, active))
        return F.cross_entropy(out.float(), yb)

    gradient = vmap(grad(loss))
    momentum = {k: torch.zeros_like(v) for k, v in params.items()}
    steps = epochs * math.ceil(len(y) / protocol.batch_size)
    shuffles = [seeded_generator(seed, SHUFFLE_STREAM) for _, seed in jobs]
    step = 0
    for _ in range(epochs):
        orders = [torch.randperm(len(y), generator=g).split(protocol.batch_size) for g in shuffles]
        for batch in zip(*orders):
            idx = torch.stack(batch).to(device)
            grads = gradient(params, x[idx], y[idx], alpha)
            norm = torch.stack([g.flatten(1).square().sum(1) for g in grads.values()]).sum(0).sqrt()
            clip = (protocol.grad_clip / (norm + 1e-6)).clamp(max=1.0)  # torch.nn.utils.clip_grad_norm_'s rule
            lr = protocol.lr * 0.5 * (1 + math.cos(math.pi * step / max(steps, 1)))
            for k, p in params.items():
                shape = (-1,) + (1,) * (p.ndim - 1)
                d = grads[k] * clip.view(shape) + protocol.weight_decay * p  # torch.optim.SGD's update, dampening 0
                momentum[k] = d if step == 0 else protocol.momentum * momentum[k] + d
                params[k] = torch.where(mask[k].view(shape), p - lr * momentum[k], p)
            step += 1
    return [{k: v[j].detach() for k, v in params.items()} for j in range(len(jobs))]


def _used_parameters(arch: Architecture, net: NB201Network) -> set[str]:
    """Names of the parameters that :func:`train_architecture` updates for ``arch``: those that get a gradient
    (found with ``net`` on one 4×4 input; the parameters of unused operations get none)."""
    net.zero_grad(set_to_none=True)
    net(torch.zeros(1, net.stem[0].in_channels, 4, 4), arch.to_alpha()).sum().backward()
    used = {k for k, p in net.named_parameters() if p.grad is not None}
    net.zero_grad(set_to_none=True)
    return used


def _skeleton(params: dict[str, Tensor], protocol: ImageProtocol) -> NB201Network:
    """An NB201Network with the shapes of ``params`` and no real storage (for ``functional_call``)."""
    with torch.device("meta"):
        return NB201Network(protocol.C, protocol.N, params["classifier.weight"].shape[0], params["stem.0.weight"].shape[1],
                            norm_groups=protocol.norm_groups)


@torch.no_grad()
def score_architecture(
    arch: Architecture,
    params: dict[str, Tensor],
    x: Tensor,
    y: Tensor,
    protocol: ImageProtocol,
    *,
    device: torch.device | str | None = None,
    batch_size: int = EVAL_BATCH,
) -> dict[str, float]:
    """Accuracy and mean cross-entropy of the trained network (``params`` of :func:`train_architecture`) on (x, y)."""
    if len(y) == 0:
        raise DataError("cannot score an architecture on an empty set of images")
    device = torch.device(device) if device is not None else next(iter(params.values())).device
    net = _skeleton(params, protocol)
    params = {k: v.to(device) for k, v in params.items()}
    alpha = arch.to_alpha(device=device)
    amp = uses_cuda_tricks(device, protocol.amp)
    channels_last = uses_cuda_tricks(device, protocol.channels_last)
    correct, loss = 0, 0.0
    for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
        xb, yb = xb.to(device), yb.to(device)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            logits = functional_call(net, params, (xb, alpha))
        logits = logits.float()
        correct += int((logits.argmax(1) == yb).sum())
        loss += float(F.cross_entropy(logits, yb, reduction="sum"))
    return {"acc": correct / len(y), "loss": loss / len(y)}


def default_device(device: torch.device | str | None = None) -> torch.device:
    """``device`` (checked: a ConfigError for an unknown name or a CUDA device this machine lacks), or CUDA when
    available, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"unknown device {device!r} (expected cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device {str(device)!r}: CUDA is not available here (torch {torch.__version__}); "
                              "use --device cpu")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"device {str(device)!r}: this machine has {count} CUDA device(s)")
    elif device.type != "cpu":
        raise ConfigError(f"unsupported device {str(device)!r} (expected cpu, cuda or cuda:N)")
    return device
