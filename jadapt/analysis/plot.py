"""Per-layer similarity curves as a PNG (matplotlib's Agg canvas, no pyplot state)."""
from __future__ import annotations

import os
from typing import Mapping, Optional, Sequence


def plot_layer_curves(curves: Mapping[str, Sequence[float]], path: str | os.PathLike, *,
                      title: Optional[str] = None, ylabel: str = "similarity to base",
                      xlabel: str = "layer (0 = embeddings)") -> str:
    """One line per named curve (e.g. {"RSA": [...], "CKA": [...]}), x = layer index.

    Uses ``Figure`` + ``FigureCanvasAgg`` directly, so it works headless and never touches
    the global pyplot backend. Returns the path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not curves:
        raise ValueError("plot_layer_curves needs at least one curve")
    fig = Figure(figsize=(6.0, 4.0), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, ys in curves.items():
        ys = [float(y) for y in ys]
        ax.plot(range(len(ys)), ys, marker="o", label=name)
    longest = max(len(ys) for ys in curves.values())
    ax.set_xticks(range(longest))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.05)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(os.fspath(path), format="png")
    return os.fspath(path)
