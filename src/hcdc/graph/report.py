"""Figures and tables for graph proxies: proxy score against true accuracy, results tables."""

from __future__ import annotations

from pathlib import Path

from ..io import atomic_write_bytes
from .evaluate import ProxyEvaluation


def plot_scores(ev: ProxyEvaluation, path: str | Path, title: str) -> Path:
    """Scatter of each configuration's proxy validation loss against its true validation accuracy (PNG)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.6), dpi=120)
    ax.scatter(ev.truth.val_acc.numpy() * 100, ev.proxy.val_loss.numpy(), s=14, alpha=0.8)
    ax.set_xlabel("true validation accuracy (%)")
    ax.set_ylabel("proxy validation loss")
    ax.set_title(f"{title}: ρ = {ev.report['spearman']:.2f}, τ = {ev.report['kendall']:.2f}", fontsize=10)
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
