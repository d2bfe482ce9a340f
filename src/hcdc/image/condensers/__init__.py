"""Image condensers: the registry and the baselines of HCDC's image experiments (Ding et al., ICLR 2024, Table 1).

Registered names: ``random``, ``kcenter``, ``herding`` (coresets, :mod:`.coresets`), ``dc`` and
``dsa`` (gradient matching, :mod:`.matching`), ``dm`` (distribution matching, :mod:`.dm`), ``kip``
(kernel inducing points, :mod:`.kip`), ``tm`` (trajectory matching, :mod:`.tm`), and HCDC itself,
``hcdc`` (:mod:`.hcdc`: a ``train_method``'s training set plus a validation set learned by
hypergradient alignment, :mod:`hcdc.image.calibrate`).
``make_image_condenser(name, **options).condense(data, ipc, seed)`` returns an image proxy.
"""

from . import coresets, dm, hcdc, kip, matching, tm
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
from .hcdc import HCDCCondenser
from .kip import KIPCondenser
from .matching import DCCondenser, DSACondenser, matching_distance
from .tm import TMCondenser

__all__ = [
    "IMAGE_CONDENSERS",
    "DCCondenser",
    "DMCondenser",
    "DSACondenser",
    "HCDCCondenser",
    "HerdingCoreset",
    "ImageCondenser",
    "KCenterCoreset",
    "KIPCondenser",
    "RandomCoreset",
    "Synthesis",
    "TMCondenser",
    "coresets",
    "dm",
    "hcdc",
    "herding",
    "kcenter_greedy",
    "kip",
    "make_image_condenser",
    "matching",
    "matching_distance",
    "register_image_condenser",
    "tm",
    "val_per_class",
    "validation_split",
]
