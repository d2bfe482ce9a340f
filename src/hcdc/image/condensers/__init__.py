"""Image condensers: the registry and the baselines of HCDC's image experiments (Ding et al., ICLR 2024, Table 1).

Registered names: ``random``, ``kcenter``, ``herding`` (coresets, :mod:`.coresets`), ``dc`` and
``dsa`` (gradient matching, :mod:`.matching`) and ``dm`` (distribution matching, :mod:`.dm`).
``make_image_condenser(name, **options).condense(data, ipc, seed)`` returns an image proxy.
"""

from . import coresets, dm, matching
from .base import (
    IMAGE_CONDENSERS,
    ImageCondenser,
    Synthesis,
    make_image_condenser,
    register_image_condenser,
    val_per_class,
    validation_split,
)
from .coresets import (
    HerdingCoreset,
    KCenterCoreset,
    RandomCoreset,
    herding,
    kcenter_greedy,
)
from .dm import DMCondenser
from .matching import DCCondenser, DSACondenser, matching_distance

__all__ = [
    "IMAGE_CONDENSERS",
    "DCCondenser",
    "DMCondenser",
    "DSACondenser",
    "HerdingCoreset",
    "ImageCondenser",
    "KCenterCoreset",
    "RandomCoreset",
    "Synthesis",
    "coresets",
    "dm",
    "herding",
    "kcenter_greedy",
    "make_image_condenser",
    "matching",
    "matching_distance",
    "register_image_condenser",
    "val_per_class",
    "validation_split",
]
