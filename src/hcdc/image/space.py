"""The NAS-Bench-201 search space (Dong & Yang, "NAS-Bench-201", ICLR 2020) and its DARTS relaxation.

A cell is a DAG of 4 nodes; node 0 is the cell input, node 3 its output, and every node j > 0 is
the sum of one operation applied to each earlier node, over the 6 edges ``EDGES`` (1←0, 2←0,
2←1, 3←0, 3←1, 3←2). Each edge holds one of 5 operations, in NAS-Bench-201's index order
``OPS``: none (zeros), skip_connect (identity), nor_conv_1x1 and nor_conv_3x3 (ReLU-Conv-Norm),
avg_pool_3x3 (stride 1, padding 1, padding excluded from the average): 5^6 = 15,625 cells.
Architectures are written in NAS-Bench-201's notation, node by node, each input as ``op~source``::

    |nor_conv_3x3~0|+|skip_connect~0|none~1|+|avg_pool_3x3~0|nor_conv_1x1~1|skip_connect~2|

The searchable network relaxes the choice as in DARTS (Liu et al., ICLR 2019): with mixing weights
``alpha`` [6, 5], edge e computes Σ_o alpha[e, o]·op_o(x). The weights are used as given (no
softmax inside), so a discrete architecture is exactly its one-hot point
(:meth:`Architecture.to_alpha`); :func:`softmax_weights` turns DARTS logits into weights.

Normalisation is instance norm (one group per channel) with affine parameters, from
:func:`hcdc.nn.norm.group_norm`: written from primitive ops, its derivatives are right at every
order (hypergradients and gradient matching need order 3; NOTES §2), and it keeps no running
statistics and does not mix images of a batch, so a synthetic set's forward pass does not depend
on its size. It stands where NAS-Bench-201 has BatchNorm; ``norm_groups`` picks fewer groups.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn
from torch._C._functorch import TransformType, get_unwrapped, is_functorch_wrapped_tensor
from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

from ..errors import ConfigError, DataError
from ..nn.norm import GroupNorm

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))  # (target node, source node)
NUM_NODES = 4
NUM_ARCHITECTURES = len(OPS) ** len(EDGES)
SPACE_NAME = "nas-bench-201"
ARCHS_FILE = "nb201_archs.json"
ARCHS_SEED = 0
ARCHS_COUNT = 100
EXAMPLE = "|nor_conv_3x3~0|+|skip_connect~0|none~1|+|avg_pool_3x3~0|nor_conv_1x1~1|skip_connect~2|"


@dataclass(frozen=True)
class Architecture:
    """A NAS-Bench-201 cell: ``ops[e]`` is the index in ``OPS`` of the operation on ``EDGES[e]``."""

    ops: tuple[int, ...]

    def __post_init__(self):
        ops = tuple(int(o) for o in self.ops)
        if len(ops) != len(EDGES) or not all(0 <= o < len(OPS) for o in ops):
            raise ConfigError(f"an architecture needs {len(EDGES)} op indices in 0..{len(OPS) - 1} (got {self.ops})")
        object.__setattr__(self, "ops", ops)

    @classmethod
    def parse(cls, text: str) -> Architecture:
        """Read NAS-Bench-201's notation; node inputs may be listed in any order, each exactly once."""
        ops: dict[tuple[int, int], int] = {}
        nodes = text.strip().split("+")
        if len(nodes) != NUM_NODES - 1:
            raise _parse_error(text, f"expected {NUM_NODES - 1} nodes separated by '+', got {len(nodes)}")
        for target, node in enumerate(nodes, start=1):
            if len(node) < 2 or node[0] != "|" or node[-1] != "|":
                raise _parse_error(text, f"node {target} must be enclosed in '|'")
            for item in node[1:-1].split("|"):
                op, _, source = item.partition("~")
                if op not in OPS:
                    raise _parse_error(text, f"unknown operation {op!r} (known: {', '.join(OPS)})")
                if not source.isdigit() or int(source) >= target:
                    raise _parse_error(text, f"node {target} has input {item!r}; sources must be 0..{target - 1}")
                if (target, int(source)) in ops:
                    raise _parse_error(text, f"node {target} lists source {source} twice")
                ops[(target, int(source))] = OPS.index(op)
            if len([edge for edge in ops if edge[0] == target]) != target:
                raise _parse_error(text, f"node {target} needs one input from each of nodes 0..{target - 1}")
        return cls(tuple(ops[edge] for edge in EDGES))

    def to_str(self) -> str:
        """NAS-Bench-201's notation (inputs of each node in source order)."""
        nodes = ["|" + "|".join(f"{OPS[self.ops[e]]}~{s}" for e, (t, s) in enumerate(EDGES) if t == j) + "|" for j in range(1, NUM_NODES)]
        return "+".join(nodes)

    __str__ = to_str

    @property
    def op_names(self) -> tuple[str, ...]:
        return tuple(OPS[o] for o in self.ops)

    def to_alpha(self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
        """The one-hot mixing weights [6, 5] at which the relaxed network is exactly this cell."""
        alpha = torch.zeros(len(EDGES), len(OPS), dtype=dtype, device=device)
        alpha[torch.arange(len(EDGES)), torch.tensor(self.ops)] = 1
        return alpha

    @classmethod
    def from_alpha(cls, alpha: Tensor) -> Architecture:
        """The strongest operation per edge (DARTS' discretisation); ties go to the lower op index."""
        _check_alpha(alpha)
        return cls(tuple(alpha.detach().argmax(dim=1).tolist()))

    def index(self) -> int:
        """This cell's number in 0..15624: the ops read as a base-5 numeral, edge 0 the leading digit.

        This is our enumeration, not the index of NAS-Bench-201's API (which follows its data file).
        """
        return sum(o * len(OPS) ** (len(EDGES) - 1 - e) for e, o in enumerate(self.ops))

    @classmethod
    def from_index(cls, index: int) -> Architecture:
        """Inverse of :meth:`index`."""
        if not 0 <= index < NUM_ARCHITECTURES:
            raise ConfigError(f"architecture index must be in 0..{NUM_ARCHITECTURES - 1} (got {index})")
        digits = []
        for _ in EDGES:
            index, digit = divmod(index, len(OPS))
            digits.append(digit)
        return cls(tuple(reversed(digits)))

    def is_degenerate(self) -> bool:
        """True when no path of non-``none`` edges joins input and output: the cell outputs zeros.

        NAS-Bench-201 keeps such cells (the network then predicts one constant); so do we.
        """
        reached = {0}
        for e, (target, source) in enumerate(EDGES):
            if self.ops[e] != 0 and source in reached:
                reached.add(target)
        return NUM_NODES - 1 not in reached


def _parse_error(text: str, reason: str) -> ConfigError:
    return ConfigError(f"invalid NAS-Bench-201 architecture {text!r}: {reason} (expected e.g. {EXAMPLE!r})")


def _check_alpha(alpha: Tensor) -> None:
    if tuple(alpha.shape) != (len(EDGES), len(OPS)):
        raise ConfigError(f"mixing weights must have shape [{len(EDGES)}, {len(OPS)}] (got {list(alpha.shape)})")


def softmax_weights(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """DARTS' mixing weights: a softmax over the operations of each edge of ``logits`` [6, 5]."""
    _check_alpha(logits)
    return (logits / temperature).softmax(dim=-1)


def sample_architectures(n: int, seed: int) -> list[Architecture]:
    """``n`` distinct cells drawn uniformly from all 15,625 with a ``torch.Generator`` seeded ``seed``."""
    if not 1 <= n <= NUM_ARCHITECTURES:
        raise ConfigError(f"number of architectures must be in 1..{NUM_ARCHITECTURES} (got {n})")
    perm = torch.randperm(NUM_ARCHITECTURES, generator=torch.Generator().manual_seed(int(seed)))
    return [Architecture.from_index(i) for i in perm[:n].tolist()]


def write_architectures(path: str | Path, n: int = ARCHS_COUNT, seed: int = ARCHS_SEED) -> Path:
    """Write ``sample_architectures(n, seed)`` as JSON (the format :func:`load_architectures` reads)."""
    record = {"seed": seed, "n": n, "space": SPACE_NAME, "architectures": [a.to_str() for a in sample_architectures(n, seed)]}
    path = Path(path)
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def load_architectures(path: str | Path | None = None) -> list[Architecture]:
    """The architectures of a file written by :func:`write_architectures`; by default the shipped
    list of 100 (seed 0) that the image experiments rank."""
    source = Path(path) if path is not None else resources.files(__package__).joinpath(ARCHS_FILE)
    try:
        record = json.loads(source.read_text())
        if record["space"] != SPACE_NAME or len(record["architectures"]) != record["n"]:
            raise DataError(f"{source}: not a list of {record['n']} {SPACE_NAME} architectures")
        return [Architecture.parse(a) for a in record["architectures"]]
    except (OSError, ValueError, KeyError, TypeError, ConfigError) as err:
        raise DataError(f"cannot read architectures from {source}: {err}") from err


def _norm(channels: int, groups: int | None) -> GroupNorm:
    """Instance norm (``groups`` None) or group norm with ``min(groups, channels)`` groups."""
    g = channels if groups is None else min(groups, channels)
    if channels % g:
        raise ConfigError(f"{g} normalisation groups do not divide {channels} channels")
    return GroupNorm(g, channels)


class ReLUConvNorm(nn.Sequential):
    """NAS-Bench-201's ReLU → Conv (no bias) → Norm."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, norm_groups: int | None):
        super().__init__(nn.ReLU(), nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False), _norm(c_out, norm_groups))


class MixedEdge(nn.Module):
    """One edge of the relaxed cell: Σ_o w[o]·op_o(x) over the operations that are not ``none``."""

    def __init__(self, channels: int, norm_groups: int | None):
        super().__init__()
        self.ops = nn.ModuleDict(
            {
                "skip_connect": nn.Identity(),
                "nor_conv_1x1": ReLUConvNorm(channels, channels, 1, 1, norm_groups),
                "nor_conv_3x3": ReLUConvNorm(channels, channels, 3, 1, norm_groups),
                "avg_pool_3x3": nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
            }
        )

    def forward(self, x: Tensor, weights: Tensor, active: Sequence[int]) -> Tensor | None:
        """The mixture over op indices ``active`` (``none`` adds nothing); None when there are none."""
        terms = [weights[o] * self.ops[OPS[o]](x) for o in active]
        return sum(terms[1:], terms[0]) if terms else None


class SearchCell(nn.Module):
    """A NAS-Bench-201 cell at ``channels`` channels with one :class:`MixedEdge` per edge."""

    def __init__(self, channels: int, norm_groups: int | None = None):
        super().__init__()
        self.edges = nn.ModuleList(MixedEdge(channels, norm_groups) for _ in EDGES)

    def nodes(self, x: Tensor, alpha: Tensor, active: Sequence[Sequence[int]] | None = None) -> list[Tensor]:
        """Outputs of nodes 0..3 under mixing weights ``alpha`` [6, 5].

        ``active[e]`` lists the op indices computed on edge e (default: all but ``none``); leaving
        out ops of weight exactly zero changes no value, only derivatives with respect to alpha.
        """
        active = _all_ops() if active is None else active
        nodes = [x]
        for j in range(1, NUM_NODES):
            terms = [self.edges[e](nodes[s], alpha[e], active[e]) for e, (t, s) in enumerate(EDGES) if t == j]
            terms = [t for t in terms if t is not None]
            nodes.append(sum(terms[1:], terms[0]) if terms else torch.zeros_like(x))
        return nodes

    def forward(self, x: Tensor, alpha: Tensor, active: Sequence[Sequence[int]] | None = None) -> Tensor:
        return self.nodes(x, alpha, active)[-1]


class ResidualBlock(nn.Module):
    """NAS-Bench-201's reduction block: a stride-2 ResNet basic block (He et al., CVPR 2016).

    ReLU-Conv3x3(stride 2)-Norm → ReLU-Conv3x3-Norm, plus the shortcut AvgPool2x2 → Conv1x1.
    """

    def __init__(self, c_in: int, c_out: int, norm_groups: int | None = None):
        super().__init__()
        self.conv_a = ReLUConvNorm(c_in, c_out, 3, 2, norm_groups)
        self.conv_b = ReLUConvNorm(c_out, c_out, 3, 1, norm_groups)
        self.shortcut = nn.Sequential(nn.AvgPool2d(2, stride=2), nn.Conv2d(c_in, c_out, 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.shortcut(x) + self.conv_b(self.conv_a(x))


class NB201Network(nn.Module):
    """NAS-Bench-201's macro network with relaxed cells; ``forward(x, alpha)`` gives logits.

    Stem Conv3x3 (``in_channels`` → C) + Norm; N cells at C; reduction to 2C; N cells at 2C;
    reduction to 4C; N cells at 4C; Norm + ReLU; global average pool; linear. The benchmark uses
    C=16, N=5; HCDC and DC-Bench search with N=1 (3 cells). All cells share one ``alpha`` [6, 5]
    (a tensor of mixing weights, or an :class:`Architecture` for its one-hot point).

    Operations of weight exactly zero are skipped (the output is bitwise that of the full mixture)
    unless something differentiates through ``alpha``: autograd, ``torch.func.grad``/``vjp``
    with respect to it, or any ``jvp``/``vmap`` transform. Training a discrete cell thus costs
    only its own operations, while hypergradients at a one-hot point see every operation.
    The network has parameters only (no buffers), so ``torch.func.functional_call(net, params,
    (x, alpha))`` is the whole state. ``generator`` draws the initial parameters.
    """

    def __init__(
        self,
        C: int = 16,
        N: int = 1,
        num_classes: int = 10,
        in_channels: int = 3,
        norm_groups: int | None = None,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if min(C, N, num_classes, in_channels) < 1:
            raise ConfigError(f"NB201Network needs positive C, N, num_classes, in_channels (got {C}, {N}, {num_classes}, {in_channels})")
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C, 3, padding=1, bias=False), _norm(C, norm_groups))
        layers: list[nn.Module] = []
        for stage, width in enumerate((C, 2 * C, 4 * C)):
            if stage:
                layers.append(ResidualBlock(width // 2, width, norm_groups))
            layers.extend(SearchCell(width, norm_groups) for _ in range(N))
        self.cells = nn.ModuleList(layers)
        self.lastact = nn.Sequential(_norm(4 * C, norm_groups), nn.ReLU())
        self.classifier = nn.Linear(4 * C, num_classes)
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """PyTorch's default scheme (uniform in ±1/sqrt(fan_in)) from ``generator``; norms 1, 0."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                bound = 1 / math.sqrt(m.weight[0].numel())
                for p in (m.weight, m.bias):
                    if p is not None:
                        p.uniform_(-bound, bound, generator=generator)
            elif isinstance(m, GroupNorm):
                m.weight.fill_(1)
                m.bias.zero_()

    def forward(self, x: Tensor, alpha: Tensor | Architecture, active: Sequence[Sequence[int]] | None = None) -> Tensor:
        """Logits of images ``x`` under mixing weights ``alpha``. ``active[e]`` (op indices per edge) names the
        operations to compute when the caller knows the others weigh exactly zero and no derivative with
        respect to ``alpha`` is taken (a stacked model under ``vmap``, whose alpha cannot be read); by default
        they are found from ``alpha`` as the class docstring says."""
        if isinstance(alpha, Architecture):
            alpha = alpha.to_alpha(dtype=x.dtype, device=x.device)
        _check_alpha(alpha)
        if active is None:
            active = _nonzero_ops(alpha) if _is_constant(alpha) else None
        h = self.stem(x)
        for layer in self.cells:
            h = layer(h, alpha, active) if isinstance(layer, SearchCell) else layer(h)
        return self.classifier(self.lastact(h).mean(dim=(2, 3)))


def _all_ops() -> list[range]:
    return [range(1, len(OPS))] * len(EDGES)


def _nonzero_ops(alpha: Tensor) -> list[list[int]]:
    return [[o for o in range(1, len(OPS)) if row[o] != 0] for row in alpha.tolist()]


def _is_constant(alpha: Tensor) -> bool:
    """Whether no derivative with respect to ``alpha`` is being taken (so zero weights may be skipped).

    Under nested ``torch.func`` transforms (e.g. a ``vjp`` in alpha of a ``grad`` in the
    parameters: the mixed partials of an IFT hypergradient) the innermost wrapper of alpha does
    not require grad although an outer level differentiates it, so every wrapper level is checked.
    """
    if alpha.requires_grad and torch.is_grad_enabled():
        return False
    if fwAD.unpack_dual(alpha).tangent is not None:
        return False
    if any(i.key() in (TransformType.Jvp, TransformType.Vmap) for i in retrieve_all_functorch_interpreters()):
        return False
    t = alpha
    while is_functorch_wrapped_tensor(t):
        t = get_unwrapped(t)
        if t.requires_grad:
            return False
    return True


def count_parameters(arch: Architecture, C: int = 16, N: int = 1, num_classes: int = 10, in_channels: int = 3) -> int:
    """Parameters of the discrete network of ``arch`` (the relaxed network less its unused ops)."""
    net = NB201Network(C, N, num_classes, in_channels)
    unused = sum(
        p.numel()
        for cell in net.cells
        if isinstance(cell, SearchCell)
        for edge, op in zip(cell.edges, arch.op_names)
        for name, module in edge.ops.items()
        if name != op
        for p in module.parameters()
    )
    return sum(p.numel() for p in net.parameters()) - unused


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m hcdc.image.space --write-archs [PATH]``: regenerate the shipped architecture list."""
    parser = argparse.ArgumentParser(prog="python -m hcdc.image.space", description=main.__doc__)
    parser.add_argument("--write-archs", nargs="?", const=str(Path(__file__).with_name(ARCHS_FILE)), metavar="PATH", required=True)
    args = parser.parse_args(argv)
    print(write_architectures(args.write_archs))


if __name__ == "__main__":
    main()
