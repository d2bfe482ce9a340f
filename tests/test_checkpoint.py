"""Resumable condensation (hcdc.checkpoint): an interrupted run resumes and ends bit-identical."""

from __future__ import annotations

import pytest
import torch

from hcdc import checkpoint
from hcdc.checkpoint import Checkpoints, LoopState
from hcdc.image.condensers import make_image_condenser

from image_toys import toy_images
from test_image_condensers import TINY as COMMON_TINY
from test_image_condensers_kip_tm import KIP_TINY, TM_TINY
from test_image_hcdc import HCDC_TINY

pytestmark = pytest.mark.usefixtures("one_thread")

ITERATIVE = {
    "dc": {**COMMON_TINY["dc"], "iterations": 4},
    "dsa": {**COMMON_TINY["dsa"], "iterations": 3},
    "dm": {**COMMON_TINY["dm"], "iterations": 4},
    "kip": {**KIP_TINY, "iterations": 4, "learn_labels": True},
    "tm": {**TM_TINY, "iterations": 4},
    "hcdc": {**HCDC_TINY, "repeats": 2, "val_steps": 1, "bank_batch": 1, "neumann_terms": 1, "power_iterations": 1},
}


class Interrupt(KeyboardInterrupt):
    pass


def _interrupt_after(monkeypatch, snapshots: int) -> list[str]:
    """Make the ``snapshots``-th snapshot write the last thing a run does (as a Ctrl-C right after it)."""
    written = []
    original = Checkpoints.write

    def write(self, name, tensors, meta):
        original(self, name, tensors, meta)
        written.append(f"{name}:{meta['next']}")
        if len(written) == snapshots:
            raise Interrupt

    monkeypatch.setattr(Checkpoints, "write", write)
    return written


@pytest.fixture(scope="module")
def data():
    return toy_images()


# (method, snapshots before the interruption): HCDC is stopped in its calibration, after its DC stage
@pytest.mark.parametrize("name,snapshots", [(name, 2) for name in sorted(ITERATIVE) if name != "hcdc"] + [("hcdc", 3)])
def test_an_interrupted_condensation_resumes_bit_identically(name, snapshots, data, tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "SNAPSHOT_SECONDS", 0.0)  # a snapshot after every iteration
    uninterrupted = make_image_condenser(name, **ITERATIVE[name]).condense(data, 2, 0)
    root = tmp_path / "checkpoints"
    with monkeypatch.context() as m:
        written = _interrupt_after(m, snapshots)
        with pytest.raises(Interrupt):
            make_image_condenser(name, **ITERATIVE[name]).condense(data, 2, 0, checkpoints=root)
    assert written[-1] == ("calibration:1" if name == "hcdc" else f"{name}:2")
    assert len(list(root.iterdir())) == 1  # the snapshots of this one piece of work
    store = make_image_condenser(name, **ITERATIVE[name]).checkpoints(root, data, 2, 0)
    loop = written[-1].split(":")[0]
    assert store.read(loop)[1]["next"] == int(written[-1].split(":")[1])
    resumed = make_image_condenser(name, **ITERATIVE[name]).condense(data, 2, 0, checkpoints=root)
    assert all(torch.equal(t, resumed.tensors[k]) for k, t in uninterrupted.tensors.items())
    history = "alignment_history" if name == "hcdc" else "matching_history"
    assert resumed.meta[history] == uninterrupted.meta[history]
    assert not any(root.iterdir())  # the snapshots are gone once the proxy is built


def test_a_snapshot_of_other_work_is_not_restored(data, tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "SNAPSHOT_SECONDS", 0.0)
    root = tmp_path / "checkpoints"
    options = ITERATIVE["dc"]
    with monkeypatch.context() as m:
        _interrupt_after(m, 2)
        with pytest.raises(Interrupt):
            make_image_condenser("dc", **options).condense(data, 2, 0, checkpoints=root)
    # another seed and other options are other work: their runs start afresh and match a plain run
    for seed, opts in ((1, options), (0, {**options, "lr_img": 0.05})):
        fresh = make_image_condenser("dc", **opts).condense(data, 2, seed)
        again = make_image_condenser("dc", **opts).condense(data, 2, seed, checkpoints=root)
        assert torch.equal(fresh.tensors["x"], again.tensors["x"])
    # a snapshot file holding someone else's key, or garbage, is ignored
    store = make_image_condenser("dc", **options).checkpoints(root, data, 2, 0)
    path = store.directory / "dc.safetensors"
    foreign = Checkpoints(root, {"other": 1})
    tensors, meta = store.read("dc")
    foreign.write("dc", tensors, meta)
    (foreign.directory / "dc.safetensors").replace(path)
    assert store.read("dc") is None
    path.write_bytes(b"not a safetensors file")
    assert store.read("dc") is None
    plain = make_image_condenser("dc", **options).condense(data, 2, 0)
    assert torch.equal(plain.tensors["x"], make_image_condenser("dc", **options).condense(data, 2, 0, checkpoints=root).tensors["x"])


def test_loop_state_round_trips_tensors_optimizers_generators_records_and_objects(tmp_path):
    def make():
        w = torch.zeros(3, requires_grad=True)
        opt = torch.optim.Adam([w], lr=0.1)
        g = torch.Generator().manual_seed(5)
        history: list[float] = []
        items: list[tuple[torch.Tensor, float]] = []
        state = LoopState({"w": w}, {"opt": opt}, {"g": g}, {"history": history},
                          {"items": (items, lambda o: {"t": o[0], "f": torch.tensor(o[1], dtype=torch.float64)},
                                     lambda d: (d["t"], float(d["f"])))})
        return w, opt, g, history, items, state

    def step(w, opt, g, history, items):
        noise = torch.randn(3, generator=g)
        w.grad = w.detach() - noise
        opt.step()
        history.append(float(w.detach().sum()))
        items.append((w.detach().clone(), 1 / 3 + len(items)))

    store = Checkpoints(tmp_path, {"test": 1}, every=0)
    w, opt, g, history, items, state = make()
    for i in store.loop("fit", 6, state, "fit"):
        if i == 3:
            break  # stopped during iteration 3, after the snapshot of iterations 0-2
        step(w, opt, g, history, items)
    w2, opt2, g2, history2, items2, state2 = make()
    loop = store.loop("fit", 6, state2, "fit")
    assert loop.start == 3 and history2 == history and items2[-1][1] == items[-1][1]
    for _ in loop:
        step(w2, opt2, g2, history2, items2)
    w3, opt3, g3, history3, items3, _ = make()
    for _ in range(6):
        step(w3, opt3, g3, history3, items3)
    assert torch.equal(w2, w3) and history2 == history3
    assert all(torch.equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(items2, items3))


GRAPH = {
    "gcond": ({"epochs": 4, "outer_loops": 2, "inner_loops": 1, "hidden": 8}, 2, "gcond:2"),
    "hcdc": ({"gcond": {"epochs": 3}, "candidates": 2, "repeats": 2, "epochs": 30, "warmup": 10, "align_every": 10,
              "val_steps": 2, "hidden": 8}, 5, "calibration:2"),
}


@pytest.mark.parametrize("name", sorted(GRAPH))
def test_an_interrupted_graph_condensation_resumes_bit_identically(name, tmp_path, monkeypatch):
    from hcdc.graph import condensers, make_condenser
    from test_graph_track import _sbm

    monkeypatch.setattr(checkpoint, "SNAPSHOT_SECONDS", 0.0)
    options, snapshots, last = GRAPH[name]
    data = _sbm()
    uninterrupted = make_condenser(name, **options).condense(data, 0.5, 0)
    condensers._SYNTHESES.clear()  # GCond's in-process memo would hand the result over
    root = tmp_path / "checkpoints"
    with monkeypatch.context() as m:
        written = _interrupt_after(m, snapshots)
        with pytest.raises(Interrupt):
            make_condenser(name, **options).condense(data, 0.5, 0, checkpoints=root)
    assert written[-1] == last
    resumed = make_condenser(name, **options).condense(data, 0.5, 0, checkpoints=root)
    assert all(torch.equal(t, resumed.tensors[k]) for k, t in uninterrupted.tensors.items())
    assert not any(root.iterdir())


def test_a_snapshot_that_does_not_fit_leaves_the_state_untouched(tmp_path):
    w = torch.zeros(3, requires_grad=True)
    state = LoopState({"w": w}, {"opt": torch.optim.SGD([w], lr=0.1, momentum=0.5)}, {"g": torch.Generator()})
    tensors, rest = state.snapshot()
    tensors["tensor/w"] = torch.ones(3)
    tensors["generator/g"] = tensors["generator/g"][:-1]  # a torn generator state, checked before anything moves
    with pytest.raises(ValueError):
        state.restore(tensors, rest)
    assert torch.equal(w, torch.zeros(3))
    store = Checkpoints(tmp_path, {"test": 2}, every=0)
    store.write("fit", tensors, {**rest, "next": 1, "seconds": 0.0})
    loop = store.loop("fit", 3, state, "fit")
    assert loop.start == 0 and torch.equal(w, torch.zeros(3)) and not store.resumed
