"""Figure files (matplotlib, Agg; no pyplot state): PNG and SVG written atomically, reproducibly."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pyramidal_wan.utils.io import atomic_path

FIGURE_DPI = 120


def save_figure(fig, out_dir: Path, stem: str) -> list[Path]:
    """PNG and SVG of a figure, atomically; the SVG carries no date and fixed ids."""
    import matplotlib

    written = []
    for suffix in (".png", ".svg"):
        path = out_dir / f"{stem}{suffix}"
        with matplotlib.rc_context({"svg.hashsalt": "pyramidal-wan"}), atomic_path(path) as tmp:
            metadata = {"Date": None} if suffix == ".svg" else {"Software": None}
            fig.savefig(tmp, format=suffix[1:], dpi=FIGURE_DPI, metadata=metadata, bbox_inches="tight")
        written.append(path)
    return written


def log_x_axis(ax, values: Sequence[float], pad: float = 1.6) -> None:
    """A log x axis from min(values) / pad to max(values) * pad, ticks at 1, 2 and 5 per decade written
    plainly."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    if values:
        ax.set_xlim(min(values) / pad, max(values) * pad)
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
