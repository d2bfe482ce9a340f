"""Ranking metrics: how well a proxy's scores order configurations compared with their true scores.

Every pairwise metric takes two equally long sequences (``proxy``/``a`` and ``true``/``b``) that
score the same configurations, position by position. Inputs must hold at least two finite
numbers; anything else raises :class:`~hcdc.errors.ConfigError`.

Conventions:

* ``spearman`` and ``kendall`` use average ranks for ties and return 0.0 (not NaN) when one side
  is constant, since a constant score carries no ranking information.
* Where a metric picks "the best" or "the top k", ties are broken by position: the earlier
  configuration wins.
* ``regret`` is in the units of the true score and is >= 0, with 0 meaning the proxy picked a
  truly best configuration.
* ``ranking_report`` orients both sides before comparing, so a proxy *loss* (lower is better)
  that orders configurations exactly like their true *accuracy* gets spearman = kendall = +1.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from .errors import ConfigError


def check_rankable(count: int, what: str) -> None:
    """A ConfigError, before anything is trained, unless there are at least two ``what`` (configurations,
    architectures) to rank."""
    if count < 2:
        raise ConfigError(f"ranking needs at least two {what}, got {count}")

def _vector(name: str, values: ArrayLike, min_len: int) -> np.ndarray:
    """``values`` as a finite 1-D float64 array of at least ``min_len`` entries, or ConfigError."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} must be a sequence of numbers ({exc})") from None
    if arr.ndim != 1:
        raise ConfigError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size < min_len:
        raise ConfigError(f"{name} needs at least {min_len} value(s), got {arr.size}")
    if not np.isfinite(arr).all():
        bad = np.flatnonzero(~np.isfinite(arr)).tolist()
        raise ConfigError(f"{name} contains NaN or infinite values at positions {bad}")
    return arr


def _is_finite_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and math.isfinite(v)


def _pair(a: ArrayLike, b: ArrayLike, names: tuple[str, str] = ("a", "b")) -> tuple[np.ndarray, np.ndarray]:
    """Two finite vectors of equal length >= 2, or ConfigError."""
    x, y = _vector(names[0], a, 2), _vector(names[1], b, 2)
    if x.size != y.size:
        raise ConfigError(f"{names[0]} and {names[1]} must have the same length, got {x.size} and {y.size}")
    return x, y


def _oriented(x: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """``x`` flipped if needed so that higher always means better."""
    return x if higher_is_better else -x


def _order(x: np.ndarray) -> np.ndarray:
    """Indices from best (highest) to worst; ties keep position order."""
    return np.argsort(-x, kind="stable")


def spearman(a: ArrayLike, b: ArrayLike) -> float:
    """Spearman rank correlation of ``a`` and ``b`` (average ranks for ties); 0.0 if either is constant."""
    x, y = _pair(a, b)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    return float(np.corrcoef(stats.rankdata(x), stats.rankdata(y))[0, 1])


def kendall(a: ArrayLike, b: ArrayLike) -> float:
    """Kendall's tau-b of ``a`` and ``b`` (corrected for ties); 0.0 if either is constant."""
    x, y = _pair(a, b)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    return float(stats.kendalltau(x, y, variant="b").statistic)


def top_k_overlap(proxy: ArrayLike, true: ArrayLike, k: int, higher_is_better: bool = True) -> float:
    """Fraction of the true top ``k`` configurations that are also in the proxy's top ``k``.

    Equals ``|top-k by proxy ∩ top-k by true| / k``; ``higher_is_better`` applies to both sides.
    Ties at the cut-off are broken by position (the earlier configuration is kept).
    """
    p, t = _pair(proxy, true, ("proxy", "true"))
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= p.size:
        raise ConfigError(f"k must be an integer between 1 and {p.size} (the number of configurations), got {k!r}")
    top_p = _order(_oriented(p, higher_is_better))[:k]
    top_t = _order(_oriented(t, higher_is_better))[:k]
    return len(set(top_p.tolist()) & set(top_t.tolist())) / k


def regret(proxy: ArrayLike, true: ArrayLike, higher_is_better: bool = True) -> float:
    """How much true score is lost by taking the proxy's favourite configuration (>= 0, 0 is best).

    The proxy's pick is its best score (first one on ties); the result is
    ``max(true) - true[pick]`` when higher is better and ``true[pick] - min(true)`` otherwise.
    ``higher_is_better`` applies to both sides.
    """
    p, t = _pair(proxy, true, ("proxy", "true"))
    p, t = _oriented(p, higher_is_better), _oriented(t, higher_is_better)
    return float(t.max() - t[int(np.argmax(p))])


def seed_agreement(per_seed: ArrayLike) -> tuple[float, float]:
    """How reproducible a ground-truth ranking is: ``(r, reliability)`` for scores ``per_seed`` [seeds, configs].

    ``r`` is the mean Spearman correlation between the rankings of two training seeds; ``reliability``
    the Spearman–Brown prediction for the ranking by the mean over all S seeds, ``S·r / (1 + (S−1)·r)``.
    A proxy ranking can correlate with the ground truth by about ``sqrt(reliability)`` at most (when
    it is itself noise-free), so this is the ceiling to read the table's ρ against.
    """
    scores = np.asarray(per_seed, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] < 2 or scores.shape[1] < 2:
        raise ConfigError(f"seed agreement needs scores of shape [seeds >= 2, configs >= 2], got {scores.shape}")
    pairs = [spearman(scores[i], scores[j]) for i in range(len(scores)) for j in range(i + 1, len(scores))]
    r = float(np.mean(pairs))
    return r, spearman_brown(r, len(scores))


def spearman_brown(r: float, k: int) -> float:
    """Reliability of a mean over ``k`` replicates whose pairwise correlation is ``r``: ``k·r / (1 + (k−1)·r)``
    (Spearman–Brown), 0.0 when ``r`` is not positive."""
    return k * r / (1 + (k - 1) * r) if r > 0 else 0.0


def mean_std(values: ArrayLike) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) of ``values``; the std of a single value is 0.0."""
    v = _vector("values", values, 1)
    std = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return float(v.mean()), std


def bootstrap_ci(
    values: ArrayLike, confidence: float = 0.95, n_resamples: int = 10000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval ``(low, high)`` of the mean; deterministic for a given seed.

    A single value gives the degenerate interval ``(value, value)``.
    """
    v = _vector("values", values, 1)
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence must be strictly between 0 and 1, got {confidence!r}")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ConfigError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_resamples, v.size))].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def ranking_report(
    proxy_scores: ArrayLike,
    true_scores: ArrayLike,
    *,
    proxy_higher_is_better: bool,
    true_higher_is_better: bool = True,
    k: int = 5,
) -> dict[str, float]:
    """How well ``proxy_scores`` rank configurations compared with ``true_scores``.

    Returns ``spearman``, ``kendall``, ``top_k`` (overlap of the top ``k``) and ``regret`` (in
    true-score units, >= 0). Each side is first oriented by its own flag, so a proxy loss
    (``proxy_higher_is_better=False``) that perfectly tracks a true accuracy scores +1.
    """
    p, t = _pair(proxy_scores, true_scores, ("proxy_scores", "true_scores"))
    p, t = _oriented(p, proxy_higher_is_better), _oriented(t, true_higher_is_better)
    return {
        "spearman": spearman(p, t),
        "kendall": kendall(p, t),
        "top_k": top_k_overlap(p, t, k),
        "regret": regret(p, t),
    }


def aggregate(reports: Sequence[dict[str, Any]], confidence: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Summary over repeated reports (e.g. one per seed): ``<key>_mean``, ``_std``, ``_ci_low``, ``_ci_high``.

    Every report must have the same keys with numeric values; ``num_reports`` is added. The std
    is the sample std (see :func:`mean_std`), the interval a bootstrap of the mean (see
    :func:`bootstrap_ci`).
    """
    if not reports:
        raise ConfigError("aggregate needs at least one report")
    keys = list(reports[0])
    out: dict[str, float] = {}
    for i, report in enumerate(reports):
        if set(report) != set(keys):
            raise ConfigError(f"report {i} has keys {sorted(report)}, expected {sorted(keys)} like report 0")
    for key in keys:
        values = [report[key] for report in reports]
        if not all(_is_finite_number(v) for v in values):
            raise ConfigError(f"aggregate: values of {key!r} must be finite numbers, got {values!r}")
        mean, std = mean_std(values)
        low, high = bootstrap_ci(values, confidence=confidence, seed=seed)
        out.update({f"{key}_mean": mean, f"{key}_std": std, f"{key}_ci_low": low, f"{key}_ci_high": high})
    out["num_reports"] = len(reports)
    return out
