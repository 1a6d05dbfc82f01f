"""The input channels of a model, one :class:`~perspective_unet.intensity.IntensitySpec` each: stage 2 on the
channel-major stacks the network reads (:func:`apply_stored_channels`), the padding floor of each input plane
(:func:`channel_floors`), and whether a new image fits a channel's training data (:func:`input_mismatch`: a picture
into a CT or MR model, a CT into an MR or picture model).

A network with C data channels and ``k`` context slices reads ``C * (2k + 1)`` planes, channel-major: channel 0's
slice and its neighbors from below to above, then channel 1's, ... (see ``Plan.in_channels``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from perspective_unet.intensity import ImageStats, IntensitySpec

__all__ = ["CT_EVIDENCE_HU", "apply_stored_channels", "channel_ceilings", "channel_floors", "input_mismatch"]

# Raw values below this are Hounsfield units (air is -1000 HU, fat -100 HU): MR and picture intensities are never this
# negative, so such an image is taken for a CT.
CT_EVIDENCE_HU = -200.0
_TRAINED_ON = {
    "ct_window": "CT (Hounsfield units in a window)",
    "percentile_minmax": "scans normalized per volume (MR or another non-CT modality)",
    "picture": "2D pictures",
}


def apply_stored_channels(
    specs: Sequence[IntensitySpec], unit: np.ndarray, stats: Sequence[ImageStats | None] | None = None
) -> np.ndarray:
    """Stage 2 of every input channel's spec on a channel-major stack, float32.

    Args:
        specs: One spec per input channel (a plan's ``intensities``).
        unit: Stored values whose first axis holds ``len(specs)`` equal groups of planes, channel 0's first (each
            channel's slice and its context slices), e.g. (C * (2k + 1), H, W).
        stats: Each channel's whole-image statistics for ``zscore_per_image``; computed from its group when None.

    Example:
        >>> specs = [IntensitySpec("unit"), IntensitySpec("unit", scaling="zscore", mean=0.5, std=0.25)]
        >>> apply_stored_channels(specs, np.array([[1.0], [0.0], [1.0], [0.0]])).ravel().tolist()
        [1.0, -1.0, 2.0, -2.0]
    """
    stats = tuple(stats) if stats is not None else (None,) * len(specs)
    if len(specs) == 1:
        return specs[0].apply_stored(unit, stats[0])
    groups = np.split(np.asarray(unit, dtype=np.float32), len(specs), axis=0)
    return np.concatenate([spec.apply_stored(group, s) for spec, group, s in zip(specs, groups, stats)], axis=0)


def channel_floors(
    specs: Sequence[IntensitySpec], stats: Sequence[ImageStats | None] | None = None, planes: int = 1
) -> tuple[float, ...]:
    """The network-input value of each input channel's darkest stored value (:meth:`IntensitySpec.floor`), repeated
    for the ``planes`` (slice and context slices) of each channel: what padding outside an image should hold."""
    stats = tuple(stats) if stats is not None else (None,) * len(specs)
    return tuple(spec.floor(s) for spec, s in zip(specs, stats) for _ in range(planes))


def channel_ceilings(
    specs: Sequence[IntensitySpec], stats: Sequence[ImageStats | None] | None = None, planes: int = 1
) -> tuple[float, ...]:
    """The network-input value of each input channel's brightest stored value (1), repeated for the ``planes`` of
    each channel: the top of the range an intensity augmentation may reach."""
    stats = tuple(stats) if stats is not None else (None,) * len(specs)
    one = np.ones(1, dtype=np.float32)
    return tuple(float(spec.apply_stored(one, s)[0]) for spec, s in zip(specs, stats) for _ in range(planes))


def input_mismatch(spec: IntensitySpec | None, image: np.ndarray, *, picture: bool) -> str | None:
    """Why raw values do not fit a model whose training data had the stored range ``spec``; None when they fit (or
    when ``spec`` says too little to tell: None or ``unit``).

    - A picture (8-bit, 16-bit, ...) does not fit a model of CT (a HU window) or of scans normalized per volume.
    - A CT (values below :data:`CT_EVIDENCE_HU`, Hounsfield units) does not fit a model of scans normalized per
      volume (MR, ...) or of pictures.

    Args:
        spec: The model's stored range for this input channel.
        image: The raw values.
        picture: Whether they come from a picture file (PNG, JPG, ...).

    Example:
        >>> input_mismatch(IntensitySpec("ct_window", window=(-125, 275)), np.zeros(4, np.uint8), picture=True)
        'an 8-bit picture does not fit a model trained on CT (Hounsfield units in a window)'
        >>> input_mismatch(IntensitySpec("percentile_minmax"), np.array([-1024.0, 40.0]), picture=False)[:35]
        'its values reach -1024, Hounsfield '
    """
    if spec is None or spec.kind == "unit":
        return None
    image = np.asarray(image)
    if picture and spec.kind in ("ct_window", "percentile_minmax"):
        kind = {np.dtype(np.uint8): "an 8-bit picture", np.dtype(np.uint16): "a 16-bit picture"}.get(image.dtype)
        return f"{kind or 'a picture'} does not fit a model trained on {_TRAINED_ON[spec.kind]}"
    if not picture and spec.kind in ("percentile_minmax", "picture") and image.size:
        low = float(np.min(image))
        if low < CT_EVIDENCE_HU:
            return (
                f"its values reach {low:g}, Hounsfield units of a CT, which does not fit a model trained on "
                f"{_TRAINED_ON[spec.kind]}"
            )
    return None
