"""Optuna filter search: objective, determinism, resuming from the journal, failed trials, and the CLI."""

from __future__ import annotations

import json
import math

import optuna
import pytest
import torch

from hcdc.errors import ConfigError
from hcdc.graph import FilterSpace, NodeGraph, TrainProtocol
from hcdc.graph import search as S
from hcdc.graph.train import ConfigScores, score_configs
from hcdc.study import make_sampler
from test_graph_track import _run, _sbm, _write_graph, bench_on_sbm

PROTOCOL = TrainProtocol(epochs=30, seeds=(0,))


@pytest.fixture(scope="module")
def graph():
    return NodeGraph.from_graph_data(_sbm())


def test_every_trial_is_scored_by_training_and_the_lowest_loss_wins(graph):
    found = S.search_filters(graph, FilterSpace(), PROTOCOL, trials=10, sampler="random", batch=4, progress=False)
    assert found.lam.shape == (10, 4) and found.lam.abs().max() <= 1
    again = score_configs(graph, found.lam, PROTOCOL)  # the objective is the validation loss after training
    assert torch.allclose(found.val_loss, again.val_loss, atol=1e-5)
    assert torch.equal(found.best, found.lam[int(again.val_loss.argmin())])
    assert found.best_val_loss == pytest.approx(float(again.val_loss.min()), abs=1e-5)


def test_same_seed_same_search_and_the_journal_resumes_it(graph, tmp_path):
    def run(trials, seed=0, journal=None):
        return S.search_filters(graph, FilterSpace(), PROTOCOL, trials, "tpe", seed, batch=4, journal=journal,
                                progress=False)

    first = run(12)
    assert torch.equal(first.lam, run(12).lam) and not torch.equal(first.lam, run(12, seed=1).lam)
    journal = tmp_path / "study.journal"
    part = run(6, journal=journal)
    more = run(10, journal=journal)  # the journal keeps the 6 trials; 4 more are drawn
    assert more.lam.shape[0] == 10 and torch.equal(more.lam[:6], part.lam)
    # a trial asked (λ drawn) but not told when the process stopped is scored on resumption
    study = optuna.load_study(study_name="hcdc-filter-search",
                              storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal))))
    stopped = study.ask()
    lam = [stopped.suggest_float(f"lambda_{k}", -1.0, 1.0) for k in range(4)]
    resumed = run(12, journal=journal)
    assert resumed.lam.shape[0] == 12 and torch.allclose(resumed.lam[10], torch.tensor(lam))
    assert study.get_trials()[stopped.number].state == optuna.trial.TrialState.COMPLETE
    with pytest.raises(ConfigError, match="other settings.*seed"):
        run(14, seed=3, journal=journal)


def test_diverging_trials_fail_and_are_never_picked(graph, monkeypatch):
    real = S.score_configs

    def first_diverges(g, lam, protocol, evaluate_on=None):
        scores = real(g, lam, protocol, evaluate_on=evaluate_on)
        loss = scores.val_loss.clone()
        loss[0] = math.nan
        return ConfigScores(loss, scores.val_acc, scores.test_acc, scores.per_seed, scores.seconds)

    monkeypatch.setattr(S, "score_configs", first_diverges)
    found = S.search_filters(graph, FilterSpace(), PROTOCOL, trials=6, sampler="random", batch=3, progress=False)
    assert math.isinf(found.val_loss[0]) and math.isinf(found.val_loss[3]) and found.best_val_loss < math.inf
    assert found.as_dict()["val_loss"][0] is None
    monkeypatch.setattr(S, "score_configs", lambda g, lam, p, evaluate_on=None: ConfigScores(
        torch.full((len(lam),), math.nan), torch.zeros(len(lam)), None, [], 0.0))
    with pytest.raises(ConfigError, match="diverged"):
        S.search_filters(graph, FilterSpace(), PROTOCOL, trials=3, sampler="random", progress=False)


def test_finalists_are_the_best_trials_retrained_and_the_pick_has_the_best_validation_accuracy(graph):
    found = S.search_filters(graph, FilterSpace(), PROTOCOL, trials=8, sampler="random", batch=8, progress=False)
    found.val_loss[found.val_loss.argsort()[1]] = math.inf  # a failed trial is never a finalist
    final = S.retrain_finalists(graph, found, 4, PROTOCOL)
    order = [i for i in found.val_loss.argsort().tolist() if math.isfinite(found.val_loss[i])][:4]
    assert torch.equal(final.lam, found.lam[order])
    truth = score_configs(graph, final.lam, PROTOCOL)
    assert torch.allclose(final.val_acc, truth.val_acc) and torch.allclose(final.test_acc, truth.test_acc)
    assert final.val_acc[final.pick] == final.val_acc.max() and final.pick == int(torch.argmax(final.val_acc))
    assert len(S.retrain_finalists(graph, found, 50, PROTOCOL).lam) == 7
    with pytest.raises(ConfigError, match="finalists"):
        S.retrain_finalists(graph, found, 0)


def test_bad_settings_are_config_errors(graph):
    with pytest.raises(ConfigError, match="unknown sampler 'grid'.*random, tpe"):
        make_sampler("grid", 0)
    with pytest.raises(ConfigError, match="trials >= 1"):
        S.search_filters(graph, FilterSpace(), PROTOCOL, trials=0)


def test_search_cli_on_a_proxy_writes_its_record_and_refuses_bad_input(tmp_path, capsys):
    graph_file = _write_graph(tmp_path / "g.npz")
    proxy = tmp_path / "proxy"
    assert _run(capsys, "condense", "--graph-file", graph_file, "--method", "random", "--ratio", "0.5",
                "--out", proxy)[0] == 0
    out = tmp_path / "search"
    code, err = _run(capsys, "search", proxy, "--trials", "6", "--batch", "4",
                     "--out", out)
    assert code == 0, err
    record = json.loads((out / "search.json").read_text())
    assert record["config"]["method"] == "random" and record["seed"] == 0 and "versions" in record
    results = record["results"]
    assert len(results["trials"]["lam"]) == 6 and results["best"] in results["trials"]["lam"]
    assert 0 <= results["original_graph"]["test_acc_of_pick"] <= 1 and set(record["timings"]) == {"search", "finalists"}
    assert results["original_graph"]["best"] == results["best"]  # one finalist: the search's best
    code, err = _run(capsys, "search", proxy, "--trials", "6", "--out", out)
    assert code == 2 and "finished search" in err
    for args, word in [(["--trials", "0"], "--trials must be >= 1 (got 0)"), (["--finalists", "-1"], "--finalists must be >= 0"),
                       (["--batch", "0", "--seeds", "-2"], "--batch must be >= 1 (got 0); --seeds must be >= 1 (got -2)"),
                       (["--sampler", "grid"], "grid"),
                       ([proxy, "--device", "cpu", "--protocol", "full"], "--protocol, --device: for image searches"),
                       ([tmp_path / "no-proxy"], "no-proxy"), (["--dataset", "imagenet"], "imagenet")]:
        target = tmp_path / "bad"
        code, err = _run(capsys, "search", *args, "--out", target)
        assert code == 2 and word in err and "Traceback" not in err
        assert not target.exists()
    (tmp_path / "a-file").write_text("")
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "study.journal").write_text("{not json\n")
    for target, word in [(tmp_path / "a-file", "is a file"), (tmp_path / "damaged", "study journal")]:
        code, err = _run(capsys, "search", proxy, "--trials", "4", "--out", target)
        assert code == 2 and word in err and "Traceback" not in err
    assert not (tmp_path / "damaged" / "search.json").exists()


def test_search_bench_compares_proxy_and_whole_graph_studies(tmp_path, monkeypatch):
    bench = bench_on_sbm("graph_search", tmp_path, monkeypatch)
    result = bench.main(["--datasets", "sbm", "--methods", "random", "--condense-seeds", "0", "1", "--trials", "6",
                         "--finalists", "3"])
    (row,) = result["rows"]
    total = row["condense_seconds"] + row["search_seconds"] + row["finalists_seconds"]
    assert row["total_seconds"] == pytest.approx(total) and row["time_saving"] == pytest.approx(row["whole_total_seconds"] / total)
    assert [r["condense_seed"] for r in row["runs"]] == [0, 1] and all(0 <= r["perf"] <= 1 for r in row["runs"])
    whole = result["whole_graph"][0]
    assert row["whole_graph_perf"] == whole["perf"] and row["whole_graph_perf_top1"] == whole["perf_top1"]
    assert result["complete"] and result["finalists"] == 3
    assert "| sbm | random | 0.5 |" in (tmp_path / "results" / "graph_search.md").read_text()
    # --recondense: the cached proxies are condensed again in the run (same seeds: the same proxies, the same studies)
    again = bench.main(["--datasets", "sbm", "--methods", "random", "--condense-seeds", "0", "1", "--trials", "6",
                        "--finalists", "3", "--recondense", "--name", "again"])
    assert [r["best"] for r in again["rows"][0]["runs"]] == [r["best"] for r in row["runs"]]
    assert "measured in this run" in (tmp_path / "results" / "again.md").read_text()
    assert "when each cached proxy was made" in (tmp_path / "results" / "graph_search.md").read_text()
