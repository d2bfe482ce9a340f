"""Tests for hcdc.artifacts: proxy round trips, schema validation, atomic saves and safe loading."""

from __future__ import annotations

import json
import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from hcdc import artifacts
from hcdc.artifacts import Proxy, describe_proxy, load_proxy, save_proxy
from hcdc.errors import ArtifactError
from hcdc.io import atomic_directory, atomic_write_bytes, atomic_write_json, number


def _meta(kind: str, **extra) -> dict:
    meta = {
        "format_version": 1,
        "kind": kind,
        "dataset": "cora" if kind == "graph" else "cifar10",
        "method": "hcdc",
        "num_classes": 3,
        "seeds": [0, 1],
        "config": {"lr": 0.01, "epochs": 5, "nested": {"a": [1, 2]}},
        "versions": {"python": "3.11.0", "torch": "2.13.0"},
        "timings": {"condense": 1.5, "total": 2.0},
        "note": "extra keys are kept",
    }
    if kind == "graph":
        meta["ratio"] = 0.5
    else:
        meta["images_per_class"] = 2
        meta["normalization"] = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.25]}
    meta.update(extra)
    return meta


def graph_proxy(n: int = 6) -> Proxy:
    g = torch.Generator().manual_seed(0)
    adj = torch.rand(n, n, generator=g)
    adj = (adj + adj.T) / 2
    adj.fill_diagonal_(0)
    tensors = {
        "x": torch.randn(n, 4, generator=g),
        "adj": adj,
        "y": torch.tensor([0, 1, 2, 0, 1, 2]),
        "train_mask": torch.tensor([True, True, True, False, False, False]),
        "val_mask": torch.tensor([False, False, False, True, True, True]),
    }
    return Proxy("graph", tensors, _meta("graph"))


def image_proxy() -> Proxy:
    g = torch.Generator().manual_seed(1)
    tensors = {
        "x": torch.randn(8, 3, 4, 4, generator=g),
        "y": torch.tensor([0, 0, 1, 1, 2, 2, 0, 1]),
        "train_mask": torch.tensor([True] * 6 + [False] * 2),
        "val_mask": torch.tensor([False] * 6 + [True] * 2),
    }
    return Proxy("image", tensors, _meta("image"))


def _replace(proxy: Proxy, *, tensors: dict | None = None, meta: dict | None = None, drop=()) -> Proxy:
    new_tensors = {**proxy.tensors, **(tensors or {})}
    new_meta = {**proxy.meta, **(meta or {})}
    for key in drop:
        new_tensors.pop(key, None)
        new_meta.pop(key, None)
    return Proxy(proxy.kind, new_tensors, new_meta)


def _assert_same(a: Proxy, b: Proxy) -> None:
    assert a.kind == b.kind
    assert a.meta == b.meta
    assert set(a.tensors) == set(b.tensors)
    for name, t in a.tensors.items():
        assert t.dtype == b.tensors[name].dtype
        assert torch.equal(t, b.tensors[name])


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("make", [graph_proxy, image_proxy])
def test_round_trip(tmp_path, make):
    proxy = make()
    out = save_proxy(proxy, tmp_path / "p")
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "proxy.safetensors"]
    _assert_same(proxy, load_proxy(out))
    assert _leftovers(tmp_path) == []


def test_properties():
    proxy = graph_proxy()
    assert (proxy.num_items, proxy.num_train, proxy.num_val, proxy.num_classes) == (6, 3, 3, 3)
    assert proxy.class_counts("train") == [1, 1, 1]
    image = image_proxy()
    assert image.class_counts("train") == [2, 2, 2]
    assert image.class_counts("val") == [1, 1, 0]


def test_describe(tmp_path):
    save_proxy(graph_proxy(), tmp_path / "g")
    text = describe_proxy(tmp_path / "g")
    for needle in ("kind: graph", "dataset: cora", "method: hcdc", "ratio: 0.5", "train 3, val 3",
                   "0:1 1:1 2:1", "adj", "float32", "[6, 6]", "condense 1.50s", "torch 2.13.0", "edges: 15"):
        assert needle in text, needle
    save_proxy(image_proxy(), tmp_path / "i")
    text = describe_proxy(tmp_path / "i")
    for needle in ("kind: image", "images per class: 2", "0:2 1:2 2:2", "[8, 3, 4, 4]", "normalization"):
        assert needle in text, needle


def _graph_adj(fn):
    adj = graph_proxy().tensors["adj"].clone()
    fn(adj)
    return adj


def _set(adj, i, j, v):
    adj[i, j] = v


BAD_GRAPH = [
    ({"drop": ["adj"]}, "missing tensor 'adj'"),
    ({"tensors": {"x": torch.zeros(6, 4, dtype=torch.float64)}}, "expected dtype torch.float32, got torch.float64"),
    ({"tensors": {"y": torch.zeros(6, dtype=torch.int32)}}, "tensor 'y': expected dtype torch.int64"),
    ({"tensors": {"train_mask": torch.ones(6)}}, "tensor 'train_mask': expected dtype torch.bool"),
    ({"tensors": {"x": torch.zeros(6, 4, 1)}}, "tensor 'x': expected shape [N, F]"),
    ({"tensors": {"y": torch.zeros(5, dtype=torch.int64)}}, "tensor 'y': expected shape [6]"),
    ({"tensors": {"adj": torch.zeros(6, 5)}}, "tensor 'adj': expected shape [6, 6]"),
    ({"tensors": {"x": torch.full((6, 4), float("nan"))}}, "tensor 'x' contains NaN"),
    ({"tensors": {"adj": _graph_adj(lambda a: _set(a, 0, 1, float("inf")))}}, "tensor 'adj' contains NaN or inf"),
    ({"tensors": {"adj": _graph_adj(lambda a: _set(a, 0, 1, 5.0))}}, "not symmetric"),
    ({"tensors": {"adj": _graph_adj(lambda a: a.mul_(-1))}}, "negative entries"),
    ({"tensors": {"adj": _graph_adj(lambda a: _set(a, 2, 2, 1.0))}}, "nonzero diagonal"),
    ({"tensors": {"y": torch.tensor([0, 1, 2, 3, 0, 1])}}, "labels must lie in [0, 2]"),
    ({"tensors": {"y": torch.tensor([0, -1, 2, 0, 1, 2])}}, "labels must lie in [0, 2]"),
    ({"tensors": {"val_mask": torch.tensor([True, False, False, True, True, True])}}, "overlap on 1 item"),
    ({"tensors": {"train_mask": torch.zeros(6, dtype=torch.bool)}}, "'train_mask' selects no items"),
    ({"tensors": {"val_mask": torch.zeros(6, dtype=torch.bool)}}, "'val_mask' selects no items"),
    ({"tensors": {"extra": [1, 2]}}, "tensor 'extra' must be a torch.Tensor"),
    ({"drop": ["ratio"]}, "meta is missing key 'ratio'"),
    ({"drop": ["timings"]}, "meta is missing key 'timings'"),
    ({"drop": ["format_version"]}, "meta is missing key 'format_version'"),
    ({"meta": {"format_version": 2}}, "format_version 2 is newer than this hcdc supports (1)"),
    ({"meta": {"format_version": "1"}}, "'format_version' must be a positive integer"),
    ({"meta": {"kind": "image"}}, "meta 'kind' is 'image' but the proxy kind is 'graph'"),
    ({"meta": {"ratio": 0}}, "'ratio' must be a positive number"),
    ({"meta": {"num_classes": 0}}, "'num_classes' must be a positive integer"),
    ({"meta": {"seeds": 3}}, "'seeds' must be a list or dict"),
    ({"meta": {"config": None}}, "'config' must be a dict"),
    ({"meta": {"timings": {"total": -1}}}, "'timings' 'total' must be non-negative"),
    ({"meta": {"dataset": ""}}, "'dataset' must be a non-empty string"),
]


@pytest.mark.parametrize("change,message", BAD_GRAPH)
def test_graph_validation_errors(tmp_path, change, message):
    proxy = _replace(graph_proxy(), **change)
    with pytest.raises(ArtifactError) as info:
        proxy.validate()
    assert message in str(info.value)
    with pytest.raises(ArtifactError):
        save_proxy(proxy, tmp_path / "p")
    assert list(tmp_path.iterdir()) == []  # nothing written for a bad proxy


BAD_IMAGE = [
    ({"drop": ["normalization"]}, "meta is missing key 'normalization'"),
    ({"drop": ["images_per_class"]}, "meta is missing key 'images_per_class'"),
    ({"meta": {"normalization": {"mean": [0.5, 0.5, 0.5]}}}, "must be a dict with 'mean' and 'std'"),
    ({"meta": {"normalization": {"mean": [0.5], "std": [0.2]}}}, "x' has 3 channels but meta 'normalization' has 1"),
    ({"meta": {"normalization": {"mean": [0.5] * 3, "std": [0.2, 0.0, 0.2]}}}, "list of 3 positive numbers"),
    ({"meta": {"images_per_class": 1.5}}, "'images_per_class' must be a positive integer"),
    ({"tensors": {"x": torch.zeros(8, 3, 4)}}, "expected shape [N, C, H, W]"),
]


@pytest.mark.parametrize("change,message", BAD_IMAGE)
def test_image_validation_errors(change, message):
    with pytest.raises(ArtifactError) as info:
        _replace(image_proxy(), **change).validate()
    assert message in str(info.value)


def test_unknown_kind():
    proxy = graph_proxy()
    with pytest.raises(ArtifactError, match="unknown proxy kind 'text'"):
        Proxy("text", proxy.tensors, {**proxy.meta, "kind": "text"}).validate()


def test_meta_must_be_plain_json(tmp_path):
    proxy = _replace(graph_proxy(), meta={"config": {"obj": object()}})
    with pytest.raises(ArtifactError, match="not plain JSON"):
        save_proxy(proxy, tmp_path / "p")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_crash_during_save_leaves_nothing(tmp_path, monkeypatch, error):
    real_save = artifacts.save_file

    def crashing_save(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        Path(filename).write_bytes(Path(filename).read_bytes()[:20])  # half a file, then the crash
        raise error

    monkeypatch.setattr(artifacts, "save_file", crashing_save)
    with pytest.raises(type(error)):
        save_proxy(graph_proxy(), tmp_path / "p")
    assert list(tmp_path.iterdir()) == []


def test_crash_during_overwrite_keeps_old_proxy(tmp_path, monkeypatch):
    old = graph_proxy()
    save_proxy(old, tmp_path / "p")

    def crashing_save(tensors, filename, metadata=None):
        raise OSError("disk full")

    monkeypatch.setattr(artifacts, "save_file", crashing_save)
    with pytest.raises(OSError):
        save_proxy(image_proxy(), tmp_path / "p", overwrite=True)
    _assert_same(old, load_proxy(tmp_path / "p"))
    assert _leftovers(tmp_path) == []


def test_overwrite_semantics(tmp_path):
    target = tmp_path / "p"
    save_proxy(graph_proxy(), target)
    with pytest.raises(ArtifactError, match="already exists"):
        save_proxy(image_proxy(), target)
    assert load_proxy(target).kind == "graph"
    save_proxy(image_proxy(), target, overwrite=True)
    _assert_same(image_proxy(), load_proxy(target))
    assert _leftovers(tmp_path) == []

    empty = tmp_path / "empty"
    empty.mkdir()
    save_proxy(graph_proxy(), empty, overwrite=True)
    assert load_proxy(empty).kind == "graph"

    other = tmp_path / "other"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(ArtifactError, match="refusing to overwrite"):
        save_proxy(graph_proxy(), other, overwrite=True)
    assert (other / "precious.txt").read_text() == "keep me"


def test_load_missing(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        load_proxy(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArtifactError, match="is not a directory"):
        load_proxy(tmp_path / "file")
    save_proxy(graph_proxy(), tmp_path / "p")
    (tmp_path / "p" / "meta.json").unlink()
    with pytest.raises(ArtifactError, match="meta.json is missing"):
        load_proxy(tmp_path / "p")


class _Boom:
    def __reduce__(self):
        return (exec, ("raise SystemExit('pickle code ran')",))


def test_pickle_named_safetensors_fails_cleanly(tmp_path):
    target = save_proxy(graph_proxy(), tmp_path / "p")
    (target / "proxy.safetensors").write_bytes(pickle.dumps({"x": _Boom()}))
    with pytest.raises(ArtifactError, match="not a readable safetensors file"):
        load_proxy(target)
    torch.save(graph_proxy().tensors, target / "proxy.safetensors")
    with pytest.raises(ArtifactError, match="not a readable safetensors file"):
        load_proxy(target)


def test_truncated_safetensors_fails_cleanly(tmp_path):
    target = save_proxy(graph_proxy(), tmp_path / "p")
    data = (target / "proxy.safetensors").read_bytes()
    (target / "proxy.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="not a readable safetensors file"):
        load_proxy(target)


@pytest.mark.parametrize("text,message", [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "must hold a JSON object"),
    (b"\xff\xfe", "is not valid JSON"),
])
def test_bad_json_fails_cleanly(tmp_path, text, message):
    target = save_proxy(graph_proxy(), tmp_path / "p")
    meta = target / "meta.json"
    meta.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ArtifactError, match=message):
        load_proxy(target)


def test_load_validates(tmp_path):
    target = save_proxy(graph_proxy(), tmp_path / "p")
    meta = json.loads((target / "meta.json").read_text())
    meta["format_version"] = 7
    (target / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="newer than this hcdc supports"):
        load_proxy(target)
    del meta["kind"]
    meta["format_version"] = 1
    (target / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="meta is missing key 'kind'"):
        load_proxy(target)


def test_json_records_are_standard_json_with_null_for_values_that_do_not_exist(tmp_path):
    record = {"perf": float("nan"), "rows": [1.5, float("inf"), (np.float64("-inf"), 2)], "name": "x", "n": 3}
    atomic_write_json(tmp_path / "r.json", record)
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    back = json.loads(text)
    assert back == {"perf": None, "rows": [1.5, None, [None, 2]], "name": "x", "n": 3}
    assert math.isnan(number(back["perf"])) and number(back["rows"][0]) == 1.5 and number(back["n"]) == 3.0



@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_outputs_get_the_permissions_of_a_plain_write(tmp_path, umask):
    """Atomic writes go through owner-only temporary files; what they leave must follow the umask as open() would."""
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "table.md", b"| a |\n")
        with atomic_directory(tmp_path / "proxy") as tmp:
            atomic_write_bytes(tmp / "proxy.safetensors", b"x")
        save_proxy(graph_proxy(), tmp_path / "saved")
        with open(tmp_path / "plain.txt", "w"):
            pass
        os.mkdir(tmp_path / "plain")
    finally:
        os.umask(old)
    file_mode, dir_mode = 0o666 & ~umask, 0o777 & ~umask
    assert (tmp_path / "plain.txt").stat().st_mode & 0o777 == file_mode
    assert (tmp_path / "plain").stat().st_mode & 0o777 == dir_mode
    for f in [tmp_path / "table.md", tmp_path / "proxy" / "proxy.safetensors", *(tmp_path / "saved").iterdir()]:
        assert f.stat().st_mode & 0o777 == file_mode, f
    for d in (tmp_path / "proxy", tmp_path / "saved"):
        assert d.stat().st_mode & 0o777 == dir_mode, d
