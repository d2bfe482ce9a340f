"""Graph datasets: the :class:`GraphData` container and loaders for Planetoid, ``.npz``, ogbn-arxiv and Reddit.

Every loader returns a validated :class:`GraphData` and reports any bad input (missing file,
corrupt archive, inconsistent sizes, NaN, out-of-range labels or edges, overlapping masks) as a
single :class:`~hcdc.errors.DataError` naming the file and the problem. No loader unpickles with
the plain :mod:`pickle` module or loads ``.npz`` files with ``allow_pickle=True``.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import os
import warnings
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np
import scipy.sparse as sp
import torch
from torch_geometric.utils import remove_self_loops, to_undirected

from ..errors import ConfigError, DataError
from .npz import load_npz
from .safe_pickle import load_pickle

if TYPE_CHECKING:
    from torch_geometric.data import Data

PathLike = str | os.PathLike

_MASKS = ("train_mask", "val_mask", "test_mask")


@dataclass(frozen=True, eq=False)
class GraphData:
    """A node-classification graph: features, undirected edges, labels and train/val/test masks.

    ``x`` is float32 [N, F]; ``edge_index`` is int64 [2, E] holding both directions of every
    undirected edge, sorted by (row, col), without duplicates or self-loops; ``y`` is int64 [N];
    the masks are bool [N]. Labels need only be valid on nodes inside some mask.
    """

    name: str
    x: torch.Tensor
    edge_index: torch.Tensor
    y: torch.Tensor
    train_mask: torch.Tensor
    val_mask: torch.Tensor
    test_mask: torch.Tensor
    num_classes: int

    @property
    def num_nodes(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_features(self) -> int:
        return int(self.x.shape[1])

    @property
    def num_edges(self) -> int:
        """Number of undirected edges (each stored twice in ``edge_index``)."""
        return int(self.edge_index.shape[1]) // 2

    def validate(self, source: PathLike | None = None) -> GraphData:
        """Check every invariant of the container and return ``self``; raise DataError on the first violation.

        ``source`` (the file or folder the graph came from) is named in the message when given.
        """
        where = f"dataset '{self.name}'" + (f" ({source})" if source is not None else "")

        def fail(problem: str) -> NoReturn:
            raise DataError(f"{where}: {problem}")

        expected = {
            "x": (2, torch.float32),
            "edge_index": (2, torch.int64),
            "y": (1, torch.int64),
            **{m: (1, torch.bool) for m in _MASKS},
        }
        for field, (ndim, dtype) in expected.items():
            t = getattr(self, field)
            if not isinstance(t, torch.Tensor):
                fail(f"{field} must be a torch.Tensor, got {type(t).__name__}")
            if t.ndim != ndim or t.dtype != dtype:
                fail(f"{field} must be a {ndim}-D {dtype} tensor, got shape {list(t.shape)} and {t.dtype}")
        n = self.num_nodes
        if n == 0:
            fail("the graph has no nodes")
        if self.edge_index.shape[0] != 2:
            fail(f"edge_index must have shape [2, E], got {list(self.edge_index.shape)}")
        for field in ("y", *_MASKS):
            if getattr(self, field).shape[0] != n:
                fail(f"{field} has {getattr(self, field).shape[0]} entries but x has {n} nodes")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 2:
            fail(f"num_classes must be an int >= 2 (ranking classifiers needs at least 2 classes), got {self.num_classes!r}")

        finite = torch.isfinite(self.x)
        if not finite.all():
            bad_rows = (~finite).any(dim=1).nonzero().flatten()
            fail(
                f"x has {int((~finite).sum())} NaN/inf values in {bad_rows.numel()} nodes "
                f"(first: node {int(bad_rows[0])})"
            )

        ei = self.edge_index
        if ei.numel():
            lo, hi = int(ei.min()), int(ei.max())
            if lo < 0 or hi >= n:
                fail(f"edge_index refers to node {lo if lo < 0 else hi} but valid node ids are 0..{n - 1}")
            if (ei[0] == ei[1]).any():
                fail(f"edge_index has {int((ei[0] == ei[1]).sum())} self-loops")
            key = ei[0] * n + ei[1]
            if not (key[1:] > key[:-1]).all():
                fail("edge_index is not coalesced (sorted by row then column, without duplicates)")
            if not torch.equal(torch.sort(ei[1] * n + ei[0]).values, key):
                fail("edge_index is not undirected (some edge lacks its reverse direction)")

        for a, b in itertools.combinations(_MASKS, 2):
            both = int((getattr(self, a) & getattr(self, b)).sum())
            if both:
                fail(f"{a} and {b} overlap on {both} nodes")
        if not self.train_mask.any():
            fail("train_mask is empty")

        labelled = self.train_mask | self.val_mask | self.test_mask
        bad = labelled & ((self.y < 0) | (self.y >= self.num_classes))
        if bad.any():
            i = int(bad.nonzero()[0])
            fail(
                f"{int(bad.sum())} labelled nodes have labels outside [0, {self.num_classes}) "
                f"(first: node {i} with label {int(self.y[i])})"
            )
        return self

    def summary(self) -> dict[str, Any]:
        """Sizes of the graph as a JSON-ready dict."""
        return {
            "name": self.name,
            "nodes": self.num_nodes,
            "edges": self.num_edges,
            "features": self.num_features,
            "classes": self.num_classes,
            "train": int(self.train_mask.sum()),
            "val": int(self.val_mask.sum()),
            "test": int(self.test_mask.sum()),
        }

    def induced_adjacency(self, nodes: torch.Tensor, hops: int = 1) -> torch.Tensor:
        """Dense binary adjacency [n, n] among ``nodes`` (in that order), no self-loops.

        ``hops=1``: the induced subgraph; ``hops=2``: two of ``nodes`` are joined when they are at
        most two hops apart in the graph (adjacent or sharing a neighbour): the support of
        ((A + I)²) restricted to ``nodes``.
        """
        if hops not in (1, 2):
            raise ConfigError(f"hops must be 1 or 2, got {hops}")
        big = self.num_nodes
        ei = self.edge_index.numpy()
        a_plus_i = sp.csr_matrix((np.ones(ei.shape[1]), (ei[0], ei[1])), shape=(big, big)) + sp.identity(big, format="csr")
        reach = a_plus_i[nodes.numpy()]  # rows of (A + I) for the selected nodes: [n, N]
        product = reach[:, nodes.numpy()] if hops == 1 else reach @ reach.T
        adj = torch.from_numpy(product.toarray()).float()
        adj = (adj > 0).float()
        adj.fill_diagonal_(0.0)
        return adj

    def to_pyg(self) -> Data:
        """The same graph as a ``torch_geometric.data.Data`` (tensors are shared, not copied)."""
        from torch_geometric.data import Data

        return Data(
            x=self.x, edge_index=self.edge_index, y=self.y,
            train_mask=self.train_mask, val_mask=self.val_mask, test_mask=self.test_mask,
        )


def graph_fingerprint(data: GraphData) -> str:
    """A hash of the graph's content (features, edges, labels, masks), for cache keys."""
    h = hashlib.sha256()
    for t in (data.x, data.edge_index, data.y, data.train_mask, data.val_mask, data.test_mask):
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def row_normalize(x: torch.Tensor) -> torch.Tensor:
    """Features divided by their row sums, as in the GCN paper; rows summing to zero become zero."""
    inv = 1.0 / x.sum(dim=1, keepdim=True)
    inv[torch.isinf(inv)] = 0.0
    return x * inv


# --------------------------------------------------------------------------- shared helpers


def _undirected(edge_index: np.ndarray, num_nodes: int, source: PathLike) -> torch.Tensor:
    """Directed integer edge pairs [2, E] from ``source`` as a symmetric, coalesced, loop-free int64 tensor."""
    if edge_index.ndim != 2 or edge_index.shape[0] != 2:
        raise DataError(f"{source}: edges must have shape [2, E], got {list(edge_index.shape)}")
    if edge_index.dtype.kind not in "iu":
        raise DataError(f"{source}: edge indices must be integers, got dtype {edge_index.dtype}")
    lo, hi = (int(edge_index.min()), int(edge_index.max())) if edge_index.size else (0, 0)
    if lo < 0 or hi >= num_nodes:
        bad = lo if lo < 0 else hi
        raise DataError(f"{source}: edge refers to node {bad} but valid node ids are 0..{num_nodes - 1}")
    ei, _ = remove_self_loops(torch.from_numpy(edge_index.astype(np.int64)))
    return to_undirected(ei, num_nodes=num_nodes)


def _features(x: np.ndarray, source: PathLike) -> torch.Tensor:
    if x.ndim != 2 or x.dtype.kind not in "biuf":
        raise DataError(
            f"{source}: features must be a 2-D numeric array, got shape {list(x.shape)} and dtype {x.dtype}"
        )
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def _labels(y: np.ndarray, source: PathLike) -> torch.Tensor:
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise DataError(f"{source}: labels must be a 1-D integer array, got shape {list(y.shape)} and dtype {y.dtype}")
    return torch.from_numpy(y.astype(np.int64))


def _index_mask(index: np.ndarray, num_nodes: int, source: PathLike) -> torch.Tensor:
    bad = index[(index < 0) | (index >= num_nodes)]
    if bad.size:
        raise DataError(f"{source}: node index {bad[0]} is outside the valid ids 0..{num_nodes - 1}")
    mask = torch.zeros(num_nodes, dtype=torch.bool)
    mask[torch.from_numpy(index.astype(np.int64))] = True
    return mask


def _require(arrays: Mapping[str, Any], keys: tuple[str, ...], path: Path) -> None:
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise DataError(f"{path}: missing keys {missing} (found {sorted(arrays)})")


def _first_dir(candidates: list[Path], marker: str, what: str) -> Path:
    for c in candidates:
        if (c / marker).is_file():
            return c
    raise DataError(f"{what}: {marker} not found in any of " + ", ".join(str(c) for c in candidates))


# --------------------------------------------------------------------------- Planetoid

_PLANETOID = {"cora": "Cora", "citeseer": "CiteSeer", "pubmed": "PubMed"}


def _dense(obj: Any) -> np.ndarray:
    """An unpickled matrix as a dense array.

    Unpickling skips scipy's checks, and ``toarray()`` on a sparse matrix with bad indices can
    crash the interpreter, so sparse matrices are rebuilt with fully checked indices first.
    """
    if not sp.issparse(obj):
        return np.asarray(obj)
    if obj.format in ("csr", "csc"):
        checked = type(obj)((obj.data, obj.indices, obj.indptr), shape=obj.shape)
        checked.check_format(full_check=True)
    elif obj.format == "coo":
        checked = sp.coo_matrix((obj.data, (obj.row, obj.col)), shape=obj.shape)  # checks bounds
    else:
        raise ValueError(f"unsupported sparse format '{obj.format}'")
    return checked.toarray()


def _planetoid_matrix(path: Path) -> np.ndarray:
    try:
        arr = _dense(load_pickle(path))
    except DataError:
        raise
    except Exception as exc:  # any inconsistency inside the unpickled object
        raise DataError(f"{path}: malformed matrix ({type(exc).__name__}: {exc})") from None
    if arr.ndim != 2 or arr.dtype.kind not in "biuf":
        raise DataError(f"{path}: expected a 2-D numeric matrix, got shape {list(arr.shape)} and dtype {arr.dtype}")
    return arr.astype(np.float32)


def _planetoid_edges(path: Path) -> np.ndarray:
    graph = load_pickle(path)
    if not isinstance(graph, Mapping):
        raise DataError(f"{path}: expected a dict of adjacency lists, got {type(graph).__name__}")
    try:
        pairs = np.array([(int(u), int(v)) for u, vs in graph.items() for v in vs], dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise DataError(f"{path}: adjacency lists must hold integer node ids ({exc})") from None
    return pairs.reshape(-1, 2).T


def _read_int_lines(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"missing file: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an empty file is reported below, not warned about
            out = np.loadtxt(path, dtype=np.int64, ndmin=1)
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: expected one integer per line ({exc})") from None
    if out.ndim != 1 or out.size == 0:
        raise DataError(f"{path}: expected a non-empty list of integers, one per line")
    return out


def load_planetoid(root: PathLike, name: str) -> GraphData:
    """Cora, CiteSeer or PubMed with the public Planetoid split, read from ``<root>/<Name>/raw/ind.<name>.*``.

    Gives the same x, y, edge set and masks as ``torch_geometric.datasets.Planetoid(root, name)``
    (including CiteSeer's isolated test nodes, which get zero features and label 0), but parses
    the pickles with the restricted unpickler. ``name`` is case-insensitive.
    """
    key = name.lower()
    if key not in _PLANETOID:
        raise DataError(f"unknown Planetoid dataset '{name}' (expected one of {sorted(_PLANETOID.values())})")
    root = Path(root)
    folders = [root / _PLANETOID[key]]
    if root.is_dir():
        folders += sorted(d for d in root.iterdir() if d.name.lower() == key and d != folders[0])
    raw = _first_dir([d / "raw" for d in folders], f"ind.{key}.graph", f"Planetoid {_PLANETOID[key]}")
    f = {part: raw / f"ind.{key}.{part}" for part in ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")}

    m = {p: _planetoid_matrix(f[p]) for p in ("x", "tx", "allx", "y", "ty", "ally")}
    test_index = _read_int_lines(f["test.index"])
    rows = {**{p: a.shape[0] for p, a in m.items()}, "test.index": test_index.size}
    for a, b in (("x", "y"), ("tx", "ty"), ("allx", "ally"), ("tx", "test.index")):
        if rows[a] != rows[b]:
            raise DataError(f"{f[a]} has {rows[a]} rows but {f[b]} has {rows[b]}")
    for a, b in (("x", "tx"), ("x", "allx"), ("y", "ty"), ("y", "ally")):
        if m[a].shape[1] != m[b].shape[1]:
            raise DataError(f"{f[a]} has {m[a].shape[1]} columns but {f[b]} has {m[b].shape[1]}")
    if m["ally"].shape[1] == 0:
        raise DataError(f"{f['ally']}: no label columns")
    if np.unique(test_index).size != test_index.size:
        raise DataError(f"{f['test.index']}: repeated node ids")

    # Test nodes take ids n_all..n-1; ids missing from test.index (CiteSeer's isolated nodes)
    # get zero features and an all-zero label row (label 0), as in torch_geometric.
    n_all, lo, hi = rows["allx"], int(test_index.min()), int(test_index.max())
    if lo != n_all:
        raise DataError(f"{f['test.index']}: test ids start at {lo} but {f['allx'].name} has {n_all} rows")
    n, n_train = hi + 1, rows["y"]
    if n_train + 500 > n:
        raise DataError(f"{f['y']}: {n_train} training nodes leave no room for 500 validation nodes among {n}")
    sorted_test = np.sort(test_index)
    tx = np.zeros((n - n_all, m["tx"].shape[1]), dtype=np.float32)
    ty = np.zeros((n - n_all, m["ty"].shape[1]), dtype=np.float32)
    tx[sorted_test - lo], ty[sorted_test - lo] = m["tx"], m["ty"]
    x = np.concatenate([m["allx"], tx])
    y = np.concatenate([m["ally"], ty]).argmax(axis=1)
    x[test_index], y[test_index] = x[sorted_test], y[sorted_test]

    train_mask = torch.zeros(n, dtype=torch.bool)
    val_mask = torch.zeros(n, dtype=torch.bool)
    train_mask[:n_train] = True
    val_mask[n_train : n_train + 500] = True
    return GraphData(
        name=_PLANETOID[key],
        x=torch.from_numpy(x),
        edge_index=_undirected(_planetoid_edges(f["graph"]), n, f["graph"]),
        y=torch.from_numpy(y.astype(np.int64)),
        train_mask=train_mask,
        val_mask=val_mask,
        test_mask=_index_mask(test_index, n, f["test.index"]),
        num_classes=m["ally"].shape[1],
    ).validate(raw)


# --------------------------------------------------------------------------- generic .npz


def _bool_mask(arr: np.ndarray, key: str, path: Path) -> torch.Tensor:
    if arr.dtype != np.bool_:
        if arr.dtype.kind not in "iu" or not np.isin(arr, (0, 1)).all():
            raise DataError(f"{path}: {key} must be boolean (or 0/1 integers), got dtype {arr.dtype}")
        arr = arr.astype(np.bool_)
    return torch.from_numpy(arr)


def load_graph_npz(path: PathLike) -> GraphData:
    """A graph stored as an ``.npz`` archive with ``x``, ``edge_index``, ``y`` and the three masks.

    ``edge_index`` may list each edge in one or both directions; it is symmetrised and stripped
    of self-loops and duplicates. An optional scalar ``num_classes`` overrides ``max(y) + 1``.
    The dataset is named after the file stem.
    """
    path = Path(path)
    a = load_npz(path)
    _require(a, ("x", "edge_index", "y", *_MASKS), path)
    x, y = _features(a["x"], path), _labels(a["y"], path)
    if "num_classes" in a:
        c = a["num_classes"]
        if c.shape != () or c.dtype.kind not in "iu":
            raise DataError(
                f"{path}: num_classes must be an integer scalar, got shape {list(c.shape)} and dtype {c.dtype}"
            )
        num_classes = int(c)
    else:
        num_classes = int(y.max()) + 1 if y.numel() else 1
    return GraphData(
        name=path.stem,
        x=x,
        edge_index=_undirected(a["edge_index"], x.shape[0], path),
        y=y,
        **{m: _bool_mask(a[m], m, path) for m in _MASKS},
        num_classes=num_classes,
    ).validate(path)


# --------------------------------------------------------------------------- ogbn-arxiv


def _read_csv_gz(path: Path, dtype: type, columns: int | None = None) -> np.ndarray:
    """A gzipped headerless CSV of numbers as a 2-D array (``columns`` wide when given)."""
    if not path.is_file():
        raise DataError(f"missing file: {path}")
    try:
        with gzip.open(path, "rt") as fh, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "empty input file": an empty list is legal (e.g. no edges)
            arr = np.loadtxt(fh, delimiter=",", dtype=dtype, ndmin=2)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise DataError(f"{path}: not a readable gzipped CSV of numbers ({type(exc).__name__}: {exc})") from None
    if columns is not None:
        if arr.size == 0:
            arr = arr.reshape(0, columns)
        if arr.shape[1] != columns:
            raise DataError(f"{path}: expected {columns} comma-separated columns, got {arr.shape[1]}")
    return arr


def _csv_count(path: Path) -> int:
    arr = _read_csv_gz(path, np.int64, columns=1)
    if arr.shape[0] != 1:
        raise DataError(f"{path}: expected a single number (one graph), got {arr.shape[0]} rows")
    return int(arr[0, 0])


def load_ogbn_arxiv(root: PathLike) -> GraphData:
    """ogbn-arxiv with its time split, from the raw OGB download ``<root>/ogbn_arxiv/{raw,split/time}``.

    ``root`` may also be the ``ogbn_arxiv`` folder itself. The directed citation edges are made
    undirected; ``num_classes`` is ``max(label) + 1`` (40 for the real data).
    """
    root = Path(root)
    base = _first_dir([root / "ogbn_arxiv", root], "raw/num-node-list.csv.gz", "ogbn-arxiv")
    raw, split = base / "raw", base / "split" / "time"
    n = _csv_count(raw / "num-node-list.csv.gz")
    e = _csv_count(raw / "num-edge-list.csv.gz")
    x = _read_csv_gz(raw / "node-feat.csv.gz", np.float32)
    y = _read_csv_gz(raw / "node-label.csv.gz", np.int64, columns=1)[:, 0]
    edges = _read_csv_gz(raw / "edge.csv.gz", np.int64, columns=2)
    for file, got, want, what in (("node-feat", len(x), n, "num-node-list"), ("node-label", len(y), n, "num-node-list"),
                                  ("edge", len(edges), e, "num-edge-list")):
        if got != want:
            raise DataError(f"{raw / (file + '.csv.gz')}: {got} rows but {what}.csv.gz says {want}")
    masks = {}
    for mask, part in zip(_MASKS, ("train", "valid", "test")):
        path = split / f"{part}.csv.gz"
        masks[mask] = _index_mask(_read_csv_gz(path, np.int64, columns=1)[:, 0], n, path)
    return GraphData(
        name="ogbn-arxiv",
        x=_features(x, raw / "node-feat.csv.gz"),
        edge_index=_undirected(edges.T, n, raw / "edge.csv.gz"),
        y=torch.from_numpy(y),
        **masks,
        num_classes=int(y.max()) + 1 if y.size else 1,
    ).validate(base)


# --------------------------------------------------------------------------- Reddit


def load_reddit(root: PathLike) -> GraphData:
    """Reddit (Hamilton et al., 2017) from PyG's raw files ``reddit_data.npz`` and ``reddit_graph.npz``.

    ``root`` is the PyG dataset folder holding ``raw/``, the ``raw`` folder itself, or a folder
    holding ``Reddit/raw``. ``node_types`` 1/2/3 mark train/val/test nodes; the COO adjacency
    is made undirected without self-loops.
    """
    root = Path(root)
    raw = _first_dir([root / "raw", root, root / "Reddit" / "raw"], "reddit_data.npz", "Reddit")
    data_path, graph_path = raw / "reddit_data.npz", raw / "reddit_graph.npz"
    data = load_npz(data_path)
    _require(data, ("feature", "label", "node_types"), data_path)
    x, y = _features(data["feature"], data_path), _labels(data["label"], data_path)
    n, types = x.shape[0], data["node_types"]
    if types.shape != (n,) or types.dtype.kind not in "iu":
        raise DataError(
            f"{data_path}: node_types must be {n} integers, got shape {list(types.shape)} and dtype {types.dtype}"
        )

    adj = load_npz(graph_path)
    _require(adj, ("row", "col", "shape", "format"), graph_path)
    fmt = adj["format"].tolist() if adj["format"].shape == () else None
    if (fmt.decode("latin1") if isinstance(fmt, bytes) else fmt) != "coo":
        raise DataError(f"{graph_path}: expected a COO matrix (scipy.sparse.save_npz), got format {fmt!r}")
    if tuple(adj["shape"].tolist()) != (n, n):
        raise DataError(f"{graph_path}: adjacency shape {adj['shape'].tolist()} does not match {n} nodes")
    if adj["row"].shape != adj["col"].shape or adj["row"].ndim != 1:
        raise DataError(f"{graph_path}: row and col must be 1-D arrays of equal length")

    return GraphData(
        name="Reddit",
        x=x,
        edge_index=_undirected(np.stack([adj["row"], adj["col"]]), n, graph_path),
        y=y,
        **{m: torch.from_numpy(types == t) for m, t in zip(_MASKS, (1, 2, 3))},
        num_classes=int(y.max()) + 1 if y.numel() else 1,
    ).validate(raw)
