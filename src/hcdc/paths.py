"""Where data and caches live: the data root (``--data-root`` > ``$HCDC_DATA`` > ``../shared/data``)."""

from __future__ import annotations

import os
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parents[2]


def default_data_root() -> Path:
    """The data root used when none is given.

    ``$HCDC_DATA`` when set; otherwise the first existing ``shared/data`` folder beside the
    current directory or beside the source checkout (``../shared/data``); otherwise
    ``./data`` (which need not exist: loaders then report the missing files).
    """
    env = os.environ.get("HCDC_DATA")
    if env:
        return Path(env).expanduser()
    for base in (Path.cwd(), _REPO_ROOT):
        candidate = (base / ".." / "shared" / "data").resolve()
        if candidate.is_dir():
            return candidate
    return Path("data").resolve()


def resolve_data_root(data_root: str | os.PathLike | None) -> Path:
    """``data_root`` as a Path, or :func:`default_data_root` when it is None."""
    return Path(data_root).expanduser() if data_root is not None else default_data_root()


def cache_dir() -> Path:
    """Cache for decoded datasets and ground truth: ``$HCDC_CACHE`` or ``~/.cache/hcdc``."""
    env = os.environ.get("HCDC_CACHE")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "hcdc"
    root.mkdir(parents=True, exist_ok=True)
    return root


def snapshot_dir() -> Path:
    """Where unfinished condensations keep their snapshots (:mod:`hcdc.checkpoint`): ``<cache>/snapshots``."""
    return cache_dir() / "snapshots"
