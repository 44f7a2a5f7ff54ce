"""``ensemble-mcp plot PROFILE -o run.png``: a run's timeline, one row per slot, as a PNG.

One bar per task on each slot it used, coloured by status; beneath, the share of slots busy over
time; the run's numbers in the title. Needs matplotlib (the ``plot`` extra); draws off-screen
(Agg), so it works on a login node without a display.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.profile import Profile, read_profile, slot_events, utilisation

__all__ = ("PlotError", "PlotSummary", "plot_profile")

STATUS_COLOURS = {
    "success": "#2e7d32",
    "failed": "#c62828",
    "timeout": "#ef6c00",
    "cancelled": "#757575",
}
_MISSING = (
    "ensemble-mcp plot needs matplotlib, an optional extra: pip install 'hpc-ensemble-mcp[plot]' "
    "(in a clone: pip install -e '.[plot]'; or just pip install matplotlib)"
)
_MAX_LABELLED_ROWS = 40
_WIDTH_IN = 12.0


class PlotError(Exception):
    """The picture cannot be drawn: matplotlib is missing or the profile is unusable."""


@dataclass(frozen=True)
class PlotSummary:
    """What was drawn.

    Attributes:
        path: the image file.
        rows: slots drawn (one row each).
        bars: task bars drawn (a task on two slots is two bars).
        width_px: image width in pixels.
        height_px: image height in pixels.
    """

    path: Path
    rows: int
    bars: int
    width_px: int
    height_px: int


def plot_profile(
    profile: str | Path | Profile, output: str | Path, *, dpi: int = 100
) -> PlotSummary:
    """Draw the timeline of ``profile`` (a path or a read ``Profile``) into the PNG ``output``.

    A ``basic`` profile works too: its slot rows are derived from each task's node and CPUs.

    Raises:
        PlotError: matplotlib is not installed, or the profile has no task that ran.
        ValueError: the profile file is not a profile (see ``core.profile.read_profile``).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError as exc:
        raise PlotError(_MISSING) from exc
    data = profile if isinstance(profile, Profile) else read_profile(profile)
    events = data.slots or slot_events(data.tasks)
    if not events:
        raise PlotError("the profile has no task that ran: nothing to draw")
    rows = sorted(
        {(s["node"], s["cpu"]) for s in data.run.get("slots", [])}
        | {(e["node"], e["cpu"]) for e in events},
        key=lambda slot: (slot[0], -1 if slot[1] is None else slot[1]),
    )
    row_of = {slot: i for i, slot in enumerate(rows)}
    start = data.run.get("start") or min(e["start"] for e in events)
    end = max(e["end"] for e in events)
    wall = max(end - start, 1e-9)

    timeline_in = min(max(0.22 * len(rows), 2.5), 24.0)
    figure = Figure(figsize=(_WIDTH_IN, timeline_in + 2.6), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(
        2, 1, sharex=True, gridspec_kw={"height_ratios": [timeline_in, 1.6]}
    )
    _draw_bars(top, events, row_of, start, wall)
    _label_rows(top, rows, data.run.get("num_slots", 0))
    present = [s for s in STATUS_COLOURS if any(e["status"] == s for e in events)]
    top.legend(
        handles=[Patch(color=STATUS_COLOURS[s], label=s) for s in present],
        loc="upper right",
        fontsize="small",
        framealpha=0.9,
    )
    times, fractions = utilisation(events, max(data.run.get("num_slots", 0), len(rows)))
    offsets = [t - start for t in times]
    percent = [100 * f for f in fractions]
    bottom.fill_between(offsets, percent, step="post", color="#1565c0", alpha=0.35, linewidth=0)
    bottom.step(offsets, percent, where="post", color="#1565c0", linewidth=1)
    bottom.set_ylim(0, 105)
    bottom.set_xlim(0, wall)
    bottom.set_ylabel("slots busy (%)")
    bottom.set_xlabel("seconds since the first task was submitted")
    bottom.grid(axis="y", alpha=0.3)
    figure.suptitle(_title(data.run), fontsize="medium")
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, format="png")
    width, height = figure.canvas.get_width_height()
    return PlotSummary(out, len(rows), len(events), width, height)


def _draw_bars(
    axes: Any, events: list[dict[str, Any]], row_of: dict[Any, int], start: float, wall: float
) -> None:
    # A task of microseconds in a run of minutes would be invisible: draw every bar >= ~1 pixel.
    least = wall / 1000
    per_row: dict[int, tuple[list[tuple[float, float]], list[str]]] = {}
    for event in events:
        spans, colours = per_row.setdefault(row_of[(event["node"], event["cpu"])], ([], []))
        spans.append((event["start"] - start, max(event["end"] - event["start"], least)))
        colours.append(STATUS_COLOURS.get(event["status"], "#000000"))
    for row, (spans, colours) in per_row.items():
        axes.broken_barh(spans, (row - 0.4, 0.8), facecolors=colours, linewidth=0)


def _label_rows(axes: Any, rows: list[tuple[str, int | None]], num_slots: int) -> None:
    axes.set_ylim(len(rows) - 0.5, -0.5)  # first slot on top
    labels = [node if cpu is None else f"{node}:{cpu}" for node, cpu in rows]
    if len(rows) <= _MAX_LABELLED_ROWS:
        axes.set_yticks(range(len(rows)), labels, fontsize="small")
    else:
        step = -(-len(rows) // _MAX_LABELLED_ROWS)
        axes.set_yticks(range(0, len(rows), step), labels[::step], fontsize="x-small")
    idle = f" ({num_slots - len(rows)} more ran nothing)" if num_slots > len(rows) else ""
    axes.set_ylabel(f"slot (node:cpu), {len(rows)} rows{idle}")
    axes.grid(axis="x", alpha=0.3)


def _title(run: dict[str, Any]) -> str:
    counts = run.get("counts") or {}
    done = ", ".join(f"{n} {status}" for status, n in counts.items() if n)
    line = (
        f"{run['num_tasks']} tasks ({done}) on {run['num_slots']} slots in {run['wall_s']:.3g} s: "
        f"{run['utilisation']:.0%} busy, {run['tasks_per_s']:.4g} tasks/s"
    )
    means = []
    if run.get("mean_queue_s") is not None:
        means.append(f"mean wait {run['mean_queue_s']:.3g} s")
    if run.get("mean_run_s") is not None:
        means.append(f"mean run {run['mean_run_s']:.3g} s")
    return line + ("\n" + ", ".join(means) if means else "")


def add_plot_command(subparsers: Any) -> None:
    """Register ``plot`` on an argparse sub-parser set."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "plot",
        help="draw a run's profile as a timeline PNG (needs matplotlib)",
        description="Draw a profile written by a run with profile='timeline' (or 'basic'): one "
        "row per slot, one bar per task coloured by status, utilisation beneath.",
    )
    parser.add_argument("profile", help="profile file (profiles/run-*.jsonl)")
    parser.add_argument("-o", "--output", help="PNG to write (default: PROFILE with .png)")
    parser.add_argument("--dpi", type=int, default=100, help="resolution (%(default)s)")
    parser.set_defaults(handler=run_plot)


def run_plot(args: argparse.Namespace) -> int:
    """Draw the picture for parsed ``args``; 0 on success, 1 with the reason otherwise."""
    output = args.output or str(Path(args.profile).with_suffix(".png"))
    if args.dpi < 10:
        sys.stderr.write(f"ensemble-mcp plot: --dpi must be at least 10, got {args.dpi}\n")
        return 1
    try:
        summary = plot_profile(args.profile, output, dpi=args.dpi)
    except (PlotError, ValueError, OSError) as exc:
        sys.stderr.write(f"ensemble-mcp plot: {exc}\n")
        return 1
    sys.stdout.write(
        f"{summary.path}: {summary.rows} slots, {summary.bars} task bars, "
        f"{summary.width_px}x{summary.height_px} px\n"
    )
    return 0
