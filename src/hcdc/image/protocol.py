"""The image track's evaluation protocol: how NAS-Bench-201 cells are trained and ranked, and on which data.

This module holds :class:`ImageProtocol`, its presets and the data preparation; the rest of the protocol is
:mod:`hcdc.image.training` (training and scoring networks), :mod:`hcdc.image.groundtruth` (the true ranking)
and :mod:`hcdc.image.evaluate` (ranking on a proxy), with :mod:`hcdc.image.cache` for their per-architecture caches.

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
  vmapped model, :func:`~hcdc.image.training.train_stacked`), on CUDA in bfloat16 autocast (channels-last tensors where a
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
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..artifacts import Proxy
from ..data.image import ImageData
from ..errors import ConfigError
from .condensers.base import VAL_PARTS
from .space import Architecture, load_architectures

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
    (1: layer norm, the default; None: instance norm, see :mod:`hcdc.image.training`). ``epochs``: training epochs on the
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
    networks (architecture × seed) train at once as one stacked model (:func:`~hcdc.image.training.train_stacked`; 1: one by one).
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
    :func:`~hcdc.image.evaluate.proxy_parts`, evaluation and search prepare its images and train architectures on it."""
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
