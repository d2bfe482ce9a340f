"""Resumable loops: snapshots of an iterative method's state, so that an interrupted run goes on where it stopped.

A long condensation loop (the iterations of DC, DSA, DM, KIP or TM, GCond's epochs, ...) names
what its next iteration depends on — tensors it updates, optimizers, random generators, and lists
it appends to — and iterates through :meth:`Checkpoints.loop`. At the end of an iteration, at most
every ``every`` seconds and after the last one, that state is written to one safetensors file
(tensors and generator states as tensors; iteration, records and optimizer hyperparameters as
JSON in its metadata) by an atomic rename, so a crash or Ctrl-C never leaves a torn snapshot. A
rerun of the same work with the same store restores the state and resumes at the saved iteration.
Every random draw comes from the saved generators, so the result is bit-identical to that of an
uninterrupted run.

A store belongs to one piece of work, identified by a JSON-able ``key`` (data fingerprint,
method, options, size, seed): a snapshot written under another key is never restored. Nothing is
unpickled: a snapshot is read with safetensors and ``json`` only, and one that cannot be read or
does not fit the loop is ignored (the loop starts afresh).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save
from tqdm.auto import tqdm

from .artifacts import Proxy
from .io import atomic_write_bytes

FORMAT = 1
SNAPSHOT_SECONDS = 60.0  # the least time between two snapshots of a loop (the last iteration is always kept)


def run_key_hash(key: dict) -> str:
    """A short stable hash of a JSON-able work key."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class LoopState:
    """What a loop's next iteration depends on, by name; restored in place."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    optimizers: dict[str, torch.optim.Optimizer] = field(default_factory=dict)
    generators: dict[str, torch.Generator] = field(default_factory=dict)
    records: dict[str, list] = field(default_factory=dict)
    # lists of objects kept as tensor dicts: name -> (list, encode(obj) -> dict[str, Tensor], decode(dict) -> obj)
    object_lists: dict[str, tuple[list, Callable[[Any], dict[str, torch.Tensor]], Callable[[dict[str, torch.Tensor]], Any]]] = \
        field(default_factory=dict)

    def snapshot(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors, JSON-able rest) describing the state now."""
        tensors = {f"tensor/{k}": t.detach().clone().contiguous() for k, t in self.tensors.items()}
        tensors.update({f"generator/{k}": g.get_state() for k, g in self.generators.items()})
        optimizers = {}
        for name, opt in self.optimizers.items():
            sd = opt.state_dict()
            scalars = {}
            for index, entries in sd["state"].items():
                for key, value in entries.items():
                    if isinstance(value, torch.Tensor):
                        tensors[f"optimizer/{name}/{index}/{key}"] = value.detach().clone().contiguous()
                    else:
                        scalars[f"{index}/{key}"] = value
            optimizers[name] = {"param_groups": sd["param_groups"], "scalars": scalars}
        order = {}  # each object's keys in order (a dict's order can matter, e.g. when it is flattened)
        for name, (items, encode, _) in self.object_lists.items():
            order[name] = []
            for i, item in enumerate(items):
                encoded = encode(item)
                order[name].append(list(encoded))
                tensors.update({f"list/{name}/{i}/{k}": t.detach().clone().contiguous() for k, t in encoded.items()})
        return tensors, {"optimizers": optimizers, "records": {k: list(v) for k, v in self.records.items()},
                         "objects": order}

    def restore(self, tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> None:
        """Put a snapshot of :meth:`snapshot` back in place. Everything is checked first, so a snapshot that
        does not fit this state raises (KeyError, ValueError, ...) and leaves the state untouched."""
        for k, t in self.tensors.items():
            saved = tensors[f"tensor/{k}"]
            if saved.shape != t.shape or saved.dtype != t.dtype:
                raise ValueError(f"snapshot's {k} is {saved.dtype} {list(saved.shape)}")
        for k, g in self.generators.items():
            if tensors[f"generator/{k}"].shape != g.get_state().shape:
                raise ValueError(f"snapshot's generator {k} has another state size")
        if set(rest["optimizers"]) != set(self.optimizers) or set(rest["records"]) != set(self.records):
            raise ValueError("snapshot has other optimizers or records")
        objects = {name: [decode({k: tensors[f"list/{name}/{i}/{k}"] for k in keys})
                          for i, keys in enumerate(rest["objects"][name])]
                   for name, (_, _, decode) in self.object_lists.items()}
        optimizer_dicts = {}
        for name, opt in self.optimizers.items():
            saved = rest["optimizers"][name]
            if [g["params"] for g in opt.state_dict()["param_groups"]] != [g["params"] for g in saved["param_groups"]]:
                raise ValueError(f"snapshot's optimizer {name!r} holds other parameters")
            state: dict[int, dict[str, Any]] = {}
            prefix = f"optimizer/{name}/"
            entries = [(k[len(prefix):], t) for k, t in tensors.items() if k.startswith(prefix)]
            for k, value in entries + list(saved["scalars"].items()):
                index, key = k.split("/", 1)
                state.setdefault(int(index), {})[key] = value
            optimizer_dicts[name] = {"state": state, "param_groups": saved["param_groups"]}
        with torch.no_grad():
            for k, t in self.tensors.items():
                t.copy_(tensors[f"tensor/{k}"])
        for name, opt in self.optimizers.items():
            opt.load_state_dict(optimizer_dicts[name])
        for k, g in self.generators.items():
            g.set_state(tensors[f"generator/{k}"])
        for k, v in self.records.items():
            v[:] = rest["records"][k]
        for name, (items, _, _) in self.object_lists.items():
            items[:] = objects[name]


class Checkpoints:
    """Where the loops of one piece of work keep their snapshots (see the module docstring).

    ``root`` None gives a store that keeps nothing (loops run straight through). Otherwise the
    snapshots live in ``root / <hash of key>``, written at most every ``every`` seconds (default
    :data:`SNAPSHOT_SECONDS`); :meth:`clear` removes them once the work's result is safe.
    """

    def __init__(self, root: str | Path | None, key: dict, every: float | None = None):
        self.key = {"format": FORMAT, **key}
        self.directory = Path(root) / run_key_hash(self.key) if root is not None else None
        self.every = SNAPSHOT_SECONDS if every is None else every
        self.resumed: dict[str, int] = {}

    def loop(self, name: str, total: int, state: LoopState, desc: str, progress: bool = False, unit: str = "it") -> "ResumableLoop":
        """A loop of ``total`` iterations over ``state``, resumed from this store's snapshot of ``name`` if it has one."""
        return ResumableLoop(self, name, total, state, desc, progress, unit)

    def _path(self, name: str) -> Path | None:
        return self.directory / f"{name}.safetensors" if self.directory is not None else None

    def read(self, name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """The snapshot of loop ``name`` written under this store's key, or None."""
        path = self._path(name)
        if path is None or not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = json.loads((fh.metadata() or {}).get("state", "null"))
                if not isinstance(meta, dict) or meta.get("key") != json.loads(json.dumps(self.key, default=str)):
                    return None  # another piece of work's snapshot
                return {k: fh.get_tensor(k) for k in fh.keys()}, meta
        except Exception:  # unreadable (e.g. a disk that filled up): start afresh
            return None

    def write(self, name: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        path = self._path(name)
        if path is not None:
            meta = {**meta, "key": self.key}
            atomic_write_bytes(path, save(tensors, metadata={"state": json.dumps(meta, default=str)}))

    def finish(self, proxy: Proxy) -> Proxy:
        """``proxy``, the work's result, with the loops that resumed in its metadata (``resumed_from``:
        loop name -> first iteration of the last run); the snapshots are removed."""
        if self.resumed:
            proxy.meta["resumed_from"] = dict(self.resumed)
        self.clear()
        return proxy

    def clear(self) -> None:
        """Remove this work's snapshots (after its result has been kept)."""
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


class ResumableLoop:
    """Iterating yields the iteration numbers still to run (see :class:`Checkpoints`).

    ``bar`` is the loop's tqdm bar (for postfixes); ``start`` the first iteration this run does;
    ``earlier_seconds`` the seconds spent on it by the runs before (add them to timings).
    """

    def __init__(self, store: Checkpoints, name: str, total: int, state: LoopState, desc: str, progress: bool, unit: str):
        self.store, self.name, self.total, self.state = store, name, total, state
        self.start, self.earlier_seconds = 0, 0.0
        saved = store.read(name)
        if saved is not None:
            tensors, meta = saved
            try:
                start, seconds = int(meta["next"]), float(meta["seconds"])
                if not 0 <= start <= total:
                    raise ValueError("iteration out of range")
                state.restore(tensors, meta)
                self.start, self.earlier_seconds = start, seconds
                store.resumed[name] = start
            except (KeyError, TypeError, ValueError, IndexError):
                pass  # a snapshot that does not fit this loop: start afresh (restore changed nothing)
        self.bar = tqdm(total=total, initial=self.start, desc=desc, unit=unit, disable=not progress)

    def __iter__(self) -> Iterator[int]:
        began = time.perf_counter()
        last_save = time.monotonic()
        for i in range(self.start, self.total):
            yield i
            self.bar.update(1)
            if i == self.total - 1 or time.monotonic() - last_save >= self.store.every:
                tensors, rest = self.state.snapshot()
                seconds = self.earlier_seconds + time.perf_counter() - began
                self.store.write(self.name, tensors, {**rest, "next": i + 1, "seconds": seconds})
                last_save = time.monotonic()
        self.bar.close()

    def seconds(self, since: float) -> float:
        """Seconds of this work: ``time.perf_counter() - since`` in this run plus the earlier runs' loop time."""
        return time.perf_counter() - since + self.earlier_seconds


NO_SNAPSHOTS = Checkpoints(None, {})  # a store that keeps nothing: loops run straight through


def condensation_store(root: str | Path | None, kind: str, data_name: str, fingerprint: Callable[[], str],
                       method: str, options: dict, size: dict, seed: int) -> Checkpoints:
    """The snapshot store of one condensation under ``root`` (None: :data:`NO_SNAPSHOTS`), keyed by the data
    (name and ``fingerprint()``, only computed when there is a store), method, options, ``size`` and seed."""
    if root is None:
        return NO_SNAPSHOTS
    return Checkpoints(root, {"kind": kind, "data": [data_name, fingerprint()], "method": method, "options": options,
                              **size, "seed": int(seed)})
