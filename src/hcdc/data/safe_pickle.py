"""A restricted unpickler for the public pickle-based dataset formats (Planetoid raw, CIFAR batches).

Those formats are pickles, and a pickle can run arbitrary code when loaded. This reader only
rebuilds plain containers, numpy arrays and scipy sparse matrices: any other global in the
stream is refused with a :class:`~hcdc.errors.DataError`, so a hostile file cannot execute code.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

from ..errors import DataError

# (module, name) pairs a dataset pickle may reference; Python-2 names are mapped to Python 3.
_ALLOWED: dict[tuple[str, str], tuple[str, str]] = {
    ("numpy.core.multiarray", "_reconstruct"): ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): ("numpy.core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"): ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"): ("numpy.core.multiarray", "scalar"),
    ("collections", "defaultdict"): ("collections", "defaultdict"),
    ("collections", "OrderedDict"): ("collections", "OrderedDict"),
    ("__builtin__", "list"): ("builtins", "list"),
    ("builtins", "list"): ("builtins", "list"),
    ("__builtin__", "object"): ("builtins", "object"),
    ("builtins", "object"): ("builtins", "object"),
    ("copy_reg", "_reconstructor"): ("copyreg", "_reconstructor"),
    ("copyreg", "_reconstructor"): ("copyreg", "_reconstructor"),
}
for _fmt in ("csr", "csc", "coo", "lil", "dok"):
    for _mod in (f"scipy.sparse.{_fmt}", f"scipy.sparse._{_fmt}"):
        _ALLOWED[(_mod, f"{_fmt}_matrix")] = ("scipy.sparse", f"{_fmt}_matrix")


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        target = _ALLOWED.get((module, name))
        if target is None:
            raise DataError(f"refusing to load '{module}.{name}' from a dataset pickle")
        mod, attr = target
        if mod == "numpy.core.multiarray":
            import numpy as np

            core = getattr(np, "_core", None) or np.core
            return getattr(core.multiarray, attr)
        return getattr(__import__(mod, fromlist=[attr]), attr)


def load_pickle(path: str | Path, encoding: str = "latin1") -> Any:
    """Load a dataset pickle at ``path`` with only data-carrying globals allowed.

    Raises DataError when the file is missing, truncated or references anything else.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing file: {path}")
    try:
        with open(path, "rb") as fh:
            return _RestrictedUnpickler(io.BytesIO(fh.read()), encoding=encoding).load()
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
    except Exception as exc:  # truncated or corrupt stream
        raise DataError(f"cannot read {path}: corrupt or truncated pickle ({type(exc).__name__}: {exc})") from None
