"""NAS-Bench-201 search space: notation, indexing, sampling, and the relaxed network's derivatives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, jvp, vjp

from hcdc.errors import ConfigError, DataError
from hcdc.image.space import (
    ARCHS_SEED,
    EXAMPLE,
    NUM_ARCHITECTURES,
    Architecture,
    NB201Network,
    ReLUConvNorm,
    SearchCell,
    count_parameters,
    load_architectures,
    main,
    sample_architectures,
    softmax_weights,
    write_architectures,
)

ALL_NONE = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
ALL_SKIP = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"
ALL_CONV3 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
SHIPPED = Path(__file__).parents[1] / "src" / "hcdc" / "image" / "nb201_archs.json"


def _tiny(dtype=torch.float32, seed=0):
    """A 3-cell network at C=4 on a batch of two 8x8 images (random data and labels)."""
    g = torch.Generator().manual_seed(seed)
    net = NB201Network(C=4, N=1, num_classes=3, generator=g).to(dtype)
    x = torch.randn(2, 3, 8, 8, generator=g, dtype=dtype)
    y = torch.tensor([0, 2])
    return net, x, y


def _loss(net, x, y):
    return lambda params, alpha: F.cross_entropy(functional_call(net, params, (x, alpha)), y)


def _params(net):
    return {k: v.detach() for k, v in net.named_parameters()}


# --- notation, indexing, sampling -------------------------------------------------------------


@pytest.mark.parametrize("text", [EXAMPLE, ALL_NONE, ALL_SKIP, ALL_CONV3, *map(str, sample_architectures(5, 1))])
def test_string_round_trip(text):
    arch = Architecture.parse(text)
    assert arch.to_str() == text == str(arch)
    assert Architecture.parse(arch.to_str()) == arch


def test_example_decodes_edge_by_edge_and_inputs_may_come_in_any_order():
    arch = Architecture.parse(EXAMPLE)
    assert arch.op_names == ("nor_conv_3x3", "skip_connect", "none", "avg_pool_3x3", "nor_conv_1x1", "skip_connect")
    assert arch.index() == 3 * 5**5 + 1 * 5**4 + 0 * 5**3 + 4 * 5**2 + 2 * 5 + 1
    shuffled = "|nor_conv_3x3~0|+|none~1|skip_connect~0|+|skip_connect~2|avg_pool_3x3~0|nor_conv_1x1~1|"
    assert Architecture.parse(shuffled) == arch


def test_index_is_a_bijection_onto_the_whole_space():
    archs = [Architecture.from_index(i) for i in range(NUM_ARCHITECTURES)]
    assert [a.index() for a in archs] == list(range(NUM_ARCHITECTURES))
    assert len({a.to_str() for a in archs}) == NUM_ARCHITECTURES == 15625
    assert archs[0] == Architecture.parse(ALL_NONE)
    assert archs[-1] == Architecture((4,) * 6)


@pytest.mark.parametrize(
    "text, reason",
    [
        ("|conv_5x5~0|+|none~0|none~1|+|none~0|none~1|none~2|", "unknown operation 'conv_5x5'"),
        ("|none~0|+|none~0|none~1|", "expected 3 nodes"),
        ("|none~1|+|none~0|none~1|+|none~0|none~1|none~2|", "sources must be 0..0"),
        ("|none~0|+|none~0|none~0|+|none~0|none~1|none~2|", "lists source 0 twice"),
        ("|none~0|+|none~0|+|none~0|none~1|none~2|", "needs one input from each of nodes 0..1"),
        ("none~0|+|none~0|none~1|+|none~0|none~1|none~2|", "enclosed in '|'"),
        ("|none|+|none~0|none~1|+|none~0|none~1|none~2|", "sources must be"),
        ("", "expected 3 nodes"),
    ],
)
def test_malformed_strings_raise_config_error(text, reason):
    with pytest.raises(ConfigError, match="invalid NAS-Bench-201 architecture") as err:
        Architecture.parse(text)
    assert reason in str(err.value)


def test_invalid_ops_indices_and_weights_raise_config_error():
    for bad in [(0,) * 5, (0, 0, 0, 0, 0, 5)]:
        with pytest.raises(ConfigError):
            Architecture(bad)
    for bad_index in [-1, NUM_ARCHITECTURES]:
        with pytest.raises(ConfigError):
            Architecture.from_index(bad_index)
    with pytest.raises(ConfigError, match="shape"):
        Architecture.from_alpha(torch.zeros(6, 4))
    with pytest.raises(ConfigError, match="shape"):
        NB201Network(C=4)(torch.zeros(1, 3, 8, 8), torch.zeros(5, 5))


def test_alpha_round_trip_and_softmax_weights():
    torch.manual_seed(0)
    for arch in sample_architectures(20, 3):
        alpha = arch.to_alpha()
        assert alpha.shape == (6, 5) and alpha.sum(1).eq(1).all() and alpha.max(1).values.eq(1).all()
        assert Architecture.from_alpha(alpha) == arch
    logits = torch.randn(6, 5)
    weights = softmax_weights(logits, temperature=0.5)
    assert torch.allclose(weights.sum(1), torch.ones(6)) and (weights > 0).all()
    assert Architecture.from_alpha(weights) == Architecture.from_alpha(logits)
    assert Architecture.from_alpha(torch.zeros(6, 5)) == Architecture.parse(ALL_NONE)  # ties: lowest index


def test_degenerate_cells_have_no_path_from_input_to_output():
    assert Architecture.parse(ALL_NONE).is_degenerate()
    assert Architecture.parse("|skip_connect~0|+|none~0|none~1|+|none~0|none~1|skip_connect~2|").is_degenerate()
    assert Architecture.parse("|none~0|+|skip_connect~0|none~1|+|none~0|skip_connect~1|none~2|").is_degenerate()
    assert not Architecture.parse("|none~0|+|skip_connect~0|none~1|+|none~0|none~1|skip_connect~2|").is_degenerate()
    assert not Architecture.parse(EXAMPLE).is_degenerate()
    net, x, _ = _tiny()
    with torch.no_grad():
        out = net(x, Architecture.parse(ALL_NONE))
    assert torch.equal(out[0], out[1])  # the prediction no longer depends on the image


def test_sampling_is_seeded_uniform_and_distinct():
    a, b = sample_architectures(100, 7), sample_architectures(100, 7)
    assert a == b and len(set(a)) == 100
    assert sample_architectures(100, 8) != a
    assert len(set(sample_architectures(NUM_ARCHITECTURES, 0))) == NUM_ARCHITECTURES
    for n in (0, NUM_ARCHITECTURES + 1):
        with pytest.raises(ConfigError):
            sample_architectures(n, 0)


def test_shipped_list_is_the_seeded_sample_and_loads(tmp_path):
    record = json.loads(SHIPPED.read_text())
    assert record == {
        "seed": ARCHS_SEED,
        "n": 100,
        "space": "nas-bench-201",
        "architectures": [a.to_str() for a in sample_architectures(100, record["seed"])],
    }
    assert load_architectures() == sample_architectures(100, ARCHS_SEED)
    main(["--write-archs", str(tmp_path / "archs.json")])
    assert (tmp_path / "archs.json").read_text() == SHIPPED.read_text()
    assert load_architectures(write_architectures(tmp_path / "five.json", n=5, seed=2)) == sample_architectures(5, 2)
    (tmp_path / "bad.json").write_text('{"seed": 0, "n": 2, "space": "nas-bench-201", "architectures": ["|x~0|"]}')
    with pytest.raises(DataError):
        load_architectures(tmp_path / "bad.json")


def test_parameter_counts_match_hand_counts():
    # stem 3·16·9 + 32; reductions 16→32 and 32→64 (two 3x3 convs + norms, a 1x1 shortcut);
    # last norm 128; classifier 64·10 + 10. Each nor_conv_3x3 adds C·C·9 + 2C at C = 16, 32, 64.
    assert count_parameters(Architecture.parse(ALL_NONE), N=5) == 464 + 14464 + 57600 + 128 + 650 == 73306
    assert count_parameters(Architecture.parse(ALL_CONV3), N=5) == 73306 + 6 * 5 * (2336 + 9280 + 36992)
    assert count_parameters(Architecture.parse(ALL_SKIP)) == 73306


# --- the relaxed network --------------------------------------------------------------------


def test_network_shapes_norms_and_no_buffers():
    net, x, _ = _tiny()
    assert net(x, Architecture.parse(EXAMPLE)).shape == (2, 3)
    assert list(net.buffers()) == [] and len(net.cells) == 5
    assert NB201Network(C=4, norm_groups=2).stem[1].groups == 2
    assert NB201Network(C=4).stem[1].groups == 4  # instance norm by default
    with pytest.raises(ConfigError, match="groups"):
        NB201Network(C=6, norm_groups=4)
    with pytest.raises(ConfigError):
        NB201Network(C=0)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert all(torch.equal(p, q) for p, q in zip(NB201Network(C=4, generator=g1).parameters(), NB201Network(C=4, generator=g2).parameters()))


def test_skip_and_none_cells_by_hand():
    torch.manual_seed(0)
    cell, x = SearchCell(4), torch.randn(2, 4, 8, 8)
    nodes = cell.nodes(x, Architecture.parse(ALL_SKIP).to_alpha())
    for node, factor in zip(nodes, (1, 1, 2, 4)):  # n1 = x, n2 = x + n1, n3 = x + n1 + n2
        assert torch.equal(node, factor * x)
    assert torch.equal(cell(x, Architecture.parse(ALL_NONE).to_alpha()), torch.zeros_like(x))


def test_one_hot_forward_equals_hand_built_discrete_network():
    net, x, _ = _tiny()

    def cell(c, h):  # EXAMPLE: n1 = conv3(h); n2 = h; n3 = pool(h) + conv1(n1) + n2
        n1 = c.edges[0].ops["nor_conv_3x3"](h)
        return F.avg_pool2d(h, 3, 1, 1, count_include_pad=False) + c.edges[4].ops["nor_conv_1x1"](n1) + h

    with torch.no_grad():
        h = cell(net.cells[0], net.stem(x))
        h = cell(net.cells[2], net.cells[1](h))
        h = cell(net.cells[4], net.cells[3](h))
        expected = net.classifier(F.relu(net.lastact[0](h)).mean(dim=(2, 3)))
        torch.testing.assert_close(net(x, Architecture.parse(EXAMPLE).to_alpha()), expected, rtol=1e-6, atol=1e-6)


def test_zero_weight_ops_are_skipped_only_when_alpha_is_constant():
    net, x, _ = _tiny()
    calls = []
    for m in net.modules():
        if isinstance(m, ReLUConvNorm):
            m.register_forward_hook(lambda *_: calls.append(1))
    skip = Architecture.parse(ALL_SKIP).to_alpha()
    sparse = net(x, skip)
    assert len(calls) == 4  # the two reduction blocks only
    dense = net(x, skip.clone().requires_grad_(True))
    assert len(calls) == 4 + 4 + 3 * 6 * 2  # ... plus both convs of every edge of every cell
    assert torch.equal(sparse, dense)
    torch.manual_seed(1)
    for arch in sample_architectures(5, 4):
        alpha = arch.to_alpha() * torch.rand(6, 1)  # some zeros, arbitrary non-zero weights
        assert torch.equal(net(x, alpha), net(x, alpha.requires_grad_(True)))


def test_cell_is_linear_in_the_weights_of_the_edges_into_a_node():
    torch.manual_seed(0)
    cell, x = SearchCell(4), torch.randn(2, 4, 8, 8)
    A, B = (a.to_alpha() for a in sample_architectures(2, 5))
    a, b = 0.3, -1.7
    mixed = cell.nodes(x, a * A + b * B)[1]
    torch.testing.assert_close(mixed, a * cell.nodes(x, A)[1] + b * cell.nodes(x, B)[1])
    # with the edges into nodes 1 and 2 fixed, the output is affine in the edges into node 3
    A[:3] = B[:3] = softmax_weights(torch.randn(6, 5))[:3]
    t = 0.25
    torch.testing.assert_close(cell(x, t * A + (1 - t) * B), t * cell(x, A) + (1 - t) * cell(x, B))


def test_gradient_wrt_alpha_at_a_discrete_point_matches_finite_differences():
    net, x, y = _tiny(torch.float64)
    loss, params = _loss(net, x, y), _params(net)
    alpha = Architecture.parse(EXAMPLE).to_alpha(dtype=torch.float64)
    g = grad(loss, argnums=1)(params, alpha)
    assert torch.equal(g[:, 0], torch.zeros(6)) and (g[:, 1:] != 0).all()  # every real op is seen
    _, pullback = vjp(lambda a: loss(params, a), alpha)
    torch.testing.assert_close(pullback(torch.tensor(1.0, dtype=torch.float64))[0], g)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        d = torch.randn(6, 5, generator=gen, dtype=torch.float64)
        eps = 1e-6
        fd = (loss(params, alpha + eps * d) - loss(params, alpha - eps * d)) / (2 * eps)
        assert abs(float((g * d).sum()) - float(fd)) < 1e-7 * max(1.0, abs(float(fd)))
        _, tangent = jvp(lambda a: loss(params, a), (alpha,), (d,))
        torch.testing.assert_close(tangent, (g * d).sum())


def test_hypergradient_style_derivatives_match_finite_differences():
    """∇_α ‖∇_θ L‖² (second order) and ∇_x of its projection (third order) in float64."""
    net, x, y = _tiny(torch.float64)
    params = _params(net)
    gen = torch.Generator().manual_seed(2)
    alpha = softmax_weights(torch.randn(6, 5, generator=gen, dtype=torch.float64))
    v, d = (torch.randn(6, 5, generator=gen, dtype=torch.float64) for _ in range(2))
    dx = torch.randn(x.shape, generator=gen, dtype=torch.float64)

    def grad_norm(a, images):
        g = grad(_loss(net, images, y))(params, a)
        return sum((t * t).sum() for t in g.values())

    def projected(images):  # ⟨∇_α ‖∇_θ L‖², v⟩
        return (grad(grad_norm)(alpha, images) * v).sum()

    eps = 1e-6
    second = grad(grad_norm)(alpha, x)
    fd2 = (grad_norm(alpha + eps * d, x) - grad_norm(alpha - eps * d, x)) / (2 * eps)
    assert abs(float((second * d).sum()) - float(fd2)) < 1e-6 * max(1.0, abs(float(fd2)))
    third = grad(projected)(x)
    fd3 = (projected(x + eps * dx) - projected(x - eps * dx)) / (2 * eps)
    assert abs(float((third * dx).sum()) - float(fd3)) < 1e-6 * max(1.0, abs(float(fd3)))


def test_functional_call_with_grad_wrt_params_uses_the_discrete_cell():
    net, x, y = _tiny()
    params = _params(net)
    arch = Architecture.parse(EXAMPLE)
    g = grad(_loss(net, x, y))(params, arch.to_alpha())
    unused = [k for k in g if k.startswith(("cells.0.edges.0.ops.nor_conv_1x1", "cells.0.edges.2."))]
    assert unused and all(torch.equal(g[k], torch.zeros_like(g[k])) for k in unused)
    assert g["cells.0.edges.0.ops.nor_conv_3x3.1.weight"].abs().sum() > 0
    assert sum(p.numel() for k, p in params.items() if g[k].abs().sum() > 0) <= count_parameters(arch, C=4, num_classes=3)


def test_mixed_partials_under_nested_transforms_see_zero_weight_ops():
    """vjp in alpha of grad in the parameters (an IFT hypergradient's mixed partials) at a one-hot point:
    the inner wrapper of alpha does not require grad, yet zero-weight ops must not be skipped."""
    net, x, y = _tiny(torch.float64)
    loss, params = _loss(net, x, y), _params(net)
    alpha = Architecture.parse(EXAMPLE).to_alpha(dtype=torch.float64)
    grad_theta = grad(loss)
    gen = torch.Generator().manual_seed(3)
    u = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in params.items()}
    _, pullback = vjp(lambda a: grad_theta(params, a), alpha)
    (mixed,) = pullback(u)
    assert (mixed[:, 1:] != 0).all()

    def inner(a):  # ⟨∂_θ L(θ, a), u⟩
        g = grad_theta(params, a)
        return sum((g[k] * u[k]).sum() for k in u)

    d = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    eps = 1e-6
    fd = (inner(alpha + eps * d) - inner(alpha - eps * d)) / (2 * eps)
    assert abs(float((mixed * d).sum()) - float(fd)) < 1e-6 * max(1.0, abs(float(fd)))
