"""Image table (HCDC's Table 1 and Figure 2): how well each proxy ranks NAS-Bench-201 architectures on CIFAR.

The protocol is HCDC's (Ding et al., ICLR 2024, Sec. 7), after DC-Bench's NAS evaluation (Cui et
al., NeurIPS 2022): architectures of the NAS-Bench-201 space (Dong & Yang, ICLR 2020) trained on
the original training split and ranked by validation accuracy (the ground truth), then trained on
each proxy's training part and ranked by its validation part; Spearman / Kendall between the two
rankings and Perf, the true test accuracy of the proxy's pick (see :mod:`hcdc.image.protocol`).

For each method × condensation seed: condense (from the protocol's data: subset and resolution),
evaluate, and write ``bench/results/<name>.json`` and ``.md`` after every method. The JSON keeps
each proxy's per-architecture scores and the true validation accuracies, which ``hcdc plot
ranking`` draws as the paper's Figure 2. Ground truth (``$HCDC_CACHE/image_groundtruth``), proxies
(``$HCDC_CACHE/image_proxies``) and each architecture's numbers on each proxy
(``$HCDC_CACHE/image_proxy_scores``) are cached as they are made, so an interrupted run resumes where it
stopped.

``--jobs N`` makes and evaluates the proxies in N processes side by side (the condensation seeds dealt
out among them, one torch thread per core each: small networks use cores better that way), then
assembles the table from the cache (:func:`run_in_jobs`).

    python bench/image_table.py --protocol cpu --jobs 2 # the CPU table, its 2 condensation seeds side by side
    python bench/image_table.py --protocol full         # the paper's protocol (GPU)
    python bench/image_table.py --smoke --methods random dm   # plumbing check, a minute or two
    python bench/image_table.py --dataset cifar100 --data-root /data --protocol cpu
    python bench/image_table.py --protocol cpu --ipc 50 --protocol-options '{"proxy_epochs": 20}' --name NAME

A run that changes only what concerns the proxies (``--ipc``, ``--archs`` within the committed
ground truth's, ``--protocol-options`` on proxy fields such as ``proxy_epochs`` / ``proxy_seeds`` /
``val_part``) reuses the ground truth committed by any run in the results directory
(``*_groundtruth.json``); when that file already holds all of it, the results point to it
(``ground_truth_committed``) instead of committing a copy.

Condensation options per protocol come from :mod:`hcdc.image.recipes` (each method's own recipe for
``full``, cut iteration counts for ``cpu``, tiny ones for ``smoke``); ``--options METHOD=JSON`` overrides.

Tables made at other condensation seeds pool into one (:func:`merge`), e.g. the ``cpu`` table's seeds 0 1 and
a ``--seeds 2 3`` run's:

    python bench/image_table.py --merge image_table_cpu image_table_cpu_s23 --name image_table_cpu_s0123
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
from tqdm.auto import tqdm

from hcdc.artifacts import load_proxy, save_proxy
from hcdc.data import get_spec, load_dataset
from hcdc.errors import ConfigError, exit_on_user_error
from hcdc.report import markdown_table
from hcdc.image.condensers import IMAGE_CONDENSERS, make_image_condenser
from hcdc.image.condensers.hcdc import validation_shift
from hcdc.image.recipes import method_options
from hcdc.data.image import data_fingerprint
from hcdc.image.evaluate import evaluate_image_proxy
from hcdc.image.groundtruth import ground_truth_path, image_ground_truth
from hcdc.image.protocol import PROTOCOLS, ImageProtocol, prepare_data
from hcdc.image.training import default_device
from hcdc.io import (
    atomic_write_bytes,
    atomic_write_json,
    merge_json_entries,
    read_json_entries,
    write_result,
)
from hcdc.metrics import mean_std, seed_agreement
from hcdc.paths import cache_dir, snapshot_dir
from hcdc.runinfo import command_line, machine_info, package_versions

RESULTS = Path(__file__).parent / "results"
DEFAULT_METHODS = ["random", "kcenter", "herding", "dc", "dsa", "dm", "kip", "tm", "hcdc"]

# HCDC's Table 1 (Spearman, Perf %) at 50 images per class, 100 architectures, 5 seeds
PAPER = {
    "cifar10": {"random": (-0.12, 91.3), "kcenter": (0.19, 91.4), "herding": (-0.05, 90.2), "dc": (-0.21, 89.2),
                "dsa": (-0.33, 73.5), "dm": (-0.10, 92.2), "kip": (-0.27, 91.8), "tm": (-0.07, 75.2),
                "hcdc": (0.74, 92.9), "optimal": (None, 93.5)},
    "cifar100": {"random": (-0.05, 71.1), "kcenter": (-0.07, 69.5), "herding": (0.08, 67.9), "dc": (-0.13, 64.9),
                 "dsa": (-0.28, 59.0), "dm": (-0.15, 70.1), "kip": (-0.08, 68.8), "tm": (-0.09, 51.3),
                 "hcdc": (0.63, 72.4), "optimal": (None, 72.9)},
}

VAL_PART_TEXT = {"split": "a random split of their own images (the paper's)", "real": "real validation images"}


def parse_named_json(item: str, flag: str) -> tuple[str, dict]:
    """``NAME={"key": value}`` (one command-line item of ``flag``) as ``(NAME, dict)``; ConfigError when malformed."""
    name, sep, text = item.partition("=")
    try:
        value = json.loads(text) if sep else None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{flag} {item!r}: not JSON ({exc})") from None
    if not name or not isinstance(value, dict):
        raise ConfigError(f"{flag} expects NAME='{{\"key\": value}}', got {item!r}")
    return name, value


def with_protocol_options(protocol: ImageProtocol, text: str | None) -> ImageProtocol:
    """``protocol`` with the field changes of ``--protocol-options`` (a JSON object; None: unchanged)."""
    if text is None:
        return protocol
    _, changes = parse_named_json(f"protocol={text}", "--protocol-options")
    return protocol.with_(**changes)


def parse_overrides(items: list[str]) -> dict[str, dict]:
    """``["dc={\"iterations\": 5}", ...]`` as ``{"dc": {"iterations": 5}}``; ConfigError when malformed."""
    out: dict[str, dict] = {}
    for item in items:
        method, value = parse_named_json(item, "--options")
        out.setdefault(method, {}).update(value)
    return out


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def committed_truth_path(out_dir: Path, name: str) -> Path:
    """Where the run ``name`` keeps a copy of its ground truth beside its results: ``<name>_groundtruth.json``."""
    return out_dir / f"{name}_groundtruth.json"


def committed_truths(out_dir: Path, cache: Path, prefer: Path | None = None):
    """(path, contents) of every ground truth committed in ``out_dir`` (``*_groundtruth.json``, ``prefer`` first)
    made from the same data and protocol as ``cache`` (same cache file name: dataset, data fingerprint,
    ground-truth key, precision); unreadable files are skipped."""
    paths = sorted(out_dir.glob("*_groundtruth.json"))
    if prefer is not None and prefer in paths:
        paths.remove(prefer)
        paths.insert(0, prefer)
    for committed in paths:
        try:
            saved = json.loads(committed.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(saved, dict) and saved.get("cache_file") == cache.name and isinstance(saved.get("archs"), dict):
            yield committed, saved


def seed_truth_cache(out_dir: Path, cache: Path) -> int:
    """Merge into the cache every ground truth committed in ``out_dir`` (any run's, :func:`committed_truths`),
    so runs that differ only in their proxies share one ground truth; returns the entries added."""
    known, added = set(read_json_entries(cache, "archs")), 0
    for _, saved in committed_truths(out_dir, cache):
        fresh = {k: v for k, v in saved["archs"].items() if k not in known}
        if fresh:
            header = {k: v for k, v in saved.items() if k not in ("archs", "cache_file", "command")}
            merge_json_entries(cache, "archs", fresh, header)
            known.update(fresh)
            added += len(fresh)
    return added


def committed_truth_covering(out_dir: Path, cache: Path, keys: list[str], prefer: Path) -> Path | None:
    """A ground truth committed in ``out_dir`` (``prefer`` first) that holds the entries ``keys`` exactly as
    ``cache`` does; None if none does."""
    entries = read_json_entries(cache, "archs")
    for committed, saved in committed_truths(out_dir, cache, prefer):
        if all(saved["archs"].get(k) == entries.get(k) for k in keys):
            return committed
    return None


def save_committed_truth(committed: Path, cache: Path, command: str) -> None:
    """Copy the cache file (the ground truth of this run's architectures and more) beside the results, with the command."""
    saved = json.loads(cache.read_text())
    atomic_write_json(committed, {**saved, "cache_file": cache.name, "command": command})


def cached_proxy(view, fingerprint: str, method: str, ipc: int, seed: int, options: dict):
    """Condense ``view`` (or load the cached proxy); returns (proxy, condensation seconds, cached?, its folder)."""
    key = _key(fingerprint, method, ipc, seed, options)
    path = cache_dir() / "image_proxies" / f"{view.name.lower()}-{method}-ipc{ipc}-s{seed}-{key}"
    cached = (path / "meta.json").exists()
    if cached:
        proxy = load_proxy(path)
    else:
        proxy = make_image_condenser(method, **options).condense(view, ipc, seed, progress=True, checkpoints=snapshot_dir())
        save_proxy(proxy, path, overwrite=True)
    return proxy, float(sum(proxy.meta["timings"].values())), cached, path


def evaluation_record(proxy, view, archs, protocol, truth, device) -> dict:
    """``proxy`` evaluated (each architecture's numbers cached as it is done, :func:`evaluate_image_proxy`): its
    ranking report, Perf, timings and per-architecture scores."""
    ev = evaluate_image_proxy(proxy, view, archs, protocol, truth, device=device, progress=True)
    return {**ev.row(), **ev.scores()}


def run_method(view, fingerprint, archs, protocol, truth, method, ipc, seeds, options, device, dataset) -> dict:
    """Condense and evaluate ``method`` at each condensation seed (or load both from the cache): its table row."""
    entries = []
    for seed in seeds:
        proxy, seconds, cached, path = cached_proxy(view, fingerprint, method, ipc, seed, options)
        start = time.perf_counter()
        record = evaluation_record(proxy, view, archs, protocol, truth, device)
        meta = proxy.meta
        entries.append({
            **{k: record[k] for k in SEED_FIELDS}, "seed": seed, "cached_proxy": cached,
            "oracle_perf": record["oracle_perf"], "score": record["score"], "val_acc": record["val_acc"],
            "val_loss": record["val_loss"], "pick": record["pick"], "eval_seconds": record["seconds"],
            "eval_wall_seconds": time.perf_counter() - start, "condense_seconds": seconds,
            "stage_seconds": meta["timings"], "proxy_dir": str(path),
            "alignment": meta.get("alignment_history"),  # HCDC: 1 − cos(g_T, g_S) per S_val step
            "val_shift": validation_shift(proxy, view),
            **{k: meta[k] for k in ("train_images", "val_images", "fraction_of_training_set")}})
    return row_from_seeds(method, ipc, options, dataset, entries)


# what a row keeps of each condensation seed's evaluation (its ``per_seed`` list)
SEED_FIELDS = ("spearman", "kendall", "spearman_acc", "spearman_loss", "top_k", "regret", "perf")


def row_from_seeds(method: str, ipc: int, options: dict, dataset: str, entries: list[dict]) -> dict:
    """A table row from one entry per condensation seed (as :func:`run_method` makes them and
    :func:`seed_entries` recovers them from a row): per-seed lists, and means ± std over the seeds."""
    sp, kd, pf = (mean_std([e[k] for e in entries]) for k in ("spearman", "kendall", "perf"))
    mean = lambda key: statistics.fmean(e[key] for e in entries)  # noqa: E731
    alignment = [e["alignment"] for e in entries if e["alignment"] is not None]
    shifts = [e["val_shift"] for e in entries]
    paper = PAPER.get(dataset, {}).get(method, (None, None))
    first = entries[0]
    return {
        "method": method, "ipc": ipc, "condense_seeds": [e["seed"] for e in entries], "options": options,
        **{k: first[k] for k in ("train_images", "val_images", "fraction_of_training_set")},
        "spearman_mean": sp[0], "spearman_std": sp[1], "kendall_mean": kd[0], "kendall_std": kd[1],
        "spearman_acc_mean": mean("spearman_acc"), "spearman_loss_mean": mean("spearman_loss"),
        "top5_mean": mean("top_k"), "regret_mean": mean("regret"),
        "perf_mean": pf[0], "perf_std": pf[1], "oracle_perf": first["oracle_perf"],
        "condense_seconds": mean("condense_seconds"),
        "condense_stage_seconds": {k: statistics.fmean(e["stage_seconds"].get(k, 0.0) for e in entries)
                                   for k in first["stage_seconds"]},
        "eval_seconds": mean("eval_seconds"), "eval_wall_seconds": mean("eval_wall_seconds"),
        "scores": [e["score"] for e in entries], "proxy_val_acc": [e["val_acc"] for e in entries],
        "proxy_val_loss": [e["val_loss"] for e in entries], "picks": [e["pick"] for e in entries],
        "per_seed": [{k: e[k] for k in ("seed", *SEED_FIELDS, "cached_proxy")} for e in entries],
        "proxy_dirs": [e["proxy_dir"] for e in entries], "alignment_history": alignment,
        "alignment_mean": statistics.fmean(v for h in alignment for v in h) if any(alignment) else None,
        "val_shift": shifts, "val_shift_mean": statistics.fmean(shifts) if None not in shifts else None,
        "paper_spearman": paper[0], "paper_perf": paper[1],
    }


def seed_entries(row: dict) -> list[dict]:
    """The per-seed entries of a results file's row (:func:`row_from_seeds` inverted). Timings are kept only as
    the row's means, so each seed gets those; rows written before ``val_shift`` was recorded get None."""
    n = len(row["per_seed"])
    alignment = row["alignment_history"] if len(row["alignment_history"]) == n else [None] * n
    return [{**row["per_seed"][i], "oracle_perf": row["oracle_perf"], "score": row["scores"][i],
             "val_acc": row["proxy_val_acc"][i], "val_loss": row["proxy_val_loss"][i], "pick": row["picks"][i],
             "eval_seconds": row["eval_seconds"], "eval_wall_seconds": row["eval_wall_seconds"],
             "condense_seconds": row["condense_seconds"], "stage_seconds": row["condense_stage_seconds"],
             "proxy_dir": row["proxy_dirs"][i], "alignment": alignment[i],
             "val_shift": row.get("val_shift", [None] * n)[i],
             **{k: row[k] for k in ("train_images", "val_images", "fraction_of_training_set")}} for i in range(n)]


# what results files must share to be merged into one table (the protocol too, but for ``stack``)
MERGE_KEYS = ("dataset", "protocol_name", "ipc", "data_fingerprint", "architectures", "true_val_acc")


def merge(out_dir: Path, names: list[str], command: str) -> dict:
    """One table from results files of the same protocol, data, architectures and ground truth made at
    other condensation seeds (``--seeds 0 1`` and ``--seeds 2 3``) or for other methods (``--methods kip``
    and ``--methods dc``): each method's rows, run with the same options, pooled over the files that have
    it, its means ± std taken over all its seeds. ConfigError when a file is missing or they differ in any of
    that, when a method repeats a seed, or when the methods would end with different seeds."""
    results = [read_results(out_dir, name) for name in names]
    base = results[0]
    protocol = lambda r: {k: v for k, v in r["protocol"].items() if k != "stack"}  # noqa: E731
    for name, other in zip(names[1:], results[1:]):
        differ = [k for k in MERGE_KEYS if other.get(k) != base.get(k)] + (["protocol"] if protocol(other) != protocol(base) else [])
        if differ:
            raise ConfigError(f"cannot merge {name} into {names[0]}: they differ in {', '.join(differ)}")
    methods = list(dict.fromkeys(row["method"] for r in results for row in r["rows"]))
    rows = []
    for method in methods:
        parts = [row for r in results for row in r["rows"] if row["method"] == method]
        # an option a file lacks was added after it was made, with today's default (the behaviour before it)
        defaults = make_image_condenser(method).options if method in IMAGE_CONDENSERS else {}
        if any({**defaults, **row["options"]} != {**defaults, **parts[0]["options"]} for row in parts):
            raise ConfigError(f"cannot merge method {method}: its options differ between {', '.join(names)}")
        entries = sorted((e for row in parts for e in seed_entries(row)), key=lambda e: e["seed"])
        seeds = [e["seed"] for e in entries]
        if len(set(seeds)) != len(seeds):
            raise ConfigError(f"cannot merge method {method}: condensation seeds repeat ({seeds})")
        rows.append(row_from_seeds(method, base["ipc"], {**defaults, **parts[0]["options"]}, base["dataset"], entries))
    if any(row["condense_seeds"] != rows[0]["condense_seeds"] for row in rows):
        raise ConfigError("cannot merge: the methods would end with different condensation seeds ("
                          + ", ".join(f"{row['method']} {row['condense_seeds']}" for row in rows) + ")")
    same_jobs = all((r.get("jobs", 1), r.get("threads_per_job")) == (base.get("jobs", 1), base.get("threads_per_job"))
                    for r in results)
    merged = {k: v for k, v in base.items() if same_jobs or k not in ("jobs", "threads_per_job")}
    return merged | {
        "condense_seeds": rows[0]["condense_seeds"], "methods": methods, "rows": rows, "command": command,
        "options": {m: rows[i]["options"] for i, m in enumerate(methods)},
        "merged_from": [{"name": n, "command": r["command"], "condense_seeds": r["condense_seeds"],
                         "jobs": r.get("jobs", 1), "threads_per_job": r.get("threads_per_job", r["torch_threads"])}
                        for n, r in zip(names, results)],
        "complete": all(r["complete"] for r in results),
        "ground_truth_seconds": sum(r["ground_truth_seconds"] for r in results),
        "total_seconds": sum(r["total_seconds"] for r in results),
    }


def run_in_jobs(argv: list[str], name: str, methods: list[str], seeds: list[int], jobs: int) -> dict:
    """Make and evaluate this run's proxies in ``jobs`` processes side by side, the condensation seeds dealt
    out among them; returns ``{"jobs": processes started, "threads_per_job": their torch threads}``.

    Each process is this script with the same arguments, its share of ``--seeds``, ``--jobs 1``, an
    ``--out-dir`` of its own under the cache and ``OMP_NUM_THREADS`` = this process's torch threads / jobs
    (small networks use one core each better than two cores together). They share the cache, so this
    process then finds every proxy and evaluation there and assembles the table as a rerun does. Their
    output goes to a log each; a bar counts finished (method, seed) pairs from their results files. A failed
    process is a ConfigError naming its log (its finished work stays cached, so a rerun resumes).
    """
    chunks = [seeds[i::jobs] for i in range(min(jobs, len(seeds)))]
    work = cache_dir() / "image_table_jobs" / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    threads = max(1, torch.get_num_threads() // len(chunks))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    procs = []
    for i, chunk in enumerate(chunks):
        command = [sys.executable, str(Path(__file__).resolve()), *argv, "--seeds", *map(str, chunk), "--jobs", "1",
                   "--name", name, "--out-dir", str(work / f"job{i}")]
        with open(work / f"job{i}.log", "wb") as log:
            procs.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env))
    print(f"{len(procs)} jobs (condensation seeds {chunks}); their logs: {work}/job*.log", file=sys.stderr, flush=True)

    def finished() -> int:
        done = 0
        for i in range(len(chunks)):
            try:
                done += sum(len(row["per_seed"]) for row in json.loads((work / f"job{i}" / f"{name}.json").read_text())["rows"])
            except (OSError, json.JSONDecodeError, KeyError):
                pass
        return done

    try:
        with tqdm(total=len(methods) * len(seeds), desc="proxies (method, seed)") as bar:
            while any(p.poll() is None for p in procs):
                time.sleep(2.0)
                done = finished()
                if done > bar.n:  # refresh only on progress (a log is not flooded)
                    bar.update(done - bar.n)
            bar.update(finished() - bar.n)
    finally:  # interrupted: stop the jobs as Ctrl-C does (they keep their snapshots), then wait for them
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait()
    failed = [i for i, p in enumerate(procs) if p.returncode != 0]
    if failed:
        raise ConfigError(f"job(s) {failed} failed (exit codes {[procs[i].returncode for i in failed]}); see "
                          f"{work}/job{failed[0]}.log; their finished proxies are cached, rerun to resume")
    shutil.rmtree(work, ignore_errors=True)
    return {"jobs": len(procs), "threads_per_job": threads}


COLUMNS = [("method", "method", ""), ("ipc", "ipc", ""), ("train_images", "train imgs", ""), ("val_images", "val imgs", ""),
           ("spearman_mean", "Spearman", ".3f"), ("spearman_std", "±", ".3f"), ("kendall_mean", "Kendall", ".3f"),
           ("spearman_loss_mean", "ρ (loss)", ".3f"), ("top5_mean", "top-5", ".2f"),
           ("perf_mean", "Perf", ".1%"), ("perf_std", "±", ".1%"), ("oracle_perf", "oracle Perf", ".1%"),
           ("paper_spearman", "paper ρ", ""), ("paper_perf", "paper Perf %", ""),
           ("condense_seconds", "condense s", ".0f"), ("eval_seconds", "eval s", ".0f"), ("val_shift_mean", "S_val shift", ".3f")]


def compute_seconds(result: dict) -> float:
    """Everything the table costs from scratch, resumptions notwithstanding: ground-truth training plus,
    for every method and condensation seed, condensing one proxy and evaluating it."""
    seeds = len(result["condense_seeds"])
    return result["ground_truth_compute_seconds"] + sum(
        seeds * (row["condense_seconds"] + row["eval_seconds"]) for row in result["rows"])


def _method_order(row: dict) -> int:
    return DEFAULT_METHODS.index(row["method"]) if row["method"] in DEFAULT_METHODS else len(DEFAULT_METHODS)


def to_markdown(result: dict) -> str:
    p = result["protocol"]
    res = f"{p['resolution']}×{p['resolution']}" if p["resolution"] else "native resolution"
    subset = lambda n: "all" if n is None else f"{n}/class"  # noqa: E731
    wall = "the merged runs' wall times together" if "merged_from" in result else "this invocation's wall time"
    jobs = (f" ({result['jobs']} jobs side by side, {result['threads_per_job']} thread(s) each)"
            if result.get("jobs", 1) > 1 else "")
    parts = [
        f"# Image proxies: ranking of {len(result['architectures'])} NAS-Bench-201 architectures on {result['dataset']} "
        f"(protocol '{result['protocol_name']}')", "",
        f"Command: `{result['command']}`  ",
        *(["Merged from (per-seed results pooled): " + "; ".join(
            f"`{m['name']}.json` (condensation seeds {m['condense_seeds']}, `{m['command']}`)" for m in result["merged_from"])
           + ".  "] if "merged_from" in result else []),
        f"Machine: {result['machine']['processor']}, {result['machine']['cpu_count']} cores, "
        f"{result['machine']['torch_threads']} torch threads{jobs}{', ' + result['machine']['gpu'] if 'gpu' in result['machine'] else ''}"
        f"; device {result['device']}; torch {result['versions']['torch']}.  ",
        f"Protocol: NB201Network C={p['C']}, N={p['N']}, norm groups {p['norm_groups']}; {res}; train {subset(p['train_subset'])}, "
        f"val {subset(p['val_subset'])}, test {subset(p['test_subset'])}; SGD lr {p['lr']} cosine, momentum {p['momentum']}, "
        f"wd {p['weight_decay']}, clip {p['grad_clip']}, batch {p['batch_size']}; ground truth {p['epochs']} epochs × "
        f"{len(p['seeds'])} seed(s), proxies {p['proxy_epochs'] or p['epochs']} epochs × "
        f"{len(p['proxy_seeds'] or p['seeds'])} seed(s); ipc {result['ipc']}; condensation seeds {result['condense_seeds']}; "
        f"baselines' validation part: {VAL_PART_TEXT[p['val_part']]}.  ",
        f"Ground truth: {result['ground_truth_compute_seconds']:.0f} s of training (this run: "
        f"{result['ground_truth_seconds']:.0f} s); oracle Perf {result['oracle_perf']:.1%}; total compute "
        f"{compute_seconds(result):.0f} s = {compute_seconds(result) / 3600:.2f} h (ground truth + every proxy's "
        f"condensation and evaluation; {wall} {result['total_seconds']:.0f} s)"
        f"{'' if result['complete'] else ' (incomplete)'}.  ",
        (f"Ground truth's own reproducibility: Spearman between two training seeds {result['ground_truth_seed_spearman']:.2f}, "
         f"reliability of the seed mean {result['ground_truth_reliability']:.2f}, so no proxy can reach a Spearman much "
         f"above {max(result['ground_truth_reliability'], 0) ** 0.5:.2f}."
         if result.get("ground_truth_seed_spearman") is not None else ""), "",
        markdown_table(sorted(result["rows"], key=_method_order), COLUMNS), "",
        "Spearman/Kendall: proxy score (validation accuracy on the proxy's validation part, loss as tie-breaker) vs "
        "true validation accuracy, mean ± std over condensation seeds; ρ (loss): the proxy's validation loss alone; "
        "Perf: true test accuracy of the proxy's pick; oracle Perf: that of the architecture with the best true "
        "validation accuracy; paper: HCDC's Table 1 (50 images per class, 100 architectures, full CIFAR at 32×32, "
        "so not directly comparable at other protocols). condense s: condensation time of one proxy (cached proxies "
        "report the time measured when they were made); eval s: training and scoring every architecture on one proxy; "
        "S_val shift: how far HCDC's calibration moved its validation images from the real ones they started from, "
        "‖S_val − S_0‖ / ‖S_0‖ in normalised pixels (blank for the other methods and for tables made before it was "
        "recorded).",
    ]
    return "\n".join(parts) + "\n"


def write(result: dict, out_dir: Path, name: str) -> None:
    write_result(out_dir, name, result, to_markdown(result))


def read_results(out_dir: Path, name: str) -> dict:
    """The results file ``out_dir/name.json``; ConfigError when it is missing or not JSON."""
    path = out_dir / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read results file {path}: {exc}") from None


def render(out_dir: Path, name: str) -> dict:
    """Rewrite ``out_dir/name.md`` from ``name.json``; ConfigError when there is no such results file."""
    result = read_results(out_dir, name)
    atomic_write_bytes(out_dir / f"{name}.md", to_markdown(result).encode())
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny everything (protocol 'smoke'), to check the plumbing")
    parser.add_argument("--methods", nargs="+", default=None, help=f"default: {' '.join(DEFAULT_METHODS)}")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="condensation seeds (default: 0 1 for cpu, 0..4 for full, 0 for smoke)")
    parser.add_argument("--ipc", type=int, default=None, help="images per class (default: the protocol's)")
    parser.add_argument("--archs", type=int, default=None, help="number of architectures (default: the protocol's)")
    add_protocol_options_argument(parser)
    parser.add_argument("--dataset", default="cifar10", help="registered image dataset: cifar10 or cifar100")
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--options", nargs="+", default=[], metavar="METHOD=JSON", help="condenser option overrides")
    parser.add_argument("--name", default=None, help="results name (default: image_table_<protocol>[_<dataset>])")
    parser.add_argument("--jobs", type=int, default=1,
                        help="processes that make and evaluate the proxies side by side, condensation seeds dealt out "
                             "among them (default 1)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--render", metavar="NAME", default=None,
                        help="only rewrite <out-dir>/NAME.md from NAME.json (after a change to the table's layout)")
    parser.add_argument("--merge", nargs="+", metavar="NAME", default=None,
                        help="only pool results files <out-dir>/NAME.json made at other condensation seeds into one "
                             "table, written as --name (see merge())")
    return parser


DEFAULT_SEEDS = {"full": [0, 1, 2, 3, 4], "cpu": [0, 1], "smoke": [0]}


def add_protocol_options_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--protocol-options`` flag (read by :func:`with_protocol_options`)."""
    parser.add_argument("--protocol-options", default=None, metavar="JSON",
                        help='protocol field overrides, e.g. \'{"proxy_epochs": 20, "val_part": "real"}\'')


def resolve(args: argparse.Namespace) -> dict:
    """Everything a run needs from its arguments, validated before any data is loaded (ConfigError)."""
    protocol_name = "smoke" if args.smoke else args.protocol
    protocol = PROTOCOLS[protocol_name]
    if args.archs is not None:
        protocol = protocol.with_(num_archs=args.archs)
    if args.ipc is not None:
        protocol = protocol.with_(ipc=args.ipc)
    protocol = with_protocol_options(protocol, args.protocol_options)
    if get_spec(args.dataset).kind != "image":
        raise ConfigError(f"dataset '{args.dataset}' is not an image dataset")
    methods = args.methods or DEFAULT_METHODS
    if args.smoke and args.methods is None:
        skipped = [m for m in methods if m not in IMAGE_CONDENSERS]
        if skipped:
            warnings.warn(f"smoke run: skipping unregistered method(s) {skipped}", stacklevel=2)
        methods = [m for m in methods if m in IMAGE_CONDENSERS]
    overrides = parse_overrides(args.options)
    unknown = sorted(set(overrides) - set(methods))
    if unknown:
        raise ConfigError(f"--options for method(s) {unknown} that are not run (methods: {', '.join(methods)})")
    options = {m: method_options(m, protocol_name, protocol, overrides.get(m)) for m in methods}
    seeds = args.seeds if args.seeds is not None else DEFAULT_SEEDS[protocol_name]
    if not seeds or any(s < 0 for s in seeds):
        raise ConfigError(f"--seeds must be non-negative integers, got {seeds}")
    if args.jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {args.jobs}")
    suffix = "" if args.dataset == "cifar10" else f"_{args.dataset}"
    name = args.name or f"image_table_{protocol_name}{suffix}"
    return {"protocol_name": protocol_name, "protocol": protocol, "methods": methods, "options": options,
            "seeds": list(seeds), "name": name}


def main(argv=None) -> dict:
    start = time.perf_counter()
    args = build_parser().parse_args(argv)
    if args.render:
        return render(args.out_dir, args.render)
    command = command_line(__file__, argv)
    if args.merge:
        if len(args.merge) < 2 or args.name is None or args.name in args.merge:
            raise ConfigError("--merge takes two or more results names and a new --name for the merged table")
        result = merge(args.out_dir, args.merge, command)
        write(result, args.out_dir, args.name)
        print(to_markdown(result))
        return result
    run = resolve(args)
    protocol: ImageProtocol = run["protocol"]
    device = default_device(args.device)
    data = load_dataset(args.dataset, args.data_root)
    view = prepare_data(data, protocol)
    fingerprint = data_fingerprint(view)
    archs = protocol.architectures()
    cache_file, committed = ground_truth_path(view, protocol, device=device), committed_truth_path(args.out_dir, run["name"])
    seeded = seed_truth_cache(args.out_dir, cache_file)
    truth = image_ground_truth(view, archs, protocol, device=device)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    # a ground truth restored whole from a committed file is pointed to, not copied; one trained now is committed
    covering = None if truth.computed else committed_truth_covering(args.out_dir, cache_file, [a.to_str() for a in archs],
                                                                     committed)
    if covering is None:
        save_committed_truth(committed, cache_file, command)
    committed = covering or committed
    seeds = [str(seed) for seed in protocol.seeds]
    agreement = (seed_agreement([[entry[seed]["val_acc"] for entry in truth.per_seed] for seed in seeds])
                 if len(seeds) > 1 and len(archs) > 1 else (None, None))
    result = {
        "dataset": data.name, "protocol_name": run["protocol_name"], "protocol": protocol.as_dict(),
        "ipc": protocol.ipc, "condense_seeds": run["seeds"], "methods": run["methods"], "options": run["options"],
        "data": view.summary(), "data_fingerprint": fingerprint, "device": str(device),
        "architectures": [a.to_str() for a in archs], "true_val_acc": truth.val_acc.tolist(),
        "true_val_loss": truth.val_loss.tolist(), "true_test_acc": truth.test_acc.tolist(),
        "oracle_perf": float(truth.test_acc[int(truth.val_acc.argmax())]),
        "ground_truth_seconds": truth.seconds, "ground_truth_compute_seconds": truth.compute_seconds,
        "ground_truth_seed_spearman": agreement[0], "ground_truth_reliability": agreement[1],
        "ground_truth_cache": truth.cache_file, "ground_truth_committed": committed.name,
        "ground_truth_from_committed": seeded, "rows": [], "machine": machine_info(), "versions": package_versions(),
        "torch_threads": torch.get_num_threads(), "command": command, "complete": False, "jobs": 1,
        "total_seconds": time.perf_counter() - start,
    }
    write(result, args.out_dir, run["name"])
    print(f"ground truth: {len(archs)} architectures, {truth.computed} trained now ({truth.seconds:.0f} s); "
          f"true val acc {truth.val_acc.min():.3f}..{truth.val_acc.max():.3f}", file=sys.stderr, flush=True)
    if args.jobs > 1:
        result |= run_in_jobs(argv if argv is not None else sys.argv[1:], run["name"], run["methods"],
                                     run["seeds"], args.jobs)
    for method in run["methods"]:
        row = run_method(view, fingerprint, archs, protocol, truth, method, protocol.ipc, run["seeds"],
                         run["options"][method], device, data.name)
        result["rows"].append(row)
        result["total_seconds"] = time.perf_counter() - start
        write(result, args.out_dir, run["name"])
        print(f"{method}: rho={row['spearman_mean']:.3f}±{row['spearman_std']:.3f} tau={row['kendall_mean']:.3f} "
              f"perf={row['perf_mean']:.3f} (oracle {row['oracle_perf']:.3f}) condense={row['condense_seconds']:.0f}s "
              f"eval={row['eval_seconds']:.0f}s", file=sys.stderr, flush=True)
    result["complete"] = True
    result["total_seconds"] = time.perf_counter() - start
    write(result, args.out_dir, run["name"])
    print(to_markdown(result))
    return result


if __name__ == "__main__":
    exit_on_user_error(main, "image_table")
