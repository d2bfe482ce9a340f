"""Tests for the KIP (hcdc.image.condensers.kip) and TM/MTT (hcdc.image.condensers.tm) image condensers."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load

from hcdc.artifacts import load_proxy, save_proxy
from hcdc.data.image import ImageData
from hcdc.errors import ConfigError
from hcdc.image.condensers import (
    IMAGE_CONDENSERS,
    KIPCondenser,
    TMCondenser,
    make_image_condenser,
    val_per_class,
    validation_split,
)
from hcdc.image.condensers.base import seeded_generator
from hcdc.image.condensers.kip import (
    centered_one_hot,
    kernel_matrix,
    kernel_network,
    krr_loss,
    krr_predict,
    parameter_jacobian,
    support_target_kernels,
)
from hcdc.image.condensers.nets import new_convnet
from hcdc.image.condensers.tm import (
    EXPERT_STREAM,
    checkpoint_name,
    expert_cache_dir,
    image_fingerprint,
    load_checkpoint,
    prepare_experts,
    trajectory_matching_loss,
    unroll_student,
)
from hcdc.models.convnet import ConvNet

from image_toys import toy_images

pytestmark = pytest.mark.usefixtures("one_thread")

KIP_TINY = {"iterations": 3, "batch_target": 16, "width": 8, "depth": 2}
TM_TINY = {
    "iterations": 3,
    "experts": 2,
    "expert_epochs": 3,
    "max_start_epoch": 2,
    "expert_epochs_to_match": 1,
    "syn_steps": 3,
    "batch_syn": 4,
    "batch_expert": 32,
    "width": 8,
    "depth": 2,
    "lr_img": 100.0,
}
TINY = {"kip": KIP_TINY, "tm": TM_TINY}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private HCDC_CACHE for the module (TM's expert trajectories)."""
    root = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HCDC_CACHE", str(root))
        yield root


@pytest.fixture(scope="module")
def data() -> ImageData:
    return toy_images()


@pytest.fixture(scope="module")
def proxies(data, cache):
    """Each method's proxy at ipc=3, twice at seed 0 and once at seed 1."""
    return {name: [make_image_condenser(name, **TINY[name]).condense(data, 3, seed) for seed in (0, 0, 1)] for name in TINY}


# --------------------------------------------------------------------------- registry and options


def test_registered_with_their_options():
    assert {"kip", "tm"} <= set(IMAGE_CONDENSERS)
    assert IMAGE_CONDENSERS["kip"] is KIPCondenser and IMAGE_CONDENSERS["tm"] is TMCondenser
    kip = make_image_condenser("kip", lr=1, kernel="nngp", learn_labels=True)
    assert kip.options == {**KIPCondenser.defaults, "lr": 1.0, "kernel": "nngp", "learn_labels": True}
    tm = make_image_condenser("tm", lr_img=10)
    assert tm.options["lr_img"] == 10.0 and tm.options["batch_syn"] is None
    assert tm.options["strategy"] == "color_crop_cutout_flip_scale_rotate"


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("kip", {"kernel": "rbf"}, r"one of \['ntk', 'nngp'\]"),
        ("kip", {"learn_labels": "yes"}, r"one of \[False, True\]"),
        ("kip", {"learn_labels": 1}, "must be True or False"),
        ("kip", {"ridge": 0}, "positive number"),
        ("kip", {"batch_target": 0}, "integer >= 1"),
        ("kip", {"init": "zeros"}, r"one of \['real', 'noise'\]"),
        ("kip", {"strategy": "flip"}, "unknown option"),
        ("tm", {"expert_epochs": 3, "max_start_epoch": 3, "expert_epochs_to_match": 2}, "reaches epoch 4, beyond expert_epochs=3"),
        ("tm", {"syn_steps": 0}, "integer >= 1"),
        ("tm", {"expert_seed": -1}, "integer >= 0"),
        ("tm", {"lr_lr": -1.0}, "positive number"),
        ("tm", {"strategy": "blur"}, "unknown augmentation group"),
    ],
)
def test_bad_option_values(name, options, message):
    with pytest.raises(ConfigError, match=message):
        make_image_condenser(name, **options)


def test_tm_accepts_the_last_start_that_fits():
    make_image_condenser("tm", expert_epochs=3, max_start_epoch=2, expert_epochs_to_match=2)  # starts 0, 1 -> epochs 2, 3


# --------------------------------------------------------------------------- both methods


@pytest.mark.parametrize("name", sorted(TINY))
def test_proxy_is_valid_sized_and_deterministic(name, data, proxies, tmp_path):
    proxy, again, other = proxies[name]
    proxy.validate()
    assert proxy.kind == "image" and proxy.meta["method"] == name
    assert proxy.class_counts("train") == [3, 3, 3] and proxy.class_counts("val") == [val_per_class(data, 3)] * 3
    x = proxy.tensors["x"]
    assert x.shape == (9 + 3, 3, 8, 8) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert proxy.meta["config"] == make_image_condenser(name, **TINY[name]).options
    assert proxy.meta["timings"] and all(v >= 0 for v in proxy.meta["timings"].values())
    assert len(proxy.meta["matching_history"]) == TINY[name]["iterations"]
    assert torch.equal(proxy.tensors["val_source"], validation_split(data, 3, 0))
    # deterministic under a seed, different under another
    assert set(proxy.tensors) == set(again.tensors)
    assert all(torch.equal(t, again.tensors[k]) for k, t in proxy.tensors.items())
    assert proxy.meta["matching_history"] == again.meta["matching_history"]
    assert not torch.equal(x, other.tensors["x"])
    loaded = load_proxy(save_proxy(proxy, tmp_path / name))
    assert loaded.meta == proxy.meta
    assert all(torch.equal(t, loaded.tensors[k]) for k, t in proxy.tensors.items())


@pytest.mark.parametrize("name", sorted(TINY))
def test_progress_bar(name, data, cache, capsys):
    make_image_condenser(name, **{**TINY[name], "iterations": 1}).condense(data, 1, 0, progress=True)
    assert name.upper() in capsys.readouterr().err


# --------------------------------------------------------------------------- KIP: kernels and KRR


def test_centered_one_hot():
    y = centered_one_hot(torch.tensor([0, 2, 1]), 4)
    assert y.shape == (3, 4) and torch.allclose(y.sum(1), torch.zeros(3))
    assert y[0].tolist() == [0.75, -0.25, -0.25, -0.25] and y[1, 2] == 0.75


def test_parameter_jacobian_matches_per_image_autograd():
    net = ConvNet(3, 1, (8, 8), width=4, depth=2, generator=torch.Generator().manual_seed(0))
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    params = list(net.parameters())
    rows = [torch.cat([g.flatten() for g in torch.autograd.grad(net(x[i : i + 1]).squeeze(), params)]) for i in range(5)]
    jac = parameter_jacobian(net.requires_grad_(False), x, chunk=2)
    assert jac.shape == (5, sum(p.numel() for p in params))
    assert torch.allclose(jac, torch.stack(rows), atol=1e-5)


@pytest.mark.parametrize("kernel", ["ntk", "nngp"])
def test_kernel_matrix_is_symmetric_psd_and_consistent(kernel, data):
    g = torch.Generator().manual_seed(0)
    nets = [kernel_network(data, 8, 2, g) for _ in range(2)]
    x = data.normalized("train")[::6]  # 15 images
    k = kernel_matrix(nets, kernel, x)
    assert k.shape == (15, 15) and torch.equal(k, k.T)
    assert torch.linalg.eigvalsh(k.double()).min() > -1e-5 * k.diagonal().mean()
    k_ss, k_ts = support_target_kernels(nets, kernel, x[:6], x)
    assert torch.allclose(k_ss, k[:6, :6], rtol=1e-4, atol=1e-5) and torch.allclose(k_ts, k[:, :6], rtol=1e-4, atol=1e-5)
    assert torch.allclose(kernel_matrix(nets, kernel, x, x[:6]), k[:, :6], rtol=1e-4, atol=1e-5)


def test_krr_interpolates_when_the_support_set_is_the_target_set(data):
    net = kernel_network(data, 8, 2, torch.Generator().manual_seed(0))
    x = data.normalized("train")[::9]  # 10 images, far fewer than the kernel's features
    y = centered_one_hot(data.y_train[::9], 3)
    k = kernel_matrix([net], "ntk", x)
    for ridge in (0.0, 1e-12):
        assert torch.allclose(krr_predict(k, k, y, ridge), y, atol=1e-3)
        assert float(krr_loss(k, k, y, y, ridge)) < 1e-6
    # the ridge is scaled by the mean diagonal: the prediction does not change when the kernel is scaled
    pred = krr_predict(k, k[:4], y, 0.1)
    assert torch.allclose(krr_predict(1000 * k, 1000 * k[:4], y, 0.1), pred, atol=1e-5)
    lam = 0.1 * torch.trace(k.double()) / 10
    expected = k[:4].double() @ torch.linalg.inv(k.double() + lam * torch.eye(10, dtype=torch.float64)) @ y.double()
    assert torch.allclose(pred.double(), expected, atol=1e-6)
    assert pred.abs().max() < y.abs().max()  # a large ridge shrinks


def test_krr_loss_gradient_reaches_support_images_exactly():
    """The NTK's image gradient is a second derivative (vmap of grad, then autograd): check it by finite differences."""
    net = ConvNet(2, 1, (4, 4), width=3, depth=1, generator=torch.Generator().manual_seed(0)).double().requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    x_s = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    x_t = torch.randn(5, 2, 4, 4, generator=g, dtype=torch.float64)
    y_s, y_t = centered_one_hot(torch.tensor([0, 1, 1]), 2).double(), centered_one_hot(torch.tensor([0, 1, 0, 1, 1]), 2).double()

    def loss(x):
        k_ss, k_ts = support_target_kernels([net], "ntk", x, x_t)
        return krr_loss(k_ss, k_ts, y_s, y_t, 1e-3)

    assert torch.autograd.gradcheck(loss, (x_s,), eps=1e-6, atol=1e-5)


# --------------------------------------------------------------------------- KIP: the method


def held_out_krr_loss(nets: list[ConvNet], kernel: str, data: ImageData, proxy) -> float:
    """KRR loss on the whole validation split (never a KIP target) of the proxy's training images, kernel averaged over ``nets``."""
    mask = proxy.tensors["train_mask"]
    y_s = proxy.tensors.get("label_vectors", centered_one_hot(proxy.tensors["y"][mask], data.num_classes))
    with torch.no_grad():
        k_ss, k_ts = support_target_kernels(nets, kernel, proxy.tensors["x"][mask], data.normalized("val"))
        return float(krr_loss(k_ss, k_ts, y_s, centered_one_hot(data.y_val, data.num_classes), 1e-6))


@pytest.mark.parametrize("kernel, init, factor", [("ntk", "noise", 0.75), ("ntk", "real", 0.9), ("nngp", "noise", 0.75)])
def test_kip_lowers_the_held_out_krr_loss_under_fixed_networks(kernel, init, factor, data):
    options = {"batch_target": 32, "width": 8, "depth": 2, "kernel": kernel, "init": init, "lr": 0.03}
    start = make_image_condenser("kip", iterations=0, **options).condense(data, 2, 0)
    end = make_image_condenser("kip", iterations=40, **options).condense(data, 2, 0)
    history = end.meta["matching_history"]
    assert len(history) == 40 and sum(history[-5:]) < sum(history[:5])
    g = torch.Generator().manual_seed(123)
    nets = [kernel_network(data, 8, 2, g) for _ in range(4)]  # fixed networks KIP never saw
    assert held_out_krr_loss(nets, kernel, data, end) < factor * held_out_krr_loss(nets, kernel, data, start)
    # (ratios seen: about 0.55, 0.8 and 0.57 on four such ensembles)


def test_kip_learns_labels_when_asked(data):
    proxy = make_image_condenser("kip", **{**KIP_TINY, "learn_labels": True}).condense(data, 2, 0)
    labels = proxy.tensors["label_vectors"]
    initial = centered_one_hot(torch.arange(3).repeat_interleave(2), 3)
    assert labels.shape == (6, 3) and labels.dtype == torch.float32 and not torch.equal(labels, initial)
    assert torch.equal(proxy.tensors["y"][proxy.tensors["train_mask"]], torch.arange(3).repeat_interleave(2))
    assert "label_vectors" not in make_image_condenser("kip", **KIP_TINY).condense(data, 2, 0).tensors


def test_kip_reports_divergence(data):
    with pytest.raises(ConfigError, match="KIP diverged at iteration"):
        make_image_condenser("kip", **{**KIP_TINY, "lr": 1e30, "iterations": 5}).condense(data, 2, 0)


# --------------------------------------------------------------------------- TM: unrolled student and loss


def test_trajectory_matching_loss_is_normalised():
    g = torch.Generator().manual_seed(0)
    start = {"a": torch.randn(3, 2, generator=g), "b": torch.randn(4, generator=g)}
    target = {"a": torch.randn(3, 2, generator=g), "b": torch.randn(4, generator=g)}
    assert float(trajectory_matching_loss(start, start, target)) == pytest.approx(1.0)
    assert float(trajectory_matching_loss(target, start, target)) == 0.0
    half = {k: (start[k] + target[k]) / 2 for k in start}
    assert float(trajectory_matching_loss(half, start, target)) == pytest.approx(0.25)


def test_unrolled_student_is_sgd_and_differentiable():
    net = ConvNet(2, 3, (4, 4), width=3, depth=1, generator=torch.Generator().manual_seed(0)).double()
    start = {k: p.detach().clone() for k, p in net.named_parameters()}
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 2, 4, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    lr = torch.tensor(0.1, dtype=torch.float64)
    # one full-batch step without augmentation is plain SGD
    one = unroll_student(net, start, x, y, lr, 1, 6, torch.Generator(), None)
    grads = torch.autograd.grad(F.cross_entropy(net(x), y), list(net.parameters()))
    for (k, p), gp in zip(net.named_parameters(), grads):
        assert torch.allclose(one[k], p - 0.1 * gp)
    target = {k: v + 0.01 * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in start.items()}

    def loss(images, step):
        student = unroll_student(net, start, images, y, step, 3, 4, torch.Generator().manual_seed(2), "flip")
        return trajectory_matching_loss(student, start, target)

    assert torch.autograd.gradcheck(loss, (x.clone().requires_grad_(), lr.clone().requires_grad_()), eps=1e-6, atol=1e-5)


# --------------------------------------------------------------------------- TM: experts and their cache


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, copied into memory (a memory map would break when the test damages the file)."""
    return load(path.read_bytes())


def test_experts_are_cached_as_safetensors_and_reused(data, cache, proxies):
    folder = expert_cache_dir(data, make_image_condenser("tm", **TM_TINY).options)
    assert folder.parent == cache / "tm_experts"
    files = sorted(folder.iterdir())
    assert [f.name for f in files] == ["expert-0000.safetensors", "expert-0001.safetensors"]
    first, again, other_seed = proxies["tm"]
    assert first.meta["experts"] == {"cache": str(folder), "trained": 2, "loaded": 0, "rebuilt": []}
    assert again.meta["experts"] == {"cache": str(folder), "trained": 0, "loaded": 2, "rebuilt": []}
    assert other_seed.meta["experts"]["trained"] == 0  # experts do not depend on the condensation seed
    assert again.meta["timings"]["experts"] < first.meta["timings"]["experts"]
    # each file: the expert's parameters at epochs 0..expert_epochs, epoch 0 being its seeded initialisation
    tensors = read_tensors(files[1])
    net = new_convnet(data, 8, 2, seeded_generator(0, EXPERT_STREAM + 1))
    names = [k for k, _ in net.named_parameters()]
    assert set(tensors) == {checkpoint_name(e, k) for e in range(4) for k in names}
    assert all(torch.equal(tensors[checkpoint_name(0, k)], p) for k, p in net.named_parameters())
    assert not torch.equal(tensors[checkpoint_name(3, "classifier.weight")], tensors[checkpoint_name(0, "classifier.weight")])
    assert torch.equal(load_checkpoint(files[1], 2, names)["convs.0.weight"], tensors[checkpoint_name(2, "convs.0.weight")])


def test_expert_cache_key_follows_data_and_expert_options(data):
    options = make_image_condenser("tm", **TM_TINY).options
    assert image_fingerprint(data) == image_fingerprint(toy_images())
    assert image_fingerprint(toy_images(seed=1)) != image_fingerprint(data)
    assert expert_cache_dir(toy_images(seed=1), options) != expert_cache_dir(data, options)
    assert expert_cache_dir(data, {**options, "expert_epochs": 4}) != expert_cache_dir(data, options)
    assert expert_cache_dir(data, {**options, "lr_img": 1.0, "iterations": 9}) == expert_cache_dir(data, options)


def corrupt_byte(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    "damage, problem",
    [("garbage", "not a readable safetensors file"), ("truncated", "not a readable safetensors file"), ("flipped", "checksum mismatch")],
)
def test_a_corrupt_expert_file_is_rebuilt(damage, problem, data, tmp_path, monkeypatch):
    monkeypatch.setenv("HCDC_CACHE", str(tmp_path))
    options = {**TM_TINY, "experts": 2, "iterations": 2}
    first = make_image_condenser("tm", **options).condense(data, 2, 0)
    path = Path(first.meta["experts"]["cache"]) / "expert-0001.safetensors"
    good, good_tensors = path.read_bytes(), read_tensors(path)
    if damage == "garbage":
        path.write_bytes(b"not a safetensors file")
    elif damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    else:  # parses fine, one weight byte changed: only the checksum notices
        corrupt_byte(path, len(good) - 3)
    with pytest.warns(UserWarning, match=rf"expert-0001.safetensors is unusable \({problem}.*\); retraining expert 1"):
        second = make_image_condenser("tm", **options).condense(data, 2, 0)
    assert second.meta["experts"]["trained"] == 1 and second.meta["experts"]["rebuilt"] == [1]
    rebuilt = read_tensors(path)  # retrained bit for bit (the header's key order may differ)
    assert set(rebuilt) == set(good_tensors) and all(torch.equal(t, rebuilt[k]) for k, t in good_tensors.items())
    assert all(torch.equal(t, second.tensors[k]) for k, t in first.tensors.items())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert make_image_condenser("tm", **options).condense(data, 2, 0).meta["experts"]["trained"] == 0


def test_prepare_experts_trains_only_missing_ones(data, tmp_path, monkeypatch):
    monkeypatch.setenv("HCDC_CACHE", str(tmp_path))
    options = make_image_condenser("tm", **{**TM_TINY, "experts": 1}).options
    paths, info = prepare_experts(data, options)
    assert info["trained"] == 1 and len(paths) == 1
    paths, info = prepare_experts(data, {**options, "experts": 3})
    assert info["trained"] == 2 and info["loaded"] == 1 and len(paths) == 3


# --------------------------------------------------------------------------- TM: the method


def mean_matching_loss(proxy, data: ImageData, options: dict) -> float:
    """The normalised matching loss of the proxy's images (and learned step) averaged over every expert and start epoch, no augmentation."""
    paths, _ = prepare_experts(data, options)
    net = new_convnet(data, options["width"], options["depth"], torch.Generator())
    names = [k for k, _ in net.named_parameters()]
    mask = proxy.tensors["train_mask"]
    x, y = proxy.tensors["x"][mask], proxy.tensors["y"][mask]
    lr = torch.tensor(proxy.meta.get("learned_lr", options["syn_lr"]))
    losses = []
    for path in paths:
        for epoch in range(options["max_start_epoch"]):
            start = load_checkpoint(path, epoch, names)
            target = load_checkpoint(path, epoch + options["expert_epochs_to_match"], names)
            student = unroll_student(net, start, x, y, lr, options["syn_steps"], len(y), torch.Generator(), None)
            losses.append(float(trajectory_matching_loss(student, start, target).detach()))
    return sum(losses) / len(losses)


def test_tm_matching_loss_falls(data, tmp_path, monkeypatch):
    monkeypatch.setenv("HCDC_CACHE", str(tmp_path))
    options = {**TM_TINY, "expert_epochs": 4, "max_start_epoch": 2, "expert_epochs_to_match": 2, "syn_steps": 5,
               "batch_syn": None, "init": "noise"}
    start = make_image_condenser("tm", **{**options, "iterations": 0}).condense(data, 2, 0)
    end = make_image_condenser("tm", **{**options, "iterations": 25}).condense(data, 2, 0)
    history = end.meta["matching_history"]
    assert len(history) == 25 and sum(history[-5:]) < 0.6 * sum(history[:5])
    assert end.meta["learned_lr"] != options.get("syn_lr", 0.01)
    full = make_image_condenser("tm", **options).options
    assert mean_matching_loss(end, data, full) < 0.6 * mean_matching_loss(start, data, full)


def test_tm_reports_divergence(data, cache):
    with pytest.raises(ConfigError, match="TM diverged at iteration"):
        make_image_condenser("tm", **{**TM_TINY, "lr_img": 1e30, "iterations": 5}).condense(data, 2, 0)
