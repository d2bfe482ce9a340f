"""Benchmark of one IFT hypergradient: time, peak memory and error per solver, beside torchopt.

Problems (real data from ``../shared/data`` or ``$HCDC_DATA``):
- ``gnn-cora``: the 2-layer polynomial-filter GNN (K = 3, hidden 64) on Cora, full batch,
  λ = the 4 filter coefficients, θ trained 200 Adam epochs; 92k parameters.
- ``cnn-cifar10``: a 2-block CNN whose blocks mix conv3x3 / conv1x1 / avg-pool with weights λ
  (DARTS-style, 2×3 hyperparameters), GroupNorm, on a 64-image CIFAR-10 batch (+64 validation).
- ``linear-cora-small``: the linear filter model g(Â)²(XP)W + b on Cora (P a fixed 1433→32
  projection; 231 parameters, float64, weight decay 5e-3, convex, solved by L-BFGS), small enough
  to form H densely: its rows report the error against the exact dense solve.

Each row runs in two fresh subprocesses after one warm-up call: seconds is the minimum of 5
calls (robust to other load on the machine; the median is kept as ``seconds_median``); peak
memory is the growth of the resident-set high-water mark (reset through /proc/self/clear_refs)
during one call, in a process where glibc is told to mmap (and so return) every buffer over
64 KiB, so that the resident set tracks live tensors. The peer is torchopt's ``custom_root`` with
its Neumann solver (``solve_inv(ns=True)``), given the same loss functions, parameters, α and J.

    python bench/hypergrad.py            # writes bench/results/hypergrad.json and .md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.func import functional_call

from hcdc.data.graph import load_planetoid, row_normalize
from hcdc.data.image import load_cifar10_jpg
from hcdc.hypergrad import TrainHessian, flatten, hypergradient, minimize_lbfgs
from hcdc.io import atomic_write_bytes, atomic_write_json
from hcdc.models import polyfilter
from hcdc.nn import GroupNorm
from hcdc.paths import default_data_root
from hcdc.runinfo import machine_info, package_versions

TERMS = (1, 4, 16, 64)
RESULTS = Path(__file__).parent / "results"
WEIGHT_DECAY = 5e-4


# ------------------------------------------------------------------ problems
def _linear_problem(prepared: dict | None):
    """Linear filter model g(Â)² (X P) W + b on Cora, P a fixed 1433→32 projection; convex in θ."""
    data = load_planetoid(default_data_root() / "planetoid", "cora")
    proj = torch.randn(data.num_features, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = row_normalize(data.x).double() @ proj / 32**0.5
    op = polyfilter.EdgeListOperator.from_edge_index(data.edge_index, data.num_nodes)
    lam = torch.tensor([0.6, 0.8, -0.3, 0.4], dtype=torch.float64)

    def loss(p, h, mask):
        out = polyfilter.poly_filter(op, polyfilter.poly_filter(op, x @ p["w"], h), h) + p["b"]
        return F.cross_entropy(out[mask], data.y[mask])

    def train_loss(p, h):
        return loss(p, h, data.train_mask) + 0.5 * 10 * WEIGHT_DECAY * sum((w**2).sum() for w in p.values())

    def val_loss(p, h):
        return loss(p, h, data.val_mask)

    params = prepared or minimize_lbfgs(train_loss, {"w": torch.zeros(32, data.num_classes, dtype=torch.float64),
                                               "b": torch.zeros(data.num_classes, dtype=torch.float64)}, lam, max_iter=2000)
    return train_loss, val_loss, params, lam


def _gnn_problem(prepared: dict | None, hidden: int = 64):
    data = load_planetoid(default_data_root() / "planetoid", "cora")
    x = row_normalize(data.x)
    op = polyfilter.EdgeListOperator.from_edge_index(data.edge_index, data.num_nodes)
    lam = torch.tensor([0.6, 0.8, -0.3, 0.4])

    def train_loss(p, h):
        reg = 0.5 * WEIGHT_DECAY * sum((w**2).sum() for w in p.values())
        return polyfilter.node_loss(p, h, x, op, data.y, data.train_mask) + reg

    def val_loss(p, h):
        return polyfilter.node_loss(p, h, x, op, data.y, data.val_mask)

    if prepared is None:
        params = polyfilter.init_params(data.num_features, hidden, data.num_classes, torch.Generator().manual_seed(0))
        params = _fit(train_loss, params, lam, steps=200, lr=0.01)
    else:
        params = prepared
    return train_loss, val_loss, params, lam


class _MixedCNN(torch.nn.Module):
    """Two blocks, each Σ_o λ_o op_o(x) over {conv3x3, conv1x1, avg-pool 3x3}, then GN-ReLU-pool."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, width, 3, padding=1)
        self.conv3 = torch.nn.ModuleList(torch.nn.Conv2d(width, width, 3, padding=1) for _ in range(2))
        self.conv1 = torch.nn.ModuleList(torch.nn.Conv2d(width, width, 1) for _ in range(2))
        self.norm = torch.nn.ModuleList(GroupNorm(4, width) for _ in range(2))
        self.head = torch.nn.Linear(width, 10)

    def forward(self, x, lam):
        h = self.stem(x)
        for b in range(2):
            pool = F.avg_pool2d(h, 3, stride=1, padding=1, count_include_pad=False)
            h = lam[b, 0] * self.conv3[b](h) + lam[b, 1] * self.conv1[b](h) + lam[b, 2] * pool
            h = F.max_pool2d(torch.relu(self.norm[b](h)), 2)
        return self.head(h.mean(dim=(2, 3)))


def _cnn_problem(prepared: dict | None, batch_file: Path):
    if batch_file.exists():
        batch = load_file(batch_file)
    else:
        data = load_cifar10_jpg(default_data_root() / "cifar10" / "cifar10-jpg.tar.gz")
        g = torch.Generator().manual_seed(0)
        tr = torch.randperm(len(data.y_train), generator=g)[:64]
        va = torch.randperm(len(data.y_val), generator=g)[:64]
        batch = {"x": data.normalized("train")[tr], "y": data.y_train[tr], "xv": data.normalized("val")[va], "yv": data.y_val[va]}
        save_file(batch, str(batch_file))
    torch.manual_seed(0)
    net = _MixedCNN()
    lam = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]])

    def train_loss(p, h):
        reg = 0.5 * WEIGHT_DECAY * sum((w**2).sum() for w in p.values())
        return F.cross_entropy(functional_call(net, p, (batch["x"], h), strict=True), batch["y"]) + reg

    def val_loss(p, h):
        return F.cross_entropy(functional_call(net, p, (batch["xv"], h), strict=True), batch["yv"])

    params = prepared or _fit(train_loss, {k: v.detach() for k, v in net.named_parameters()}, lam, steps=300, lr=0.003)
    return train_loss, val_loss, params, lam


def build(problem: str, prepared: dict | None, workdir: Path):
    if problem == "gnn-cora":
        return _gnn_problem(prepared)
    if problem == "linear-cora-small":
        return _linear_problem(prepared)
    if problem == "cnn-cifar10":
        return _cnn_problem(prepared, workdir / "cifar_batch.safetensors")
    raise SystemExit(f"unknown problem {problem}")


def _fit(train_loss, params, lam, steps, lr):
    p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    opt = torch.optim.Adam(p.values(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        train_loss(p, lam).backward()
        opt.step()
    return {k: v.detach() for k, v in p.items()}


# ------------------------------------------------------------------ one row (in a subprocess)
def _torchopt_hypergradient(train_loss, val_loss, params, lam, terms, alpha):
    import torchopt

    keys = list(params)

    def optimality(sol, h):  # torchopt linearises this with functorch, so it must be torch.func-pure
        return torch.func.grad(lambda s, lam: train_loss(dict(zip(keys, s)), lam))(tuple(sol), h)

    @torchopt.diff.implicit.custom_root(optimality, argnums=1, solve=torchopt.linear_solve.solve_inv(ns=True, maxiter=terms, alpha=alpha))
    def inner(sol, h):
        return sol

    h = lam.clone().requires_grad_(True)
    sol = inner(tuple(v.clone() for v in params.values()), h)
    loss = val_loss(dict(zip(keys, sol)), h)
    return torch.autograd.grad(loss, h)[0]


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def run_row(problem: str, impl: str, solver: str, terms: int, alpha: float, workdir: Path, measure: str) -> dict:
    prepared = load_file(workdir / f"{problem}.safetensors")
    train_loss, val_loss, params, lam = build(problem, prepared, workdir)
    opts = {"terms": terms, "alpha": alpha} if solver == "neumann" else {"tol": 1e-6, "max_iter": 1000} if solver == "cg" else {}

    def once():
        if impl == "torchopt":
            return _torchopt_hypergradient(train_loss, val_loss, params, lam, terms, alpha), None
        hg = hypergradient(train_loss, val_loss, params, lam, solver, residual=False, **opts)
        return hg.grad, hg.info

    once()  # warm-up: lazy initialisation and imports are not part of either measurement
    if measure == "memory":
        Path("/proc/self/clear_refs").write_text("5")
        before = _rss_kb("VmRSS")
        grad, info = once()
        return {"peak_mb": (_rss_kb("VmHWM") - before) / 1024}
    times = []
    for _ in range(5):
        start = time.perf_counter()
        grad, info = once()
        times.append(time.perf_counter() - start)
    return {"grad": grad.reshape(-1).tolist(), "seconds": min(times), "seconds_median": statistics.median(times),
            "iterations": info.iterations if info else terms}


# ------------------------------------------------------------------ driver
def _subprocess_row(*args) -> dict:
    """Time one row in a fresh process, then measure its peak memory in another."""
    result = {}
    for measure, env in (("time", {}), ("memory", _MMAP_ENV)):
        cmd = [sys.executable, __file__, "--threads", str(torch.get_num_threads()), "--row", *map(str, args), measure]
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
        if out.returncode:
            raise RuntimeError(f"row {args} failed:\n{out.stderr[-3000:]}")
        result.update(json.loads(out.stdout.strip().splitlines()[-1]))
    return result


# For the memory run only: large buffers are mmapped and unmapped on free, so the resident set
# tracks live tensors (this slows allocation, so timings come from a separate, default run).
_MMAP_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def _rel(a, b) -> float:
    a, b = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    return float((a - b).norm() / b.norm())


def main(problems: list[str], torchopt_ok: bool) -> dict:
    rows, problem_info = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for problem in problems:
            start = time.perf_counter()
            train_loss, val_loss, params, lam = build(problem, None, workdir)
            setup = time.perf_counter() - start
            save_file(params, str(workdir / f"{problem}.safetensors"))
            lmax = TrainHessian(train_loss, params, lam).largest_eigenvalue(30, torch.Generator().manual_seed(0))
            alpha = 1.0 / lmax
            exact = problem == "linear-cora-small"
            reference = hypergradient(train_loss, val_loss, params, lam, "exact") if exact else \
                hypergradient(train_loss, val_loss, params, lam, "cg", tol=1e-10, max_iter=2000)
            problem_info[problem] = {"parameters": flatten(params).numel(), "hyperparameters": lam.numel(),
                                     "lambda_max": lmax, "alpha": alpha, "setup_seconds": setup,
                                     "reference": "exact dense solve" if exact else "CG to 1e-10",
                                     "reference_residual": reference.info.residual,
                                     "reference_iterations": reference.info.iterations}
            ref = flatten(reference.grad).tolist()
            plan = [("hcdc", "neumann", j) for j in TERMS] + [("hcdc", "cg", 0)]
            if torchopt_ok:
                plan += [("torchopt", "neumann", j) for j in TERMS]
            for impl, solver, terms in plan:
                res = _subprocess_row(problem, impl, solver, terms, alpha, workdir)
                row = {"model": problem, "impl": impl, "solver": solver, "terms": terms if solver == "neumann" else None,
                       "iterations": res["iterations"], "seconds": res["seconds"],
                       "seconds_median": res["seconds_median"], "peak_mb": res["peak_mb"],
                       "rel_error": _rel(res["grad"], ref), "rel_error_vs": problem_info[problem]["reference"]}
                if impl == "torchopt":
                    ours = next(r for r in rows if r["model"] == problem and r["impl"] == "hcdc" and r["terms"] == terms)
                    row["speed_ratio_torchopt_over_hcdc"] = row["seconds"] / ours["seconds"]
                    row["rel_diff_vs_hcdc"] = _rel(res["grad"], ours.pop("_grad"))
                elif solver == "neumann" and torchopt_ok:
                    row["_grad"] = res["grad"]
                rows.append(row)
                print(f"{problem:15s} {impl:8s} {solver:7s} J={terms:<3d} {row['seconds']:.4f}s "
                      f"{row['peak_mb']:.1f}MB rel_err={row['rel_error']:.2e}", file=sys.stderr)
    for r in rows:
        r.pop("_grad", None)
    return {"rows": rows, "problems": problem_info, "machine": machine_info(), "versions": package_versions(),
            "torchopt": _torchopt_version() if torchopt_ok else None, "command": "python bench/hypergrad.py"}


def _torchopt_version() -> str:
    from importlib.metadata import version

    return version("torchopt")


def to_markdown(result: dict) -> str:
    lines = ["# One IFT hypergradient: time, peak memory, error", "",
             f"Machine: {result['machine']['processor']}, {result['machine']['cpu_count']} cores, "
             f"torch {result['versions']['torch']}, {result['machine'].get('gpu', 'CPU only')}. "
             f"Peer: torchopt {result['torchopt'] or 'not installed'}. Command: `{result['command']}`.", "",
             "| model | params | impl | solver | J | seconds | peak MB | rel. error | vs | torchopt/hcdc time |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        p = result["problems"][r["model"]]
        ratio = r.get("speed_ratio_torchopt_over_hcdc")
        lines.append(f"| {r['model']} | {p['parameters']} | {r['impl']} | {r['solver']} | {r['terms'] if r['terms'] is not None else r['iterations']} "
                     f"| {r['seconds']:.4f} | {r['peak_mb']:.1f} | {r['rel_error']:.2e} | {r['rel_error_vs']} | "
                     f"{'' if ratio is None else f'{ratio:.2f}'} |")
    lines += ["", "For CG the J column is the number of iterations used (tolerance 1e-6).", ""]
    for name, p in result["problems"].items():
        lines.append(f"- {name}: {p['parameters']} parameters, {p['hyperparameters']} hyperparameters, "
                     f"λ_max(H) ≈ {p['lambda_max']:.3g}, Neumann α = {p['alpha']:.3g}, reference: {p['reference']} "
                     f"(residual {p['reference_residual']:.1e}, {p['reference_iterations']} HVPs)")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--row", nargs=7, metavar=("PROBLEM", "IMPL", "SOLVER", "TERMS", "ALPHA", "WORKDIR", "MEASURE"))
    parser.add_argument("--problems", nargs="+", default=["linear-cora-small", "gnn-cora", "cnn-cifar10"])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per measurement (1: timings stay stable on a shared 2-core machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.row:
        problem, impl, solver, terms, alpha, workdir, measure = args.row
        print(json.dumps(run_row(problem, impl, solver, int(terms), float(alpha), Path(workdir), measure)))
        sys.exit(0)
    try:
        import torchopt  # noqa: F401

        have_torchopt = True
    except Exception as exc:  # report why the peer is missing instead of failing
        print(f"torchopt unavailable ({exc}); install with `pip install torchopt`", file=sys.stderr)
        have_torchopt = False
    result = main(args.problems, have_torchopt)
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULTS / "hypergrad.json", result)
    atomic_write_bytes(RESULTS / "hypergrad.md", to_markdown(result).encode())
    print(to_markdown(result))
