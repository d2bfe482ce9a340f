"""Graph table (the paper's Table 2): how well each proxy ranks polynomial filters on Cora / CiteSeer.

For each dataset × ratio r × method × condensation seed: condense, train every sampled
configuration on the proxy, rank by proxy validation loss, and compare with the ground truth
(configurations trained on the original graph, ranked by validation accuracy). Also on a second,
held-out set of configurations drawn with another seed. Per-configuration evaluation time on the
proxy and on the whole graph are measured in the same run (the speed-up and the break-even number of
configurations beyond which condensing + searching on the proxy beats searching on the graph).

Proxies are cached under ``$HCDC_CACHE/proxies`` and ground truth under ``$HCDC_CACHE/groundtruth``,
so an interrupted run resumes where it stopped.

    python bench/graph_table.py                      # the full table (hours on 2 CPU cores)
    python bench/graph_table.py --datasets cora --ratios 0.5 --condense-seeds 0 --configs 40 --train-seeds 1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path


from hcdc.artifacts import load_proxy, save_proxy
from hcdc.data import load_dataset
from hcdc.errors import exit_on_user_error
from hcdc.graph import (FilterProblem, FilterSpace, NodeGraph, TrainProtocol, evaluate_proxy, ground_truth, hpo_perf,
                        make_condenser, proxy_problem, score_configs, unaligned_proxy)
from hcdc.graph.evaluate import proxy_graphs
from hcdc.graph.train import drop_unused_columns, optimizer_seconds_per_config
from hcdc.report import markdown_table
from hcdc.metrics import mean_std, spearman
from hcdc.io import write_result
from hcdc.paths import cache_dir, snapshot_dir
from hcdc.runinfo import command_line, machine_info, package_versions

RESULTS = Path(__file__).parent / "results"
DATASETS, RATIOS, METHODS = ["cora", "citeseer"], [0.25, 0.5, 1.0], ["random", "gcond-x", "gcond", "hcdc"]
PAPER = {("cora", 0.25): 0.80, ("cora", 0.5): 0.85, ("cora", 1.0): 0.90,
         ("citeseer", 0.25): 0.79, ("citeseer", 0.5): 0.83, ("citeseer", 1.0): 0.89}


def method_spec(spec: str) -> tuple[str, dict]:
    """A table method: a condenser name, optionally with options, ``hcdc:feature_columns=256,repeats=2``."""
    name, _, rest = spec.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"method {spec!r}: options are key=value, got {item!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return name, options


# bumped when a condenser's output changes for the same options, so that older cached proxies are not reused
# (2: HCDC's recorded alignment points keep their own θ_S; they used to follow the trajectory's training)
PROXY_REVISION = 2


def cached_proxy(data, method: str, ratio: float, seed: int, options: dict, recondense: bool = False):
    """Condense (or reuse a cached proxy of) ``data`` with the table method ``method`` (see :func:`method_spec`)
    and extra ``options``; returns (proxy, condensation seconds). ``recondense``: condense even if a proxy
    is cached, so that its time is measured now, on this run's threads (the same seed gives the same proxy,
    up to float rounding that depends on the number of threads)."""
    name, spec_options = method_spec(method)
    options = {**spec_options, **options}
    resolved = make_condenser(name, **options).options  # defaults included: a change of defaults is a new entry
    key = hashlib.sha256(json.dumps([PROXY_REVISION, data.name, name, ratio, seed, resolved],
                                    sort_keys=True).encode()).hexdigest()[:12]
    path = cache_dir() / "proxies" / f"{data.name.lower()}-{name}-{ratio}-{seed}-{key}"
    if (path / "meta.json").exists() and not recondense:
        proxy = load_proxy(path)
    else:
        proxy = make_condenser(name, **options).condense(data, ratio, seed, progress=True, checkpoints=snapshot_dir())
        save_proxy(proxy, path, overwrite=True)
    return proxy, sum(proxy.meta["timings"].values())


def seconds_per_config(train_graph, lam, protocol, evaluate_on=None) -> float:
    """Training + scoring time of one configuration on ``train_graph`` (16 configurations, one seed)."""
    one_seed = TrainProtocol(**{**protocol.as_dict(), "seeds": (protocol.seeds[0],)})
    scores = score_configs(train_graph, lam[:16], one_seed, evaluate_on=evaluate_on)
    return scores.seconds / min(16, len(lam))


def speed_rows(data, lam, protocol, ratios, methods, seed: int, repeats: int) -> Iterator[dict]:
    """Per-configuration evaluation time on each proxy and on the whole graph, measured side by side:
    one untimed warm-up of each, then ``repeats`` alternations of (whole graph, proxy) in one process;
    medians and their ratio."""
    whole_graph = NodeGraph.from_graph_data(data)
    for ratio in ratios:
        for method in methods:
            proxy, _ = cached_proxy(data, method, ratio, seed, {})
            graphs = proxy_graphs(proxy)
            trained = drop_unused_columns(graphs[0], graphs[1] or graphs[0])[0]
            columns = trained.x.shape[1]
            whole, small, update = [], [], []
            seconds_per_config(whole_graph, lam, protocol)
            seconds_per_config(graphs[0], lam, protocol, evaluate_on=graphs[1])
            for _ in range(repeats):
                whole.append(seconds_per_config(whole_graph, lam, protocol))
                small.append(seconds_per_config(graphs[0], lam, protocol, evaluate_on=graphs[1]))
                update.append(optimizer_seconds_per_config(columns, data.num_classes, protocol))
            w, p, u = statistics.median(whole), statistics.median(small), statistics.median(update)
            print(f"speed {data.name} r={ratio} {method}: whole {w * 1e3:.0f} ms, proxy {p * 1e3:.0f} ms, {w / p:.1f}x "
                  f"(optimiser alone {u * 1e3:.0f} ms: at most {w / u:.1f}x)", file=sys.stderr, flush=True)
            yield {"dataset": data.name.lower(), "method": method, "r": ratio, "proxy_seconds_per_config": p,
                   "whole_seconds_per_config": w, "eval_speedup": w / p, "proxy_input_columns": columns,
                   "proxy_feature_entries": trained.feature_entries(), "whole_feature_entries": whole_graph.feature_entries(),
                   "optimizer_seconds_per_config": u, "speedup_bound": w / u, "repeats": repeats, "warmup": True}


def loss_ceiling(gt) -> float:
    """Spearman between the whole graph's own validation loss and its validation accuracy: what a proxy
    scored by validation loss reaches if it reproduces the whole graph's losses exactly."""
    return spearman(-gt.val_loss.numpy(), gt.val_acc.numpy())


def break_even(condense_seconds: float, whole_per_config: float, proxy_per_config: float) -> float | None:
    """Configurations beyond which condensing + searching on the proxy beats searching on the whole graph."""
    gain = whole_per_config - proxy_per_config
    return condense_seconds / gain if gain > 0 else None


def run_cell(data, lam, lam_ho, gt, gt_ho, protocol, proxy_protocol, method, ratio, seeds, options, whole) -> dict:
    evals, evals_ho, condense_s, eval_s, proxies, hpo, unaligned = [], [], [], [], [], [], []
    for seed in seeds:
        proxy, seconds = cached_proxy(data, method, ratio, seed, options)
        start = time.perf_counter()
        ev = evaluate_proxy(proxy, data, lam, proxy_protocol, gt)
        eval_s.append(time.perf_counter() - start)
        evals.append(ev)
        if proxy.meta["method"] == "hcdc":  # what alignment adds: the same proxy with S_val where it started
            unaligned.append(evaluate_proxy(unaligned_proxy(proxy, data), data, lam, proxy_protocol, gt).report["spearman"])
        evals_ho.append(evaluate_proxy(proxy, data, lam_ho, proxy_protocol, gt_ho))
        condense_s.append(seconds)
        proxies.append(proxy)
        hpo.append(hpo_perf(proxy_problem(proxy), data, FilterSpace(), protocol)[0])
    sp = mean_std([e.report["spearman"] for e in evals])
    sp_ho = mean_std([e.report["spearman"] for e in evals_ho])
    proxy_per_config = statistics.fmean(e.row()["proxy_seconds_per_config"] for e in evals)
    whole_per_config = whole["seconds_per_config"]
    meta = proxies[0].meta
    return {
        "dataset": data.name.lower(), "method": method, "r": ratio, "nodes": meta["nodes"],
        "train_nodes": meta["train_nodes"], "val_nodes": meta["val_nodes"],
        "fraction_of_graph": meta["fraction_of_graph"],
        "spearman_mean": sp[0], "spearman_std": sp[1],
        "kendall_mean": statistics.fmean(e.report["kendall"] for e in evals),
        "top5_mean": statistics.fmean(e.report["top_k"] for e in evals),
        "regret_mean": statistics.fmean(e.report["regret"] for e in evals),
        "perf_mean": statistics.fmean(e.perf for e in evals), "whole_graph_perf": evals[0].oracle_perf,
        "perf_hpo_mean": statistics.fmean(hpo), "perf_hpo_std": mean_std(hpo)[1], "whole_graph_hpo_perf": whole["hpo_perf"],
        "heldout_spearman_mean": sp_ho[0], "heldout_spearman_std": sp_ho[1],
        "spearman_per_seed": [e.report["spearman"] for e in evals],
        "unaligned_spearman_mean": mean_std(unaligned)[0] if unaligned else None, "unaligned_spearman_per_seed": unaligned,
        "heldout_spearman_per_seed": [e.report["spearman"] for e in evals_ho], "perf_per_seed": [e.perf for e in evals],
        "condense_seconds": statistics.fmean(condense_s), "eval_seconds": statistics.fmean(eval_s),
        "condense_stage_seconds": {k: statistics.fmean(p.meta["timings"][k] for p in proxies) for k in meta["timings"]},
        "proxy_seconds_per_config": proxy_per_config, "whole_seconds_per_config": whole_per_config,
        "eval_speedup": whole_per_config / proxy_per_config,
        "break_even_configs": break_even(statistics.fmean(condense_s), whole_per_config, proxy_per_config),
        "paper_hcdc_spearman": PAPER.get((data.name.lower(), ratio)), "condense_seeds": list(seeds),
    }


def ablation(data, lam, gt, protocol, ratio, seed) -> Iterator[dict]:
    """The HCDC ablation's rows, one variant at a time (Neumann terms, trajectories, S_train's condenser)."""
    variants = [("neumann_terms", j, {"neumann_terms": j}) for j in (0, 1, 5, 20)]
    variants += [("candidates", p, {"candidates": p}) for p in (2, 8)]
    variants += [("train_method", m, {"train_method": m}) for m in ("gcond", "random", "gcond-x")]
    defaults = make_condenser("hcdc").options
    for what, value, opts in variants:
        # a variant equal to the defaults is the table's own HCDC proxy (same cache entry)
        opts = {} if all(defaults[k] == v for k, v in opts.items()) else opts
        proxy, seconds = cached_proxy(data, "hcdc", ratio, seed, opts)
        ev = evaluate_proxy(proxy, data, lam, protocol, gt)
        print(f"ablation {what}={value}: rho={ev.report['spearman']:.3f} ({seconds:.0f}s)", file=sys.stderr, flush=True)
        yield {"dataset": data.name.lower(), "r": ratio, "ablation": what, "value": value,
               "spearman": ev.report["spearman"], "kendall": ev.report["kendall"], "condense_seconds": seconds}


def to_markdown(result: dict) -> str:
    cols = [("dataset", "dataset", ""), ("method", "method", ""), ("r", "r", ""), ("train_nodes", "train nodes", ""),
            ("val_nodes", "val nodes", ""), ("fraction_of_graph", "fraction", ".2%"),
            ("spearman_mean", "Spearman", ".3f"), ("spearman_std", "±", ".3f"),
            ("unaligned_spearman_mean", "ρ unaligned", ".3f"), ("kendall_mean", "Kendall", ".3f"),
            ("heldout_spearman_mean", "held-out ρ", ".3f"), ("top5_mean", "top-5", ".2f"),
            ("perf_mean", "Perf", ".3f"), ("whole_graph_perf", "whole-graph Perf", ".3f"),
            ("perf_hpo_mean", "Perf (HPO)", ".3f"), ("whole_graph_hpo_perf", "whole-graph Perf (HPO)", ".3f"),
            ("paper_hcdc_spearman", "paper HCDC ρ", ""), ("condense_seconds", "condense s", ".0f"),
            ("eval_speedup", "eval speed-up", ".1f"), ("break_even_configs", "break-even configs", ".0f")]
    parts = [f"# Graph proxies: ranking of {result['configs']} polynomial filters (K = 3)", "",
             f"Command: `{result['command']}`  ", f"Machine: {result['machine']['processor']}, "
             f"{result['machine']['cpu_count']} cores; torch {result['versions']['torch']}.  "]
    if result["rows"]:  # a --speed run has timings only
        parts += [f"Ground truth: {result['train_seeds']} training seed(s) per configuration; wall time "
                 + ", ".join(f"{k} {v:.0f} s" for k, v in result["ground_truth_seconds"].items()) + ".", "",
                 markdown_table(result["rows"], cols), "",
                 "Ceiling of a proxy scored by validation loss (the whole graph's own validation loss against its "
                 "validation accuracy, Spearman; sampled / held-out configurations): "
                 + ", ".join(f"{k} {v[0]:.3f} / {v[1]:.3f}" for k, v in result.get("loss_ceiling", {}).items()) + ".", "",
                 "Spearman/Kendall: proxy validation loss vs true validation accuracy; held-out ρ: configurations "
                 "drawn with another seed; ρ unaligned: HCDC's proxy with its validation features put back where alignment "
                 "started them (real validation nodes), i.e. what the alignment step adds; Perf: true test accuracy of the proxy's pick among the sampled "
                 "configurations; whole-graph Perf: the same for the pick of the true validation accuracy; Perf (HPO): "
                 "true test accuracy of the filter found by hypergradient HPO (Lorraine et al.) on the proxy, from 4 starts; "
                 "whole-graph Perf (HPO): the same search on the whole graph."]
    if result.get("speed"):
        parts += ["", "Evaluation speed-up: per-configuration time (16 configurations, one training seed) on the "
                  "proxy of the first condensation seed and on the whole graph, alternated "
                  f"{result['speed'][0]['repeats']} times in one process (medians; after one untimed run of "
                  "each where the warm-up column says so); the table's speed-up and "
                  "break-even columns use these numbers.", "",
                  markdown_table(result["speed"], [
                      ("dataset", "dataset", ""), ("method", "method", ""), ("r", "r", ""),
                      ("proxy_seconds_per_config", "proxy s/config", ".3f"),
                      ("whole_seconds_per_config", "whole-graph s/config", ".3f"), ("eval_speedup", "speed-up", ".1f"),
                      ("proxy_input_columns", "proxy input columns", ""),
                      ("proxy_feature_entries", "proxy feature entries", ""),
                      ("whole_feature_entries", "whole-graph feature entries", ""),
                      ("optimizer_seconds_per_config", "Adam alone s/config", ".3f"),
                      ("speedup_bound", "speed-up bound", ".1f"), ("warmup", "warm-up", "")])]
        if any("speedup_bound" in r for r in result["speed"]):
            parts += ["", "Adam alone: the time the protocol's Adam steps (one per epoch) take on the parameters of 16 configurations "
                      "at the proxy's input width (W1 has one row per input column that some proxy node uses), with no "
                      "forward or backward pass. A proxy pays it whatever its number of nodes, so whole-graph time over "
                      "it bounds the speed-up any proxy of that width can reach. Feature entries: the stored entries of the "
                      "feature matrix each trains on (the proxy's training block, dense; the whole graph's non-zeros): "
                      "the first layer's product with W1 and its gradient cost that many multiply-adds per hidden unit."]
    if result.get("parts"):
        parts += ["", "Made by these runs (each row's timings are from its own run):", ""]
        parts += [f"- `{name}`: `{part['command']}` ({part['torch_threads']} torch thread(s))"
                  for name, part in result["parts"].items()]
    if result.get("missing_cells"):
        parts += ["", "Not run yet: " + ", ".join(f"{d} r={r} {m}" for d, r, m in result["missing_cells"]) + "."]
    if result.get("ablation"):
        parts += ["", "## Ablation (HCDC)", "", markdown_table(result["ablation"], [
            ("dataset", "dataset", ""), ("r", "r", ""), ("ablation", "ablation", ""), ("value", "value", ""),
            ("spearman", "Spearman", ".3f"), ("kendall", "Kendall", ".3f"), ("condense_seconds", "condense s", ".0f")])]
    return "\n".join(parts) + "\n"


def write(result: dict, name: str) -> None:
    write_result(RESULTS, name, result, to_markdown(result))


def combine(names: list[str], name: str, command: str) -> dict:
    """Merge the tables of separate runs (e.g. one process per dataset) into one; a cell or ablation variant
    run by several of them takes the row of the last (a rerun after a change of defaults replaces the older row)."""
    parts = [json.loads((RESULTS / f"{n}.json").read_text()) for n in names]
    cells = {(r["dataset"], r["r"], r["method"]): r for p in parts for r in p["rows"]}
    rows = sorted(cells.values(), key=lambda r: (
        DATASETS.index(r["dataset"]) if r["dataset"] in DATASETS else len(DATASETS), r["r"],
        METHODS.index(r["method"]) if r["method"] in METHODS else len(METHODS)))
    present = {(r["dataset"], r["r"], r["method"]) for r in rows}
    truth_seconds: dict[str, float] = {}
    for p in parts:  # a part that found the ground truth cached reports ~0 s: keep the run that computed it
        for k, v in p["ground_truth_seconds"].items():
            truth_seconds[k] = max(v, truth_seconds.get(k, 0.0))
    speed = {(r["dataset"], r["method"], r["r"]): r for p in parts for r in p.get("speed", [])}
    for row in rows:  # side-by-side timings replace those of the row's own run
        timing = speed.get((row["dataset"], row["method"], row["r"]))
        if timing:
            row.update({k: timing[k] for k in ("proxy_seconds_per_config", "whole_seconds_per_config", "eval_speedup")},
                       break_even_configs=break_even(row["condense_seconds"], timing["whole_seconds_per_config"],
                                                     timing["proxy_seconds_per_config"]), speed_measured="side by side")
    ablation = {(r["dataset"], r["r"], r["ablation"], r["value"]): r for p in parts for r in p["ablation"]}
    result = {**parts[0], "rows": rows, "ablation": list(ablation.values()),
              "speed": list(speed.values()),
              "ground_truth_seconds": truth_seconds,
              "loss_ceiling": {k: v for p in parts for k, v in p.get("loss_ceiling", {}).items()},
              "missing_cells": [[d, r, m] for d in DATASETS for r in RATIOS for m in METHODS if (d, r, m) not in present],
              "complete": all(p.get("complete", False) for p in parts),
              "parts": {n: {"command": p["command"], "torch_threads": p["machine"].get("torch_threads")}
                        for n, p in zip(names, parts)},
              "command": command}
    for dataset in dict.fromkeys(r["dataset"] for r in rows):  # parts run before the ceiling was recorded
        if dataset not in result["loss_ceiling"]:
            result["loss_ceiling"][dataset] = loss_ceilings(load_dataset(dataset), result)
    write(result, name)
    return result


def loss_ceilings(data, result: dict) -> list[float]:
    """[ceiling on the sampled, on the held-out configurations] of ``result``'s run (ground truth from the cache)."""
    space, protocol = FilterSpace(), TrainProtocol(seeds=tuple(range(result["train_seeds"])))
    return [loss_ceiling(ground_truth(data, space.sample(result["configs"], result.get(seed, default)), protocol))
            for seed, default in (("config_seed", 0), ("heldout_seed", 1))]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=DATASETS)
    parser.add_argument("--ratios", nargs="+", type=float, default=RATIOS)
    parser.add_argument("--methods", nargs="+", default=METHODS,
                        help="condensers, each optionally with options: hcdc:feature_columns=256")
    parser.add_argument("--condense-seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--configs", type=int, default=80)
    parser.add_argument("--config-seed", type=int, default=0)
    parser.add_argument("--heldout-seed", type=int, default=1)
    parser.add_argument("--train-seeds", type=int, default=2, help="training seeds per configuration, ground truth")
    parser.add_argument("--proxy-seeds", type=int, default=1, help="training seeds per configuration on a proxy")
    parser.add_argument("--ablation", action="store_true", help="also the HCDC ablation on the first dataset at r = 0.5")
    parser.add_argument("--speed", action="store_true",
                        help="only time evaluation on each proxy (first condensation seed) and on the whole graph, "
                             "side by side")
    parser.add_argument("--speed-repeats", type=int, default=3)
    parser.add_argument("--name", default="graph_table")
    parser.add_argument("--combine", nargs="+", metavar="NAME", help="only merge the results NAME.json into --name")
    args = parser.parse_args(argv)
    command = command_line(__file__, argv)
    if args.combine:
        return combine(args.combine, args.name, command)
    space, protocol = FilterSpace(), TrainProtocol(seeds=tuple(range(args.train_seeds)))
    proxy_protocol = TrainProtocol(seeds=tuple(range(args.proxy_seeds)))
    result = {"rows": [], "ablation": [], "speed": [], "loss_ceiling": {}, "configs": args.configs, "train_seeds": args.train_seeds,
              "proxy_seeds": args.proxy_seeds, "config_seed": args.config_seed, "heldout_seed": args.heldout_seed,
              "ground_truth_seconds": {}, "machine": machine_info(),
              "versions": package_versions(), "command": command, "complete": False}
    for name in args.datasets:
        data = load_dataset(name)
        lam, lam_ho = space.sample(args.configs, args.config_seed), space.sample(args.configs, args.heldout_seed)
        if args.speed:  # timings only: no ground truth needed
            result["speed"] += speed_rows(data, lam, protocol, args.ratios, args.methods, args.condense_seeds[0],
                                          args.speed_repeats)
            write(result, args.name)
            continue
        gt, gt_ho = ground_truth(data, lam, protocol), ground_truth(data, lam_ho, protocol)
        result["ground_truth_seconds"][name] = gt.seconds + gt_ho.seconds
        result["loss_ceiling"][name] = [loss_ceiling(gt), loss_ceiling(gt_ho)]
        whole = {"seconds_per_config": seconds_per_config(NodeGraph.from_graph_data(data), lam, protocol),
                 "hpo_perf": hpo_perf(FilterProblem.from_graph_data(data), data, space, protocol)[0]}
        for ratio in args.ratios:
            for method in args.methods:
                row = run_cell(data, lam, lam_ho, gt, gt_ho, protocol, proxy_protocol, method, ratio,
                               args.condense_seeds, {}, whole)
                result["rows"].append(row)
                write(result, args.name)
                print(f"{name} r={ratio} {method}: rho={row['spearman_mean']:.3f}±{row['spearman_std']:.3f} "
                      f"held-out {row['heldout_spearman_mean']:.3f} perf={row['perf_mean']:.3f} "
                      f"hpo={row['perf_hpo_mean']:.3f}", file=sys.stderr, flush=True)
        if args.ablation and name == args.datasets[0]:
            for row in ablation(data, lam, gt, proxy_protocol, 0.5, args.condense_seeds[0]):
                result["ablation"].append(row)
                write(result, args.name)
    result["complete"] = True
    write(result, args.name)
    print(to_markdown(result))
    return result


if __name__ == "__main__":
    exit_on_user_error(main, "graph_table")
