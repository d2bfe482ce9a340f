"""The command line on image data: condense an image set, evaluate its proxy, search NAS-Bench-201 cells on it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hcdc.artifacts import load_proxy, save_proxy
from hcdc.cli import main
from hcdc.data import load_image_file
from hcdc.errors import ConfigError
from hcdc.image.groundtruth import image_ground_truth
from hcdc.image.protocol import PROTOCOLS, prepare_data
from hcdc.image.search import ArchitectureSearch, search_architectures, trial_value
from hcdc.image.space import Architecture
from conftest import run_readme_snippet
from image_toys import toy_images

pytestmark = pytest.mark.usefixtures("one_thread")
SMOKE = PROTOCOLS["smoke"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HCDC_CACHE", str(tmp_path / "cache"))


def _image_file(path):
    """A toy image set in the generic .npz format: 3 classes of colour blobs, 8x8, with a test split."""
    data = toy_images(classes=3, train=40, val=0, size=8, seed=1)
    test = toy_images(classes=3, train=4, val=0, size=8, seed=2)
    np.savez(path, x=data.x_train.numpy(), y=data.y_train.numpy(), x_test=test.x_train.numpy(), y_test=test.y_train.numpy())
    return path


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_evaluate_reports_how_far_hcdc_moved_its_validation_images(tmp_path, capsys):
    images = _image_file(tmp_path / "blobs.npz")
    code, _, _ = _run(capsys, "condense", "--image-file", images, "--method", "hcdc", "--protocol", "smoke", "--ipc", 3,
                      "--out", tmp_path / "hcdc")
    assert code == 0
    code, out, _ = _run(capsys, "evaluate", tmp_path / "hcdc", "--plot", tmp_path / "hcdc.png")
    shift = json.loads((tmp_path / "hcdc.json").read_text())["results"]["val_shift"]
    assert code == 0 and 0 < shift < 1 and f"S_val shift {shift:.3f}" in out


def test_condense_evaluate_and_search_an_image_file(tmp_path, capsys):
    images = _image_file(tmp_path / "blobs.npz")
    proxy_dir = tmp_path / "dc"
    code, out, _ = _run(capsys, "condense", "--image-file", images, "--method", "dc", "--protocol", "smoke", "--ipc", 3,
                        "--out", proxy_dir)
    assert code == 0 and "3 images per class" in out
    proxy = load_proxy(proxy_dir)
    assert proxy.kind == "image" and proxy.meta["images_per_class"] == 3 and int(proxy.tensors["train_mask"].sum()) == 9
    assert proxy.meta["protocol"] == {"name": "smoke", **SMOKE.with_(ipc=3).as_dict()}
    assert proxy.meta["config"]["iterations"] == 1  # the smoke recipe (hcdc.image.recipes), not DC's 1000
    assert proxy.tensors["x"].shape[-2:] == (SMOKE.resolution, SMOKE.resolution)
    code, out, _ = _run(capsys, "info", proxy_dir)
    assert code == 0 and "protocol: smoke" in out and "proxy_epochs 5" in out
    code, _, err = _run(capsys, "evaluate", proxy_dir, "--archs", 1, "--plot", tmp_path / "one.png")
    assert code == 2 and err.strip() == "hcdc: error: ranking needs at least two architectures, got 1"
    assert not (tmp_path / "cache" / "image_groundtruth").exists()  # refused before training anything

    code, out, _ = _run(capsys, "evaluate", proxy_dir, "--plot", tmp_path / "dc.png")
    assert code == 0 and "3 NAS-Bench-201 architectures" in out and "Spearman" in out
    record = json.loads((tmp_path / "dc.json").read_text())
    view = prepare_data(load_image_file(images), SMOKE.with_(ipc=3))
    truth = image_ground_truth(view, SMOKE.architectures(), SMOKE.with_(ipc=3), progress=False)
    assert record["results"]["true_val_acc"] == truth.val_acc.tolist()  # the same (cached) ground truth
    assert len(record["results"]["score"]) == 3 and (tmp_path / "dc.png").stat().st_size > 0
    assert record["results"]["val_shift"] is None and "S_val shift" not in out  # DC's validation part is not learned

    code, out, _ = _run(capsys, "search", proxy_dir, "--trials", 5, "--finalists", 2, "--out", tmp_path / "s1")
    assert code == 0 and "best architecture(s) trained on blobs" in out
    found = json.loads((tmp_path / "s1" / "search.json").read_text())["results"]
    assert len(found["archs"]) == 5 and found["best"] in found["archs"]
    final = found["original_data"]
    best_two = [found["archs"][i] for i in np.argsort([-v for v in found["value"]], kind="stable")]
    assert final["archs"] == list(dict.fromkeys(best_two))[:2]
    retrained = image_ground_truth(view, [Architecture.parse(a) for a in final["archs"]], SMOKE.with_(ipc=3), progress=False)
    assert final["val_acc"] == retrained.val_acc.tolist() and final["pick"] == int(retrained.val_acc.argmax())

    # same seed, same search; a stopped search resumes from its journal with the trials it had
    assert _run(capsys, "search", proxy_dir, "--trials", 5, "--finalists", 0, "--out", tmp_path / "s2")[0] == 0
    again = json.loads((tmp_path / "s2" / "search.json").read_text())["results"]
    assert again["archs"] == found["archs"] and again["value"] == found["value"]
    (tmp_path / "s2" / "search.json").unlink()
    assert _run(capsys, "search", proxy_dir, "--trials", 7, "--finalists", 0, "--out", tmp_path / "s2")[0] == 0
    more = json.loads((tmp_path / "s2" / "search.json").read_text())["results"]
    assert more["archs"][:5] == found["archs"] and len(more["archs"]) == 7


def test_search_on_the_original_images_scores_trials_by_the_ground_truth(tmp_path, capsys):
    images = _image_file(tmp_path / "blobs.npz")
    code, _, _ = _run(capsys, "search", "--image-file", images, "--protocol", "smoke", "--trials", 4, "--finalists", 1,
                      "--out", tmp_path / "whole")
    assert code == 0
    found = json.loads((tmp_path / "whole" / "search.json").read_text())["results"]
    view = prepare_data(load_image_file(images), SMOKE)
    truth = image_ground_truth(view, [Architecture.parse(a) for a in found["archs"]], SMOKE, progress=False)
    expected = [trial_value(a, loss) for a, loss in zip(truth.val_acc.tolist(), truth.val_loss.tolist())]
    assert found["value"] == pytest.approx(expected, abs=1e-12)
    assert found["original_data"]["val_acc_of_pick"] == pytest.approx(max(truth.val_acc.tolist()))


def test_a_bad_device_is_one_line_exit_2(tmp_path, capsys):
    images = _image_file(tmp_path / "blobs.npz")
    assert _run(capsys, "condense", "--image-file", images, "--method", "random", "--protocol", "smoke", "--ipc", 3,
                "--out", tmp_path / "p")[0] == 0
    missing = "this machine has" if torch.cuda.is_available() else "CUDA is not available here"
    for device, message in [("tpu", "unknown device 'tpu'"), ("mps", "unsupported device 'mps'"), ("cuda:99", missing)]:
        for argv in (["evaluate", tmp_path / "p"], ["search", tmp_path / "p", "--trials", 2, "--out", tmp_path / "s"]):
            code, out, err = _run(capsys, *argv, "--device", device)
            assert code == 2 and err.startswith("hcdc: error: ") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "s").exists() and not (tmp_path / "p-scores.json").exists()
    code, _, err = _run(capsys, "search", tmp_path / "p", "--protocol", "smoke", "--trials", 2, "--out", tmp_path / "s")
    assert code == 2 and "a proxy is searched with the protocol it records" in err and not (tmp_path / "s").exists()
    code, _, err = _run(capsys, "evaluate", tmp_path / "p", "--configs", 5, "--seeds", 2)
    assert code == 2 and "--configs, --seeds: not for image proxies" in err and not (tmp_path / "p-scores.json").exists()


def test_the_readme_python_example_runs_on_an_image_proxy(tmp_path, capsys, monkeypatch):
    images = _image_file(tmp_path / "blobs.npz")
    assert _run(capsys, "condense", "--image-file", images, "--method", "hcdc", "--protocol", "smoke", "--ipc", 3,
                "--out", tmp_path / "proxies" / "cifar-hcdc")[0] == 0
    monkeypatch.chdir(tmp_path)
    scope = run_readme_snippet("recorded_protocol", "range(100)")
    proxy = scope["proxy"]
    assert scope["x_train"].shape == (9, 3, SMOKE.resolution, SMOKE.resolution) and len(scope["y_val"]) > 0
    assert int(proxy.tensors["train_mask"].sum()) == 9 and len(scope["study"].trials) == 3
    assert set(scope["study"].best_params) == {"width", "lr"} and 0 <= scope["study"].best_value <= 1


def _strict_json(path):
    """The JSON file ``path`` parsed as standard JSON: a bare NaN or Infinity is an error, as in jq or JSON.parse."""
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}, which is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_data_without_test_images_reports_perf_as_na_and_writes_standard_json(tmp_path, capsys):
    data = toy_images(classes=3, train=40, val=0, size=8, seed=1)
    images = tmp_path / "notest.npz"
    np.savez(images, x=data.x_train.numpy(), y=data.y_train.numpy())
    assert _run(capsys, "condense", "--image-file", images, "--method", "random", "--protocol", "smoke", "--ipc", 3,
                "--out", tmp_path / "p")[0] == 0
    code, out, _ = _run(capsys, "evaluate", tmp_path / "p", "--plot", tmp_path / "p.png")
    assert code == 0 and "Perf n/a (oracle n/a)" in out and "nan" not in out
    results = _strict_json(tmp_path / "p.json")["results"]
    assert results["perf"] is None and results["oracle_perf"] is None and -1 <= results["spearman"] <= 1
    # the ground truth cached with a null test accuracy is read back (a second evaluation trains nothing new)
    code, again, _ = _run(capsys, "evaluate", tmp_path / "p", "--plot", tmp_path / "q.png")
    second = _strict_json(tmp_path / "q.json")["results"]
    assert code == 0 and results["computed"] == 3 and second["computed"] == 0  # each architecture's numbers were cached
    timeless = lambda r: {k: v for k, v in r.items() if "seconds" not in k and k != "computed"}  # noqa: E731
    assert timeless(second) == timeless(results)
    for cache in (tmp_path / "cache" / "image_groundtruth").glob("*.json"):
        assert all(s["test_acc"] is None for e in _strict_json(cache)["archs"].values() for s in e["seeds"].values())
    code, out, _ = _run(capsys, "search", tmp_path / "p", "--trials", 3, "--finalists", 1, "--out", tmp_path / "s")
    assert code == 0 and "test accuracy n/a" in out
    assert _strict_json(tmp_path / "s" / "search.json")["results"]["original_data"]["test_acc_of_pick"] is None


def test_architecture_search_maximises_a_known_objective():
    """TPE over the 15,625 cells finds the optimum of a separable objective (the number of edges that agree
    with a target cell) in 120 trials; random search would find it with probability 120 / 5^6 < 1 %."""
    target = Architecture.parse("|nor_conv_3x3~0|+|nor_conv_3x3~0|skip_connect~1|+|skip_connect~0|nor_conv_3x3~1|avg_pool_3x3~2|")
    objective = lambda a: float(sum(o == t for o, t in zip(a.ops, target.ops)))  # noqa: E731
    found = search_architectures(objective, trials=120, sampler="tpe", seed=0, progress=False)
    assert isinstance(found, ArchitectureSearch) and found.best == target and found.value.max() == 6
    assert found.ranked(3)[0] == found.best and len(set(found.ranked(10))) == 10
    failing = search_architectures(lambda a: float("nan") if a.ops[0] == 0 else 1.0, trials=8, sampler="random",
                                   seed=0, progress=False)
    assert all((v == -float("inf")) == (a.ops[0] == 0) for a, v in zip(failing.archs, failing.value.tolist()))
    assert failing.best.ops[0] != 0


@pytest.mark.parametrize("argv, message", [
    (["condense", "--dataset", "cifar10", "--method", "gcond", "--protocol", "smoke"], "unknown image condenser 'gcond'"),
    (["condense", "--dataset", "cifar10", "--ratio", "0.5"], "--ratio is for graphs"),
    (["condense", "--dataset", "cora", "--ipc", "5"], "--ipc is for image datasets"),
    (["condense", "--dataset", "cifar10", "--protocol", "gpu"], "unknown image protocol 'gpu'"),
    (["condense", "--dataset", "cifar10", "--method", "dm", "--protocol", "smoke", "--options", '{"iters": 2}'],
     "unknown option"),
    (["condense", "--image-file", "IMAGES", "--method", "random", "--protocol", "smoke", "--ipc", "0"], "ipc"),
    (["condense", "--image-file", "IMAGES", "--method", "random", "--protocol", "smoke", "--ipc", "500"], "ipc"),
    (["condense", "--image-file", "IMAGES", "--graph-file", "IMAGES"], "not both"),
    (["condense", "--image-file", "MISSING.npz", "--method", "random", "--protocol", "smoke"], "missing file"),
])
def test_bad_image_input_to_condense_is_one_line_exit_2_and_no_output(tmp_path, capsys, argv, message):
    images = _image_file(tmp_path / "blobs.npz")
    argv = [str(images) if a == "IMAGES" else str(tmp_path / a) if a == "MISSING.npz" else a for a in argv]
    code, _, err = _run(capsys, *argv, "--out", tmp_path / "proxy")
    assert code == 2 and message in err and err.count("\n") == 1 and err.startswith("hcdc: error: ")
    assert not (tmp_path / "proxy").exists()


def test_an_image_proxy_without_a_protocol_is_refused_clearly(tmp_path, capsys):
    images = _image_file(tmp_path / "blobs.npz")
    assert _run(capsys, "condense", "--image-file", images, "--method", "random", "--protocol", "smoke",
                "--out", tmp_path / "p")[0] == 0
    proxy = load_proxy(tmp_path / "p")
    del proxy.meta["protocol"]
    save_proxy(proxy, tmp_path / "bare")
    for argv in (["evaluate", tmp_path / "bare"], ["search", tmp_path / "bare", "--out", tmp_path / "s"]):
        code, _, err = _run(capsys, *argv)
        assert code == 2 and "records no protocol" in err
    assert not (tmp_path / "s").exists()
    code, _, err = _run(capsys, "search", tmp_path / "p", "--graph-file", images, "--out", tmp_path / "s")
    assert code == 2 and "--graph-file is for graph searches" in err and not (tmp_path / "s").exists()
    assert torch.equal(load_proxy(tmp_path / "p").tensors["y"], proxy.tensors["y"])


def test_image_search_bench_compares_proxy_studies_with_the_original_data_study(tmp_path, monkeypatch):
    from conftest import load_bench

    bench = load_bench("image_search")
    with pytest.raises(ConfigError, match="unknown image condenser"):
        bench.main(["--protocol", "smoke", "--methods", "gcond", "--out-dir", str(tmp_path)])
    with pytest.raises(ConfigError, match="val_part must be one of"):
        bench.main(["--protocol", "smoke", "--protocol-options", '{"val_part": "test"}', "--out-dir", str(tmp_path)])
    monkeypatch.setattr(bench, "load_dataset", lambda name, root=None: toy_images(classes=3, train=20, val=10))
    args = ["--protocol", "smoke", "--methods", "random", "dc", "--trials", "4", "--finalists", "2",
            "--out-dir", str(tmp_path), "--name", "search_toy"]
    result = bench.main(args)
    ref, rows = result["original"], result["rows"]
    assert [r["method"] for r in rows] == ["random", "dc"] and result["complete"]
    # the baselines get the protocol's validation part: the paper's random split of their own images
    assert result["protocol"]["val_part"] == "split" and result["options"]["random"]["val_part"] == "split"
    view = prepare_data(toy_images(classes=3, train=20, val=10), SMOKE)
    tried = [Architecture.parse(a) for a in ref["trials"]["archs"]]
    truth = image_ground_truth(view, tried, SMOKE, progress=False)
    assert ref["trials"]["value"] == pytest.approx([trial_value(a, v) for a, v in
                                                    zip(truth.val_acc.tolist(), truth.val_loss.tolist())], abs=1e-12)
    unique = image_ground_truth(view, list(dict.fromkeys(tried)), SMOKE, progress=False)
    assert ref["search_seconds"] == pytest.approx(unique.compute_seconds)  # ground-truth cost of each cell once
    for row in rows:
        assert row["total_seconds"] == pytest.approx(row["condense_seconds"] + row["search_seconds"] + row["finalists_seconds"])
        assert row["time_saving"] == pytest.approx(ref["total_seconds"] / row["total_seconds"])
        run = row["runs"][0]
        pick = image_ground_truth(view, [Architecture.parse(run["pick"])], SMOKE, progress=False)
        assert run["perf"] == pytest.approx(float(pick.test_acc[0]))
    again = bench.main(args)  # same seeds, same studies (the proxies come from the cache)
    assert [r["runs"][0]["trials"]["archs"] for r in again["rows"]] == [r["runs"][0]["trials"]["archs"] for r in rows]
    assert "original data" in (tmp_path / "search_toy.md").read_text()


def test_an_interrupted_evaluate_resumes_when_rerun(tmp_path, capsys, monkeypatch):
    from hcdc.image import evaluate, groundtruth, training

    images = _image_file(tmp_path / "blobs.npz")
    assert _run(capsys, "condense", "--image-file", images, "--method", "random", "--protocol", "smoke", "--ipc", 3,
                "--out", tmp_path / "p")[0] == 0
    real_train, calls = training.train_networks, []

    def ctrl_c_on_the_fifth_chunk(*args, **kwargs):  # 3 ground-truth architectures, then one on the proxy
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    with monkeypatch.context() as m:
        for module in (groundtruth, evaluate):  # each calls the training it imported
            m.setattr(module, "train_networks", ctrl_c_on_the_fifth_chunk)
        code, _, err = _run(capsys, "evaluate", tmp_path / "p")
    assert code == 130 and "rerun the same command to resume" in err and not (tmp_path / "p-scores.json").exists()
    assert _run(capsys, "evaluate", tmp_path / "p")[0] == 0
    assert json.loads((tmp_path / "p-scores.json").read_text())["results"]["computed"] == 2  # one was kept


def test_an_interrupted_condense_resumes_when_rerun(tmp_path, capsys, monkeypatch):
    from hcdc import checkpoint
    from hcdc.checkpoint import Checkpoints

    monkeypatch.setattr(checkpoint, "SNAPSHOT_SECONDS", 0.0)
    images = _image_file(tmp_path / "blobs.npz")
    argv = ["condense", "--image-file", images, "--method", "dc", "--protocol", "smoke", "--ipc", 2,
            "--options", '{"iterations": 3}', "--out"]
    assert _run(capsys, *argv, tmp_path / "plain")[0] == 0
    original = Checkpoints.write

    def interrupted_write(self, name, tensors, meta):
        original(self, name, tensors, meta)
        raise KeyboardInterrupt  # Ctrl-C right after the first snapshot

    with monkeypatch.context() as m:
        m.setattr(Checkpoints, "write", interrupted_write)
        code, _, err = _run(capsys, *argv, tmp_path / "dc")
    assert code == 130 and "rerun the same command to resume" in err and not (tmp_path / "dc").exists()
    code, out, _ = _run(capsys, *argv, tmp_path / "dc")
    assert code == 0
    plain, resumed = load_proxy(tmp_path / "plain"), load_proxy(tmp_path / "dc")
    assert resumed.meta["resumed_from"] == {"dc": 1} and "resumed_from" not in plain.meta
    assert "resumed after an interruption: dc at iteration 1" in _run(capsys, "info", tmp_path / "dc")[1]
    assert all(torch.equal(t, resumed.tensors[k]) for k, t in plain.tensors.items())
    assert not any((tmp_path / "cache" / "snapshots").iterdir())  # nothing left once the proxy is written
    # --restart discards the snapshots of an interrupted run
    with monkeypatch.context() as m:
        m.setattr(Checkpoints, "write", interrupted_write)
        assert _run(capsys, *argv, tmp_path / "again")[0] == 130
    assert _run(capsys, *argv, tmp_path / "again", "--restart")[0] == 0
    assert "resumed_from" not in load_proxy(tmp_path / "again").meta
