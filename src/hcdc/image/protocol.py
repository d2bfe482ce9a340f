"""The image track's evaluation protocol: train NAS-Bench-201 cells, get their true ranking, score proxies.

This is the protocol of HCDC's Table 1 (Ding et al., "Hyperparameter Calibrated Dataset
Condensation", ICLR 2024, Sec. 7), which follows DC-Bench's NAS evaluation (Cui et al., "DC-BENCH:
Dataset Condensation Benchmark", NeurIPS 2022): architectures sampled from the NAS-Bench-201 space
(Dong & Yang, ICLR 2020; :mod:`hcdc.image.space`), each cell repeated N=1 time per stage (3 cells),
C=16 channels, trained 50 epochs with SGD (lr 0.025, cosine schedule, momentum 0.9, weight decay
3e-4, gradient-norm clipping at 5, batches of 64), 5 seeds, and ranked by accuracy on a held-out
20 % of the CIFAR training set (10,000 images). A proxy (50 images per class plus its validation
part) is judged by how well the ranking of the same architectures trained on its training part and
scored on its validation part agrees with the true ranking (Spearman, Kendall) and by the true test
accuracy of the architecture it picks (Perf).

:data:`PROTOCOLS` holds the named presets:

* ``"full"``: the paper's protocol above (100 architectures, 32×32, the whole 40k/10k split,
  ipc 50). Hours on a GPU: 100 archs × 5 seeds × 50 epochs × 625 steps ≈ 1.6 M steps for the
  ground truth alone. It trains 10 networks at once (``stack``: two architectures × 5 seeds as one
  vmapped model, :func:`train_stacked`), on CUDA in bfloat16 autocast (channels-last tensors where a
  network trains or is scored alone). How much stacking saves on a GPU is not measured yet (no
  session here had one): ``python bench/image_stack.py --protocol full`` measures it side by side.
* ``"cpu"``: a scaled version meant to run the whole image table (ground truth, the 8 baselines,
  HCDC, proxy evaluation) in under 2 hours on 2 CPU cores. Images are average-pooled from 32×32
  to 16×16 before anything else (:func:`prepare_data`); networks have C = 8; the ground truth
  trains on a class-stratified subset of 250 training images per class for 12 epochs (480 steps)
  and scores on 500 validation images per class (of the 10k held out from the CIFAR training
  set) and 500 test images per class, mean over 3 seeds; the proxies are condensed from the same
  training subset (so "the original data" of this protocol is that subset) at ipc 10 and
  every architecture trains ``proxy_epochs`` = 50 epochs (100 steps) on a proxy's training part,
  3 seeds, as fewer steps on 100 images would leave every architecture near chance.

  The split 250:500 is deliberately heavy on validation. The baselines' validation part keeps the
  train:val proportion, so it is round(10·500/250) = 20 images per class; with the paper's 4:1 it
  would be 2–3 per class at ipc 10. With real validation images for the baselines
  (``val_part="real"``, the table ``image_table_cpu_realval``), ``python bench/image_val_part.py
  image_table_cpu_realval dc:0 hcdc:0 dc:1 hcdc:1 --proxy-seeds 6`` scores the same networks (6 training seeds on a proxy's training
  part) on DC's validation part, on HCDC's and on 1,000 real validation images: seed-mean Spearman
  0.49 / 0.40 / 0.65 and 0.43 / 0.44 / 0.40 for the two condensation seeds, with two training seeds'
  rankings agreeing at 0.02–0.39 (``bench/results/image_val_part_cpu_realval.md``): at this scale the
  networks trained on 100 images, not the validation part, limit the ranking. ``python
  bench/image_proxy_noise.py`` (``bench/results/image_proxy_noise_cpu_realval*.md``) measures how high a
  proxy can rank here: two samples of 10 real training images per class rank at 0.37 and 0.68 (4
  training seeds, 1,000 real validation images), with noise ceilings of 0.82 and 0.67 at 3 proxy
  seeds; longer training, a lower learning rate or full batches do not help; 50 per class rank at
  0.77 and 0.73. In the earlier version of this protocol (250:100, 4
  validation images per class, one proxy training seed) every method's Spearman was between −0.05
  and 0.23. The ground truth's own noise is in the table (seed-to-seed Spearman and the
  reliability of the seed mean, :func:`hcdc.metrics.seed_agreement`).

  Every preset gives the baselines the paper's validation part (``val_part="split"``: a random
  split of their own 30 images per class; :mod:`hcdc.image.condensers.base`).

  Budget, as measured by the committed runs: ``python bench/image_table.py --protocol cpu``
  (``bench/results/image_table_cpu.md``, as two one-thread processes of one condensation seed
  each): ground truth 811 s (25 architectures × 3 seeds × 480 steps), evaluation 404–484 s per
  proxy on one thread (25 × 3 seeds × 100 steps) × 9 methods × 2 condensation seeds,
  condensation of 30 images per class 0–445 s per proxy; total 3.25 h of one-thread compute. From
  nothing (empty cache, no committed ground truth) in one command, ``OMP_NUM_THREADS=2 python
  bench/image_table.py --protocol cpu --jobs 2 --out-dir bench/results/fromscratch`` (the two
  condensation seeds in two one-thread processes side by side) took 1.25 h of wall time on 2 cores,
  ground truth 1043 s included (``bench/results/fromscratch/image_table_cpu.md``). With real
  validation images (``OMP_NUM_THREADS=2 python bench/image_table.py --protocol cpu
  --protocol-options '{"val_part": "real"}' --name image_table_cpu_realval``; the
  methods make 10 images per class): evaluation ≈ 150 s per proxy on two threads, condensation
  0–122 s per proxy, total 1.13 h.
* ``"smoke"``: tiny everything, for checking the plumbing end to end in a minute or two.

Ranking on a proxy. The paper ranks by validation accuracy. On a proxy's few validation images
(200 for the cpu protocol) accuracies tie often, so the proxy score of an architecture is its mean
validation accuracy with the mean validation loss as tie-breaker: ``acc − 1e-6 · loss / max
loss`` (the loss term is below one image's worth of accuracy for any validation set under a
million images, so it only orders exact ties). The evaluation also records Spearman/Kendall of
the loss alone. The true ranking is by mean validation accuracy on the (subset of the) original
validation split.

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

import hashlib
import json
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, grad, stack_module_state, vmap
from tqdm.auto import tqdm

from ..artifacts import Proxy
from ..data.image import ImageData, data_fingerprint
from ..errors import ConfigError, DataError
from ..io import merge_json_entries, number, read_json_entries
from ..metrics import ranking_report
from ..paths import cache_dir
from .condensers.base import VAL_PARTS, seeded_generator
from .space import EDGES, Architecture, NB201Network, load_architectures

INIT_STREAM, SHUFFLE_STREAM = 1000, 1001  # seeded_generator streams of a training seed
EVAL_BATCH = 512
TIE_BREAK = 1e-6  # weight of the normalised loss in the proxy score (see the module docstring)
CACHE_FORMAT = 1

# fields that change the ground truth (the cache key); the others only concern proxies or the bench
_TRUTH_FIELDS = ("C", "N", "norm_groups", "epochs", "batch_size", "lr", "momentum", "weight_decay", "grad_clip", "resolution",
                 "train_subset", "val_subset", "test_subset", "seeds")
# fields that, with the proxy epochs and seeds, decide how a network trains on a proxy (the proxy-score cache key;
# the resolution is in the proxy's images; val_part concerns only how baselines make their proxies, and stack and
# channels_last change results only by rounding, as another thread count does)
_PROXY_TRAINING_FIELDS = ("C", "N", "norm_groups", "batch_size", "lr", "momentum", "weight_decay", "grad_clip")


@dataclass(frozen=True)
class ImageProtocol:
    """How an architecture is trained and scored, and the scale of an image-table run (see the module docstring).

    ``C``, ``N``: NB201Network's width and cells per stage; ``norm_groups``: its normalisation groups
    (1: layer norm, the default; None: instance norm, see the module docstring). ``epochs``: training epochs on the
    original data; ``proxy_epochs``: on a proxy's training part (None: ``epochs``). SGD with
    ``lr`` (cosine to 0), ``momentum``, ``weight_decay``, gradient-norm clipping at ``grad_clip``
    and batches of ``batch_size``. ``resolution``: images are average-pooled to this size when the
    data's are larger (None: keep). ``train_subset`` / ``val_subset`` / ``test_subset``: images per class
    of the original train / validation / test split used (None: all). ``seeds``: training seeds of the ground
    truth; ``proxy_seeds``: on a proxy (None: ``seeds``). ``num_archs``: the first that many of
    :func:`~hcdc.image.space.load_architectures`. ``ipc``: the proxies' images per class.
    ``val_part``: the baselines' validation part (``"real"``: real validation images; ``"split"``: a random
    split of the method's own images, the paper's; :mod:`hcdc.image.condensers.base`).
    ``amp`` / ``channels_last``: bfloat16 autocast and channels-last tensors, on CUDA only. ``stack``: how many
    networks (architecture × seed) train at once as one stacked model (:func:`train_stacked`; 1: one by one).
    """

    C: int = 16
    N: int = 1
    norm_groups: int | None = 1
    epochs: int = 50
    proxy_epochs: int | None = None
    batch_size: int = 64
    lr: float = 0.025
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    resolution: int | None = None
    train_subset: int | None = None
    val_subset: int | None = None
    test_subset: int | None = None
    seeds: tuple[int, ...] = field(default=(0, 1, 2, 3, 4))
    proxy_seeds: tuple[int, ...] | None = None
    num_archs: int = 100
    ipc: int = 50
    val_part: str = "split"
    amp: bool = False
    channels_last: bool = False
    stack: int = 1

    def __post_init__(self):
        object.__setattr__(self, "seeds", tuple(self.seeds))
        if self.proxy_seeds is not None:
            object.__setattr__(self, "proxy_seeds", tuple(self.proxy_seeds))
        positive = {"C": self.C, "N": self.N, "epochs": self.epochs, "batch_size": self.batch_size,
                    "num_archs": self.num_archs, "ipc": self.ipc, "proxy_epochs": self.proxy_epochs,
                    "resolution": self.resolution, "train_subset": self.train_subset, "val_subset": self.val_subset,
                    "test_subset": self.test_subset, "norm_groups": self.norm_groups, "stack": self.stack}
        for name, value in positive.items():
            optional = name in ("proxy_epochs", "resolution", "train_subset", "val_subset", "test_subset", "norm_groups")
            if value is None and optional:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"image protocol: {name} must be a positive integer, got {value!r}")
        for name in ("lr", "grad_clip"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
                raise ConfigError(f"image protocol: {name} must be a positive number, got {value!r}")
        if not 0 <= self.momentum < 1 or not self.weight_decay >= 0:
            raise ConfigError(f"image protocol: momentum must be in [0, 1) and weight_decay >= 0 "
                              f"(got {self.momentum!r}, {self.weight_decay!r})")
        for name in ("seeds", "proxy_seeds"):
            seeds = getattr(self, name)
            if seeds is None:
                continue
            if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
                raise ConfigError(f"image protocol: {name} must be a non-empty list of non-negative integers, got {seeds!r}")
            if len(set(seeds)) != len(seeds):
                raise ConfigError(f"image protocol: {name} has repeated seeds: {list(seeds)}")
        if self.val_part not in VAL_PARTS:
            raise ConfigError(f"image protocol: val_part must be one of {list(VAL_PARTS)}, got {self.val_part!r}")
        if self.num_archs > 100:
            raise ConfigError(f"image protocol: num_archs is at most 100 (the committed list), got {self.num_archs}")

    @property
    def epochs_on_proxy(self) -> int:
        return self.proxy_epochs if self.proxy_epochs is not None else self.epochs

    @property
    def seeds_on_proxy(self) -> tuple[int, ...]:
        return self.proxy_seeds if self.proxy_seeds is not None else self.seeds

    def as_dict(self) -> dict:
        d = asdict(self)
        d["seeds"] = list(self.seeds)
        d["proxy_seeds"] = None if self.proxy_seeds is None else list(self.proxy_seeds)
        return d

    def proxy_training(self) -> dict:
        """How a network trains on a proxy: the fields of ``_PROXY_TRAINING_FIELDS``, the proxy epochs and seeds."""
        d = self.as_dict()
        return {**{k: d[k] for k in _PROXY_TRAINING_FIELDS}, "epochs": self.epochs_on_proxy,
                "seeds": list(self.seeds_on_proxy)}

    def proxy_key(self) -> str:
        """A short stable hash of :meth:`proxy_training` (with the proxy's images, the proxy-score cache key)."""
        return _hash(self.proxy_training())

    def truth_key(self) -> str:
        """A short stable hash of the fields that determine the ground truth (the ground-truth cache key)."""
        d = self.as_dict()
        return _hash({k: d[k] for k in _TRUTH_FIELDS})

    def architectures(self) -> list[Architecture]:
        """The first ``num_archs`` of the committed architecture list."""
        return load_architectures()[: self.num_archs]

    def with_(self, **changes) -> ImageProtocol:
        """A copy with ``changes`` applied (validated)."""
        unknown = sorted(set(changes) - set(self.as_dict()))
        if unknown:
            raise ConfigError(f"unknown image protocol field(s) {unknown}; known: {', '.join(self.as_dict())}")
        return replace(self, **changes)


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


PROTOCOLS: dict[str, ImageProtocol] = {
    "full": ImageProtocol(C=16, N=1, epochs=50, proxy_epochs=50, resolution=32, seeds=(0, 1, 2, 3, 4),
                          num_archs=100, ipc=50, amp=True, channels_last=True, stack=10),
    "cpu": ImageProtocol(C=8, N=1, epochs=12, proxy_epochs=50, resolution=16, train_subset=250, val_subset=500,
                         test_subset=500, seeds=(0, 1, 2), proxy_seeds=(0, 1, 2), num_archs=25, ipc=10),
    "smoke": ImageProtocol(C=4, N=1, epochs=1, proxy_epochs=5, resolution=8, train_subset=20, val_subset=10,
                           seeds=(0,), num_archs=3, ipc=2),
}


def recorded_protocol(proxy: Proxy) -> ImageProtocol:
    """The image protocol recorded in an image proxy made by ``hcdc condense`` (ConfigError when absent): how
    :func:`proxy_parts`, evaluation and search prepare its images and train architectures on it."""
    saved = proxy.meta.get("protocol")
    if not isinstance(saved, dict):
        raise ConfigError("this image proxy records no protocol (make it with `hcdc condense`), so hcdc cannot tell "
                          "how to train architectures on it")
    try:
        return ImageProtocol(**{k: v for k, v in saved.items() if k != "name"})
    except TypeError as exc:
        raise ConfigError(f"the proxy's protocol is not one this version of hcdc reads: {exc}") from None


def get_protocol(name: str) -> ImageProtocol:
    """The preset ``name`` of :data:`PROTOCOLS`."""
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown image protocol {name!r}; known: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


# --- data ---------------------------------------------------------------------------------------------


def downsample(data: ImageData, resolution: int | None) -> ImageData:
    """``data`` with every image average-pooled to ``resolution``×``resolution`` (rounded back to uint8).

    Unchanged when ``resolution`` is None or the images already have that size; a ConfigError
    when the images are smaller or their size is not a multiple of ``resolution``.
    """
    h, w, _ = data.image_shape
    if resolution is None or (h, w) == (resolution, resolution):
        return data
    if h < resolution or w < resolution or h % resolution or w % resolution:
        raise ConfigError(f"cannot average-pool {h}x{w} images of '{data.name}' to {resolution}x{resolution} "
                          "(the size must be a multiple of the resolution)")
    kernel = (h // resolution, w // resolution)

    def pool(x: Tensor) -> Tensor:
        if len(x) == 0:
            return x.new_zeros((0, resolution, resolution, x.shape[-1]))
        out = [F.avg_pool2d(chunk.permute(0, 3, 1, 2).float(), kernel).round_().clamp_(0, 255).to(torch.uint8)
               for chunk in x.split(4096)]
        return torch.cat(out).permute(0, 2, 3, 1).contiguous()

    return replace(data, x_train=pool(data.x_train), x_val=pool(data.x_val), x_test=pool(data.x_test)).validate()


def class_subset(y: Tensor, per_class: int | None, num_classes: int, seed: int = 0) -> Tensor:
    """Positions (ascending) of at most ``per_class`` items of each class of ``y``, drawn with ``seed`` (all if None)."""
    if per_class is None:
        return torch.arange(len(y))
    rng = np.random.default_rng(seed)
    labels = y.numpy()
    keep = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(num_classes)]
    return torch.from_numpy(np.sort(np.concatenate(keep))).long()


def prepare_data(data: ImageData, protocol: ImageProtocol) -> ImageData:
    """The data a protocol works on: ``train_subset`` / ``val_subset`` / ``test_subset`` images per class
    of each split (a fixed seeded sample, kept in order), pooled to ``resolution``. Idempotent."""
    picks = {split: class_subset(data.split(split)[1], per_class, data.num_classes, seed=i)
             for i, (split, per_class) in enumerate((("train", protocol.train_subset), ("val", protocol.val_subset),
                                                     ("test", protocol.test_subset)))}
    if any(len(idx) < len(data.split(split)[1]) for split, idx in picks.items()):
        changes = {}
        for split, idx in picks.items():
            x, y = data.split(split)
            changes.update({f"x_{split}": x[idx], f"y_{split}": y[idx]})
        data = replace(data, **changes).validate()
    return downsample(data, protocol.resolution)


# --- training and scoring -------------------------------------------------------------------------


def _uses_cuda_tricks(device: torch.device, flag: bool) -> bool:
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
    channels_last = _uses_cuda_tricks(device, protocol.channels_last)
    net = net.to(device, memory_format=torch.channels_last) if channels_last else net.to(device)
    x, y = x.to(device), y.to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    alpha = arch.to_alpha(device=device)
    params = list(net.parameters())
    opt = torch.optim.SGD(params, lr=protocol.lr, momentum=protocol.momentum, weight_decay=protocol.weight_decay)
    steps = epochs * math.ceil(len(y) / protocol.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / max(steps, 1))))
    amp = _uses_cuda_tricks(device, protocol.amp)
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
    amp = _uses_cuda_tricks(device, protocol.amp)
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
    amp = _uses_cuda_tricks(device, protocol.amp)
    channels_last = _uses_cuda_tricks(device, protocol.channels_last)
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


# --- ground truth -----------------------------------------------------------------------------------

METRICS = ("val_acc", "val_loss", "test_acc")


@dataclass
class ImageGroundTruth:
    """True scores of ``archs`` (mean over the protocol's seeds) on the original data, in ``archs`` order."""

    archs: list[Architecture]
    val_acc: Tensor
    val_loss: Tensor
    test_acc: Tensor
    per_seed: list[dict]  # per architecture: {seed: {"val_acc", "val_loss", "test_acc"}}
    computed: int  # architectures trained in this call (the rest came from the cache)
    seconds: float  # wall time of this call
    compute_seconds: float  # training + scoring time of all archs, including cached ones (as first measured)
    cache_file: str | None = None

    def as_dict(self) -> dict:
        return {"architectures": [a.to_str() for a in self.archs], "val_acc": self.val_acc.tolist(),
                "val_loss": self.val_loss.tolist(), "test_acc": self.test_acc.tolist(), "computed": self.computed,
                "seconds": self.seconds, "compute_seconds": self.compute_seconds}


def _cached_per_architecture(path: Path, header: dict, keys: Sequence[str], compute, protocol: ImageProtocol,
                             seeds: Sequence[int], device: torch.device, desc: str,
                             progress: bool) -> tuple[dict, int, float]:
    """The entries of the JSON cache ``path`` for the architecture strings ``keys``, how many were computed, and
    their compute time (each entry's ``seconds`` summed, cached ones as first measured).

    Those the file lacks are computed in chunks of about one stack (``compute(chunk)`` → ``{key: entry}``), each
    entry given its ``seconds`` (the chunk's time over its size) and ``device``, and merged into the file as soon
    as its chunk is done (:func:`hcdc.io.merge_json_entries`: under a lock, atomically), so concurrent runs share
    work and an interrupted one resumes from the last finished chunk.
    """
    known = read_json_entries(path, "archs")
    missing = [k for k in dict.fromkeys(keys) if k not in known]
    if missing and protocol.amp and device.type != "cuda":
        warnings.warn(f"{desc}: training {len(missing)} architecture(s) x {len(seeds)} seed(s) of a protocol made for a CUDA "
                      f"GPU on {device.type}; expect it to be very slow (the 'full' protocol's ground truth is about 1,000 "
                      "hours on 2 CPU cores: bench/results/image_stack_full_truth_cpu.md)", stacklevel=3)
    bar = tqdm(total=len(missing), desc=desc, unit="arch", disable=not progress or not missing)
    for chunk in _stack_chunks(missing, protocol, seeds):
        t0 = time.perf_counter()
        entries = compute(chunk)
        seconds = (time.perf_counter() - t0) / len(chunk)
        entries = {k: {**e, "seconds": seconds, "device": str(device)} for k, e in entries.items()}
        merge_json_entries(path, "archs", entries, header)
        known.update(entries)
        bar.update(len(chunk))
    bar.close()
    return known, len(missing), float(sum(known[k]["seconds"] for k in dict.fromkeys(keys)))


def ground_truth_path(data: ImageData, protocol: ImageProtocol, cache: str | Path | None = None,
                      device: torch.device | str | None = None) -> Path:
    """The cache file of ``data`` (already :func:`prepare_data`'d) under ``protocol``.

    Keyed by the data's fingerprint, :meth:`ImageProtocol.truth_key` and the numeric precision
    (bf16 when CUDA autocast is on, else fp32).
    """
    return _cache_file(cache, "image_groundtruth", f"{data.name.lower()}-{data_fingerprint(data)}-{protocol.truth_key()}",
                       protocol, device)


def _cache_file(cache: str | Path | None, folder: str, stem: str, protocol: ImageProtocol,
                device: torch.device | str | None) -> Path:
    """``<cache>/<folder>/<stem>-<precision>.json`` (default cache :func:`hcdc.paths.cache_dir`); the precision is
    bf16 when CUDA autocast is on, else fp32."""
    precision = "bf16" if _uses_cuda_tricks(default_device(device), protocol.amp) else "fp32"
    return (Path(cache) if cache is not None else cache_dir()) / folder / f"{stem}-{precision}.json"


def image_ground_truth(
    data: ImageData,
    archs: Sequence[Architecture],
    protocol: ImageProtocol,
    cache: str | Path | None = None,
    *,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> ImageGroundTruth:
    """Mean validation accuracy / loss and test accuracy of ``archs`` trained on ``data`` under ``protocol``.

    ``data`` is first reduced by :func:`prepare_data`. Each architecture is trained once per seed
    of ``protocol.seeds`` on the training split and scored on the validation and test splits.
    Results are cached in one JSON file per (data fingerprint, protocol, precision) under
    ``<cache>/image_groundtruth/`` (default :func:`hcdc.paths.cache_dir`), one entry per
    architecture string; only missing architectures are trained, and each is merged into the file
    as soon as it is done, under an exclusive ``flock`` and with an atomic write, so concurrent
    runs share work without losing or corrupting entries and an interrupted run resumes.
    """
    start = time.perf_counter()
    archs = list(archs)
    if not archs:
        raise ConfigError("image ground truth needs at least one architecture")
    device = default_device(device)
    data = prepare_data(data, protocol)
    if len(data.y_val) == 0:
        raise DataError(f"dataset '{data.name}' has no validation images to rank architectures by")
    path = ground_truth_path(data, protocol, cache, device)
    header = {"format": CACHE_FORMAT, "dataset": data.name, "summary": data.summary(), "protocol": protocol.as_dict(),
              "truth_key": protocol.truth_key()}
    keys = [a.to_str() for a in archs]
    splits = None

    def train_and_score(chunk: list[str]) -> dict[str, dict]:
        nonlocal splits
        if splits is None:  # moved to the device only when something is missing
            splits = {s: (data.normalized(s).to(device), data.split(s)[1].to(device)) for s in ("train", "val", "test")}
        entries: dict[str, dict] = {}
        jobs = [(Architecture.parse(key), seed) for key in chunk for seed in protocol.seeds]
        trained = train_networks(jobs, *splits["train"], protocol, num_classes=data.num_classes, device=device)
        for (arch, seed), params in zip(jobs, trained):
            val = score_architecture(arch, params, *splits["val"], protocol, device=device)
            test = (score_architecture(arch, params, *splits["test"], protocol, device=device)
                    if len(splits["test"][1]) else {"acc": float("nan")})
            seeds = entries.setdefault(arch.to_str(), {})
            seeds[str(seed)] = {"val_acc": val["acc"], "val_loss": val["loss"], "test_acc": test["acc"]}
        return {key: {**{m: float(np.mean([s[m] for s in seeds.values()])) for m in METRICS}, "seeds": seeds}
                for key, seeds in entries.items()}

    known, missing, compute_seconds = _cached_per_architecture(path, header, keys, train_and_score, protocol,
                                                               protocol.seeds, device, f"ground truth ({data.name})",
                                                               progress)
    values = {m: torch.tensor([number(known[k][m]) for k in keys], dtype=torch.float64) for m in METRICS}
    return ImageGroundTruth(archs, values["val_acc"], values["val_loss"], values["test_acc"],
                            [known[k]["seeds"] for k in keys], missing, time.perf_counter() - start, compute_seconds,
                            str(path))


# --- proxy evaluation -------------------------------------------------------------------------------


def proxy_score(acc: Tensor | Sequence[float], loss: Tensor | Sequence[float]) -> Tensor:
    """Accuracy with the loss as tie-breaker: ``acc − 1e-6 · loss / max(loss)`` (higher is better)."""
    acc, loss = torch.as_tensor(acc, dtype=torch.float64), torch.as_tensor(loss, dtype=torch.float64)
    top = float(loss.abs().max()) if len(loss) else 0.0
    return acc - TIE_BREAK * loss / (top if top > 0 else 1.0)


@dataclass
class ImageProxyEvaluation:
    """How a proxy ranks architectures: its scores, the truth, the ranking report, Perf and the oracle's Perf."""

    archs: list[Architecture]
    proxy_acc: Tensor
    proxy_loss: Tensor
    proxy_score: Tensor
    truth: ImageGroundTruth
    report: dict[str, float]
    perf: float  # true test accuracy of the proxy's pick
    oracle_perf: float  # true test accuracy of the architecture with the best true validation accuracy
    pick: int
    oracle_pick: int
    seconds: float  # training + scoring time of every architecture on the proxy, cached ones as first measured
    computed: int  # architectures trained in this call (the rest came from the cache)
    wall_seconds: float  # wall time of this call

    def row(self) -> dict:
        return {**self.report, "perf": self.perf, "oracle_perf": self.oracle_perf, "pick": self.archs[self.pick].to_str(),
                "oracle_pick": self.archs[self.oracle_pick].to_str(), "seconds": self.seconds,
                "seconds_per_arch": self.seconds / len(self.archs), "computed": self.computed,
                "wall_seconds": self.wall_seconds}

    def scores(self) -> dict:
        """Per-architecture proxy numbers, JSON-ready."""
        return {"score": self.proxy_score.tolist(), "val_acc": self.proxy_acc.tolist(), "val_loss": self.proxy_loss.tolist()}


def proxy_images(proxy: Proxy, protocol: ImageProtocol) -> tuple[Tensor, Tensor]:
    """The proxy's images at the protocol's resolution (average-pooled when larger)."""
    x = proxy.tensors["x"].float()
    h, w = x.shape[-2:]
    r = protocol.resolution
    if r is not None and (h, w) != (r, r):
        if h < r or w < r or h % r or w % r:
            raise ConfigError(f"the proxy's {h}x{w} images cannot be average-pooled to the protocol's {r}x{r}")
        x = F.avg_pool2d(x, (h // r, w // r))
    return x, proxy.tensors["y"]


def proxy_parts(proxy: Proxy, protocol: ImageProtocol,
                device: torch.device | str | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x_train, y_train, x_val, y_val) of an image proxy, its images at the protocol's resolution (on ``device``,
    default the CPU)."""
    if proxy.kind != "image":
        raise ConfigError(f"expected an image proxy, got a {proxy.kind} proxy")
    x, y = proxy_images(proxy, protocol)
    train, val = proxy.tensors["train_mask"], proxy.tensors["val_mask"]
    return tuple(t.to(device) if device is not None else t for t in (x[train], y[train], x[val], y[val]))


def proxy_scores_path(parts: tuple[Tensor, Tensor, Tensor, Tensor], num_classes: int, protocol: ImageProtocol,
                      cache: str | Path | None = None, device: torch.device | str | None = None) -> Path:
    """The cache file of the per-architecture numbers on the proxy whose :func:`proxy_parts` are ``parts``.

    Keyed by a hash of those tensors (the images at the protocol's resolution and their labels) and the class
    count, by :meth:`ImageProtocol.proxy_key` (how networks train on them) and the numeric precision, as the
    ground truth's (:func:`ground_truth_path`).
    """
    digest = hashlib.sha256(f"classes:{num_classes}:".encode())
    for t in parts:
        t = t.detach().cpu().contiguous()
        digest.update(f"{t.dtype}:{tuple(t.shape)}:".encode())
        digest.update(t.numpy().tobytes())
    return _cache_file(cache, "image_proxy_scores", f"{digest.hexdigest()[:16]}-{protocol.proxy_key()}", protocol, device)


def score_on_proxy(arch: Architecture, parts: tuple[Tensor, Tensor, Tensor, Tensor], num_classes: int,
                   protocol: ImageProtocol, *, device: torch.device | str | None = None) -> dict[str, float]:
    """A proxy's numbers for ``arch`` (``parts`` from :func:`proxy_parts`): trained ``protocol.proxy_epochs`` epochs
    on the training part once per seed of ``protocol.proxy_seeds``, scored on the validation part; mean ``acc`` and
    ``loss``."""
    return scores_on_proxy([arch], parts, num_classes, protocol, device=device)[0]


def scores_on_proxy(archs: Sequence[Architecture], parts: tuple[Tensor, Tensor, Tensor, Tensor], num_classes: int,
                    protocol: ImageProtocol, *, device: torch.device | str | None = None) -> list[dict[str, float]]:
    """:func:`score_on_proxy` for each of ``archs``, their networks trained ``protocol.stack`` at a time."""
    device = default_device(device)
    x_tr, y_tr, x_val, y_val = parts
    jobs = [(arch, seed) for arch in archs for seed in protocol.seeds_on_proxy]
    trained = train_networks(jobs, x_tr, y_tr, protocol, num_classes=num_classes, epochs=protocol.epochs_on_proxy,
                             device=device)
    runs = [score_architecture(arch, params, x_val, y_val, protocol, device=device) for (arch, _), params in zip(jobs, trained)]
    per_arch = len(protocol.seeds_on_proxy)
    return [{m: float(np.mean([r[m] for r in runs[i : i + per_arch]])) for m in ("acc", "loss")}
            for i in range(0, len(runs), per_arch)]


def _stack_chunks(items: Sequence, protocol: ImageProtocol, seeds: Sequence[int]) -> list[list]:
    """``items`` (architectures) in consecutive groups whose networks, one per seed, fill about one stack."""
    size = max(1, protocol.stack // len(seeds))
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def evaluate_image_proxy(
    proxy: Proxy,
    data: ImageData | None,
    archs: Sequence[Architecture],
    protocol: ImageProtocol,
    truth: ImageGroundTruth,
    *,
    cache: str | Path | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> ImageProxyEvaluation:
    """Rank ``archs`` on ``proxy`` and compare with ``truth`` (from :func:`image_ground_truth`).

    Each architecture trains ``protocol.proxy_epochs`` epochs on the proxy's training part, once per
    seed of ``protocol.proxy_seeds``, and is scored on the proxy's validation part; the proxy score
    is the mean accuracy with the mean loss as tie-breaker (:func:`proxy_score`). The report holds
    Spearman / Kendall / top-5 overlap / regret of that score against the true validation accuracy
    (:func:`hcdc.metrics.ranking_report`), plus ``spearman_acc`` (accuracy alone, ties averaged)
    and ``spearman_loss`` / ``kendall_loss`` (the loss alone). ``perf`` is the true test accuracy of
    the proxy's best architecture (the first on ties), ``oracle_perf`` that of the truly best one.
    ``data`` (optional) is checked against the proxy's dataset name and class count.

    Each architecture's proxy numbers are cached as soon as its chunk of networks is trained, in one JSON file
    per proxy (:func:`proxy_scores_path`, under ``<cache>/image_proxy_scores/``, default
    :func:`hcdc.paths.cache_dir`), so an interrupted evaluation resumes and a repeated one trains nothing.
    """
    start = time.perf_counter()
    archs = list(archs)
    if proxy.kind != "image":
        raise ConfigError(f"evaluate_image_proxy needs an image proxy, got a {proxy.kind} proxy")
    if [a.to_str() for a in truth.archs] != [a.to_str() for a in archs]:
        raise ConfigError("the ground truth is for other architectures than those to evaluate")
    if len(archs) < 2:
        raise ConfigError("ranking needs at least two architectures")
    if data is not None and (data.num_classes != proxy.num_classes or data.name != proxy.meta["dataset"]):
        raise ConfigError(f"the proxy is of '{proxy.meta['dataset']}' with {proxy.num_classes} classes, "
                          f"the data '{data.name}' has {data.num_classes}")
    device = default_device(device)
    parts = proxy_parts(proxy, protocol)
    path = proxy_scores_path(parts, proxy.num_classes, protocol, cache, device)
    header = {"format": CACHE_FORMAT, "dataset": proxy.meta["dataset"], "method": proxy.meta["method"],
              "num_classes": proxy.num_classes, "training": protocol.proxy_training()}
    keys, on_device = [a.to_str() for a in archs], None

    def train_and_score(chunk: list[str]) -> dict[str, dict]:
        nonlocal on_device
        if on_device is None:  # moved to the device only when something is missing
            on_device = tuple(t.to(device) for t in parts)
        results = scores_on_proxy([Architecture.parse(k) for k in chunk], on_device, proxy.num_classes, protocol,
                                  device=device)
        return dict(zip(chunk, results))

    known, computed, seconds = _cached_per_architecture(path, header, keys, train_and_score, protocol,
                                                        protocol.seeds_on_proxy, device, f"proxy {proxy.meta['method']}",
                                                        progress)
    acc_t = torch.tensor([known[k]["acc"] for k in keys], dtype=torch.float64)
    loss_t = torch.tensor([known[k]["loss"] for k in keys], dtype=torch.float64)
    score = proxy_score(acc_t, loss_t)
    true = truth.val_acc.numpy()
    report = ranking_report(score.numpy(), true, proxy_higher_is_better=True, k=min(5, len(archs)))
    by_loss = ranking_report(loss_t.numpy(), true, proxy_higher_is_better=False, k=min(5, len(archs)))
    by_acc = ranking_report(acc_t.numpy(), true, proxy_higher_is_better=True, k=min(5, len(archs)))
    report.update(spearman_acc=by_acc["spearman"], spearman_loss=by_loss["spearman"], kendall_loss=by_loss["kendall"])
    pick = int(np.argmax(score.numpy()))
    oracle = int(np.argmax(true))
    return ImageProxyEvaluation(archs, acc_t, loss_t, score, truth, report, float(truth.test_acc[pick]),
                                float(truth.test_acc[oracle]), pick, oracle, seconds, computed,
                                time.perf_counter() - start)


__all__ = [
    "PROTOCOLS", "ImageGroundTruth", "ImageProtocol", "ImageProxyEvaluation", "class_subset", "data_fingerprint",
    "default_device", "downsample", "evaluate_image_proxy", "get_protocol", "ground_truth_path", "image_ground_truth",
    "prepare_data", "proxy_images", "proxy_parts", "proxy_score", "proxy_scores_path", "recorded_protocol",
    "score_architecture", "score_on_proxy", "scores_on_proxy",
    "train_architecture", "train_networks", "train_stacked",
]
