"""The graph search space (polynomial filter coefficients) and the training protocol that scores it.

Canonical definition (issue 3; Ding et al., ICLR 2024, App. J): a two-layer GNN
``H = ReLU(g(Â) X W1 + b1)``, ``out = g(Â) H W2 + b2``, ``g(Â) = Σ_{k=0..K} λ_k Â^k``,
``Â = D̃^{-1/2}(A + I)D̃^{-1/2}``, dropout after the ReLU; the K + 1 coefficients λ are the
hyperparameters, sampled uniformly from ``[low, high]^{K+1}`` with a recorded seed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

import torch

from ..errors import ConfigError


@dataclass(frozen=True)
class FilterSpace:
    """Filter coefficients λ ∈ [low, high]^{K+1}."""

    K: int = 3
    low: float = -1.0
    high: float = 1.0

    def __post_init__(self):
        if self.K < 0 or not self.high > self.low:
            raise ConfigError(f"filter space needs K >= 0 and high > low (got K={self.K}, [{self.low}, {self.high}])")

    @property
    def dim(self) -> int:
        return self.K + 1

    def sample(self, n: int, seed: int) -> torch.Tensor:
        """``n`` configurations drawn uniformly with generator seed ``seed``: float32 [n, K+1]."""
        if n < 1:
            raise ConfigError(f"number of configurations must be >= 1 (got {n})")
        g = torch.Generator().manual_seed(int(seed))
        return self.low + (self.high - self.low) * torch.rand(n, self.dim, generator=g)

    def clamp(self, lam: torch.Tensor) -> torch.Tensor:
        return lam.clamp(self.low, self.high)


@dataclass(frozen=True)
class TrainProtocol:
    """How a configuration is trained and scored: full batch Adam, the model at the last epoch."""

    hidden: int = 64
    lr: float = 0.01
    weight_decay: float = 5e-4
    epochs: int = 200
    dropout: float = 0.5
    seeds: tuple[int, ...] = field(default=(0, 1))

    def __post_init__(self):
        if self.hidden < 1 or self.epochs < 1 or not self.lr > 0 or self.weight_decay < 0 or not 0 <= self.dropout < 1:
            raise ConfigError(f"invalid training protocol: {self}")
        if not self.seeds:
            raise ConfigError("training protocol needs at least one seed")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["seeds"] = list(self.seeds)
        return d

    def key(self) -> str:
        """A short stable hash of the protocol, for cache keys."""
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:16]
