"""Datasets: a registry of named real datasets under a data root, and loaders for user files.

Named datasets are looked up under the data root (``--data-root`` > ``$HCDC_DATA`` >
``../shared/data``), each in the standard public layout:

==============  ======  =============================================================
name            kind    where, relative to the data root (first match wins)
==============  ======  =============================================================
cora            graph   ``planetoid/Cora/raw/ind.cora.*`` or ``Cora/raw/...`` (PyG Planetoid root)
citeseer        graph   ``planetoid/CiteSeer/raw/ind.citeseer.*`` or ``CiteSeer/raw/...``
pubmed          graph   ``planetoid/PubMed/raw/ind.pubmed.*`` or ``PubMed/raw/...``
ogbn-arxiv      graph   ``ogbn_arxiv/raw/*.csv.gz`` + ``ogbn_arxiv/split/time/`` (OGB raw layout)
reddit          graph   ``Reddit/raw/reddit_{data,graph}.npz`` (PyG layout)
cifar10         image   ``cifar10/cifar10-jpg.tar.gz`` or ``cifar-10-batches-py/``
cifar100        image   ``cifar100/cifar-100-python/`` or ``cifar-100-python/``
==============  ======  =============================================================

User files: :func:`load_graph_file` (generic graph ``.npz``) and :func:`load_image_file`
(image ``.npz``, an image folder, or a CIFAR python-batch folder).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import ConfigError, DataError
from ..paths import resolve_data_root
from .graph import GraphData, load_graph_npz, load_ogbn_arxiv, load_planetoid, load_reddit, row_normalize
from .image import ImageData, load_cifar10_jpg, load_cifar_python, load_image_folder, load_image_npz, split_validation

Dataset = GraphData | ImageData


@dataclass(frozen=True)
class DatasetSpec:
    """A named dataset: its kind, candidate locations under the data root, and its loader."""

    name: str
    kind: str
    candidates: tuple[str, ...]
    load: Callable[[Path], Dataset]

    def locate(self, data_root: Path) -> Path | None:
        """The first candidate path that exists under ``data_root``, or None."""
        for rel in self.candidates:
            if (data_root / rel).exists():
                return data_root / rel
        return None


def _planetoid(name: str, folder: str) -> DatasetSpec:
    def load(path: Path) -> GraphData:
        return load_planetoid(path.parents[1], name)

    return DatasetSpec(name, "graph", (f"planetoid/{folder}/raw", f"{folder}/raw"), load)


def _cifar(name: str, candidates: tuple[str, ...]) -> DatasetSpec:
    def load(path: Path) -> ImageData:
        return load_cifar10_jpg(path) if path.name.endswith(".tar.gz") else load_cifar_python(path)

    return DatasetSpec(name, "image", candidates, load)


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        _planetoid("cora", "Cora"),
        _planetoid("citeseer", "CiteSeer"),
        _planetoid("pubmed", "PubMed"),
        DatasetSpec("ogbn-arxiv", "graph", ("ogbn_arxiv", "ogbn-arxiv/ogbn_arxiv"), load_ogbn_arxiv),
        DatasetSpec("reddit", "graph", ("Reddit", "reddit"), load_reddit),
        _cifar("cifar10", ("cifar10/cifar10-jpg.tar.gz", "cifar10-jpg.tar.gz", "cifar10/cifar-10-batches-py", "cifar-10-batches-py")),
        _cifar("cifar100", ("cifar100/cifar-100-python", "cifar-100-python")),
    )
}


def get_spec(name: str) -> DatasetSpec:
    """The registered dataset called ``name`` (case-insensitive)."""
    spec = DATASETS.get(name.lower())
    if spec is None:
        raise ConfigError(f"unknown dataset '{name}'; known: {', '.join(DATASETS)}")
    return spec


def load_dataset(name: str, data_root: str | Path | None = None) -> Dataset:
    """Load the registered dataset ``name`` from ``data_root`` (default: see :mod:`hcdc.paths`)."""
    spec = get_spec(name)
    root = resolve_data_root(data_root)
    path = spec.locate(root)
    if path is None:
        tried = ", ".join(str(root / c) for c in spec.candidates)
        raise DataError(f"dataset '{spec.name}' not found under data root {root} (looked for {tried}); "
                        "pass --data-root or set HCDC_DATA")
    return spec.load(path)


def load_graph_file(path: str | Path) -> GraphData:
    """A user's graph from a generic ``.npz`` (keys x, edge_index, y, train_mask, val_mask, test_mask)."""
    return load_graph_npz(path)


def load_image_file(path: str | Path) -> ImageData:
    """A user's image dataset: an ``.npz`` (x uint8 [N,H,W,C], y), a CIFAR-10 JPEG ``.tar.gz``, a CIFAR
    batch folder, or an image folder."""
    path = Path(path)
    if path.suffix == ".npz":
        return load_image_npz(path)
    if path.name.endswith(".tar.gz"):
        return load_cifar10_jpg(path)
    if not path.exists():
        raise DataError(f"image dataset not found: {path}")
    if not path.is_dir():
        raise DataError(f"{path} is not an image dataset: expected an .npz file, a CIFAR-10 JPEG .tar.gz, "
                        "a CIFAR batch folder or an image folder")
    if any((path / d).is_dir() for d in ("cifar-10-batches-py", "cifar-100-python")) or (path / "batches.meta").exists() \
            or (path / "meta").is_file():
        return load_cifar_python(path)
    return load_image_folder(path)


__all__ = [
    "DATASETS", "Dataset", "DatasetSpec", "GraphData", "ImageData", "get_spec", "load_dataset",
    "load_graph_file", "load_image_file", "row_normalize", "split_validation",
]
