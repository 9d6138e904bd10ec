"""How the report's figures look: matplotlib without pyplot (no global state), shared colours
and legends, PNGs without the software/version metadata so the same tables give the same bytes.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, MaxNLocator

DPI = 110


def colors(n: int) -> list:
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def legend(ax) -> None:
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=7 if len(handles) <= 12 else 5, loc="best")


def large_numbers(axis) -> None:
    """Steps, indices and lags up to the hundreds of millions as 23k, 146M, on a few ticks that
    do not run into each other."""
    axis.set_major_locator(MaxNLocator(5))
    axis.set_major_formatter(EngFormatter(sep=""))


def save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, metadata={"Software": None})


def save_cropped(fig: Figure, path: Path) -> None:
    """Saved cropped to what is drawn (no tight_layout pass), at the report's dpi."""
    fig.savefig(path, dpi=DPI, bbox_inches="tight", metadata={"Software": None})
