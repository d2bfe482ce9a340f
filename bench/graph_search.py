"""End-to-end search on graph proxies: an Optuna study on each proxy against the same study on the
whole graph, with the cost of condensing counted.

For each dataset: one Optuna search (``--sampler``, ``--trials`` trials, batches of 16 stacked
models, :func:`hcdc.graph.search.search_filters`) over the filter coefficients on the whole graph,
and the same search on the proxy of each method and condensation seed (cached proxies are shared
with ``bench/graph_table.py``; a cached proxy's condensation time is the one measured when it was
made, unless ``--recondense`` condenses it again in this run). Each study's ``--finalists`` best trials are then trained on the whole graph with the
ground truth's protocol (2 seeds): Perf top-1 is the test accuracy of the best trial, Perf
finalists that of the finalist with the best whole-graph validation accuracy. All studies of a
dataset run in one process, so their times are side by side; the time saving is the whole-graph
study's total over the proxy's (condensation + search + finalists).

    OMP_NUM_THREADS=2 python bench/graph_search.py --ratios 0.25 0.5   # → bench/results/graph_search.{json,md}
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from graph_table import break_even, cached_proxy  # noqa: E402  (the table's proxy cache and helpers)

from hcdc.data import load_dataset  # noqa: E402
from hcdc.errors import exit_on_user_error  # noqa: E402
from hcdc.graph import FilterSpace, NodeGraph, TrainProtocol  # noqa: E402
from hcdc.graph.evaluate import proxy_graphs  # noqa: E402
from hcdc.report import markdown_table  # noqa: E402
from hcdc.graph.search import retrain_finalists, search_filters  # noqa: E402
from hcdc.io import write_result  # noqa: E402
from hcdc.metrics import mean_std  # noqa: E402
from hcdc.runinfo import command_line, machine_info, package_versions  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def retrained(whole_graph: NodeGraph, found, k: int) -> dict:
    """The search's ``k`` best trials trained on the whole graph (the ground truth's protocol): Perf of
    the best trial alone and of the finalist with the best whole-graph validation accuracy."""
    final = retrain_finalists(whole_graph, found, k)
    return {"perf_top1": float(final.test_acc[0]), "perf": float(final.test_acc[final.pick]),
            "finalists_seconds": final.seconds, "best": found.best.tolist(), "pick": final.lam[final.pick].tolist()}


def run_dataset(name: str, args, protocol: TrainProtocol) -> tuple[dict, list[dict]]:
    data, space = load_dataset(name), FilterSpace()
    whole_graph = NodeGraph.from_graph_data(data)
    whole = search_filters(whole_graph, space, protocol, args.trials, args.sampler, args.seed)
    reference = {"dataset": name, "search_seconds": whole.seconds, **retrained(whole_graph, whole, args.finalists)}
    reference["total_seconds"] = whole.seconds + reference["finalists_seconds"]
    print(f"{name} whole graph: {reference['total_seconds']:.0f} s, Perf {reference['perf_top1']:.3f} "
          f"(finalists {reference['perf']:.3f})", file=sys.stderr, flush=True)
    rows = []
    for method in args.methods:
        for ratio in args.ratios:
            runs = []
            for seed in args.condense_seeds:
                proxy, condense_seconds = cached_proxy(data, method, ratio, seed, {}, args.recondense)
                graph, evaluate_on = proxy_graphs(proxy)
                found = search_filters(graph, space, protocol, args.trials, args.sampler, args.seed,
                                       evaluate_on=evaluate_on)
                runs.append({"condense_seed": seed, "condense_seconds": condense_seconds,
                             "search_seconds": found.seconds, **retrained(whole_graph, found, args.finalists)})
            mean = {k: statistics.fmean(r[k] for r in runs)
                    for k in ("condense_seconds", "search_seconds", "finalists_seconds")}
            total = sum(mean.values())
            top1, perf = mean_std([r["perf_top1"] for r in runs]), mean_std([r["perf"] for r in runs])
            extra = mean["condense_seconds"] + mean["finalists_seconds"] - reference["finalists_seconds"]
            row = {"dataset": name, "method": method, "r": ratio, **mean, "total_seconds": total,
                   "whole_total_seconds": reference["total_seconds"], "search_speedup": whole.seconds / mean["search_seconds"],
                   "time_saving": reference["total_seconds"] / total,
                   "break_even_trials": break_even(max(extra, 0.0), whole.seconds / args.trials,
                                                   mean["search_seconds"] / args.trials),
                   "perf_top1_mean": top1[0], "perf_top1_std": top1[1], "whole_graph_perf_top1": reference["perf_top1"],
                   "perf_mean": perf[0], "perf_std": perf[1], "whole_graph_perf": reference["perf"], "runs": runs}
            rows.append(row)
            print(f"{name} {method} r={ratio}: {total:.0f} s vs {reference['total_seconds']:.0f} s; Perf top-1 "
                  f"{top1[0]:.3f} vs {reference['perf_top1']:.3f}, finalists {perf[0]:.3f} vs {reference['perf']:.3f}",
                  file=sys.stderr, flush=True)
    return reference, rows


COLUMNS = [("dataset", "dataset", ""), ("method", "method", ""), ("r", "r", ""),
           ("condense_seconds", "condense s", ".0f"), ("search_seconds", "proxy search s", ".1f"),
           ("finalists_seconds", "finalists s", ".1f"), ("total_seconds", "total s", ".0f"),
           ("whole_total_seconds", "whole-graph total s", ".0f"), ("search_speedup", "search speed-up", ".1f"),
           ("time_saving", "whole / total", ".2f"), ("break_even_trials", "break-even trials", ".0f"),
           ("perf_top1_mean", "Perf top-1", ".3f"), ("perf_top1_std", "±", ".3f"),
           ("whole_graph_perf_top1", "whole-graph top-1", ".3f"), ("perf_mean", "Perf finalists", ".3f"),
           ("perf_std", "±", ".3f"), ("whole_graph_perf", "whole-graph finalists", ".3f")]


def to_markdown(result: dict) -> str:
    return "\n".join([
        f"# Optuna search on graph proxies vs on the whole graph ({result['trials']} {result['sampler']} trials)", "",
        f"Command: `{result['command']}`  ", f"Machine: {result['machine']['processor']}, {result['machine']['cpu_count']} "
        f"cores, {result['machine'].get('torch_threads')} torch threads; torch {result['versions']['torch']}.", "",
        markdown_table(result["rows"], COLUMNS), "",
        "Each search: the same Optuna study (sampler seed fixed, batches of 16 configurations trained as one stacked "
        f"model, {result['train_seeds']} training seed(s) per trial) minimising the validation loss, on the proxy of each "
        "condensation seed and on the whole graph; proxy columns are means over condensation seeds "
        f"({', '.join(map(str, result['condense_seeds']))}). Then the study's {result['finalists']} best trials are "
        "trained on the whole graph (2 seeds; finalists s). Perf top-1: test accuracy of the study's best trial "
        "trained on the whole graph; Perf finalists: that of the finalist with the best whole-graph validation "
        "accuracy. total s: condensation + search + finalists; whole / total: the whole-graph study's total over the "
        "proxy's (above 1: the proxy saves time); break-even trials: the study size beyond which it does. condense s: "
        + ("measured in this run (every proxy condensed again, same seeds)." if result.get("recondensed") else
           "as measured when each cached proxy was made (possibly on other threads or under other load)."), ""])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["cora", "citeseer"])
    parser.add_argument("--methods", nargs="+", default=["random", "hcdc"])
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.5])
    parser.add_argument("--condense-seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=128)
    parser.add_argument("--sampler", default="tpe")
    parser.add_argument("--seed", type=int, default=0, help="sampler seed")
    parser.add_argument("--train-seeds", type=int, default=1, help="training seeds per trial")
    parser.add_argument("--finalists", type=int, default=5, help="best trials retrained on the whole graph")
    parser.add_argument("--recondense", action="store_true",
                        help="condense every proxy in this run, even if cached, so that condensation is timed side by "
                             "side with the searches (default: a cached proxy's time is the one measured when it was made)")
    parser.add_argument("--name", default="graph_search")
    args = parser.parse_args(argv)
    command = command_line(__file__, argv)
    protocol = TrainProtocol(seeds=tuple(range(args.train_seeds)))
    result = {"command": command, "trials": args.trials, "sampler": args.sampler, "seed": args.seed,
              "train_seeds": args.train_seeds, "finalists": args.finalists, "condense_seeds": args.condense_seeds,
              "recondensed": args.recondense, "machine": machine_info(),
              "versions": package_versions(), "whole_graph": [], "rows": [], "complete": False}
    for name in args.datasets:
        reference, rows = run_dataset(name, args, protocol)
        result["whole_graph"].append(reference)
        result["rows"] += rows
        write(result, args.name)
    result["complete"] = True
    write(result, args.name)
    print(to_markdown(result))
    return result


def write(result: dict, name: str) -> None:
    write_result(RESULTS, name, result, to_markdown(result))


if __name__ == "__main__":
    exit_on_user_error(main, "graph_search")
