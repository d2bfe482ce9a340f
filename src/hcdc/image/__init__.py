"""Image track: the NAS-Bench-201 search space (:mod:`hcdc.image.space`), augmentation and condensers."""
