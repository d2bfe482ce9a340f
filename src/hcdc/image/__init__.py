"""Image track: the NAS-Bench-201 search space (:mod:`hcdc.image.space`), augmentation, the condensers
(:mod:`hcdc.image.condensers`), HCDC's calibration, and the evaluation protocol: presets and data
(:mod:`hcdc.image.protocol`), training (:mod:`hcdc.image.training`), the ground truth
(:mod:`hcdc.image.groundtruth`) and ranking on a proxy (:mod:`hcdc.image.evaluate`)."""
