"""The HCDC graph condenser: a standard condenser's training set plus a calibrated validation set.

Ding et al., "Calibrated Dataset Condensation for Faster Hyperparameter Search" (ICLR 2024).
S_train comes from a pluggable standard condenser (``train_method``: ``gcond`` by default,
``gcond-x`` or ``random`` for the ablation); S_val is learned by hypergradient alignment
(:mod:`hcdc.graph.calibrate`). The proxy graph is block diagonal: [S_train, 0; 0, S_val].

With ``feature_columns`` = k > 0, both parts' features live on k input columns (those non-zero on
the most nodes, :func:`~hcdc.graph.condensers.feature_support`; each node's features row-normalised
over them) and are zero elsewhere, so training a configuration on the proxy costs in proportion to
k columns, not to the input width (1,433 on Cora, 3,703 on CiteSeer); see bench/README.md for what k =
256 costs in ranking quality. The default, 0, keeps every column, as GCond does.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor

from ..data.graph import GraphData
from ..errors import ConfigError
from ..artifacts import Proxy
from ..checkpoint import Checkpoints
from .calibrate import CalibrationConfig, calibrate_validation, initial_validation
from .condensers import (GraphCondenser, class_counts, feature_support, on_columns, proxy_sizes, register_condenser,
                         support_features, synthesize_gcond)
from .space import FilterSpace, TrainProtocol

_TRAIN_METHODS = ("gcond", "gcond-x", "random")


@register_condenser("hcdc")
class HCDCCondenser(GraphCondenser):
    """HCDC (Ding et al., ICLR 2024): S_train from ``train_method``, S_val by hypergradient alignment.

    Options: the fields of :class:`~hcdc.graph.calibrate.CalibrationConfig`; ``train_method``;
    ``gcond`` (a dict of GCond options); the filter space ``K``, ``low``, ``high``; and the
    training protocol used along trajectories (``hidden``, ``lr``, ``weight_decay``, ``dropout``).
    """

    defaults = {
        **CalibrationConfig().as_dict(),
        "train_method": "gcond",
        "gcond": {},
        "feature_columns": 0,
        **asdict(FilterSpace()),
        **{k: v for k, v in TrainProtocol().as_dict().items() if k in ("hidden", "lr", "weight_decay", "dropout")},
    }

    def __init__(self, **options):
        super().__init__(**options)
        if self.options["train_method"] not in _TRAIN_METHODS:
            raise ConfigError(f"unknown train_method {self.options['train_method']!r}; choose from {_TRAIN_METHODS}")
        opts = self.options
        if "feature_columns" in opts["gcond"]:
            raise ConfigError("set feature_columns as an hcdc option (it applies to S_train and S_val), not in gcond")
        fc = opts["feature_columns"]
        if isinstance(fc, bool) or not isinstance(fc, int) or fc < 0:
            raise ConfigError(f"feature_columns must be an integer >= 0 (0: every column), got {fc!r}")
        self.calibration = CalibrationConfig(**{k: opts[k] for k in CalibrationConfig().as_dict()})
        self.space = FilterSpace(opts["K"], opts["low"], opts["high"])
        self.protocol = TrainProtocol(hidden=opts["hidden"], lr=opts["lr"], weight_decay=opts["weight_decay"],
                                      dropout=opts["dropout"])

    def _train_set(self, data: GraphData, n_train: int, seed: int, columns: Tensor | None, progress: bool,
                   checkpoints: Checkpoints):
        """(x, adj, y, seconds) of S_train from the configured standard condenser, features on ``columns``."""
        method = self.options["train_method"]
        if method in ("gcond", "gcond-x"):
            counts = class_counts(data.y[data.train_mask], n_train, data.num_classes)
            res = synthesize_gcond(data, counts, seed, progress, checkpoints, **self.options["gcond"],
                                   feature_columns=self.options["feature_columns"])
            if method == "gcond":
                return res.x, res.adj, res.y, res.seconds
            return res.x, torch.zeros_like(res.adj), res.y, res.seconds
        # random: a uniform sample of real training nodes and their induced subgraph
        start = time.perf_counter()
        train = data.train_mask.nonzero().view(-1)
        nodes = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(int(seed)))[:n_train]]
        x = on_columns(support_features(data, columns)[nodes], columns, data.num_features)
        return x, data.induced_adjacency(nodes), data.y[nodes], time.perf_counter() - start

    def condense(self, data: GraphData, ratio: float, seed: int, progress: bool = False,
                 checkpoints: str | Path | None = None) -> Proxy:
        n_train, n_val = proxy_sizes(data, ratio)
        store = self.checkpoints(checkpoints, data, ratio, seed)
        columns = feature_support(data.x, self.options["feature_columns"])
        x_tr, adj_tr, y_tr, train_seconds = self._train_set(data, n_train, seed, columns, progress, store)
        val_counts = class_counts(data.y[data.val_mask], n_val, data.num_classes)
        cal = calibrate_validation(data, x_tr, adj_tr, y_tr, val_counts, self.space, self.protocol,
                                   self.calibration, seed, progress, columns, store)
        n_tr, n_v = len(y_tr), len(cal.y_val)
        adj = torch.zeros(n_tr + n_v, n_tr + n_v)
        adj[:n_tr, :n_tr] = adj_tr
        adj[n_tr:, n_tr:] = cal.adj_val
        mask = torch.arange(n_tr + n_v) < n_tr
        tensors = {"x": torch.cat([x_tr, cal.x_val]).float().contiguous(), "adj": adj,
                   "y": torch.cat([y_tr, cal.y_val]), "train_mask": mask, "val_mask": ~mask}
        proxy = self._proxy(data, ratio, seed, tensors, {"train_set": train_seconds, "validation_set": cal.seconds})
        proxy.meta["alignment_history"] = cal.history
        proxy.meta["alignment_points"] = len(cal.points)
        return store.finish(proxy)


def validation_start(proxy: Proxy, data: GraphData) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Where Algorithm 1 started the validation set of an HCDC proxy of ``data``: (features on the proxy's
    columns, adjacency, labels, the columns or None), the real validation nodes that
    :func:`~hcdc.graph.calibrate.initial_validation` draws with the proxy's condensation seed."""
    if proxy.meta.get("method") != "hcdc":
        raise ConfigError(f"an HCDC validation set needs an HCDC proxy, got method {proxy.meta.get('method')!r}")
    options = proxy.meta["config"]
    columns = feature_support(data.x, options["feature_columns"])
    counts = torch.bincount(proxy.tensors["y"][proxy.tensors["val_mask"]], minlength=data.num_classes)
    generator = torch.Generator().manual_seed(int(proxy.meta["seeds"]["condense"]))
    return (*initial_validation(data, counts, generator, columns, options["val_hops"]), columns)


def with_validation_features(proxy: Proxy, data: GraphData, x: Tensor, columns: Tensor | None, alignment: str) -> Proxy:
    """``proxy`` with its validation nodes' features replaced by ``x`` (on ``columns``), ``alignment`` saying how."""
    features = proxy.tensors["x"].clone()
    features[proxy.tensors["val_mask"]] = on_columns(x, columns, data.num_features).to(features.dtype)
    return Proxy(proxy.kind, {**proxy.tensors, "x": features}, {**proxy.meta, "alignment": alignment})


def unaligned_proxy(proxy: Proxy, data: GraphData) -> Proxy:
    """An HCDC proxy of ``data`` with its validation features put back where alignment started them
    (:func:`validation_start`): the same S_train and validation adjacency, the proxy HCDC would give
    without Algorithm 1's alignment step, for measuring what that step adds."""
    x_start, _, _, columns = validation_start(proxy, data)
    return with_validation_features(proxy, data, x_start, columns, "none (validation set at its start)")
