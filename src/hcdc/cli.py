"""The ``hcdc`` command-line tool.

Every error caused by the user's input is printed as one line, ``hcdc: error: ...``, with exit
code 2 (as argparse does for bad options); nothing half-written is left behind.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path

from . import __version__
from .errors import USER_ERRORS, failure


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


def _load_graph(args: argparse.Namespace, dataset: str | None = None, graph_file: str | None = None):
    from .data import get_spec, load_dataset, load_graph_file
    from .errors import ConfigError

    graph_file = graph_file or getattr(args, "graph_file", None)
    if graph_file:
        return load_graph_file(graph_file)
    name = dataset or args.dataset
    if get_spec(name).kind != "graph":
        raise ConfigError(f"dataset '{name}' is not a graph dataset")
    return load_dataset(name, args.data_root)


def _json_options(text: str | None) -> dict:
    import json

    from .errors import ConfigError

    try:
        options = json.loads(text) if text else {}
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--options is not JSON ({exc})") from None
    if not isinstance(options, dict):
        raise ConfigError("--options must be a JSON object")
    return options


def _kind(args: argparse.Namespace) -> str:
    """``"graph"`` or ``"image"``: what the command's data is (``--graph-file``, ``--image-file`` or ``--dataset``)."""
    from .data import get_spec
    from .errors import ConfigError

    if getattr(args, "graph_file", None) and getattr(args, "image_file", None):
        raise ConfigError("give --graph-file or --image-file, not both")
    if getattr(args, "graph_file", None):
        return "graph"
    if getattr(args, "image_file", None):
        return "image"
    return get_spec(args.dataset).kind


def _load_images(dataset: str, image_file, data_root, protocol):
    """The image data a proxy or search is about, reduced by ``protocol`` (:func:`prepare_data`)."""
    from .data import get_spec, load_dataset, load_image_file
    from .errors import ConfigError
    from .image.protocol import prepare_data

    if image_file:
        data = load_image_file(image_file)
    elif get_spec(dataset).kind != "image":
        raise ConfigError(f"dataset '{dataset}' is not an image dataset")
    else:
        data = load_dataset(dataset, data_root)
    return prepare_data(data, protocol)


def _cmd_condense(args: argparse.Namespace) -> int:
    from .errors import ConfigError

    if args.out.exists() and not args.overwrite:
        raise ConfigError(f"output directory {args.out} already exists (pass --overwrite to replace it)")
    options = _json_options(args.options)
    if _kind(args) == "image":
        return _condense_images(args, options)
    if args.ipc is not None:
        raise ConfigError("--ipc is for image datasets; a graph proxy's size is --ratio")
    if args.protocol is not None:
        raise ConfigError("--protocol is for image datasets (graphs train with the graph track's fixed protocol)")
    from .artifacts import save_proxy
    from .graph import make_condenser
    from .paths import snapshot_dir

    condenser = make_condenser(args.method, **options)  # unknown method/options fail before loading data
    data = _load_graph(args)
    ratio = 0.5 if args.ratio is None else args.ratio
    if args.restart:
        condenser.checkpoints(snapshot_dir(), data, ratio, args.seed).clear()
    proxy = condenser.condense(data, ratio, args.seed, progress=True, checkpoints=snapshot_dir())
    proxy.meta["config"] = {**proxy.meta["config"], "graph_file": str(args.graph_file) if args.graph_file else None}
    save_proxy(proxy, args.out, overwrite=args.overwrite)
    m = proxy.meta
    print(f"{m['method']} proxy of {m['dataset']}: r={m['ratio']}, {m['train_nodes']} training + {m['val_nodes']} "
          f"validation nodes ({100 * m['fraction_of_graph']:.2f}% of the graph), "
          f"{sum(m['timings'].values()):.1f} s -> {args.out}")
    return 0


def _condense_images(args: argparse.Namespace, options: dict) -> int:
    from .artifacts import save_proxy
    from .errors import ConfigError
    from .image.condensers import make_image_condenser
    from .image.protocol import get_protocol
    from .image.recipes import method_options
    from .paths import snapshot_dir

    if args.ratio is not None:
        raise ConfigError("--ratio is for graphs; an image proxy's size is --ipc (images per class)")
    args.protocol = args.protocol or "cpu"
    protocol = get_protocol(args.protocol).with_(**({} if args.ipc is None else {"ipc": args.ipc}))
    resolved = method_options(args.method, args.protocol, protocol, options)  # unknown method/options fail first
    view = _load_images(args.dataset, args.image_file, args.data_root, protocol)
    condenser = make_image_condenser(args.method, **resolved)
    if args.restart:
        condenser.checkpoints(snapshot_dir(), view, protocol.ipc, args.seed).clear()
    proxy = condenser.condense(view, protocol.ipc, args.seed, progress=True, checkpoints=snapshot_dir())
    proxy.meta["protocol"] = {"name": args.protocol, **protocol.as_dict()}
    proxy.meta["config"] = {**proxy.meta["config"], "image_file": str(args.image_file) if args.image_file else None}
    save_proxy(proxy, args.out, overwrite=args.overwrite)
    m = proxy.meta
    print(f"{m['method']} proxy of {m['dataset']} (protocol '{args.protocol}'): {m['images_per_class']} images per "
          f"class, {m['train_images']} training + {m['val_images']} validation images "
          f"({100 * m['fraction_of_training_set']:.2f}% of the training set), "
          f"{sum(m['timings'].values()):.1f} s -> {args.out}")
    return 0


def _refuse_given(args: argparse.Namespace, names: tuple[str, ...], why: str) -> None:
    """One ConfigError naming the options among ``names`` the user gave (not None), which do not apply here."""
    from .errors import ConfigError

    given = [f"--{name.replace('_', '-')}" for name in names if getattr(args, name) is not None]
    if given:
        raise ConfigError(f"{', '.join(given)}: {why}")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .artifacts import load_proxy
    from .graph import FilterSpace, TrainProtocol, evaluate_proxy
    from .runinfo import run_record

    proxy = load_proxy(args.directory)
    _refuse_given(args, {"image": ("configs", "config_seed", "seeds"), "graph": ("archs", "device")}[proxy.kind],
                  f"not for {proxy.kind} proxies (--configs, --config-seed and --seeds rank graph filters; --archs and "
                  "--device NAS-Bench-201 cells)")
    if proxy.kind == "image":
        return _evaluate_images(args, proxy)
    for name, default in (("configs", 80), ("config_seed", 0), ("seeds", 2)):
        if getattr(args, name) is None:
            setattr(args, name, default)
    data = _load_graph(args, proxy.meta["dataset"], proxy.meta["config"].get("graph_file"))
    lam = FilterSpace().sample(args.configs, args.config_seed)
    ev = evaluate_proxy(proxy, data, lam, TrainProtocol(seeds=tuple(range(args.seeds))))
    r = ev.row()
    record = run_record({"proxy": str(args.directory), "configs": args.configs, "config_seed": args.config_seed,
                         "training_seeds": args.seeds}, args.config_seed, {"proxy_training": ev.proxy.seconds})
    record["results"] = {**r, "proxy_val_loss": ev.proxy.val_loss.tolist(), "true_val_acc": ev.truth.val_acc.tolist()}
    heading = (f"{proxy.meta['method']} on {proxy.meta['dataset']} (r={proxy.meta['ratio']}), {args.configs} "
               f"configurations (seed {args.config_seed}):")
    return _report_evaluation(args, proxy, heading, record, ev.truth.val_acc, ev.proxy.val_loss, "proxy validation loss")


def _percent(fraction: float) -> str:
    """A fraction as a percentage with one decimal ("37.0 %"), or "n/a" for NaN (a test accuracy of data without test images)."""
    return f"{100 * fraction:.1f} %" if math.isfinite(fraction) else "n/a"


def _report_evaluation(args: argparse.Namespace, proxy, heading: str, record: dict, true_acc, proxy_values,
                       ylabel: str) -> int:
    """Print an evaluation's ranking numbers, draw proxy score against true accuracy, write the record beside it."""
    from .io import atomic_write_json
    from .report import plot_scores

    r = record["results"]
    print(heading)
    print(f"  Spearman {r['spearman']:.3f}  Kendall {r['kendall']:.3f}  top-5 {r['top_k']:.2f}  "
          f"regret {100 * r['regret']:.2f} pts  Perf {_percent(r['perf'])} (oracle {_percent(r['oracle_perf'])})")
    if r.get("val_shift") is not None:
        print(f"  S_val shift {r['val_shift']:.3f} (how far calibration moved the validation images from their real start)")
    plot = args.plot or Path(f"{args.directory}-scores.png")
    plot_scores(true_acc, proxy_values, r, plot, title=f"{proxy.meta['method']} on {proxy.meta['dataset']}", ylabel=ylabel)
    atomic_write_json(plot.with_suffix(".json"), record)
    print(f"  plot: {plot}; results: {plot.with_suffix('.json')}")
    return 0


def _evaluate_images(args: argparse.Namespace, proxy) -> int:
    from .image.condensers.hcdc import validation_shift
    from .image.evaluate import evaluate_image_proxy
    from .image.groundtruth import image_ground_truth
    from .image.protocol import recorded_protocol
    from .image.training import default_device
    from .metrics import check_rankable
    from .runinfo import run_record

    protocol = recorded_protocol(proxy)
    if args.archs is not None:
        protocol = protocol.with_(num_archs=args.archs)
    check_rankable(protocol.num_archs, "architectures")  # before the ground truth trains anything
    device = default_device(args.device)
    view = _load_images(proxy.meta["dataset"], proxy.meta["config"].get("image_file"), args.data_root, protocol)
    archs = protocol.architectures()
    truth = image_ground_truth(view, archs, protocol, device=device)
    ev = evaluate_image_proxy(proxy, view, archs, protocol, truth, device=device, progress=True)
    record = run_record({"proxy": str(args.directory), "protocol": protocol.as_dict(), "device": str(device)}, None,
                        {"ground_truth": truth.seconds, "proxy_training": ev.wall_seconds})
    record["results"] = {**ev.row(), **ev.scores(), "architectures": [a.to_str() for a in archs],
                         "true_val_acc": truth.val_acc.tolist(), "true_test_acc": truth.test_acc.tolist(),
                         "val_shift": validation_shift(proxy, view)}
    heading = (f"{proxy.meta['method']} on {proxy.meta['dataset']} ({proxy.meta['images_per_class']} images per class), "
               f"{len(archs)} NAS-Bench-201 architectures:")
    return _report_evaluation(args, proxy, heading, record, truth.val_acc, ev.proxy_acc, "proxy validation accuracy")


def _cmd_search(args: argparse.Namespace) -> int:
    from .artifacts import load_proxy
    from .errors import ConfigError
    from .graph import FilterSpace, NodeGraph, TrainProtocol
    from .graph.evaluate import proxy_graphs
    from .graph.search import retrain_finalists, search_filters
    from .study import make_sampler
    from .io import atomic_write_json
    from .runinfo import run_record

    make_sampler(args.sampler, args.seed)  # bad settings fail before anything is loaded or written
    batch, seeds = args.batch, args.seeds
    bounds = (("trials", args.trials, 1), ("batch", batch, 1), ("seeds", seeds, 1), ("finalists", args.finalists, 0))
    bad = [f"--{flag} must be >= {low} (got {value})" for flag, value, low in bounds if value is not None and value < low]
    if bad:
        raise ConfigError("; ".join(bad))
    if args.out.exists() and not args.out.is_dir():
        raise ConfigError(f"--out {args.out} is a file, not a directory")
    result_file, journal = args.out / "search.json", args.out / "study.journal"
    if result_file.exists() and not args.overwrite:
        raise ConfigError(f"{args.out} already holds a finished search (pass --overwrite to start afresh)")
    proxy = load_proxy(args.proxy) if args.proxy is not None else None
    if (proxy.kind if proxy is not None else _kind(args)) == "image":
        return _search_images(args, proxy, result_file, journal)
    _refuse_given(args, ("protocol", "device"), "for image searches (graph searches train with the graph track's protocol)")
    if proxy is not None:
        data = _load_graph(args, proxy.meta["dataset"], proxy.meta["config"].get("graph_file"))
        graph, evaluate_on = proxy_graphs(proxy)
        target = {"proxy": str(args.proxy.resolve()), "method": proxy.meta["method"], "ratio": proxy.meta["ratio"]}
    else:
        data = _load_graph(args)
        graph, evaluate_on = NodeGraph.from_graph_data(data), None
        target = {"graph": data.name}
    _fresh_output(args, result_file, journal)
    batch = 16 if batch is None else batch
    space, protocol = FilterSpace(), TrainProtocol(seeds=tuple(range(1 if seeds is None else seeds)))
    found = search_filters(graph, space, protocol, args.trials, args.sampler, args.seed, batch, evaluate_on,
                           journal=journal, context=target)
    on = f"the {target['method']} proxy {args.proxy}" if args.proxy is not None else f"{data.name} itself"
    lam = ", ".join(f"{v:+.3f}" for v in found.best.tolist())
    print(f"{args.trials} trials ({args.sampler}, seed {args.seed}) on {on} in {found.seconds:.1f} s: "
          f"best λ = [{lam}], validation loss {found.best_val_loss:.4f}")
    timings, results = {"search": found.seconds}, {"best": found.best.tolist(), "best_val_loss": found.best_val_loss,
                                                    "trials": found.as_dict()}
    if args.finalists > 0:  # the best trials trained on the original graph, as the user would
        final = retrain_finalists(NodeGraph.from_graph_data(data), found, args.finalists)
        timings["finalists"] = final.seconds
        picked = results["original_graph"] = final.as_dict()
        lam = ", ".join(f"{v:+.3f}" for v in picked["best"])
        print(f"  {len(final.lam)} best trial(s) trained on {data.name}: pick λ = [{lam}], validation accuracy "
              f"{_percent(picked['val_acc_of_pick'])}, test accuracy {_percent(picked['test_acc_of_pick'])}")
    record = run_record({**target, "trials": args.trials, "sampler": args.sampler, "batch": batch,
                         "training_seeds": len(protocol.seeds), "space": space.__dict__, "protocol": protocol.as_dict()},
                        args.seed, timings)
    record["results"] = results
    atomic_write_json(result_file, record)
    print(f"  results: {result_file}")
    return 0


def _fresh_output(args: argparse.Namespace, result_file: Path, journal: Path) -> None:
    """Make ``--out``; with ``--overwrite``, first drop a previous search's record and journal."""
    if args.overwrite:
        for path in (result_file, journal):
            path.unlink(missing_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)


def _search_images(args: argparse.Namespace, proxy, result_file: Path, journal: Path) -> int:
    from .errors import ConfigError
    from .image.protocol import get_protocol, recorded_protocol
    from .image.training import default_device
    from .image.search import proxy_objective, retrain_finalists, search_architectures, truth_objective
    from .io import atomic_write_json
    from .runinfo import run_record

    if args.graph_file is not None:
        raise ConfigError("--graph-file is for graph searches")
    device = default_device(args.device)
    if proxy is not None:
        if args.protocol is not None:
            raise ConfigError("--protocol: a proxy is searched with the protocol it records (see `hcdc info`)")
        protocol = recorded_protocol(proxy)
        if args.seeds is not None:
            protocol = protocol.with_(proxy_seeds=tuple(range(args.seeds)))
        dataset, image_file = proxy.meta["dataset"], proxy.meta["config"].get("image_file")
        target = {"proxy": str(args.proxy.resolve()), "method": proxy.meta["method"],
                  "images_per_class": proxy.meta["images_per_class"]}
    else:
        protocol = get_protocol(args.protocol or "cpu").with_(**({} if args.seeds is None else {"seeds": tuple(range(args.seeds))}))
        dataset, image_file = args.dataset, args.image_file
        target = {"dataset": dataset, "image_file": str(image_file) if image_file else None}
    view = _load_images(dataset, image_file, args.data_root, protocol)
    objective = proxy_objective(proxy, protocol, device) if proxy is not None else truth_objective(view, protocol, device)
    _fresh_output(args, result_file, journal)
    batch = 1 if args.batch is None else args.batch
    context = {**target, "protocol": protocol.as_dict(), "device": device.type}
    found = search_architectures(objective, args.trials, args.sampler, args.seed, batch, journal, context)
    on = f"the {target['method']} proxy {args.proxy}" if proxy is not None else f"{view.name} itself"
    print(f"{args.trials} trials ({args.sampler}, seed {args.seed}) on {on} in {found.seconds:.1f} s: "
          f"best {found.best.to_str()}, objective {float(found.value.max()):.4f}")
    timings, results = {"search": found.seconds}, found.as_dict()
    if args.finalists > 0:  # the best architectures trained on the original data, as the ground truth is
        final = retrain_finalists(view, found, args.finalists, protocol, device=device)
        timings["finalists"] = final.truth.seconds
        picked = results["original_data"] = final.as_dict()
        print(f"  {len(final.truth.archs)} best architecture(s) trained on {view.name}: pick {picked['best']}, "
              f"validation accuracy {_percent(picked['val_acc_of_pick'])}, "
              f"test accuracy {_percent(picked['test_acc_of_pick'])}")
    record = run_record({**context, "trials": args.trials, "sampler": args.sampler, "batch": batch,
                         "finalists": args.finalists}, args.seed, timings)
    record["results"] = results
    atomic_write_json(result_file, record)
    print(f"  results: {result_file}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .graph.demo import run_demo

    run_demo(_load_graph(args), args.out, configs=args.configs)
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from .image.figures import plot_images, plot_ranking

    if args.figure == "ranking":
        path = plot_ranking(args.source, args.out, methods=args.methods)
    else:
        path = plot_images(args.source, args.out, split=args.split, per_class=args.per_class, max_classes=args.max_classes)
    print(f"wrote {path}")
    return 0


def _data_root_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", type=Path, default=None,
                        help="folder holding planetoid/, cifar10/, ... (default: $HCDC_DATA or ../shared/data)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hcdc", description="Hyperparameter Calibrated Dataset Condensation.")
    parser.add_argument("--version", action="version", version=f"hcdc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("datasets", help="list the datasets found under the data root, with their sizes")
    _data_root_argument(p)
    p.add_argument("--graph-file", type=Path, default=None, help="describe a graph .npz (x, edge_index, y, *_mask) instead")
    p.add_argument("--image-file", type=Path, default=None,
                   help="describe an image dataset instead: .npz (x uint8 NHWC, y), CIFAR batch folder, or image folder")
    p.set_defaults(func=_cmd_datasets)

    p = sub.add_parser("demo", help="a few-minute demo: Random, GCond-X, GCond and HCDC proxies of Cora ranked")
    p.add_argument("--dataset", default="cora", help="graph dataset (default: cora)")
    p.add_argument("--configs", type=int, default=24, help="filter configurations ranked (default 24)")
    p.add_argument("--out", type=Path, default=Path("demo-output"), help="folder for the proxies, plots and results")
    _data_root_argument(p)
    p.set_defaults(func=_cmd_demo, graph_file=None)

    p = sub.add_parser("condense", help="condense a graph or an image dataset into a proxy directory")
    p.add_argument("--dataset", default="cora", help="registered dataset, graph or image (default: cora)")
    p.add_argument("--graph-file", type=Path, default=None, help="a graph .npz instead of a registered dataset")
    p.add_argument("--image-file", type=Path, default=None,
                   help="an image dataset instead: .npz (x uint8 NHWC, y), CIFAR batch folder, or image folder")
    p.add_argument("--method", default="hcdc", help="graphs: random, gcond, gcond-x or hcdc; images: random, kcenter, "
                                                    "herding, dc, dsa, dm, kip, tm or hcdc")
    p.add_argument("--ratio", type=float, default=None,
                   help="graphs: synthetic training nodes per labelled node, in (0, 1] (default 0.5)")
    p.add_argument("--ipc", type=int, default=None, help="images: synthetic training images per class (default: the protocol's)")
    p.add_argument("--protocol", default=None, help="images: the image protocol (cpu, full or smoke; default cpu) that "
                                                     "fixes resolution, subsets, the network and each method's recipe")
    p.add_argument("--seed", type=int, default=0, help="condensation seed (same seed, same proxy; default 0)")
    p.add_argument("--options", default=None, help="condenser options as a JSON object")
    p.add_argument("--out", type=Path, required=True, help="proxy directory to write (proxy.safetensors + meta.json)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--restart", action="store_true",
                   help="discard the snapshots of an interrupted run of this condensation instead of resuming it")
    _data_root_argument(p)
    p.set_defaults(func=_cmd_condense, interrupted="; rerun the same command to resume from its last snapshot")

    p = sub.add_parser("evaluate", help="how well a proxy ranks configurations (graph filters or NAS-Bench-201 cells) "
                                        "against training on the original data")
    p.add_argument("directory", type=Path, metavar="PROXY_DIR")
    p.add_argument("--configs", type=int, default=None, help="graph proxies: filter configurations sampled (default 80)")
    p.add_argument("--config-seed", type=int, default=None, help="graph proxies: seed of that sample (default 0)")
    p.add_argument("--seeds", type=int, default=None, help="graph proxies: training seeds per configuration (default 2)")
    p.add_argument("--archs", type=int, default=None,
                   help="image proxies: the first N of the committed architectures (default: the proxy's protocol's)")
    p.add_argument("--device", default=None, help="image proxies: cpu or cuda (default: cuda when available)")
    p.add_argument("--plot", type=Path, default=None,
                   help="PNG of proxy score vs true accuracy (default: PROXY_DIR-scores.png; results beside it as .json)")
    _data_root_argument(p)
    p.set_defaults(func=_cmd_evaluate, interrupted="; rerun the same command to resume (trained architectures are cached)")

    p = sub.add_parser("search", help="Optuna search on a proxy (or on the original data): graph filter coefficients "
                                      "or NAS-Bench-201 cells; its best trials trained on the original data")
    p.add_argument("proxy", type=Path, nargs="?", default=None, metavar="PROXY_DIR",
                   help="a proxy from hcdc condense (default: search the original data)")
    p.add_argument("--dataset", default="cora", help="the original data when no proxy is given (default: cora)")
    p.add_argument("--graph-file", type=Path, default=None, help="a graph .npz instead of --dataset")
    p.add_argument("--image-file", type=Path, default=None, help="an image dataset instead of --dataset")
    p.add_argument("--protocol", default=None,
                   help="image search without a proxy: the image protocol (default cpu; a proxy's is the one it records)")
    p.add_argument("--device", default=None, help="images: cpu or cuda (default: cuda when available)")
    p.add_argument("--trials", type=int, default=64, help="finished trials to reach (default 64)")
    p.add_argument("--sampler", default="tpe", help="Optuna sampler: tpe or random")
    p.add_argument("--seed", type=int, default=0, help="sampler seed")
    p.add_argument("--batch", type=int, default=None, help="trials asked at once (graphs: trained as one stacked model, "
                                                            "default 16; images: default 1)")
    p.add_argument("--seeds", type=int, default=None,
                   help="training seeds per trial (graphs: default 1; images: default the protocol's)")
    p.add_argument("--out", type=Path, required=True,
                   help="directory for search.json and the Optuna journal (rerun the command to resume a stopped search)")
    p.add_argument("--overwrite", action="store_true", help="start afresh in a directory that holds a search")
    p.add_argument("--finalists", type=int, default=1,
                   help="train the K best trials on the original data (graphs: 2 seeds; images: the ground truth's protocol) "
                        "and pick the best by its validation accuracy there (default 1: just report the best trial's accuracy; 0: skip)")
    _data_root_argument(p)
    p.set_defaults(func=_cmd_search, interrupted="; rerun the same command to resume the search from its journal")

    p = sub.add_parser("plot", help="figures: architecture rankings of an image table, or a proxy's images")
    figures = p.add_subparsers(dest="figure", required=True)
    q = figures.add_parser("ranking", help="HCDC's Figure 2 from bench/image_table.py's JSON: architectures ordered "
                                           "by each proxy, coloured by their true rank")
    q.add_argument("source", type=Path, metavar="RESULTS.json")
    q.add_argument("--out", type=Path, required=True, help="PNG to write")
    q.add_argument("--methods", nargs="+", default=None, help="rows to draw, in order (default: all)")
    q.set_defaults(func=_cmd_plot)
    q = figures.add_parser("images", help="HCDC's Figure 3: an image proxy's validation images, one row per class")
    q.add_argument("source", type=Path, metavar="PROXY_DIR")
    q.add_argument("--out", type=Path, required=True, help="PNG to write")
    q.add_argument("--split", choices=["val", "train"], default="val", help="which part of the proxy (default val)")
    q.add_argument("--per-class", type=int, default=10, help="images per class row (default 10)")
    q.add_argument("--max-classes", type=int, default=20, help="class rows at most (default 20)")
    q.set_defaults(func=_cmd_plot)

    p = sub.add_parser("info", help="describe a proxy directory (proxy.safetensors + meta.json)")
    p.add_argument("directory", type=Path, metavar="PROXY_DIR")
    p.set_defaults(func=_cmd_info)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"hcdc: warning: {message}", file=sys.stderr if file is None else file)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning  # one plain line, not a source location
            return args.func(args)
    except USER_ERRORS as exc:
        message, code = failure(exc)
        print(f"hcdc: error: {message}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print(f"hcdc: interrupted{getattr(args, 'interrupted', '')}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
