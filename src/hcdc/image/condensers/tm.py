"""Trajectory matching: MTT (Cazenavette et al., "Dataset Distillation by Matching Training Trajectories", CVPR 2022).

Two stages, as in MTT.

**Experts.** ``experts`` ConvNets (``width``, ``depth``) are trained on the real training split
for ``expert_epochs`` epochs (SGD, ``lr_expert``, no momentum or weight decay, batches of
``batch_expert``, DSA augmentation per image from ``strategy`` — MTT's buffer recipe), and
their parameters are saved before training and after every epoch: expert *i*'s trajectory
θ_0, …, θ_E. Expert *i* is seeded by option ``expert_seed`` and its index (stream
``EXPERT_STREAM + i`` of :func:`~hcdc.image.condensers.base.seeded_generator`), not by the
condensation seed, so one set of experts serves every condensation seed, as MTT trains its
buffer once. Trajectories are cached (:func:`expert_cache_dir`): one safetensors file per
expert under ``hcdc.paths.cache_dir()/tm_experts/``, in a folder keyed by a hash of the training
split (:func:`image_fingerprint`) and the expert options, written atomically, with a SHA-256 of
the tensors in the file's metadata. A later condensation loads them instead of training
(metadata ``experts.trained`` = 0). A cache file that cannot be read, lacks a tensor, has a
wrong shape or fails its checksum is **rebuilt**: a warning names the file, the expert is
retrained (deterministically: the same seed gives the same weights) and the file replaced; the
metadata lists such experts under ``experts.rebuilt``.

**Distillation.** Synthetic images start from real images of their class (or noise). Each of
``iterations`` iterations picks an expert and a start epoch s uniformly in [0,
``max_start_epoch``), initialises a student at θ_s and takes ``syn_steps`` (N) SGD steps on
minibatches of ``batch_syn`` synthetic images (all of them by default; reshuffled when used up),
each batch augmented per image (DSA), with the learnable step size α (initially ``syn_lr``).
The steps are unrolled functionally (``torch.func.functional_call`` on parameter tensors,
``create_graph=True``) through the ConvNet's primitive-norm path, whose higher-order derivatives
are exact. The loss is MTT's normalised parameter distance

    ‖θ_student − θ_{s+M}‖² / ‖θ_s − θ_{s+M}‖²,    M = ``expert_epochs_to_match``,

and one step of SGD with momentum 0.5 updates the images (``lr_img``) and α (``lr_lr``); a
non-finite loss stops the run with a ConfigError naming the learning rates. The
metadata's ``matching_history`` holds each iteration's loss and ``learned_lr`` the final α
(MTT trains networks on its distilled set with it).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import warnings
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor
from torch.func import functional_call
from tqdm.auto import tqdm

from ...checkpoint import Checkpoints, LoopState
from ...data.image import ImageData
from ...errors import ConfigError
from ...io import atomic_write_bytes
from ...models.convnet import ConvNet
from ...paths import cache_dir
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
from .nets import initial_images, new_convnet, train_epochs

EXPERT_STREAM = 1000  # expert i draws from stream EXPERT_STREAM + i of the expert seed
CACHE_FORMAT = "hcdc-tm-expert-v1"
EXPERT_OPTIONS = ("width", "depth", "expert_epochs", "lr_expert", "batch_expert", "strategy", "expert_seed")

Trajectory = dict[str, Tensor]  # parameter name -> tensor


def image_fingerprint(data: ImageData) -> str:
    """A hash of ``data``'s training split (name, classes, shapes, every image and label byte), for cache keys."""
    h = hashlib.sha256(json.dumps([data.name, list(data.classes), list(data.x_train.shape)]).encode())
    for t in (data.x_train, data.y_train):
        h.update(t.contiguous().numpy().data)
    return h.hexdigest()[:16]


def expert_cache_dir(data: ImageData, options: dict) -> Path:
    """The folder of ``data``'s expert trajectories under ``options`` (those in :data:`EXPERT_OPTIONS`)."""
    key = json.dumps(
        {"format": CACHE_FORMAT, "data": image_fingerprint(data), **{k: options[k] for k in EXPERT_OPTIONS}}, sort_keys=True
    )
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", data.name)[:40]
    return cache_dir() / "tm_experts" / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def checkpoint_name(epoch: int, param: str) -> str:
    """The tensor name of parameter ``param`` after ``epoch`` epochs in an expert file."""
    return f"epoch{epoch}/{param}"


def _tensor_digest(tensors: dict[str, Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}:{t.dtype}:{list(t.shape)};".encode())
        h.update(t.numpy().data)
    return h.hexdigest()


def train_expert(data: ImageData, x_real: Tensor, index: int, options: dict) -> dict[str, Tensor]:
    """Expert ``index``'s trajectory: its parameters at epochs 0..expert_epochs, named by :func:`checkpoint_name`."""
    o = options
    g = seeded_generator(o["expert_seed"], EXPERT_STREAM + index)
    net = new_convnet(data, o["width"], o["depth"], g)
    opt = torch.optim.SGD(net.parameters(), lr=o["lr_expert"])
    out = {}
    for epoch in range(o["expert_epochs"] + 1):
        if epoch:
            train_epochs(net, opt, x_real, data.y_train, 1, o["batch_expert"], g, o["strategy"])
        out.update({checkpoint_name(epoch, k): p.detach().clone() for k, p in net.named_parameters()})
    return out


def write_expert(path: Path, tensors: dict[str, Tensor], index: int) -> None:
    """Save one expert trajectory atomically as safetensors, its SHA-256 in the metadata."""
    meta = {"format": CACHE_FORMAT, "expert": str(index), "sha256": _tensor_digest(tensors)}
    atomic_write_bytes(path, save_safetensors(tensors, metadata=meta))


def check_expert_file(path: Path, expected: dict[str, torch.Size]) -> str | None:
    """Why the expert file at ``path`` is unusable (unreadable, wrong tensors or shapes, bad checksum), or None if it is fine."""
    try:
        raw = path.read_bytes()
        tensors = load_safetensors(raw)
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:  # noqa: BLE001 -- safetensors raises several types for a corrupt file
        return f"not a readable safetensors file ({type(exc).__name__}: {exc})"
    if meta.get("format") != CACHE_FORMAT:
        return f"format {meta.get('format')!r}, expected {CACHE_FORMAT!r}"
    if set(tensors) != set(expected):
        return "its tensors are not the expected checkpoints"
    bad = next((k for k, shape in expected.items() if tensors[k].shape != shape or tensors[k].dtype != torch.float32), None)
    if bad is not None:
        return f"tensor {bad!r} has shape {list(tensors[bad].shape)} and dtype {tensors[bad].dtype}"
    if meta.get("sha256") != _tensor_digest(tensors):
        return "checksum mismatch"
    return None


def prepare_experts(data: ImageData, options: dict, progress: bool = False) -> tuple[list[Path], dict]:
    """The cached trajectory files of experts 0..experts-1, training (and saving) those missing or unusable.

    Returns the paths and ``{"cache", "trained", "loaded", "rebuilt"}`` (rebuilt: indices of
    experts whose file was present but unusable; a warning names each).
    """
    folder = expert_cache_dir(data, options)
    net = new_convnet(data, options["width"], options["depth"], torch.Generator())
    shapes = {k: p.shape for k, p in net.named_parameters()}
    expected = {checkpoint_name(e, k): s for e in range(options["expert_epochs"] + 1) for k, s in shapes.items()}
    x_real = None
    paths, trained, rebuilt = [], 0, []
    for i in tqdm(range(options["experts"]), desc="TM experts", unit="expert", disable=not progress):
        path = folder / f"expert-{i:04d}.safetensors"
        paths.append(path)
        if path.exists():
            problem = check_expert_file(path, expected)
            if problem is None:
                continue
            warnings.warn(f"TM expert cache file {path} is unusable ({problem}); retraining expert {i}", stacklevel=2)
            rebuilt.append(i)
        if x_real is None:
            x_real = data.normalized("train")
        write_expert(path, train_expert(data, x_real, i, options), i)
        trained += 1
    info = {"cache": str(folder), "trained": trained, "loaded": len(paths) - trained, "rebuilt": rebuilt}
    return paths, info


def load_checkpoint(path: Path, epoch: int, names: list[str]) -> Trajectory:
    """The parameters ``names`` of the expert in ``path`` after ``epoch`` epochs.

    Only those tensors are read (through a memory map, copied at once: the file may be replaced later).
    """
    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(checkpoint_name(epoch, k)).clone() for k in names}


def unroll_student(
    net: ConvNet,
    start: Trajectory,
    x: Tensor,
    y: Tensor,
    lr: Tensor,
    steps: int,
    batch: int,
    generator: torch.Generator,
    strategy: str | None,
) -> Trajectory:
    """The student's parameters after ``steps`` differentiable SGD steps from ``start`` on minibatches of (x, y).

    Minibatches of ``batch`` come from seeded shuffles of x (a new shuffle when one is used up);
    with a ``strategy`` each batch gets DSA augmentation, a transform per image. Every step keeps
    its graph (``create_graph=True``), so the result is differentiable in ``x``, ``lr`` and ``start``.
    The forward pass is ``net``'s primitive-norm path through ``functional_call``.
    """
    params = {k: v.detach().clone().requires_grad_() for k, v in start.items()}
    queue: list[Tensor] = []
    for _ in range(steps):
        if not queue:
            queue = list(torch.randperm(len(y), generator=generator).split(batch))
        idx = queue.pop(0)
        xb = x[idx]
        if strategy is not None:
            xb = sample_augmentation(generator, strategy, batch=len(idx))(xb)
        loss = F.cross_entropy(functional_call(net, params, (xb,)), y[idx])
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        params = {k: p - lr * gp for (k, p), gp in zip(params.items(), grads)}
    return params


def trajectory_matching_loss(student: Trajectory, start: Trajectory, target: Trajectory) -> Tensor:
    """MTT's loss: ``‖student − target‖² / ‖start − target‖²`` over all parameters together."""
    num = sum((student[k] - target[k]).square().sum() for k in target)
    den = sum((start[k] - target[k]).square().sum() for k in target)
    return num / den


@register_image_condenser("tm")
class TMCondenser(ImageCondenser):
    """TM (MTT): synthetic images on which a few SGD steps from an expert checkpoint land where the expert did M epochs later.

    Defaults are MTT's CIFAR-10 ipc-10 recipe (100 experts of 50 epochs, lr 0.01, N = 30
    synthetic steps matching M = 2 expert epochs from starts below 20, lr_img 1000, lr_lr 1e-5,
    5000 iterations; MTT additionally ZCA-whitens CIFAR, which this implementation does not): far
    beyond a CPU at width 128. ``batch_syn=None`` uses every synthetic image in each step.
    At ipc 10, width 32, ten classes of 32x32 images, one iteration (30 unrolled steps on all 100
    images) takes about 15 s on one thread. N student steps should not travel much farther than M
    expert epochs (M·⌈n_train/batch_expert⌉ expert steps): on a small training split lower
    ``syn_steps`` or ``lr_lr``, or the learned step size can blow up (reported as a ConfigError).
    """

    defaults: ClassVar[dict] = {
        **BASELINE_DEFAULTS,
        "iterations": 5000,
        "experts": 100,
        "expert_epochs": 50,
        "max_start_epoch": 20,
        "expert_epochs_to_match": 2,
        "syn_steps": 30,
        "batch_syn": None,
        "lr_img": 1000.0,
        "lr_lr": 1e-5,
        "syn_lr": 0.01,
        "lr_expert": 0.01,
        "batch_expert": 256,
        "width": 128,
        "depth": 3,
        "init": "real",
        "strategy": DEFAULT_STRATEGY,
        "expert_seed": 0,
    }
    choices: ClassVar[dict[str, tuple]] = {**BASELINE_CHOICES, "init": ("real", "noise")}
    minimum: ClassVar[dict[str, int]] = {"iterations": 0, "expert_seed": 0}

    def check_options(self) -> None:
        o = self.options
        parse_strategy(o["strategy"])
        last = o["max_start_epoch"] - 1 + o["expert_epochs_to_match"]
        if last > o["expert_epochs"]:
            raise ConfigError(
                f"image condenser 'tm': a start epoch below max_start_epoch={o['max_start_epoch']} plus "
                f"expert_epochs_to_match={o['expert_epochs_to_match']} reaches epoch {last}, beyond "
                f"expert_epochs={o['expert_epochs']}"
            )

    def synthesize(self, data: ImageData, ipc: int, seed: int, progress: bool, checkpoints: Checkpoints) -> Synthesis:
        o = self.options
        start_time = time.perf_counter()
        paths, expert_info = prepare_experts(data, o, progress)
        experts_time = time.perf_counter() - start_time
        g = seeded_generator(seed, SYNTHESIS_STREAM)
        x_real = data.normalized("train")
        members = class_indices(data.y_train, data.num_classes)
        x_syn = initial_images(x_real, members, ipc, o["init"], g).requires_grad_()
        y_syn = torch.arange(data.num_classes).repeat_interleave(ipc)
        syn_lr = torch.tensor(o["syn_lr"]).requires_grad_()
        opt_img = torch.optim.SGD([x_syn], lr=o["lr_img"], momentum=0.5)
        opt_lr = torch.optim.SGD([syn_lr], lr=o["lr_lr"], momentum=0.5)
        net = new_convnet(data, o["width"], o["depth"], torch.Generator())  # the architecture; parameters come from the experts
        names = [k for k, _ in net.named_parameters()]
        batch = o["batch_syn"] or len(y_syn)
        history = []
        state = LoopState({"x_syn": x_syn, "syn_lr": syn_lr}, {"img": opt_img, "lr": opt_lr}, {"g": g}, {"history": history})
        loop = checkpoints.loop("tm", o["iterations"], state, "TM", progress)
        synthesis_start = time.perf_counter()
        for _ in loop:
            expert = int(torch.randint(o["experts"], (1,), generator=g))
            epoch = int(torch.randint(o["max_start_epoch"], (1,), generator=g))
            start = load_checkpoint(paths[expert], epoch, names)
            target = load_checkpoint(paths[expert], epoch + o["expert_epochs_to_match"], names)
            student = unroll_student(net, start, x_syn, y_syn, syn_lr, o["syn_steps"], batch, g, o["strategy"])
            loss = trajectory_matching_loss(student, start, target)
            if not torch.isfinite(loss):
                raise ConfigError(
                    f"TM diverged at iteration {len(history)} (matching loss {loss.item()}, step size "
                    f"{syn_lr.item():.4g}): lower lr_img, lr_lr or syn_lr"
                )
            opt_img.zero_grad(set_to_none=True)
            opt_lr.zero_grad(set_to_none=True)
            x_syn.grad, syn_lr.grad = torch.autograd.grad(loss, [x_syn, syn_lr])
            opt_img.step()
            opt_lr.step()
            history.append(loss.item())
            loop.bar.set_postfix(matching=f"{history[-1]:.4f}", lr=f"{syn_lr.item():.4g}")
        timings = {"experts": experts_time, "synthesis": loop.seconds(synthesis_start)}
        meta = {"matching_history": history, "learned_lr": float(syn_lr.detach()), "experts": expert_info}
        return Synthesis(x_syn.detach(), y_syn, timings, meta=meta)
