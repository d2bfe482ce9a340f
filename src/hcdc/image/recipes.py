"""Condensation recipes per image protocol: the options each image condenser runs with.

``FULL_OPTIONS`` is each method's published recipe (the condensers' defaults), ``CPU_OPTIONS`` the
same methods with iteration counts cut so each condenses in about two minutes on one CPU thread
at the ``cpu`` protocol's scale (16×16, ipc 10), ``SMOKE_OPTIONS`` tiny everything (a plumbing
check). :func:`method_options` resolves a method's options under a protocol: the recipe, the
network fields the protocol fixes, then the user's overrides. ``bench/image_table.py`` and
``hcdc condense`` both use it, so a proxy made from the command line is the table's.
"""

from __future__ import annotations

from ..errors import ConfigError
from .condensers import IMAGE_CONDENSERS, make_image_condenser
from .protocol import ImageProtocol

# Each method's published recipe: the condensers' defaults.
FULL_OPTIONS: dict[str, dict] = {}

# The cpu protocol (16x16 images, 250 per class, ipc 10). Seconds measured on one thread of this
# machine (another job running) at these settings; the recipes' counts in brackets.
CPU_OPTIONS: dict[str, dict] = {
    "random": {},
    # embedding ConvNet of width 32 (default 64) trained 5 epochs on the 2,500 images: ~4 s
    "kcenter": {"width": 32, "epochs": 5},
    "herding": {"width": 32, "epochs": 5},
    # 10 iterations (1000) of 10 matching steps (10) with 10 inner epochs (50), width 32 (128): ~11 s / iteration
    "dc": {"iterations": 10, "outer_loop": 10, "inner_loop": 10, "width": 32},
    "dsa": {"iterations": 10, "outer_loop": 10, "inner_loop": 10, "width": 32},
    # 200 iterations (20000), width 32 (128): ~0.37 s / iteration
    "dm": {"iterations": 200, "width": 32},
    # 150 iterations (1000) of the empirical NTK of a width-32 ConvNet: ~0.4 s / iteration
    "kip": {"iterations": 150, "width": 32},
    # 5 experts (100) of 10 epochs (50), trained once (~45 s, cached); 40 iterations (5000) of 10 synthetic
    # steps (30) matched to 2 expert epochs from a start below epoch 8 (20), width 32 (128): ~2.2 s / iteration
    "tm": {"experts": 5, "expert_epochs": 10, "max_start_epoch": 8, "expert_epochs_to_match": 2, "syn_steps": 10,
           "iterations": 40, "width": 32},
}
# HCDC: S_train is exactly the DC proxy's (same options, same seed: shared cost in spirit, recomputed here);
# the calibration loop keeps HCDC's defaults (6 candidates x 40 steps, ~3-4 min); its network options
# (C, N, norm_groups) are filled from the protocol
# real_theta=False (both hypergradients at the proxy's θ, the paper's approximation; no real-side training):
# the committed table's alignment_mean is 0.73, against 0.92 with θ_T trained on real batches in the table of
# commit 6ffb07f (protocol v1). Lower alignment loss did not rank better: see bench/README.md's Image track.
CPU_OPTIONS["hcdc"] = {"train_options": dict(CPU_OPTIONS["dc"]), "real_theta": False}

# Tiny everything: only checks that every stage runs.
SMOKE_OPTIONS: dict[str, dict] = {
    "random": {},
    "kcenter": {"width": 8, "epochs": 1},
    "herding": {"width": 8, "epochs": 1},
    "dc": {"iterations": 1, "outer_loop": 2, "inner_loop": 1, "width": 8, "batch_real": 16},
    "dsa": {"iterations": 1, "outer_loop": 2, "inner_loop": 1, "width": 8, "batch_real": 16},
    "dm": {"iterations": 2, "width": 8, "batch_real": 16},
    "kip": {"iterations": 2, "width": 8, "batch_target": 16},
    "tm": {"experts": 1, "expert_epochs": 2, "max_start_epoch": 1, "expert_epochs_to_match": 1, "syn_steps": 2,
           "iterations": 2, "width": 8, "batch_expert": 32},
}
SMOKE_OPTIONS["hcdc"] = {"train_options": dict(SMOKE_OPTIONS["dc"]), "candidates": 1, "train_steps": 4, "warmup": 2,
                         "align_every": 2, "neumann_terms": 1, "power_iterations": 1, "batch_real": 16, "batch_val": 16}

OPTIONS = {"full": FULL_OPTIONS, "cpu": CPU_OPTIONS, "smoke": SMOKE_OPTIONS}
PROTOCOL_FIELDS = ("C", "N", "norm_groups", "val_part")  # condenser options taken from the protocol when the condenser has them


def method_options(method: str, protocol_name: str, protocol: ImageProtocol, overrides: dict | None = None) -> dict:
    """The options ``method`` runs with under ``protocol_name``: the preset's, any protocol fields the
    condenser takes (``PROTOCOL_FIELDS``), then ``overrides``; validated by building the condenser
    (ConfigError for an unknown method or option). Returns the fully resolved options (defaults included)."""
    if method not in IMAGE_CONDENSERS:
        raise ConfigError(f"unknown image condenser {method!r}; registered: {', '.join(sorted(IMAGE_CONDENSERS))}")
    defaults = IMAGE_CONDENSERS[method].defaults
    options = {k: getattr(protocol, k) for k in PROTOCOL_FIELDS if k in defaults}
    options.update(OPTIONS[protocol_name].get(method, {}))
    options.update(overrides or {})
    return make_image_condenser(method, **options).options


__all__ = ["CPU_OPTIONS", "FULL_OPTIONS", "OPTIONS", "PROTOCOL_FIELDS", "SMOKE_OPTIONS", "method_options"]
