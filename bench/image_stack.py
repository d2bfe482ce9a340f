"""Training NAS-Bench-201 networks one by one against as one stacked model: what ``ImageProtocol.stack`` buys.

Side by side in one run, on the current device (CUDA when available, as the protocols train): the
same (architecture, seed) jobs, the first ``--archs`` architectures of a protocol's list × its proxy
training seeds, train on a proxy's worth of real images (``ipc`` class-stratified training images
per class of the protocol's data, as a Random proxy's training part) for the protocol's proxy
epochs, once one by one (stack 1) and once per size in ``--stacks``
(:func:`hcdc.image.protocol.train_networks`). Reported per stack size: wall time, seconds per
network, the speed-up over one by one, and the largest difference of any parameter from one-by-one
training (rounding only: the same training, other kernels; on a CPU with several threads a last row
trains one by one on one thread, the same scale of difference from rounding alone). ``--truth`` trains on the protocol's
whole training data with its ground-truth epochs and seeds instead. ``--protocol-options`` changes protocol fields
(as in the table): with ``'{"epochs": 1}'`` a GPU times one epoch of the ground truth's training, and the report
extrapolates what the preset's whole ground truth (or one proxy's evaluation) would take at the fastest row's time
per SGD step.

    OMP_NUM_THREADS=2 python bench/image_stack.py --protocol cpu --archs 4 --stacks 3 6 12
    # → bench/results/image_stack_cpu.{json,md}
    python bench/image_stack.py --protocol full --archs 4 --stacks 5 10 20    # on a GPU
    python bench/image_stack.py --protocol full --truth --archs 2 --stacks 10 --protocol-options '{"epochs": 1}' \
        --name image_stack_full_truth    # on a GPU: one epoch of the ground truth, and the whole one extrapolated

``bench/device_check.sh`` runs both on a GPU machine, with the CUDA tests.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from image_table import add_protocol_options_argument, with_protocol_options  # noqa: E402  (the table's flag)
from image_val_part import report_header, write_report  # noqa: E402  (the diagnostics' report format)

from hcdc.data import load_dataset  # noqa: E402
from hcdc.errors import ConfigError, exit_on_user_error  # noqa: E402
from hcdc.image.protocol import class_subset, get_protocol, prepare_data  # noqa: E402
from hcdc.image.training import default_device, train_networks  # noqa: E402
from hcdc.report import markdown_table  # noqa: E402
from hcdc.runinfo import command_line, machine_info, package_versions  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def timed(jobs, x, y, protocol, num_classes: int, epochs: int, device: torch.device) -> tuple[list[dict], float]:
    """The networks of ``jobs`` trained under ``protocol`` and the wall time it took."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    params = train_networks(jobs, x, y, protocol, num_classes=num_classes, epochs=epochs, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return params, time.perf_counter() - start


def max_difference(a: list[dict], b: list[dict]) -> float:
    """The largest absolute difference of any parameter between two lists of trained networks."""
    return max(float((p[k].float() - q[k].float()).abs().max()) for p, q in zip(a, b) for k in p)


def run(protocol_name: str, archs: int, stacks: list[int], truth: bool, dataset: str, data_root: Path | None = None,
        protocol_options: str | None = None) -> dict:
    """Time one-by-one and stacked training of the same jobs (module docstring)."""
    preset = get_protocol(protocol_name)
    base = with_protocol_options(preset, protocol_options)
    if not 1 <= archs <= base.num_archs:
        raise ConfigError(f"--archs must be in 1..{base.num_archs} (the protocol's architectures), got {archs}")
    if not stacks or any(s < 2 for s in stacks):
        raise ConfigError(f"--stacks must list sizes of at least 2 (1, one by one, is always run), got {stacks}")
    device = default_device()
    original = load_dataset(dataset, data_root)
    data = prepare_data(original, base)
    x, y = data.normalized("train"), data.y_train
    if not truth:
        pick = class_subset(y, base.ipc, data.num_classes, seed=0)
        x, y = x[pick], y[pick]
    seeds = base.seeds if truth else base.seeds_on_proxy
    epochs = base.epochs if truth else base.epochs_on_proxy
    jobs = [(arch, seed) for arch in base.architectures()[:archs] for seed in seeds]
    train_networks(jobs[:1], x, y, base.with_(stack=1), num_classes=data.num_classes, epochs=1, device=device)  # warm-up
    threads = torch.get_num_threads()
    reference, seconds = timed(jobs, x, y, base.with_(stack=1), data.num_classes, epochs, device)
    rows = [{"stack": 1, "threads": threads, "seconds": seconds, "max_difference": 0.0}]
    for size in stacks:
        train_networks(jobs[:size], x, y, base.with_(stack=size), num_classes=data.num_classes, epochs=1, device=device)
        params, seconds = timed(jobs, x, y, base.with_(stack=size), data.num_classes, epochs, device)
        rows.append({"stack": size, "threads": threads, "seconds": seconds, "max_difference": max_difference(params, reference)})
    if device.type == "cpu" and threads > 1:  # the scale of rounding: the same one-by-one training on one thread
        torch.set_num_threads(1)
        params, seconds = timed(jobs, x, y, base.with_(stack=1), data.num_classes, epochs, device)
        torch.set_num_threads(threads)
        rows.append({"stack": 1, "threads": 1, "seconds": seconds, "max_difference": max_difference(params, reference)})
    for row in rows:
        row.update(networks=len(jobs), seconds_per_network=row["seconds"] / len(jobs), speedup=rows[0]["seconds"] / row["seconds"])
    per_step = min(row["seconds_per_network"] for row in rows) / max(epochs * math.ceil(len(y) / base.batch_size), 1)
    preset_epochs = preset.epochs if truth else preset.epochs_on_proxy
    preset_seeds = preset.seeds if truth else preset.seeds_on_proxy
    preset_images = (len(class_subset(original.y_train, preset.train_subset, data.num_classes, seed=0)) if truth
                     else preset.ipc * data.num_classes)  # the preset's training images, as prepare_data picks them
    preset_steps = preset.num_archs * len(preset_seeds) * preset_epochs * math.ceil(preset_images / preset.batch_size)
    return {"protocol_name": protocol_name, "protocol": base.as_dict(), "dataset": dataset, "truth": truth,
            "architectures": archs, "seeds": list(seeds), "epochs": epochs, "train_images": len(y), "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "rows": rows,
            "preset_estimate": {"architectures": preset.num_archs, "seeds": len(preset_seeds), "epochs": preset_epochs,
                                "train_images": preset_images, "network_steps": preset_steps,
                                "seconds_per_network_step": per_step, "seconds": preset_steps * per_step}}


COLUMNS = [("stack", "stack", ""), ("threads", "threads", ""), ("networks", "networks", ""), ("seconds", "s", ".1f"),
           ("seconds_per_network", "s / network", ".2f"), ("speedup", "speed-up", ".2f"),
           ("max_difference", "max |Δθ| vs row 1", ".1e")]


def to_markdown(result: dict) -> str:
    """The markdown report of a run (from its JSON alone)."""
    what = "the ground truth's training" if result["truth"] else "proxy training"
    whole = "whole ground truth" if result["truth"] else "training of every architecture on one proxy"
    est = result["preset_estimate"]
    return "\n".join([
        *report_header(f"Stacked training of NAS-Bench-201 networks ({result['protocol_name']} protocol)", result),
        f"Device: {result['device']} ({result['device_name']}).", "",
        f"{result['architectures']} architectures × seeds {result['seeds']} in {what}: {result['train_images']} "
        f"{result['dataset']} training images, {result['epochs']} epochs.", "",
        markdown_table(result["rows"], COLUMNS), "",
        f"At the fastest row's {1000 * est['seconds_per_network_step']:.2f} ms per network and SGD step, the "
        f"'{result['protocol_name']}' preset's {whole} ({est['architectures']} architectures × {est['seeds']} seeds × "
        f"{est['epochs']} epochs on {est['train_images']:,} images = {est['network_steps']:,} network-steps) would take about "
        f"{est['seconds'] / 3600:.2f} h on this device (an extrapolation, not a measurement).", "",
        "stack: networks trained at once as one vmapped model (1: one by one); threads: torch threads (on a CPU, the "
        "last row is one-by-one training on one thread: how far rounding in another order alone moves the networks); "
        "speed-up: the first row's time over this row's, measured in the same run; max |Δθ|: the largest difference of "
        "any parameter from the first row's networks.", ""])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", default="cpu", help="image protocol preset (default cpu)")
    parser.add_argument("--archs", type=int, default=4, help="the first N architectures of the protocol (default 4)")
    parser.add_argument("--stacks", type=int, nargs="+", default=[3, 6, 12], help="stack sizes to time (default 3 6 12)")
    parser.add_argument("--truth", action="store_true", help="time the ground truth's training instead of a proxy's")
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--name", default=None, help="results name (default image_stack_<protocol>)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    add_protocol_options_argument(parser)
    args = parser.parse_args(argv)
    result = run(args.protocol, args.archs, args.stacks, args.truth, args.dataset, args.data_root, args.protocol_options)
    result.update(command=command_line(__file__, argv), machine=machine_info(), versions=package_versions(),
                  torch_threads=torch.get_num_threads())
    write_report(args.out_dir, args.name or f"image_stack_{args.protocol}", result, to_markdown(result))
    return result


if __name__ == "__main__":
    exit_on_user_error(main, "image_stack")
