"""The ``hcdc`` command-line tool.

Every error caused by the user's input is printed as one line, ``hcdc: error: ...``, with exit
code 2 (as argparse does for bad options); nothing half-written is left behind.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .errors import HCDCError


def _describe(summary: dict, kind: str) -> tuple[str, str]:
    """(size, splits) columns for a dataset summary."""
    if kind == "graph":
        size = f"{summary['nodes']} nodes, {summary['edges']} edges, {summary['features']} feat, {summary['classes']} cls"
    else:
        h, w, c = summary["image_shape"]
        total = summary["train"] + summary["val"] + summary["test"]
        size = f"{total} images {h}x{w}x{c}, {summary['num_classes']} cls"
    return size, f"{summary['train']}/{summary['val']}/{summary['test']}"


def _cmd_datasets(args: argparse.Namespace) -> int:
    from .data import DATASETS, load_dataset, load_graph_file, load_image_file
    from .paths import resolve_data_root

    rows: list[tuple[str, str, str, str]] = []
    if args.graph_file or args.image_file:
        for path, kind, load in ((args.graph_file, "graph", load_graph_file), (args.image_file, "image", load_image_file)):
            if path is not None:
                rows.append((path.name, kind, *_describe(load(path).summary(), kind)))
    else:
        root = resolve_data_root(args.data_root)
        print(f"data root: {root}")
        for name, spec in DATASETS.items():
            found = spec.locate(root) is not None
            columns = _describe(load_dataset(name, root).summary(), spec.kind) if found else ("not found", "-")
            rows.append((name, spec.kind, *columns))
    header = f"{'name':<11} {'kind':<6} {'size':<44} splits (train/val/test)"
    print(header)
    print("-" * len(header))
    for name, kind, size, splits in rows:
        print(f"{name:<11} {kind:<6} {size:<44} {splits}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .artifacts import describe_proxy

    print(describe_proxy(args.directory))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hcdc", description="Hyperparameter Calibrated Dataset Condensation.")
    parser.add_argument("--version", action="version", version=f"hcdc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("datasets", help="list the datasets found under the data root, with their sizes")
    p.add_argument("--data-root", type=Path, default=None, help="folder holding planetoid/, cifar10/, ... (default: $HCDC_DATA or ../shared/data)")
    p.add_argument("--graph-file", type=Path, default=None, help="describe a graph .npz (x, edge_index, y, *_mask) instead")
    p.add_argument("--image-file", type=Path, default=None,
                   help="describe an image dataset instead: .npz (x uint8 NHWC, y), CIFAR batch folder, or image folder")
    p.set_defaults(func=_cmd_datasets)

    p = sub.add_parser("info", help="describe a proxy directory (proxy.safetensors + meta.json)")
    p.add_argument("directory", type=Path)
    p.set_defaults(func=_cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except HCDCError as exc:
        print(f"hcdc: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hcdc: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
