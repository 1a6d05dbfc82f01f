"""Post-processing of label maps as nnU-Net decides it: keep only the largest connected component, of all foreground
classes together and/or of single classes; :class:`Postprocessing` is its ``postprocessing.json``.

``perspective-unet find-best`` decides it on the out-of-fold predictions (each step kept only where it raises the
cross-validated Dice) and writes the file; ``perspective-unet predict --postprocess FILE`` applies it to every label
map. Components are connected through faces, edges and corners (full connectivity, as nnU-Net's); removed voxels
become background. The steps run in the file's order: the foreground as a whole first, then each listed class.

Example:
    >>> import numpy as np
    >>> labels = np.zeros((1, 6, 6), dtype=np.uint8)
    >>> labels[0, :2, :2] = 1
    >>> labels[0, 4, 4] = 1  # a spurious island
    >>> post = Postprocessing(("background", "liver"), largest_component_classes=(1,))
    >>> int(post.apply(labels).sum())
    4
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from perspective_unet.errors import InputError
from perspective_unet.outputs import read_json, write_json_atomic

__all__ = ["POSTPROCESSING_FILE", "Postprocessing", "keep_largest_component"]

POSTPROCESSING_FILE = "postprocessing.json"
_FORMAT = "perspective-unet postprocessing"


def keep_largest_component(labels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """``labels`` with every component of ``classes`` (taken together) but the largest set to background.

    Args:
        labels: Integer label map (2D or 3D).
        classes: The class ids whose union forms the mask.

    Returns:
        A new array (the input is not changed).
    """
    labels = np.asarray(labels)
    mask = np.isin(labels, list(classes))
    components, count = ndimage.label(mask, structure=ndimage.generate_binary_structure(labels.ndim, labels.ndim))
    out = labels.copy()
    if count > 1:
        sizes = np.bincount(components.ravel())[1:]
        out[mask & (components != int(np.argmax(sizes)) + 1)] = 0
    return out


@dataclass(frozen=True)
class Postprocessing:
    """What to do to a label map after prediction (see the module docstring).

    Attributes:
        class_names: The classes of the model it was decided for, background first.
        foreground_as_one: Keep the largest component of all foreground classes together.
        largest_component_classes: Classes that each keep only their largest component, in this order.
        decided_on: Free-form record of how it was decided (the configuration, Dice before and after), kept in the file.
        origin: The file it was read from, named in messages.
    """

    class_names: tuple[str, ...]
    foreground_as_one: bool = False
    largest_component_classes: tuple[int, ...] = ()
    decided_on: Mapping[str, Any] = field(default_factory=dict, compare=False)
    origin: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(str(n) for n in self.class_names))
        object.__setattr__(self, "largest_component_classes", tuple(int(c) for c in self.largest_component_classes))
        bad = [c for c in self.largest_component_classes if not 1 <= c < len(self.class_names)]
        if bad:
            raise ValueError(f"classes {bad} are not foreground classes of {list(self.class_names)}.")

    @property
    def does_nothing(self) -> bool:
        """Whether no step was chosen."""
        return not self.foreground_as_one and not self.largest_component_classes

    def apply(self, labels: np.ndarray) -> np.ndarray:
        """The post-processed label map (same shape and type)."""
        out = np.asarray(labels)
        if self.foreground_as_one:
            out = keep_largest_component(out, range(1, len(self.class_names)))
        for class_id in self.largest_component_classes:
            out = keep_largest_component(out, [class_id])
        return out

    def describe(self) -> str:
        """The steps in words."""
        steps = ["keep the largest component of the foreground"] if self.foreground_as_one else []
        steps += [f"keep the largest component of {self.class_names[c]}" for c in self.largest_component_classes]
        return "; ".join(steps) if steps else "none (no step raised the cross-validated Dice)"

    def check_classes(self, class_names: Sequence[str], num_classes: int, model: str | os.PathLike[str]) -> None:
        """Refuse a file decided for other classes than the model's.

        Args:
            class_names: The model's class names (empty when it records none: then only their number is compared).
            num_classes: The model's number of classes.
            model: The model, named in the message.

        Raises:
            InputError: The classes differ (the file and the model are named).
        """
        names = [str(n) for n in class_names]
        if (names and names != list(self.class_names)) or num_classes != len(self.class_names):
            raise InputError(
                f"{self.origin or POSTPROCESSING_FILE} was decided for the classes {list(self.class_names)} but "
                f"{model} predicts {names or num_classes}; use the postprocessing.json find-best wrote for this model."
            )

    def to_dict(self) -> dict[str, Any]:
        """``postprocessing.json``'s content."""
        return {
            "format": _FORMAT,
            "class_names": {str(i): name for i, name in enumerate(self.class_names)},
            "foreground_as_one": self.foreground_as_one,
            "largest_component_classes": list(self.largest_component_classes),
            "steps": self.describe(),
            **dict(self.decided_on),
        }

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write ``postprocessing.json`` atomically."""
        return write_json_atomic(self.to_dict(), path)

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> Postprocessing:
        """Read a ``postprocessing.json``.

        Raises:
            InputError: The file is missing, not JSON, or not a post-processing file of this project.
        """
        data = read_json(path, "give the postprocessing.json that `perspective-unet find-best` wrote.")
        try:
            if data.get("format") != _FORMAT:
                raise ValueError(f"format is {data.get('format')!r}, not {_FORMAT!r}")
            names = data["class_names"]
            if not isinstance(data["foreground_as_one"], bool):
                raise ValueError("foreground_as_one must be true or false")
            if not all(isinstance(c, int) and not isinstance(c, bool) for c in data["largest_component_classes"]):
                raise ValueError("largest_component_classes must list class ids")
            return cls(
                tuple(names[str(i)] for i in range(len(names))),
                data["foreground_as_one"],
                tuple(data["largest_component_classes"]),
                {k: v for k, v in data.items() if k not in _OWN_KEYS},
                str(path),
            )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise InputError(
                f"{path} is not a post-processing file of perspective-unet ({type(exc).__name__}: {exc}); use the one "
                "`perspective-unet find-best` wrote."
            ) from None


_OWN_KEYS = ("format", "class_names", "foreground_as_one", "largest_component_classes", "steps")
