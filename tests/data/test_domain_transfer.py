"""A tiny model trained on one synthetic source transfers better to a target whose structures differ only in brightness
when it is trained with the appearance augmentation for unseen domains."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from perspective_unet.config.augmentation import SpacingAugmentationConfig
from perspective_unet.data.domain_augmentation import RANGE_KEY, build_domain_augmentation

SIDE = 32
# Intensities of background, horizontal bar (class 1) and vertical bar (class 2), in stored [0, 1] units. The target
# swaps the bars' order of brightness and brightens the vertical bar beyond anything the source shows.
SOURCE = (0.2, 0.7, 0.45)
TARGET = (0.25, 0.4, 0.85)
# The switch with the organ shifts on every sample over a wide range: the shortcut to break here is brightness.
AUGMENTATION = SpacingAugmentationConfig(
    domain_generalization=True, organ_shift_prob=1.0, organ_shift_range=(-0.5, 0.5), gin_prob=0.3, ipa_prob=0.2
)


def bars(rng: np.random.Generator, intensities: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """One (1, S, S) image with a 4 x 16 horizontal bar and a non-overlapping 16 x 4 vertical bar, and its labels."""
    label = np.zeros((SIDE, SIDE), np.int64)
    row, column = rng.integers(2, SIDE - 6), rng.integers(2, SIDE - 18)
    label[row : row + 4, column : column + 16] = 1
    for _ in range(50):
        row, column = rng.integers(2, SIDE - 18), rng.integers(2, SIDE - 6)
        if not label[row : row + 16, column : column + 4].any():
            break
    label[row : row + 16, column : column + 4] = 2
    image = np.asarray(intensities, np.float32)[label] + rng.normal(0, 0.03, (SIDE, SIDE)).astype(np.float32)
    return np.clip(image, 0, 1)[None], label


def tiny_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=2, dilation=2),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=4, dilation=4),
        nn.ReLU(),
        nn.Conv2d(16, 3, 1),
    )


def train(seed: int, augment: bool, steps: int = 300, batch: int = 8) -> nn.Module:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = tiny_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    augmentation = build_domain_augmentation(AUGMENTATION).set_random_state(seed) if augment else None
    for _ in range(steps):
        images, labels = [], []
        for _ in range(batch):
            image, label = bars(rng, SOURCE)
            image = torch.from_numpy(image)
            if augmentation is not None:
                sample = {"image": image, "label": torch.from_numpy(label).float()[None], RANGE_KEY: (0.0, 1.0)}
                image = augmentation(sample)["image"]
            images.append(image)
            labels.append(torch.from_numpy(label))
        loss = F.cross_entropy(model(torch.stack(images)), torch.stack(labels))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


def mean_dice(model: nn.Module, intensities: tuple[float, float, float], count: int = 32) -> float:
    """Mean Dice of the two bars over ``count`` fresh images (the same images for every model)."""
    rng = np.random.default_rng(12345)
    samples = [bars(rng, intensities) for _ in range(count)]
    with torch.no_grad():
        predicted = model(torch.from_numpy(np.stack([s[0] for s in samples]))).argmax(1).numpy()
    scores = []
    for prediction, (_, label) in zip(predicted, samples):
        for c in (1, 2):
            overlap = np.logical_and(prediction == c, label == c).sum()
            scores.append(2 * overlap / max((prediction == c).sum() + (label == c).sum(), 1))
    return float(np.mean(scores))


@pytest.mark.slow
def test_the_augmentation_carries_a_tiny_model_to_a_target_of_other_brightness():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same arithmetic however many cores the machine has
    try:
        plain = [train(seed, augment=False) for seed in range(3)]
        augmented = [train(seed, augment=True) for seed in range(3)]
    finally:
        torch.set_num_threads(threads)
    source = [mean_dice(m, SOURCE) for m in plain + augmented]
    assert min(source) > 0.85, source  # both learn the source
    without = [mean_dice(m, TARGET) for m in plain]
    with_it = [mean_dice(m, TARGET) for m in augmented]
    assert np.mean(with_it) > np.mean(without) + 0.08, (without, with_it)
    assert sum(a > b for a, b in zip(with_it, without)) >= 2, (without, with_it)
