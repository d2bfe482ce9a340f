"""The README demo's HCDC schedule, chosen on tuning configurations.

The demo (:mod:`hcdc.graph.demo`) runs HCDC with a short schedule (``DEMO_HCDC``) and trains
configurations with a short protocol (``DEMO_PROTOCOL``) so that it fits in a few minutes. This
script condenses Cora at the demo's ratio with each ``--variants`` entry (``hcdc`` for the demo's
schedule as it is, ``hcdc:key=value,...`` for options that override it, and the demo's other methods
for reference) and condensation seeds
``--condense-seeds``, and scores each proxy by Spearman ρ on ``--tune-configs`` configurations drawn
with ``--tune-seed``, disjoint from the demo's configurations (seed 0), under the demo's protocol.
Also reported: condensation seconds and the final alignment loss.

    OMP_NUM_THREADS=2 python bench/demo_schedule.py   # → bench/results/demo_schedule.{json,md}
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from graph_table import method_spec  # noqa: E402
from graph_val_fit import run_study, study_markdown  # noqa: E402

from hcdc.data import load_dataset  # noqa: E402
from hcdc.errors import ConfigError, exit_on_user_error  # noqa: E402
from hcdc.graph import FilterSpace, evaluate_proxy, ground_truth, make_condenser  # noqa: E402
from hcdc.graph.demo import DEMO_HCDC, DEMO_METHODS, DEMO_PROTOCOL, DEMO_RATIO  # noqa: E402
from hcdc.runinfo import command_line, machine_info, package_versions  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def variant(spec: str) -> tuple[str, dict]:
    """A demo method and its demo options with ``spec``'s overrides (``hcdc`` or ``hcdc:key=value,...``;
    the other demo methods are scored the same way, for reference)."""
    name, options = method_spec(spec)
    if name not in DEMO_METHODS:
        raise ConfigError(f"variant {spec!r}: expected one of {sorted(DEMO_METHODS)}, optionally with :key=value,...")
    return name, {**DEMO_METHODS[name], **options}


def variant_rows(data, spec: str, seeds: list[int], lam, truth) -> list[dict]:
    """One row per condensation seed: the demo's ``spec`` proxy scored on ``lam`` under the demo's protocol."""
    name, options = variant(spec)
    rows = []
    for seed in seeds:
        proxy = make_condenser(name, **options).condense(data, DEMO_RATIO, seed, progress=True)
        ev = evaluate_proxy(proxy, data, lam, DEMO_PROTOCOL, truth)
        history = proxy.meta.get("alignment_history")
        rows.append({"variant": spec, "seed": seed, "spearman": ev.report["spearman"], "kendall": ev.report["kendall"],
                     "alignment_end": history[-1] if history else None,
                     "condense_seconds": sum(proxy.meta["timings"].values())})
        print(f"{spec} seed {seed}: rho={ev.report['spearman']:.3f}", file=sys.stderr, flush=True)
    return rows


def to_markdown(result: dict) -> str:
    return study_markdown(
        result, "The demo's HCDC schedule",
        f"Demo schedule `hcdc`: `{result['demo_hcdc']}`; tuning configurations: {result['tune_configs']} drawn with "
        f"seed {result['tune_seed']} (the demo's are seed 0), trained with the demo's protocol; condensation seeds "
        f"{result['condense_seeds']}.", "schedule",
        [("alignment_end", "final 1 − cos", ".3f"), ("condense_seconds", "condense s (mean)", ".0f")])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="cora")
    parser.add_argument("--condense-seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+",
                        default=["hcdc:candidates=4", "hcdc:candidates=4,val_steps=20",
                                 "hcdc:candidates=4,val_steps=20,lr_features=0.03", "hcdc:candidates=8",
                                 "hcdc:candidates=8,val_steps=20"])
    parser.add_argument("--tune-configs", type=int, default=40)
    parser.add_argument("--tune-seed", type=int, default=2024)
    parser.add_argument("--name", default="demo_schedule")
    args = parser.parse_args(argv)
    for spec in args.variants:
        name, options = variant(spec)
        make_condenser(name, **options)
    if args.tune_seed == 0:
        raise ConfigError("--tune-seed must differ from the demo's configuration seed (0)")
    data = load_dataset(args.dataset)
    lam = FilterSpace().sample(args.tune_configs, args.tune_seed)
    truth = ground_truth(data, lam, DEMO_PROTOCOL)
    result = {"command": command_line(__file__, argv),
              "dataset": args.dataset, "ratio": DEMO_RATIO, "demo_hcdc": DEMO_HCDC, "condense_seeds": args.condense_seeds,
              "tune_configs": args.tune_configs, "tune_seed": args.tune_seed,
              "machine": machine_info(), "versions": package_versions()}
    groups = (variant_rows(data, spec, args.condense_seeds, lam, truth) for spec in args.variants)
    return run_study(RESULTS, args.name, result, groups, ("alignment_end", "condense_seconds"), to_markdown)


if __name__ == "__main__":
    exit_on_user_error(main, "demo_schedule")
