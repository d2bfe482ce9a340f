"""Atomic file and directory writes: a crash or Ctrl-C never leaves a half-written output."""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


def plain_permissions(path: str | os.PathLike) -> None:
    """Give ``path`` the permissions a plain ``open(path, "w")`` or ``mkdir`` would have: 0o666 (file) or 0o777
    (directory) less the umask. Temporary files and directories, and safetensors' ``save_file``, are owner-only."""
    mask = os.umask(0o022)  # read the umask by setting it and putting it back
    os.umask(mask)
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~mask)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    The file gets the permissions a plain ``open(path, "w")`` would give it (0o666 less the umask), not the
    owner-only ones of a temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        plain_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def json_ready(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, ±inf) inside dicts, lists and tuples replaced by None.

    Standard JSON has no NaN or infinity (Python writes them as bare ``NaN``, which strict parsers such as
    ``jq`` or a browser's ``JSON.parse`` reject), so a value that does not exist, e.g. the test accuracy of
    a dataset without test images, is written as ``null``. :func:`number` reads it back as NaN.
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    return obj


def number(value: Any) -> float:
    """A float read from JSON written by :func:`atomic_write_json`: ``null`` is NaN."""
    return math.nan if value is None else float(value)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted, standard JSON (non-finite floats as null, :func:`json_ready`) atomically."""
    text = json.dumps(json_ready(obj), indent=2, sort_keys=True, default=str, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode())


def write_result(directory: str | os.PathLike, name: str, result: Any, markdown: str) -> None:
    """A benchmark's ``result`` as ``<directory>/<name>.json`` and its ``markdown`` as ``<name>.md``, each atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_json(directory / f"{name}.json", result)
    atomic_write_bytes(directory / f"{name}.md", markdown.encode())


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name and rename it to ``path`` only on success.

    Yields the temporary directory to write into. On any exception (including
    KeyboardInterrupt) the temporary directory is removed and ``path`` is untouched. With
    ``overwrite`` an existing ``path`` is replaced; otherwise it is an error to exist. The directory gets the
    permissions of a plain ``mkdir`` (0o777 less the umask), not the owner-only ones of a temporary directory.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        plain_permissions(tmp)
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """An exclusive ``flock`` on ``path``'s ``.lock`` sibling for the duration of the block."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_json_entries(path: str | os.PathLike, field: str) -> dict:
    """The dict under ``field`` of the JSON file ``path``; empty when the file is missing or unreadable."""
    try:
        entries = json.loads(Path(path).read_text())[field]
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError):
        return {}
    return entries if isinstance(entries, dict) else {}


def merge_json_entries(path: str | os.PathLike, field: str, fresh: dict, header: dict) -> dict:
    """Add ``fresh`` to the entries under ``field`` of the JSON cache ``path`` (with ``header``'s other
    fields): read, merge and write atomically under :func:`file_lock`, so concurrent writers lose nothing.
    Returns the merged entries."""
    with file_lock(path):
        merged = {**read_json_entries(path, field), **fresh}
        atomic_write_json(path, {**header, field: merged})
    return merged
