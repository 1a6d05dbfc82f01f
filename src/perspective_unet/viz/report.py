"""A report to open in a browser: one self-contained HTML file of tables, box plots and slice overlays.

Everything the page needs is inside it: the style sheet and script inline (:mod:`~perspective_unet.viz.report_page`),
every picture a PNG ``data:`` URI; it loads nothing from the network and needs no server. It is drawn from a
:class:`ReportPage` of tables, figures and :class:`CaseSlices` (arrays turned into pictures here);
:mod:`perspective_unet.engine.report` reads an evaluation folder into one.

For each case with volumes, the page shows its worst and best slice (lowest and highest Dice over the classes
present in the reference or the prediction) as image / reference / prediction panels, and a slider that steps
through its slices with foreground (at most ``max_frames`` of them, evenly spaced). Panels are downsampled to at most
``panel_px`` pixels a side and encoded as palette PNGs: a 512 x 512 CT case with a slider of 24 slices takes about
0.5 MB of the page, its worst and best slice alone about 50 kB.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from perspective_unet.outputs import atomic_write
from perspective_unet.viz.overlay import overlay
from perspective_unet.viz.palette import class_color
from perspective_unet.viz.report_page import SCRIPT, STYLE

__all__ = [
    "CaseSlices",
    "ReportPage",
    "ReportTable",
    "case_slices",
    "png_data_uri",
    "render_report",
    "slice_dice",
    "write_report",
]

Cell = str | int | float | None


@dataclass(frozen=True)
class ReportTable:
    """A table of the page.

    Attributes:
        title: Its heading.
        headers: Column names.
        rows: Cells by row: text, or numbers shown with ``digits`` decimals (None and NaN as ``n/a``).
        sortable: Whether clicking a header sorts the rows.
        digits: Decimals of floats.
        total: The last row is a total (a mean over the rows above): drawn apart and never sorted.
        links: Per row, the id of a case section the first cell links to (empty: no link).
    """

    title: str
    headers: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]
    sortable: bool = False
    digits: int = 3
    total: bool = False
    links: tuple[str, ...] = ()


@dataclass(frozen=True)
class CaseSlices:
    """One case's pictures: its worst and best slice, and the frames its slider steps through.

    Attributes:
        case: The case's name.
        note: A line shown under the name (its scores).
        worst, best: (slice index, Dice of that slice, PNG of image | reference | prediction).
        frames: (slice index, PNG) for the slider, in slice order (empty: no slider).
    """

    case: str
    note: str
    worst: tuple[int, float, bytes]
    best: tuple[int, float, bytes]
    frames: tuple[tuple[int, bytes], ...]

    @property
    def anchor(self) -> str:
        """The id of the case's section."""
        return anchor(self.case)


@dataclass(frozen=True)
class ReportPage:
    """What the page shows, top to bottom.

    Attributes:
        title: The page's title.
        notes: Lines under the title (what was evaluated, the metric conventions).
        tables: The summary and per-case tables.
        figures: (caption, PNG) pairs: the box plots.
        cases: The cases' slices.
        class_names: Names by class id, background first, for the color legend.
    """

    title: str
    notes: tuple[str, ...] = ()
    tables: tuple[ReportTable, ...] = ()
    figures: tuple[tuple[str, bytes], ...] = ()
    cases: tuple[CaseSlices, ...] = ()
    class_names: tuple[str, ...] = field(default=())


def anchor(case: str) -> str:
    """An HTML id for a case's section."""
    return "case-" + "".join(c if c.isalnum() or c in "-_" else "_" for c in case)


def png_data_uri(png: bytes) -> str:
    """A ``data:`` URI of PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _png(rgb: np.ndarray) -> bytes:
    """An RGB picture as a palette PNG: gray levels and a few blended class colors fit 256 entries, at a quarter of
    the bytes of RGB."""
    from PIL import Image

    picture = Image.fromarray(rgb).quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=7)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------------------------------
# Slices
# --------------------------------------------------------------------------------------------------------------------


def slice_dice(reference: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Each slice's Dice, averaged over the classes present in its reference or prediction (NaN where neither has
    any foreground).

    Example:
        >>> reference = np.zeros((3, 2, 2), dtype=np.uint8); reference[0, 0] = 1; reference[1] = 2
        >>> prediction = reference.copy(); prediction[1, 0] = 0
        >>> slice_dice(reference, prediction).round(3).tolist()
        [1.0, 0.667, nan]
    """
    reference, prediction = np.asarray(reference), np.asarray(prediction)
    classes = [int(k) for k in np.union1d(np.unique(reference), np.unique(prediction)) if k > 0]
    total = np.zeros(reference.shape[0])
    count = np.zeros(reference.shape[0])
    axes = tuple(range(1, reference.ndim))
    for k in classes:
        ref, pred = reference == k, prediction == k
        size = ref.sum(axis=axes) + pred.sum(axis=axes)
        present = size > 0
        overlap = (ref & pred).sum(axis=axes)
        total[present] += 2 * overlap[present] / size[present]
        count += present
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _panel(picture: np.ndarray, panel_px: int) -> np.ndarray:
    """An RGB picture fitted to at most ``panel_px`` a side: averaged down, or enlarged by whole pixels."""
    from PIL import Image

    height, width = picture.shape[:2]
    scale = panel_px / max(height, width)
    if scale >= 2:
        factor = int(scale)
        return np.repeat(np.repeat(picture, factor, axis=0), factor, axis=1)
    if scale >= 1:
        return picture
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(picture).resize(size, Image.Resampling.BOX))


def _triplet(image: np.ndarray, reference: np.ndarray, prediction: np.ndarray, value_range, panel_px: int) -> bytes:
    panels = [
        _panel(overlay(image, None, value_range=value_range), panel_px),
        _panel(overlay(image, reference, value_range=value_range), panel_px),
        _panel(overlay(image, prediction, value_range=value_range), panel_px),
    ]
    gap = np.full((panels[0].shape[0], 4, 3), 255, dtype=np.uint8)
    return _png(np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1))


def case_slices(
    case: str,
    image: np.ndarray,
    reference: np.ndarray,
    prediction: np.ndarray,
    *,
    note: str = "",
    max_frames: int = 24,
    panel_px: int = 160,
) -> CaseSlices:
    """A case's worst and best slices and its slider frames, from canonical (Z, H, W) volumes of one shape.

    Args:
        case: The case's name.
        image: Intensities (shown from their 1st to 99th percentile, black to white).
        reference: Reference class ids.
        prediction: Predicted class ids.
        note: A line shown under the case's name.
        max_frames: The most slices the slider steps through (evenly spaced over those with foreground, the worst
            and best added); 0 for no slider.
        panel_px: The largest side of a panel in pixels.

    Raises:
        ValueError: The volumes differ in shape.
    """
    image, reference, prediction = (np.asarray(v) for v in (image, reference, prediction))
    if not image.shape == reference.shape == prediction.shape or image.ndim != 3:
        raise ValueError(
            f"case {case}: image {image.shape}, reference {reference.shape} and prediction {prediction.shape} must be "
            "(Z, H, W) volumes of one shape."
        )
    finite = image[np.isfinite(image)]
    value_range = (float(np.percentile(finite, 1)), float(np.percentile(finite, 99))) if finite.size else (0.0, 1.0)
    dice = slice_dice(reference, prediction)
    scored = np.flatnonzero(np.isfinite(dice))
    if scored.size:
        foreground = (reference > 0).reshape(len(dice), -1).sum(axis=1)
        # Ties go to the slice with the most reference foreground, the most telling one to look at.
        worst = int(min(scored, key=lambda z: (dice[z], -foreground[z])))
        best = int(max(scored, key=lambda z: (dice[z], foreground[z])))
        shown = scored
    else:
        worst = best = image.shape[0] // 2
        shown = np.arange(image.shape[0])
    if len(shown) > max_frames:
        shown = shown[np.unique(np.linspace(0, len(shown) - 1, max_frames).round().astype(int))]
    frame_slices = sorted({int(z) for z in shown} | {worst, best}) if max_frames > 0 else [worst, best]
    pictures = {z: _triplet(image[z], reference[z], prediction[z], value_range, panel_px) for z in frame_slices}
    frames = tuple((z, pictures[z]) for z in frame_slices) if max_frames > 0 else ()
    return CaseSlices(
        case,
        note,
        (worst, float(dice[worst]), pictures[worst]),
        (best, float(dice[best]), pictures[best]),
        frames,
    )


# --------------------------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------------------------


def _cell(value: Cell, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '<td class="na" data-value="n/a">n/a</td>'
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        return f"<td>{html.escape(str(value))}</td>"
    text = f"{value:.{digits}f}" if isinstance(value, (float, np.floating)) else str(value)
    return f'<td data-value="{float(value)!r}">{text}</td>'


def _table(table: ReportTable, index: int) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    body_rows, total = list(table.rows), None
    if table.total and body_rows:
        total = body_rows.pop()
    lines = []
    for r, row in enumerate(body_rows):
        cells = [_cell(v, table.digits) for v in row]
        link = table.links[r] if r < len(table.links) else ""
        if link:
            cells[0] = f'<td><a href="#{link}">{html.escape(str(row[0]))}</a></td>'
        lines.append("<tr>" + "".join(cells) + "</tr>")
    foot = ""
    if total is not None:
        foot = '<tfoot><tr class="total">' + "".join(_cell(v, table.digits) for v in total) + "</tr></tfoot>"
    classes = ' class="sortable"' if table.sortable else ""
    hint = ' <span class="columns">(click a column to sort)</span>' if table.sortable else ""
    return (
        f'<h2>{html.escape(table.title)}{hint}</h2>\n<div class="scroll"><table id="table-{index}"{classes}><thead><tr>'
        f"{head}</tr></thead><tbody>\n" + "\n".join(lines) + f"\n</tbody>{foot}</table></div>"
    )


def _legend(class_names: Sequence[str]) -> str:
    entries = []
    for k, name in enumerate(class_names):
        if k == 0:
            continue
        r, g, b = (int(v) for v in class_color(k))
        entries.append(f'<span><i style="background: rgb({r}, {g}, {b})"></i>{k} {html.escape(name)}</span>')
    return f'<p class="legend">{"".join(entries)}</p>' if entries else ""


def _figure(png: bytes, caption: str, css: str = "") -> str:
    return (
        f'<figure><img class="{css}" alt="{html.escape(caption)}" src="{png_data_uri(png)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _case(view: CaseSlices) -> str:
    worst, best = view.worst, view.best

    def label(kind: str, chosen: tuple[int, float, bytes]) -> str:
        score = "no foreground" if math.isnan(chosen[1]) else f"Dice {chosen[1]:.3f}"
        return f"{kind} slice {chosen[0]} ({score})"

    head = (
        f'<section class="case" id="{view.anchor}"><h3>{html.escape(view.case)}</h3>'
        f'<p class="note">{html.escape(view.note)}</p>'
        '<p class="columns">image | reference | prediction</p><div class="panels">'
        f"{_figure(worst[2], label('worst', worst), 'pixels')}{_figure(best[2], label('best', best), 'pixels')}</div>"
    )
    if not view.frames:
        return head + "</section>"
    frames = [{"slice": z, "src": png_data_uri(png)} for z, png in view.frames]
    start = next(i for i, (z, _) in enumerate(view.frames) if z == worst[0])
    data = json.dumps(frames).replace("</", "<\\/")
    return head + (
        f'<div class="slider" data-case="{html.escape(view.case)}">'
        f'<input type="range" min="0" max="{len(frames) - 1}" value="{start}" step="1" '
        f'aria-label="slice of {html.escape(view.case)}"><output></output><br>'
        f'<img class="pixels" alt="slice of {html.escape(view.case)}" src="{frames[start]["src"]}">'
        f'<script type="application/json">{data}</script></div></section>'
    )


def render_report(page: ReportPage) -> str:
    """The page as one HTML document (see the module docstring)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # No request may leave the file: images only from data: URIs, no connections at all.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">",
        f"<title>{html.escape(page.title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(page.title)}</h1>",
        *(f'<p class="note">{html.escape(line)}</p>' for line in page.notes),
    ]
    for index, table in enumerate(page.tables):
        parts.append(_table(table, index))
    if page.figures:
        parts.append("<h2>Per-class distributions</h2>")
        parts.extend(_figure(png, caption) for caption, png in page.figures)
    if page.cases:
        parts.append("<h2>Cases: worst and best slices</h2>")
        parts.append(_legend(page.class_names))
        parts.extend(_case(view) for view in page.cases)
    parts.append(f"<script>{SCRIPT}</script></body></html>")
    return "\n".join(parts) + "\n"


def write_report(page: ReportPage, path: str | os.PathLike[str]) -> Path:
    """Write :func:`render_report` of ``page`` to ``path`` atomically."""
    text = render_report(page)
    return atomic_write(path, lambda target: target.write_text(text, encoding="utf-8"))
