"""Layers whose higher-order derivatives are right, for differentiating through training."""

from .norm import GroupNorm, group_norm

__all__ = ["GroupNorm", "group_norm"]
