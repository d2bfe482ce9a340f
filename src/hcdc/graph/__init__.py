"""The graph track: polynomial-filter search space, ground truth, condensers (Random, GCond,
GCond-X, HCDC), proxy evaluation and Optuna search on a proxy."""

from .hcdc_condenser import unaligned_proxy  # also registers "hcdc"
from .condensers import CONDENSERS, GraphCondenser, make_condenser, proxy_sizes, register_condenser
from .evaluate import ProxyEvaluation, evaluate_proxy, hpo_perf, proxy_graph, proxy_problem
from .hpo import HPOConfig, HPOResult, hypergradient_hpo
from .problem import FilterProblem
from .groundtruth import GroundTruth, ground_truth
from .search import SearchResult, search_filters
from .space import FilterSpace, TrainProtocol
from .train import NodeGraph, score_configs

__all__ = [
    "CONDENSERS", "FilterProblem", "FilterSpace", "GraphCondenser", "GroundTruth", "HPOConfig", "HPOResult", "NodeGraph",
    "ProxyEvaluation", "SearchResult", "TrainProtocol", "evaluate_proxy", "ground_truth", "hpo_perf", "hypergradient_hpo",
    "make_condenser", "proxy_graph", "proxy_problem", "proxy_sizes", "register_condenser", "score_configs", "search_filters",
    "unaligned_proxy",
]
