"""Tests for the image condensers (hcdc.image.condensers), DSA's augmentations and DC's ConvNet."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from hcdc.artifacts import load_proxy, save_proxy
from hcdc.checkpoint import NO_SNAPSHOTS
from hcdc.data.image import ImageData
from hcdc.errors import ConfigError, DataError
from hcdc.image.augment import (
    GROUPS,
    Augmentation,
    parse_strategy,
    sample_augmentation,
    translate,
)
from hcdc.image.condensers import (
    IMAGE_CONDENSERS,
    DCCondenser,
    DSACondenser,
    ImageCondenser,
    coresets,
    herding,
    kcenter_greedy,
    make_image_condenser,
    matching_distance,
    register_image_condenser,
    val_per_class,
    validation_split,
)
from hcdc.image.condensers.dm import mean_embedding_distance
from hcdc.image.condensers.matching import default_loops
from hcdc.image.condensers.nets import new_convnet
from hcdc.models.convnet import ConvNet

from image_toys import toy_images

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {
    "random": {},
    "kcenter": {"epochs": 2, "width": 8, "depth": 2, "batch_size": 32},
    "herding": {"epochs": 2, "width": 8, "depth": 2, "batch_size": 32},
    "dc": {"iterations": 2, "outer_loop": 2, "inner_loop": 1, "batch_real": 16, "width": 8, "depth": 2},
    "dsa": {"iterations": 2, "outer_loop": 2, "inner_loop": 1, "batch_real": 16, "width": 8, "depth": 2},
    "dm": {"iterations": 2, "batch_real": 16, "width": 8, "depth": 2},
}


@pytest.fixture(scope="module")
def data() -> ImageData:
    return toy_images()


@pytest.fixture(scope="module")
def proxies(data):
    """Each method's proxy at ipc=3, twice at seed 0 and once at seed 1."""
    return {
        name: [make_image_condenser(name, **TINY[name]).condense(data, 3, seed) for seed in (0, 0, 1)] for name in TINY
    }


# --------------------------------------------------------------------------- registry and options


def test_registry_names_and_errors():
    assert set(IMAGE_CONDENSERS) == {"random", "kcenter", "herding", "dc", "dsa", "dm", "kip", "tm", "hcdc"}
    with pytest.raises(ConfigError, match="unknown image condenser 'nope'"):
        make_image_condenser("nope")
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['epochs'\]"):
        make_image_condenser("dc", epochs=3)
    with pytest.raises(ConfigError, match="unknown option"):
        make_image_condenser("random", width=8)
    with pytest.raises(ConfigError, match="unknown option.*strategy"):
        make_image_condenser("dc", strategy="flip")  # DC has no augmentation
    with pytest.raises(ValueError, match="already registered"):
        register_image_condenser("dc")(type("Again", (ImageCondenser,), {}))


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("dc", {"iterations": -1}, "integer >= 0"),
        ("dc", {"width": 0}, "integer >= 1"),
        ("dc", {"width": True}, "integer >= 1"),
        ("dc", {"outer_loop": 2.5}, "integer >= 1"),
        ("dc", {"lr_img": 0}, "positive number"),
        ("dm", {"lr_img": float("nan")}, "positive number"),
        ("dc", {"init": "zeros"}, r"one of \['real', 'noise'\]"),
        ("dsa", {"strategy": "color_blur"}, r"unknown augmentation group\(s\) \['blur'\]"),
        ("dm", {"strategy": ""}, "unknown augmentation group"),
        ("kcenter", {"epochs": 0}, "integer >= 1"),
    ],
)
def test_bad_option_values(name, options, message):
    with pytest.raises(ConfigError, match=message):
        make_image_condenser(name, **options)


def test_options_are_completed_and_converted():
    dc = make_image_condenser("dc", lr_img=1, inner_loop=0)
    assert dc.options == {**DCCondenser.defaults, "lr_img": 1.0, "inner_loop": 0}
    assert isinstance(dc.options["lr_img"], float)
    assert make_image_condenser("dsa").options["strategy"] == "color_crop_cutout_flip_scale_rotate"


def test_bad_ipc_seed_and_data(data):
    random = make_image_condenser("random")
    for ipc in (0, 2.0, True):
        with pytest.raises(ConfigError, match="images per class"):
            random.condense(data, ipc, 0)
    with pytest.raises(DataError, match="class 0 has 30 training images, fewer than ipc=31"):
        random.condense(data, 31, 0)
    with pytest.raises(ConfigError, match="seed"):
        random.condense(data, 2, -1)
    no_val = ImageData(data.name, data.classes, data.x_train, data.x_val[:0], data.x_test, data.y_train, data.y_val[:0], data.y_test)
    with pytest.raises(DataError, match="no validation images"):
        random.condense(no_val, 2, 0)
    keep = (data.y_val != 0) | (torch.arange(len(data.y_val)) == 0)  # class 0 keeps one validation image
    short_val = ImageData(data.name, data.classes, data.x_train, data.x_val[keep], data.x_test, data.y_train, data.y_val[keep], data.y_test)
    with pytest.raises(DataError, match="class 0 has 1 validation images, the proxy needs 2"):
        random.condense(short_val, 9, 0)  # round(9 · 21 / 90) = 2


# --------------------------------------------------------------------------- validation part


def test_val_per_class_keeps_the_train_val_ratio(data):
    assert len(data.y_train) == 90 and len(data.y_val) == 30
    assert [val_per_class(data, ipc) for ipc in (1, 2, 3, 6, 7, 30)] == [1, 1, 1, 2, 2, 10]  # ipc/3, at least 1


def test_validation_split_is_seeded_and_class_wise(data):
    val = validation_split(data, 6, seed=4)
    assert data.y_val[val].tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.equal(val, validation_split(data, 6, seed=4))
    assert len(set(val.tolist())) == 6
    draws = {tuple(validation_split(data, 6, seed=s).tolist()) for s in range(5)}
    assert len(draws) > 1


# --------------------------------------------------------------------------- every method


@pytest.mark.parametrize("name", sorted(TINY))
def test_proxy_is_valid_sized_and_deterministic(name, data, proxies, tmp_path):
    proxy, again, other = proxies[name]
    proxy.validate()
    assert proxy.kind == "image" and proxy.meta["method"] == name
    assert proxy.class_counts("train") == [3, 3, 3]
    assert proxy.class_counts("val") == [val_per_class(data, 3)] * 3
    x = proxy.tensors["x"]
    assert x.shape == (9 + 3, 3, 8, 8) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert proxy.meta["images_per_class"] == 3 and proxy.meta["seeds"] == {"condense": 0}
    assert proxy.meta["normalization"] == {"mean": data.mean.tolist(), "std": data.std.tolist()}
    assert proxy.meta["config"] == make_image_condenser(name, **TINY[name]).options
    assert proxy.meta["timings"] and all(v >= 0 for v in proxy.meta["timings"].values())
    # the validation part is real validation images, the same for every method at one seed
    val = proxy.tensors["val_source"]
    assert torch.equal(val, validation_split(data, 3, 0))
    assert torch.equal(x[proxy.tensors["val_mask"]], data.normalized("val")[val])
    # deterministic under a seed, different under another
    assert all(torch.equal(t, again.tensors[k]) for k, t in proxy.tensors.items())
    assert not torch.equal(x, other.tensors["x"])
    loaded = load_proxy(save_proxy(proxy, tmp_path / name))
    assert loaded.meta == proxy.meta
    assert all(torch.equal(t, loaded.tensors[k]) for k, t in proxy.tensors.items())


@pytest.mark.parametrize("name", ["random", "kcenter", "herding"])
def test_coresets_pick_distinct_training_images_of_each_class(name, data, proxies):
    proxy = proxies[name][0]
    source = proxy.tensors["train_source"]
    assert len(set(source.tolist())) == 9
    assert torch.equal(data.y_train[source], proxy.tensors["y"][proxy.tensors["train_mask"]])
    assert torch.equal(proxy.tensors["x"][proxy.tensors["train_mask"]], data.normalized("train")[source])


# --------------------------------------------------------------------------- coresets


def brute_force_kcenter_ok(features: torch.Tensor, picks: list[int]) -> bool:
    """Each pick after the first maximises the distance to the nearest earlier pick (over all points)."""
    d = torch.cdist(features.double(), features.double())
    for t in range(1, len(picks)):
        nearest = d[:, picks[:t]].min(dim=1).values
        if not math.isclose(float(nearest[picks[t]]), float(nearest.max()), rel_tol=1e-12):
            return False
    return True


def brute_force_herding(features: torch.Tensor, k: int) -> list[int]:
    """Herding by trying every unpicked point at every step."""
    f = features.double()
    mu, picks = f.mean(0), []
    for _ in range(k):
        gaps = {i: float((mu - f[picks + [i]].mean(0)).norm()) for i in range(len(f)) if i not in picks}
        picks.append(min(gaps, key=lambda i: (gaps[i], i)))
    return picks


def test_kcenter_greedy_is_farthest_point():
    features = torch.randn(40, 5, generator=torch.Generator().manual_seed(0))
    picks = kcenter_greedy(features, 10, first=7).tolist()
    assert picks[0] == 7 and len(set(picks)) == 10
    assert brute_force_kcenter_ok(features, picks)
    assert not brute_force_kcenter_ok(features, [7, *reversed(picks[1:])])  # the check can fail


def test_herding_is_the_greedy_mean_matching():
    features = torch.randn(30, 4, generator=torch.Generator().manual_seed(1))
    assert herding(features, 12).tolist() == brute_force_herding(features, 12)
    assert sorted(herding(features, 30).tolist()) == list(range(30))  # k = n picks everything once


@pytest.fixture
def spy_embeddings(monkeypatch):
    """Records the embeddings the coresets select from."""
    seen = []

    def spy(net, x, batch_size=1024):
        seen.append(real_embed(net, x, batch_size))
        return seen[-1]

    real_embed = coresets.embed
    monkeypatch.setattr(coresets, "embed", spy)
    return seen


def test_kcenter_condenser_picks_farthest_points_on_its_embeddings(data, spy_embeddings):
    proxy = make_image_condenser("kcenter", **TINY["kcenter"]).condense(data, 5, 0)
    (features,) = spy_embeddings
    assert features.shape == (90, 8 * 2 * 2)
    source = proxy.tensors["train_source"]
    for c in range(3):
        members = (data.y_train == c).nonzero().flatten().tolist()
        picks = [members.index(i) for i in source[5 * c : 5 * c + 5].tolist()]
        assert brute_force_kcenter_ok(features[members], picks)


def test_herding_condenser_matches_brute_force_on_its_embeddings(data, spy_embeddings):
    proxy = make_image_condenser("herding", **TINY["herding"]).condense(data, 4, 0)
    (features,) = spy_embeddings
    source = proxy.tensors["train_source"]
    for c in range(3):
        members = (data.y_train == c).nonzero().flatten()
        assert source[4 * c : 4 * c + 4].tolist() == members[brute_force_herding(features[members], 4)].tolist()


# --------------------------------------------------------------------------- gradient matching


def test_matching_distance_is_dcs_per_unit_cosine():
    g = torch.Generator().manual_seed(0)
    real = [torch.randn(4, 3, 3, 3, generator=g), torch.randn(4, generator=g), torch.randn(2, 5, generator=g)]
    assert float(matching_distance(real, real)) == pytest.approx(0, abs=1e-5)
    assert float(matching_distance(real, [-r for r in real])) == pytest.approx(2 * (4 + 2), abs=1e-5)
    scaled = [r * torch.rand(r.shape[0], *[1] * (r.dim() - 1), generator=g) + 0.1 for r in real]  # biases differ
    scaled[0], scaled[2] = real[0] * 3, real[2] * 0.5
    assert float(matching_distance(real, scaled)) == pytest.approx(0, abs=1e-5)  # per-unit scale and 1-D ignored
    syn = [torch.randn(r.shape, generator=g) for r in real]
    expected = sum(
        (1 - F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1, eps=0)).sum() for a, b in zip(real, syn) if a.dim() > 1
    )
    assert float(matching_distance(real, syn)) == pytest.approx(float(expected), abs=1e-4)


def test_default_loops_follow_dc():
    assert [default_loops(ipc) for ipc in (1, 10, 50)] == [(1, 1), (10, 50), (50, 10)]
    assert default_loops(3) == (1, 1) and default_loops(15) == (10, 50) and default_loops(100) == (50, 10)


@pytest.mark.parametrize("name", ["dc", "dsa"])
def test_gradient_matching_loss_falls(name, data):
    options = {"iterations": 16, "outer_loop": 3, "inner_loop": 2, "batch_real": 32, "width": 8, "depth": 2, "init": "noise"}
    proxy = make_image_condenser(name, **options).condense(data, 2, 0)
    history = proxy.meta["matching_history"]
    assert len(history) == 16 and proxy.meta["loops"] == {"outer": 3, "inner": 2}
    first, last = sum(history[:3]) / 3, sum(history[-3:]) / 3
    assert last < 0.85 * first


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_dsa_matching_loss_reaches_the_synthetic_images_through_each_augmentation(group, data):
    dsa = DSACondenser(strategy=group)
    g = torch.Generator().manual_seed(0)
    net = new_convnet(data, 8, 2, g)
    x_real = data.normalized("train")
    members = [(data.y_train == c).nonzero().flatten() for c in range(3)]
    x_syn = x_real[torch.tensor([0, 1, 30, 31, 60, 61])].clone().requires_grad_()
    loss = dsa._matching_loss(net, list(net.parameters()), x_real, members, x_syn, 2, 16, g)
    (grad,) = torch.autograd.grad(loss, [x_syn])
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


# --------------------------------------------------------------------------- DSA augmentations


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_augmentations_are_differentiable(group):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 2, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    for batch in (1, 2):
        augmentation = Augmentation(group, torch.rand(batch, GROUPS[group][1], generator=g) * 0.9 + 0.05)
        assert torch.autograd.gradcheck(augmentation, (x,), eps=1e-6, atol=1e-6)


def test_same_seed_gives_the_same_transform_to_two_batches():
    g = torch.Generator().manual_seed(0)
    real, syn = torch.randn(6, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    groups = set()
    for seed in range(30):
        a = sample_augmentation(torch.Generator().manual_seed(seed))
        b = sample_augmentation(torch.Generator().manual_seed(seed))
        assert a.group == b.group and torch.equal(a.u, b.u)
        groups.add(a.group)
        both = a(torch.cat([real, syn]))
        assert torch.allclose(a(real), both[:6], atol=1e-6) and torch.allclose(b(syn), both[6:], atol=1e-6)
    assert groups == set(GROUPS)  # every group gets drawn
    per_image = sample_augmentation(torch.Generator().manual_seed(0), "rotate", batch=6)
    out = per_image(real)
    same = Augmentation("rotate", per_image.u[:1])(real)
    assert torch.allclose(out[0], same[0], atol=1e-6) and not torch.allclose(out[1:], same[1:])
    with pytest.raises(ValueError, match="sampled for 6 images applied to 2"):
        per_image(syn)


def test_flip_and_crop_move_pixels_exactly():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    assert torch.equal(Augmentation("flip", torch.tensor([[0.2]]))(x), x.flip(3))
    assert torch.equal(Augmentation("flip", torch.tensor([[0.7]]))(x), x)
    assert torch.equal(Augmentation("flip", torch.tensor([[0.2], [0.7]]))(x), torch.stack([x[0].flip(2), x[1]]))
    # crop: up to round(8/8) = 1 pixel each way; u ∈ [0,1) maps to shifts -1, 0, 1
    out = Augmentation("crop", torch.tensor([[0.9, 0.1]]))(x)  # dy = 1, dx = -1
    expected = torch.zeros_like(x)
    expected[:, :, 1:, :-1] = x[:, :, :-1, 1:]
    assert torch.equal(out, expected)
    shifted = translate(x, torch.tensor([-2, 0]), torch.tensor([3, 0]))
    assert torch.equal(shifted[1], x[1])
    assert torch.equal(shifted[0, :, :-2, 3:], x[0, :, 2:, :-3]) and shifted[0, :, -2:].eq(0).all()
    assert shifted[0, :, :, :3].eq(0).all()


def test_cutout_zeroes_a_square_of_half_the_size():
    x = torch.ones(1, 3, 8, 8)
    out = Augmentation("cutout", torch.tensor([[0.5, 0.5]]))(x)  # centre (4, 4), side 4: rows and columns 2..5
    expected = torch.ones(8, 8)
    expected[2:6, 2:6] = 0
    assert torch.equal(out[0, 0], expected) and torch.equal(out[0, 1], expected)
    corner = Augmentation("cutout", torch.tensor([[0.0, 0.0]]))(x)[0, 0]  # centre (0, 0): clipped at the border
    assert int((corner == 0).sum()) == 4 and corner[:2, :2].eq(0).all()


def test_scale_and_rotate_are_identity_at_their_neutral_draws():
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    unit = (1 - 1 / 1.2) / (1.2 - 1 / 1.2)  # the draw giving scale factor 1
    assert torch.allclose(Augmentation("scale", torch.tensor([[unit, unit]]))(x), x, atol=1e-5)
    assert torch.allclose(Augmentation("rotate", torch.tensor([[0.5]]))(x), x, atol=1e-5)
    turned = Augmentation("rotate", torch.tensor([[1.0]]))(x)
    assert not torch.allclose(turned, x, atol=1e-2)


def test_color_matches_dsa_formulas():
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    u = torch.tensor([[0.7, 0.25, 0.5]])
    y = x + 0.2
    y = (y - y.mean(1, keepdim=True)) * 0.5 + y.mean(1, keepdim=True)
    y = (y - y.mean((1, 2, 3), keepdim=True)) * 1.0 + y.mean((1, 2, 3), keepdim=True)
    assert torch.allclose(Augmentation("color", u)(x), y, atol=1e-6)


def test_parse_strategy():
    assert parse_strategy("color_crop_cutout_flip_scale_rotate") == tuple(GROUPS)
    with pytest.raises(ConfigError, match="unknown augmentation group"):
        parse_strategy("noise")


# --------------------------------------------------------------------------- DM


def class_mean_distance(net: ConvNet, data: ImageData, proxy) -> float:
    """Σ over classes of the squared distance between mean embeddings of all real and all proxy training images."""
    x_real, x_syn = data.normalized("train"), proxy.tensors["x"][proxy.tensors["train_mask"]]
    y_syn = proxy.tensors["y"][proxy.tensors["train_mask"]]
    with torch.no_grad():
        return sum(float(mean_embedding_distance(net, x_real[data.y_train == c], x_syn[y_syn == c])) for c in range(3))


def test_dm_reduces_the_class_mean_distance_under_a_fixed_random_net(data):
    options = {"batch_real": 32, "width": 8, "depth": 2, "init": "noise"}
    start = make_image_condenser("dm", iterations=0, **options).condense(data, 2, 0)
    end = make_image_condenser("dm", iterations=60, **options).condense(data, 2, 0)
    assert len(end.meta["matching_history"]) == 60
    net = new_convnet(data, 8, 2, torch.Generator().manual_seed(123))  # a net DM never saw
    assert class_mean_distance(net, data, end) < 0.6 * class_mean_distance(net, data, start)


def test_mean_embedding_distance_only_differentiates_the_synthetic_side():
    net = ConvNet(3, 2, (8, 8), width=4, depth=2, generator=torch.Generator().manual_seed(0))
    real = torch.randn(5, 3, 8, 8, requires_grad=True)
    syn = torch.randn(2, 3, 8, 8, requires_grad=True)
    net.requires_grad_(False)
    loss = mean_embedding_distance(net, real, syn)
    expected = (net.features(real).mean(0) - net.features(syn).mean(0)).square().sum()
    assert float(loss.detach()) == pytest.approx(float(expected.detach()))
    loss.backward()
    assert real.grad is None and syn.grad.abs().sum() > 0


# --------------------------------------------------------------------------- ConvNet


def test_convnet_shapes_seeding_and_functional_call():
    net = ConvNet(3, 10, (32, 32), width=16, depth=3, generator=torch.Generator().manual_seed(0))
    x = torch.randn(4, 3, 32, 32)
    assert net.embedding_dim == 16 * 4 * 4 and net.features(x).shape == (4, 256) and net(x).shape == (4, 10)
    again = ConvNet(3, 10, (32, 32), width=16, depth=3, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), again.parameters()))
    params = {k: v * 1.5 for k, v in net.named_parameters()}
    assert torch.allclose(functional_call(again, params, (x,)), functional_call(net, params, (x,)))
    assert not torch.allclose(functional_call(net, params, (x,)), net(x))
    with pytest.raises(ValueError, match="poolings"):
        ConvNet(3, 10, (4, 4), depth=3)


def test_convnet_norm_is_instance_norm():
    net = ConvNet(3, 2, (8, 8), width=4, depth=1, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        net.norms[0].weight.uniform_(0.5, 1.5)
        net.norms[0].bias.uniform_(-0.5, 0.5)
    x = torch.randn(3, 3, 8, 8)
    reference = F.instance_norm(net.convs[0](x), weight=net.norms[0].weight, bias=net.norms[0].bias)
    assert torch.allclose(net.norms[0](net.convs[0](x)), reference, atol=1e-5)


def test_convnet_fused_norm_computes_the_same_function_and_gradients():
    net = ConvNet(3, 4, (8, 8), width=6, depth=2, generator=torch.Generator().manual_seed(0))
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    params = list(net.parameters())
    fused, primitive = net(x, fused_norm=True), net(x)
    assert torch.allclose(fused, primitive, atol=1e-5)
    for a, b in zip(torch.autograd.grad(fused.square().sum(), params), torch.autograd.grad(primitive.square().sum(), params)):
        assert torch.allclose(a, b, atol=1e-4)


# --------------------------------------------------------------------------- the paper's validation part: a split


@pytest.mark.parametrize("name", ["random", "dc"])
def test_split_validation_part_is_a_random_split_of_the_methods_images(name, data):
    """val_part='split' (HCDC, Sec. 6): the method makes ipc + n_val images per class and the proxy splits them."""
    condenser = make_image_condenser(name, **TINY[name], val_part="split")
    proxy = condenser.condense(data, 3, 0)
    n_val = val_per_class(data, 3)
    assert proxy.class_counts("train") == [3, 3, 3] and proxy.class_counts("val") == [n_val] * 3
    assert "val_source" not in proxy.tensors and proxy.meta["config"]["val_part"] == "split"
    whole = condenser.synthesize(data, 3 + n_val, 0, False, NO_SNAPSHOTS)
    x, y = proxy.tensors["x"], proxy.tensors["y"]
    # every image of the synthesis is in the proxy exactly once, with its label, in one of the two parts
    match = (x.flatten(1)[:, None, :] == whole.x.flatten(1)[None, :, :]).all(-1)
    assert match.shape == (len(whole.y), len(whole.y)) and torch.equal(match.sum(0), torch.ones(len(whole.y), dtype=torch.long))
    assert torch.equal(y, whole.y[match.float().argmax(1)])
    # a coreset's validation images are picked training images, recorded like its training picks
    if name == "random":
        used = torch.cat([proxy.tensors["train_source"], proxy.tensors["val_train_source"]])
        assert len(set(used.tolist())) == len(used)
        assert torch.equal(x[proxy.tensors["val_mask"]], data.normalized("train")[proxy.tensors["val_train_source"]])
    # which images validate depends on the seed, not on chance
    again = condenser.condense(data, 3, 0)
    assert all(torch.equal(t, again.tensors[k]) for k, t in proxy.tensors.items())
    real = make_image_condenser(name, **TINY[name]).condense(data, 3, 0)
    assert "val_source" in real.tensors and real.meta["config"]["val_part"] == "real"


def test_split_validation_part_needs_enough_training_images(data):
    # 30 training images per class: ipc 10 needs 10 + round(10·10/30) = 13, ipc 25 needs 25 + 8 = 33
    make_image_condenser("random", val_part="split").condense(data, 10, 0)
    with pytest.raises(DataError, match=r"class 0 has 30 training images, fewer than the 33 per class \(ipc 25 \+ validation\)"):
        make_image_condenser("random", val_part="split").condense(data, 25, 0)
    with pytest.raises(ConfigError, match=r"'val_part' must be one of \['real', 'split'\]"):
        make_image_condenser("herding", val_part="synthetic")
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['val_part'\]"):
        make_image_condenser("hcdc", val_part="split")  # HCDC learns its validation part
