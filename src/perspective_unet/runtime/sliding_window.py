"""A Gaussian-weighted sliding window in NumPy: the spacing protocol's window for the light ONNX runtime.

The PyTorch path slides its window with ``monai.inferers.sliding_window_inference`` (``mode="gaussian"``, constant
padding); this is the same scan for NumPy arrays: the same window positions (:func:`window_starts`, MONAI's
``dense_patch_slices`` with its scan interval), the same importance map (:func:`gaussian_importance`, MONAI's
``compute_importance_map``: sigma an eighth of the window, weights clamped below at their minimum, at least 1e-3), an
image smaller than the window padded symmetrically with the intensity floor, and the weighted mean of the
overlapping windows. Both are tested equal to float32 rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["SIGMA_SCALE", "gaussian_importance", "sliding_window", "window_starts"]

# MONAI's default: the Gaussian's sigma is this share of the window's side.
SIGMA_SCALE = 0.125
# MONAI's floor for the smallest weight of the importance map.
_MIN_WEIGHT = 1e-3


def window_starts(length: int, window: int, overlap: float) -> list[int]:
    """Where the windows along one axis start: every ``int(window * (1 - overlap))`` pixels (at least 1), the last
    one moved back to end at the edge.

    Example:
        >>> window_starts(100, 32, 0.5)
        [0, 16, 32, 48, 64, 68]
    """
    if window >= length:
        return [0]
    interval = max(int(window * (1 - overlap)), 1)
    count = next(d for d in range(math.ceil(length / interval)) if d * interval + window >= length) + 1
    return [min(d * interval, length - window) for d in range(count)]


def gaussian_importance(window: Sequence[int], sigma_scale: float = SIGMA_SCALE) -> np.ndarray:
    """The (height, width) float32 weights of a window's pixels: a Gaussian centered on the window.

    Example:
        >>> weights = gaussian_importance((5, 4))
        >>> weights.shape, float(weights.max()) < 1.0, float(weights.min()) > 0.0
        ((5, 4), True, True)
    """
    weights = None
    for side in window:
        x = np.arange(-(side - 1) / 2.0, (side - 1) / 2.0 + 1, dtype=np.float32)
        sigma = np.float32(side * sigma_scale)
        axis = np.exp(x**2 / (np.float32(-2) * sigma**2)).astype(np.float32)
        weights = axis if weights is None else weights[..., None] * axis
    assert weights is not None
    return np.maximum(weights, max(float(weights.min()), _MIN_WEIGHT)).astype(np.float32)


def sliding_window(
    probabilities_of: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray,
    window: Sequence[int],
    *,
    overlap: float,
    windows_per_pass: int,
    pad_value: float,
) -> np.ndarray:
    """Class probabilities of (B, C, H, W) images from windows of ``window`` pixels, Gaussian-weighted.

    Args:
        probabilities_of: (N, C, h, w) windows -> (N, classes, h, w) probabilities.
        images: Network input, any sides (smaller than the window: padded with ``pad_value``).
        window: (height, width) of a window.
        overlap: Overlap of neighboring windows, as a share of the window.
        windows_per_pass: Windows handed to ``probabilities_of`` at once (across the images of the batch).
        pad_value: What pads an image smaller than the window.

    Returns:
        (B, classes, H, W) float32 probabilities.
    """
    batch, _, height, width = images.shape
    window = (int(window[0]), int(window[1]))
    pads = [(max(w - s, 0) // 2, max(w - s, 0) - max(w - s, 0) // 2) for w, s in zip(window, (height, width))]
    if any(any(pad) for pad in pads):
        images = np.pad(images, ((0, 0), (0, 0), *pads), mode="constant", constant_values=pad_value)
    padded = images.shape[2:]
    corners = [
        (y, x)
        for y in window_starts(padded[0], window[0], overlap)
        for x in window_starts(padded[1], window[1], overlap)
    ]
    weights = gaussian_importance(window)
    count = np.zeros(padded, dtype=np.float32)
    for y, x in corners:
        count[y : y + window[0], x : x + window[1]] += weights
    jobs = [(b, y, x) for b in range(batch) for y, x in corners]
    output = None
    for start in range(0, len(jobs), windows_per_pass):
        chunk = jobs[start : start + windows_per_pass]
        stacked = np.stack([images[b, :, y : y + window[0], x : x + window[1]] for b, y, x in chunk])
        probabilities = probabilities_of(stacked) * weights
        if output is None:
            output = np.zeros((batch, probabilities.shape[1], *padded), dtype=np.float32)
        for (b, y, x), p in zip(chunk, probabilities):
            output[b, :, y : y + window[0], x : x + window[1]] += p
    assert output is not None
    output /= count
    (top, _), (left, _) = pads
    return output[:, :, top : top + height, left : left + width]
