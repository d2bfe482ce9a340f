"""Proxy artifacts: a condensed dataset saved as a directory that can be checked, loaded and described.

Proxy directory schema (format_version 1)
-----------------------------------------

A proxy is a directory holding exactly two files, written atomically (the directory is built
under a temporary name and renamed, so a crash never leaves a half-written proxy)::

    my_proxy/
      proxy.safetensors   tensors (safetensors format; never pickle)
      meta.json           metadata (UTF-8 JSON object)

Tensors in ``proxy.safetensors`` (N = number of synthetic items; extra tensors are allowed):

=============  ==================  =======  ================================================
name           shape               dtype    meaning
=============  ==================  =======  ================================================
``x``          graph: [N, F]       float32  node features / normalised images (finite)
               image: [N, C, H, W]
``adj``        [N, N] (graph only) float32  dense weighted adjacency: symmetric within 1e-6,
                                            >= 0, zero diagonal (the model's normalisation
                                            adds self-loops)
``y``          [N]                 int64    labels in ``[0, num_classes)``
``train_mask`` [N]                 bool     synthetic training items (non-empty)
``val_mask``   [N]                 bool     synthetic validation items (non-empty, disjoint
                                            from ``train_mask``)
=============  ==================  =======  ================================================

Keys of ``meta.json`` (extra keys are allowed and kept):

* ``format_version`` (int, 1): readers refuse versions newer than they support.
* ``kind``: ``"graph"`` or ``"image"``.
* ``dataset`` (str), ``method`` (str): source data set and condensation method.
* ``ratio`` (graph; number > 0): synthetic training nodes per labelled node of the original.
* ``images_per_class`` (image; int >= 1): synthetic training images per class.
* ``normalization`` (image): ``{"mean": [C floats], "std": [C floats > 0]}`` used on ``x``.
* ``protocol`` (image, optional): the :class:`~hcdc.image.protocol.ImageProtocol` (its fields and
  ``name``) that ``hcdc condense`` made the proxy under; ``hcdc evaluate`` / ``hcdc search`` train on it.
* ``resumed_from`` (optional): the loops of the condensation that resumed from a snapshot after an
  interruption (loop name -> iteration; see :mod:`hcdc.checkpoint`).
* ``num_classes`` (int >= 1).
* ``seeds`` (list or dict), ``config`` (dict, the full configuration),
  ``versions`` (dict, from :func:`hcdc.runinfo.package_versions`),
  ``timings`` (dict of stage name to seconds).

Meta must be plain JSON (tuples come back as lists).
"""

from __future__ import annotations

import json
import math
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .errors import ArtifactError
from .io import atomic_directory, plain_permissions

FORMAT_VERSION = 1
KINDS = ("graph", "image")
TENSORS_FILE = "proxy.safetensors"
META_FILE = "meta.json"

_COMMON_META = (
    "format_version", "kind", "dataset", "method", "num_classes", "seeds", "config", "versions", "timings",
)
_KIND_META = {"graph": ("ratio",), "image": ("images_per_class", "normalization")}
_TENSOR_DTYPES = {
    "x": torch.float32, "adj": torch.float32, "y": torch.int64, "train_mask": torch.bool, "val_mask": torch.bool,
}
_KIND_TENSORS = {"graph": ("x", "adj", "y", "train_mask", "val_mask"), "image": ("x", "y", "train_mask", "val_mask")}
_SYMMETRY_TOL = 1e-6


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True, eq=False)
class Proxy:
    """A condensed dataset in memory: its kind, named tensors and metadata (see the module schema)."""

    kind: str
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]

    @property
    def num_items(self) -> int:
        """Number of synthetic nodes or images (training and validation together)."""
        return int(self.tensors["y"].shape[0])

    @property
    def num_train(self) -> int:
        """Number of synthetic training items."""
        return int(self.tensors["train_mask"].sum())

    @property
    def num_val(self) -> int:
        """Number of synthetic validation items."""
        return int(self.tensors["val_mask"].sum())

    @property
    def num_classes(self) -> int:
        """Number of classes, from the metadata."""
        return int(self.meta["num_classes"])

    def class_counts(self, split: str) -> list[int]:
        """Items per class in ``split`` (``"train"`` or ``"val"``), indexed by class."""
        labels = self.tensors["y"][self.tensors[f"{split}_mask"]]
        return torch.bincount(labels, minlength=self.num_classes).tolist()

    def to_pyg(self):
        """A graph proxy as a ``torch_geometric.data.Data``, for training a PyTorch Geometric model on it.

        ``x``, ``y``, ``train_mask`` and ``val_mask`` as stored, ``num_classes``, and the dense weighted adjacency as
        ``edge_index`` / ``edge_weight`` (its non-zero entries, both directions; no self-loops, which ``GCNConv`` adds,
        so a GCN propagates with the same D̃^{-1/2}(A + I)D̃^{-1/2} as hcdc's models). The features are row-normalised,
        as hcdc's models see the original graph's (:func:`hcdc.data.graph.row_normalize`). ArtifactError for an
        image proxy.
        """
        if self.kind != "graph":
            raise ArtifactError(f"to_pyg needs a graph proxy; this is an {self.kind} proxy")
        from torch_geometric.data import Data

        t = self.tensors
        edge_index = t["adj"].nonzero().t().contiguous()
        return Data(x=t["x"], edge_index=edge_index, edge_weight=t["adj"][edge_index[0], edge_index[1]], y=t["y"],
                    train_mask=t["train_mask"], val_mask=t["val_mask"], num_classes=self.num_classes)

    def validate(self) -> None:
        """Check the proxy against the schema; raise ArtifactError naming the first problem found."""
        self._validate_meta()
        self._validate_tensors()

    def _validate_meta(self) -> None:
        meta = self.meta
        if not isinstance(meta, dict):
            raise ArtifactError(f"meta must be a dict, got {type(meta).__name__}")
        for key in ("format_version", "kind"):
            if key not in meta:
                raise ArtifactError(f"meta is missing key {key!r}")
        version = meta["format_version"]
        if not _is_int(version) or version < 1:
            raise ArtifactError(f"meta 'format_version' must be a positive integer, got {version!r}")
        if version > FORMAT_VERSION:
            raise ArtifactError(
                f"proxy format_version {version} is newer than this hcdc supports ({FORMAT_VERSION}); "
                "upgrade hcdc"
            )
        if self.kind not in KINDS:
            raise ArtifactError(f"unknown proxy kind {self.kind!r}; expected one of {list(KINDS)}")
        if meta["kind"] != self.kind:
            raise ArtifactError(f"meta 'kind' is {meta['kind']!r} but the proxy kind is {self.kind!r}")
        for key in _COMMON_META + _KIND_META[self.kind]:
            if key not in meta:
                raise ArtifactError(f"meta is missing key {key!r} (required for {self.kind} proxies)")
        for key in ("dataset", "method"):
            if not isinstance(meta[key], str) or not meta[key]:
                raise ArtifactError(f"meta {key!r} must be a non-empty string, got {meta[key]!r}")
        if not _is_int(meta["num_classes"]) or meta["num_classes"] < 1:
            raise ArtifactError(f"meta 'num_classes' must be a positive integer, got {meta['num_classes']!r}")
        if not isinstance(meta["seeds"], (list, dict)):
            raise ArtifactError(f"meta 'seeds' must be a list or dict, got {type(meta['seeds']).__name__}")
        for key in ("config", "versions", "timings"):
            if not isinstance(meta[key], dict):
                raise ArtifactError(f"meta {key!r} must be a dict, got {type(meta[key]).__name__}")
        for stage, seconds in meta["timings"].items():
            if not _is_number(seconds) or seconds < 0:
                raise ArtifactError(f"meta 'timings' {stage!r} must be non-negative seconds, got {seconds!r}")
        if self.kind == "graph":
            if not _is_number(meta["ratio"]) or meta["ratio"] <= 0:
                raise ArtifactError(f"meta 'ratio' must be a positive number, got {meta['ratio']!r}")
        else:
            ipc = meta["images_per_class"]
            if not _is_int(ipc) or ipc < 1:
                raise ArtifactError(f"meta 'images_per_class' must be a positive integer, got {ipc!r}")
            self._validate_normalization(meta["normalization"])

    @staticmethod
    def _validate_normalization(norm: Any) -> None:
        if not isinstance(norm, dict) or not {"mean", "std"} <= set(norm):
            raise ArtifactError(f"meta 'normalization' must be a dict with 'mean' and 'std' lists, got {norm!r}")
        mean, std = norm["mean"], norm["std"]
        if not isinstance(mean, list) or not mean or not all(_is_number(v) for v in mean):
            raise ArtifactError(f"meta 'normalization.mean' must be a non-empty list of numbers, got {mean!r}")
        if not isinstance(std, list) or len(std) != len(mean) or not all(_is_number(v) and v > 0 for v in std):
            raise ArtifactError(
                f"meta 'normalization.std' must be a list of {len(mean)} positive numbers (one per channel), "
                f"got {std!r}"
            )

    def _validate_tensors(self) -> None:
        tensors = self.tensors
        if not isinstance(tensors, dict):
            raise ArtifactError(f"tensors must be a dict, got {type(tensors).__name__}")
        for name in _KIND_TENSORS[self.kind]:
            if name not in tensors:
                raise ArtifactError(f"missing tensor {name!r} (required for {self.kind} proxies)")
            t = tensors[name]
            if not isinstance(t, torch.Tensor):
                raise ArtifactError(f"tensor {name!r} must be a torch.Tensor, got {type(t).__name__}")
            if t.dtype != _TENSOR_DTYPES[name]:
                raise ArtifactError(f"tensor {name!r}: expected dtype {_TENSOR_DTYPES[name]}, got {t.dtype}")
        for name, t in tensors.items():
            if not isinstance(t, torch.Tensor):
                raise ArtifactError(f"tensor {name!r} must be a torch.Tensor, got {type(t).__name__}")
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise ArtifactError(f"tensor {name!r} contains NaN or infinite values")

        x, y = tensors["x"], tensors["y"]
        x_ndim = 2 if self.kind == "graph" else 4
        x_layout = "[N, F]" if self.kind == "graph" else "[N, C, H, W]"
        if x.ndim != x_ndim or x.shape[0] < 1 or 0 in x.shape:
            raise ArtifactError(f"tensor 'x': expected shape {x_layout} with no empty dimension, got {list(x.shape)}")
        n = x.shape[0]
        for name in ("y", "train_mask", "val_mask"):
            shape = list(tensors[name].shape)
            if shape != [n]:
                raise ArtifactError(f"tensor {name!r}: expected shape [{n}] (one per item of x), got {shape}")
        if self.kind == "image" and x.shape[1] != len(self.meta["normalization"]["mean"]):
            raise ArtifactError(
                f"tensor 'x' has {x.shape[1]} channels but meta 'normalization' has "
                f"{len(self.meta['normalization']['mean'])} means"
            )
        if self.kind == "graph":
            self._validate_adj(tensors["adj"], n)

        num_classes = self.meta["num_classes"]
        if y.min() < 0 or y.max() >= num_classes:
            raise ArtifactError(
                f"tensor 'y': labels must lie in [0, {num_classes - 1}] (num_classes={num_classes}), "
                f"got values from {int(y.min())} to {int(y.max())}"
            )
        train, val = tensors["train_mask"], tensors["val_mask"]
        if not train.any():
            raise ArtifactError("tensor 'train_mask' selects no items; a proxy needs training items")
        if not val.any():
            raise ArtifactError("tensor 'val_mask' selects no items; a proxy needs validation items")
        overlap = int((train & val).sum())
        if overlap:
            raise ArtifactError(f"'train_mask' and 'val_mask' overlap on {overlap} item(s); they must be disjoint")

    @staticmethod
    def _validate_adj(adj: torch.Tensor, n: int) -> None:
        if tuple(adj.shape) != (n, n):
            raise ArtifactError(f"tensor 'adj': expected shape [{n}, {n}] (one row per node of x), got {list(adj.shape)}")
        if (adj < 0).any():
            raise ArtifactError(f"tensor 'adj' has negative entries (min {float(adj.min()):g}); weights must be >= 0")
        asym = float((adj - adj.T).abs().max())
        if asym > _SYMMETRY_TOL:
            raise ArtifactError(f"tensor 'adj' is not symmetric: max |adj - adj.T| = {asym:g} > {_SYMMETRY_TOL:g}")
        diag = adj.diagonal()
        if (diag != 0).any():
            raise ArtifactError(
                f"tensor 'adj' has {int((diag != 0).sum())} nonzero diagonal entries; the diagonal must be zero "
                "(self-loops are added by the model)"
            )


def _looks_like_proxy_dir(path: Path) -> bool:
    """True for a directory that may be replaced by a proxy: empty, or holding proxy files."""
    if not path.is_dir():
        return False
    return not any(path.iterdir()) or (path / META_FILE).exists() or (path / TENSORS_FILE).exists()


def save_proxy(proxy: Proxy, directory: str | os.PathLike, overwrite: bool = False) -> Path:
    """Validate ``proxy`` and write it atomically to ``directory``; return the directory's path.

    Nothing is written for an invalid proxy. An existing ``directory`` is an error unless
    ``overwrite`` is set, and even then only an empty or proxy directory is replaced.
    """
    proxy.validate()
    try:
        meta_text = json.dumps(proxy.meta, indent=2, sort_keys=True) + "\n"
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"meta is not plain JSON: {exc}") from None
    path = Path(directory)
    if path.exists():
        if not overwrite:
            raise ArtifactError(f"{path} already exists; pass overwrite to replace it")
        if not _looks_like_proxy_dir(path):
            raise ArtifactError(f"refusing to overwrite {path}: it is not an empty directory or a proxy directory")
    tensors = {name: t.detach().cpu().contiguous().clone() for name, t in proxy.tensors.items()}
    with atomic_directory(path, overwrite=overwrite) as tmp:
        header = {"format_version": str(FORMAT_VERSION), "kind": proxy.kind}
        save_file(tensors, str(tmp / TENSORS_FILE), metadata=header)
        plain_permissions(tmp / TENSORS_FILE)
        (tmp / META_FILE).write_text(meta_text, encoding="utf-8")
    return path


def load_proxy(directory: str | os.PathLike) -> Proxy:
    """Read and validate the proxy in ``directory`` (safetensors and JSON only; nothing is unpickled)."""
    path = Path(directory)
    if not path.is_dir():
        raise ArtifactError(f"{path} is not a directory" if path.exists() else f"proxy directory {path} does not exist")
    for name in (META_FILE, TENSORS_FILE):
        if not (path / name).is_file():
            raise ArtifactError(f"{path} is not a complete proxy: {name} is missing")
    try:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path / META_FILE} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise ArtifactError(f"{path / META_FILE} must hold a JSON object, got {type(meta).__name__}")
    try:
        tensors = load_file(str(path / TENSORS_FILE))
    except Exception as exc:  # safetensors raises several types for a corrupt or foreign file
        raise ArtifactError(f"{path / TENSORS_FILE} is not a readable safetensors file: {exc}") from None
    proxy = Proxy(kind=meta.get("kind"), tensors=tensors, meta=meta)
    try:
        proxy.validate()
    except ArtifactError as exc:
        raise ArtifactError(f"{path}: {exc}") from None
    return proxy


def _counts_line(counts: list[int]) -> str:
    return " ".join(f"{c}:{n}" for c, n in enumerate(counts))


def describe_proxy(directory: str | os.PathLike) -> str:
    """A human-readable, multi-line summary of the proxy in ``directory`` (for ``hcdc info DIR``)."""
    proxy = load_proxy(directory)
    meta = proxy.meta
    size = (
        f"ratio: {meta['ratio']:g} synthetic training nodes per labelled node"
        if proxy.kind == "graph"
        else f"images per class: {meta['images_per_class']}"
    )
    lines = [
        f"proxy: {Path(directory)}",
        f"kind: {proxy.kind} (format_version {meta['format_version']})",
        f"dataset: {meta['dataset']}",
        f"method: {meta['method']}",
        size,
        f"classes: {proxy.num_classes}",
        f"items: {proxy.num_items} (train {proxy.num_train}, val {proxy.num_val})",
    ]
    wrap = {"width": 100, "initial_indent": "    ", "subsequent_indent": "    "}
    for split in ("train", "val"):
        lines.append(f"  {split} per class (class:count):")
        lines.extend(textwrap.wrap(_counts_line(proxy.class_counts(split)), **wrap))
    if proxy.kind == "graph":
        edges = int(torch.triu(proxy.tensors["adj"], diagonal=1).count_nonzero())
        lines.append(f"edges: {edges} (nonzero upper-triangle entries of adj)")
    else:
        norm = meta["normalization"]
        lines.append(f"normalization: mean {norm['mean']}, std {norm['std']}")
        protocol = meta.get("protocol")
        if isinstance(protocol, dict):
            fields = ", ".join(f"{k} {v}" for k, v in protocol.items() if k != "name")
            lines.append(f"protocol: {protocol.get('name', '?')}")
            lines.extend(textwrap.wrap(fields, **wrap))
    lines.append("tensors:")
    width = max(len(name) for name in proxy.tensors)
    for name, t in sorted(proxy.tensors.items()):
        lines.append(f"  {name:<{width}}  {str(t.dtype).removeprefix('torch.'):<8} {list(t.shape)}")
    timings = ", ".join(f"{stage} {sec:.2f}s" for stage, sec in meta["timings"].items()) or "none recorded"
    lines.append(f"timings: {timings}")
    if isinstance(meta.get("resumed_from"), dict):
        resumed = ", ".join(f"{loop} at iteration {i}" for loop, i in meta["resumed_from"].items())
        lines.append(f"resumed after an interruption: {resumed} (timings include the earlier runs)")
    lines.append(f"seeds: {json.dumps(meta['seeds'])}")
    versions = ", ".join(f"{pkg} {ver}" for pkg, ver in meta["versions"].items()) or "none recorded"
    lines.append("versions:")
    lines.extend(textwrap.wrap(versions, **wrap))
    return "\n".join(lines) + "\n"
