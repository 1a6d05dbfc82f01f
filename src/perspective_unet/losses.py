"""The training loss of the paper: 0.4 * cross-entropy + 0.6 * soft Dice.

The Dice term is the one of the TransUNet / Swin-Unet / MISSFormer / Perspective+ Unet papers: for every class c,
background included, over the WHOLE batch and all pixels, on softmax probabilities p and one-hot targets y,

    dice_c = (2 * sum(p_c * y_c) + 1e-5) / (sum(p_c ** 2) + sum(y_c ** 2) + 1e-5),    dice_loss = 1 - mean_c dice_c.

This is exactly what MONAI's ``DiceLoss(include_background=True, to_onehot_y=True, softmax=True,
squared_pred=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)`` computes in exact arithmetic (the tests check
the two agree to 1e-6 on small inputs). It is written here in plain torch all the same, because MONAI 1.6 obtains
sum(p * y) as (|p|^2 + |y|^2 - |p - y|^2) / 2 from float32 vector norms: at the paper's training size (batch 12,
9 classes, 224 x 224) that costs about 2e-4 of absolute error on the loss and a 3e-4 relative error on its
gradient, against about 1e-8 and 2e-7 for the direct sums below (measured against float64).

With an ``ignore_index`` (the value of voxels that carry no annotation, nnU-Net's ignore label) those voxels take no
part in either term: the cross-entropy is the mean over the annotated voxels, and the Dice sums run over the
annotated voxels only, so the logits of an ignored voxel get no gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SegmentationLoss", "soft_dice_loss"]

_SMOOTH = 1e-5


def soft_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, smooth: float = _SMOOTH, ignore_index: int | None = None
) -> torch.Tensor:
    """Batch soft Dice loss on softmax probabilities, squared denominators, background included.

    Args:
        logits: Raw scores of shape (Batch, Classes, H, W).
        target: Class indices of shape (Batch, H, W), values in ``[0, Classes)`` or ``ignore_index``; not checked
            here.
        smooth: Added to the numerator and the denominator of every class's Dice.
        ignore_index: Target value of voxels left out of every sum (None: every voxel counts).

    Returns:
        ``1 - mean_c dice_c`` as a 0-dim float32 (or float64) tensor.

    Example:
        >>> import torch
        >>> logits = torch.tensor([[[[9.0, -9.0]], [[-9.0, 9.0]]]])  # (1, 2, 1, 2): near-certain, correct
        >>> round(soft_dice_loss(logits, torch.tensor([[[0, 1]]])).item(), 6)
        0.0
    """
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    probs = torch.softmax(logits, dim=1)
    annotated = None if ignore_index is None else target != ignore_index
    if annotated is not None:
        target = torch.where(annotated, target, torch.zeros_like(target))
    onehot = F.one_hot(target, num_classes=probs.shape[1]).movedim(-1, 1).to(probs.dtype)
    if annotated is not None:
        # Masked probabilities carry no gradient back to the logits of an ignored voxel.
        mask = annotated.unsqueeze(1).to(probs.dtype)
        probs, onehot = probs * mask, onehot * mask
    dims = [0] + list(range(2, probs.ndim))  # batch and all pixels, per class
    intersection = torch.sum(probs * onehot, dim=dims)
    denominator = torch.sum(probs * probs, dim=dims) + torch.sum(onehot, dim=dims)  # onehot ** 2 == onehot
    dice = (2.0 * intersection + smooth) / (denominator + smooth)
    return 1.0 - dice.mean()


class SegmentationLoss(nn.Module):
    """``ce_weight * cross-entropy + dice_weight * soft Dice``, the loss of the paper (0.4 / 0.6).

    Cross-entropy is torch's mean over all pixels; the Dice term is ``soft_dice_loss`` (see the module docstring).
    Half-precision logits are promoted to float32 so that the batch-wide sums stay exact under autocast.

    Args:
        num_classes: Number of classes, background included; must equal the logits' channel count.
        ce_weight: Weight of the cross-entropy term.
        dice_weight: Weight of the Dice term.
        ignore_index: Target value of voxels without annotation (not a class id), left out of both terms; None when
            every voxel is annotated.

    Example:
        >>> import torch
        >>> loss_fn = SegmentationLoss(num_classes=9)
        >>> logits = torch.randn(2, 9, 32, 32, requires_grad=True)
        >>> target = torch.randint(0, 9, (2, 32, 32))
        >>> loss = loss_fn(logits, target)
        >>> loss.backward()
        >>> loss.shape
        torch.Size([])
    """

    def __init__(
        self, num_classes: int, ce_weight: float = 0.4, dice_weight: float = 0.6, ignore_index: int | None = None
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2 (background included), got {num_classes!r}.")
        if ignore_index is not None and 0 <= ignore_index < num_classes:
            raise ValueError(
                f"ignore_index {ignore_index} is a class id (0..{num_classes - 1}); it must lie outside them."
            )
        if ce_weight < 0 or dice_weight < 0 or ce_weight + dice_weight <= 0:
            raise ValueError(
                f"ce_weight and dice_weight must be >= 0 and not both 0, got ce_weight={ce_weight}, "
                f"dice_weight={dice_weight}."
            )
        self.num_classes = num_classes
        self.ce_weight = float(ce_weight)
        self.dice_weight = float(dice_weight)
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Weighted loss.

        Args:
            logits: Raw scores of shape (Batch, num_classes, H, W).
            target: Class indices of shape (Batch, H, W), integer dtype, values in ``[0, num_classes)`` or
                ``ignore_index``.

        Returns:
            The scalar loss.
        """
        return self.components(logits, target)["loss"]

    def components(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """The weighted loss and its two unweighted terms, for logging.

        Args:
            logits: Raw scores of shape (Batch, num_classes, H, W).
            target: Class indices of shape (Batch, H, W), integer dtype, values in ``[0, num_classes)`` or
                ``ignore_index``.

        Returns:
            ``{"loss": ..., "ce": ..., "dice": ...}``, 0-dim tensors; ``loss`` carries the gradient.
        """
        self._check(logits, target)
        target = target.long()
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        if self.ignore_index is None:
            ce = F.cross_entropy(logits, target)
        else:
            # The mean over annotated voxels, and 0 (not NaN) for a batch without any.
            annotated = torch.count_nonzero(target != self.ignore_index).clamp_min(1)
            ce = F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="sum") / annotated
        dice = soft_dice_loss(logits, target, ignore_index=self.ignore_index)
        return {"loss": self.ce_weight * ce + self.dice_weight * dice, "ce": ce, "dice": dice}

    def _check(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        if logits.ndim != 4 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must have shape (Batch, {self.num_classes}, H, W), got {tuple(logits.shape)}.")
        if target.ndim != 3 or target.shape != logits.shape[:1] + logits.shape[2:]:
            raise ValueError(
                f"target must have shape (Batch, H, W) = {tuple(logits.shape[:1] + logits.shape[2:])} of class "
                f"indices, got {tuple(target.shape)}."
            )
        if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
            raise ValueError(f"target must hold integer class indices, got dtype {target.dtype}.")
        # One host sync per step; a clear message instead of a CUDA device-side assert in cross_entropy.
        outside = (target < 0) | (target >= self.num_classes)
        if self.ignore_index is not None:
            outside &= target != self.ignore_index
        if bool(outside.any()):
            low, high = int(target[outside].min()), int(target[outside].max())
            raise ValueError(
                f"target holds class indices in [{low}, {high}], outside [0, {self.num_classes - 1}] for "
                f"num_classes={self.num_classes}."
            )

    def extra_repr(self) -> str:
        ignored = "" if self.ignore_index is None else f", ignore_index={self.ignore_index}"
        return f"num_classes={self.num_classes}, ce_weight={self.ce_weight}, dice_weight={self.dice_weight}{ignored}"
