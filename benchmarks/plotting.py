"""One figure of panels, each with a line per series against sequence length: the benchmarks' plots."""

from __future__ import annotations

from pathlib import Path

Panels = dict[str, dict[str, list[tuple[int, float]]]]
"""panel title → series name → (sequence length, value) points."""


def plot_against_length(panels: Panels, path: Path, ylabel: str, log_y: bool = False) -> str:
    """Save the panels side by side to ``path``; says where, or why no plot was made."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot skipped: matplotlib is not installed"
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (title, series) in zip(axes[0], sorted(panels.items()), strict=True):
        for name, points in series.items():
            xs, ys = zip(*sorted(points), strict=True)
            ax.plot(xs, ys, marker="o", label=name)
        ax.set_xscale("log", base=2)
        if log_y:
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("sequence length N")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"plot: {path}"
