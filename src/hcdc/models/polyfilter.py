"""The polynomial-filter GNN search space of HCDC's graph experiments (Ding et al., ICLR 2024, App. J).

Two layers, ``H = ReLU(g(Â) X W1 + b1)``, ``out = g(Â) H W2 + b2``, with the filter
``g(Â) = Σ_{k=0..K} λ_k Â^k`` and ``Â = D̃^{-1/2}(A + I)D̃^{-1/2}`` (``D̃`` the degrees of A + I).
The K + 1 coefficients λ are the hyperparameters. Everything here is a pure function of
(params, λ, data), so hypergradients can be taken with ``torch.func``; sparse tensors are not
supported by ``torch.func``, so Â is applied as an edge list (gather + ``index_add``) on large
graphs and as a dense matrix on small synthetic ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def gcn_norm_weights(edge_index: Tensor, num_nodes: int) -> tuple[Tensor, Tensor, Tensor]:
    """(src, dst, weight) of Â = D̃^{-1/2}(A + I)D̃^{-1/2} for an undirected edge list without self-loops."""
    loops = torch.arange(num_nodes, device=edge_index.device)
    src = torch.cat([edge_index[0], loops])
    dst = torch.cat([edge_index[1], loops])
    deg = torch.zeros(num_nodes, device=edge_index.device).index_add_(0, dst, torch.ones_like(dst, dtype=torch.float))
    inv_sqrt = deg.rsqrt()
    return src, dst, inv_sqrt[src] * inv_sqrt[dst]


@dataclass(frozen=True)
class EdgeListOperator:
    """Â as weighted edges (self-loops included): ``(Â h)[i] = Σ_{(j→i)} w_ji h[j]``."""

    src: Tensor
    dst: Tensor
    weight: Tensor
    num_nodes: int

    @classmethod
    def from_edge_index(cls, edge_index: Tensor, num_nodes: int) -> "EdgeListOperator":
        """Build Â from an undirected edge list without self-loops (both directions present)."""
        return cls(*gcn_norm_weights(edge_index, num_nodes), num_nodes)

    def __call__(self, h: Tensor) -> Tensor:
        msg = self.weight.to(h.dtype).unsqueeze(-1) * h.index_select(0, self.src)
        return torch.zeros_like(h).index_add(0, self.dst, msg)


@dataclass(frozen=True)
class DenseOperator:
    """Â as a dense matrix, for small (synthetic) graphs given by a weighted adjacency ``adj``."""

    matrix: Tensor

    @classmethod
    def from_adjacency(cls, adj: Tensor) -> "DenseOperator":
        """Â = D̃^{-1/2}(A + I)D̃^{-1/2} for a dense, symmetric, non-negative ``adj`` (zero diagonal)."""
        a = adj + torch.eye(adj.shape[0], dtype=adj.dtype, device=adj.device)
        inv_sqrt = a.sum(1).rsqrt()
        return cls(inv_sqrt.unsqueeze(1) * a * inv_sqrt.unsqueeze(0))

    @property
    def num_nodes(self) -> int:
        return self.matrix.shape[0]

    def __call__(self, h: Tensor) -> Tensor:
        return self.matrix.to(h.dtype) @ h


GraphOperator = EdgeListOperator | DenseOperator


@dataclass(frozen=True)
class SparseFeatures:
    """A fixed sparse feature matrix as (row, col, value) triplets, multiplied by gather + index_add.

    ``x @ w`` costs O(nnz · d) instead of O(N · F · d) and, unlike torch's sparse tensors, works
    inside ``torch.func`` transforms (bag-of-words features are ~1% dense).
    """

    row: Tensor
    col: Tensor
    value: Tensor
    shape: tuple[int, int]

    @classmethod
    def from_dense(cls, x: Tensor) -> "SparseFeatures":
        row, col = torch.nonzero(x, as_tuple=True)
        return cls(row, col, x[row, col], tuple(x.shape))

    def __matmul__(self, w: Tensor) -> Tensor:
        msg = self.value.to(w.dtype).unsqueeze(-1) * w.index_select(0, self.col)
        return torch.zeros(self.shape[0], w.shape[1], dtype=w.dtype).index_add(0, self.row, msg)


def poly_filter(op: GraphOperator, h: Tensor, lam: Tensor) -> Tensor:
    """g(Â) h = Σ_k λ_k Â^k h, with K = len(λ) − 1 (Horner-free: K products with Â)."""
    acc = lam[0] * h
    for k in range(1, lam.shape[0]):
        h = op(h)
        acc = acc + lam[k] * h
    return acc


def init_params(num_features: int, hidden: int, num_classes: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Parameters initialised as ``torch.nn.Linear`` does (uniform ±1/√fan_in)."""

    def uniform(shape, fan_in):
        bound = 1.0 / math.sqrt(fan_in)
        return (torch.rand(shape, generator=generator) * 2 - 1) * bound

    return {
        "w1": uniform((num_features, hidden), num_features),
        "b1": uniform((hidden,), num_features),
        "w2": uniform((hidden, num_classes), hidden),
        "b2": uniform((num_classes,), hidden),
    }


def logits(
    params: dict[str, Tensor],
    lam: Tensor,
    x: Tensor | SparseFeatures,
    op: GraphOperator,
    dropout: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Class logits of every node; dropout (after the ReLU) only when ``dropout > 0``."""
    h = torch.relu(poly_filter(op, x @ params["w1"], lam) + params["b1"])
    if dropout > 0:
        keep = (torch.rand(h.shape, generator=generator, device=h.device) >= dropout).to(h.dtype)
        h = h * keep / (1 - dropout)
    return poly_filter(op, h @ params["w2"], lam) + params["b2"]


def node_loss(params: dict[str, Tensor], lam: Tensor, x: Tensor | SparseFeatures, op: GraphOperator, y: Tensor, mask: Tensor) -> Tensor:
    """Mean cross-entropy over the nodes in ``mask`` (no dropout)."""
    return F.cross_entropy(logits(params, lam, x, op)[mask], y[mask])
