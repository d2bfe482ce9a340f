"""Figures and tables of proxy evaluations: a proxy's score against true accuracy, results tables."""

from __future__ import annotations

from pathlib import Path

from typing import Sequence

from .io import atomic_write_bytes


def plot_scores(true_acc: Sequence[float], proxy_score: Sequence[float], report: dict, path: str | Path, title: str,
                ylabel: str = "proxy validation loss") -> Path:
    """Scatter of each configuration's proxy score against its true validation accuracy (a PNG at ``path``),
    with the Spearman and Kendall of ``report`` (:func:`hcdc.metrics.ranking_report`) in the title."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.6), dpi=120)
    ax.scatter([100 * float(a) for a in true_acc], [float(v) for v in proxy_score], s=14, alpha=0.8)
    ax.set_xlabel("true validation accuracy (%)")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title}: ρ = {report['spearman']:.2f}, τ = {report['kendall']:.2f}", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def markdown_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A markdown table of ``rows``; ``columns`` are (key, header, format spec)."""
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for key, _, spec in columns:
            value = row.get(key)
            cells.append("" if value is None else format(value, spec) if spec else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
