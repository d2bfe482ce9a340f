"""Training many filter configurations at once, on the original graph or on a proxy.

C configurations are trained side by side as one stacked model: their parameters live in
tensors with a configuration axis, the first layer's ``X W1`` is a single (sparse) product for all
configurations, and each propagation by Â is one product on ``[N, C·H]``. Adam is elementwise, so
this is exactly C independent trainings. Within a seed every configuration starts from the same
initial weights and sees the same dropout masks (common random numbers), so differences between
configurations are differences of λ, not of luck.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.graph import GraphData, row_normalize
from ..models.polyfilter import DenseOperator, gcn_norm_weights
from .space import TrainProtocol


warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")


class _ConstSparseMM(torch.autograd.Function):
    """``a @ h`` for a constant sparse CSR ``a`` whose transpose ``a_t`` is given (no re-sorting in backward)."""

    @staticmethod
    def forward(ctx, a: Tensor, a_t: Tensor, h: Tensor) -> Tensor:
        ctx.a_t = a_t
        return torch.sparse.mm(a, h)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return None, None, torch.sparse.mm(ctx.a_t, grad)


class SparseMatrix:
    """A constant sparse matrix (CSR, with its transpose precomputed) usable as ``m @ dense``."""

    def __init__(self, dense_or_coo: Tensor):
        coo = dense_or_coo.to_sparse().coalesce() if not dense_or_coo.is_sparse else dense_or_coo.coalesce()
        self.csr = coo.to_sparse_csr()
        self.csr_t = coo.t().coalesce().to_sparse_csr()
        self.shape = coo.shape

    def __matmul__(self, h: Tensor) -> Tensor:
        return _ConstSparseMM.apply(self.csr, self.csr_t, h)

    def __call__(self, h: Tensor) -> Tensor:
        return self @ h

    def used_columns(self) -> Tensor:
        """Boolean [columns]: which columns hold a stored entry."""
        used = torch.zeros(self.shape[1], dtype=torch.bool)
        used[self.csr.col_indices()] = True
        return used

    def select_columns(self, columns: Tensor) -> "SparseMatrix":
        """The matrix restricted to ``columns`` (sorted indices), renumbered 0..len(columns)-1."""
        coo = self.csr.to_sparse_coo().coalesce()
        rows, cols = coo.indices()
        new = torch.full((self.shape[1],), -1, dtype=torch.long)
        new[columns] = torch.arange(len(columns))
        keep = new[cols] >= 0
        return SparseMatrix(torch.sparse_coo_tensor(torch.stack([rows[keep], new[cols[keep]]]), coo.values()[keep],
                                                    (self.shape[0], len(columns))))


@dataclass(frozen=True, eq=False)
class NodeGraph:
    """What training needs: features (row-normalised; dense or sparse CSR), Â, labels and masks."""

    x: Tensor | SparseMatrix
    propagate: Callable[[Tensor], Tensor]
    y: Tensor
    train_mask: Tensor
    val_mask: Tensor
    test_mask: Tensor | None
    num_classes: int
    columns: Tensor | None = None  # x holds only these input columns; the others are zero on every node
    input_width: int | None = None  # the model's input width when ``columns`` is set

    @property
    def num_features(self) -> int:
        return self.input_width if self.columns is not None else int(self.x.shape[1])

    def used_columns(self) -> Tensor:
        """Boolean [features]: the columns non-zero on some node."""
        return self.x.used_columns() if isinstance(self.x, SparseMatrix) else (self.x != 0).any(0)

    def feature_entries(self) -> int:
        """Stored entries of the feature matrix (its non-zeros when sparse): the first layer's product
        ``x @ W1`` and its gradient cost this many multiply-adds per hidden unit and configuration."""
        return int(self.x.csr.values().numel()) if isinstance(self.x, SparseMatrix) else self.x.numel()

    def with_columns(self, columns: Tensor) -> "NodeGraph":
        """This graph with its features kept only in ``columns`` (the model's input width unchanged)."""
        x = self.x.select_columns(columns) if isinstance(self.x, SparseMatrix) else self.x[:, columns].contiguous()
        return replace(self, x=x, columns=columns, input_width=self.num_features)

    @classmethod
    def from_graph_data(cls, data: GraphData) -> "NodeGraph":
        """The original graph: row-normalised features and Â as sparse CSR matrices."""
        n = data.num_nodes
        src, dst, w = gcn_norm_weights(data.edge_index, n)
        a_hat = SparseMatrix(torch.sparse_coo_tensor(torch.stack([dst, src]), w, (n, n)))
        return cls(_features(row_normalize(data.x)), a_hat, data.y, data.train_mask, data.val_mask, data.test_mask,
                   data.num_classes)

    @classmethod
    def from_dense(cls, x: Tensor, adj: Tensor, y: Tensor, train_mask: Tensor, val_mask: Tensor, num_classes: int) -> "NodeGraph":
        """A small (synthetic) graph given by dense features and a dense weighted adjacency."""
        op = DenseOperator.from_adjacency(adj)
        return cls(_features(x), op, y, train_mask, val_mask, None, num_classes)


def _features(x: Tensor) -> Tensor | SparseMatrix:
    """``x`` as a sparse CSR matrix when under 10% of it is non-zero (real bag-of-words rows) and
    nothing differentiates through it; otherwise as is."""
    if not x.requires_grad and float((x != 0).float().mean()) < 0.1:
        return SparseMatrix(x)
    return x


@dataclass
class ConfigScores:
    """Per-configuration results, averaged over the protocol's seeds (and per seed in ``per_seed``)."""

    val_loss: Tensor
    val_acc: Tensor
    test_acc: Tensor | None
    per_seed: list[dict[str, Tensor]]
    seconds: float


def _poly(propagate: Callable[[Tensor], Tensor], z: Tensor, lam: Tensor) -> Tensor:
    """Σ_k λ[c,k] Â^k z[:, c] for z of shape [N, C, D]."""
    n, c, d = z.shape
    acc = z * lam[:, 0].view(1, c, 1)
    for k in range(1, lam.shape[1]):
        z = propagate(z.reshape(n, c * d)).reshape(n, c, d)
        acc = acc + z * lam[:, k].view(1, c, 1)
    return acc


def _init(num_features: int, hidden: int, num_classes: int, configs: int, generator: torch.Generator,
          rows: Tensor | None = None) -> dict[str, Tensor]:
    """Stacked initial parameters, the same for every configuration; ``rows``: keep only these rows of W1."""
    def uniform(shape, fan_in):
        return (torch.rand(shape, generator=generator) * 2 - 1) / math.sqrt(fan_in)

    w1 = uniform((num_features, 1, hidden), num_features)
    if rows is not None:
        w1 = w1[rows]
    return {
        "w1": w1.expand(-1, configs, hidden).reshape(w1.shape[0], configs * hidden).clone(),
        "b1": uniform((1, hidden), num_features).expand(configs, hidden).clone(),
        "w2": uniform((1, hidden, num_classes), hidden).expand(configs, hidden, num_classes).clone(),
        "b2": uniform((1, num_classes), hidden).expand(configs, num_classes).clone(),
    }


def stacked_logits(params: dict[str, Tensor], lam: Tensor, graph: NodeGraph, keep: Tensor | None = None) -> Tensor:
    """Logits [N, C, classes] of C configurations ``lam`` [C, K+1]; ``keep`` a dropout mask [N, 1, H]."""
    c = lam.shape[0]
    n = graph.y.shape[0]
    xw = (graph.x @ params["w1"]).reshape(n, c, -1)
    h = torch.relu(_poly(graph.propagate, xw, lam) + params["b1"])
    if keep is not None:
        h = h * keep
    hw = torch.einsum("nch,cho->nco", h, params["w2"])
    return _poly(graph.propagate, hw, lam) + params["b2"]


def _masked_ce(logits: Tensor, y: Tensor, mask: Tensor) -> Tensor:
    """Mean cross-entropy over ``mask`` nodes, per configuration: [C]."""
    sel = logits[mask]  # [n, C, O]
    target = y[mask].unsqueeze(1).expand(-1, sel.shape[1])
    return F.cross_entropy(sel.permute(0, 2, 1), target, reduction="none").mean(0)


def _accuracy(logits: Tensor, y: Tensor, mask: Tensor) -> Tensor:
    return (logits[mask].argmax(-1) == y[mask].unsqueeze(1)).float().mean(0)


def _optimizer(params: dict[str, Tensor], protocol: TrainProtocol) -> torch.optim.Adam:
    # foreach: the same arithmetic as the default per-tensor loop (bit for bit), in fewer passes over W1
    return torch.optim.Adam(params.values(), lr=protocol.lr, weight_decay=protocol.weight_decay, foreach=True)


def optimizer_seconds_per_config(num_features: int, num_classes: int, protocol: TrainProtocol, configs: int = 16) -> float:
    """Seconds per configuration that training under ``protocol`` spends in the optimiser alone.

    Adam updates every parameter at every epoch, and W1 has one row per input column, so this cost
    is the same on any graph of that input width, however few nodes it has: it bounds how much
    faster a proxy can train a configuration than the whole graph can (same stacking as
    ``score_configs``: ``configs`` configurations at once).
    """
    params = _init(num_features, protocol.hidden, num_classes, configs, torch.Generator().manual_seed(0))
    for p in params.values():
        p.requires_grad_(True)
        p.grad = torch.randn_like(p)  # any gradient: Adam's cost does not depend on its values
    opt = _optimizer(params, protocol)
    start = time.perf_counter()
    for _ in range(protocol.epochs):
        opt.step()
    return (time.perf_counter() - start) / configs


def train_stacked(graph: NodeGraph, lam: Tensor, protocol: TrainProtocol, seed: int) -> dict[str, Tensor]:
    """Train C = len(lam) configurations on ``graph``'s training nodes; parameters at the last epoch."""
    g = torch.Generator().manual_seed(int(seed))
    params = _init(graph.num_features, protocol.hidden, graph.num_classes, lam.shape[0], g, graph.columns)
    for p in params.values():
        p.requires_grad_(True)
    opt = _optimizer(params, protocol)
    n = graph.y.shape[0]
    for _ in range(protocol.epochs):
        keep = None
        if protocol.dropout > 0:
            keep = (torch.rand(n, 1, protocol.hidden, generator=g) >= protocol.dropout).float() / (1 - protocol.dropout)
        opt.zero_grad(set_to_none=True)
        loss = _masked_ce(stacked_logits(params, lam, graph, keep), graph.y, graph.train_mask).sum()
        loss.backward()
        opt.step()
    return {k: v.detach() for k, v in params.items()}


def drop_unused_columns(graph: NodeGraph, target: NodeGraph) -> tuple[NodeGraph, NodeGraph]:
    """``graph`` and ``target`` without the feature columns that are zero on all of their nodes.

    Such a column's row of W1 never reaches a logit, and Adam and its weight decay are elementwise,
    so dropping the column and the row trains the same models (bit for bit with sparse features,
    up to the order of float sums with dense ones) at a cost that scales with the columns a proxy
    uses, not with the input width.
    """
    if graph.columns is not None or target.columns is not None:
        return graph, target
    used = graph.used_columns() | target.used_columns()
    if bool(used.all()):
        return graph, target
    columns = used.nonzero().flatten()
    restricted = graph.with_columns(columns)
    return restricted, restricted if target is graph else target.with_columns(columns)


def score_configs(
    graph: NodeGraph, lam: Tensor, protocol: TrainProtocol, chunk: int = 16, evaluate_on: NodeGraph | None = None
) -> ConfigScores:
    """Train every configuration of ``lam`` [C, K+1] on ``graph`` under each protocol seed and score it.

    Scores are the validation loss and accuracy on the validation nodes and, when there is a test
    mask, the test accuracy, all measured on ``evaluate_on`` (default: ``graph`` itself; pass the
    original graph to measure how models trained on a proxy transfer). Configurations are
    processed ``chunk`` at a time (16 is fastest on 2 CPU cores for Cora-sized graphs).
    """
    start = time.perf_counter()
    graph, target = drop_unused_columns(graph, evaluate_on if evaluate_on is not None else graph)
    per_seed = []
    for seed in protocol.seeds:
        parts: dict[str, list[Tensor]] = {"val_loss": [], "val_acc": [], "test_acc": []}
        for lo in range(0, lam.shape[0], chunk):
            lam_c = lam[lo : lo + chunk].float()
            params = train_stacked(graph, lam_c, protocol, seed)
            with torch.no_grad():
                logits = stacked_logits(params, lam_c, target)
                parts["val_loss"].append(_masked_ce(logits, target.y, target.val_mask))
                parts["val_acc"].append(_accuracy(logits, target.y, target.val_mask))
                if target.test_mask is not None:
                    parts["test_acc"].append(_accuracy(logits, target.y, target.test_mask))
        per_seed.append({k: torch.cat(v) for k, v in parts.items() if v})
    mean = {k: torch.stack([s[k] for s in per_seed]).mean(0) for k in per_seed[0]}
    return ConfigScores(mean["val_loss"], mean["val_acc"], mean.get("test_acc"), per_seed, time.perf_counter() - start)
