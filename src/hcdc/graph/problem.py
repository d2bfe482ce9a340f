"""One graph's node-classification problem in the functional form the hypergradient engine needs.

A :class:`FilterProblem` holds features, propagation operator, labels and the training and
validation masks of either the original graph (sparse features, edge list) or a proxy (dense
features and adjacency), and provides L_train(θ, λ) (cross-entropy plus the L2 term that Adam's
weight decay optimises), L_val(θ, λ), one training epoch of the canonical protocol, and the
Neumann step α = 1/λ_max(H). Used by HCDC's calibration (:mod:`hcdc.graph.calibrate`) and by
hypergradient HPO (:mod:`hcdc.graph.hpo`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.graph import GraphData, row_normalize
from ..hypergrad import TrainHessian
from ..models import polyfilter
from .space import TrainProtocol


@dataclass
class FilterProblem:
    """Features ``x``, operator ``op``, labels ``y`` and masks of one graph, for the filter GNN."""

    x: Tensor | polyfilter.SparseFeatures
    op: polyfilter.GraphOperator
    y: Tensor
    train_mask: Tensor
    val_mask: Tensor

    @classmethod
    def from_graph_data(cls, data: GraphData) -> FilterProblem:
        """The original graph: row-normalised sparse features, the edge list."""
        return cls(polyfilter.SparseFeatures.from_dense(row_normalize(data.x)),
                   polyfilter.EdgeListOperator.from_edge_index(data.edge_index, data.num_nodes),
                   data.y, data.train_mask, data.val_mask)

    @classmethod
    def from_dense(cls, x: Tensor, adj: Tensor, y: Tensor, train_mask: Tensor, val_mask: Tensor) -> FilterProblem:
        """A proxy: dense features and (weighted) adjacency."""
        return cls(x, polyfilter.DenseOperator.from_adjacency(adj), y, train_mask, val_mask)

    def train_loss(self, weight_decay: float):
        """L_train(θ, λ) as a function (p, lam) -> scalar."""

        def loss(p, lam):
            reg = 0.5 * weight_decay * sum((w**2).sum() for w in p.values())
            return polyfilter.node_loss(p, lam, self.x, self.op, self.y, self.train_mask) + reg

        return loss

    def val_loss(self, p: dict[str, Tensor], lam: Tensor) -> Tensor:
        """L_val(θ, λ): cross-entropy on the validation nodes, no dropout."""
        return polyfilter.node_loss(p, lam, self.x, self.op, self.y, self.val_mask)

    def train_epoch(self, params: dict[str, Tensor], opt: torch.optim.Optimizer, lam: Tensor,
                    protocol: TrainProtocol, generator: torch.Generator) -> None:
        """One full-batch step of the protocol (dropout after the ReLU) on the training nodes."""
        out = polyfilter.logits(params, lam, self.x, self.op, protocol.dropout, generator)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(out[self.train_mask], self.y[self.train_mask]).backward()
        opt.step()

    def neumann_alpha(self, params: dict[str, Tensor], lam: Tensor, weight_decay: float, iterations: int) -> float:
        """α = 1/λ_max(H) so that the Neumann series converges (α·λ_max < 2)."""
        lmax = TrainHessian(self.train_loss(weight_decay), params, lam).largest_eigenvalue(iterations)
        return 1.0 / max(abs(lmax), 1e-6)


def trainable(init: dict[str, Tensor], protocol: TrainProtocol):
    """A copy of ``init`` requiring grad and its Adam optimiser under ``protocol``."""
    params = {k: v.clone().requires_grad_(True) for k, v in init.items()}
    return params, torch.optim.Adam(params.values(), lr=protocol.lr, weight_decay=protocol.weight_decay,
                                    foreach=True)
