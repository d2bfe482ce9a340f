"""The HCDC image condenser: a standard condenser's training set plus a calibrated validation set.

Ding et al., "Calibrated Dataset Condensation for Faster Hyperparameter Search" (ICLR 2024),
Algorithm 1, for architecture search over NAS-Bench-201 cells. S_train is exactly what the
pluggable ``train_method`` (any registered image condenser but ``hcdc``; ``dc`` by default, with
options ``train_options``) synthesises for the same data, ipc and seed; S_val (``val_per_class``
images per class, by default the baselines' rule :func:`~.base.val_per_class`) is learned by
hypergradient alignment with respect to the relaxed cell's mixing weights
(:mod:`hcdc.image.calibrate`), starting from the very validation images the baselines' proxies
get at this seed (:func:`~.base.validation_split`), so learning is the only difference.

Trajectories start from ``candidates`` architectures drawn with the seed's own stream from the
cells **not** in the committed list of 100 evaluation architectures
(:func:`hcdc.image.space.load_architectures`) and with a path from input to output, so the
ranking is measured on architectures held out from condensation; ``architectures`` (a list of
NAS-Bench-201 strings) replaces the draw. ``candidates_from="evaluation"`` starts them instead from the first
``candidates`` architectures of that list, the ones a table ranks: the paper's setting, where Algorithm 1's
candidates are the search space being ranked (transductive: condensation then has seen hypergradients of
the very architectures it is judged on, on the real data). The proxy's ``val_source`` holds the positions of the
real validation images S_val started from (their labels are S_val's, also with ``val_init="noise"``);
the metadata adds ``train_method``, ``train_meta`` (that method's metadata and timings),
``alignment_history`` (1 − cos per S_val step), ``alignment_points``, ``alignment_skipped``,
``candidates`` and ``trajectories`` (start and DARTS-discretised end of each), and the timings
are ``{"train_set", "validation_set"}`` in seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch

from ...artifacts import Proxy
from ...data.image import ImageData
from ...errors import ConfigError
from ...registry import check_known_options
from ..augment import parse_strategy
from ..calibrate import CalibrationConfig, RealData, calibrate_validation, sample_candidates
from ..space import Architecture, NB201Network, load_architectures
from .base import (
    IMAGE_CONDENSERS,
    ImageCondenser,
    Synthesis,
    check_images_per_class,
    check_seed,
    make_image_condenser,
    register_image_condenser,
    seeded_generator,
    validation_split,
)

CALIBRATION_STREAM, CANDIDATE_STREAM = 2, 3

_FLOAT_MAY_BE_ZERO = ("weight_decay", "momentum")


@register_image_condenser("hcdc")
class HCDCCondenser(ImageCondenser):
    """HCDC for images: S_train from ``train_method``, S_val learned to align hypergradients w.r.t. architecture weights.

    Options (``defaults`` and ``structured_defaults``):

    - the fields of :class:`~hcdc.image.calibrate.CalibrationConfig` (loop counts, step sizes,
      Neumann terms, real-side batch sizes, ``projection``, ``real_theta``, ``val_strategy``);
    - ``C``, ``N``, ``norm_groups``: the relaxed NB201Network that trains along trajectories
      (16, 1, instance norm: the paper's search network; pass the evaluation protocol's width);
    - ``val_init`` (``real``/``noise``), ``val_per_class`` (None: the baselines' rule);
    - ``train_method`` and ``train_options`` (a dict for that condenser); ``architectures``
      (None: ``candidates`` architectures, drawn outside the evaluation list or, with ``candidates_from``
      ``"evaluation"``, its first ones; else a list of NAS-Bench-201 strings).

    Cost (measured once, one thread of a 2-core machine shared with another job): at C=8, N=1,
    ten classes of 16x16 images, ipc 10 and 20 validation images, one trajectory with the defaults
    (40 steps of both networks, 3 alignment points: g_T on 64 + 128 real images, g_S and its
    backward, 8 Neumann terms) took 25 s for a parameter-free cell and 42 s for a cell of four
    convolutions (10–13 s per point, the mixed partials over all 24 operations dominating), so
    the default 6 candidates take about 3–4 minutes on top of ``train_method``'s own time.
    """

    defaults: ClassVar[dict] = {
        **{k: v for k, v in CalibrationConfig().as_dict().items() if k not in ("real_theta", "weight_decay", "momentum")},
        "C": 16,
        "N": 1,
        "norm_groups": None,
        "val_init": "real",
        "val_per_class": None,
        "train_method": "dc",
        "candidates_from": "held_out",
    }
    structured_defaults: ClassVar[dict] = {
        "real_theta": True,
        "weight_decay": CalibrationConfig.weight_decay,
        "momentum": CalibrationConfig.momentum,
        "train_options": {},
        "architectures": None,
    }
    choices: ClassVar[dict[str, tuple]] = {"val_init": ("real", "noise"), "projection": ("simplex", "clip"),
                                           "candidates_from": ("held_out", "evaluation")}
    minimum: ClassVar[dict[str, int]] = {"repeats": 1, "warmup": 1, "neumann_terms": 0, "real_batches": 1,
                                         "val_steps": 0, "power_iterations": 1}

    def __init__(self, **options):
        check_known_options("image condenser", self.name, options, {**self.defaults, **self.structured_defaults})
        structured = {k: options.pop(k, d) for k, d in self.structured_defaults.items()}
        super().__init__(**options)
        self.options.update(self._check_structured(structured))
        o = self.options
        self.config = CalibrationConfig(**{k: o[k] for k in CalibrationConfig().as_dict()})

    def check_options(self) -> None:
        o = self.options
        if o["val_strategy"] != "none":
            parse_strategy(o["val_strategy"])
        method = o["train_method"]
        if method == self.name or method not in IMAGE_CONDENSERS:
            known = ", ".join(sorted(set(IMAGE_CONDENSERS) - {self.name}))
            raise ConfigError(f"image condenser 'hcdc' option 'train_method' must be one of: {known} (got {method!r})")
        listed = len(load_architectures())
        if o["candidates_from"] == "evaluation" and o["candidates"] > listed:
            raise ConfigError(f"image condenser 'hcdc': candidates_from 'evaluation' takes the first 'candidates' of the "
                              f"{listed} evaluation architectures, got candidates={o['candidates']}")
        if o["warmup"] > o["train_steps"]:
            raise ConfigError(f"image condenser 'hcdc': warmup ({o['warmup']}) exceeds train_steps ({o['train_steps']}), so no point would be aligned")

    def _check_structured(self, values: dict) -> dict:
        """The options that are not scalars of :func:`~.base._check_option`'s kinds, checked; ConfigError otherwise."""
        where = "image condenser 'hcdc' option"
        if not isinstance(values["real_theta"], bool):
            raise ConfigError(f"{where} 'real_theta' must be True or False, got {values['real_theta']!r}")
        for key in _FLOAT_MAY_BE_ZERO:
            v = values[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < float("inf"):
                raise ConfigError(f"{where} {key!r} must be a non-negative number, got {v!r}")
            values[key] = float(v)
        if not isinstance(values["train_options"], dict):
            raise ConfigError(f"{where} 'train_options' must be a dict of options for {self.options['train_method']!r}, "
                              f"got {values['train_options']!r}")
        values["train_options"] = dict(values["train_options"])
        if values["architectures"] is not None and self.options["candidates_from"] != "held_out":
            raise ConfigError(f"{where} 'architectures' names the candidates itself, so 'candidates_from' must stay "
                              f"'held_out', got {self.options['candidates_from']!r}")
        make_image_condenser(self.options["train_method"], **values["train_options"])  # ConfigError if they do not fit
        archs = values["architectures"]
        if archs is not None:
            if isinstance(archs, str) or not isinstance(archs, (list, tuple)) or not archs:
                raise ConfigError(f"{where} 'architectures' must be None or a non-empty list of NAS-Bench-201 strings, got {archs!r}")
            values["architectures"] = [Architecture.parse(a).to_str() if isinstance(a, str) else _not_a_string(a) for a in archs]
        return values

    def train_condenser(self) -> ImageCondenser:
        """The condenser that makes S_train."""
        return make_image_condenser(self.options["train_method"], **self.options["train_options"])

    def candidates(self, seed: int) -> list[Architecture]:
        """The trajectories' starting architectures: the given list, the first ``candidates`` evaluation architectures
        (``candidates_from="evaluation"``), or a seeded draw outside the evaluation list (the default)."""
        o = self.options
        if o["architectures"] is not None:
            return [Architecture.parse(a) for a in o["architectures"]]
        evaluation = load_architectures()
        if o["candidates_from"] == "evaluation":
            return evaluation[: o["candidates"]]
        return sample_candidates(o["candidates"], seeded_generator(seed, CANDIDATE_STREAM), set(evaluation))

    def condense(self, data: ImageData, ipc: int, seed: int, progress: bool = False,
                 checkpoints: str | Path | None = None) -> Proxy:
        """The proxy: ``train_method``'s synthetic training set and the learned validation set (module docstring);
        ``checkpoints`` as for :meth:`ImageCondenser.condense` (both stages resume)."""
        check_seed(seed)
        check_images_per_class(data, ipc)
        o = self.options
        store = self.checkpoints(checkpoints, data, ipc, seed)
        val = validation_split(data, ipc, seed, o["val_per_class"])
        train = self.train_condenser().synthesize(data, ipc, seed, progress, store)
        train_seconds = sum(train.timings.values())

        g = seeded_generator(seed, CALIBRATION_STREAM)
        real = RealData(data.normalized("train"), data.y_train, data.normalized("val"), data.y_val)
        y_val = data.y_val[val]
        x_init = real.x_val[val] if o["val_init"] == "real" else torch.randn(len(val), *real.x_val.shape[1:], generator=g)
        c = data.image_shape[2]

        def make_net(generator: torch.Generator) -> NB201Network:
            return NB201Network(o["C"], o["N"], data.num_classes, c, o["norm_groups"], generator=generator)

        archs = self.candidates(seed)
        cal = calibrate_validation((train.x.detach().float(), train.y.long()), real, x_init, y_val, archs, make_net,
                                   self.config, g, progress, store)
        timings = {"train_set": train_seconds, "validation_set": cal.seconds}
        meta = {
            "train_method": o["train_method"],
            "train_meta": {**train.meta, "timings": train.timings},
            "alignment_history": cal.history,
            "alignment_points": cal.points,
            "alignment_skipped": cal.skipped,
            "candidates": [a.to_str() for a in archs],
            "trajectories": cal.trajectories,
        }
        result = Synthesis(train.x, train.y, timings, tensors=dict(train.tensors), meta=meta)
        return store.finish(self._proxy(data, ipc, seed, result, cal.x_val, y_val, {"val_source": val}))


def validation_shift(proxy: Proxy, data: ImageData) -> float | None:
    """How far calibration moved an HCDC proxy's validation images from their start: ‖S_val − S_0‖ / ‖S_0‖.

    S_0 is the real validation images of ``data`` (prepared as for the proxy) at the proxy's ``val_source``, in
    normalised units; None for a proxy of another method or whose S_val started from noise (``val_init="noise"``).
    """
    if proxy.meta.get("method") != "hcdc" or proxy.meta.get("config", {}).get("val_init") != "real":
        return None
    t = proxy.tensors
    learned = t["x"][t["val_mask"]].float()
    start = data.normalized("val")[t["val_source"]].float()
    if learned.shape != start.shape:
        raise ConfigError(f"the HCDC proxy's validation images {list(learned.shape)} do not match the data it names "
                          f"as their start {list(start.shape)}: evaluate it on the data (and protocol) it was made from")
    return float((learned - start).norm() / start.norm())


def _not_a_string(value) -> str:
    raise ConfigError(f"image condenser 'hcdc' option 'architectures' must list NAS-Bench-201 strings, got {value!r}")
