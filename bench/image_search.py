"""End-to-end architecture search on image proxies: an Optuna study over NAS-Bench-201 cells on each
proxy against the same study on the original data, with the cost of condensing counted.

What ``hcdc search PROXY_DIR`` does for a user, measured: for each method and condensation seed,
condense (the proxies are cached with ``bench/image_table.py``'s, so a cached proxy's condensation
time is the one measured when it was made), run ``--trials`` trials of the same seeded Optuna study
(:func:`hcdc.image.search.search_architectures`) whose objective is the proxy's score (training on
its training part, scoring on its validation part, the protocol's proxy epochs and seeds), then
train the study's ``--finalists`` best cells on the original data as the ground truth does and
pick the one with the best validation accuracy. The reference is the same study on the original
data, each trial scored by the ground truth itself. Perf top-1: true test accuracy of the study's
best cell; Perf finalists: that of the pick. The original-data costs (that study's trials and
every finalist) are the ground truth's training times as measured when each cell was first
trained (the cache would otherwise make a repeated cell free), so they are the same whichever
study trained a cell first; the proxies' search times are this run's wall times.

    OMP_NUM_THREADS=2 python bench/image_search.py --protocol cpu --seeds 0 1   # → bench/results/image_search_cpu.{json,md}
    OMP_NUM_THREADS=2 python bench/image_search.py --protocol cpu --seeds 0 1 \\
        --protocol-options '{"val_part": "real"}' --name image_search_cpu_realval   # baselines on real val images
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from image_table import add_protocol_options_argument, cached_proxy, with_protocol_options  # noqa: E402  (the table's)

from hcdc.data import get_spec, load_dataset  # noqa: E402
from hcdc.errors import ConfigError, exit_on_user_error  # noqa: E402
from hcdc.data.image import data_fingerprint  # noqa: E402
from hcdc.image.groundtruth import image_ground_truth  # noqa: E402
from hcdc.image.protocol import PROTOCOLS, prepare_data  # noqa: E402
from hcdc.image.training import default_device  # noqa: E402
from hcdc.image.recipes import method_options  # noqa: E402
from hcdc.image.search import proxy_objective, retrain_finalists, search_architectures, truth_objective  # noqa: E402
from hcdc.io import write_result  # noqa: E402
from hcdc.metrics import mean_std  # noqa: E402
from hcdc.report import markdown_table  # noqa: E402
from hcdc.runinfo import command_line, machine_info, package_versions  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def finalists(view, found, k: int, protocol, device) -> dict:
    """The study's ``k`` best cells trained on the original data: Perf of the best alone and of the pick."""
    final = retrain_finalists(view, found, k, protocol, device=device, progress=False)
    t = final.truth
    return {"best": found.best.to_str(), "pick": t.archs[final.pick].to_str(),
            "perf_top1": float(t.test_acc[0]), "perf": float(t.test_acc[final.pick]),
            "val_acc_top1": float(t.val_acc[0]), "val_acc": float(t.val_acc[final.pick]),
            "finalists_seconds": t.compute_seconds}


COLUMNS = [("method", "method", ""), ("ipc", "ipc", ""), ("condense_seconds", "condense s", ".0f"),
           ("search_seconds", "search s", ".0f"), ("finalists_seconds", "finalists s", ".0f"),
           ("total_seconds", "total s", ".0f"), ("time_saving", "original / total", ".2f"),
           ("perf_top1_mean", "Perf top-1", ".1%"), ("perf_top1_std", "±", ".1%"),
           ("perf_mean", "Perf finalists", ".1%"), ("perf_std", "±", ".1%")]


def to_markdown(result: dict) -> str:
    ref, p = result["original"], result["protocol"]
    rows = [{"method": "original data", "ipc": "", "condense_seconds": 0.0, "search_seconds": ref["search_seconds"],
             "finalists_seconds": ref["finalists_seconds"], "total_seconds": ref["total_seconds"], "time_saving": 1.0,
             "perf_top1_mean": ref["perf_top1"], "perf_mean": ref["perf"]}] if ref else []
    return "\n".join([
        f"# Architecture search on image proxies vs on the original data ({result['dataset']}, protocol "
        f"'{result['protocol_name']}', {result['trials']} {result['sampler']} trials)", "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']['processor']}, {result['machine']['cpu_count']} cores, "
        f"{result['torch_threads']} torch threads; device {result['device']}; torch {result['versions']['torch']}.  ",
        f"Protocol: NB201Network C={p['C']}, N={p['N']}; {p['resolution']}×{p['resolution']}; original data "
        f"{p['train_subset']} training / {p['val_subset']} validation images per class, {p['epochs']} epochs × "
        f"{len(p['seeds'])} seeds; proxies {p['proxy_epochs']} epochs × {len(p['proxy_seeds'] or p['seeds'])} seeds; "
        f"condensation seeds {result['condense_seeds']}; {result['finalists']} finalists."
        f"{'' if result['complete'] else ' (incomplete)'}", "",
        markdown_table(rows + result["rows"], COLUMNS), "",
        "Each row: the same Optuna study over the 15,625 NAS-Bench-201 cells (sampler seed fixed), on the proxy "
        "(mean over condensation seeds) or on the original data (each trial scored by the ground truth). search s: "
        "the study's trials; finalists s: training its best cells on the original data as the ground truth does; "
        "total s: condensation + search + finalists; original / total: the original-data study's total over the "
        "row's (above 1: the proxy saves time). Perf top-1: true test accuracy of the study's best cell; Perf "
        "finalists: of the finalist with the best true validation accuracy. Original-data costs are the ground "
        "truth's training times as first measured (see the script's docstring).", ""])


def write(result: dict, out_dir: Path, name: str) -> None:
    write_result(out_dir, name, result, to_markdown(result))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="cpu")
    add_protocol_options_argument(parser)
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--methods", nargs="+", default=["random", "dc", "tm", "hcdc"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="condensation seeds")
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--sampler", default="tpe")
    parser.add_argument("--seed", type=int, default=0, help="sampler seed")
    parser.add_argument("--finalists", type=int, default=3, help="best cells trained on the original data")
    parser.add_argument("--device", default=None)
    parser.add_argument("--name", default=None, help="results name (default: image_search_<protocol>)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    command = command_line(__file__, argv)
    protocol = with_protocol_options(PROTOCOLS[args.protocol], args.protocol_options)
    if get_spec(args.dataset).kind != "image":
        raise ConfigError(f"dataset '{args.dataset}' is not an image dataset")
    if args.trials < 1 or args.finalists < 1 or not args.seeds or min(args.seeds) < 0:
        raise ConfigError("--trials and --finalists must be >= 1 and --seeds non-negative")
    options = {m: method_options(m, args.protocol, protocol) for m in args.methods}  # unknown methods fail first
    device = default_device(args.device)
    view = prepare_data(load_dataset(args.dataset, args.data_root), protocol)
    fingerprint = data_fingerprint(view)
    name = args.name or f"image_search_{args.protocol}"
    result = {"command": command, "dataset": view.name, "protocol_name": args.protocol, "protocol": protocol.as_dict(),
              "trials": args.trials, "sampler": args.sampler, "seed": args.seed, "finalists": args.finalists,
              "condense_seeds": args.seeds, "options": options, "device": str(device), "machine": machine_info(),
              "versions": package_versions(), "torch_threads": torch.get_num_threads(),
              "original": None, "rows": [], "complete": False}

    start = time.perf_counter()
    whole = search_architectures(truth_objective(view, protocol, device), args.trials, args.sampler, args.seed)
    trained = image_ground_truth(view, list(dict.fromkeys(whole.archs)), protocol, device=device, progress=False)
    ref = {"search_seconds": trained.compute_seconds, "search_wall_seconds": time.perf_counter() - start,
           **finalists(view, whole, args.finalists, protocol, device), "trials": whole.as_dict()}
    ref["total_seconds"] = ref["search_seconds"] + ref["finalists_seconds"]
    result["original"] = ref
    write(result, args.out_dir, name)
    print(f"original data: {ref['total_seconds']:.0f} s, Perf top-1 {ref['perf_top1']:.3f}, finalists {ref['perf']:.3f}",
          file=sys.stderr, flush=True)
    for method in args.methods:
        runs = []
        for seed in args.seeds:
            proxy, condense_seconds, cached, _ = cached_proxy(view, fingerprint, method, protocol.ipc, seed, options[method])
            found = search_architectures(proxy_objective(proxy, protocol, device), args.trials, args.sampler, args.seed)
            runs.append({"condense_seed": seed, "cached_proxy": cached, "condense_seconds": condense_seconds,
                         "search_seconds": found.seconds, **finalists(view, found, args.finalists, protocol, device),
                         "trials": found.as_dict()})
        mean = {k: statistics.fmean(r[k] for r in runs) for k in ("condense_seconds", "search_seconds", "finalists_seconds")}
        total = sum(mean.values())
        top1, perf = mean_std([r["perf_top1"] for r in runs]), mean_std([r["perf"] for r in runs])
        row = {"method": method, "ipc": protocol.ipc, **mean, "total_seconds": total,
               "time_saving": ref["total_seconds"] / total, "perf_top1_mean": top1[0], "perf_top1_std": top1[1],
               "perf_mean": perf[0], "perf_std": perf[1], "runs": runs}
        result["rows"].append(row)
        write(result, args.out_dir, name)
        print(f"{method}: {total:.0f} s vs {ref['total_seconds']:.0f} s; Perf top-1 {top1[0]:.3f} vs {ref['perf_top1']:.3f}, "
              f"finalists {perf[0]:.3f} vs {ref['perf']:.3f}", file=sys.stderr, flush=True)
    result["complete"] = True
    write(result, args.out_dir, name)
    print(to_markdown(result))
    return result


if __name__ == "__main__":
    exit_on_user_error(main, "image_search")
