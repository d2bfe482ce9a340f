"""Where an image proxy loses the ranking: its training part or its validation part.

A diagnostic for the image table (:mod:`bench.image_table`). For proxies of a committed table run
(their directories are in its JSON), every architecture is trained on the proxy's training part
as the table does (same protocol and training seeds; bit-identical networks only at the table's
torch thread count, so the proxy-part column can differ from the table's at another) and scored
twice: on the proxy's validation part (what the table ranks by) and on ``--real-val`` real
validation images per class of the protocol's validation split (what a perfect validation part
would see). For both it reports the Spearman of each training seed's ranking and of the seed
mean against the true validation accuracy, and the Spearman between training seeds
(:func:`hcdc.metrics.seed_agreement`). If the real-validation ranking is good and the proxy's is
not, the validation part is the bottleneck; if both are poor, the training part is.

Networks trained on a few images are noisy rankers (seed-to-seed Spearman near 0 on the cpu
protocol), so ``--proxy-seeds N`` trains each architecture under seeds 0..N-1 instead of the
protocol's; proxies with the same training part (DC and HCDC at one condensation seed) are scored on
the very same networks, so their columns differ only by the validation part.

    OMP_NUM_THREADS=2 python bench/image_val_part.py image_table_cpu_realval dc:0 hcdc:0 dc:1 hcdc:1 --proxy-seeds 6
    # → bench/results/image_val_part_cpu_realval.{json,md}
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from hcdc.artifacts import load_proxy
from hcdc.data import load_dataset
from hcdc.errors import ConfigError, exit_on_user_error
from hcdc.report import markdown_table
from hcdc.image.evaluate import proxy_parts
from hcdc.image.protocol import ImageProtocol, class_subset, prepare_data
from hcdc.image.training import score_architecture, train_networks
from hcdc.image.space import Architecture
from hcdc.io import write_result
from hcdc.metrics import seed_agreement, spearman
from hcdc.paths import cache_dir
from hcdc.runinfo import command_line, machine_info, package_versions

RESULTS = Path(__file__).parent / "results"


def ranking(scores: np.ndarray, true: np.ndarray) -> dict:
    """Spearman of each seed's scores [seeds, archs] and of their mean against ``true``, and seed-to-seed agreement."""
    agreement = seed_agreement(scores) if len(scores) > 1 else (None, None)
    return {"spearman_per_seed": [spearman(s, true) for s in scores], "spearman_of_mean": spearman(scores.mean(0), true),
            "seed_to_seed": agreement[0], "mean_acc": float(scores.mean())}


def train_grid(archs, x: torch.Tensor, y: torch.Tensor, protocol: ImageProtocol, seeds, num_classes: int,
               label: str) -> dict:
    """Parameters of every architecture trained ``protocol.epochs_on_proxy`` epochs on (x, y) under each of ``seeds``
    (the seeds of one architecture as one stack when ``protocol.stack`` allows): {(arch index, seed): params}."""
    seeds = list(seeds)
    grid = {}
    for j, arch in enumerate(tqdm(archs, desc=label, unit="arch")):
        trained = train_networks([(arch, s) for s in seeds], x, y, protocol, num_classes=num_classes,
                                 epochs=protocol.epochs_on_proxy)
        grid.update({(j, s): params for s, params in zip(seeds, trained)})
    return grid


@functools.lru_cache(maxsize=2)
def real_validation(dataset: str, protocol: ImageProtocol, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` real validation images per class of ``dataset`` under ``protocol`` (loaded once per run)."""
    return validation_sample(prepare_data(load_dataset(dataset), protocol), per_class)


def validation_sample(data, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` validation images per class of prepared ``data`` (normalised), a fixed sample (seed 0), and labels."""
    pick = class_subset(data.y_val, per_class, data.num_classes, seed=0)
    return data.normalized("val")[pick], data.y_val[pick]


def diagnose(table: dict, method: str, seed: int, real_val: int, proxy_seeds: int | None = None,
             networks: dict | None = None) -> dict:
    """Rank the table's architectures trained on one proxy's training part by its validation part and by
    ``real_val`` real validation images per class. ``proxy_seeds`` (default: the protocol's) sets how many
    training seeds (0, 1, …) each architecture gets; ``networks`` caches trained networks across calls,
    keyed by the training part's contents, so proxies sharing a training part (DC and HCDC at one seed)
    are scored on the very same networks."""
    rows = {r["method"]: r for r in table["rows"]}
    if method not in rows or seed not in rows[method]["condense_seeds"]:
        raise ConfigError(f"the table has no proxy of method {method!r} at condensation seed {seed}")
    listed = Path(rows[method]["proxy_dirs"][rows[method]["condense_seeds"].index(seed)])
    proxy_dir = cache_dir() / "image_proxies" / listed.name  # the table's cache may have been elsewhere
    if not (proxy_dir / "meta.json").exists():  # proxies live in the cache, not in the repository
        raise ConfigError(f"the {method} proxy of seed {seed} is not in the cache ({proxy_dir}); recreate it with "
                          f"`python bench/image_table.py --protocol {table.get('protocol_name', 'cpu')} --methods "
                          f"{method} --seeds {seed} --name SCRATCH` (same data, options and seed)")
    proxy = load_proxy(proxy_dir)
    protocol = ImageProtocol(**table["protocol"])
    x_real, y_real = real_validation(table["dataset"], protocol, real_val)
    x_tr, y_tr, x_val, y_val = proxy_parts(proxy, protocol)
    archs = [Architecture.parse(a) for a in table["architectures"]]
    seeds = tuple(range(proxy_seeds)) if proxy_seeds else protocol.seeds_on_proxy
    on_proxy, on_real = np.zeros((len(seeds), len(archs))), np.zeros((len(seeds), len(archs)))
    start = time.perf_counter()
    networks = {} if networks is None else networks
    key = (hashlib.sha256(x_tr.numpy().tobytes() + y_tr.numpy().tobytes()).hexdigest(), seeds)
    if key not in networks:
        networks[key] = train_grid(archs, x_tr, y_tr, protocol, seeds, proxy.num_classes, f"{method}:{seed}")
    for j, arch in enumerate(archs):
        for i, s in enumerate(seeds):
            params = networks[key][j, s]
            on_proxy[i, j] = score_architecture(arch, params, x_val, y_val, protocol)["acc"]
            on_real[i, j] = score_architecture(arch, params, x_real, y_real, protocol)["acc"]
    true = np.asarray(table["true_val_acc"])
    return {"method": method, "seed": seed, "proxy_seeds": list(seeds), "proxy_val_images": len(y_val), "real_val_images": len(y_real),
            "proxy_val": ranking(on_proxy, true), "real_val": ranking(on_real, true),
            "seconds": time.perf_counter() - start}


def read_table(out_dir: Path, name: str) -> dict:
    """The committed image table run ``<out_dir>/<name>.json``; a ConfigError when it is missing or not JSON."""
    try:
        return json.loads((out_dir / f"{name}.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read the table {name!r}: {exc}") from None


def report_header(title: str, result: dict) -> list[str]:
    """The first lines of a diagnostic's markdown report: title, command, machine."""
    machine = result["machine"]
    return [f"# {title}", "", f"Command: `{result['command']}`  ",
            f"Machine: {machine['processor']}, {machine['cpu_count']} cores, {result['torch_threads']} torch threads."]


def write_report(out_dir: Path, name: str, result: dict, md: str) -> None:
    """``result`` as ``<name>.json`` and its markdown report ``md`` as ``<name>.md`` (both atomically); prints ``md``."""
    write_result(out_dir, name, result, md)
    print(md)


COLUMNS = [("method", "method", ""), ("seed", "seed", ""), ("networks", "training seeds", ""),
           ("proxy_val_images", "proxy val imgs", ""),
           ("proxy_of_mean", "ρ proxy val", ".3f"), ("proxy_per_seed", "ρ per seed", ""), ("proxy_seed_to_seed", "seed–seed", ".2f"),
           ("real_val_images", "real val imgs", ""), ("real_of_mean", "ρ real val", ".3f"),
           ("real_per_seed", "ρ per seed", ""), ("real_seed_to_seed", "seed–seed", ".2f")]


def flat(row: dict) -> dict:
    out = {k: row[k] for k in ("method", "seed", "proxy_val_images", "real_val_images")}
    out["networks"] = len(row["proxy_seeds"])
    for side, name in (("proxy_val", "proxy"), ("real_val", "real")):
        out[f"{name}_of_mean"] = row[side]["spearman_of_mean"]
        out[f"{name}_per_seed"] = " ".join(f"{v:.2f}" for v in row[side]["spearman_per_seed"])
        out[f"{name}_seed_to_seed"] = row[side]["seed_to_seed"]
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("table", help="name of a committed image table run, e.g. image_table_cpu")
    parser.add_argument("proxies", nargs="+", metavar="METHOD:SEED")
    parser.add_argument("--real-val", type=int, default=100, help="real validation images per class (default 100)")
    parser.add_argument("--proxy-seeds", type=int, default=None,
                        help="training seeds 0..N-1 per architecture (default: the protocol's proxy seeds)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    command = command_line(__file__, argv)
    table = read_table(args.out_dir, args.table)
    wanted = []
    for item in args.proxies:
        method, _, seed = item.partition(":")
        if not seed.isdigit():
            raise ConfigError(f"proxies are METHOD:SEED, got {item!r}")
        wanted.append((method, int(seed)))
    networks: dict = {}
    rows = [diagnose(table, m, s, args.real_val, args.proxy_seeds, networks) for m, s in wanted]
    name = args.table.replace("image_table", "image_val_part")
    result = {"table": args.table, "command": command, "rows": rows, "machine": machine_info(),
              "versions": package_versions(), "torch_threads": torch.get_num_threads()}
    md = "\n".join([
        *report_header(f"Where the ranking is lost: proxy validation part vs real validation images ({args.table})", result), "",
        markdown_table([flat(r) for r in rows], COLUMNS), "",
        "Each architecture trains on the proxy's training part under training seeds 0, 1, … (the table's networks when "
        "they are the protocol's proxy seeds; one set of networks for proxies with the same training part, as DC and "
        "HCDC at one condensation seed) and is scored on the proxy's validation part and on real validation images; ρ: Spearman against the true validation "
        "accuracy of the seed-mean accuracy (and of each seed); seed–seed: mean Spearman between two seeds' rankings.", ""])
    write_report(args.out_dir, name, result, md)
    return result


if __name__ == "__main__":
    exit_on_user_error(main, "image_val_part")
