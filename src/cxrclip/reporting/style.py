"""One look for every cxrclip figure: headless Agg backend, colour-blind-safe colours, PNG writer.

Importing this module selects the Agg backend before ``matplotlib.pyplot`` is imported anywhere in
cxrclip's reporting code, so figures never need a display (CI, SLURM nodes, SSH sessions).
Colours follow the Okabe-Ito palette; every method and every class keeps its colour across figures.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
from cycler import cycler

matplotlib.use("Agg")

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

#: Evaluated methods in display order (weakest baseline first, the study's model last).
METHOD_ORDER: tuple[str, ...] = (
    "random",
    "tfidf_prior",
    "tfidf_indication",
    "zeroshot",
    "finetuned",
)

METHOD_LABELS: dict[str, str] = {
    "random": "Random",
    "tfidf_prior": "TF-IDF prior",
    "tfidf_indication": "TF-IDF indication",
    "zeroshot": "Zero-shot CLIP",
    "finetuned": "Fine-tuned CLIP",
}

METHOD_COLORS: dict[str, str] = {
    "random": "#999999",  # grey
    "tfidf_prior": "#E69F00",  # orange
    "tfidf_indication": "#009E73",  # bluish green
    "zeroshot": "#0072B2",  # blue
    "finetuned": "#D55E00",  # vermillion
}

#: Normal vs abnormal, blue vs red as in the study's t-SNE figure (Fig. 4).
CLASS_COLORS: dict[str, str] = {"normal": "#0072B2", "abnormal": "#D55E00"}
#: True pairs vs negatives in score distributions.
PAIR_COLORS: dict[str, str] = {"true": "#D55E00", "negative": "#999999"}
MATCH_COLOR = "#009E73"
MISMATCH_COLOR = "#CC79A7"
REFERENCE_COLOR = "#555555"

#: Okabe-Ito colours for any other series (e.g. several validation metrics), in cycle order.
SERIES_COLORS: tuple[str, ...] = (
    "#0072B2",
    "#D55E00",
    "#009E73",
    "#E69F00",
    "#CC79A7",
    "#56B4E9",
    "#F0E442",
    "#000000",
)

DPI = 150
RC_PARAMS: dict[str, object] = {
    "axes.prop_cycle": cycler(color=list(SERIES_COLORS)),
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "savefig.facecolor": "white",
    "figure.facecolor": "white",
    "axes.facecolor": "white",
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "lines.linewidth": 1.8,
    "lines.markersize": 5,
}


def method_label(method: str) -> str:
    """Display name of ``method`` (the raw name when unknown)."""
    return METHOD_LABELS.get(method, method)


def method_color(method: str) -> str:
    """Hex colour of ``method`` (black when unknown)."""
    return METHOD_COLORS.get(method, "#000000")


@contextmanager
def figure_style() -> Iterator[None]:
    """Context in which matplotlib uses cxrclip's rc parameters (restored afterwards).

    Create the figure *inside* the context: rc parameters are read when artists are made.
    """
    with matplotlib.rc_context(RC_PARAMS):
        yield


def new_figure(width_in: float, height_in: float, layout: str | None = "constrained") -> Figure:
    """A pyplot-free ``Figure`` of ``width_in`` x ``height_in`` inches (Agg canvas, no display).

    ``layout="constrained"`` keeps titles, labels and legends from overlapping; ``None`` for manual layout.
    """
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), dpi=DPI, layout=layout)


def wrap(text: str, width: int = 60) -> str:
    """``text`` wrapped to lines of at most ``width`` characters; nothing is dropped (no clipping).

    Runs of whitespace collapse to one space; words longer than ``width`` are split.
    """
    clean = " ".join(str(text).split())
    if not clean:
        return ""
    return "\n".join(
        textwrap.wrap(clean, width=width, break_long_words=True, break_on_hyphens=True)
    )


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically (tight bounding box, white background).

    Figures are plain ``matplotlib.figure.Figure`` objects (no pyplot state to close).
    """
    from cxrclip.data.io import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight", pad_inches=0.15)
    return path
