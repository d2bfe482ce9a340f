"""The image track's evaluation protocol (hcdc.image.protocol), its figures, the `hcdc plot` command and
bench/image_table.py's option resolution; tiny images and networks only."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from hcdc.artifacts import FORMAT_VERSION, Proxy, save_proxy
from hcdc.cli import main as cli_main
from hcdc.data.image import ImageData, load_cifar_python
from hcdc.errors import ConfigError
from hcdc.image import cache as C
from hcdc.image import evaluate as E
from hcdc.image import protocol as P
from hcdc.image import recipes
from hcdc.image import training as T
from hcdc.image.condensers import IMAGE_CONDENSERS, make_image_condenser
from hcdc.image.evaluate import evaluate_image_proxy, proxy_score
from hcdc.image.figures import plot_ranking
from hcdc.image.groundtruth import image_ground_truth
from hcdc.image.protocol import PROTOCOLS, ImageProtocol, prepare_data
from hcdc.image.space import Architecture
from hcdc.image.training import score_architecture, train_architecture
from hcdc.metrics import seed_agreement
from conftest import load_bench
from image_toys import CONV, CONV2, NONE, toy_images
from test_data_image import _py2_pickle  # the official batches' Python 2 pickling

TINY = ImageProtocol(C=4, N=1, epochs=4, proxy_epochs=15, batch_size=16, seeds=(0,), num_archs=3, ipc=4)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HCDC_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)


def _images(n_per_class: int, classes: int, seed: int, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """An easy, separable toy task: class c is a bright square in quadrant c % 4 over a class colour, plus noise."""
    g = np.random.default_rng(seed)
    x = g.integers(0, 60, (n_per_class * classes, size, size, 3)).astype(np.int64)
    y = np.repeat(np.arange(classes), n_per_class)
    half = size // 2
    for i, c in enumerate(y):
        r, col = divmod(c % 4, 2)
        x[i, r * half:(r + 1) * half, col * half:(col + 1) * half, :] += 150
        x[i, ..., c % 3] += 40
    return torch.from_numpy(x.clip(0, 255).astype(np.uint8)), torch.from_numpy(y)


def toy_data(classes: int = 4, size: int = 8) -> ImageData:
    (xtr, ytr), (xv, yv), (xt, yt) = (_images(n, classes, s, size) for n, s in ((24, 0), (8, 1), (8, 2)))
    return ImageData("toy", tuple(f"c{i}" for i in range(classes)), xtr, xv, xt, ytr, yv, yt).validate()


# --- protocol -----------------------------------------------------------------------------------------


def test_presets_follow_the_paper_and_keys_are_stable():
    full, cpu = PROTOCOLS["full"], PROTOCOLS["cpu"]
    assert (full.C, full.N, full.epochs, full.batch_size, full.lr, full.momentum, full.weight_decay, full.grad_clip) == \
        (16, 1, 50, 64, 0.025, 0.9, 3e-4, 5.0)
    assert full.seeds == (0, 1, 2, 3, 4) and full.num_archs == 100 and full.ipc == 50 and full.resolution == 32
    assert full.train_subset is None and full.val_subset is None and full.amp and full.channels_last
    assert cpu.resolution == 16 and cpu.C == 8 and 20 <= cpu.num_archs <= 30 and cpu.ipc == 10 and len(cpu.seeds) == 3
    assert len(cpu.seeds_on_proxy) == 3
    # the baselines' validation part keeps the train:val proportion; at the cpu scale it must not shrink to a few images
    assert round(cpu.ipc * cpu.val_subset / cpu.train_subset) >= 10
    assert len(cpu.architectures()) == cpu.num_archs and cpu.architectures()[0] == full.architectures()[0]
    # keys: deterministic, equal for equal protocols, sensitive to the fields they cover
    assert full.proxy_key() == ImageProtocol(**{**full.as_dict(), "seeds": tuple(full.seeds)}).proxy_key()
    assert len({p.proxy_key() for p in PROTOCOLS.values()}) == len(PROTOCOLS)
    assert full.with_(proxy_epochs=49).proxy_key() != full.proxy_key() and full.with_(epochs=49).truth_key() != full.truth_key()
    # the ground-truth key ignores what only concerns proxies and the bench
    assert full.with_(proxy_epochs=7, ipc=10, num_archs=5, proxy_seeds=(0,), val_part="real").truth_key() == full.truth_key()
    # val_part changes how baseline proxies are made (their own keys), not how a proxy is evaluated;
    # the presets give the baselines the paper's validation part (a random split of their own images)
    assert full.with_(val_part="real").proxy_key() == full.proxy_key() and full.val_part == cpu.val_part == "split"
    # how many networks train at once changes results only by rounding: neither key
    assert full.with_(stack=1).proxy_key() == full.proxy_key() and full.with_(stack=1).truth_key() == full.truth_key()
    # pinned: a change here silently invalidates every cached ground truth
    assert full.truth_key() == "3d02b851f1a6c024"
    assert cpu.proxy_key() == "a631c868e8946a14"  # pinned: the key of every cached proxy score


@pytest.mark.parametrize("change", [dict(C=0), dict(epochs=1.5), dict(seeds=()), dict(seeds=(0, 0)), dict(lr=-1.0),
                                    dict(momentum=1.0), dict(resolution=0), dict(num_archs=101), dict(train_subset=True),
                                    dict(val_part="synthetic"), dict(stack=0)])
def test_invalid_protocols_are_config_errors(change):
    with pytest.raises(ConfigError, match="image protocol"):
        replace(TINY, **change)


def test_prepare_data_subsets_and_downsamples_idempotently():
    data = toy_data(size=16)
    protocol = TINY.with_(resolution=8, train_subset=10, val_subset=3)
    view = prepare_data(data, protocol)
    assert view.image_shape == (8, 8, 3) and len(view.y_train) == 40 and len(view.y_val) == 12
    assert torch.bincount(view.y_train).tolist() == [10] * 4 and len(view.y_test) == len(data.y_test)
    again = prepare_data(view, protocol)
    assert torch.equal(again.x_train, view.x_train) and torch.equal(again.y_val, view.y_val)
    # average pooling: a 2x2 block's mean, rounded
    first = int(P.class_subset(data.y_train, 10, 4)[0])
    expected = data.x_train[first:first + 1].permute(0, 3, 1, 2).float()
    expected = torch.nn.functional.avg_pool2d(expected, 2).round().permute(0, 2, 3, 1)
    assert torch.equal(view.x_train[:1].float(), expected)
    with pytest.raises(ConfigError, match="multiple"):
        prepare_data(data, TINY.with_(resolution=6))


# --- training and ground truth ----------------------------------------------------------------------------


def test_train_architecture_is_deterministic_and_learns():
    data = toy_data()
    x, y = data.normalized("train"), data.y_train
    a = train_architecture(CONV, x, y, TINY, seed=3)
    b = train_architecture(CONV, x, y, TINY, seed=3)
    c = train_architecture(CONV, x, y, TINY, seed=4)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    before = score_architecture(CONV, train_architecture(CONV, x, y, TINY, seed=3, epochs=0), x, y, TINY)
    after = score_architecture(CONV, a, x, y, TINY)
    assert after["loss"] < before["loss"] - 0.3 and after["acc"] > 0.5, (before, after)
    # unused operations keep their initial values
    init = train_architecture(CONV, x, y, TINY, seed=3, epochs=0)
    assert torch.equal(a["cells.0.edges.0.ops.nor_conv_1x1.1.weight"], init["cells.0.edges.0.ops.nor_conv_1x1.1.weight"])


def test_stacked_training_is_one_by_one_training_up_to_rounding():
    """Several (architecture, seed) networks trained as one vmapped model: each is its own one-by-one training."""
    data = toy_data()
    x, y = data.normalized("train"), data.y_train
    jobs = [(CONV, 0), (CONV2, 0), (CONV, 1), (NONE, 2)]  # NONE: no gradient reaches its stem and first cell
    stacked = T.train_stacked(jobs, x, y, TINY)
    for (arch, seed), params in zip(jobs, stacked):
        alone = train_architecture(arch, x, y, TINY, seed)
        init = train_architecture(arch, x, y, TINY, seed, epochs=0)
        assert params.keys() == alone.keys()
        assert sum(not torch.equal(alone[k], init[k]) for k in alone) > (2 if arch == NONE else 10)  # it trained
        for k in alone:
            torch.testing.assert_close(params[k], alone[k], atol=1e-5, rtol=1e-4)
            if torch.equal(alone[k], init[k]):  # left untouched one by one (unused op, no gradient): untouched here
                assert torch.equal(params[k], init[k]), k
    # the protocol's stack decides how many train at once; what they learn does not change
    grouped = T.train_networks(jobs, x, y, TINY.with_(stack=3))
    for a, b in zip(grouped, stacked):
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


def test_stacked_ground_truth_and_proxy_scores_match_one_by_one(tmp_path):
    data = toy_data()
    archs = [CONV, NONE, CONV2]
    stacked = TINY.with_(seeds=(0, 1), stack=4)  # two architectures x two seeds per stack, then one
    one = image_ground_truth(data, archs, stacked.with_(stack=1), cache=tmp_path / "one", progress=False)
    many = image_ground_truth(data, archs, stacked, cache=tmp_path / "many", progress=False)
    assert many.computed == 3 and [sorted(s) for s in many.per_seed] == [["0", "1"]] * 3
    for m in ("val_acc", "val_loss", "test_acc"):
        torch.testing.assert_close(getattr(many, m), getattr(one, m), atol=1e-4, rtol=1e-4)
    proxy = make_image_condenser("random").condense(data, TINY.ipc, seed=0)
    a = evaluate_image_proxy(proxy, data, archs, stacked.with_(stack=1), one, cache=tmp_path / "one")
    b = evaluate_image_proxy(proxy, data, archs, stacked, one, cache=tmp_path / "many")
    assert a.computed == b.computed == 3
    torch.testing.assert_close(b.proxy_loss, a.proxy_loss, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(b.proxy_acc, a.proxy_acc)


def test_ground_truth_is_cached_merged_and_locked(tmp_path, monkeypatch):
    data = toy_data()
    archs = [CONV, NONE]
    locks = []
    real_merge = C.merge_json_entries

    def spy(path, *args):
        locks.append(Path(path))
        return real_merge(path, *args)

    monkeypatch.setattr(C, "merge_json_entries", spy)
    first = image_ground_truth(data, archs, TINY, cache=tmp_path / "c", progress=False)
    assert first.computed == 2 and len(locks) == 2 and first.compute_seconds > 0
    assert first.val_acc[0] > first.val_acc[1]  # a conv cell beats the constant predictor
    assert 0 <= float(first.test_acc.min()) and float(first.test_acc.max()) <= 1

    def no_training(*args, **kwargs):
        raise AssertionError("cached architectures must not be retrained")

    monkeypatch.setattr(T, "train_architecture", no_training)
    second = image_ground_truth(data, archs[::-1], TINY, cache=tmp_path / "c", progress=False)
    assert second.computed == 0 and torch.equal(second.val_acc, first.val_acc.flip(0))
    monkeypatch.undo()
    # another process adds an entry while we train: both survive the merge
    path = Path(first.cache_file)
    stored = json.loads(path.read_text())
    real_train = T.train_architecture

    def train_and_interleave(*args, **kwargs):
        real_merge(path, "archs", {"|other~0|": {"val_acc": 0.5}}, {k: v for k, v in stored.items() if k != "archs"})
        return real_train(*args, **kwargs)

    monkeypatch.setattr(T, "train_architecture", train_and_interleave)
    third = image_ground_truth(data, [CONV2, CONV], TINY, cache=tmp_path / "c", progress=False)
    assert third.computed == 1
    entries = json.loads(path.read_text())["archs"]
    assert {CONV.to_str(), NONE.to_str(), CONV2.to_str(), "|other~0|"} <= set(entries)
    assert not list(path.parent.glob("*.tmp"))
    # another protocol or other data is another file
    other = image_ground_truth(data, [CONV], TINY.with_(epochs=1), cache=tmp_path / "c", progress=False)
    assert other.computed == 1 and other.cache_file != first.cache_file


def test_evaluate_proxy_reports_and_ranks_the_constant_network_last():
    data = toy_data()
    archs = [NONE, CONV, CONV2]
    truth = image_ground_truth(data, archs, TINY, progress=False)
    assert int(truth.val_acc.argmin()) == 0
    proxy = make_image_condenser("random").condense(data, TINY.ipc, seed=0)
    ev = evaluate_image_proxy(proxy, data, archs, TINY, truth)
    row = ev.row()
    assert {"spearman", "kendall", "top_k", "regret", "spearman_acc", "spearman_loss", "kendall_loss", "perf",
            "oracle_perf", "pick", "oracle_pick"} <= set(row)
    assert -1 <= row["spearman"] <= 1 and 0 <= row["perf"] <= 1
    assert row["oracle_perf"] == float(truth.test_acc[int(truth.val_acc.argmax())])
    assert int(ev.proxy_score.argmin()) == 0  # the proxy also puts the constant predictor last
    assert row["pick"] != NONE.to_str()
    assert len(ev.scores()["score"]) == 3
    with pytest.raises(ConfigError, match="other architectures"):
        evaluate_image_proxy(proxy, data, archs[:2], TINY, truth)


def test_proxy_evaluation_is_cached_per_architecture_and_resumes(tmp_path, monkeypatch):
    data = toy_data()
    archs = [NONE, CONV, CONV2]
    truth = image_ground_truth(data, archs, TINY, progress=False)
    proxy = make_image_condenser("random").condense(data, TINY.ipc, seed=0)
    real_train = E.train_networks
    calls = []

    def interrupted_after_one_chunk(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    monkeypatch.setattr(E, "train_networks", interrupted_after_one_chunk)
    with pytest.raises(KeyboardInterrupt):
        evaluate_image_proxy(proxy, data, archs, TINY, truth, cache=tmp_path / "c")
    monkeypatch.setattr(E, "train_networks", real_train)
    resumed = evaluate_image_proxy(proxy, data, archs, TINY, truth, cache=tmp_path / "c")
    assert resumed.computed == 2  # the first architecture's numbers were kept
    fresh = evaluate_image_proxy(proxy, data, archs, TINY, truth, cache=tmp_path / "fresh")
    assert fresh.computed == 3 and torch.equal(fresh.proxy_loss, resumed.proxy_loss)
    assert torch.equal(fresh.proxy_acc, resumed.proxy_acc) and fresh.report == resumed.report

    def no_training(*args, **kwargs):
        raise AssertionError("cached architectures must not be retrained")

    monkeypatch.setattr(E, "train_networks", no_training)
    again = evaluate_image_proxy(proxy, data, archs[::-1], TINY, image_ground_truth(data, archs[::-1], TINY, progress=False),
                                 cache=tmp_path / "c")
    assert again.computed == 0 and torch.equal(again.proxy_loss, resumed.proxy_loss.flip(0))
    assert again.seconds == pytest.approx(resumed.seconds) and again.seconds > again.wall_seconds  # first measured
    monkeypatch.undo()
    # another proxy, other proxy training or another class count is another file
    other = make_image_condenser("random").condense(data, TINY.ipc, seed=1)
    paths = {E.proxy_scores_path(E.proxy_parts(p, t), k, t, tmp_path / "c")
             for p, t, k in [(proxy, TINY, 3), (other, TINY, 3), (proxy, TINY.with_(proxy_epochs=2), 3),
                             (proxy, TINY.with_(proxy_seeds=(1,)), 3), (proxy, TINY, 4)]}
    assert len(paths) == 5
    # what only concerns the table or how many networks train at once shares the file
    same = {E.proxy_scores_path(E.proxy_parts(proxy, t), 3, t, tmp_path / "c")
            for t in (TINY, TINY.with_(stack=4), TINY.with_(num_archs=2, epochs=1, val_part="real"))}
    assert len(same) == 1


def test_a_gpu_protocol_on_the_cpu_warns_once_before_training(tmp_path, recwarn):
    data = toy_data()
    image_ground_truth(data, [CONV], TINY.with_(amp=True), cache=tmp_path, progress=False)
    (warning,) = [w for w in recwarn if "made for a CUDA GPU" in str(w.message)]
    assert "training 1 architecture(s) x 1 seed(s)" in str(warning.message)
    recwarn.clear()
    image_ground_truth(data, [CONV], TINY.with_(amp=True), cache=tmp_path, progress=False)  # cached: nothing to train
    image_ground_truth(data, [CONV2], TINY, cache=tmp_path, progress=False)  # a CPU protocol
    assert not [w for w in recwarn if "CUDA" in str(w.message)]


def test_proxy_score_breaks_accuracy_ties_by_loss_only():
    score = proxy_score([0.5, 0.5, 0.75, 0.25], [2.0, 1.0, 9.0, 0.1])
    assert score.argsort(descending=True).tolist() == [2, 1, 0, 3]


# --- CIFAR-100 ------------------------------------------------------------------------------------------


def _write_cifar100(parent: Path, per_class: int, test_per_class: int) -> Path:
    """A stand-in in the official CIFAR-100 python layout (train/test pickles with b'fine_labels', meta)."""
    folder = parent / "cifar-100-python"
    folder.mkdir(parents=True)
    g = np.random.default_rng(0)
    _py2_pickle(folder / "meta", {b"fine_label_names": [f"fine{i:02d}".encode() for i in range(100)],
                                  b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]})
    for name, n in (("train", per_class), ("test", test_per_class)):
        fine = np.repeat(np.arange(100), n)
        rows = g.integers(0, 256, (len(fine), 3072), dtype=np.uint8)
        batch = {b"filenames": [b"x.png"] * len(fine), b"batch_label": name.encode(), b"fine_labels": fine.tolist(),
                 b"coarse_labels": (fine // 5).tolist(), b"data": rows}
        _py2_pickle(folder / name, batch)
    return folder


def test_cifar100_stand_in_end_to_end(tmp_path):
    _write_cifar100(tmp_path, per_class=6, test_per_class=1)
    data = load_cifar_python(tmp_path, val_size=200)
    assert data.name == "cifar100" and data.num_classes == 100 and data.image_shape == (32, 32, 3)
    protocol = PROTOCOLS["smoke"].with_(num_archs=2, ipc=1, train_subset=None, val_subset=None)
    view = prepare_data(data, protocol)
    archs = protocol.architectures()
    truth = image_ground_truth(view, archs, protocol, progress=False)
    proxy = make_image_condenser("random").condense(view, protocol.ipc, seed=0)
    assert proxy.num_classes == 100 and proxy.tensors["x"].shape[-1] == 8
    ev = evaluate_image_proxy(proxy, view, archs, protocol, truth)
    assert -1 <= ev.report["spearman"] <= 1 and 0 <= ev.perf <= 1


def test_bench_runs_on_a_cifar100_stand_in(tmp_path):
    bench = load_bench("image_table")
    _write_cifar100(tmp_path / "data", per_class=120, test_per_class=1)  # 12,000 images: 10,000 become validation
    result = bench.main(["--smoke", "--dataset", "cifar100", "--data-root", str(tmp_path / "data"), "--methods", "random",
                         "--archs", "2", "--out-dir", str(tmp_path / "out")])
    assert result["complete"] and result["dataset"] == "cifar100" and result["data"]["num_classes"] == 100
    saved = json.loads((tmp_path / "out" / "image_table_smoke_cifar100.json").read_text())
    row = saved["rows"][0]
    assert row["method"] == "random" and len(row["scores"][0]) == 2 and len(saved["true_val_acc"]) == 2
    assert "Spearman" in (tmp_path / "out" / "image_table_smoke_cifar100.md").read_text()
    assert cli_main(["plot", "ranking", str(tmp_path / "out" / "image_table_smoke_cifar100.json"),
                     "--out", str(tmp_path / "fig.png")]) == 0
    # the ground truth is kept beside the results with its command; with the cache gone, it is restored from there
    committed = json.loads((tmp_path / "out" / "image_table_smoke_cifar100_groundtruth.json").read_text())
    assert committed["command"].startswith("python bench/image_table.py") and len(committed["archs"]) == 2
    Path(result["ground_truth_cache"]).unlink()
    # a second run resumes from the caches: nothing is trained again
    again = bench.main(["--smoke", "--dataset", "cifar100", "--data-root", str(tmp_path / "data"), "--methods", "random",
                        "--archs", "2", "--out-dir", str(tmp_path / "out")])
    assert again["rows"][0]["per_seed"][0]["cached_proxy"] and again["rows"][0]["scores"] == row["scores"]
    assert again["ground_truth_from_committed"] == 2 and again["true_val_acc"] == saved["true_val_acc"]
    assert again["ground_truth_seed_spearman"] is None  # the smoke protocol trains one ground-truth seed
    # a run under another name that changes only the proxies' protocol reuses that committed ground truth
    Path(result["ground_truth_cache"]).unlink()
    other = bench.main(["--smoke", "--dataset", "cifar100", "--data-root", str(tmp_path / "data"), "--methods", "random",
                        "--archs", "2", "--protocol-options", '{"proxy_epochs": 2}', "--name", "other",
                        "--out-dir", str(tmp_path / "out")])
    assert other["ground_truth_from_committed"] == 2 and other["true_val_acc"] == saved["true_val_acc"]
    assert other["protocol"]["proxy_epochs"] == 2 and other["rows"][0]["per_seed"][0]["cached_proxy"]
    # ... and points to it instead of committing a copy
    assert other["ground_truth_committed"] == "image_table_smoke_cifar100_groundtruth.json"
    assert not (tmp_path / "out" / "other_groundtruth.json").exists()
    # --render rebuilds the markdown from the JSON alone; total compute adds ground truth and every proxy's cost
    md = tmp_path / "out" / "image_table_smoke_cifar100.md"
    md.unlink()
    bench.main(["--render", "image_table_smoke_cifar100", "--out-dir", str(tmp_path / "out")])
    expected = saved["ground_truth_compute_seconds"] + len(saved["condense_seeds"]) * (row["condense_seconds"] + row["eval_seconds"])
    assert f"total compute {expected:.0f} s" in md.read_text()
    with pytest.raises(ConfigError, match="cannot read results file"):
        bench.main(["--render", "nope", "--out-dir", str(tmp_path / "out")])


def test_bench_jobs_make_the_same_table_side_by_side(tmp_path, monkeypatch):
    bench = load_bench("image_table")
    _write_cifar100(tmp_path / "data", per_class=120, test_per_class=1)
    common = ["--smoke", "--dataset", "cifar100", "--data-root", str(tmp_path / "data"), "--methods", "random", "dc",
              "--archs", "2"]
    args = [*common, "--seeds", "0", "1", "--name", "t"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the jobs get one thread each: the same sums, so the same numbers
    try:
        one = bench.main([*args, "--out-dir", str(tmp_path / "one")])
        monkeypatch.setenv("HCDC_CACHE", str(tmp_path / "cache2"))  # nothing cached: the jobs make everything
        two = bench.main([*args, "--jobs", "2", "--out-dir", str(tmp_path / "two")])
    finally:
        torch.set_num_threads(threads)
    assert two["jobs"] == 2 and two["threads_per_job"] == 1 and one["jobs"] == 1 and two["complete"]
    assert all(s["cached_proxy"] for row in two["rows"] for s in row["per_seed"])  # made by the jobs
    assert [r["scores"] for r in two["rows"]] == [r["scores"] for r in one["rows"]]
    assert [r["condense_seeds"] for r in two["rows"]] == [[0, 1], [0, 1]]
    assert "2 jobs side by side" in (tmp_path / "two" / "t.md").read_text()
    assert not (tmp_path / "cache2" / "image_table_jobs" / "t").exists()  # the jobs' own files are gone
    # tables of one seed each pool into the table of both seeds (every proxy and evaluation cached now)
    out = tmp_path / "two"
    for seed in ("0", "1"):
        bench.main([*common, "--seeds", seed, "--name", f"s{seed}", "--out-dir", str(out)])
    merged = bench.main(["--merge", "s1", "s0", "--name", "m", "--out-dir", str(out)])
    assert merged["condense_seeds"] == [0, 1] and [r["method"] for r in merged["rows"]] == ["random", "dc"]
    for key in ("scores", "picks", "per_seed", "spearman_mean", "spearman_std", "kendall_mean", "perf_mean", "perf_std",
                "top5_mean", "spearman_loss_mean", "val_shift", "condense_seeds", "proxy_dirs"):
        assert [r[key] for r in merged["rows"]] == [r[key] for r in two["rows"]], key
    assert [m["name"] for m in merged["merged_from"]] == ["s1", "s0"]
    assert "Merged from (per-seed results pooled): `s1.json` (condensation seeds [1]" in (out / "m.md").read_text()
    # an option that a file lacks (added since) counts as its default; a differing one does not merge
    older = json.loads((out / "s1.json").read_text())
    dc = next(r for r in older["rows"] if r["method"] == "dc")
    kept = {k: v for k, v in dc["options"].items() if v == make_image_condenser("dc").options[k]}
    assert kept
    dc["options"] = {k: v for k, v in dc["options"].items() if k not in kept}
    (out / "older.json").write_text(json.dumps(older))
    assert bench.main(["--merge", "s0", "older", "--name", "m2", "--out-dir", str(out)])["rows"] == merged["rows"]
    dc["options"][next(iter(kept))] = "other"
    (out / "older.json").write_text(json.dumps(older))
    # tables of other methods at the same seeds pool too; a method left with fewer seeds does not
    both = json.loads((out / "t.json").read_text())
    for method in ("random", "dc"):
        (out / f"only_{method}.json").write_text(json.dumps({**both, "rows": [r for r in both["rows"] if r["method"] == method]}))
    split = bench.main(["--merge", "only_random", "only_dc", "--name", "m3", "--out-dir", str(out)])
    seed0 = json.loads((out / "s0.json").read_text())
    (out / "s0_random.json").write_text(json.dumps({**seed0, "rows": [r for r in seed0["rows"] if r["method"] == "random"]}))
    assert [r["scores"] for r in split["rows"]] == [r["scores"] for r in two["rows"]]
    changed = json.loads((out / "s1.json").read_text())
    changed["protocol"]["lr"] *= 2
    (out / "lr.json").write_text(json.dumps(changed))
    for bad, message in ((["s0", "t"], r"method random: condensation seeds repeat \(\[0, 0, 1\]\)"),
                         (["s0", "lr"], "cannot merge lr into s0: they differ in protocol"),
                         (["s0", "older"], "cannot merge method dc: its options differ between s0, older"),
                         (["s1", "s0_random"], r"different condensation seeds \(random \[0, 1\], dc \[1\]\)"),
                         (["s0", "nope"], "cannot read results file"), (["s0"], "two or more results names")):
        with pytest.raises(ConfigError, match=message):
            bench.main(["--merge", *bad, "--name", "bad", "--out-dir", str(out)])
    with pytest.raises(ConfigError, match="a new --name"):
        bench.main(["--merge", "s0", "s1", "--name", "s0", "--out-dir", str(out)])
    assert not (out / "bad.json").exists() and not (out / "bad.md").exists()
    with pytest.raises(ConfigError, match="--jobs must be at least 1"):
        bench.main([*args, "--jobs", "0", "--out-dir", str(tmp_path / "bad")])
    monkeypatch.setattr(bench.sys, "executable", "false")  # every job fails at once
    monkeypatch.setenv("HCDC_CACHE", str(tmp_path / "cache3"))
    with pytest.raises(ConfigError, match=r"job\(s\) \[0, 1\] failed .*rerun to resume"):
        bench.main([*args, "--jobs", "2", "--out-dir", str(tmp_path / "three")])
    assert not (tmp_path / "bad").exists()


def test_stack_bench_times_stacks_against_one_by_one_training(tmp_path):
    bench = load_bench("image_stack")
    _write_cifar100(tmp_path / "data", per_class=120, test_per_class=1)
    args = ["--protocol", "smoke", "--dataset", "cifar100", "--data-root", str(tmp_path / "data"), "--archs", "2"]
    result = bench.main([*args, "--stacks", "2", "3", "--out-dir", str(tmp_path / "out")])
    assert [r["stack"] for r in result["rows"]] == [1, 2, 3] and result["train_images"] == 200  # ipc 2 x 100 classes
    assert all(r["networks"] == 2 and r["seconds"] > 0 for r in result["rows"]) and result["rows"][0]["speedup"] == 1
    assert all(r["max_difference"] < 1e-4 for r in result["rows"])  # the same training, rounded in another order
    assert "| stack |" in (tmp_path / "out" / "image_stack_smoke.md").read_text()
    # two epochs on fewer images timed; the preset's whole ground truth extrapolated per SGD step: smoke trains 3 archs x
    # 1 seed x 1 epoch on 20 images per class (2,000 images, 32 batches of 64), this run 2 epochs on 5 per class (8 batches)
    truth = bench.main([*args, "--stacks", "2", "--truth", "--out-dir", str(tmp_path / "out"), "--name", "truth",
                        "--protocol-options", '{"epochs": 2, "seeds": [0, 1], "train_subset": 5}'])
    assert truth["epochs"] == 2 and truth["seeds"] == [0, 1] and truth["train_images"] == 500
    est = truth["preset_estimate"]
    per_step = min(r["seconds_per_network"] for r in truth["rows"]) / (2 * 8)
    assert est["train_images"] == 2000 and est["network_steps"] == 3 * 32
    assert est["seconds_per_network_step"] == pytest.approx(per_step) and est["seconds"] == pytest.approx(3 * 32 * per_step)
    assert "3 architectures × 1 seeds × 1 epochs on 2,000 images" in (tmp_path / "out" / "truth.md").read_text()
    for bad, message in ((["--stacks", "1"], "at least 2"), (["--stacks", "2", "--archs", "0"], "--archs"),
                         (["--stacks", "2", "--protocol-options", '{"epoch": 1}'], "unknown image protocol field")):
        with pytest.raises(ConfigError, match=message):
            bench.main([*args, *bad, "--out-dir", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()


# --- condensation recipes ----------------------------------------------------------------------------


def test_recipes_resolve_for_every_method():
    bench = load_bench("image_table")
    cpu = PROTOCOLS["cpu"]
    for method in bench.DEFAULT_METHODS:
        if method not in IMAGE_CONDENSERS:
            continue
        options = recipes.method_options(method, "cpu", cpu)
        assert all(options[k] == v for k, v in recipes.CPU_OPTIONS[method].items() if k != "train_options")
    assert recipes.method_options("dc", "cpu", cpu)["iterations"] == 10
    assert recipes.method_options("dc", "full", PROTOCOLS["full"]) == make_image_condenser("dc", val_part="split").options
    if "hcdc" in IMAGE_CONDENSERS:
        hcdc = recipes.method_options("hcdc", "cpu", cpu)
        assert (hcdc["C"], hcdc["N"], hcdc["norm_groups"]) == (cpu.C, cpu.N, cpu.norm_groups)
    assert recipes.method_options("dm", "cpu", cpu, {"iterations": 3})["iterations"] == 3
    # the protocol's val_part reaches every baseline, not HCDC (which learns its validation part)
    assert all(recipes.method_options(m, "cpu", cpu)["val_part"] == "split" for m in IMAGE_CONDENSERS if m != "hcdc")
    assert "val_part" not in recipes.method_options("hcdc", "cpu", cpu)
    assert recipes.method_options("tm", "cpu", cpu.with_(val_part="real"))["val_part"] == "real"
    with pytest.raises(ConfigError, match="unknown image condenser"):
        recipes.method_options("nope", "cpu", cpu)
    with pytest.raises(ConfigError, match="unknown option"):
        recipes.method_options("dm", "cpu", cpu, {"itterations": 3})


def test_bench_argument_parsing():
    bench = load_bench("image_table")
    run = bench.resolve(bench.build_parser().parse_args(["--protocol", "cpu", "--methods", "random", "dm",
                                                         "--options", 'dm={"iterations": 5}']))
    assert run["name"] == "image_table_cpu" and run["seeds"] == [0, 1] and run["options"]["dm"]["iterations"] == 5
    smoke = bench.resolve(bench.build_parser().parse_args(["--smoke", "--archs", "2", "--ipc", "3"]))
    assert smoke["protocol"].num_archs == 2 and smoke["protocol"].ipc == 3 and smoke["name"] == "image_table_smoke"
    assert all(m in IMAGE_CONDENSERS for m in smoke["methods"])
    varied = bench.resolve(bench.build_parser().parse_args(
        ["--methods", "random", "--ipc", "50", "--protocol-options", '{"proxy_epochs": 20, "proxy_seeds": [0, 1]}']))
    assert (varied["protocol"].ipc, varied["protocol"].proxy_epochs, varied["protocol"].proxy_seeds) == (50, 20, (0, 1))
    assert varied["protocol"].truth_key() == PROTOCOLS["cpu"].truth_key()  # the same ground truth
    for bad in ('{"proxy_epoch": 20}', "[20]", '{"proxy_epochs": 0}', "{"):
        with pytest.raises(ConfigError):
            bench.resolve(bench.build_parser().parse_args(["--methods", "random", "--protocol-options", bad]))
    assert bench.parse_overrides(['dc={"iterations": 2}', 'dc={"width": 8}']) == {"dc": {"iterations": 2, "width": 8}}
    for bad in (["dc=notjson"], ["dc"], ['dc=[1]']):
        with pytest.raises(ConfigError):
            bench.parse_overrides(bad)
    with pytest.raises(ConfigError, match="not run"):
        bench.resolve(bench.build_parser().parse_args(["--methods", "random", "--options", 'dm={"iterations": 5}']))
    with pytest.raises(ConfigError, match="not an image dataset"):
        bench.resolve(bench.build_parser().parse_args(["--dataset", "cora", "--methods", "random"]))


# --- figures and `hcdc plot` ----------------------------------------------------------------------------


def _fake_results(n: int = 8) -> dict:
    g = np.random.default_rng(0)
    true = g.random(n)
    return {"dataset": "toy", "ipc": 2, "architectures": [Architecture.from_index(i).to_str() for i in range(n)],
            "true_val_acc": true.tolist(),
            "rows": [{"method": "random", "scores": [g.random(n).tolist(), g.random(n).tolist()], "spearman_mean": 0.1,
                      "spearman_std": 0.2},
                     {"method": "hcdc", "scores": [(true + 0.01 * g.random(n)).tolist()], "spearman_mean": 0.95,
                      "spearman_std": 0.0}]}


def _one_line_error(code, err, *words):
    lines = [line for line in err.splitlines() if line.startswith("hcdc")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("hcdc: error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word.lower() in lines[0].lower(), (word, lines[0])


def _graph_proxy(path: Path) -> Path:
    adj = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    meta = {"format_version": FORMAT_VERSION, "kind": "graph", "dataset": "g", "method": "random", "num_classes": 2,
            "seeds": [0], "config": {}, "versions": {}, "timings": {}, "ratio": 0.5}
    tensors = {"x": torch.eye(2), "adj": adj, "y": torch.tensor([0, 1]), "train_mask": torch.tensor([True, False]),
               "val_mask": torch.tensor([False, True])}
    return save_proxy(Proxy("graph", tensors, meta), path)


def test_plot_commands_write_pngs_and_fail_cleanly(tmp_path, capsys):
    results = tmp_path / "results.json"
    results.write_text(json.dumps(_fake_results()))
    out = tmp_path / "fig2.png"
    assert cli_main(["plot", "ranking", str(results), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_ranking(_fake_results(), tmp_path / "direct.png", methods=["hcdc"]).is_file()
    proxy_dir = save_proxy(make_image_condenser("random").condense(toy_data(), 3, seed=0), tmp_path / "proxy")
    out3 = tmp_path / "fig3.png"
    assert cli_main(["plot", "images", str(proxy_dir), "--out", str(out3)]) == 0
    assert out3.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()

    bad_cases = [
        (["plot", "ranking", str(tmp_path / "missing.json")], ["missing.json"]),
        (["plot", "images", str(_graph_proxy(tmp_path / "graph"))], ["graph"]),
        (["plot", "images", str(tmp_path / "no-proxy")], ["no-proxy"]),
        (["plot", "ranking", str(results), "--methods", "dm"], ["dm"]),
    ]
    (tmp_path / "junk.json").write_text("{not json")
    bad_cases.append((["plot", "ranking", str(tmp_path / "junk.json")], ["junk.json"]))
    (tmp_path / "empty.json").write_text(json.dumps({**_fake_results(), "rows": []}))
    bad_cases.append((["plot", "ranking", str(tmp_path / "empty.json")], ["rows"]))
    (tmp_path / "short.json").write_text(json.dumps({**_fake_results(), "true_val_acc": [0.5]}))
    bad_cases.append((["plot", "ranking", str(tmp_path / "short.json")], ["true_val_acc"]))
    for argv, words in bad_cases:
        target = tmp_path / "bad.png"
        code = cli_main([*argv, "--out", str(target)])
        _one_line_error(code, capsys.readouterr().err, *words)
        assert not target.exists()
    code = cli_main(["plot", "ranking", str(results), "--out", str(tmp_path / "fig.jpg")])
    _one_line_error(code, capsys.readouterr().err, "png")


def test_val_part_diagnostic_ranks_and_rejects_bad_requests(tmp_path):
    diag = load_bench("image_val_part")
    true = np.arange(5, dtype=float)
    scores = np.stack([true, true + np.array([0, 0, 0, 1, -1])])  # seed 1 swaps the top two: 1 - 6·2/(5·24) = 0.9
    out = diag.ranking(scores, true)
    assert out["spearman_per_seed"] == pytest.approx([1.0, 0.9]) and out["seed_to_seed"] == pytest.approx(0.9)
    assert 0.9 < out["spearman_of_mean"] < 1.0  # the mean ties the top two
    with pytest.raises(ConfigError, match="cannot read the table"):
        diag.main(["nothere", "dc:0", "--out-dir", str(tmp_path)])
    (tmp_path / "t.json").write_text(json.dumps({"rows": [{"method": "dc", "condense_seeds": [0]}]}))
    with pytest.raises(ConfigError, match="METHOD:SEED"):
        diag.main(["t", "dc", "--out-dir", str(tmp_path)])
    with pytest.raises(ConfigError, match="no proxy of method 'dm'"):
        diag.diagnose(json.loads((tmp_path / "t.json").read_text()), "dm", 0, 10)
    gone = {"rows": [{"method": "dc", "condense_seeds": [0], "proxy_dirs": [str(tmp_path / "gone")]}]}
    with pytest.raises(ConfigError, match="not in the cache"):
        diag.diagnose(gone, "dc", 0, 10)
    assert not list(tmp_path.glob("image_val_part*"))


def test_proxy_noise_diagnostic_measures_seed_agreement_and_its_ceiling(tmp_path, monkeypatch):
    noise = load_bench("image_proxy_noise")
    assert noise.spearman_brown(0.5, 3) == pytest.approx(0.75) and noise.spearman_brown(-0.1, 3) == 0.0
    for bad in ("nojson", "x=[1]", "x={bad", "={}"):
        with pytest.raises(ConfigError, match="--variant"):
            noise.main(["image_table_toy", "--variant", bad, "--out-dir", str(tmp_path)])
    monkeypatch.setattr(noise, "load_dataset", lambda name: toy_images(classes=3, train=8, val=6))
    protocol = PROTOCOLS["smoke"].with_(num_archs=3, train_subset=None, val_subset=None, ipc=2)
    archs = [str(a) for a in protocol.architectures()]
    table = {"dataset": "toy", "protocol": protocol.as_dict(), "architectures": archs, "true_val_acc": [0.3, 0.5, 0.4],
             "ground_truth_reliability": 0.8, "ground_truth_seed_spearman": 0.6, "rows": []}
    (tmp_path / "image_table_toy.json").write_text(json.dumps(table))
    with pytest.raises(ConfigError, match="unknown image protocol field"):  # checked before anything trains
        noise.main(["image_table_toy", "--variant", 'a={}', "--variant", 'b={"epoch": 3}', "--out-dir", str(tmp_path)])
    with pytest.raises(ConfigError, match="cannot change the seeds"):
        noise.main(["image_table_toy", "--variant", 'a={"proxy_seeds": [0, 1]}', "--out-dir", str(tmp_path)])
    with pytest.raises(ConfigError, match="at least 2"):
        noise.main(["image_table_toy", "--variant", "a={}", "--seeds", "1", "--out-dir", str(tmp_path)])
    assert not list(tmp_path.glob("image_proxy_noise*"))
    args = ["image_table_toy", "--seeds", "3", "--real-val", "4", "--variant", "base={}",
            "--variant", 'more={"ipc": 4, "proxy_epochs": 2}', "--out-dir", str(tmp_path)]
    first = noise.main(args)
    base, more = first["rows"]
    assert (base["train_images"], more["train_images"], base["real_val_images"]) == (6, 12, 12)
    assert (base["steps"], more["steps"]) == (protocol.epochs_on_proxy, 2)  # one batch of 6 per epoch; 12 in one batch too
    for row in first["rows"]:
        assert len(row["spearman_per_seed"]) == 3
        rel = noise.spearman_brown(row["seed_to_seed"], len(protocol.seeds_on_proxy))
        assert row["reliability_at_table_seeds"] == pytest.approx(rel)
        assert row["noise_ceiling"] == pytest.approx((0.8 * rel) ** 0.5)
    assert noise.main(args)["rows"][0]["spearman_per_seed"] == base["spearman_per_seed"]  # same seeds, same ranking
    assert "noise ceiling" in (tmp_path / "image_proxy_noise_toy.md").read_text()


def test_truth_scale_diagnostic_reranks_stored_proxy_scores_against_a_larger_truth(tmp_path, monkeypatch):
    scale = load_bench("image_truth_scale")
    y = torch.arange(3).repeat_interleave(10)
    small, large = P.class_subset(y, 2, 3), P.class_subset(y, 5, 3)
    assert set(small.tolist()) < set(large.tolist())  # a larger subset contains the table's training images
    monkeypatch.setenv("HCDC_CACHE", str(tmp_path / "cache"))
    data = toy_images(classes=3, train=8, val=6)
    monkeypatch.setattr(scale, "load_dataset", lambda name: data)
    protocol = PROTOCOLS["smoke"].with_(num_archs=3, train_subset=4, val_subset=None, ipc=2)
    archs = protocol.architectures()
    names = [str(a) for a in archs]
    bigger = image_ground_truth(data, archs, protocol.with_(train_subset=8, seeds=(0, 1)), progress=False)
    truth = bigger.val_acc.numpy()
    best, worst = int(np.argmax(truth)), int(np.argmin(truth))  # a proxy scoring exactly the larger truth, one its reverse
    rows = [{"method": "exact", "spearman_mean": 0.1, "perf_mean": 0.3, "scores": [truth.tolist()], "picks": [names[best]]},
            {"method": "reverse", "spearman_mean": 0.2, "perf_mean": 0.4, "scores": [(-truth).tolist(), (-truth).tolist()],
             "picks": [names[worst], names[worst]]}]
    table = {"dataset": "toy", "protocol": protocol.as_dict(), "architectures": names, "true_val_acc": truth.tolist(),
             "ground_truth_seed_spearman": 0.6, "ground_truth_reliability": 0.75, "rows": rows}
    (tmp_path / "image_table_toy.json").write_text(json.dumps(table))
    for bad, words in (("x={bad", "--variant"), ('x={"C": 4}', "changes only"), ('x={"epoch": 2}', "changes only")):
        with pytest.raises(ConfigError, match=words):
            scale.main(["image_table_toy", "--variant", 'ok={"seeds": [0, 1]}', "--variant", bad, "--out-dir", str(tmp_path)])
    with pytest.raises(ConfigError, match="cannot read the table"):
        scale.main(["nothere", "--variant", "a={}", "--out-dir", str(tmp_path)])
    assert not list(tmp_path.glob("image_truth_scale*"))
    result = scale.main(["image_table_toy", "--variant", 'more={"train_subset": 8, "seeds": [0, 1]}', "--out-dir", str(tmp_path)])
    (variant,) = result["variants"]
    assert variant["true_val_acc"] == pytest.approx(truth.tolist())  # the cached larger truth, not retrained
    assert variant["spearman_with_table_truth"] == pytest.approx(1.0) and variant["train_per_class"] == 8
    per_seed = [[bigger.per_seed[j][str(s)]["val_acc"] for j in range(3)] for s in (0, 1)]
    assert (variant["truth_seed_spearman"], variant["truth_reliability"]) == pytest.approx(seed_agreement(per_seed))
    exact, reverse = variant["rows"]
    oracle = float(bigger.test_acc[best])
    assert exact["spearman_per_seed"] == pytest.approx([1.0]) and exact["perf_mean"] == pytest.approx(oracle)
    assert reverse["spearman_mean"] == pytest.approx(-1.0) and reverse["spearman_std"] == pytest.approx(0.0)
    assert reverse["perf_mean"] == pytest.approx(float(bigger.test_acc[worst])) and reverse["oracle_perf"] == oracle
    assert [(r["table_spearman"], r["table_perf"]) for r in (exact, reverse)] == [(0.1, 0.3), (0.2, 0.4)]
    assert "ρ this truth" in (tmp_path / "image_truth_scale_toy.md").read_text()


def test_truth_scale_compares_with_the_ground_truth_another_run_stored(tmp_path):
    scale = load_bench("image_truth_scale")
    protocol = PROTOCOLS["smoke"].with_(num_archs=4)
    names = [str(a) for a in protocol.architectures()]
    mine, theirs = [0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]  # the other run's truth is exactly reversed
    rows = [{"method": "m", "spearman_mean": 1.0, "perf_mean": 0.5, "scores": [mine], "picks": [names[3]]}]
    base = {"dataset": "toy", "protocol": protocol.as_dict(), "architectures": names, "data_fingerprint": "f",
            "ground_truth_seed_spearman": 0.5, "ground_truth_reliability": 0.7, "ground_truth_compute_seconds": 9.0}
    (tmp_path / "image_table_toy.json").write_text(json.dumps({**base, "true_val_acc": mine, "rows": rows}))
    (tmp_path / "again").mkdir()
    other = {**base, "true_val_acc": theirs, "true_test_acc": [0.6, 0.5, 0.4, 0.3], "ground_truth_seed_spearman": 0.8}
    (tmp_path / "again" / "image_table_toy.json").write_text(json.dumps(other))
    (tmp_path / "elsewhere.json").write_text(json.dumps({**other, "data_fingerprint": "g"}))
    (tmp_path / "fewer.json").write_text(json.dumps({**other, "architectures": names[:3]}))
    for bad, words in ((["elsewhere"], "other data"), (["fewer"], "same dataset and architectures"), ([], "at least one")):
        with pytest.raises(ConfigError, match=words):
            scale.main(["image_table_toy", *(a for b in bad for a in ("--truth-of", b)), "--out-dir", str(tmp_path)])
    assert not list(tmp_path.glob("image_truth_scale*"))
    result = scale.main(["image_table_toy", "--truth-of", "again/image_table_toy", "--out-dir", str(tmp_path)])
    (variant,) = result["variants"]
    assert variant["variant"] == "again/image_table_toy" and variant["spearman_with_table_truth"] == pytest.approx(-1.0)
    assert (variant["truth_seed_spearman"], variant["truth_compute_seconds"]) == (0.8, 9.0)
    (row,) = variant["rows"]
    assert row["spearman_mean"] == pytest.approx(-1.0) and row["perf_mean"] == 0.3 and row["oracle_perf"] == 0.6


def test_bench_scripts_report_bad_input_in_one_line_with_exit_code_2(tmp_path, capsys):
    from hcdc.errors import exit_on_user_error

    def bad():
        raise ConfigError("no such table")

    with pytest.raises(SystemExit) as stop:
        exit_on_user_error(bad, "image_table")
    assert stop.value.code == 2 and capsys.readouterr().err == "image_table: error: no such table\n"
    exit_on_user_error(lambda: None, "image_table")  # a run without error returns normally
