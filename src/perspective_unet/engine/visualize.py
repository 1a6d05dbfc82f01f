"""Pictures of segmentations: fixed class colours, overlays of labels on images, figures like the paper's.

``save_overlay_grid`` draws the qualitative figure (rows = slices; columns = image, label overlay, prediction
overlay; a legend of class colours and names). ``feature_maps`` and ``save_feature_figure`` draw heat maps of the
bi-path CNN stages (BPRB), the non-local transformer stages (ENLTB) or the cross-scale integrator's outputs (SCSI)
over the image. Figures are drawn with matplotlib's Agg backend (no display needed) and written atomically.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from perspective_unet.data.resample import resampled_shape
from perspective_unet.engine.inference import zoom_slices
from perspective_unet.engine.sliding_window import stack_context
from perspective_unet.errors import InputError
from perspective_unet.intensity import ImageStats

__all__ = [
    "CLASS_COLOURS",
    "FEATURE_LAYERS",
    "choose_slices",
    "colourize",
    "feature_figure_from_files",
    "feature_maps",
    "feature_titles",
    "overlay",
    "overlay_figure_from_files",
    "overlay_grid_size",
    "overlay_panel",
    "read_canonical",
    "save_feature_figure",
    "save_overlay_grid",
]

logger = logging.getLogger(__name__)

# Fixed colours by class id (index 0 is background). The first eight follow the Synapse organ order of this line of
# work (aorta, gallbladder, left kidney, right kidney, liver, pancreas, spleen, stomach), so figures of different
# runs and papers read alike; later ids cycle through a qualitative palette.
CLASS_COLOURS = np.array(
    [
        (0, 0, 0),
        (230, 25, 75),  # aorta
        (60, 180, 75),  # gallbladder
        (255, 225, 25),  # left kidney
        (0, 130, 200),  # right kidney
        (245, 130, 48),  # liver
        (145, 30, 180),  # pancreas
        (70, 240, 240),  # spleen
        (240, 50, 230),  # stomach
        (210, 245, 60),
        (250, 190, 212),
        (0, 128, 128),
        (220, 190, 255),
        (170, 110, 40),
        (255, 250, 200),
        (128, 0, 0),
    ],
    dtype=np.uint8,
)


def colourize(labels: np.ndarray) -> np.ndarray:
    """(H, W) integer labels to (H, W, 3) uint8 colours."""
    labels = np.asarray(labels).astype(np.int64)
    palette = CLASS_COLOURS
    return palette[np.where(labels > 0, (labels - 1) % (len(palette) - 1) + 1, 0)]


def _to_gray(image: np.ndarray, value_range: tuple[float, float] | None = None) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if value_range is None:
        low, high = float(np.nanmin(image)), float(np.nanmax(image))
    else:
        low, high = float(value_range[0]), float(value_range[1])
    scaled = (image - low) / (high - low) if high > low else np.zeros_like(image)
    return (np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def overlay(
    image: np.ndarray,
    labels: np.ndarray | None,
    alpha: float = 0.45,
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """An (H, W) image in gray with labels blended in colour; returns (H, W, 3) uint8.

    Args:
        image: Intensities; shown from ``value_range`` (black) to its upper end (white), by default the image's own
            minimum and maximum.
        labels: Class ids of the same shape, or None for the gray image alone.
        alpha: Weight of the class colour where a label is non-zero.
        value_range: Intensities shown as black and white.
    """
    gray = np.repeat(_to_gray(image, value_range)[..., None], 3, axis=-1).astype(np.float32)
    if labels is None:
        return gray.astype(np.uint8)
    colours = colourize(labels).astype(np.float32)
    mask = (np.asarray(labels) > 0)[..., None]
    blended = np.where(mask, (1 - alpha) * gray + alpha * colours, gray)
    return blended.round().astype(np.uint8)


def overlay_panel(image: torch.Tensor, label: torch.Tensor, prediction: torch.Tensor) -> np.ndarray:
    """Image, label overlay and prediction overlay side by side, (H, 3W, 3) uint8, for TensorBoard."""
    img = image.detach().float().cpu().numpy()
    img = img[img.shape[0] // 2] if img.ndim == 3 else img  # the middle channel is the slice itself (2.5D input)
    lab = label.detach().cpu().numpy()
    pred = prediction.detach().cpu().numpy()
    return np.concatenate([overlay(img, None), overlay(img, lab), overlay(img, pred)], axis=1)


# --------------------------------------------------------------------------------------------------------------------
# Volumes for figures
# --------------------------------------------------------------------------------------------------------------------


def read_canonical(
    path: str | os.PathLike[str], *, as_label: bool = False, orientation: str | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """A volume in canonical (Z, H, W) order for a figure.

    Args:
        path: A prepared volume (``*.npy.h5`` with datasets ``image`` and ``label``, already canonical), a NIfTI or
            other image file, a DICOM series folder, or a PNG/JPG picture (one slice).
        as_label: Read class ids (the h5 ``label`` dataset; integers otherwise).
        orientation: Canonical orientation code for image files (default ``"SPL"``).

    Returns:
        The raw canonical array (intensities are not normalised) and the image's meta (``format`` is ``"h5"`` for
        prepared volumes).

    Example:
        >>> volume, meta = read_canonical("prepared/test_vol_h5/case0001.npy.h5")  # doctest: +SKIP
    """
    path = Path(path)
    if path.name.lower().endswith(".h5"):
        volume, meta = _read_h5(path, "label" if as_label else "image")
    else:
        from perspective_unet.data.io import CANONICAL_ORIENTATION, read_image, to_canonical

        array, meta = read_image(path, as_label=as_label)
        volume = to_canonical(array, meta, orientation or CANONICAL_ORIENTATION)
    if volume.ndim == 2:
        volume = volume[None]
    if volume.ndim != 3:
        raise InputError(f"{path} holds an array of shape {volume.shape}; expected a (Z, H, W) volume.")
    if as_label:
        if volume.dtype.kind == "f" and not np.isfinite(volume).all():
            raise InputError(f"{path} holds NaN or infinite labels; give a label map of class ids.")
        volume = np.rint(volume).astype(np.int64)
        if volume.size and volume.min() < 0:
            raise InputError(f"{path} holds negative labels; give a label map of class ids (0 = background).")
    return volume, meta


def _read_h5(path: Path, name: str) -> tuple[np.ndarray, dict[str, Any]]:
    import h5py

    if not path.is_file():
        raise InputError(f"{path} does not exist; check the path.")
    try:
        with h5py.File(path, "r") as f:
            if name not in f:
                raise InputError(f"{path} has no {name!r} dataset; prepared volumes hold 'image' and 'label'.")
            volume = np.asarray(f[name])
            attrs = dict(f.attrs.items())
    except InputError:
        raise
    except Exception as exc:  # h5py raises OSError, KeyError and others for damaged files
        raise InputError(f"Cannot read {path}: {type(exc).__name__}: {exc}; prepare or copy the file again.") from exc
    return volume, {"format": "h5", "path": str(path), **attrs}


def _h5_has_label(path: Path) -> bool:
    import h5py

    with h5py.File(path, "r") as f:
        return "label" in f


def _class_names_near(path: Path) -> list[str] | None:
    """Class names of the prepared dataset a ``<root>/<split>_vol_h5/<case>.npy.h5`` file belongs to."""
    import json

    candidate = path.parent.parent / "dataset.json"
    if not path.name.lower().endswith(".h5") or not candidate.is_file():
        return None
    try:
        names = json.loads(candidate.read_text()).get("class_names")
    except (OSError, ValueError):
        return None
    return [str(n) for n in names] if isinstance(names, list) else None


def choose_slices(labels: np.ndarray | None, num_slices: int, depth: int | None = None) -> list[int]:
    """The slices to show: those with the most foreground, kept apart from each other, in increasing order.

    Slices are taken greedily by foreground voxel count, skipping any closer than span / (2 * num_slices) to one
    already chosen (span = the extent of the slices with foreground), so the rows do not show near-identical
    neighbours. Without labels, or with no foreground, the slices are spread evenly.

    Args:
        labels: (Z, H, W) class ids, or None.
        num_slices: How many slices (fewer when the volume has fewer).
        depth: Number of slices when ``labels`` is None.

    Example:
        >>> labels = np.zeros((20, 4, 4), dtype=np.uint8); labels[5:8, :2] = 1; labels[6, :3] = 1
        >>> choose_slices(labels, 2), choose_slices(None, 3, depth=9)
        ([5, 6], [1, 4, 7])
    """
    if num_slices < 1:
        raise ValueError(f"num_slices must be positive, got {num_slices}.")
    depth = int(labels.shape[0]) if labels is not None else int(depth or 0)
    if depth == 0:
        raise ValueError("choose_slices needs labels or a positive depth.")
    count = min(num_slices, depth)
    spread = sorted({int((i + 0.5) * depth / count) for i in range(count)})
    if labels is None:
        return spread
    foreground = (np.asarray(labels) > 0).reshape(depth, -1).sum(axis=1)
    if not foreground.any():
        return spread
    present = np.flatnonzero(foreground)
    min_gap = max(1, (int(present[-1]) - int(present[0]) + 1) // (2 * count))
    order = [int(z) for z in np.argsort(-foreground, kind="stable")]
    chosen: list[int] = []
    for z in order:
        if foreground[z] == 0 or len(chosen) == count:
            break
        if all(abs(z - c) >= min_gap for c in chosen):
            chosen.append(z)
    for z in order:  # too few apart: fill with the next best slices
        if len(chosen) == count:
            break
        if z not in chosen:
            chosen.append(z)
    return sorted(chosen)


# --------------------------------------------------------------------------------------------------------------------
# Drawing helpers
# --------------------------------------------------------------------------------------------------------------------

# Layout of figures, in pixels (figures are drawn at 100 dpi, so 1 inch = 100 px).
DPI = 100
HEADER_PX = 30
LEFT_PX = 80
GAP_PX = 4
LEGEND_ROW_PX = 26
LEGEND_ENTRY_PX = 170
LEGEND_PATCH_PX = 16


def _resize_nearest(picture: np.ndarray, height: int, width: int) -> np.ndarray:
    rows = np.minimum(((np.arange(height) + 0.5) * picture.shape[0] / height).astype(np.int64), picture.shape[0] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * picture.shape[1] / width).astype(np.int64), picture.shape[1] - 1)
    return picture[rows][:, cols]


class _PixelFigure:
    """A matplotlib figure laid out in pixels from the top-left corner."""

    def __init__(self, width: int, height: int) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.width, self.height = int(width), int(height)
        self.figure = Figure(figsize=(self.width / DPI, self.height / DPI), dpi=DPI, facecolor="white")
        FigureCanvasAgg(self.figure)

    def picture(self, rgb: np.ndarray, x: int, y: int) -> None:
        height, width = rgb.shape[:2]
        box = (x / self.width, 1 - (y + height) / self.height, width / self.width, height / self.height)
        axes = self.figure.add_axes(box)
        axes.imshow(rgb, interpolation="nearest", aspect="auto", resample=False)
        axes.set_axis_off()

    def text(self, x: float, y: float, text: str, **kwargs: Any) -> None:
        self.figure.text(x / self.width, 1 - y / self.height, text, **kwargs)

    def patch(self, x: int, y: int, size: int, colour: np.ndarray) -> None:
        from matplotlib.patches import Rectangle

        box = Rectangle(
            (x / self.width, 1 - (y + size) / self.height), size / self.width, size / self.height,
            transform=self.figure.transFigure, facecolor=np.asarray(colour) / 255.0, edgecolor="none",
            antialiased=False,
        )
        self.figure.add_artist(box)

    def save(self, output: str | os.PathLike[str]) -> Path:
        from perspective_unet.data.io import atomic_write_path

        path = Path(output)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = atomic_write_path(path)
        try:
            self.figure.savefig(tmp, dpi=DPI, facecolor="white")
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return path


def _class_colour(class_id: int) -> np.ndarray:
    return colourize(np.array([[class_id]]))[0, 0]


def overlay_grid_size(
    image_shape: Sequence[int], num_rows: int, num_columns: int, num_classes: int, panel_size: int = 256
) -> tuple[int, int]:
    """(width, height) in pixels of the figure :func:`save_overlay_grid` draws.

    Panels are ``panel_size`` pixels high and ``round(panel_size * W / H)`` wide; the figure adds a left margin of
    ``LEFT_PX`` for the slice numbers, a header of ``HEADER_PX`` for the column titles, ``GAP_PX`` after every panel
    and, for ``num_classes - 1`` foreground classes, legend rows of ``LEGEND_ROW_PX`` (plus ``GAP_PX``) holding as
    many entries of ``LEGEND_ENTRY_PX`` as fit.
    """
    panel_h, panel_w = _panel_shape(image_shape, panel_size)
    width = LEFT_PX + num_columns * (panel_w + GAP_PX)
    per_row = max(1, (width - GAP_PX) // LEGEND_ENTRY_PX)
    legend_rows = -(-max(0, num_classes - 1) // per_row)
    height = HEADER_PX + num_rows * (panel_h + GAP_PX) + legend_rows * LEGEND_ROW_PX + (GAP_PX if legend_rows else 0)
    return width, height


def _panel_shape(image_shape: Sequence[int], panel_size: int) -> tuple[int, int]:
    height, width = int(image_shape[-2]), int(image_shape[-1])
    return int(panel_size), max(1, round(panel_size * width / height))


# --------------------------------------------------------------------------------------------------------------------
# Qualitative figure: image, label and prediction overlays
# --------------------------------------------------------------------------------------------------------------------


def save_overlay_grid(
    image: np.ndarray,
    output: str | os.PathLike[str],
    *,
    label: np.ndarray | None = None,
    prediction: np.ndarray | None = None,
    slices: Sequence[int] | None = None,
    num_slices: int = 3,
    class_names: Sequence[str] | None = None,
    alpha: float = 0.45,
    panel_size: int = 256,
    value_range: tuple[float, float] | None = None,
) -> Path:
    """Draw the qualitative figure: one row per slice; columns image, label overlay, prediction overlay; a legend.

    Args:
        image: (Z, H, W) intensities (canonical orientation, e.g. in [0, 1]) or one (H, W) slice.
        output: The figure file (``.png``; matplotlib picks the format from the suffix).
        label: Ground-truth class ids of the image's shape, or None (no label column).
        prediction: Predicted class ids of the image's shape, or None (no prediction column).
        slices: Slice indices to show; by default :func:`choose_slices` of the label (else the prediction).
        num_slices: How many slices to choose when ``slices`` is not given.
        class_names: Names by class id (background first) for the legend; ``class N`` where missing.
        alpha: Weight of the class colours over the image.
        panel_size: Height of each panel in pixels (see :func:`overlay_grid_size` for the whole figure's size).
        value_range: Intensities shown as black and white; default the volume's minimum and maximum.

    Returns:
        The figure's path.

    Example:
        >>> image = np.random.rand(10, 64, 64).astype("float32")
        >>> label = np.zeros((10, 64, 64), dtype=np.uint8); label[4, 20:40, 20:40] = 1
        >>> save_overlay_grid(image, "figure.png", label=label, class_names=["bg", "liver"])  # doctest: +SKIP
        PosixPath('figure.png')
    """
    image = np.asarray(image)
    volumes = {"label": label, "prediction": prediction}
    if image.ndim == 2:
        image = image[None]
        volumes = {k: (None if v is None else np.asarray(v)[None]) for k, v in volumes.items()}
    if image.ndim != 3:
        raise ValueError(f"image must be (Z, H, W) or (H, W), got shape {image.shape}.")
    for name, volume in volumes.items():
        if volume is not None and np.shape(volume) != image.shape:
            raise InputError(f"the {name} has shape {np.shape(volume)} but the image {image.shape}; they must match.")
    label, prediction = volumes["label"], volumes["prediction"]
    if slices is None:
        slices = choose_slices(label if label is not None else prediction, num_slices, depth=image.shape[0])
    slices = [int(z) for z in slices]
    bad = [z for z in slices if not 0 <= z < image.shape[0]]
    if bad or not slices:
        raise InputError(f"slice(s) {bad or slices} outside 0..{image.shape[0] - 1} of the image; choose others.")
    if value_range is None:
        shown = image[slices].astype(np.float32)
        value_range = (float(shown.min()), float(shown.max()))

    columns = [("image", None)] + [(name, v) for name, v in (("label", label), ("prediction", prediction))
                                   if v is not None]
    largest = max([int(np.max(v[slices])) for _, v in columns[1:]] + [0])
    num_classes = max(len(class_names or ()), largest + 1)
    width, height = overlay_grid_size(image.shape, len(slices), len(columns), num_classes, panel_size)
    panel_h, panel_w = _panel_shape(image.shape, panel_size)
    figure = _PixelFigure(width, height)
    for c, (name, _) in enumerate(columns):
        figure.text(LEFT_PX + c * (panel_w + GAP_PX) + panel_w / 2, HEADER_PX / 2, name, ha="center", va="center",
                    fontsize=12)
    for r, z in enumerate(slices):
        y = HEADER_PX + r * (panel_h + GAP_PX)
        figure.text(LEFT_PX - 8, y + panel_h / 2, f"slice {z}", ha="right", va="center", fontsize=10)
        for c, (_, volume) in enumerate(columns):
            rgb = overlay(image[z], None if volume is None else volume[z], alpha, value_range)
            figure.picture(_resize_nearest(rgb, panel_h, panel_w), LEFT_PX + c * (panel_w + GAP_PX), y)
    _draw_legend(figure, num_classes, class_names, HEADER_PX + len(slices) * (panel_h + GAP_PX))
    return figure.save(output)


def _draw_legend(figure: _PixelFigure, num_classes: int, class_names: Sequence[str] | None, top: int) -> None:
    per_row = max(1, (figure.width - GAP_PX) // LEGEND_ENTRY_PX)
    offset = (LEGEND_ROW_PX - LEGEND_PATCH_PX) // 2
    for k in range(1, num_classes):
        row, col = divmod(k - 1, per_row)
        x = GAP_PX + col * LEGEND_ENTRY_PX
        y = top + row * LEGEND_ROW_PX + offset
        figure.patch(x, y, LEGEND_PATCH_PX, _class_colour(k))
        name = class_names[k] if class_names and k < len(class_names) else f"class {k}"
        name = name if len(name) <= 20 else name[:19] + "…"
        figure.text(x + LEGEND_PATCH_PX + 6, y + LEGEND_PATCH_PX / 2, f"{k} {name}", ha="left", va="center",
                    fontsize=10)


def overlay_figure_from_files(
    image: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    label: str | os.PathLike[str] | None = None,
    prediction: str | os.PathLike[str] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    slices: Sequence[int] | None = None,
    num_slices: int = 3,
    class_names: Sequence[str] | None = None,
    window: Sequence[float] | None = None,
    mr_normalise: bool = False,
    orientation: str | None = None,
    device: str = "auto",
    tta: bool = False,
    panel_size: int = 256,
) -> Path:
    """The qualitative figure of image files: read, reorient, normalise, predict if asked, draw.

    Args:
        image: A NIfTI/DICOM/picture file (brought to the canonical orientation) or a prepared ``*.npy.h5`` volume
            (whose ``label`` dataset is used when ``label`` is not given).
        output: The figure file.
        label: A label map on the image's grid, or None.
        prediction: A predicted label map on the image's grid, or None.
        checkpoint: Predict with this checkpoint instead of reading ``prediction`` (only the shown slices are
            predicted when a label chooses them).
        slices: Slice indices (canonical Z) to show; by default chosen by foreground.
        num_slices: How many slices to choose.
        class_names: Names by class id (background first); default the checkpoint's or the prepared dataset's.
        window: CT window for the image (and the prediction); default the checkpoint's normalisation.
        mr_normalise: Per-volume MR normalisation instead.
        orientation: Canonical orientation of image files; default the checkpoint's, else ``"SPL"``.
        device: Where the checkpoint runs.
        tta: Flip test-time augmentation for the prediction.
        panel_size: Panel height in pixels.

    Example:
        >>> overlay_figure_from_files("prepared/test_vol_h5/case0001.npy.h5", "fig.png",
        ...                           checkpoint="runs/synapse/best.pt")  # doctest: +SKIP
    """
    from perspective_unet.data.io import CANONICAL_ORIENTATION

    if prediction is not None and checkpoint is not None:
        raise ValueError("give either a prediction file or a checkpoint to predict with, not both.")
    predictor = None
    if checkpoint is not None:
        from perspective_unet.engine.predict import Predictor

        predictor = Predictor.from_checkpoint(
            checkpoint, device=device, window=window, mr_normalise=mr_normalise, orientation=orientation, tta=tta
        )
    orient = predictor.orientation if predictor is not None else (orientation or CANONICAL_ORIENTATION)
    image_path = Path(image)
    volume, has_label, spacing = _image_for_figure(image_path, predictor, orient, window, mr_normalise)
    label_volume = None
    if label is not None:
        label_volume, _ = read_canonical(label, as_label=True, orientation=orient)
    elif has_label:
        label_volume, _ = read_canonical(image_path, as_label=True)
    prediction_volume = None
    if prediction is not None:
        prediction_volume, _ = read_canonical(prediction, as_label=True, orientation=orient)
    for name, other in (("label", label_volume), ("prediction", prediction_volume)):
        if other is not None and other.shape != volume.shape:
            raise InputError(f"the {name} has canonical shape {other.shape} but the image {image} has {volume.shape}; "
                             "give files on the same voxel grid.")
    if predictor is not None:
        if slices is None and label_volume is None:
            prediction_volume = predictor.predict_canonical(volume, spacing=spacing)
        else:
            chosen = [int(z) for z in slices] if slices is not None else choose_slices(label_volume, num_slices)
            bad = [z for z in chosen if not 0 <= z < volume.shape[0]]
            if bad:
                raise InputError(f"slice(s) {bad} outside 0..{volume.shape[0] - 1} of {image}; choose others.")
            if predictor.plan.context_slices:  # a 2.5D model needs each chosen slice's neighbours
                prediction_volume = predictor.predict_canonical(volume, spacing=spacing)
            else:
                prediction_volume = np.zeros(volume.shape, dtype=np.uint8)
                prediction_volume[chosen] = predictor.predict_canonical(volume[chosen], spacing=spacing)
            slices = chosen
    names = class_names or (predictor.class_names if predictor is not None else None) or _class_names_near(image_path)
    return save_overlay_grid(
        volume, output, label=label_volume, prediction=prediction_volume, slices=slices, num_slices=num_slices,
        class_names=names, panel_size=panel_size, value_range=(0.0, 1.0),
    )


def _image_for_figure(
    path: Path, predictor: Any, orientation: str, window: Sequence[float] | None, mr_normalise: bool
) -> tuple[np.ndarray, bool, tuple[float, float] | None]:
    """The canonical image in [0, 1], normalised as the model's training data (or for display), whether the file
    also holds a label (prepared volumes), and its in-plane pixel spacing (row, column) in mm when known."""
    from perspective_unet.data.io import canonical_spacing, read_image, to_canonical
    from perspective_unet.data.normalise import mr_normalise as percentile_scale
    from perspective_unet.engine.predict import normalise_intensity, resolve_intensity

    if path.name.lower().endswith(".h5"):
        volume, meta = read_canonical(path)
        spacing = meta.get("spacing")
        in_plane = None if spacing is None else tuple(float(s) for s in np.ravel(spacing)[1:3])
        return volume.astype(np.float32), _h5_has_label(path), in_plane  # type: ignore[return-value]
    array, meta = read_image(path)
    in_plane = canonical_spacing(meta, orientation)[1:]
    if predictor is not None:
        return predictor.prepare(array, meta), False, in_plane
    spec = resolve_intensity({}, window=window, mr_normalise=mr_normalise)
    if spec is None and meta.get("format") == "picture":
        spec = {"kind": "picture"}
    # Without a checkpoint or a window the figure only needs a readable contrast: a robust percentile range.
    unit = normalise_intensity(array, spec, source=path) if spec else percentile_scale(array)
    return to_canonical(unit, meta, orientation), False, in_plane


# --------------------------------------------------------------------------------------------------------------------
# Feature figure: heat maps of BPRB, ENLTB and SCSI outputs
# --------------------------------------------------------------------------------------------------------------------

FEATURE_LAYERS = ("bprb", "enltb", "scsi")
REDUCTIONS = ("mean_abs", "l2")
_LAYER_TITLES = {"bprb": "BPRB", "enltb": "ENLTB", "scsi": "SCSI"}


def _feature_modules(model: torch.nn.Module, layer: str) -> list[torch.nn.Module]:
    """The modules whose outputs a layer's heat maps show (the integrator gives one output per scale)."""
    if layer not in FEATURE_LAYERS:
        raise ValueError(f"layer must be one of {FEATURE_LAYERS}, got {layer!r}.")
    encoder = getattr(model, "encoder", None)
    if encoder is None or not hasattr(encoder, "cnn"):
        raise ValueError(f"feature maps need a Perspective+ Unet (model.encoder.cnn/...), got {type(model).__name__}.")
    if layer == "bprb":
        return list(encoder.cnn.stages)
    if layer == "enltb":
        if encoder.transformer is None:
            other = " or scsi." if encoder.integrator is not None else "."
            raise ValueError("this model was built without ENLTB (use_enltb=False, an ablation): it has no ENLTB "
                             f"features; choose the layer bprb{other}")
        return list(encoder.transformer.stages)
    if encoder.integrator is None:
        other = " or enltb." if encoder.transformer is not None else "."
        raise ValueError("this model was built without SCSI (use_scsi=False, an ablation): it has no SCSI features; "
                         f"choose the layer bprb{other}")
    return [encoder.integrator]


def feature_titles(model: torch.nn.Module, layer: str) -> list[str]:
    """Panel titles of :func:`feature_maps`'s outputs, e.g. ``"BPRB 1 (1/1)"`` ... ``"SCSI 3 (1/16)"``.

    Example:
        >>> import perspective_unet
        >>> feature_titles(perspective_unet.create_model("perspective_unet_tiny"), "enltb")
        ['ENLTB 1 (1/4)', 'ENLTB 2 (1/8)', 'ENLTB 3 (1/16)']
    """
    _feature_modules(model, layer)
    strides = list(model.encoder.strides)
    strides = strides if layer == "bprb" else strides[-3:]
    return [f"{_LAYER_TITLES[layer]} {i + 1} (1/{s})" for i, s in enumerate(strides)]


def _model_size(height: int, width: int, divisor: int) -> tuple[int, int]:
    return max(divisor, -(-height // divisor) * divisor), max(divisor, -(-width // divisor) * divisor)


@torch.inference_mode()
def feature_maps(
    model: torch.nn.Module,
    image: np.ndarray | torch.Tensor,
    layer: str,
    *,
    img_size: Sequence[int] | None = None,
    reduction: str = "mean_abs",
    normalize: bool = True,
) -> list[np.ndarray]:
    """Activation strength of an intermediate layer, one (H, W) map per stage or scale, on the image's grid.

    The slice is resampled to the model's size (cubic spline, as for prediction), run through the model with forward
    hooks on the layer's modules, and each captured (B, C, h, w) output is reduced over channels (mean of absolute
    values, or the L2 norm) and upsampled bilinearly back to the image's (H, W).

    Args:
        model: A Perspective+ Unet.
        image: One (H, W) slice with intensities in [0, 1] (the prepared-data convention), or a (C, H, W) network
            input (with ``normalize=False``).
        layer: ``bprb`` (the bi-path CNN stages, ``model.encoder.cnn.stages``), ``enltb``
            (``model.encoder.transformer.stages``) or ``scsi`` (the outputs of ``model.encoder.integrator``).
        img_size: The model's input size (the training size); default the image's size rounded up to a valid one.
        reduction: ``mean_abs`` or ``l2``.
        normalize: Map [0, 1] intensities to [-1, 1] as the training data are.

    Returns:
        float32 maps of the image's shape, finest stage first (not rescaled; see :func:`save_feature_figure`).

    Raises:
        ValueError: an unknown layer, or a part the model was built without (ablations).

    Example:
        >>> import perspective_unet
        >>> model = perspective_unet.create_model("perspective_unet_tiny", num_classes=3)
        >>> [m.shape for m in feature_maps(model, np.random.rand(40, 50), "scsi", img_size=(32, 32))]
        [(40, 50), (40, 50), (40, 50)]
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}.")
    modules = _feature_modules(model, layer)
    picture = torch.as_tensor(np.asarray(image, dtype=np.float32)) if not torch.is_tensor(image) else image.float()
    if picture.ndim == 2:
        picture = picture[None]
    if picture.ndim != 3:
        raise ValueError(f"feature_maps takes one (H, W) slice or (C, H, W) input, got shape {tuple(picture.shape)}.")
    height, width = picture.shape[-2:]
    divisor = int(getattr(model, "size_divisor", 16))
    size = tuple(int(s) for s in img_size) if img_size is not None else _model_size(height, width, divisor)
    device = next(model.parameters()).device
    x = zoom_slices(picture[None].to(device), size)
    if normalize:
        x = (x - 0.5) / 0.5
    captured: list[torch.Tensor] = []

    def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
        captured.extend(output if isinstance(output, (list, tuple)) else [output])

    handles = [module.register_forward_hook(hook) for module in modules]
    was_training = model.training
    try:
        model.eval()
        model(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    maps = []
    for feature in captured:
        feature = feature.float()
        strength = feature.abs().mean(dim=1, keepdim=True) if reduction == "mean_abs" else feature.norm(dim=1,
                                                                                                          keepdim=True)
        strength = F.interpolate(strength, size=(height, width), mode="bilinear", align_corners=False)
        maps.append(strength[0, 0].cpu().numpy().astype(np.float32))
    return maps


def save_feature_figure(
    image: np.ndarray,
    maps: Sequence[np.ndarray],
    output: str | os.PathLike[str],
    *,
    titles: Sequence[str] | None = None,
    cmap: str = "jet",
    alpha: float = 0.5,
    panel_size: int = 256,
    value_range: tuple[float, float] | None = None,
) -> Path:
    """One row of panels: the gray image, then each heat map blended over it (each scaled to its own min..max).

    The figure is ``GAP_PX + (1 + len(maps)) * (panel_w + GAP_PX)`` pixels wide and ``HEADER_PX + panel_size + GAP_PX``
    high, with ``panel_w = round(panel_size * W / H)``.

    Args:
        image: The (H, W) slice.
        maps: (H, W) maps from :func:`feature_maps`.
        output: The figure file.
        titles: One title per map (:func:`feature_titles`).
        cmap: A matplotlib colormap name.
        alpha: Weight of the heat map over the image.
        panel_size: Panel height in pixels.
        value_range: Intensities shown as black and white; default the slice's minimum and maximum.

    Example:
        >>> maps = feature_maps(model, slice_in_unit_range, "bprb")  # doctest: +SKIP
        >>> save_feature_figure(slice_in_unit_range, maps, "bprb.png", titles=feature_titles(model, "bprb"))
        ... # doctest: +SKIP
    """

    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"save_feature_figure takes one (H, W) slice, got shape {image.shape}.")
    for m in maps:
        if np.shape(m) != image.shape:
            raise ValueError(f"every map must have the image's shape {image.shape}, got {np.shape(m)}.")
    colormap = _colormap(cmap)
    panel_h, panel_w = _panel_shape(image.shape, panel_size)
    gray = overlay(image, None, value_range=value_range).astype(np.float32)
    panels = [("image", gray.astype(np.uint8))]
    for i, m in enumerate(maps):
        low, high = float(np.min(m)), float(np.max(m))
        scaled = (np.asarray(m) - low) / (high - low) if high > low else np.zeros_like(m)
        heat = colormap(scaled)[..., :3] * 255.0
        blended = ((1 - alpha) * gray + alpha * heat).round().clip(0, 255).astype(np.uint8)
        panels.append((titles[i] if titles and i < len(titles) else f"map {i + 1}", blended))
    width = GAP_PX + len(panels) * (panel_w + GAP_PX)
    figure = _PixelFigure(width, HEADER_PX + panel_h + GAP_PX)
    for c, (title, rgb) in enumerate(panels):
        x = GAP_PX + c * (panel_w + GAP_PX)
        figure.text(x + panel_w / 2, HEADER_PX / 2, title, ha="center", va="center", fontsize=11)
        figure.picture(_resize_nearest(rgb, panel_h, panel_w), x, HEADER_PX)
    return figure.save(output)


def _colormap(name: str) -> Any:
    import matplotlib

    if name not in matplotlib.colormaps:
        raise ValueError(f"--cmap {name!r} is not a matplotlib colormap; choose one such as jet, viridis or magma.")
    return matplotlib.colormaps[name]


def feature_figure_from_files(
    checkpoint: str | os.PathLike[str],
    image: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    layer: str = "bprb",
    slice_index: int | None = None,
    reduction: str = "mean_abs",
    window: Sequence[float] | None = None,
    mr_normalise: bool = False,
    orientation: str | None = None,
    device: str = "auto",
    cmap: str = "jet",
    panel_size: int = 256,
) -> Path:
    """The feature figure of one slice of an image file, with a checkpoint.

    Args:
        checkpoint: A ``.pt`` written by ``train`` or ``convert-official``.
        image: A NIfTI/DICOM/picture file (normalised as the checkpoint's training data) or a prepared ``*.npy.h5``.
        output: The figure file.
        layer: ``bprb``, ``enltb`` or ``scsi``.
        slice_index: Canonical slice index; default the middle slice.
        reduction: ``mean_abs`` or ``l2``.
        window: CT window overriding the checkpoint's normalisation.
        mr_normalise: Per-volume MR normalisation instead.
        orientation: Canonical orientation overriding the checkpoint's.
        device: Where the model runs.
        cmap: A matplotlib colormap name.
        panel_size: Panel height in pixels.

    Example:
        >>> feature_figure_from_files("best.pt", "ct.nii.gz", "enltb.png", layer="enltb", slice_index=60)
        ... # doctest: +SKIP
    """
    from perspective_unet.engine.predict import Predictor

    _colormap(cmap)  # a misspelt colormap fails before the model is loaded
    predictor = Predictor.from_checkpoint(
        checkpoint, device=device, window=window, mr_normalise=mr_normalise, orientation=orientation
    )
    _feature_modules(predictor.model, layer)  # fail on ablated parts before reading the image
    volume, _, spacing = _image_for_figure(Path(image), predictor, predictor.orientation, window, mr_normalise)
    index = volume.shape[0] // 2 if slice_index is None else int(slice_index)
    if not 0 <= index < volume.shape[0]:
        raise InputError(f"slice {index} is outside 0..{volume.shape[0] - 1} of {image}; choose another --slice.")
    plan = predictor.plan
    stats = ImageStats.of(volume) if plan.intensity.per_image else None
    network_input = stack_context(torch.from_numpy(plan.intensity.apply_stored(volume, stats)), plan.context_slices)
    size = plan.patch_size
    if plan.protocol == "spacing" and spacing is not None:
        # The slice at the plan's pixel size, rounded up to sides the network takes.
        divisor = int(getattr(predictor.model, "size_divisor", 16))
        size = tuple(-(-s // divisor) * divisor for s in resampled_shape(volume.shape[1:], spacing, plan.spacing))
    maps = feature_maps(predictor.model, network_input[index], layer, img_size=size, reduction=reduction,
                        normalize=False)
    return save_feature_figure(
        volume[index], maps, output, titles=feature_titles(predictor.model, layer), cmap=cmap, panel_size=panel_size,
        value_range=(0.0, 1.0),
    )
