"""How HCDC should fit its graph validation set: optimisers of S_val compared on tuning configurations.

For each condensation seed: the training block of the table's HCDC proxy (``--method``; S_train
does not depend on how S_val is fitted), Algorithm 1's trajectories recorded once
(:func:`hcdc.graph.calibrate.calibrate_validation` with no fitting step), then S_val fitted from
its start with each ``--variants`` entry (``optimizer:lr_features``, or ``none`` for no fit), with
the proxy's ``val_steps`` steps of ``bank_batch`` points. Each fit is scored by Spearman ρ on
``--tune-configs`` configurations drawn with ``--tune-seed``, disjoint from the table's sampled
(seed 0) and held-out (seed 1) configurations, so that choosing a variant does not look at the
table. Also reported: the final alignment loss (mean 1 − cos on the sampled points) and how far S_val
moved (mean L1 distance per node; a real node's row-normalised features sum to 1).

    OMP_NUM_THREADS=1 python bench/graph_val_fit.py --dataset citeseer --ratio 0.5   # → bench/results/graph_val_fit.{json,md}
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from graph_table import cached_proxy, method_spec  # noqa: E402  (the table's proxy cache)

from hcdc.data import load_dataset  # noqa: E402
from hcdc.errors import ConfigError, exit_on_user_error  # noqa: E402
from hcdc.graph import FilterSpace, TrainProtocol, evaluate_proxy, ground_truth, make_condenser  # noqa: E402
from hcdc.graph.calibrate import VALIDATION_OPTIMIZERS, calibrate_validation, fit_validation, validation_loss  # noqa: E402
from hcdc.graph.hcdc_condenser import validation_start, with_validation_features  # noqa: E402
from hcdc.io import write_result  # noqa: E402
from hcdc.metrics import mean_std  # noqa: E402
from hcdc.report import markdown_table  # noqa: E402
from hcdc.runinfo import command_line, machine_info, package_versions  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def parse_variant(spec: str) -> tuple[str, float | None]:
    """``optimizer:lr`` (an optimiser of :data:`VALIDATION_OPTIMIZERS`) or ``none``."""
    if spec == "none":
        return spec, None
    name, _, lr = spec.partition(":")
    if name not in VALIDATION_OPTIMIZERS or not lr:
        raise ConfigError(f"variant {spec!r}: expected none or optimizer:lr with optimizer in {sorted(VALIDATION_OPTIMIZERS)}")
    return name, float(lr)


def seed_rows(data, method: str, ratio: float, seed: int, variants: list[str], lam, truth, protocol) -> list[dict]:
    """One row per variant: S_val of the ``seed`` proxy fitted that way, scored on ``lam``."""
    proxy, _ = cached_proxy(data, method, ratio, seed, {})
    name, options = method_spec(method)
    condenser = make_condenser(name, **options)
    x_start, adj, y, columns = validation_start(proxy, data)
    t = proxy.tensors
    train = t["train_mask"]
    start = time.perf_counter()
    recorded = calibrate_validation(data, t["x"][train], t["adj"][train][:, train], t["y"][train],
                                    torch.bincount(y, minlength=data.num_classes), condenser.space, condenser.protocol,
                                    dataclasses.replace(condenser.calibration, val_steps=0), seed, progress=True,
                                    columns=columns)
    record_seconds = time.perf_counter() - start
    rows = []
    for spec in variants:
        name, lr = parse_variant(spec)
        x = x_start.clone().requires_grad_(True)
        loss = validation_loss(x, adj, y, columns, data.num_features)
        start = time.perf_counter()
        history = [] if lr is None else fit_validation(
            VALIDATION_OPTIMIZERS[name]([x], lr), recorded.points, loss, condenser.calibration.val_steps,
            condenser.calibration.bank_batch, torch.Generator().manual_seed(seed))
        fit_seconds = time.perf_counter() - start
        fitted = with_validation_features(proxy, data, x.detach(), columns, spec)
        ev = evaluate_proxy(fitted, data, lam, protocol, truth)
        rows.append({"variant": spec, "seed": seed, "spearman": ev.report["spearman"], "kendall": ev.report["kendall"],
                     "alignment_start": history[0] if history else None,
                     "alignment_end": history[-1] if history else None,
                     "l1_moved": float((x.detach() - x_start).abs().sum(1).mean()),
                     "fit_seconds": fit_seconds, "record_seconds": record_seconds})
        print(f"seed {seed} {spec}: rho={ev.report['spearman']:.3f}", file=sys.stderr, flush=True)
    return rows


def summary(rows: list[dict], means: tuple[str, ...]) -> list[dict]:
    """Per variant: ρ mean ± std and per seed, and the mean of each ``means`` field over the seeds that have it."""
    out = []
    for spec in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == spec]
        rho = mean_std([r["spearman"] for r in mine])
        row = {"variant": spec, "spearman_mean": rho[0], "spearman_std": rho[1],
               "per_seed": " / ".join(f"{r['spearman']:.3f}" for r in mine)}
        for key in means:
            values = [r[key] for r in mine if r[key] is not None]
            row[key] = statistics.fmean(values) if values else None
        out.append(row)
    return out


def study_markdown(result: dict, title: str, setting: str, variant_column: str, extra: list[tuple]) -> str:
    """A tuning study's markdown: ``title``, command, machine, ``setting``, then per variant ρ
    (mean, ±, per seed) and the ``extra`` columns of :func:`hcdc.report.markdown_table`."""
    cols = [("variant", variant_column, ""), ("spearman_mean", "ρ (tuning configs)", ".3f"), ("spearman_std", "±", ".3f"),
            ("per_seed", "per seed", ""), *extra]
    return "\n".join([
        f"# {title}: {result['dataset']}, r = {result['ratio']}", "",
        f"Command: `{result['command']}`  ", f"Machine: {result['machine']['processor']}, "
        f"{result['machine']['cpu_count']} cores; torch {result['versions']['torch']}.  ", setting, "",
        markdown_table(result["summary"], cols), ""])


def to_markdown(result: dict) -> str:
    return study_markdown(
        result, "Fitting HCDC's graph validation set",
        f"Tuning configurations: {result['tune_configs']} drawn with seed {result['tune_seed']}; S_train and "
        f"trajectories from `{result['method']}`, condensation seeds {result['condense_seeds']}.", "S_val fit",
        [("alignment_end", "final 1 − cos", ".3f"), ("l1_moved", "L1 moved per node", ".2f")])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="citeseer")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--method", default="hcdc", help="the table method whose S_train and trajectories are used")
    parser.add_argument("--condense-seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+",
                        default=["none", "adam:1e-4", "normalized-gd:0.03", "normalized-gd:0.1", "normalized-gd:0.3"])
    parser.add_argument("--tune-configs", type=int, default=40)
    parser.add_argument("--tune-seed", type=int, default=2024)
    parser.add_argument("--train-seeds", type=int, default=2, help="ground-truth training seeds")
    parser.add_argument("--name", default="graph_val_fit")
    args = parser.parse_args(argv)
    for spec in args.variants:
        parse_variant(spec)
    if args.tune_seed in (0, 1):
        raise ConfigError("--tune-seed must differ from the table's configuration seeds (0 and 1)")
    data = load_dataset(args.dataset)
    lam = FilterSpace().sample(args.tune_configs, args.tune_seed)
    truth = ground_truth(data, lam, TrainProtocol(seeds=tuple(range(args.train_seeds))))
    result = {"command": command_line(__file__, argv),
              "dataset": args.dataset, "ratio": args.ratio, "method": args.method,
              "condense_seeds": args.condense_seeds, "tune_configs": args.tune_configs, "tune_seed": args.tune_seed,
              "machine": machine_info(), "versions": package_versions()}
    groups = (seed_rows(data, args.method, args.ratio, seed, args.variants, lam, truth, TrainProtocol(seeds=(0,)))
              for seed in args.condense_seeds)
    return run_study(RESULTS, args.name, result, groups, ("alignment_end", "l1_moved"), to_markdown)


def run_study(directory: Path, name: str, result: dict, groups: Iterable[list[dict]], means: tuple[str, ...],
              to_markdown: Callable[[dict], str]) -> dict:
    """Fill ``result["rows"]`` one group of rows at a time, writing the partial result and its
    :func:`summary` after each (``complete`` false until the last), then print the markdown."""
    result.update(rows=[], complete=False)
    for rows in groups:
        result["rows"] += rows
        result["summary"] = summary(result["rows"], means)
        write_result(directory, name, result, to_markdown(result))
    result["complete"] = True
    markdown = to_markdown(result)
    write_result(directory, name, result, markdown)
    print(markdown)
    return result


if __name__ == "__main__":
    exit_on_user_error(main, "graph_val_fit")
