"""Ground truth: every configuration trained on the original graph, cached on disk.

The cache is one JSON file per (dataset content, training protocol) under
``<cache>/groundtruth/``, mapping a configuration (its λ printed to 7 significant digits) to its
mean validation loss, validation accuracy and test accuracy over the protocol's seeds. Missing
configurations are computed outside the lock, ``CHUNK`` at a time (with a progress bar), each chunk
merged under an exclusive ``flock`` and written atomically as soon as it is done, so concurrent
writers never lose or corrupt entries and an interrupted run loses at most one chunk.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..data.graph import GraphData, graph_fingerprint
from ..io import merge_json_entries, number, read_json_entries
from ..paths import cache_dir
from .space import TrainProtocol
from .train import NodeGraph, score_configs

METRICS = ("val_loss", "val_acc", "test_acc")
CHUNK = 16  # configurations trained together (score_configs' stacking) and cached together


@dataclass
class GroundTruth:
    """True scores of configurations ``lam`` [C, K+1] on the original graph (mean over seeds)."""

    lam: Tensor
    val_loss: Tensor
    val_acc: Tensor
    test_acc: Tensor
    computed: int  # configurations trained in this call (the rest came from the cache)
    seconds: float  # wall time of this call


def config_key(lam: Tensor) -> str:
    return ",".join(f"{float(v):.7g}" for v in lam)


def ground_truth(data: GraphData, lam: Tensor, protocol: TrainProtocol, cache: Path | None = None,
                 progress: bool = True) -> GroundTruth:
    """Scores of ``lam`` on ``data`` under ``protocol``, training only what the cache lacks."""
    start = time.perf_counter()
    root = (cache if cache is not None else cache_dir()) / "groundtruth"
    path = root / f"{data.name.lower()}-{graph_fingerprint(data)}-{protocol.key()}.json"
    keys = [config_key(row) for row in lam]
    known = read_json_entries(path, "configs")
    missing_keys = [k for k in dict.fromkeys(keys) if k not in known]
    if missing_keys:
        graph = NodeGraph.from_graph_data(data)
        bar = tqdm(total=len(missing_keys), desc=f"ground truth ({data.name})", unit="config", disable=not progress)
        for lo in range(0, len(missing_keys), CHUNK):
            part = missing_keys[lo : lo + CHUNK]
            scores = score_configs(graph, lam[[keys.index(k) for k in part]], protocol, chunk=CHUNK)
            fresh = {k: {m: float(getattr(scores, m)[j]) for m in METRICS} for j, k in enumerate(part)}
            known = {**known, **merge_json_entries(path, "configs", fresh, {"dataset": data.name,
                                                                            "protocol": protocol.as_dict()})}
            bar.update(len(part))
        bar.close()
    values = {m: torch.tensor([number(known[k][m]) for k in keys]) for m in METRICS}
    return GroundTruth(lam, values["val_loss"], values["val_acc"], values["test_acc"], len(missing_keys),
                       time.perf_counter() - start)
