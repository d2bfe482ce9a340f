"""Tests for hcdc.graph.condensers: proxy sizes, the registry, the Random baseline and GCond / GCond-X."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hcdc.artifacts import load_proxy, save_proxy
from hcdc.data.graph import GraphData, row_normalize
from hcdc.errors import ConfigError, DataError
from hcdc.graph.condensers import (
    CONDENSERS,
    GraphCondenser,
    _class_gradients,
    _init_pge,
    _initial_features,
    _pge,
    _real_class_gradients,
    class_counts,
    feature_support,
    make_condenser,
    proxy_sizes,
    register_condenser,
    synthesize_gcond,
)
from hcdc.models.polyfilter import DenseOperator, EdgeListOperator, SparseFeatures, init_params, logits

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = Path(os.environ.get("HCDC_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")

# A GCond run small enough for tests (seconds on 2 cores).
TINY_GCOND = dict(epochs=16, outer_loops=2, inner_loops=1, hidden=32, lr_feat=1e-2, lr_adj=1e-2,
                  adj_epochs=1, feat_epochs=1, pge_hidden=16)


def sbm_graph(n: int = 240, classes: int = 3, features: int = 40, seed: int = 0, train_classes: int | None = None) -> GraphData:
    """A stochastic block model with class-dependent binary features; 20 train and 20 val nodes per class."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    prob = torch.where(y[:, None] == y[None, :], 0.08, 0.01)
    upper = (torch.rand(n, n, generator=g) < prob).triu(1)
    edge_index = (upper | upper.T).nonzero().T.contiguous()
    centres = torch.rand(classes, features, generator=g) < 0.3
    x = (torch.rand(n, features, generator=g) < torch.where(centres[y], 0.5, 0.05)).float()
    train = torch.zeros(n, dtype=torch.bool)
    train[: 20 * classes] = True
    if train_classes is not None:
        train &= y < train_classes
    val = torch.zeros(n, dtype=torch.bool)
    val[20 * classes : 40 * classes] = True
    test = ~(train | val) & (torch.arange(n) >= 40 * classes)
    return GraphData("sbm", x, edge_index, y, train, val, test, classes).validate()



@pytest.fixture(scope="module")
def sbm() -> GraphData:
    return sbm_graph()


@pytest.fixture(scope="module")
def tiny_gcond(sbm):
    counts = class_counts(sbm.y[sbm.train_mask], 30, sbm.num_classes)
    return synthesize_gcond(sbm, counts, seed=0, **TINY_GCOND)


def dense_adjacency(data: GraphData) -> torch.Tensor:
    adj = torch.zeros(data.num_nodes, data.num_nodes)
    adj[data.edge_index[0], data.edge_index[1]] = 1.0
    return adj


# --------------------------------------------------------------------------- sizes


def test_proxy_sizes_keep_the_train_val_proportion(sbm):
    assert proxy_sizes(sbm, 0.5) == (30, 30)
    assert proxy_sizes(sbm, 1) == (60, 60)
    assert proxy_sizes(sbm, 0.01) == (3, 3)  # at least one node per class


@pytest.mark.parametrize("ratio", [0, 1.5, -0.1, float("nan"), True])
def test_proxy_sizes_reject_ratios_outside_unit_interval(sbm, ratio):
    with pytest.raises(ConfigError, match="ratio must lie in"):
        proxy_sizes(sbm, ratio)


def test_proxy_sizes_reject_a_class_without_training_nodes():
    with pytest.raises(DataError, match="class 2 has no labelled training node"):
        proxy_sizes(sbm_graph(train_classes=2), 0.5)


def test_class_counts_largest_remainder():
    labels = torch.tensor([0] * 5 + [1] * 3 + [2] * 2)
    assert class_counts(labels, 7, 3).tolist() == [4, 2, 1]  # quotas 3.5, 2.1, 1.4
    assert class_counts(labels, 10, 3).tolist() == [5, 3, 2]
    skewed = torch.tensor([0] * 98 + [1, 2])
    assert class_counts(skewed, 3, 3).tolist() == [1, 1, 1]
    assert class_counts(skewed, 4, 3).tolist() == [2, 1, 1]
    assert class_counts(torch.zeros(5, dtype=torch.long), 5, 3).tolist() == [3, 1, 1]  # absent classes get one
    for n in range(3, 40):
        counts = class_counts(labels, n, 3)
        assert counts.dtype == torch.int64 and int(counts.sum()) == n and (counts >= 1).all()
    with pytest.raises(ConfigError, match="3 classes"):
        class_counts(labels, 2, 3)


# --------------------------------------------------------------------------- registry


def test_registry_names_and_errors():
    assert {"random", "gcond", "gcond-x"} <= set(CONDENSERS)
    assert isinstance(make_condenser("random"), GraphCondenser)
    with pytest.raises(ConfigError, match="unknown graph condenser 'nope'; known: .*gcond, gcond-x.*random"):
        make_condenser("nope")
    with pytest.raises(ConfigError, match="unknown option"):
        make_condenser("random", epochs=3)
    with pytest.raises(ConfigError, match="unknown option"):
        make_condenser("gcond", learning_rate=0.1)
    with pytest.raises(ConfigError, match="epochs must be an integer >= 1"):
        make_condenser("gcond", epochs=0)
    with pytest.raises(ConfigError, match="lr_feat must be a positive number"):
        make_condenser("gcond", lr_feat=-1.0)
    with pytest.raises(ValueError, match="already registered"):
        register_condenser("random")(type("Again", (GraphCondenser,), {}))


def test_gcond_options_are_recorded_with_defaults():
    cond = make_condenser("gcond", epochs=3, lr_feat=1)
    assert cond.options["epochs"] == 3 and cond.options["lr_feat"] == 1.0
    assert cond.options["hidden"] == 256


# --------------------------------------------------------------------------- Random


def test_random_proxy_is_an_induced_subgraph_of_labelled_nodes(sbm):
    proxy = make_condenser("random").condense(sbm, 0.5, seed=3)
    t = proxy.tensors
    nodes = t["source_nodes"]
    assert (proxy.num_train, proxy.num_val, proxy.num_items) == (30, 30, 60)
    assert nodes.unique().numel() == 60 and (sbm.train_mask | sbm.val_mask)[nodes].all()
    assert torch.equal(t["adj"], dense_adjacency(sbm)[nodes][:, nodes])
    assert torch.equal(t["x"], row_normalize(sbm.x)[nodes])
    assert torch.equal(t["y"], sbm.y[nodes])
    assert t["adj"].sum() > 0


def test_random_proxy_is_deterministic(sbm):
    a, b, c = (make_condenser("random").condense(sbm, 0.5, seed=s) for s in (1, 1, 2))
    for name in a.tensors:
        assert torch.equal(a.tensors[name], b.tensors[name])
    assert not torch.equal(a.tensors["source_nodes"], c.tensors["source_nodes"])


# --------------------------------------------------------------------------- GCond


def test_closed_form_class_gradients_match_autograd(sbm):
    g = torch.Generator().manual_seed(0)
    params = {k: v.requires_grad_() for k, v in init_params(sbm.num_features, 16, 3, g).items()}
    lam = torch.tensor([0.0, 1.0])
    x = row_normalize(sbm.x)
    # synthetic side: dense weighted graph, all nodes are loss nodes, one group per class
    adj = torch.rand(50, 50, generator=g)
    adj = (adj + adj.T).fill_diagonal_(0)
    y = torch.arange(50) % 3
    op = DenseOperator.from_adjacency(adj)
    gw1, gw2 = _class_gradients(params, op(x[:50]), op.matrix, y, F.one_hot(y, 3).T / torch.bincount(y)[:, None])
    out = logits(params, lam, x[:50], op)
    # real side: per-class blocks of the real graph
    rw1, rw2 = _real_class_gradients(sbm, x)(params)
    out_real = logits(params, lam, x, EdgeListOperator.from_edge_index(sbm.edge_index, sbm.num_nodes))
    for c in range(3):
        want = torch.autograd.grad(F.cross_entropy(out[y == c], y[y == c]), [params["w1"], params["w2"]], retain_graph=True)
        torch.testing.assert_close((gw1[c], gw2[c]), want, rtol=1e-4, atol=1e-7)
        m = sbm.train_mask & (sbm.y == c)
        want = torch.autograd.grad(F.cross_entropy(out_real[m], sbm.y[m]), [params["w1"], params["w2"]], retain_graph=True)
        torch.testing.assert_close((rw1[c], rw2[c]), want, rtol=1e-4, atol=1e-7)


def test_gcond_matching_loss_falls(sbm, tiny_gcond):
    """Each epoch draws a fresh GCN, so the raw loss is noisy; a run with frozen synthetic data sees the same GCNs."""
    counts = class_counts(sbm.y[sbm.train_mask], 30, sbm.num_classes)
    frozen = synthesize_gcond(sbm, counts, seed=0, **{**TINY_GCOND, "lr_feat": 1e-12, "lr_adj": 1e-12}).history
    learned = tiny_gcond.history
    assert len(learned) == len(frozen) == TINY_GCOND["epochs"]
    gain = [f - h for h, f in zip(learned, frozen)]
    assert sum(gain[-4:]) / 4 > sum(gain[:4]) / 4 + 1
    assert sum(learned[-4:]) < sum(frozen[-4:])


def test_gcond_result_shapes_and_adjacency(sbm, tiny_gcond):
    r = tiny_gcond
    assert r.x.shape == (30, sbm.num_features) and r.y.tolist() == sorted(r.y.tolist())
    assert torch.bincount(r.y).tolist() == [10, 10, 10]
    assert r.seconds > 0
    for adj in (r.adj, r.adjacency_fn(r.x), r.adjacency_fn(r.x[:7] * 2)):
        n = adj.shape[0]
        assert adj.shape == (n, n)
        assert torch.equal(adj, adj.T)
        assert (adj >= 0).all() and (adj <= 1).all()
        assert (adj.diagonal() == 0).all()
    assert torch.equal(r.adj, r.adjacency_fn(r.x))
    assert not r.adj.requires_grad and not r.x.requires_grad


def test_pge_with_hidden_layers_freezes_its_batch_statistics():
    g = torch.Generator().manual_seed(0)
    params = _init_pge(12, 8, 4, g)
    x = torch.rand(9, 12, generator=g)
    adj, stats = _pge(params, x)
    assert len(stats) == 3
    assert torch.equal(adj, adj.T) and (adj.diagonal() == 0).all() and ((adj >= 0) & (adj <= 1)).all()
    torch.testing.assert_close(_pge(params, x, stats)[0], adj)
    sub = _pge(params, x[:4], stats)[0]  # frozen statistics: a node subset keeps its pairs' weights
    torch.testing.assert_close(sub, adj[:4, :4])


def test_gcond_is_deterministic(sbm, tiny_gcond):
    counts = class_counts(sbm.y[sbm.train_mask], 30, sbm.num_classes)
    again = synthesize_gcond(sbm, counts, seed=0, **TINY_GCOND)
    other = synthesize_gcond(sbm, counts, seed=1, **TINY_GCOND)
    assert torch.equal(again.x, tiny_gcond.x) and torch.equal(again.adj, tiny_gcond.adj)
    assert again.history == tiny_gcond.history
    assert not torch.equal(other.x, tiny_gcond.x)


def test_feature_support_keeps_the_columns_used_by_the_most_nodes():
    x = torch.tensor([[1.0, 0, 2, 0, 0], [0, 0, 1, 3, 1], [1, 0, 0, 1, 0], [0, 0, 0, 1, 0]])  # used by 2, 0, 2, 3, 1
    assert feature_support(x, 2).tolist() == [0, 3]  # ties go to the lower index
    assert feature_support(x, 3).tolist() == [0, 2, 3]
    assert feature_support(x, 0) is None and feature_support(x, 5) is None


def test_gcond_on_a_feature_support_learns_those_columns_only(sbm):
    counts = class_counts(sbm.y[sbm.train_mask], 30, sbm.num_classes)
    x_real = row_normalize(sbm.x)
    columns = feature_support(x_real, 12)
    result = synthesize_gcond(sbm, counts, seed=0, **TINY_GCOND, feature_columns=12)
    outside = torch.ones(sbm.num_features, dtype=torch.bool)
    outside[columns] = False
    assert (result.x[:, outside] == 0).all()
    start = _initial_features(x_real, sbm.y, sbm.train_mask, counts, torch.Generator().manual_seed(0))
    assert (result.x[:, columns] - start[:, columns]).abs().max() > 1e-3  # the kept columns were learned
    frozen = synthesize_gcond(sbm, counts, seed=0, **{**TINY_GCOND, "lr_feat": 1e-12, "lr_adj": 1e-12},
                              feature_columns=12)
    assert sum(result.history[-4:]) < sum(frozen.history[-4:])
    with pytest.raises(ConfigError, match="feature_columns"):
        synthesize_gcond(sbm, counts, seed=0, **TINY_GCOND, feature_columns=-1)


def test_gcond_rejects_bad_counts_and_options(sbm):
    with pytest.raises(ConfigError, match="counts"):
        synthesize_gcond(sbm, torch.tensor([3, 0, 3]), seed=0, **TINY_GCOND)
    with pytest.raises(ConfigError, match="unknown GCond option"):
        synthesize_gcond(sbm, torch.tensor([3, 3, 3]), seed=0, steps=3)


def test_gcond_and_gcond_x_proxies(sbm, tmp_path):
    gcond = make_condenser("gcond", **TINY_GCOND).condense(sbm, 0.5, seed=5)
    gcond_x = make_condenser("gcond-x", **TINY_GCOND).condense(sbm, 0.5, seed=5)
    assert gcond.meta["synthesis_reused"] is False and gcond_x.meta["synthesis_reused"] is True
    assert torch.equal(gcond.tensors["x"], gcond_x.tensors["x"])
    assert torch.equal(gcond.tensors["train_mask"], gcond_x.tensors["train_mask"])
    assert (gcond_x.tensors["adj"] == 0).all() and (gcond.tensors["adj"] > 0).any()
    assert (gcond.num_train, gcond.num_val) == (30, 30)
    assert gcond.class_counts("train") == [10, 10, 10] and gcond.class_counts("val") == [10, 10, 10]
    assert gcond.meta["config"] == make_condenser("gcond", **TINY_GCOND).options
    assert gcond.meta["timings"]["synthesis"] > 0


@pytest.mark.parametrize("method", ["random", "gcond", "gcond-x"])
def test_proxies_validate_and_round_trip(sbm, tmp_path, method):
    options = TINY_GCOND if method != "random" else {}
    proxy = make_condenser(method, **options).condense(sbm, 0.5, seed=0)
    proxy.validate()
    meta = proxy.meta
    assert meta["method"] == method and meta["dataset"] == "sbm" and meta["ratio"] == 0.5
    assert meta["seeds"] == {"condense": 0} and meta["num_classes"] == 3
    assert (meta["nodes"], meta["train_nodes"], meta["val_nodes"]) == (60, 30, 30)
    assert meta["fraction_of_graph"] == pytest.approx(60 / sbm.num_nodes)
    assert "torch" in meta["versions"] and set(meta["timings"]) and all(v >= 0 for v in meta["timings"].values())
    loaded = load_proxy(save_proxy(proxy, tmp_path / method))
    assert loaded.meta == meta
    for name, t in proxy.tensors.items():
        assert torch.equal(loaded.tensors[name], t)


# --------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def cora() -> GraphData:
    if not (DATA / "planetoid" / "Cora" / "raw").is_dir():
        pytest.skip("shared Cora files not available")
    from hcdc.data import load_dataset

    return load_dataset("cora", DATA)


def test_cora_sizes_and_proxies(cora):
    assert proxy_sizes(cora, 0.5) == (70, 250)
    rand = make_condenser("random").condense(cora, 0.5, seed=0)
    nodes = rand.tensors["source_nodes"]
    assert (rand.num_train, rand.num_val) == (70, 250)
    assert torch.equal(rand.tensors["adj"], dense_adjacency(cora)[nodes][:, nodes])
    gcond = make_condenser("gcond", epochs=1, outer_loops=2, inner_loops=1, pge_hidden=8).condense(cora, 0.5, seed=0)
    assert (gcond.num_train, gcond.num_val) == (70, 250)
    assert gcond.class_counts("train") == [10] * 7
    assert gcond.meta["fraction_of_graph"] == pytest.approx(320 / 2708)


def test_sparse_products_have_bit_identical_gradients_with_two_threads():
    """``x @ w`` by SparseFeatures and ``Â h`` by EdgeListOperator back-propagate through ``index_select``
    (whose backward is a serial ``index_add``), not ``w[idx]`` (whose backward, a parallel accumulating
    ``index_put_``, adds in thread order): same seed, same gradient, at any thread count."""
    g = torch.Generator().manual_seed(0)
    n, f, d, nnz = 400, 300, 64, 40000
    x = torch.zeros(n, f)
    x[torch.randint(0, n, (nnz,), generator=g), torch.randint(0, f, (nnz,), generator=g)] = torch.rand(nnz, generator=g)
    feats = SparseFeatures.from_dense(x)
    edges = torch.randint(0, n, (2, nnz), generator=g)
    op = EdgeListOperator(edges[0], edges[1], torch.rand(nnz, generator=g), n)
    w0 = torch.randn(f, d, generator=g)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grads = []
        for _ in range(4):
            w = w0.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(op(op(feats @ w)).square().sum(), w)
            grads.append(grad)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(grads[0], other) for other in grads[1:])
