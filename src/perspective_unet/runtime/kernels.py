"""The NumPy pieces of inference that both paths use, or that the light runtime uses where PyTorch has its own.

Shared by the PyTorch path and the ONNX runtime (one implementation): the 2.5D context stacking
(:func:`stack_context`), the cubic-spline zoom matrices of the paper protocol (:func:`spline_zoom_matrix`) and the
corner-aligned nearest indices that bring its labels back (:func:`corner_aligned_indices`). The runtime's own
counterparts of PyTorch operations: :func:`softmax` and :func:`mirrored_probabilities` (test-time mirroring).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import scipy.ndimage

from perspective_unet.errors import InputError

__all__ = ["corner_aligned_indices", "mirrored_probabilities", "softmax", "spline_zoom_matrix", "stack_context"]

# The four mirrorings of test-time augmentation, as the (height, width) axes they flip.
_MIRRORS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))


def stack_context(volume: np.ndarray, context: int) -> np.ndarray:
    """(Z, H, W) -> (Z, 2 * context + 1, H, W): each slice between its neighbors, the end slices repeated.

    A (Z, C, H, W) volume of C input channels gives (Z, C * (2 * context + 1), H, W), channel-major (channel 0's
    planes from below to above, then channel 1's, ...), the order training stacks them in.

    Example:
        >>> stack_context(np.arange(3.0)[:, None, None], 1)[:, :, 0, 0].tolist()
        [[0.0, 0.0, 1.0], [0.0, 1.0, 2.0], [1.0, 2.0, 2.0]]
    """
    volume = np.asarray(volume)
    if volume.ndim not in (3, 4):
        raise ValueError(f"expected a (Z, H, W) or (Z, C, H, W) volume, got shape {tuple(volume.shape)}.")
    if context == 0:
        return volume[:, None] if volume.ndim == 3 else volume
    depth = volume.shape[0]
    offsets = np.arange(-context, context + 1)
    indices = np.clip(np.arange(depth)[:, None] + offsets[None], 0, depth - 1)
    stacked = volume[indices]  # (Z, planes, H, W) or (Z, planes, C, H, W)
    if volume.ndim == 3:
        return stacked
    return stacked.swapaxes(1, 2).reshape(depth, -1, *volume.shape[2:])


@functools.lru_cache(maxsize=32)
def _spline_zoom_matrix(source: int, target: int) -> np.ndarray:
    identity = np.eye(source)
    columns = [scipy.ndimage.zoom(identity[i], target / source, order=3) for i in range(source)]
    matrix = np.stack(columns, axis=1)
    matrix.setflags(write=False)  # cached and shared: nobody may change it
    return matrix


def spline_zoom_matrix(source: int, target: int) -> np.ndarray:
    """The (target, source) float64 matrix ``M`` with ``M @ v == scipy.ndimage.zoom(v, target / source, order=3)``.

    ``scipy.ndimage.zoom`` with a cubic spline is linear in its input (the spline prefilter is a fixed linear
    filter, the interpolation a fixed weighting) and acts on each axis separately, so a 2D zoom is ``R @ X @ C.T``.
    The matrix is built once per pair of sizes by zooming the unit vectors (read-only: it is cached).

    Example:
        >>> m = spline_zoom_matrix(512, 224)
        >>> tuple(m.shape)
        (224, 512)
    """
    if source < 1 or target < 1:
        raise ValueError(f"sizes must be positive, got source={source}, target={target}.")
    return _spline_zoom_matrix(int(source), int(target))


def corner_aligned_indices(source: int, target: int) -> np.ndarray:
    """Nearest source index of every target index when corners are aligned (``scipy.ndimage.zoom``, order 0).

    Example:
        >>> corner_aligned_indices(3, 5).tolist()
        [0, 1, 1, 2, 2]
    """
    if target == 1 or source == 1:
        return np.zeros(target, dtype=np.int64)
    positions = np.arange(target, dtype=np.float64) * ((source - 1) / (target - 1))
    return np.clip(np.floor(positions + 0.5).astype(np.int64), 0, source - 1)


def softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    """Softmax of float32 logits along ``axis`` (the classes of a (B, classes, H, W) batch)."""
    shifted = logits - logits.max(axis=axis, keepdims=True)
    exponentials = np.exp(shifted)
    return exponentials / exponentials.sum(axis=axis, keepdims=True)


def mirrored_probabilities(
    network: Callable[[np.ndarray], np.ndarray], images: np.ndarray, tta: bool = False
) -> np.ndarray:
    """Softmax probabilities of a batch (B, C_in, H, W) -> (B, classes, H, W), as
    :func:`perspective_unet.engine.inference.predict_slices` gives them: with ``tta`` averaged over the four
    mirrorings.

    Args:
        network: Float32 batch -> logits (an ONNX Runtime session).
        images: Network input.
        tta: Average over the horizontal and vertical mirrorings.

    Raises:
        InputError: The network produced NaN or infinite logits.
    """
    total = None
    mirrors = _MIRRORS if tta else _MIRRORS[:1]
    for axes in mirrors:
        x = np.ascontiguousarray(np.flip(images, axes)) if axes else images
        logits = network(x)
        if not np.isfinite(logits).all():
            # An all-background map would otherwise be written as if it were a result.
            raise InputError(
                "the model produced NaN or infinite outputs; its weights or the input are damaged "
                "(nothing more was written)."
            )
        probabilities = softmax(logits.astype(np.float32, copy=False))
        probabilities = np.flip(probabilities, axes) if axes else probabilities
        total = probabilities if total is None else total + probabilities
    return total / len(mirrors)
