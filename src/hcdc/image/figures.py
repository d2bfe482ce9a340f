"""Figures of the image track: HCDC's Figure 2 (architecture rankings per proxy) and Figure 3 (proxy images).

Ding et al., "Hyperparameter Calibrated Dataset Condensation", ICLR 2024, Sec. 7:

* Figure 2 (:func:`plot_ranking`): one row per condensation method; each row shows the
  architectures ordered by the proxy's score (best on the left), every cell coloured by the
  architecture's *true* rank (lighter = better on the original data), and Spearman's ρ on the
  right. The top row, "original", is ordered by the true ranking itself (the ideal gradient).
  Input: the JSON written by ``bench/image_table.py`` (``architectures``, ``true_val_acc`` and per
  method ``scores``: per condensation seed, the proxy score of every architecture). With several
  seeds a row orders the architectures by their mean proxy rank over seeds; ρ is the table's
  ``spearman_mean`` ± ``spearman_std`` (the mean of the per-seed correlations).
* Figure 3 (:func:`plot_images`): a grid of an image proxy's validation images (or training
  images), one row per class, de-normalised with the proxy's ``meta.normalization``.

Both write a PNG atomically (:func:`hcdc.io.atomic_write_bytes`) with matplotlib's Agg backend and
raise :class:`~hcdc.errors.HCDCError` subclasses for bad input (``hcdc plot`` turns those into one
line and exit code 2).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from ..artifacts import load_proxy
from ..errors import ConfigError, DataError
from ..io import atomic_write_bytes

_LABELS = {"random": "Random", "kcenter": "K-Center", "herding": "Herding", "dc": "DC", "dsa": "DSA", "dm": "DM",
           "kip": "KIP", "tm": "TM", "hcdc": "HCDC"}


CLASS_NAMES = {"cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    plt = _pyplot()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def _check_out(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"the figure is written as PNG; give an output path ending in .png (got {path})")
    if path.exists() and path.is_dir():
        raise ConfigError(f"{path} is a directory")
    return path


def _finite_list(value: Any, n: int | None, where: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{where} must be a list of numbers") from None
    if arr.ndim != 1 or (n is not None and len(arr) != n) or not np.isfinite(arr).all():
        expected = f"{n} finite numbers" if n is not None else "finite numbers"
        raise DataError(f"{where} must hold {expected}, got shape {list(arr.shape)}")
    return arr


def load_results(path: str | Path) -> dict:
    """The results JSON of ``bench/image_table.py``, checked for what :func:`plot_ranking` needs (DataError)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"results file {path} does not exist" if not path.exists() else f"{path} is not a file")
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(result, dict) or "architectures" not in result or "true_val_acc" not in result:
        raise DataError(f"{path}: not an image-table result (needs 'architectures', 'true_val_acc' and 'rows'; "
                        "write one with bench/image_table.py)")
    n = len(result["architectures"])
    if n < 2:
        raise DataError(f"{path}: needs at least two architectures, got {n}")
    _finite_list(result["true_val_acc"], n, f"{path}: 'true_val_acc'")
    rows = result.get("rows")
    if not isinstance(rows, list) or not rows:
        raise DataError(f"{path}: no methods in 'rows' yet (is the run still at the ground truth?)")
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or "method" not in row or not isinstance(row.get("scores"), list) or not row["scores"]:
            raise DataError(f"{path}: row {i} lacks 'method' or per-seed 'scores'")
        for j, scores in enumerate(row["scores"]):
            _finite_list(scores, n, f"{path}: row {i} ({row['method']}) scores of seed {j}")
    return result


def plot_ranking(results: str | Path | dict, out: str | Path, methods: list[str] | None = None,
                 title: str | None = None) -> Path:
    """HCDC's Figure 2 from an image-table result (a path or the loaded dict); returns the PNG's path."""
    out = _check_out(out)
    result = load_results(results) if not isinstance(results, dict) else results
    rows = result["rows"]
    if methods:
        known = [r["method"] for r in rows]
        missing = [m for m in methods if m not in known]
        if missing:
            raise ConfigError(f"method(s) {missing} are not in the results (present: {', '.join(known)})")
        rows = [r for m in methods for r in rows if r["method"] == m]
    true = np.asarray(result["true_val_acc"], dtype=np.float64)
    n = len(true)
    # true rank: 0 = best; ties share the average rank
    true_rank = n - stats.rankdata(true)  # in [0, n-1], best -> 0
    shade = 1.0 - true_rank / max(n - 1, 1)  # lighter (1) = better
    order_true = np.argsort(-true, kind="stable")
    labels, matrix, rho = ["original"], [shade[order_true]], ["ρ = 1"]
    for row in rows:
        scores = np.asarray(row["scores"], dtype=np.float64)  # [seeds, n]
        mean_rank = np.mean([stats.rankdata(-s) for s in scores], axis=0)  # 1 = proxy's best
        order = np.lexsort((np.arange(n), mean_rank))
        matrix.append(shade[order])
        labels.append(_LABELS.get(row["method"], row["method"]))
        sp, sd = row.get("spearman_mean"), row.get("spearman_std")
        if sp is None:
            sp, sd = float(np.mean([stats.spearmanr(s, true).statistic for s in scores])), 0.0
        rho.append(f"ρ = {sp:.2f}" + (f" ± {sd:.2f}" if sd else ""))
    plt = _pyplot()
    height = 0.9 + 0.38 * len(labels)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.09 * n + 3.5), height), dpi=150)
    ax.imshow(np.asarray(matrix), aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xticks([])
    ax.set_xlabel(f"{n} architectures, ordered by each proxy's score (best left); colour: true rank (lighter = better)",
                  fontsize=8)
    for i, text in enumerate(rho):
        ax.text(1.01, i, text, transform=ax.get_yaxis_transform(), va="center", fontsize=8)
    dataset = result.get("dataset", "")
    ax.set_title(title or f"Architecture rankings on proxies of {dataset} (ipc {result.get('ipc', '?')})", fontsize=9)
    fig.tight_layout()
    return _save(fig, out)


def plot_images(proxy_dir: str | Path, out: str | Path, split: str = "val", per_class: int = 10,
                max_classes: int = 20) -> Path:
    """HCDC's Figure 3: an image proxy's ``split`` images ('val' or 'train'), one row per class (at most
    ``per_class`` images each, the first ``max_classes`` classes), de-normalised to pixels; returns the PNG's path."""
    out = _check_out(out)
    if split not in ("val", "train"):
        raise ConfigError(f"split must be 'val' or 'train', got {split!r}")
    if per_class < 1 or max_classes < 1:
        raise ConfigError("per_class and max_classes must be positive")
    proxy = load_proxy(proxy_dir)
    if proxy.kind != "image":
        raise ConfigError(f"{proxy_dir} is a {proxy.kind} proxy; 'plot images' shows the images of an image proxy")
    x, y = proxy.tensors["x"], proxy.tensors["y"]
    mask = proxy.tensors[f"{split}_mask"]
    x, y = x[mask].float().numpy(), y[mask].numpy()
    mean = np.asarray(proxy.meta["normalization"]["mean"], dtype=np.float64).reshape(1, -1, 1, 1)
    std = np.asarray(proxy.meta["normalization"]["std"], dtype=np.float64).reshape(1, -1, 1, 1)
    pixels = np.clip(x * std + mean, 0.0, 1.0).transpose(0, 2, 3, 1)  # [n, H, W, C] in [0, 1]
    classes = [c for c in range(proxy.num_classes) if (y == c).any()][:max_classes]
    names = proxy.meta.get("classes") or CLASS_NAMES.get(str(proxy.meta.get("dataset", "")).lower())
    cols = min(per_class, max(int((y == c).sum()) for c in classes))
    plt = _pyplot()
    fig, axes = plt.subplots(len(classes), cols, figsize=(max(3.6, 0.9 * cols + 1.4), 0.9 * len(classes) + 0.8), dpi=120,
                             squeeze=False)
    for r, c in enumerate(classes):
        members = np.flatnonzero(y == c)[:cols]
        for k in range(cols):
            ax = axes[r][k]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if k < len(members):
                img = pixels[members[k]]
                ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
                          vmin=0, vmax=1, interpolation="nearest")
        label = names[c] if isinstance(names, list) and c < len(names) else str(c)
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    m = proxy.meta
    more = f", first {len(classes)} of {proxy.num_classes} classes" if len(classes) < proxy.num_classes else ""
    fig.suptitle(f"{m['method']} proxy of {m['dataset']}\n{split} images, ipc {m['images_per_class']}{more}", fontsize=9)
    fig.tight_layout()
    return _save(fig, out)

