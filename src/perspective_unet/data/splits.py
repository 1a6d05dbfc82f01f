"""Case-level and slice-block splits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["SliceBlockSplit", "choose_test_block", "split_cases"]


def split_cases(
    cases: Sequence[str], val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 1234
) -> dict[str, list[str]]:
    """A seeded split of whole cases into train, val and test; each case lands in exactly one split.

    The cases are sorted first, so the result depends on the set of cases and the seed, not on listing order.
    A non-zero fraction gets at least one case while at least one case is left for training.

    Args:
        cases: Case names (duplicates are an error).
        val_fraction: Share of cases for validation.
        test_fraction: Share of cases for testing.
        seed: Seed of the shuffle.
    """
    if len(set(cases)) != len(cases):
        raise ValueError("split_cases got duplicate case names.")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"val_fraction and test_fraction must be in [0, 1) with a sum below 1, got {val_fraction}, {test_fraction}."
        )
    ordered = sorted(cases)
    rng = np.random.default_rng(seed)
    shuffled = [ordered[i] for i in rng.permutation(len(ordered))]
    n = len(shuffled)
    n_test = _share(n, test_fraction)
    n_val = _share(n - n_test, val_fraction / (1 - test_fraction)) if val_fraction else 0
    if n_test + n_val >= n:  # always keep one training case
        n_val = max(0, n - n_test - 1)
        n_test = min(n_test, n - 1)
    return {
        "train": sorted(shuffled[n_test + n_val :]),
        "val": sorted(shuffled[n_test : n_test + n_val]),
        "test": sorted(shuffled[:n_test]),
    }


def _share(n: int, fraction: float) -> int:
    if fraction <= 0 or n < 2:
        return 0
    return max(1, int(round(n * fraction)))


@dataclass(frozen=True)
class SliceBlockSplit:
    """Slices [test_start, test_stop) are the test block; train takes the rest minus ``gap`` slices on each side.

    Attributes:
        test_start: First test slice.
        test_stop: One past the last test slice.
        gap: Slices left out between the train and the test slices, so no test slice has a training neighbor.
        num_slices: Slices of the whole volume.
    """

    test_start: int
    test_stop: int
    gap: int
    num_slices: int

    @property
    def train_blocks(self) -> list[tuple[int, int]]:
        """Contiguous [start, stop) ranges of training slices (below and above the test block)."""
        blocks = [
            (0, max(0, self.test_start - self.gap)),
            (min(self.num_slices, self.test_stop + self.gap), self.num_slices),
        ]
        return [(a, b) for a, b in blocks if b > a]


def choose_test_block(
    label: np.ndarray,
    classes: Sequence[int],
    gap: int = 2,
    min_fraction: float = 0.25,
    max_fraction: float = 0.5,
) -> SliceBlockSplit:
    """Pick the test block of slices that best shares every class between train and test.

    The score of a block is, over the given classes present in the volume, the smallest of the shares of that
    class's voxels in the train slices and in the test slices; the best block maximizes it (ties: the block whose
    length is nearest the middle of the allowed range, then the lowest start). Block lengths range between
    ``min_fraction`` and ``max_fraction`` of the slices that hold any of the classes.

    Args:
        label: (Z, H, W) class ids; blocks run along Z.
        classes: Class ids that should appear on both sides.
        gap: Slices dropped between train and test on each side of the block.
        min_fraction: Shortest block, as a share of the slices with foreground.
        max_fraction: Longest block, as a share of the slices with foreground.
    """
    num_slices = label.shape[0]
    counts = np.stack([(label == c).reshape(num_slices, -1).sum(axis=1) for c in classes], axis=1).astype(float)
    totals = counts.sum(axis=0)
    present = totals > 0
    if not present.any():
        raise ValueError("choose_test_block: none of the classes is present in the label map.")
    counts, totals = counts[:, present], totals[present]
    cumulative = np.vstack([np.zeros((1, counts.shape[1])), np.cumsum(counts, axis=0)])
    foreground = np.flatnonzero(counts.sum(axis=1) > 0)
    extent = int(foreground[-1] - foreground[0] + 1)
    shortest = max(1, int(round(min_fraction * extent)))
    longest = max(shortest, int(round(max_fraction * extent)))
    middle = (shortest + longest) / 2
    best: tuple[float, float, int] | None = None
    best_split = None
    for length in range(shortest, longest + 1):
        for start in range(0, num_slices - length + 1):
            stop = start + length
            test = cumulative[stop] - cumulative[start]
            kept_low = cumulative[max(0, start - gap)]
            kept_high = cumulative[num_slices] - cumulative[min(num_slices, stop + gap)]
            train = kept_low + kept_high
            score = float(np.min(np.minimum(test, train) / totals))
            key = (score, -abs(length - middle), -start)
            if best is None or key > best:
                best, best_split = key, SliceBlockSplit(start, stop, gap, num_slices)
    assert best_split is not None
    return best_split
