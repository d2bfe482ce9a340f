"""Scoring a graph proxy: does it rank filter configurations as the original graph does?

Every configuration is trained on the proxy's training nodes (the protocol of
:class:`~hcdc.graph.space.TrainProtocol`); its proxy score is the validation loss on the proxy's
validation nodes (lower is better). The ground truth is the validation accuracy of the same
configuration trained on the original graph. Reported: Spearman, Kendall τ-b, top-k overlap,
regret, and Perf — the true test accuracy of the configuration the proxy picks, next to the test
accuracy of the configuration the original graph's validation accuracy picks (the oracle).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..artifacts import Proxy
from ..data.graph import GraphData
from ..metrics import check_rankable, ranking_report
from .groundtruth import GroundTruth, ground_truth
from .hpo import HPOConfig, HPOResult, hypergradient_hpo
from .problem import FilterProblem
from .space import FilterSpace, TrainProtocol
from .train import ConfigScores, NodeGraph, score_configs


def proxy_graph(proxy: Proxy) -> NodeGraph:
    """The proxy as a trainable graph (dense features and adjacency)."""
    t = proxy.tensors
    return NodeGraph.from_dense(t["x"], t["adj"], t["y"], t["train_mask"], t["val_mask"], proxy.num_classes)


def proxy_graphs(proxy: Proxy) -> tuple[NodeGraph, NodeGraph | None]:
    """(graph to train on, graph to score on) for a proxy.

    When no edge joins a training node to a non-training node (HCDC's and GCond's block-diagonal
    proxies), training only sees the training block, so it runs on that block alone and the
    validation block is scored separately: the same models, trained on fewer nodes. Otherwise the
    whole proxy graph is used for both (returned as ``(graph, None)``).
    """
    t = proxy.tensors
    train = t["train_mask"]
    if t["adj"][train][:, ~train].any():
        return proxy_graph(proxy), None
    val = t["val_mask"]

    def block(mask: Tensor, train_part: bool) -> NodeGraph:
        ones = torch.ones(int(mask.sum()), dtype=torch.bool)
        return NodeGraph.from_dense(t["x"][mask], t["adj"][mask][:, mask], t["y"][mask], ones if train_part else ~ones,
                                    ~ones if train_part else ones, proxy.num_classes)
    return block(train, True), block(val, False)


@dataclass
class ProxyEvaluation:
    """A proxy's scores on configurations ``lam`` next to their ground truth."""

    lam: Tensor
    proxy: ConfigScores
    truth: GroundTruth
    report: dict[str, float]
    perf: float
    oracle_perf: float

    def row(self) -> dict[str, float]:
        """A flat record: ranking metrics, Perf, oracle Perf, proxy seconds per configuration."""
        return {**self.report, "perf": self.perf, "oracle_perf": self.oracle_perf,
                "proxy_seconds_per_config": self.proxy.seconds / len(self.lam) / max(1, len(self.proxy.per_seed))}


def evaluate_proxy(proxy: Proxy, data: GraphData, lam: Tensor, protocol: TrainProtocol,
                   truth: GroundTruth | None = None, k: int = 5) -> ProxyEvaluation:
    """Train ``lam`` on the proxy, score on its validation nodes, and compare with the ground truth."""
    check_rankable(len(lam), "configurations")
    truth = truth if truth is not None else ground_truth(data, lam, protocol)
    train_graph, score_graph = proxy_graphs(proxy)
    scores = score_configs(train_graph, lam, protocol, evaluate_on=score_graph)
    report = ranking_report(scores.val_loss.numpy(), truth.val_acc.numpy(), proxy_higher_is_better=False,
                            true_higher_is_better=True, k=min(k, len(lam)))
    pick = int(torch.argmin(scores.val_loss))
    oracle = int(torch.argmax(truth.val_acc))
    return ProxyEvaluation(lam, scores, truth, report, float(truth.test_acc[pick]), float(truth.test_acc[oracle]))


def proxy_problem(proxy: Proxy) -> FilterProblem:
    """The proxy as a :class:`FilterProblem` (for hypergradient HPO on it)."""
    t = proxy.tensors
    return FilterProblem.from_dense(t["x"], t["adj"], t["y"], t["train_mask"], t["val_mask"])


def hpo_perf(problem: FilterProblem, data: GraphData, space: FilterSpace, protocol: TrainProtocol,
             config: HPOConfig = HPOConfig()) -> tuple[float, HPOResult]:
    """Perf (b): hypergradient HPO (Lorraine et al.) on ``problem`` (a proxy or the original graph),
    then the true test accuracy of its pick, trained on the original graph with ``protocol``."""
    result = hypergradient_hpo(problem, data.num_features, data.num_classes, space, protocol, config)
    truth = ground_truth(data, result.best.unsqueeze(0), protocol)
    return float(truth.test_acc[0]), result
