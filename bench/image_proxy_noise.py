"""How well can any image proxy rank at a protocol's scale: the ranking of real-image training parts.

A diagnostic for the image table (:mod:`bench.image_table`). For a committed table run, every
architecture trains on a class-stratified sample of ``ipc`` real training images per class of the
protocol's training data (a Random proxy's training part, the best case of a coreset) under a
variant of the proxy-training protocol (epochs, learning rate, batch size, …) and several training
seeds, and is scored on ``--real-val`` real validation images per class (a perfect validation
part). Reported per variant: the Spearman of each seed's ranking and of the seed mean against the
table's true validation accuracy, the mean Spearman between two seeds' rankings, the reliability of
a mean over the table's number of proxy training seeds (Spearman–Brown), and the noise ceiling
``sqrt(reliability_truth × reliability_proxy)``: the Spearman a proxy whose expected ranking were
exactly the true one would reach, at this noise, against this ground truth (classical attenuation).

    OMP_NUM_THREADS=2 python bench/image_proxy_noise.py image_table_cpu_realval --seeds 4 \\
        --variant 'ipc 10={}' --variant 'ipc 10, 150 epochs={"proxy_epochs": 150}' \\
        --variant 'ipc 10, lr 0.01={"lr": 0.01}' --variant 'ipc 10, full batch={"batch_size": 100, "proxy_epochs": 100}' \\
        --variant 'ipc 50, 20 epochs={"ipc": 50, "proxy_epochs": 20}'
    # → bench/results/image_proxy_noise_cpu_realval.{json,md}
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from image_val_part import (  # noqa: E402  (the same scoring and reports as the validation-part diagnostic)
    ranking, read_table, report_header, train_grid, validation_sample, write_report)
from image_table import parse_named_json  # noqa: E402  (NAME=JSON items, as its --options)

from hcdc.data import load_dataset  # noqa: E402
from hcdc.errors import ConfigError, exit_on_user_error  # noqa: E402
from hcdc.report import markdown_table  # noqa: E402
from hcdc.image.protocol import ImageProtocol, class_subset, prepare_data  # noqa: E402
from hcdc.image.training import score_architecture  # noqa: E402
from hcdc.image.space import Architecture  # noqa: E402
from hcdc.metrics import spearman_brown  # noqa: E402
from hcdc.runinfo import command_line, machine_info, package_versions  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def variant_protocol(table: dict, changes: dict) -> ImageProtocol:
    """The table's protocol with a variant's ``changes`` (``ipc`` and any other field) applied, validated."""
    return ImageProtocol(**table["protocol"]).with_(**changes)


def run_variant(table: dict, raw, name: str, changes: dict, seeds: int, real_val: int, subset_seed: int) -> dict:
    """Train the table's architectures on ``ipc`` real images per class of ``raw`` (the table's dataset, loaded)
    under the changed protocol and rank them."""
    protocol = variant_protocol(table, changes)
    data = prepare_data(raw, protocol)
    pick = class_subset(data.y_train, protocol.ipc, data.num_classes, seed=subset_seed)
    x, y = data.normalized("train")[pick], data.y_train[pick]
    x_val, y_val = validation_sample(data, real_val)
    archs = [Architecture.parse(a) for a in table["architectures"]]
    acc = np.zeros((seeds, len(archs)))
    start = time.perf_counter()
    for (j, s), params in train_grid(archs, x, y, protocol, range(seeds), data.num_classes, name).items():
        acc[s, j] = score_architecture(archs[j], params, x_val, y_val, protocol)["acc"]
    result = ranking(acc, np.asarray(table["true_val_acc"]))
    k = len(protocol.seeds_on_proxy)  # a variant may not change the proxy seeds: the table's count
    reliability = spearman_brown(result["seed_to_seed"], k)
    return {"variant": name, "changes": changes, "ipc": protocol.ipc, "train_images": len(y), "real_val_images": len(y_val),
            "steps": protocol.epochs_on_proxy * math.ceil(len(y) / protocol.batch_size), "training_seeds": seeds,
            **result, "table_proxy_seeds": k, "reliability_at_table_seeds": reliability,
            "noise_ceiling": math.sqrt(max(table["ground_truth_reliability"], 0) * reliability),
            "seconds": time.perf_counter() - start}


COLUMNS = [("variant", "variant", ""), ("train_images", "train imgs", ""), ("steps", "steps", ""),
           ("training_seeds", "training seeds", ""), ("spearman_of_mean", "ρ seed mean", ".3f"),
           ("per_seed", "ρ per seed", ""), ("seed_to_seed", "seed–seed", ".2f"),
           ("reliability_at_table_seeds", "reliability (table's seeds)", ".2f"), ("noise_ceiling", "noise ceiling", ".2f"),
           ("mean_acc", "mean val acc", ".3f"), ("seconds", "s", ".0f")]


def to_markdown(result: dict) -> str:
    """The markdown report of a run (from its JSON alone)."""
    rows = result["rows"]
    flat = [{**r, "per_seed": " ".join(f"{v:.2f}" for v in r["spearman_per_seed"])} for r in rows]
    return "\n".join([
        *report_header(f"How well real-image training parts rank at the scale of {result['table']}", result), "",
        f"Ground truth: seed-to-seed Spearman {result['ground_truth_seed_spearman']:.2f}, reliability of its seed mean "
        f"{result['ground_truth_reliability']:.2f}.", "",
        markdown_table(flat, COLUMNS), "",
        "Each architecture trains on a class-stratified sample of real training images (a Random proxy's training part) "
        "under the variant's proxy-training protocol and training seeds 0, 1, …, and is scored on "
        f"{rows[0]['real_val_images'] if rows else 0} real validation images; ρ: Spearman against the true validation "
        "accuracy of the seed-mean accuracy (and of each seed); seed–seed: mean Spearman between two seeds' rankings; "
        "reliability: Spearman–Brown for a mean over the table's proxy training seeds; noise ceiling: "
        "sqrt(reliability of the ground truth × reliability of the proxy), the Spearman that a proxy with exactly the "
        "true expected ranking would reach at this noise.", ""])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("table", help="name of a committed image table run, e.g. image_table_cpu")
    parser.add_argument("--variant", action="append", required=True, metavar="NAME=JSON",
                        help="proxy-training variant: ipc and ImageProtocol fields, e.g. 'long={\"proxy_epochs\": 150}'")
    parser.add_argument("--seeds", type=int, default=4, help="training seeds 0..N-1 per architecture (default 4)")
    parser.add_argument("--real-val", type=int, default=100, help="real validation images per class (default 100)")
    parser.add_argument("--subset-seed", type=int, default=0, help="seed of the class-stratified training sample")
    parser.add_argument("--name", default=None, help="results name (default: the table's with image_proxy_noise for image_table)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    command = command_line(__file__, argv)
    if args.seeds < 2:
        raise ConfigError("--seeds must be at least 2 (seed-to-seed agreement needs two rankings)")
    variants = [parse_named_json(v, "--variant") for v in args.variant]
    table = read_table(args.out_dir, args.table)
    for _, changes in variants:  # every variant is checked before any trains
        if "seeds" in changes or "proxy_seeds" in changes:
            raise ConfigError("a variant cannot change the seeds (--seeds sets the training seeds)")
        variant_protocol(table, changes)
    raw = load_dataset(table["dataset"])  # once: the variants differ in training, not in data
    rows = [run_variant(table, raw, name, changes, args.seeds, args.real_val, args.subset_seed) for name, changes in variants]
    name = args.name or args.table.replace("image_table", "image_proxy_noise")
    result = {"table": args.table, "command": command, "rows": rows, "ground_truth_reliability": table["ground_truth_reliability"],
              "ground_truth_seed_spearman": table["ground_truth_seed_spearman"], "machine": machine_info(),
              "versions": package_versions(), "torch_threads": torch.get_num_threads()}
    write_report(args.out_dir, name, result, to_markdown(result))
    return result


if __name__ == "__main__":
    exit_on_user_error(main, "image_proxy_noise")
