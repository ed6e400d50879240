"""One detection's four learned distributions beside its crop (the paper's Fig. 3 and 13): the drawing
chapter 5's gallery (:func:`gflnb.chapters.viz.plot_distribution_gallery`) and the explorer
(:mod:`gflnb.chapters.explorer`) share, so that neither imports the other."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.gridspec import SubplotSpec

from .analysis import SIDES

PALETTE = sns.color_palette("colorblind", 10)  # every notebook figure's colours (gflnb.chapters.viz draws with it too)


def side_support(box: np.ndarray, dist: np.ndarray, stride: float, scale: Sequence[float] = (1.0, 1.0),
                 mass: float = 0.95) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Where each side's distribution puts that side, in original-image pixels.

    ``box [4]`` (x1, y1, x2, y2) is the predicted box, which the Integral places at each
    distribution's mean; ``dist [4, R+1]`` is over distances (in strides) from the anchor point.
    Returns per side the image coordinate of every bin ``[R+1]`` and its density ``[R+1]`` (the
    bin's probability over its width in pixels, so the four sides share a scale), and ``[4, 2]``
    the span holding ``mass`` of each distribution (the crop must cover it).
    """
    bins = np.arange(dist.shape[1])
    coords, dens, spans = [], [], []
    for k in range(4):
        p = dist[k] / dist[k].sum()
        s = stride / (scale[0] if k % 2 == 0 else scale[1])  # one bin, in original-image pixels
        dens.append(p / s)
        # distance from the anchor grows outwards: to the left of x1, above y1, right of x2, below y2
        sign = -1.0 if k < 2 else 1.0
        x = box[k] + sign * (bins - (p * bins).sum()) * s
        coords.append(x)
        c = np.cumsum(p)
        lo, hi = int(np.searchsorted(c, (1 - mass) / 2)), int(np.searchsorted(c, 1 - (1 - mass) / 2))
        spans.append(sorted((x[min(lo, len(x) - 1)], x[min(hi, len(x) - 1)])))
    return coords, dens, np.asarray(spans)


SIDE_COLORS = {"left": PALETTE[0], "right": PALETTE[1], "top": PALETTE[2], "bottom": PALETTE[4]}


def draw_edge_distributions(fig: Figure, cell: SubplotSpec, img_bgr: np.ndarray, box: np.ndarray, dist: np.ndarray,
                            stride: float, scale: Sequence[float] = (1.0, 1.0), gt: Optional[np.ndarray] = None,
                            ambiguity: Optional[Sequence[float]] = None, title: str = "",
                            margin: float = 0.25) -> Axes:
    """One detection, the way the paper's Fig. 3 and 13 read: a crop around the box, and beside it
    each side's distribution as a filled density profile on the crop's own axis.

    The left and right sides' distributions (over x) lie above the crop, the top and bottom sides'
    (over y) to its right, so each density shares its coordinate with the edge it places. Solid
    lines: the predicted edges; dashed: the gt edges. ``cell`` is a SubplotSpec of ``fig``.
    Returns the crop's axes.
    """
    h, w = img_bgr.shape[:2]
    coords, density, spans = side_support(box, dist, stride, scale)
    boxes = [box] + ([gt] if gt is not None else [])
    x_lo = min([spans[0][0], spans[2][0]] + [b[0] for b in boxes])
    x_hi = max([spans[0][1], spans[2][1]] + [b[2] for b in boxes])
    y_lo = min([spans[1][0], spans[3][0]] + [b[1] for b in boxes])
    y_hi = max([spans[1][1], spans[3][1]] + [b[3] for b in boxes])
    # a square crop (the cell is square, so pixels stay square although the axes' aspect is free,
    # which the marginals need to line up) around the support, with context; beyond the image: grey
    half = (1 + 2 * margin) * max(x_hi - x_lo, y_hi - y_lo, 8.0) / 2
    cx, cy = (x_lo + x_hi) / 2, (y_lo + y_hi) / 2
    x0, x1, y0, y1 = cx - half, cx + half, cy - half, cy + half
    gs = cell.subgridspec(2, 2, width_ratios=(4, 1.2), height_ratios=(1.2, 4), wspace=0.03, hspace=0.03)
    ax = fig.add_subplot(gs[1, 0])
    ax_x = fig.add_subplot(gs[0, 0], sharex=ax)
    ax_y = fig.add_subplot(gs[1, 1], sharey=ax)
    ax_key = fig.add_subplot(gs[0, 1])
    ax_key.set_axis_off()
    ax.set_facecolor("0.85")
    ax.imshow(img_bgr[..., ::-1], extent=(-0.5, w - 0.5, h - 0.5, -0.5), interpolation="nearest", aspect="auto")
    ax.set_xlim(x0, x1)
    ax.set_ylim(y1, y0)
    amb = list(ambiguity) if ambiguity is not None else [None] * 4
    for k, side in enumerate(SIDES):
        col, dens = SIDE_COLORS[side], density[k]
        label = side if amb[k] is None else f"{side}: {amb[k]:.2f}"
        horizontal = k % 2 == 0
        target = ax_x if horizontal else ax_y
        if horizontal:
            target.fill_between(coords[k], dens, color=col, alpha=0.45, lw=0)
            target.plot(coords[k], dens, color=col, lw=1.2, label=label)
        else:
            target.fill_betweenx(coords[k], dens, color=col, alpha=0.45, lw=0)
            target.plot(dens, coords[k], color=col, lw=1.2, label=label)
        guide = target.axvline if horizontal else target.axhline
        # the edge itself, drawn along the box's extent; a faint guide joins it to its density
        for b, ls, lw in [(box, "-", 2.0)] + ([(gt, (0, (3, 2)), 1.6)] if gt is not None else []):
            if horizontal:
                ax.plot([b[k], b[k]], [b[1], b[3]], color=col, ls=ls, lw=lw, solid_capstyle="butt")
                ax.axvline(b[k], color=col, ls=ls, lw=0.7, alpha=0.45)
            else:
                ax.plot([b[0], b[2]], [b[k], b[k]], color=col, ls=ls, lw=lw, solid_capstyle="butt")
                ax.axhline(b[k], color=col, ls=ls, lw=0.7, alpha=0.45)
            guide(b[k], color=col, ls=ls, lw=1.0)
    ax.set_xticks([])
    ax.set_yticks([])
    for a in (ax_x, ax_y):
        a.tick_params(labelbottom=False, labelleft=False, length=0)
        a.grid(False)
        for sp in a.spines.values():
            sp.set_visible(False)
    ax_x.set_ylim(bottom=0)
    ax_y.set_xlim(left=0)
    handles = ax_x.get_legend_handles_labels()[0] + ax_y.get_legend_handles_labels()[0]
    labels = ax_x.get_legend_handles_labels()[1] + ax_y.get_legend_handles_labels()[1]
    ax_key.legend(handles, labels, loc="center", fontsize=8, frameon=False, handlelength=1.0,
                  title="ambiguity" if ambiguity is not None else None, title_fontsize=8, borderaxespad=0)
    if title:
        ax_x.set_title(title, fontsize=10, loc="left")
    return ax
