"""The graph track: polynomial-filter search space, ground truth, condensers (Random, GCond,
GCond-X, HCDC) and proxy evaluation."""

from . import hcdc_condenser  # noqa: F401  (registers "hcdc")
from .condensers import CONDENSERS, GraphCondenser, make_condenser, proxy_sizes, register_condenser
from .evaluate import ProxyEvaluation, evaluate_proxy, proxy_graph
from .groundtruth import GroundTruth, ground_truth
from .space import FilterSpace, TrainProtocol
from .train import NodeGraph, score_configs

__all__ = [
    "CONDENSERS", "FilterSpace", "GraphCondenser", "GroundTruth", "NodeGraph", "ProxyEvaluation", "TrainProtocol",
    "evaluate_proxy", "ground_truth", "make_condenser", "proxy_graph", "proxy_sizes", "register_condenser",
    "score_configs",
]
