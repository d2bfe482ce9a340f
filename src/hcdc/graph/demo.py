"""The README demo: condense Cora with Random, GCond-X, GCond and HCDC and rank filters on each proxy.

A short version of ``bench/graph_table.py`` sized for a few minutes on 2 CPU cores: fewer sampled
configurations, one training seed, a shorter training protocol and a shorter GCond/HCDC schedule.
It ends with a table (method, Spearman ρ, Kendall τ, Perf, seconds) and a plot of HCDC's proxy
scores against the true validation accuracies, and leaves its proxies (one directory per method, for
``hcdc evaluate`` / ``hcdc search`` / ``hcdc info``) and a run record (``demo.json``: settings, seed,
versions, timings, the table's rows) in its output folder.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..artifacts import save_proxy
from ..data.graph import GraphData
from ..io import atomic_write_bytes, atomic_write_json
from ..runinfo import run_record
from .condensers import make_condenser
from ..metrics import check_rankable
from .evaluate import evaluate_proxy
from .groundtruth import ground_truth
from ..report import markdown_table, plot_scores
from .space import FilterSpace, TrainProtocol

DEMO_GCOND = {"epochs": 40}
DEMO_HCDC = {"candidates": 8, "repeats": 1, "epochs": 100, "warmup": 50, "align_every": 10, "val_steps": 50,
             "gcond": DEMO_GCOND}
DEMO_METHODS = {"random": {}, "gcond-x": DEMO_GCOND, "gcond": DEMO_GCOND, "hcdc": DEMO_HCDC}
DEMO_PROTOCOL = TrainProtocol(epochs=100, seeds=(0,))
DEMO_RATIO = 0.25


def run_demo(data: GraphData, out: Path, configs: int = 24, ratio: float = DEMO_RATIO, seed: int = 0) -> list[dict]:
    """Run the demo on ``data``; writes ``out/demo.md``, ``out/demo.json``, ``out/hcdc_scores.png`` and each
    method's proxy ``out/<method>/`` (replacing those of an earlier run), and returns the table's rows."""
    lam = FilterSpace().sample(configs, seed=0)
    check_rankable(len(lam), "configurations")
    begin = start = time.perf_counter()
    truth = ground_truth(data, lam, DEMO_PROTOCOL)
    truth_s = time.perf_counter() - start
    print(f"ground truth: {configs} configurations on the whole graph in {truth_s:.0f} s "
          f"({truth.computed} trained, the rest cached)", flush=True)
    rows = []
    for method, options in DEMO_METHODS.items():
        proxy = make_condenser(method, **options).condense(data, ratio, seed, progress=True)
        save_proxy(proxy, out / method, overwrite=True)
        condense_s = sum(proxy.meta["timings"].values())  # includes a synthesis shared with gcond-x
        start = time.perf_counter()
        ev = evaluate_proxy(proxy, data, lam, DEMO_PROTOCOL, truth)
        rows.append({"method": method, "r": ratio, "nodes": f"{proxy.meta['train_nodes']}+{proxy.meta['val_nodes']}",
                     "spearman": ev.report["spearman"], "kendall": ev.report["kendall"], "perf": 100 * ev.perf,
                     "oracle": 100 * ev.oracle_perf, "condense_s": condense_s, "eval_s": time.perf_counter() - start})
        print(f"{method}: rho={ev.report['spearman']:.3f}", flush=True)
        if method == "hcdc":
            plot_scores(ev.truth.val_acc, ev.proxy.val_loss, ev.report, out / "hcdc_scores.png", title=f"HCDC on {data.name}")
    table = markdown_table(rows, [("method", "method", ""), ("r", "r", ""), ("nodes", "train+val nodes", ""),
                                  ("spearman", "Spearman ρ", ".3f"), ("kendall", "Kendall τ", ".3f"),
                                  ("perf", "Perf (test %)", ".1f"), ("oracle", "whole-graph Perf", ".1f"),
                                  ("condense_s", "condense s", ".0f"), ("eval_s", "evaluate s", ".0f")])
    atomic_write_bytes(out / "demo.md", (table + "\n").encode())
    settings = {"dataset": data.name, "configs": configs, "config_seed": 0, "ratio": ratio,
                "protocol": DEMO_PROTOCOL.as_dict(), "methods": DEMO_METHODS}
    record = run_record(settings, seed, {"ground_truth": truth_s, "total": time.perf_counter() - begin})
    atomic_write_json(out / "demo.json", {**record, "results": rows})
    print()
    print(table)
    print(f"\nplot: {out / 'hcdc_scores.png'}")
    return rows
