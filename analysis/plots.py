"""Matplotlib set-up shared by the analyses: a headless pyplot, axis finishing, PNG output."""

import pathlib


def pyplot():
    """Returns matplotlib.pyplot on the non-interactive Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def finish_axes(ax, xlabel: str, ylabel: str, title: str = "", fontsize: int = 8) -> None:
    """Labels, title, a light grid and the legend of one panel."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=fontsize)


def plain_log_ticks(axis, subs=(1.0, 2.0, 5.0)) -> None:
    """Labels a log axis with plain numbers (0.2, 0.5, 1, 2, ...) at `subs` times powers of 10."""
    import matplotlib.ticker

    axis.set_major_locator(matplotlib.ticker.LogLocator(subs=subs))
    axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def save(fig, path: str | pathlib.Path) -> None:
    """Writes `fig` as a PNG (laid out so nothing is clipped) and frees it."""
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    pyplot().close(fig)
