"""The image condenser registry, the base class and what every image condenser shares.

An image condenser maps an :class:`~hcdc.data.image.ImageData`, a number of images per class
(ipc) and a seed to an image :class:`~hcdc.artifacts.Proxy`: ``ipc`` training images per class,
produced by the method, and ``n_val`` validation images per class (:func:`val_per_class`, the
original train:val proportion). A baseline's validation part is chosen by its option ``val_part``:

* ``"split"``: HCDC's protocol for baselines (Ding et al., ICLR 2024, Sec. 6: "we randomly split the
  condensed dataset to obtain the condensed validation data while keeping the train-validation split
  ratio"): the method makes ``ipc + n_val`` images per class, split at random per class into the
  training and the validation part (:func:`split_synthesis`), so a condensation method's validation
  images are condensed ones and a coreset's are picked training images;
* ``"real"`` (the default): the method makes ``ipc`` images per class and the validation part is
  real validation images drawn per class (:func:`validation_split`), a stronger validation part than
  the paper gives the baselines, and the one HCDC's learned set starts from.

The image protocols (:data:`hcdc.image.protocol.PROTOCOLS`, through which ``hcdc condense`` and the
bench scripts build condensers) pass ``"split"``, the paper's setting; a condenser built directly
keeps ``"real"``, the validation part that lets condensed proxies rank better here
(``bench/results/image_table_cpu.md`` against ``image_table_cpu_realval.md``).

HCDC replaces the validation part with a learned set. Proxy images are normalised
with the training split's per-channel mean and standard deviation (``ImageData.normalized``).

Randomness comes from ``torch.Generator`` objects derived from the seed, one stream per purpose
(:func:`seeded_generator`), so a seed gives bit-identical proxies on CPU and every baseline at one
seed gets the same validation images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from ...artifacts import FORMAT_VERSION, Proxy
from ...checkpoint import Checkpoints, condensation_store
from ...data.image import ImageData, data_fingerprint
from ...errors import ConfigError, DataError
from ...registry import Registry, check_known_options
from ...runinfo import package_versions


@dataclass
class Synthesis:
    """What a method produced: normalised training images [n, C, H, W] and their labels, seconds per stage,
    and any extra tensors and metadata for the proxy."""

    x: Tensor
    y: Tensor
    timings: dict[str, float]
    tensors: dict[str, Tensor] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


IMAGE_CONDENSERS = Registry("image condenser")
register_image_condenser = IMAGE_CONDENSERS.register

SYNTHESIS_STREAM, VALIDATION_STREAM = 0, 1
VAL_PARTS = ("real", "split")
BASELINE_DEFAULTS: dict = {"val_part": "real"}  # every baseline's options include these (see the module docstring)
BASELINE_CHOICES: dict[str, tuple] = {"val_part": VAL_PARTS}


def make_image_condenser(name: str, **options) -> ImageCondenser:
    """The registered image condenser ``name`` built with ``options``; ConfigError for an unknown name or option."""
    return IMAGE_CONDENSERS.make(name, **options)


def seeded_generator(seed: int, stream: int) -> torch.Generator:
    """A CPU generator for ``stream`` of condensation seed ``seed``; streams of one seed are independent."""
    state = np.random.SeedSequence([int(seed), int(stream)]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def class_indices(y: Tensor, num_classes: int) -> list[Tensor]:
    """For each class, the positions of its items in ``y`` (ascending)."""
    return [(y == c).nonzero().flatten() for c in range(num_classes)]


def check_seed(seed: int) -> None:
    """ConfigError unless ``seed`` is a non-negative integer."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"condensation seed must be a non-negative integer, got {seed!r}")


def check_images_per_class(data: ImageData, ipc: int, needed: int | None = None, what: str = "") -> None:
    """ConfigError unless ``ipc`` is a positive integer; DataError when a class has fewer than ``needed``
    (default ``ipc``; ``what`` says what for) training images."""
    if isinstance(ipc, bool) or not isinstance(ipc, int) or ipc < 1:
        raise ConfigError(f"images per class must be a positive integer, got {ipc!r}")
    needed = ipc if needed is None else needed
    counts = torch.bincount(data.y_train, minlength=data.num_classes)
    short = (counts < needed).nonzero().flatten()
    if short.numel():
        c = int(short[0])
        raise DataError(f"dataset '{data.name}': class {c} has {int(counts[c])} training images, "
                        f"fewer than {what or f'ipc={ipc}'}")


def val_per_class(data: ImageData, ipc: int) -> int:
    """Validation images per class of a proxy with ``ipc`` training images per class: ``round(ipc·|val|/|train|)``, at least 1."""
    if len(data.y_val) == 0:
        raise DataError(f"dataset '{data.name}' has no validation images to give the proxy a validation part")
    return max(1, round(ipc * len(data.y_val) / len(data.y_train)))


def validation_split(data: ImageData, ipc: int, seed: int, per_class: int | None = None) -> Tensor:
    """Positions in ``data``'s validation split of the proxy's validation images: a seeded uniform sample per class.

    ``per_class`` (default :func:`val_per_class`) images of each class, classes in order; DataError
    when a class has too few.
    """
    n = val_per_class(data, ipc) if per_class is None else per_class
    g = seeded_generator(seed, VALIDATION_STREAM)
    picks = []
    for c, members in enumerate(class_indices(data.y_val, data.num_classes)):
        if members.numel() < n:
            raise DataError(f"dataset '{data.name}': class {c} has {members.numel()} validation images, the proxy needs {n}")
        picks.append(members[torch.randperm(members.numel(), generator=g)[:n]])
    return torch.cat(picks)


def split_synthesis(result: Synthesis, ipc: int, seed: int, num_classes: int) -> tuple[Synthesis, Tensor, Tensor, dict[str, Tensor]]:
    """``result``'s images split at random per class: ``ipc`` per class for training, the rest for validation.

    Returns the training part as a Synthesis (classes in order; extra tensors with one row per
    image keep their training rows), the validation images and labels, and those extra tensors'
    validation rows as ``val_<name>``. The split is drawn from the seed's validation stream.
    """
    g = seeded_generator(seed, VALIDATION_STREAM)
    train, val = [], []
    for members in class_indices(result.y, num_classes):
        order = members[torch.randperm(members.numel(), generator=g)]
        train.append(order[:ipc])
        val.append(order[ipc:])
    train, val = torch.cat(train), torch.cat(val)
    rows = {k: v for k, v in result.tensors.items() if v.ndim and v.shape[0] == len(result.y)}
    part = Synthesis(result.x[train], result.y[train], result.timings,
                     {**result.tensors, **{k: v[train] for k, v in rows.items()}}, result.meta)
    return part, result.x[val], result.y[val], {f"val_{k}": v[val] for k, v in rows.items()}


def _check_option(condenser: str, key: str, value, default, choices: tuple | None, minimum: int):
    """``value`` for option ``key`` converted to its default's type; ConfigError when it does not fit."""
    where = f"image condenser {condenser!r} option {key!r}"
    if choices is not None:
        if value not in choices:
            raise ConfigError(f"{where} must be one of {list(choices)}, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{where} must be a positive number, got {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    if value is None and default is None:  # an optional integer: None picks a value from ipc
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where} must be an integer >= {minimum}, got {value!r}")
    return value


class ImageCondenser:
    """An image condensation method: validated options and ``condense(data, ipc, seed) -> Proxy``.

    Subclasses list their options with defaults in ``defaults`` (a float default takes positive
    numbers, an int or None default integers of at least ``minimum.get(name, 1)``, ``None``
    meaning "derived from ipc"), the allowed values of choice options in ``choices``, and may
    check further in :meth:`check_options`. Unknown or unfit options are a ConfigError.
    """

    name: str = ""
    defaults: ClassVar[dict] = {}
    choices: ClassVar[dict[str, tuple]] = {}
    minimum: ClassVar[dict[str, int]] = {}

    def __init__(self, **options):
        check_known_options("image condenser", self.name, options, self.defaults)
        self.options = {
            key: _check_option(self.name, key, options.get(key, default), default, self.choices.get(key), self.minimum.get(key, 1))
            for key, default in self.defaults.items()
        }
        self.check_options()

    def check_options(self) -> None:
        """Further checks of ``self.options`` (ConfigError); none by default."""

    def condense(self, data: ImageData, ipc: int, seed: int, progress: bool = False,
                 checkpoints: str | Path | None = None) -> Proxy:
        """A proxy of ``data`` with ``ipc`` training images per class, built with condensation seed ``seed``.

        Checks the arguments, runs :meth:`synthesize` and assembles the proxy (:meth:`_proxy`) with
        the validation part of option ``val_part`` (module docstring): real validation images
        (:func:`validation_split`) or a random split of the method's images
        (:func:`split_synthesis`). With ``checkpoints`` (a folder), the method's loops keep
        snapshots there (:mod:`hcdc.checkpoint`), so the same call after an interruption resumes
        and gives the same proxy; they are removed once it is built.
        """
        check_seed(seed)
        check_images_per_class(data, ipc)
        store = self.checkpoints(checkpoints, data, ipc, seed)
        if self.options.get("val_part", "real") == "split":
            total = ipc + val_per_class(data, ipc)
            check_images_per_class(data, ipc, total, f"the {total} per class (ipc {ipc} + validation) that val_part 'split' needs")
            parts = split_synthesis(self.synthesize(data, total, seed, progress, store), ipc, seed, data.num_classes)
            return store.finish(self._proxy(data, ipc, seed, *parts))
        val = validation_split(data, ipc, seed)
        result = self.synthesize(data, ipc, seed, progress, store)
        return store.finish(self._proxy(data, ipc, seed, result, data.normalized("val")[val], data.y_val[val], {"val_source": val}))

    def checkpoints(self, root: str | Path | None, data: ImageData, ipc: int, seed: int) -> Checkpoints:
        """The snapshot store of this method's work on ``data`` at ``ipc`` and ``seed`` under ``root`` (None: keeps nothing)."""
        return condensation_store(root, "image", data.name, lambda: data_fingerprint(data), self.name, self.options,
                                  {"ipc": int(ipc)}, seed)

    def synthesize(self, data: ImageData, ipc: int, seed: int, progress: bool, checkpoints: Checkpoints) -> Synthesis:
        """The method itself: ``ipc`` training images per class of ``data`` for condensation seed ``seed``;
        its long loops resume from ``checkpoints``."""
        raise NotImplementedError

    def _proxy(self, data: ImageData, ipc: int, seed: int, result: Synthesis, x_val: Tensor, y_val: Tensor,
               val_tensors: dict[str, Tensor]) -> Proxy:
        """The proxy of ``result``'s training images and the (normalised) validation images ``x_val``, validated.

        Adds ``val_tensors`` (e.g. ``val_source``: the validation images' positions in ``data``'s
        validation split) and the standard metadata to ``result``'s own tensors and metadata.
        """
        n_train, n_val = len(result.y), len(y_val)
        std = torch.where(data.std > 0, data.std, 1.0)  # as ImageData.normalized: a constant channel is not scaled
        proxy = Proxy(
            kind="image",
            tensors={
                "x": torch.cat([result.x.detach().float(), x_val.detach().float()]).contiguous(),
                "y": torch.cat([result.y.long(), y_val.long()]),
                "train_mask": torch.arange(n_train + n_val) < n_train,
                "val_mask": torch.arange(n_train + n_val) >= n_train,
                **val_tensors,
                **result.tensors,
            },
            meta={
                "format_version": FORMAT_VERSION,
                "kind": "image",
                "dataset": data.name,
                "method": self.name,
                "images_per_class": int(ipc),
                "normalization": {"mean": data.mean.tolist(), "std": std.tolist()},
                "num_classes": data.num_classes,
                "seeds": {"condense": int(seed)},
                "config": dict(self.options),
                "versions": package_versions(),
                "timings": {k: float(v) for k, v in result.timings.items()},
                "train_images": n_train,
                "val_images": n_val,
                "fraction_of_training_set": n_train / len(data.y_train),
                **result.meta,
            },
        )
        proxy.validate()
        return proxy

