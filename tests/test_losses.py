"""Tests of perspective_unet.losses: the paper's 0.4 * CE + 0.6 * batch soft Dice."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from perspective_unet.losses import SegmentationLoss, soft_dice_loss


def reference_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """The formula written out class by class, in float64."""
    probs = torch.softmax(logits.double(), dim=1)
    dices = []
    for c in range(logits.shape[1]):
        p = probs[:, c]
        y = (target == c).double()
        dices.append((2 * (p * y).sum() + smooth) / ((p * p).sum() + (y * y).sum() + smooth))
    return 1 - torch.stack(dices).mean()


def random_batch(seed: int, shape: tuple[int, int, int, int], scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=generator) * scale
    target = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=generator)
    return logits, target


@pytest.mark.parametrize(("seed", "shape"), [(0, (2, 4, 8, 8)), (1, (3, 9, 7, 5)), (2, (1, 2, 16, 16))])
def test_dice_matches_hand_computation_on_random_inputs(seed, shape):
    logits, target = random_batch(seed, shape)
    expected = reference_dice_loss(logits, target)
    assert soft_dice_loss(logits.double(), target).item() == pytest.approx(expected.item(), abs=1e-12)
    assert soft_dice_loss(logits, target).item() == pytest.approx(expected.item(), abs=1e-6)


def test_dice_stays_exact_at_the_papers_training_size():
    logits, target = random_batch(3, (12, 9, 224, 224))
    expected = reference_dice_loss(logits, target).item()
    assert soft_dice_loss(logits, target).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(("seed", "shape"), [(4, (2, 4, 8, 8)), (5, (3, 9, 6, 10))])
def test_dice_equals_monai_dice_loss_configured_as_the_paper(seed, shape):
    logits, target = random_batch(seed, shape)
    monai_dice = DiceLoss(
        include_background=True,
        to_onehot_y=True,
        softmax=True,
        squared_pred=True,
        batch=True,
        smooth_nr=1e-5,
        smooth_dr=1e-5,
    )
    assert soft_dice_loss(logits, target).item() == pytest.approx(monai_dice(logits, target[:, None]).item(), abs=1e-6)


def test_dice_on_a_hand_worked_2x2_example():
    # Class-1 probabilities 1/2, 3/4, 1/4, 1/2 (logit differences 0, ln 3, -ln 3, 0); target [[0, 1], [1, 1]].
    # Class 1: sum p*y = 3/2, sum p^2 = 9/8, sum y^2 = 3 -> dice (3 + s) / (33/8 + s).
    # Class 0: sum p*y = 1/2, sum p^2 = 9/8, sum y^2 = 1 -> dice (1 + s) / (17/8 + s).
    ln3 = math.log(3.0)
    logits = torch.tensor([[[[0.0, 0.0], [0.0, 0.0]], [[0.0, ln3], [-ln3, 0.0]]]], dtype=torch.float64)
    target = torch.tensor([[[0, 1], [1, 1]]])
    s = 1e-5
    expected = 1 - ((3 + s) / (33 / 8 + s) + (1 + s) / (17 / 8 + s)) / 2
    assert soft_dice_loss(logits, target).item() == pytest.approx(expected, abs=1e-14)
    assert expected == pytest.approx(75 / 187, abs=1e-5)  # 1 - (8/11 + 8/17) / 2 without smoothing
    components = SegmentationLoss(2).components(logits, target)
    expected_ce = -(math.log(1 / 2) + math.log(3 / 4) + math.log(1 / 4) + math.log(1 / 2)) / 4
    assert components["ce"].item() == pytest.approx(expected_ce, abs=1e-14)
    assert components["loss"].item() == pytest.approx(0.4 * expected_ce + 0.6 * expected, abs=1e-14)


def test_dice_is_computed_over_the_whole_batch_not_per_sample():
    logits, target = random_batch(6, (2, 3, 6, 6))
    whole = soft_dice_loss(logits, target)
    per_sample = (soft_dice_loss(logits[:1], target[:1]) + soft_dice_loss(logits[1:], target[1:])) / 2
    assert not torch.isclose(whole, per_sample, atol=1e-4)
    assert whole.item() == pytest.approx(reference_dice_loss(logits, target).item(), abs=1e-6)


def test_cross_entropy_part_matches_torch():
    logits, target = random_batch(7, (2, 5, 9, 11))
    components = SegmentationLoss(5).components(logits, target)
    assert torch.equal(components["ce"], F.cross_entropy(logits, target))
    assert torch.equal(components["dice"], soft_dice_loss(logits, target))


def test_weights():
    logits, target = random_batch(8, (2, 4, 8, 8))
    ce = F.cross_entropy(logits, target)
    dice = soft_dice_loss(logits, target)
    assert SegmentationLoss(4)(logits, target).item() == pytest.approx((0.4 * ce + 0.6 * dice).item(), abs=1e-7)
    assert SegmentationLoss(4, ce_weight=1.0, dice_weight=0.0)(logits, target).item() == pytest.approx(ce.item())
    assert SegmentationLoss(4, ce_weight=0.0, dice_weight=1.0)(logits, target).item() == pytest.approx(dice.item())
    assert SegmentationLoss(4, 0.5, 0.5)(logits, target).item() == pytest.approx(0.5 * (ce + dice).item())


def test_gradient_flows_and_stays_finite_even_for_saturated_logits():
    logits, target = random_batch(9, (2, 4, 8, 8))
    logits.requires_grad_(True)
    SegmentationLoss(4)(logits, target).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    saturated = torch.zeros(1, 3, 4, 4)
    saturated[:, 0] = 200.0
    saturated.requires_grad_(True)
    loss = SegmentationLoss(3)(saturated, torch.zeros(1, 4, 4, dtype=torch.long))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(saturated.grad).all()


def test_half_precision_logits_are_scored_in_float32():
    logits, target = random_batch(10, (2, 4, 8, 8))
    loss = SegmentationLoss(4)(logits.bfloat16(), target)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(SegmentationLoss(4)(logits.bfloat16().float(), target).item(), abs=1e-6)


def test_the_module_repr_names_the_weights():
    assert "ce_weight=0.4, dice_weight=0.6" in repr(SegmentationLoss(9))


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (torch.full((2, 4, 4), 3), r"class indices in \[3, 3\], outside \[0, 2\]"),
        (torch.full((2, 4, 4), -1), r"outside \[0, 2\]"),
        (torch.zeros(2, 4, 4), "integer class indices"),
        (torch.zeros(2, 4, 4, dtype=torch.bool), "integer class indices"),
        (torch.zeros(2, 1, 4, 4, dtype=torch.long), r"target must have shape \(Batch, H, W\)"),
        (torch.zeros(2, 4, 5, dtype=torch.long), r"target must have shape \(Batch, H, W\)"),
    ],
)
def test_bad_target_raises(target, message):
    with pytest.raises(ValueError, match=message):
        SegmentationLoss(3)(torch.randn(2, 3, 4, 4), target)


def test_bad_logits_and_constructor_arguments_raise():
    with pytest.raises(ValueError, match=r"logits must have shape \(Batch, 3, H, W\)"):
        SegmentationLoss(3)(torch.randn(2, 4, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"logits must have shape"):
        SegmentationLoss(3)(torch.randn(3, 4, 4), torch.zeros(3, 4, dtype=torch.long))
    for bad in (1, 2.0, True):
        with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
            SegmentationLoss(bad)
    with pytest.raises(ValueError, match="not both 0"):
        SegmentationLoss(3, ce_weight=0.0, dice_weight=0.0)
    with pytest.raises(ValueError, match="must be >= 0"):
        SegmentationLoss(3, ce_weight=-0.1)


# ---------------------------------------------------------------- the ignore label (voxels without annotation)

IGNORE = 255


def _partly_annotated(seed: int, shape: tuple[int, int, int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    logits, target = random_batch(seed, shape)
    ignored = torch.zeros(target.shape, dtype=torch.bool)
    ignored[:, : shape[2] // 2, 1:] = True
    return logits, target.masked_fill(ignored, IGNORE), ignored


@pytest.mark.parametrize(("seed", "shape"), [(6, (2, 3, 8, 6)), (7, (3, 5, 7, 9))])
def test_ignored_voxels_get_no_gradient_from_either_term(seed, shape):
    logits, target, ignored = _partly_annotated(seed, shape)
    for ce_weight, dice_weight in ((1.0, 0.0), (0.0, 1.0), (0.4, 0.6)):
        leaf = logits.clone().requires_grad_(True)
        SegmentationLoss(shape[1], ce_weight, dice_weight, ignore_index=IGNORE)(leaf, target).backward()
        gradient = leaf.grad.movedim(1, -1)  # (B, H, W, classes)
        assert torch.count_nonzero(gradient[ignored]) == 0
        assert bool((gradient[~ignored].abs().sum(-1) > 0).all())


@pytest.mark.parametrize(("seed", "shape"), [(8, (2, 4, 8, 8)), (9, (1, 3, 5, 11))])
def test_the_loss_with_ignored_voxels_is_the_loss_of_the_annotated_voxels_alone(seed, shape):
    logits, target, ignored = _partly_annotated(seed, shape)
    # The annotated voxels gathered as one (1, classes, N, 1) batch: what the loss must see, and nothing else.
    annotated_logits = logits.movedim(1, -1)[~ignored].T[None, :, :, None]
    annotated_target = target[~ignored][None, :, None]
    parts = SegmentationLoss(shape[1], ignore_index=IGNORE).components(logits, target)
    assert parts["ce"].item() == pytest.approx(F.cross_entropy(annotated_logits, annotated_target).item(), abs=1e-6)
    assert parts["dice"].item() == pytest.approx(
        reference_dice_loss(annotated_logits, annotated_target).item(), abs=1e-6
    )


def test_a_batch_without_annotated_voxels_gives_zero_not_nan():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = SegmentationLoss(3, ignore_index=IGNORE)(logits, torch.full((2, 4, 4), IGNORE))
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(logits.grad) == 0


def test_ignore_index_must_not_be_a_class_and_other_values_stay_refused():
    with pytest.raises(ValueError, match="ignore_index 2 is a class id"):
        SegmentationLoss(3, ignore_index=2)
    with pytest.raises(ValueError, match=r"class indices in \[7, 7\]"):
        SegmentationLoss(3, ignore_index=IGNORE)(torch.randn(1, 3, 2, 2), torch.tensor([[[0, 7], [IGNORE, 1]]]))
    assert "ignore_index=255" in repr(SegmentationLoss(3, ignore_index=IGNORE))
