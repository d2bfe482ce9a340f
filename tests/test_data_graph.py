"""Tests for hcdc.data.graph: GraphData invariants and the Planetoid, npz, ogbn-arxiv and Reddit loaders."""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch_geometric.utils import coalesce, is_undirected

from hcdc.data.graph import (
    GraphData,
    load_graph_npz,
    load_ogbn_arxiv,
    load_planetoid,
    load_reddit,
    row_normalize,
)
from hcdc.errors import ConfigError, DataError

DATA = Path(os.environ.get("HCDC_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
PLANETOID = DATA / "planetoid"


def needs_planetoid(name: str) -> Path:
    raw = PLANETOID / name / "raw"
    if not raw.is_dir():
        pytest.skip(f"real data not available at {raw}")
    return raw


def copy_raw(name: str, dest: Path) -> Path:
    """A writable copy of a real Planetoid raw folder under ``dest/<name>/raw``."""
    target = dest / name / "raw"
    shutil.copytree(needs_planetoid(name), target)
    return target


# --------------------------------------------------------------------------- tiny synthetic graphs

TINY_EDGES = np.array([[0, 1, 1, 2, 3, 4, 4], [1, 0, 2, 3, 3, 5, 5]])  # duplicate, reverse, self-loop
TINY_UNDIRECTED = {(0, 1), (1, 0), (1, 2), (2, 1), (2, 3), (3, 2), (4, 5), (5, 4)}


def tiny_arrays(**overrides) -> dict[str, np.ndarray]:
    n = 6
    arrays = {
        "x": np.arange(n * 3, dtype=np.float64).reshape(n, 3),
        "edge_index": TINY_EDGES,
        "y": np.array([0, 1, 2, 0, 1, 2]),
        "train_mask": np.array([1, 1, 1, 0, 0, 0], dtype=bool),
        "val_mask": np.array([0, 0, 0, 1, 0, 0], dtype=bool),
        "test_mask": np.array([0, 0, 0, 0, 1, 1], dtype=bool),
    }
    arrays.update(overrides)
    return {k: v for k, v in arrays.items() if v is not None}


def write_npz(path: Path, **overrides) -> Path:
    np.savez(path, **tiny_arrays(**overrides))
    return path


def edge_set(edge_index: torch.Tensor) -> set[tuple[int, int]]:
    return set(map(tuple, edge_index.t().tolist()))


def tiny_graph(**overrides) -> GraphData:
    a = tiny_arrays()
    fields = dict(
        name="tiny",
        x=torch.tensor(a["x"], dtype=torch.float32),
        edge_index=torch.tensor(sorted(TINY_UNDIRECTED)).t().contiguous(),
        y=torch.tensor(a["y"]),
        train_mask=torch.tensor(a["train_mask"]),
        val_mask=torch.tensor(a["val_mask"]),
        test_mask=torch.tensor(a["test_mask"]),
        num_classes=3,
    )
    fields.update(overrides)
    return GraphData(**fields)


# --------------------------------------------------------------------------- Planetoid on real data


@pytest.mark.parametrize(
    "name, nodes, features, classes, split",
    [("Cora", 2708, 1433, 7, (140, 500, 1000)), ("CiteSeer", 3327, 3703, 6, (120, 500, 1000))],
)
def test_planetoid_matches_torch_geometric(tmp_path, name, nodes, features, classes, split):
    from torch_geometric.datasets import Planetoid

    raw = needs_planetoid(name)
    (tmp_path / name).mkdir()
    (tmp_path / name / "raw").symlink_to(raw)  # PyG writes processed/ beside it
    ref = Planetoid(str(tmp_path), name)[0]

    g = load_planetoid(PLANETOID, name.lower())
    assert g.name == name
    assert (g.num_nodes, g.num_features, g.num_classes) == (nodes, features, classes)
    assert (int(g.train_mask.sum()), int(g.val_mask.sum()), int(g.test_mask.sum())) == split
    assert torch.equal(g.x, ref.x) and g.x.dtype == torch.float32
    assert torch.equal(g.y, ref.y)
    for m in ("train_mask", "val_mask", "test_mask"):
        assert torch.equal(getattr(g, m), getattr(ref, m)), m
    # PyG sorts by column; on this symmetric graph that is the row-sorted index with rows and cols swapped.
    assert torch.equal(g.edge_index, coalesce(ref.edge_index, num_nodes=nodes))
    assert g.num_edges == ref.edge_index.shape[1] // 2
    assert g.summary() == {"name": name, "nodes": nodes, "edges": g.num_edges, "features": features,
                           "classes": classes, "train": split[0], "val": split[1], "test": split[2]}
    pyg = g.to_pyg()
    assert pyg.num_nodes == nodes and torch.equal(pyg.train_mask, g.train_mask)


def test_planetoid_missing_file(tmp_path):
    raw = copy_raw("Cora", tmp_path)
    (raw / "ind.cora.ty").unlink()
    with pytest.raises(DataError, match=r"missing file: .*ind\.cora\.ty"):
        load_planetoid(tmp_path, "Cora")
    with pytest.raises(DataError, match=r"ind\.cora\.graph not found"):
        load_planetoid(tmp_path / "nowhere", "cora")
    with pytest.raises(DataError, match="unknown Planetoid dataset 'nell'"):
        load_planetoid(tmp_path, "nell")


def test_planetoid_truncated_pickle(tmp_path):
    raw = copy_raw("Cora", tmp_path)
    allx = raw / "ind.cora.allx"
    allx.write_bytes(allx.read_bytes()[: allx.stat().st_size // 2])
    with pytest.raises(DataError, match=r"ind\.cora\.allx.*truncated"):
        load_planetoid(tmp_path, "cora")


def test_planetoid_inconsistent_sizes(tmp_path):
    raw = copy_raw("Cora", tmp_path)
    lines = (raw / "ind.cora.test.index").read_text().split()
    (raw / "ind.cora.test.index").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DataError, match=r"ind\.cora\.tx has 1000 rows but .*ind\.cora\.test\.index has 999"):
        load_planetoid(tmp_path, "cora")


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_planetoid_malicious_pickle_is_refused(tmp_path):
    raw = copy_raw("Cora", tmp_path)
    marker = tmp_path / "pwned"
    (raw / "ind.cora.graph").write_bytes(pickle.dumps(_Evil(marker)))
    with pytest.raises(DataError, match=r"ind\.cora\.graph: refusing to load '\w+\.system' from a dataset pickle"):
        load_planetoid(tmp_path, "cora")
    assert not marker.exists()


def test_planetoid_sparse_matrix_with_bad_indices_is_refused(tmp_path):
    raw = copy_raw("Cora", tmp_path)
    bad = sp.csr_matrix(np.eye(140, 1433, dtype=np.float32))
    bad.indices[3] = 10**7  # toarray() on this unchecked matrix would write out of bounds
    (raw / "ind.cora.x").write_bytes(pickle.dumps(bad))
    with pytest.raises(DataError, match=r"ind\.cora\.x: malformed matrix .*indices must be < 1433"):
        load_planetoid(tmp_path, "cora")


# --------------------------------------------------------------------------- generic npz


def test_npz_round_trip(tmp_path):
    g = load_graph_npz(write_npz(tmp_path / "tiny.npz"))
    assert g.name == "tiny"
    assert (g.num_nodes, g.num_features, g.num_classes, g.num_edges) == (6, 3, 3, 4)
    assert g.x.dtype == torch.float32 and g.y.dtype == torch.int64 and g.edge_index.dtype == torch.int64
    assert edge_set(g.edge_index) == TINY_UNDIRECTED  # symmetrised, no self-loop, no duplicate
    assert torch.equal(g.edge_index, coalesce(g.edge_index)) and is_undirected(g.edge_index)
    assert torch.equal(g.x, torch.arange(18, dtype=torch.float32).view(6, 3))
    assert g.summary()["train"] == 3

    g.to_pyg()  # converts
    again = tmp_path / "again.npz"
    np.savez(again, x=g.x.numpy(), edge_index=g.edge_index.numpy(), y=g.y.numpy(), num_classes=np.int64(5),
             train_mask=g.train_mask.numpy(), val_mask=g.val_mask.numpy(),
             test_mask=g.test_mask.numpy().astype(np.uint8))  # 0/1 integers are accepted as a mask
    h = load_graph_npz(again)
    assert h.num_classes == 5
    assert torch.equal(h.edge_index, g.edge_index) and torch.equal(h.test_mask, g.test_mask)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(y=None), r"missing keys \['y'\]"),
        (dict(x=np.zeros(6)), r"features must be a 2-D numeric array, got shape \[6\]"),
        (dict(edge_index=np.zeros((3, 2), dtype=np.int64)), r"edges must have shape \[2, E\], got \[3, 2\]"),
        (dict(y=np.zeros(5, dtype=np.int64)), "y has 5 entries but x has 6 nodes"),
        (dict(x=np.where(np.eye(6, 3) > 0, np.nan, 1.0)), "x has 3 NaN/inf values in 3 nodes"),
        (dict(num_classes=np.int64(2)), r"labels outside \[0, 2\) \(first: node 2 with label 2\)"),
        (dict(y=np.array([0, -1, 2, 0, 1, 2])), "first: node 1 with label -1"),
        (dict(test_mask=np.array([1, 0, 0, 0, 1, 1], dtype=bool)), "train_mask and test_mask overlap on 1 nodes"),
        (dict(train_mask=np.zeros(6, dtype=bool)), "train_mask is empty"),
        (dict(edge_index=np.array([[0, 1], [1, 6]])), "edge refers to node 6 but valid node ids are 0..5"),
        (dict(val_mask=np.array([0, 0, 0, 2, 0, 0])), "val_mask must be boolean"),
        (dict(x=np.array([["a"] * 3] * 6)), "features must be a 2-D numeric array"),
    ],
)
def test_npz_bad_input(tmp_path, overrides, message):
    path = write_npz(tmp_path / "bad.npz", **overrides)
    with pytest.raises(DataError, match=message) as err:
        load_graph_npz(path)
    assert "bad.npz" in str(err.value)


def test_npz_unlabelled_nodes_outside_masks_are_fine(tmp_path):
    g = load_graph_npz(write_npz(tmp_path / "t.npz", y=np.array([0, 1, 2, 0, 1, 2]),
                                 test_mask=np.array([0, 0, 0, 0, 1, 0], dtype=bool), num_classes=np.int64(3)))
    assert g.summary()["test"] == 1


def test_npz_corrupt_and_object_arrays(tmp_path):
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 this is not a zip archive")
    with pytest.raises(DataError, match="corrupt.npz"):
        load_graph_npz(corrupt)
    with pytest.raises(DataError, match="missing file"):
        load_graph_npz(tmp_path / "absent.npz")
    objects = tmp_path / "objects.npz"
    write_npz(objects, y=np.array([0, 1, 2, 0, 1, None], dtype=object))
    with pytest.raises(DataError, match="objects.npz: holds object arrays, which are refused"):
        load_graph_npz(objects)


# --------------------------------------------------------------------------- GraphData directly


def test_graphdata_rejects_broken_invariants():
    assert tiny_graph().validate().num_edges == 4
    cases = [
        (dict(x=torch.zeros(6, 3, dtype=torch.float64)), "x must be a 2-D torch.float32 tensor"),
        (dict(edge_index=torch.tensor([[0, 1], [1, 0]], dtype=torch.int32)), "edge_index must be a 2-D torch.int64"),
        (dict(edge_index=torch.tensor([[0, 1, 1], [1, 0, 1]])), "1 self-loops"),
        (dict(edge_index=torch.tensor([[1, 0], [0, 1]])), "not coalesced"),
        (dict(edge_index=torch.tensor([[0, 1], [1, 2]])), "not undirected"),
        (dict(train_mask=torch.ones(6, dtype=torch.long)), "train_mask must be a 1-D torch.bool"),
        (dict(num_classes=0), r"num_classes must be an int >= 2 \(ranking classifiers needs at least 2 classes\), got 0"),
        (dict(num_classes=1, y=torch.zeros(6, dtype=torch.long)), "num_classes must be an int >= 2"),
        (dict(x=torch.zeros(0, 3)), "no nodes"),
    ]
    for overrides, message in cases:
        with pytest.raises(DataError, match=f"dataset 'tiny': .*{message}"):
            tiny_graph(**overrides).validate()


def test_row_normalize():
    x = torch.tensor([[1.0, 3.0], [0.0, 0.0], [2.0, 2.0]])
    assert torch.equal(row_normalize(x), torch.tensor([[0.25, 0.75], [0.0, 0.0], [0.5, 0.5]]))


# --------------------------------------------------------------------------- ogbn-arxiv layout


def write_csv_gz(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as fh:
        for row in rows:
            fh.write(",".join(map(str, np.atleast_1d(row))) + "\n")


def write_arxiv(root: Path, **replace) -> Path:
    base = root / "ogbn_arxiv"
    n = 6
    files = {
        "raw/edge.csv.gz": TINY_EDGES.T,  # directed src,dst rows
        "raw/node-feat.csv.gz": np.arange(n * 4).reshape(n, 4) / 10,
        "raw/node-label.csv.gz": [0, 1, 2, 3, 1, 39],
        "raw/num-node-list.csv.gz": [n],
        "raw/num-edge-list.csv.gz": [len(TINY_EDGES.T)],
        "split/time/train.csv.gz": [0, 1, 2],
        "split/time/valid.csv.gz": [3],
        "split/time/test.csv.gz": [4, 5],
    }
    files.update(replace)
    for rel, rows in files.items():
        write_csv_gz(base / rel, rows)
    return base


def test_ogbn_arxiv_layout(tmp_path):
    base = write_arxiv(tmp_path)
    for root in (tmp_path, base):
        g = load_ogbn_arxiv(root)
        assert g.name == "ogbn-arxiv"
        assert (g.num_nodes, g.num_features, g.num_classes, g.num_edges) == (6, 4, 40, 4)
        assert edge_set(g.edge_index) == TINY_UNDIRECTED and is_undirected(g.edge_index)
        assert g.train_mask.tolist() == [True] * 3 + [False] * 3
        assert g.val_mask.nonzero().flatten().tolist() == [3] and g.test_mask.nonzero().flatten().tolist() == [4, 5]
        assert torch.allclose(g.x[1], torch.tensor([0.4, 0.5, 0.6, 0.7]))


def test_ogbn_arxiv_bad_input(tmp_path):
    (write_arxiv(tmp_path / "a") / "split/time/valid.csv.gz").unlink()
    with pytest.raises(DataError, match=r"missing file: .*valid\.csv\.gz"):
        load_ogbn_arxiv(tmp_path / "a")
    write_arxiv(tmp_path / "b", **{"raw/node-label.csv.gz": [0, 1, 2]})
    with pytest.raises(DataError, match="node-label.csv.gz: 3 rows but num-node-list.csv.gz says 6"):
        load_ogbn_arxiv(tmp_path / "b")
    write_arxiv(tmp_path / "c", **{"split/time/test.csv.gz": [4, 2]})
    with pytest.raises(DataError, match="train_mask and test_mask overlap on 1 nodes"):
        load_ogbn_arxiv(tmp_path / "c")
    edge = write_arxiv(tmp_path / "d") / "raw/edge.csv.gz"
    edge.write_bytes(edge.read_bytes()[:10])
    with pytest.raises(DataError, match="edge.csv.gz: not a readable gzipped CSV"):
        load_ogbn_arxiv(tmp_path / "d")
    with pytest.raises(DataError, match="num-node-list.csv.gz not found"):
        load_ogbn_arxiv(tmp_path / "empty")


# --------------------------------------------------------------------------- Reddit layout


def write_reddit(raw: Path, node_types=(1, 1, 1, 2, 3, 3), shape=(6, 6)) -> Path:
    raw.mkdir(parents=True)
    np.savez(raw / "reddit_data.npz", feature=np.ones((6, 5), dtype=np.float32),
             label=np.array([0, 1, 2, 3, 4, 40]), node_types=np.array(node_types))
    row, col = TINY_EDGES
    sp.save_npz(raw / "reddit_graph.npz", sp.coo_matrix((np.ones(len(row)), (row, col)), shape=shape), compressed=False)
    return raw


def test_reddit_layout(tmp_path):
    raw = write_reddit(tmp_path / "Reddit" / "raw")
    for root in (tmp_path, tmp_path / "Reddit", raw):
        g = load_reddit(root)
        assert g.name == "Reddit"
        assert (g.num_nodes, g.num_features, g.num_classes, g.num_edges) == (6, 5, 41, 4)
        assert edge_set(g.edge_index) == TINY_UNDIRECTED and is_undirected(g.edge_index)
        assert [int(m.sum()) for m in (g.train_mask, g.val_mask, g.test_mask)] == [3, 1, 2]
        assert g.val_mask.nonzero().flatten().tolist() == [3]


def test_reddit_bad_input(tmp_path):
    write_reddit(tmp_path / "a" / "raw", shape=(7, 7))
    with pytest.raises(DataError, match=r"reddit_graph.npz: adjacency shape \[7, 7\] does not match 6 nodes"):
        load_reddit(tmp_path / "a")
    write_reddit(tmp_path / "b" / "raw", node_types=(0, 0, 0, 2, 3, 3))
    with pytest.raises(DataError, match="train_mask is empty"):
        load_reddit(tmp_path / "b")
    (write_reddit(tmp_path / "c" / "raw") / "reddit_graph.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="reddit_graph.npz: not a readable .npz"):
        load_reddit(tmp_path / "c")
    with pytest.raises(DataError, match="reddit_data.npz not found"):
        load_reddit(tmp_path / "nothing")


def test_induced_adjacency_one_and_two_hops():
    """Path 0-1-2-3-4: among nodes [0, 2, 3], one hop joins 2-3; two hops also join 0-2 (via 1), not 0-3."""
    edge_index = torch.tensor([[0, 1, 1, 2, 2, 3, 3, 4], [1, 0, 2, 1, 3, 2, 4, 3]])
    mask = torch.tensor([True, True, False, False, False])
    data = GraphData("path", torch.eye(5), edge_index, torch.tensor([0, 1, 0, 1, 0]), mask, ~mask, ~mask, 2)
    nodes = torch.tensor([0, 2, 3])
    one = torch.tensor([[0, 0, 0], [0, 0, 1], [0, 1, 0]]).float()
    two = torch.tensor([[0, 1, 0], [1, 0, 1], [0, 1, 0]]).float()
    assert torch.equal(data.induced_adjacency(nodes), one)
    assert torch.equal(data.induced_adjacency(nodes, hops=2), two)
    with pytest.raises(ConfigError):
        data.induced_adjacency(nodes, hops=3)
