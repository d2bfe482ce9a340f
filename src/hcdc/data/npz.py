"""Reading a user's ``.npz`` archive without pickle: every array, or one clear DataError."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ..errors import DataError


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """All arrays of the ``.npz`` archive ``path``, read with ``allow_pickle=False``.

    A DataError when the file is missing, is not a zip archive (a lone ``.npy``, a text file), holds
    object arrays (which need pickle, so they are refused) or is corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing file: {path}")
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not a readable .npz archive (not a zip file)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except Exception as exc:  # the zip and npy layers raise many types on corrupt input
        if "allow_pickle" in str(exc):
            raise DataError(f"{path}: holds object arrays, which are refused (they need pickle)") from None
        raise DataError(f"{path}: not a readable .npz archive ({type(exc).__name__}: {exc})") from None
