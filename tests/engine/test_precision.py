"""Precision in inference and training: the settings reach the forward passes, and bfloat16 inference of a trained
model meets the bar that lets ``--precision auto`` choose it (labels agree on >= 99.5% of the voxels, mean Dice
within 0.5 points of float32's)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perspective_unet import create_model
from perspective_unet.config import TrainConfig
from perspective_unet.engine.inference import predict_slices
from perspective_unet.losses import SegmentationLoss
from perspective_unet.metrics import score_case
from perspective_unet.runtime.inference_settings import InferenceSettings

SIZE = 48
CLASSES = 3


class AutocastProbe(torch.nn.Module):
    """Logits of a 1x1 convolution; records the autocast state of each forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Conv2d(1, CLASSES, 1)
        self.seen: list[torch.dtype | None] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        enabled = torch.is_autocast_enabled("cpu")
        self.seen.append(torch.get_autocast_dtype("cpu") if enabled else None)
        return self.head(x)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (InferenceSettings(precision="bf16"), torch.bfloat16),
        (InferenceSettings(precision="fp32"), None),
        # An explicit autocast type (the Python API's amp_dtype) takes the place of the precision setting.
        (InferenceSettings(precision="fp32", amp_dtype=torch.bfloat16), torch.bfloat16),
    ],
)
def test_inference_settings_decide_the_autocast_of_the_forward_passes(settings, expected):
    probe = AutocastProbe().eval()
    probs = predict_slices(probe, torch.randn(2, 1, 16, 16), settings.replace(tta=True))
    assert probe.seen == [expected] * 4
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(2, 16, 16))


def test_train_config_takes_a_precision_and_refuses_others():
    assert TrainConfig.from_dict({"data": "d", "output": "o", "precision": "bf16"}).precision == "bf16"
    assert TrainConfig.from_dict({"data": "d", "output": "o"}).precision == "auto"
    with pytest.raises(ValueError, match="precision"):
        TrainConfig.from_dict({"data": "d", "output": "o", "precision": "fp16"})


def _synthetic_slices(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy slices with a bright disk (class 1) and a dim square (class 2) of random size and place."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:SIZE, :SIZE]
    images = np.empty((count, 1, SIZE, SIZE), np.float32)
    labels = np.zeros((count, SIZE, SIZE), np.int64)
    for i in range(count):
        cy, cx, radius = *rng.uniform(12, SIZE - 12, 2), rng.uniform(4, 9)
        disk = (rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2
        top, left, side = *rng.integers(2, SIZE - 16, 2), rng.integers(6, 14)
        square = np.zeros_like(disk)
        square[top : top + side, left : left + side] = True
        labels[i][square] = 2
        labels[i][disk] = 1
        images[i, 0] = 0.8 * disk + 0.4 * (square & ~disk) + rng.normal(0, 0.15, disk.shape)
    return torch.from_numpy(images), torch.from_numpy(labels)


def _trained_model(steps: int = 60) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("perspective_unet_tiny", in_channels=1, num_classes=CLASSES, scsi_dropout=0.0)
    images, labels = _synthetic_slices(64, seed=1)
    loss_fn = SegmentationLoss(CLASSES)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    model.train()
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = torch.randint(0, len(images), (8,), generator=generator)
        loss = loss_fn(model(images[batch]), labels[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


def _mean_dice(prediction: np.ndarray, label: np.ndarray) -> float:
    scores = score_case(prediction, label, CLASSES)
    return float(np.mean([scores[c]["dice"] for c in sorted(scores)]))


@pytest.mark.slow
def test_bfloat16_inference_of_a_trained_model_meets_the_auto_bar():
    model = _trained_model()
    images, labels = _synthetic_slices(24, seed=2)  # held out: another seed
    with torch.inference_mode():
        fp32 = predict_slices(model, images, InferenceSettings(precision="fp32")).argmax(1).numpy()
        bf16 = predict_slices(model, images, InferenceSettings(precision="bf16")).argmax(1).numpy()
    dice_fp32, dice_bf16 = _mean_dice(fp32, labels.numpy()), _mean_dice(bf16, labels.numpy())
    # The model has learned the task (otherwise agreement would say little), and bfloat16 keeps what it learned.
    assert dice_fp32 > 0.4
    assert not np.array_equal(fp32, np.zeros_like(fp32))
    assert (fp32 == bf16).mean() >= 0.995
    assert abs(dice_fp32 - dice_bf16) < 0.005
