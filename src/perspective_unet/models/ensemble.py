"""Ensembles: several models predicting as one, by the mean of their class probabilities.

:class:`ProbabilityEnsemble` returns the logarithm of the members' mean softmax, so anything that takes a softmax of
a model's output (prediction, evaluation, test-time mirroring) gets the mean probabilities exactly.
:func:`perspective_unet.runs.load` builds one from several sources (or a folder of fold runs), which join only when
they predict the same classes with the same plan: their probabilities then describe the same pixels in the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["ProbabilityEnsemble"]


class ProbabilityEnsemble(nn.Module):
    """Models whose output is ``log(mean_i softmax(model_i(x)))``: its softmax is the members' mean probability.

    Members run one after another, so the ensemble needs the memory of one member's activations. ``config`` is the
    first member's (all share classes and input channels); ``batch_dependent`` is true when any member's outputs
    depend on the other samples of its batch.

    Example:
        >>> from perspective_unet import create_model
        >>> members = [create_model("perspective_unet_tiny", num_classes=3).eval() for _ in range(2)]
        >>> ensemble = ProbabilityEnsemble(members).eval()
        >>> x = torch.randn(1, 1, 32, 32)
        >>> mean = (members[0](x).softmax(1) + members[1](x).softmax(1)) / 2
        >>> torch.allclose(ensemble(x).softmax(1), mean, atol=1e-6)
        True
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one model.")
        self.members = nn.ModuleList(members)
        self.config = getattr(members[0], "config", None)
        self.batch_dependent = any(getattr(m, "batch_dependent", False) for m in members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for member in self.members:
            probabilities = torch.softmax(member(x).float(), dim=1)
            total = probabilities if total is None else total + probabilities
        mean = total / len(self.members)
        # Clamped so that an underflowed probability gives a very negative logit rather than -inf.
        return torch.log(mean.clamp_min(torch.finfo(mean.dtype).tiny))
