"""Configuration dataclasses and the checks they share. Standard library only, so every layer can import them.

Every field of every config is checked by type and range when the config is built and by ``validate()``; a bad
value raises ``ValueError`` whose message starts with the field's name (``model_options.`` or ``augmentation.`` in
front for the nested settings of a ``TrainConfig``). Booleans must be real booleans (YAML ``true``/``false``, not a
quoted ``"false"``), integers real integers (``12``, not ``12.0`` or ``"12"``), numbers real and finite numbers (not
``"0.01"``, NaN or infinity), lists lists of the right length. The messages say how to write the value instead,
including YAML's own trap: PyYAML reads ``1e-4`` (no dot, unsigned exponent) as text.

The augmentation settings of both protocols (``AugmentationConfig``, ``SpacingAugmentationConfig``) live here, not
beside their MONAI transforms, so that ``TrainConfig`` checks its ``augmentation`` overrides without importing
MONAI.
"""

from __future__ import annotations

from perspective_unet.config.augmentation import AugmentationConfig, SpacingAugmentationConfig
from perspective_unet.config.checks import (
    CHECKPOINTABLE_PARTS,
    OPERATIONS,
    OPTIMIZERS,
    PROTOCOLS,
    check_bool,
    check_choice,
    check_int,
    check_int_list,
    check_mapping,
    check_number,
    check_number_pair,
    check_path,
    check_str,
    dataclass_from_dict,
)
from perspective_unet.config.model import ModelConfig
from perspective_unet.config.train import TrainConfig

__all__ = [
    "CHECKPOINTABLE_PARTS",
    "OPERATIONS",
    "OPTIMIZERS",
    "PROTOCOLS",
    "AugmentationConfig",
    "ModelConfig",
    "SpacingAugmentationConfig",
    "TrainConfig",
    "check_bool",
    "check_choice",
    "check_int",
    "check_int_list",
    "check_mapping",
    "check_number",
    "check_number_pair",
    "check_path",
    "check_str",
    "dataclass_from_dict",
]
