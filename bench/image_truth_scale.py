"""Do an image table's proxies rank the same against a ground truth trained on more data?

A diagnostic for the image table (:mod:`bench.image_table`). A scaled protocol's ground truth
trains every architecture on a small subset (the cpu protocol: 250 images per class, where the
paper's trains on 4,000), so the architectures it favours may be those that do well on little
data, which any small proxy favours too. Here the ground truth of a variant of the table's
protocol (``--variant NAME=JSON``: ``train_subset``, ``epochs``, ``seeds``, … — fields of the
ground truth only) is trained on a superset of the same training images (:func:`class_subset`
draws the first n of one seeded permutation per class, so 1,000 per class contains the table's
250), scored on the same validation and test images, and the scores the table stored for every
method and condensation seed are ranked against it, with nothing retrained on the proxies. Reported
per variant: its seed agreement, its Spearman with the table's ground truth, and per method the
Spearman of the proxies against both truths and the true test accuracy of their picks under it.

``--truth-of TABLE`` compares instead with the ground truth another run of the same table stored (same
architectures and data, its ground truth trained separately: from scratch, on another machine), with
nothing trained: how far the ground truth itself moves between runs, and the proxies against it.

    OMP_NUM_THREADS=2 python bench/image_truth_scale.py image_table_cpu_realval \\
        --variant '1,000 per class={"train_subset": 1000, "seeds": [0, 1]}'   # → bench/results/image_truth_scale_cpu_realval.{json,md}
    python bench/image_truth_scale.py image_table_cpu --truth-of fromscratch/image_table_cpu \\
        --name image_truth_scale_cpu_fromscratch
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from image_table import parse_named_json  # noqa: E402  (NAME=JSON items, as its --options)
from image_val_part import read_table, report_header, write_report  # noqa: E402  (the image diagnostics' report writer)

from hcdc.data import load_dataset  # noqa: E402
from hcdc.errors import ConfigError, exit_on_user_error  # noqa: E402
from hcdc.image.groundtruth import image_ground_truth  # noqa: E402
from hcdc.image.protocol import ImageProtocol  # noqa: E402
from hcdc.image.space import Architecture  # noqa: E402
from hcdc.metrics import mean_std, seed_agreement, spearman  # noqa: E402
from hcdc.report import markdown_table  # noqa: E402
from hcdc.runinfo import command_line, machine_info, package_versions  # noqa: E402

RESULTS = Path(__file__).parent / "results"
TRUTH_ONLY = ("train_subset", "epochs", "seeds")  # what a variant may change: how the ground truth trains


def truth_protocol(table: dict, changes: dict) -> ImageProtocol:
    """The table's protocol with a variant's ground-truth ``changes`` applied, validated."""
    other = sorted(set(changes) - set(TRUTH_ONLY))
    if other:
        raise ConfigError(f"a variant changes only the ground truth's {', '.join(TRUTH_ONLY)}; got {other}")
    return ImageProtocol(**table["protocol"]).with_(**changes)


def rescore(table: dict, val_acc: np.ndarray, test_acc: np.ndarray) -> list[dict]:
    """Every table row's proxy scores against a ground truth (``val_acc``, ``test_acc`` per architecture, in the
    table's order): Spearman per condensation seed (mean ± std), and the true test accuracy of each pick."""
    archs = table["architectures"]
    oracle = float(test_acc[int(np.argmax(val_acc))])
    rows = []
    for row in table["rows"]:
        rhos = [spearman(np.asarray(s), val_acc) for s in row["scores"]]
        perf = [float(test_acc[archs.index(pick)]) for pick in row["picks"]]
        rho_mean, rho_std = mean_std(rhos)
        rows.append({"method": row["method"], "table_spearman": row["spearman_mean"], "table_perf": row["perf_mean"],
                     "spearman_per_seed": rhos, "spearman_mean": rho_mean, "spearman_std": rho_std,
                     "perf_mean": float(np.mean(perf)), "oracle_perf": oracle})
    return rows


def variant_record(table: dict, name: str, changes: dict, protocol: ImageProtocol, val_acc: np.ndarray,
                   test_acc: np.ndarray, agreement: tuple, seconds: float | None) -> dict:
    """A ground truth (``val_acc``, ``test_acc`` in the table's architecture order, from ``protocol``) described
    and compared with the table's, and the table's proxies ranked against it."""
    return {"variant": name, "changes": changes, "train_per_class": protocol.train_subset, "epochs": protocol.epochs,
            "seeds": list(protocol.seeds), "truth_seed_spearman": agreement[0], "truth_reliability": agreement[1],
            "spearman_with_table_truth": spearman(val_acc, np.asarray(table["true_val_acc"])),
            "mean_val_acc": float(val_acc.mean()), "truth_compute_seconds": seconds, "true_val_acc": val_acc.tolist(),
            "true_test_acc": test_acc.tolist(), "rows": rescore(table, val_acc, test_acc)}


def run_variant(table: dict, raw, name: str, changes: dict) -> dict:
    """The variant's ground truth (trained or read from the cache) and the table's proxies ranked against it."""
    protocol = truth_protocol(table, changes)
    archs = [Architecture.parse(a) for a in table["architectures"]]
    truth = image_ground_truth(raw, archs, protocol)
    per_seed = np.array([[s[str(seed)]["val_acc"] for s in truth.per_seed] for seed in protocol.seeds])
    agreement = seed_agreement(per_seed) if len(protocol.seeds) > 1 else (None, None)
    return variant_record(table, name, changes, protocol, truth.val_acc.numpy(), truth.test_acc.numpy(), agreement,
                          truth.compute_seconds)


def other_run_truth(table: dict, other: dict, name: str) -> dict:
    """The ground truth another run of the table stored (``--truth-of``: the same architectures and data, its
    ground truth trained separately, e.g. from scratch on another machine) and the table's proxies ranked against it."""
    if other.get("dataset") != table.get("dataset") or other.get("architectures") != table["architectures"]:
        raise ConfigError(f"--truth-of {name}: not the same dataset and architectures as the table")
    if other.get("data_fingerprint") != table.get("data_fingerprint"):
        raise ConfigError(f"--truth-of {name}: made from other data (data_fingerprint differs)")
    return variant_record(table, name, {}, ImageProtocol(**other["protocol"]), np.asarray(other["true_val_acc"]),
                          np.asarray(other["true_test_acc"]),
                          (other.get("ground_truth_seed_spearman"), other.get("ground_truth_reliability")),
                          other.get("ground_truth_compute_seconds"))


VARIANT_COLUMNS = [("variant", "variant", ""), ("train_per_class", "train imgs / class", ""), ("epochs", "epochs", ""),
                   ("n_seeds", "seeds", ""), ("truth_seed_spearman", "seed–seed", ".2f"),
                   ("truth_reliability", "reliability", ".2f"), ("mean_val_acc", "mean acc", ".3f"),
                   ("spearman_with_table_truth", "ρ with table truth", ".3f"),
                   ("truth_compute_seconds", "s", ".0f")]
METHOD_COLUMNS = [("variant", "variant", ""), ("method", "method", ""), ("table_spearman", "ρ table truth", ".3f"),
                  ("spearman_mean", "ρ this truth", ".3f"), ("spearman_std", "±", ".3f"), ("per_seed", "ρ per seed", ""),
                  ("table_perf", "Perf table truth", ".3f"), ("perf_mean", "Perf this truth", ".3f"),
                  ("oracle_perf", "oracle Perf", ".3f")]


def to_markdown(result: dict) -> str:
    """The markdown report of a run (from its JSON alone)."""
    variants = [{**v, "n_seeds": len(v["seeds"])} for v in (result["table_truth"], *result["variants"])]
    methods = [{**r, "variant": v["variant"], "per_seed": " ".join(f"{x:.2f}" for x in r["spearman_per_seed"])}
               for v in result["variants"] for r in v["rows"]]
    return "\n".join([
        *report_header(f"{result['table']}'s proxies against other ground truths", result), "",
        markdown_table(variants, VARIANT_COLUMNS), "",
        markdown_table(methods, METHOD_COLUMNS), "",
        "Each variant's ground truth trains the table's architectures on a superset of the table's training images "
        "(the same validation and test images), or is another run's (a variant named after that run's table); ρ with table truth: Spearman between the two truths' validation "
        "accuracies; ρ table truth: the table's own Spearman for the method (Perf table truth: its Perf); ρ this truth: the same stored proxy "
        "scores (every condensation seed) against this variant's validation accuracy; Perf: true test accuracy under "
        "this variant's training of the architecture each proxy picked (mean over condensation seeds); oracle Perf: that of the "
        "variant's best validation accuracy. s: this variant's ground-truth training time (as cached).", ""])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("table", help="name of a committed image table run, e.g. image_table_cpu")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                        help=f"ground-truth variant: fields {', '.join(TRUTH_ONLY)}, e.g. 'more={{\"train_subset\": 1000}}'")
    parser.add_argument("--truth-of", action="append", default=[], metavar="TABLE",
                        help="compare with the ground truth another run of the same table stored (its name under "
                             "--out-dir, e.g. fromscratch/image_table_cpu); nothing is trained")
    parser.add_argument("--name", default=None, help="results name (default: the table's with image_truth_scale for image_table)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    command = command_line(__file__, argv)
    if not args.variant and not args.truth_of:
        raise ConfigError("give at least one --variant NAME=JSON or --truth-of TABLE")
    variants = [parse_named_json(v, "--variant") for v in args.variant]
    table = read_table(args.out_dir, args.table)
    # every variant and other run is checked before any trains
    others = [other_run_truth(table, read_table(args.out_dir, other), other) for other in args.truth_of]
    for _, changes in variants:
        truth_protocol(table, changes)
    raw = load_dataset(table["dataset"]) if variants else None
    protocol = ImageProtocol(**table["protocol"])
    table_truth = {"variant": "the table's", "train_per_class": protocol.train_subset, "epochs": protocol.epochs,
                   "seeds": list(protocol.seeds), "truth_seed_spearman": table["ground_truth_seed_spearman"],
                   "truth_reliability": table["ground_truth_reliability"], "spearman_with_table_truth": 1.0,
                   "mean_val_acc": float(np.mean(table["true_val_acc"])),
                   "truth_compute_seconds": table.get("ground_truth_compute_seconds")}
    result = {"table": args.table, "command": command, "table_truth": table_truth,
              "variants": [*(run_variant(table, raw, name, changes) for name, changes in variants), *others],
              "machine": machine_info(), "versions": package_versions(), "torch_threads": torch.get_num_threads()}
    name = args.name or args.table.replace("image_table", "image_truth_scale")
    write_report(args.out_dir, name, result, to_markdown(result))
    return result


if __name__ == "__main__":
    exit_on_user_error(main, "image_truth_scale")
