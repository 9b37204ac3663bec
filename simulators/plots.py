"""Pictures of scenario runs (matplotlib, Agg backend: files only, no display needed).

- ``plot_times``: the distribution of time to arrival, one curve per run (volunteers with
  waves, naive, stations), with the target line;
- ``plot_cells``: the grid cells of the service area coloured by the share of their
  incidents reached within the target;
- ``plot_sweep``: the share within the target against the number of volunteers;
- ``plot_fleet``: the share and the mean time against volunteers on duty;
- ``plot_frontier``: the share against the alert load, one point per policy;
- ``plot_levers``: the points each lever setting is worth.

matplotlib is the ``sim`` extra (``pip install -e '.[sim]'``); it is imported only here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: never look for a display

import matplotlib.pyplot as plt
from matplotlib.collections import PatchCollection
from matplotlib.colors import Normalize
from matplotlib.patches import Polygon as PolygonPatch
from matplotlib.ticker import FuncFormatter, NullFormatter
from shapely.geometry import MultiPolygon, Polygon

from geo.area import ServiceArea

__all__ = [
    "FrontierPanel",
    "plot_cells",
    "plot_fleet",
    "plot_frontier",
    "plot_levers",
    "plot_sweep",
    "plot_times",
]

_COLOURS = {"waves": "#1b7837", "naive": "#e08214", "stations": "#5e3c99"}
_DPI = 110


def _polygons(shape: Polygon | MultiPolygon) -> list[Polygon]:
    return list(shape.geoms) if isinstance(shape, MultiPolygon) else [shape]


def plot_times(
    runs: Mapping[str, Sequence[float | None]],
    path: Path,
    *,
    target_s: float = 180.0,
    colours: Mapping[str, str] | None = None,
    styles: Mapping[str, str] | None = None,
) -> Path:
    """Histogram and cumulative share of time to arrival (None: never reached), per run.

    ``colours`` and ``styles`` by label, as for ``plot_sweep``; without them a label
    that is a policy name ("waves", "naive", "stations") gets that policy's colour.
    """
    fig, (hist, cdf) = plt.subplots(1, 2, figsize=(11, 4.2))
    finite = [t for times in runs.values() for t in times if t is not None]
    top_min = max(15.0, min(40.0, math.ceil(max(finite, default=600.0) / 60.0)))
    bins = [i * 0.5 for i in range(int(top_min * 2) + 1)]
    for label, times in runs.items():
        colour = (colours or {}).get(label, _COLOURS.get(label.split()[0]))
        style = (styles or {}).get(label, "-")
        minutes = sorted(min(t / 60.0, top_min) for t in times if t is not None)
        n = len(times)
        hist.hist(
            minutes,
            bins=bins,
            weights=[1.0 / n] * len(minutes),
            histtype="step",
            linewidth=1.8,
            color=colour,
            linestyle=style,
            label=label,
        )
        within = sum(t is not None and t <= target_s for t in times) / n if n else 0.0
        xs = [0.0, *minutes, top_min]
        ys = [0.0, *[(i + 1) / n for i in range(len(minutes))], len(minutes) / n]
        cdf.step(
            xs,
            ys,
            where="post",
            color=colour,
            linestyle=style,
            linewidth=1.8,
            label=f"{label}: {within:.0%} within {target_s:.0f} s",
        )
    for ax in (hist, cdf):
        ax.axvline(target_s / 60.0, color="#b2182b", linestyle="--", linewidth=1.2)
        ax.set_xlabel("time from report to first responder on scene (min)")
        ax.set_xlim(0, top_min)
        ax.grid(alpha=0.3)
    hist.text(
        target_s / 60.0 + 0.2,
        hist.get_ylim()[1] * 0.92,
        f"{target_s:.0f} s target",
        color="#b2182b",
    )
    hist.set_ylabel("share of incidents per 30 s")
    hist.set_title("Distribution of time to arrival")
    cdf.set_ylabel("share of incidents reached")
    cdf.set_ylim(0, 1)
    cdf.set_title("Cumulative (never reached: stays below 100 %)")
    hist.legend(loc="upper right", fontsize=8)
    cdf.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return path


def plot_cells(
    area: ServiceArea,
    cells: Sequence[Mapping[str, Any]],
    path: Path,
    *,
    title: str,
    stations: Sequence[Sequence[float]] = (),
    target_s: float = 180.0,
) -> Path:
    """The grid coloured by share within the target; grey where no incident happened."""
    share = {c["cell"]: c["within_target_share"] for c in cells}
    counts = {c["cell"]: c["incidents"] for c in cells}
    norm = Normalize(0.0, 1.0)
    cmap = plt.get_cmap("RdYlGn")
    patches, colours = [], []
    for cell in area.cells:
        value = share.get(cell.id)
        colour = "#dddddd" if value is None else cmap(norm(value))
        for poly in _polygons(cell.polygon):
            patches.append(PolygonPatch(list(poly.exterior.coords), closed=True))
            colours.append(colour)
    fig, ax = plt.subplots(figsize=(7.5, 8))
    ax.add_collection(
        PatchCollection(patches, facecolors=colours, edgecolors="white", linewidths=0.3)
    )
    for poly in _polygons(area.outline):
        xs, ys = poly.exterior.xy
        ax.plot(xs, ys, color="#333333", linewidth=1.0)
    if stations:
        ax.scatter(
            [s[1] for s in stations],
            [s[0] for s in stations],
            marker="^",
            s=50,
            color="#2166ac",
            edgecolors="white",
            zorder=3,
            label="stations",
        )
        ax.legend(loc="lower right")
    min_lon, min_lat, max_lon, max_lat = area.bounds
    ax.set_xlim(min_lon - 0.005, max_lon + 0.005)
    ax.set_ylim(min_lat - 0.005, max_lat + 0.005)
    # Degrees of longitude are shorter than degrees of latitude here.
    ax.set_aspect(1.0 / math.cos(math.radians((min_lat + max_lat) / 2)))
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    n = sum(counts.values())
    ax.set_title(
        f"{title}\nshare of incidents reached within {target_s:.0f} s per 500 m cell "
        f"({n} incidents; grey: none)",
        fontsize=10,
    )
    bar = fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, shrink=0.6)
    bar.set_label(f"share within {target_s:.0f} s")
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return path


def plot_sweep(
    series: Mapping[str, Sequence[tuple[int, float]]],
    path: Path,
    *,
    goal: float = 0.9,
    title: str = "",
    target_s: float = 180.0,
    colours: Mapping[str, str] | None = None,
    styles: Mapping[str, str] | None = None,
) -> Path:
    """Share within the target against volunteers on duty, one line per variant.

    ``colours`` and ``styles`` (matplotlib line styles) by label; without them a label
    starting with a policy name ("waves", "naive") gets that policy's colour.
    """
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for label, points in series.items():
        xs = [p[0] for p in points]
        ys = [p[1] for p in points]
        ax.plot(
            xs,
            ys,
            marker="o",
            linewidth=1.8,
            label=label,
            color=(colours or {}).get(label, _COLOURS.get(label.split()[0])),
            linestyle=(styles or {}).get(label, "-"),
        )
    ax.axhline(goal, color="#b2182b", linestyle="--", linewidth=1.2)
    ax.text(
        ax.get_xlim()[0], goal + 0.01, f" goal: {goal:.0%} within {target_s:.0f} s", color="#b2182b"
    )
    ax.set_xscale("log")
    ax.set_xlabel("volunteers on duty (log scale)")
    ax.set_ylabel(f"share of incidents reached within {target_s:.0f} s")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3, which="both")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")  # the curves rise from the lower left
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return path


# (panel title, ours as (x, y) points, baselines by name as (x, y), ours' default (x, y))
FrontierPanel = tuple[
    str,
    Sequence[tuple[float, float]],
    Mapping[str, tuple[float, float]],
    tuple[float, float],
]


def plot_frontier(panels: Sequence[FrontierPanel], path: Path, *, target_s: float = 180.0) -> Path:
    """Share within the target against alerts per volunteer per day, one panel per fleet.

    Ours at several alert budgets as a line (its default, no budget, an open circle),
    each other policy a labelled point.
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.8), squeeze=False)
    for ax, (title, ours, others, default) in zip(axes[0], panels, strict=True):
        ax.plot(
            [p[0] for p in ours],
            [p[1] for p in ours],
            marker="o",
            markersize=4,
            color=_COLOURS["waves"],
            label="ours (waves) with --alert-budget K",
        )
        ax.plot(
            [default[0]],
            [default[1]],
            marker="o",
            markersize=10,
            markerfacecolor="none",
            color=_COLOURS["waves"],
            linestyle="none",
            label="ours, no budget (default)",
        )
        for name, (x, y) in others.items():
            colour = _COLOURS.get(name, "#b2182b")
            ax.plot([x], [y], marker="D", color=colour, linestyle="none")
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, -10), fontsize=8)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("alerts per volunteer on duty per day (log scale)")
        ax.set_ylabel(f"share of incidents reached within {target_s:.0f} s")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return path


def plot_fleet(
    points: Sequence[tuple[int, float | None, float | None]],
    path: Path,
    *,
    goal: float = 0.9,
    mean_goal_s: float = 180.0,
    title: str = "",
    target_s: float = 180.0,
) -> Path:
    """Share within the target and mean time to arrival against volunteers on duty.

    ``points``: (volunteers on duty, share within the target, mean seconds of those
    reached); the goal lines drawn on each.
    """
    fig, (share, mean) = plt.subplots(1, 2, figsize=(11, 4.4))
    xs = [p[0] for p in points]
    share.plot(xs, [p[1] for p in points], marker="o", color=_COLOURS["waves"])
    share.axhline(goal, color="#b2182b", linestyle="--", linewidth=1.2)
    share.set_ylabel(f"share of incidents reached within {target_s:.0f} s")
    share.set_ylim(0, 1)
    share.set_title(f"Within {target_s:.0f} s (goal {100 * goal:.0f} %, dashed)", fontsize=10)
    mean.plot(xs, [p[2] for p in points], marker="o", color=_COLOURS["waves"])
    mean.axhline(mean_goal_s, color="#b2182b", linestyle="--", linewidth=1.2)
    mean.set_ylabel("mean time to arrival of those reached (s)")
    mean.set_ylim(0, None)
    mean.set_title(f"Mean (goal {mean_goal_s:.0f} s, dashed)", fontsize=10)
    for ax in (share, mean):
        ax.set_xscale("log")
        ax.set_xlabel("qualified volunteers on duty (log scale)")
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return path


def plot_levers(rows: Sequence[tuple[str, float]], path: Path, *, title: str = "") -> Path:
    """Points gained (or lost) within the target by each lever setting, as bars."""
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.4))
    labels = [r[0] for r in rows]
    values = [r[1] for r in rows]
    ax.barh(labels, values, color=["#1b7837" if v >= 0 else "#b2182b" for v in values])
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:+.1f} ", va="center", ha="left" if v >= 0 else "right", fontsize=8)
    ax.axvline(0, color="#333333", linewidth=0.8)
    lo, hi = min([*values, 0.0]), max([*values, 0.0])
    pad = 0.15 * (hi - lo) + 1.0  # room for the value labels inside the axes
    ax.set_xlim(lo - pad, hi + pad)
    ax.invert_yaxis()
    ax.set_xlabel("points within the target against the defaults")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return path
