"""Graph track: stacked training, ground-truth cache, HCDC proxies, and the condense/evaluate CLI."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from hcdc.artifacts import load_proxy, save_proxy
from hcdc.cli import main
from hcdc.data.graph import GraphData
from hcdc.errors import ArtifactError, ConfigError
from hcdc.graph import FilterSpace, NodeGraph, TrainProtocol, ground_truth, make_condenser, unaligned_proxy
from hcdc.graph.condensers import feature_support
from hcdc.graph.evaluate import evaluate_proxy, proxy_graph, proxy_graphs
from hcdc.graph.calibrate import (VALIDATION_OPTIMIZERS, CalibrationConfig, NormalizedGD, alignment_loss, fit_validation,
                                  trajectory_points)
from hcdc.graph.hpo import HPOConfig, hypergradient_hpo
from hcdc.graph.problem import FilterProblem
from hcdc.graph.train import _masked_ce, drop_unused_columns, score_configs, stacked_logits, train_stacked
from hcdc.data.graph import row_normalize
from hcdc.models import polyfilter
from hcdc.runinfo import command_line
from conftest import load_bench, run_readme_snippet


def _sbm(n_per_class=30, classes=3, features=20, seed=0) -> GraphData:
    """A small stochastic block model with class-dependent sparse features."""
    g = torch.Generator().manual_seed(seed)
    n = n_per_class * classes
    y = torch.arange(classes).repeat_interleave(n_per_class)
    same = y[:, None] == y[None, :]
    prob = torch.where(same, torch.tensor(0.15), torch.tensor(0.02))
    upper = torch.triu(torch.rand(n, n, generator=g) < prob, diagonal=1)
    adj = upper | upper.T
    edge_index = adj.nonzero().T.contiguous()
    x = (torch.rand(n, features, generator=g) < 0.1).float()
    x[torch.arange(n), y * (features // classes)] = 1.0
    perm = torch.randperm(n, generator=g)
    train, val, test = (torch.zeros(n, dtype=torch.bool) for _ in range(3))
    train[perm[:15]], val[perm[15:45]], test[perm[45:]] = True, True, True
    return GraphData("sbm", x, edge_index, y, train, val, test, classes).validate()


def test_stacked_training_equals_separate_training():
    data = _sbm()
    graph = NodeGraph.from_graph_data(data)
    lam = FilterSpace().sample(3, seed=1)
    protocol = TrainProtocol(epochs=15, seeds=(0,), hidden=8)
    together = stacked_logits(train_stacked(graph, lam, protocol, 0), lam, graph)
    for c in range(3):
        alone = stacked_logits(train_stacked(graph, lam[c : c + 1], protocol, 0), lam[c : c + 1], graph)
        assert torch.allclose(together[:, c], alone[:, 0], atol=1e-4)


def test_multi_tensor_adam_trains_the_same_models_bit_for_bit(monkeypatch):
    data = _sbm()
    graph = NodeGraph.from_graph_data(data)
    lam = FilterSpace().sample(3, seed=1)
    protocol = TrainProtocol(epochs=15, seeds=(0,), hidden=8)
    fast = train_stacked(graph, lam, protocol, 0)
    adam = torch.optim.Adam
    monkeypatch.setattr(torch.optim, "Adam", lambda *a, foreach=None, **k: adam(*a, foreach=False, **k))
    loop = train_stacked(graph, lam, protocol, 0)
    assert all(torch.equal(fast[k], loop[k]) for k in fast)
    # condensation too: GCond's S_train, the trajectories and the fitted S_val
    condenser = make_condenser("hcdc", gcond={"epochs": 4}, candidates=1, epochs=30, warmup=10, align_every=10,
                               val_steps=3, hidden=8)
    proxy_loop = condenser.condense(data, 0.5, 0)
    monkeypatch.undo()
    proxy_fast = condenser.condense(data, 0.5, 0)
    assert all(torch.equal(proxy_fast.tensors[k], proxy_loop.tensors[k]) for k in proxy_fast.tensors)


def test_unused_feature_columns_are_dropped_without_changing_the_scores():
    data = _sbm()
    x = row_normalize(data.x)
    x[:, 5:12] = 0  # a proxy whose features live on 13 of the 20 input columns
    graph = NodeGraph.from_dense(x, data.induced_adjacency(torch.arange(data.num_nodes)), data.y, data.train_mask,
                                 data.val_mask, data.num_classes)
    pruned, same = drop_unused_columns(graph, graph)
    assert same is pruned and pruned.x.shape == (data.num_nodes, 13) and pruned.num_features == 20
    lam = FilterSpace().sample(4, seed=3)
    protocol = TrainProtocol(epochs=25, seeds=(0,), hidden=8)
    full = stacked_logits(train_stacked(graph, lam, protocol, 0), lam, graph)  # all 20 rows of W1 trained
    scores = score_configs(graph, lam, protocol)
    assert torch.allclose(scores.val_loss, _masked_ce(full, data.y, data.val_mask), atol=1e-5)
    # a column used by the scored graph alone is kept
    other = NodeGraph.from_dense(row_normalize(data.x), graph.propagate.matrix, data.y, data.train_mask,
                                 data.val_mask, data.num_classes)
    assert drop_unused_columns(graph, other) == (graph, other)
    # sparse (bag-of-words) features: the same numbers bit for bit
    data.x[:, 3] = 0
    whole = NodeGraph.from_graph_data(data)
    assert drop_unused_columns(whole, whole)[0].x.shape == (data.num_nodes, 19)
    full = stacked_logits(train_stacked(whole, lam, protocol, 0), lam, whole)
    assert torch.equal(score_configs(whole, lam, protocol).val_loss, _masked_ce(full, data.y, data.val_mask))


def test_ground_truth_is_cached_and_merged(tmp_path):
    data = _sbm()
    protocol = TrainProtocol(epochs=10, seeds=(0,), hidden=8)
    lam = FilterSpace().sample(4, seed=0)
    first = ground_truth(data, lam[:3], protocol, cache=tmp_path)
    assert first.computed == 3
    second = ground_truth(data, lam, protocol, cache=tmp_path)
    assert second.computed == 1
    assert torch.equal(second.val_acc[:3], first.val_acc)
    again = ground_truth(data, lam, protocol, cache=tmp_path)
    assert again.computed == 0 and torch.equal(again.test_acc, second.test_acc)


def test_ground_truth_keeps_finished_chunks_when_interrupted(tmp_path, monkeypatch):
    from hcdc.graph import groundtruth

    data = _sbm()
    protocol = TrainProtocol(epochs=10, seeds=(0,), hidden=8)
    lam = FilterSpace().sample(5, seed=0)
    whole = ground_truth(data, lam, protocol, cache=tmp_path / "whole", progress=False)
    monkeypatch.setattr(groundtruth, "CHUNK", 2)
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return score_configs(*args, **kwargs)

    monkeypatch.setattr(groundtruth, "score_configs", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ground_truth(data, lam, protocol, cache=tmp_path / "chunked", progress=False)
    resumed = ground_truth(data, lam, protocol, cache=tmp_path / "chunked", progress=False)
    assert resumed.computed == 3  # the first chunk of 2 survived the interruption
    assert torch.equal(resumed.val_acc, whole.val_acc)  # chunking does not change the scores


def test_known_order_gcn_beats_negated_filter_on_homophilous_graph():
    """On an assortative SBM, smoothing (λ = Â) must beat anti-smoothing (λ = −Â) in validation accuracy."""
    data = _sbm(n_per_class=40)
    lam = torch.tensor([[0.0, 1.0, 1.0, 0.0], [1.0, -1.0, 0.0, 0.0]])
    scores = score_configs(NodeGraph.from_graph_data(data), lam, TrainProtocol(epochs=60, seeds=(0, 1), hidden=16))
    assert scores.val_acc[0] > scores.val_acc[1]


@pytest.mark.parametrize("train_method", ["random", "gcond-x"])
def test_hcdc_proxy_is_block_diagonal_and_deterministic(train_method):
    data = _sbm()
    opts = dict(train_method=train_method, candidates=2, repeats=1, epochs=12, warmup=4, align_every=4, hidden=8,
                val_steps=3, gcond={"epochs": 2, "outer_loops": 2, "inner_loops": 1, "hidden": 16})
    a = make_condenser("hcdc", **opts).condense(data, 0.5, seed=3)
    b = make_condenser("hcdc", **opts).condense(data, 0.5, seed=3)
    t = a.tensors
    assert torch.equal(t["x"], b.tensors["x"])
    assert t["adj"][t["train_mask"]][:, t["val_mask"]].abs().sum() == 0
    assert int(t["train_mask"].sum()) == 8 and int(t["val_mask"].sum()) == 15
    assert a.meta["alignment_points"] == 2 * 3  # 2 trajectories × alignments at epochs 4, 8 and 12
    assert len(a.meta["alignment_history"]) == 3 and all(np.isfinite(a.meta["alignment_history"]))
    ev = evaluate_proxy(a, data, FilterSpace().sample(6, 0), TrainProtocol(epochs=10, seeds=(0,), hidden=8))
    assert -1 <= ev.report["spearman"] <= 1


@pytest.mark.parametrize("train_method", ["random", "gcond"])
def test_hcdc_features_live_on_the_feature_support(train_method):
    data = _sbm()
    opts = dict(train_method=train_method, feature_columns=6, candidates=1, repeats=1, epochs=8, warmup=4,
                align_every=4, hidden=8, val_steps=3, lr_features=1e-2,
                gcond={"epochs": 2, "outer_loops": 2, "inner_loops": 1, "hidden": 16})
    proxy = make_condenser("hcdc", **opts).condense(data, 0.5, seed=0)
    x = proxy.tensors["x"]
    used = (x != 0).any(0).nonzero().flatten()
    assert set(used.tolist()) <= set(feature_support(row_normalize(data.x), 6).tolist())
    assert (x[proxy.tensors["val_mask"]] != 0).any(0).sum() > 0
    train_graph, score_graph = proxy_graphs(proxy)
    assert drop_unused_columns(train_graph, score_graph)[0].x.shape[1] == len(used)


@pytest.mark.parametrize("feature_columns", [0, 6])
def test_unaligned_proxy_is_the_proxy_before_alignment(tmp_path, feature_columns):
    """Putting S_val back gives exactly the proxy that zero alignment steps give, after a save/load round trip."""
    data = _sbm()
    opts = dict(train_method="random", feature_columns=feature_columns, candidates=1, repeats=1, epochs=8, warmup=4,
                align_every=4, hidden=8, lr_features=1e-2)
    aligned = make_condenser("hcdc", **opts, val_steps=3).condense(data, 0.5, seed=5)
    untouched = make_condenser("hcdc", **opts, val_steps=0).condense(data, 0.5, seed=5)
    val = aligned.tensors["val_mask"]
    assert not torch.equal(aligned.tensors["x"][val], untouched.tensors["x"][val])
    save_proxy(aligned, tmp_path / "p")
    for proxy in (aligned, load_proxy(tmp_path / "p")):
        back = unaligned_proxy(proxy, data)
        assert all(torch.equal(back.tensors[k], untouched.tensors[k]) for k in untouched.tensors)
    with pytest.raises(ConfigError, match="HCDC proxy"):
        unaligned_proxy(make_condenser("random").condense(data, 0.5, seed=0), data)


@pytest.mark.parametrize("options", [{"feature_columns": -1}, {"feature_columns": 1.5},
                                     {"gcond": {"feature_columns": 8}}])
def test_hcdc_rejects_bad_feature_columns(options):
    with pytest.raises(ConfigError, match="feature_columns"):
        make_condenser("hcdc", **options)


def test_block_diagonal_proxy_trains_on_its_training_block_alone():
    """Scoring a block-diagonal proxy by training on the training block equals training on the whole proxy."""
    data = _sbm()
    opts = dict(train_method="random", candidates=1, repeats=1, epochs=4, warmup=2, align_every=2, hidden=8,
                val_steps=1)
    proxy = make_condenser("hcdc", **opts).condense(data, 0.5, seed=0)
    train_graph, score_graph = proxy_graphs(proxy)
    assert train_graph.y.shape[0] == proxy.num_train and score_graph.y.shape[0] == proxy.num_val
    lam = FilterSpace().sample(5, seed=2)
    protocol = TrainProtocol(epochs=20, seeds=(0,), hidden=8, dropout=0.0)
    blocks = score_configs(train_graph, lam, protocol, evaluate_on=score_graph)
    whole = score_configs(proxy_graph(proxy), lam, protocol)
    assert torch.allclose(blocks.val_loss, whole.val_loss, atol=1e-5)
    # a proxy with edges across the split is trained whole
    t = dict(proxy.tensors)
    adj = t["adj"].clone()
    i, j = int(t["train_mask"].nonzero()[0]), int(t["val_mask"].nonzero()[0])
    adj[i, j] = adj[j, i] = 1.0
    assert proxy_graphs(type(proxy)(proxy.kind, {**t, "adj": adj}, proxy.meta))[1] is None


@pytest.mark.parametrize("optimizer,lr", [("adam", 1e-2), ("normalized-gd", 0.1)])
def test_fitting_the_validation_set_lowers_the_alignment_loss(optimizer, lr):
    """Algorithm 1 line 7: each optimiser of S_val's features lowers the mean 1 − cos(g_T, g_S) over recorded points."""
    data = _sbm()
    protocol = TrainProtocol(hidden=8)
    config = CalibrationConfig(epochs=30, warmup=10, align_every=10)
    g = torch.Generator().manual_seed(0)
    real = FilterProblem.from_graph_data(data)
    train = data.train_mask.nonzero().view(-1)
    syn = FilterProblem.from_dense(row_normalize(data.x)[train], data.induced_adjacency(train), data.y[train],
                                   torch.ones(len(train), dtype=torch.bool), torch.ones(len(train), dtype=torch.bool))
    val_nodes = data.val_mask.nonzero().view(-1)
    x_val = row_normalize(data.x)[val_nodes].clone().requires_grad_(True)
    val_op = polyfilter.DenseOperator.from_adjacency(data.induced_adjacency(val_nodes))

    def syn_val_loss(p, lam):
        return torch.nn.functional.cross_entropy(polyfilter.logits(p, lam, x_val, val_op), data.y[val_nodes])

    points = []
    for lam0 in FilterSpace().sample(3, seed=5):
        init = polyfilter.init_params(data.num_features, 8, data.num_classes, g)
        points += trajectory_points(real, syn, syn_val_loss, lam0, init, FilterSpace(), protocol, config, g)
    assert len(points) == 3 * 3
    # each point keeps the θ_S it was recorded at (training goes on in place after it was recorded)
    assert not torch.equal(points[0].response.params["w1"], points[2].response.params["w1"])
    before = float(alignment_loss(points, syn_val_loss).detach())
    history = fit_validation(VALIDATION_OPTIMIZERS[optimizer]([x_val], lr), points, syn_val_loss, 30, len(points), g)
    after = float(alignment_loss(points, syn_val_loss).detach())
    assert history[0] == pytest.approx(before, rel=1e-5)
    assert after < 0.5 * before


def test_normalized_gd_steps_a_fixed_distance_down_the_joint_gradient():
    """Each step moves all parameters together by exactly lr, along the negative gradient."""
    a, b = torch.tensor([3.0, -1.0], requires_grad=True), torch.tensor([[2.0]], requires_grad=True)
    opt = NormalizedGD([a, b], lr=0.5)
    ((a ** 2).sum() + 4 * (b ** 2).sum()).backward()  # gradient (6, -2, 16), norm sqrt(296)
    opt.step()
    direction = torch.tensor([6.0, -2.0, 16.0]) / 296 ** 0.5
    moved = torch.cat([a.detach() - torch.tensor([3.0, -1.0]), b.detach().view(-1) - 2.0])
    assert torch.allclose(moved, -0.5 * direction, atol=1e-6)
    assert opt.state_dict()["state"] == {}  # nothing to snapshot: a resumed calibration continues exactly


def test_hcdc_rejects_an_unknown_validation_optimizer():
    with pytest.raises(ConfigError, match="val_optimizer"):
        make_condenser("hcdc", val_optimizer="sgd")


def test_hypergradient_hpo_moves_an_anti_smoothing_filter_towards_smoothing():
    """Lorraine et al.'s HPO on an assortative SBM lowers the validation loss of a bad start."""
    data = _sbm(n_per_class=40)
    protocol = TrainProtocol(hidden=16, epochs=120, seeds=(0,))
    space = FilterSpace()
    problem = FilterProblem.from_graph_data(data)
    result = hypergradient_hpo(problem, data.num_features, data.num_classes, space, protocol,
                               HPOConfig(starts=2, warmup=20, every=5, lr=0.1))
    assert result.lam.shape == (2, 4) and len(result.trajectories[0]) == 1 + 21
    first = torch.tensor([t[0] for t in result.trajectories])
    fixed = score_configs(NodeGraph.from_graph_data(data), first, protocol).val_loss
    assert (result.val_loss < fixed).all()
    assert result.pick == int(torch.argmin(result.val_loss))


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def _write_graph(path, **override):
    data = _sbm()
    arrays = dict(x=data.x.numpy(), edge_index=data.edge_index.numpy(), y=data.y.numpy(),
                  train_mask=data.train_mask.numpy(), val_mask=data.val_mask.numpy(), test_mask=data.test_mask.numpy())
    arrays.update(override)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def test_condense_and_info_cli_round_trip(tmp_path, capsys):
    graph = _write_graph(tmp_path / "g.npz")
    out = tmp_path / "proxy"
    code, err = _run(capsys, "condense", "--graph-file", graph, "--method", "random", "--ratio", "0.5", "--out", out)
    assert code == 0, err
    assert load_proxy(out).meta["method"] == "random"
    assert main(["info", str(out)]) == 0
    for args, message in [(["--configs", "1"], "ranking needs at least two configurations, got 1"),
                          (["--archs", "3"], "--archs: not for graph proxies"),
                          (["--device", "cpu", "--archs", "2"], "--archs, --device: not for graph proxies")]:
        code, err = _run(capsys, "evaluate", out, *args, "--plot", tmp_path / "scores.png")
        assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "scores.png").exists() and not (tmp_path / "scores.json").exists()


@pytest.mark.parametrize(
    "args,word",
    [
        (["--ratio", "0"], "ratio"),
        (["--ratio", "1.5"], "ratio"),
        (["--method", "magic"], "magic"),
        (["--dataset", "imagenet"], "imagenet"),
        (["--options", '{"bogus": 1}'], "bogus"),
        (["--protocol", "cpu"], "--protocol is for image datasets"),
    ],
)
def test_condense_rejects_bad_arguments_without_output(tmp_path, capsys, args, word):
    out = tmp_path / "proxy"
    graph = [] if "--dataset" in args else ["--graph-file", _write_graph(tmp_path / "g.npz")]
    code, err = _run(capsys, "condense", *graph, "--method", "random", *args, "--out", out)
    assert code == 2 and word in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".proxy*"))


@pytest.mark.parametrize(
    "override,word",
    [(dict(y=None), "y"), (dict(x=np.full((90, 20), np.nan, np.float32)), "nan"),
     (dict(train_mask=np.zeros(90, bool)), "train")],
)
def test_condense_rejects_bad_graph_files(tmp_path, capsys, override, word):
    out = tmp_path / "proxy"
    code, err = _run(capsys, "condense", "--graph-file", _write_graph(tmp_path / "g.npz", **override),
                     "--method", "random", "--out", out)
    assert code == 2 and word in err.lower()
    assert not out.exists()


def test_class_without_training_node_is_rejected(tmp_path, capsys):
    data = _sbm()
    train = data.train_mask.numpy() & (data.y.numpy() != 2)
    out = tmp_path / "proxy"
    code, err = _run(capsys, "condense", "--graph-file", _write_graph(tmp_path / "g.npz", train_mask=train),
                     "--method", "random", "--out", out)
    assert code == 2 and "class" in err
    assert not out.exists()


def bench_on_sbm(name, tmp_path, monkeypatch):
    """The benchmark script ``bench/<name>.py`` with its results and cache under ``tmp_path`` and every
    dataset replaced by the small SBM."""
    bench = load_bench(name)
    monkeypatch.setenv("HCDC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(bench, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(bench, "load_dataset", lambda name: _sbm())
    return bench


def test_graph_table_side_by_side_speed_replaces_row_timings(tmp_path, monkeypatch):
    bench = bench_on_sbm("graph_table", tmp_path, monkeypatch)
    common = ["--datasets", "sbm", "--ratios", "0.5", "--methods", "random", "--condense-seeds", "0",
              "--configs", "4", "--train-seeds", "1"]
    table = bench.main(common + ["--name", "table"])
    speed = bench.main(common + ["--speed", "--speed-repeats", "2", "--name", "speed"])
    (timing,) = speed["speed"]
    assert speed["ground_truth_seconds"] == {} and speed["loss_ceiling"] == {}  # timings need no ground truth
    assert "Ground truth" not in (tmp_path / "results" / "speed.md").read_text()
    assert timing["eval_speedup"] == pytest.approx(timing["whole_seconds_per_config"] / timing["proxy_seconds_per_config"])
    # the bound: whole-graph time over Adam's time alone at the columns the proxy's nodes use
    assert timing["speedup_bound"] == pytest.approx(timing["whole_seconds_per_config"] / timing["optimizer_seconds_per_config"])
    assert 1 <= timing["proxy_input_columns"] <= _sbm().x.shape[1]
    assert timing["whole_feature_entries"] == _sbm().x.numel()  # 16% non-zero: stored dense
    graph = _sbm()
    one_hot = torch.nn.functional.one_hot(graph.y, 50).float()  # 2% non-zero: stored sparse, counted by its non-zeros
    assert NodeGraph.from_graph_data(dataclasses.replace(graph, x=one_hot)).feature_entries() == len(graph.y)
    assert "speed-up bound" in (tmp_path / "results" / "speed.md").read_text()
    rerun = {**table, "rows": [{**table["rows"][0], "spearman_mean": 0.123}]}
    bench.write(rerun, "rerun")
    merged = bench.combine(["table", "rerun", "speed"], "merged", "test")
    (row,) = merged["rows"]  # a cell run twice: the later run's row
    assert row["spearman_mean"] == 0.123
    assert row["eval_speedup"] == timing["eval_speedup"] and row["speed_measured"] == "side by side"
    assert table["rows"][0]["eval_speedup"] != timing["eval_speedup"]
    # the ceiling: the whole graph's own validation loss against its validation accuracy
    assert merged["loss_ceiling"]["sbm"] == table["loss_ceiling"]["sbm"]
    assert all(-1 <= v <= 1 for v in merged["loss_ceiling"]["sbm"])
    assert "side by side" not in (tmp_path / "results" / "table.md").read_text()
    assert "alternated 2 times" in (tmp_path / "results" / "merged.md").read_text()
    # an ablation variant run twice: the later run's row, once
    variant = {"dataset": "sbm", "r": 0.5, "ablation": "neumann_terms", "kendall": 0.0, "condense_seconds": 1.0}
    bench.write({**table, "ablation": [{**variant, "value": j, "spearman": 0.1} for j in (0, 1)]}, "ablation_old")
    bench.write({**table, "ablation": [{**variant, "value": 1, "spearman": 0.9}]}, "ablation_new")
    merged = bench.combine(["ablation_old", "ablation_new"], "ablation_merged", "test")
    assert [(r["value"], r["spearman"]) for r in merged["ablation"]] == [(0, 0.1), (1, 0.9)]


def test_graph_table_reports_what_alignment_adds_for_hcdc_rows(tmp_path, monkeypatch):
    bench = bench_on_sbm("graph_table", tmp_path, monkeypatch)
    hcdc = "hcdc:train_method=random,candidates=1,epochs=8,warmup=4,align_every=4,hidden=8,val_steps=3,lr_features=0.01"
    table = bench.main(["--datasets", "sbm", "--ratios", "0.5", "--methods", "random", hcdc, "--condense-seeds", "0", "1",
                        "--configs", "6", "--train-seeds", "1", "--name", "table"])
    random_row, hcdc_row = table["rows"]
    assert random_row["unaligned_spearman_mean"] is None and random_row["unaligned_spearman_per_seed"] == []
    assert len(hcdc_row["unaligned_spearman_per_seed"]) == len(hcdc_row["spearman_per_seed"]) == 2
    assert hcdc_row["unaligned_spearman_mean"] == pytest.approx(np.mean(hcdc_row["unaligned_spearman_per_seed"]))
    assert hcdc_row["spearman_mean"] == pytest.approx(np.mean(hcdc_row["spearman_per_seed"]))
    assert "ρ unaligned" in (tmp_path / "results" / "table.md").read_text()


def test_graph_table_methods_carry_condenser_options():
    bench = load_bench("graph_table")
    assert bench.method_spec("hcdc") == ("hcdc", {})
    assert bench.method_spec("hcdc:feature_columns=256,train_method=random") == (
        "hcdc", {"feature_columns": 256, "train_method": "random"})
    with pytest.raises(SystemExit, match="key=value"):
        bench.method_spec("hcdc:feature_columns")


def test_graph_val_fit_scores_each_way_of_fitting_the_validation_set(tmp_path, monkeypatch):
    bench = bench_on_sbm("graph_val_fit", tmp_path, monkeypatch)
    hcdc = "hcdc:train_method=random,candidates=1,epochs=8,warmup=4,align_every=4,hidden=8,val_steps=3"
    result = bench.main(["--dataset", "sbm", "--method", hcdc, "--condense-seeds", "0", "--variants", "none",
                         "adam:0.01", "normalized-gd:0.1", "--tune-configs", "6", "--tune-seed", "7", "--train-seeds", "1"])
    none, adam, ngd = result["rows"]
    # no fit: the proxy's own validation set before alignment
    proxy, _ = bench.cached_proxy(_sbm(), hcdc, 0.5, 0, {})
    lam = FilterSpace().sample(6, 7)
    truth = ground_truth(_sbm(), lam, TrainProtocol(seeds=(0,)))
    expected = evaluate_proxy(unaligned_proxy(proxy, _sbm()), _sbm(), lam, TrainProtocol(seeds=(0,)), truth)
    assert none["l1_moved"] == 0 and none["spearman"] == pytest.approx(expected.report["spearman"])
    assert adam["l1_moved"] > 0 and ngd["l1_moved"] > 0 and adam["alignment_end"] is not None
    assert [r["variant"] for r in result["summary"]] == ["none", "adam:0.01", "normalized-gd:0.1"]
    assert "ρ (tuning configs)" in (tmp_path / "results" / "graph_val_fit.md").read_text()
    for bad in (["--tune-seed", "0"], ["--variants", "sgd:0.1"]):
        with pytest.raises(ConfigError):
            bench.main(["--dataset", "sbm", "--method", hcdc] + bad)


def test_the_demo_refuses_fewer_than_two_configurations_before_training(tmp_path, monkeypatch):
    from hcdc.graph import demo

    def no_training(*args, **kwargs):
        raise AssertionError("nothing should be trained")

    monkeypatch.setattr(demo, "ground_truth", no_training)
    with pytest.raises(ConfigError, match="ranking needs at least two configurations, got 1"):
        demo.run_demo(_sbm(), tmp_path / "out", configs=1)
    assert not (tmp_path / "out").exists()


def test_the_demo_leaves_its_proxies_and_a_run_record(tmp_path, monkeypatch):
    import json

    from hcdc.graph import demo

    small = {"random": {}, "hcdc": {"candidates": 1, "epochs": 20, "warmup": 10, "align_every": 5, "val_steps": 2,
                                    "train_method": "random"}}
    monkeypatch.setattr(demo, "DEMO_METHODS", small)
    monkeypatch.setattr(demo, "DEMO_PROTOCOL", TrainProtocol(epochs=20, seeds=(0,)))
    for _ in range(2):  # a rerun replaces the outputs
        rows = demo.run_demo(_sbm(), tmp_path / "out", configs=4, ratio=0.5)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["demo.json", "demo.md", "hcdc", "hcdc_scores.png", "random"]
    for method in small:
        assert load_proxy(out / method).meta["method"] == method
    record = json.loads((out / "demo.json").read_text())
    assert record["config"]["methods"] == small and record["config"]["configs"] == 4 and record["seed"] == 0
    assert record["config"]["protocol"]["epochs"] == 20 and "torch" in record["versions"]
    assert record["timings"]["total"] >= record["timings"]["ground_truth"] > 0
    assert [r["method"] for r in record["results"]] == ["random", "hcdc"]
    assert [r["spearman"] for r in record["results"]] == pytest.approx([r["spearman"] for r in rows])
    assert "| hcdc |" in (out / "demo.md").read_text()


def test_demo_schedule_scores_demo_variants_on_tuning_configurations(tmp_path, monkeypatch):
    bench = bench_on_sbm("demo_schedule", tmp_path, monkeypatch)
    small_hcdc = {"train_method": "random", "candidates": 1, "epochs": 8, "warmup": 4, "align_every": 4, "hidden": 8,
                  "val_steps": 3}
    monkeypatch.setattr(bench, "DEMO_METHODS", {"random": {}, "hcdc": small_hcdc})
    protocol = TrainProtocol(epochs=10, hidden=8, seeds=(0,))
    monkeypatch.setattr(bench, "DEMO_PROTOCOL", protocol)
    result = bench.main(["--condense-seeds", "0", "--variants", "random", "hcdc", "hcdc:val_steps=0",
                         "--tune-configs", "6", "--tune-seed", "7"])
    random_row, hcdc_row, unfitted = result["rows"]
    lam = FilterSpace().sample(6, 7)
    truth = ground_truth(_sbm(), lam, protocol)
    proxy = make_condenser("random").condense(_sbm(), bench.DEMO_RATIO, 0)
    assert random_row["spearman"] == pytest.approx(evaluate_proxy(proxy, _sbm(), lam, protocol, truth).report["spearman"])
    assert hcdc_row["alignment_end"] is not None and unfitted["alignment_end"] is None
    assert [r["variant"] for r in result["summary"]] == ["random", "hcdc", "hcdc:val_steps=0"]
    assert "ρ (tuning configs)" in (tmp_path / "results" / "demo_schedule.md").read_text()
    for bad in (["--tune-seed", "0"], ["--variants", "kcenter"], ["--variants", "hcdc:val_optimizer=sgd"]):
        with pytest.raises(ConfigError):
            bench.main(bad)


def test_command_line_records_the_script_and_quoted_arguments():
    assert command_line("/repo/bench/graph_table.py", ["--name", "a b"]) == "python bench/graph_table.py --name 'a b'"
    assert command_line("/repo/bench/demo_schedule.py", []) == "python bench/demo_schedule.py"


def test_a_graph_proxy_as_pyg_data_propagates_as_hcdc_models_do(tmp_path, capsys):
    """Proxy.to_pyg: GCNConv's normalisation of its edges (self-loops added) is hcdc's D̃^{-1/2}(A + I)D̃^{-1/2}."""
    from torch_geometric.utils import to_dense_adj
    from torch_geometric.nn.conv.gcn_conv import gcn_norm

    graph = _write_graph(tmp_path / "g.npz")
    assert _run(capsys, "condense", "--graph-file", graph, "--method", "gcond", "--ratio", "0.5",
                "--options", '{"epochs": 2}', "--out", tmp_path / "p")[0] == 0
    proxy = load_proxy(tmp_path / "p")
    data = proxy.to_pyg()
    t = proxy.tensors
    assert data.num_edges > 0 and data.edge_weight.gt(0).all() and not (data.edge_index[0] == data.edge_index[1]).any()
    assert not torch.equal(data.edge_weight, torch.ones_like(data.edge_weight))  # learned weights, kept
    for key in ("x", "y", "train_mask", "val_mask"):
        assert torch.equal(data[key], t[key])
    assert data.num_classes == proxy.num_classes and data.num_nodes == len(t["y"])
    edge_index, weight = gcn_norm(data.edge_index, data.edge_weight, data.num_nodes, add_self_loops=True)
    dense = to_dense_adj(edge_index, edge_attr=weight, max_num_nodes=data.num_nodes)[0].t()  # row = target node
    torch.testing.assert_close(dense, polyfilter.DenseOperator.from_adjacency(t["adj"]).matrix)
    with pytest.raises(ArtifactError, match="needs a graph proxy"):
        dataclasses.replace(proxy, kind="image").to_pyg()


def test_the_readme_pyg_example_runs_on_a_graph_proxy(tmp_path, capsys, monkeypatch):
    graph = _write_graph(tmp_path / "g.npz")
    assert _run(capsys, "condense", "--graph-file", graph, "--method", "random", "--ratio", "0.5",
                "--out", tmp_path / "proxies" / "cora-hcdc")[0] == 0
    monkeypatch.chdir(tmp_path)
    study = run_readme_snippet("to_pyg()", "range(200)")["study"]
    assert len(study.trials) == 3 and set(study.best_params) == {"hidden", "dropout", "lr"} and study.best_value > 0
