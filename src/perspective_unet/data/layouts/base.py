"""What every readable layout shares: :class:`SliceRef` (where one slice lives), the neighbors of a slice
(:func:`context_indices`), and :class:`DatasetLayout`, the interface training, evaluation and planning read a
dataset folder through, whatever its on-disk format.

A layout lists the slices and volumes of a split and reads them; its default methods read the structure that the
prepared layout and TransUNet's Synapse files share (``train_npz/<case>_slice<NNN>.npz`` slices and ``.npy.h5``
volumes). It also gives the folder's fingerprint, geometry and plan (``fingerprint.json``, ``geometry.json``,
``plan.json`` when present; the paper protocol's plan for folders that never had one).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from perspective_unet.data.layouts.files import VOLUME_SUFFIX, h5_depth, load_h5, load_npz
from perspective_unet.data.layouts.info import DatasetInfo
from perspective_unet.errors import InputError
from perspective_unet.fingerprint import FINGERPRINT_FILE, Fingerprint, read_fingerprint
from perspective_unet.intensity import ImageStats, IntensitySpec
from perspective_unet.outputs import read_json
from perspective_unet.plan import PLAN_FILE, PROTOCOLS, Plan, check_patch_size, derive_plan, read_plan

__all__ = [
    "GEOMETRY_FILE",
    "TEST_DIR",
    "TRAIN_DIR",
    "DatasetLayout",
    "SliceRef",
    "case_of_slice",
    "context_indices",
    "slice_name",
]

logger = logging.getLogger(__name__)

# TransUNet's folder names, which the prepared layout keeps.
TRAIN_DIR = "train_npz"
TEST_DIR = "test_vol_h5"
GEOMETRY_FILE = "geometry.json"


def slice_name(case: str, index: int) -> str:
    """``<case>_slice<NNN>``, the TransUNet-style name of one training slice."""
    return f"{case}_slice{index:03d}"


def case_of_slice(name: str) -> str:
    """``<case>_slice<NNN>`` -> ``<case>``."""
    return name.rsplit("_slice", 1)[0]


def _position(name: str) -> int:
    """The number after the last ``_slice`` or ``_`` of a slice name (``case_slice012`` -> 12), else 0."""
    tail = name.rsplit("_slice", 1)[-1] if "_slice" in name else name
    digits = tail.rsplit("_", 1)[-1]
    return int(digits) if digits.isdigit() else 0


@dataclass(frozen=True)
class SliceRef:
    """Where one slice lives.

    Attributes:
        name: ``<case>_slice<NNN>`` (or the ACDC file's stem).
        path: A 2D ``.npz`` file (``z`` is None) or a volume file.
        z: The slice's index in a volume file.
        case: The case it belongs to.
        position: Its order among the case's slices.
    """

    name: str
    path: Path
    z: int | None = None
    case: str = ""
    position: int = 0


def context_indices(samples: Sequence[SliceRef], context: int) -> list[tuple[int, ...]]:
    """For every slice, the indices of the ``2 * context + 1`` slices around it, from below to above.

    Neighbors are the slices of the same case in position order; past the first or last slice of a case the end
    slice is repeated, as inference pads a volume.

    Example:
        >>> refs = [SliceRef(f"a_slice{z:03d}", Path("x"), None, "a", z) for z in (4, 5, 6)]
        >>> context_indices(refs, 1)
        [(0, 0, 1), (0, 1, 2), (1, 2, 2)]
    """
    if context == 0:
        return [(i,) for i in range(len(samples))]
    by_case: dict[str, list[int]] = defaultdict(list)
    for index, ref in enumerate(samples):
        by_case[ref.case].append(index)
    out: list[tuple[int, ...]] = [()] * len(samples)
    for members in by_case.values():
        ordered = sorted(members, key=lambda i: samples[i].position)
        last = len(ordered) - 1
        for rank, index in enumerate(ordered):
            out[index] = tuple(ordered[min(max(rank + d, 0), last)] for d in range(-context, context + 1))
    return out


class DatasetLayout(ABC):
    """A dataset folder in one on-disk format: its description, its slices and volumes, its plan.

    Subclasses say how the format is recognized and described (:meth:`recognizes`, :meth:`open`), which training
    slices it holds (:meth:`train_names`) and where a split's volumes lie (:meth:`volume_folder`); formats that store
    other files override the readers too.

    Attributes:
        kind: The format's name (``prepared``, ``synapse_files``, ``acdc_files``).
        root: The dataset folder.
        info: Its description.
    """

    kind: ClassVar[str]

    def __init__(self, root: Path, info: DatasetInfo) -> None:
        self.root = Path(root)
        self.info = info

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r})"

    def describe(self) -> str:
        """One line saying which kind of folder this is and whose intensity normalization its images carry."""
        return f"{self.info.name} prepared by `perspective-unet prepare`: {self.info.normalization or 'not recorded'}"

    @classmethod
    @abstractmethod
    def recognizes(cls, root: Path) -> bool:
        """Whether ``root`` is in this format (from names on disk; nothing is read)."""

    @classmethod
    @abstractmethod
    def open(cls, root: Path) -> DatasetLayout:
        """The layout of ``root`` with its description (read, or inferred from the files present).

        Raises:
            InputError: The description is invalid (the message names the file).
        """

    @abstractmethod
    def train_names(self) -> list[str]:
        """Names of the training slice files, in order (a list file's order when the format has one)."""

    @abstractmethod
    def volume_folder(self, split: str) -> Path | None:
        """The folder of a split's ``.npy.h5`` volumes, or None when the split has none."""

    # ---- slices and volumes ------------------------------------------------------------------------------------

    def case_of(self, name: str) -> str:
        """The case a slice file belongs to."""
        return case_of_slice(name)

    def slice_ref(self, name: str, path: Path) -> SliceRef:
        """The reference of a 2D slice file."""
        return SliceRef(name, path, None, self.case_of(name), _position(name))

    def slice_files(self, split: str) -> list[SliceRef] | None:
        """The 2D slice files of a split, or None when the split is stored as volumes."""
        if split != "train":
            return None
        return [self.slice_ref(name, self.root / TRAIN_DIR / f"{name}.npz") for name in self.train_names()]

    def volume_files(self, split: str) -> list[tuple[str, Path]]:
        """(case, file) of a split's volumes, in the description's order (the files need not exist)."""
        folder = self.volume_folder(split)
        return [] if folder is None else [(case, folder / f"{case}{VOLUME_SUFFIX}") for case in self.info.cases(split)]

    def list_slices(self, split: str) -> list[SliceRef]:
        """Every slice of a split: its slice files, or the slices of its volumes.

        Raises:
            InputError: A volume the dataset lists is missing.
        """
        files = self.slice_files(split)
        if files is not None:
            return files
        samples = []
        for case, path in self.volume_files(split):
            if not path.exists():
                raise InputError(f"{path} is missing; the dataset lists case {case!r} in its {split} split.")
            samples += [SliceRef(slice_name(case, z), path, z, case, z) for z in range(self.volume_depth(path))]
        return samples

    def case_slices(self, cases: Sequence[str]) -> list[SliceRef]:
        """Every slice of the given development cases, wherever they are stored (training slices or validation
        volumes).

        Raises:
            InputError: A case has no slices in the train or val split (test cases never do: they are not for
                training).
        """
        wanted = set(cases)
        refs = [ref for split in ("train", "val") for ref in self.list_slices(split) if ref.case in wanted]
        missing = sorted(wanted - {ref.case for ref in refs})
        if missing:
            raise InputError(
                f"{self.root} has no training or validation slices of cases {missing[:3]}; folds take their cases "
                "from the train and val splits only."
            )
        return refs

    def read_slice(self, ref: SliceRef) -> tuple[np.ndarray, np.ndarray | None]:
        """The stored slice: image float32 (H, W), or (C, H, W) for several channels, and label int64 (H, W) or None.

        Raises:
            InputError: The image is not a slice of the folder's channels, or the label's shape differs.
        """
        image, label = load_npz(ref.path) if ref.z is None else self.read_volume_slice(ref.path, ref.z)
        channels = self.info.num_channels
        expected = 2 if channels == 1 else 3
        if (
            image.ndim != expected
            or (channels > 1 and image.shape[0] != channels)
            or (label is not None and image.shape[-2:] != label.shape)
        ):
            shape = None if label is None else label.shape
            form = "(H, W)" if channels == 1 else f"({channels}, H, W)"
            raise InputError(
                f"{ref.path}: slice image {image.shape} and label {shape} must be a {form} image and an (H, W) label "
                "of one size."
            )
        return image.astype(np.float32), None if label is None else np.rint(label).astype(np.int64)

    def read_volume(self, path: Path) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
        """(image, label or None, attributes) of a volume file as stored."""
        return load_h5(path)

    def read_volume_slice(self, path: Path, z: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Slice ``z`` of a volume file: (image, label or None) as stored."""
        image, label, _ = load_h5(path, z)
        return image, label

    def volume_depth(self, path: Path) -> int:
        """Number of slices of a volume file."""
        return h5_depth(path)

    # ---- geometry, fingerprint and plan ------------------------------------------------------------------------

    def geometry(self) -> dict[str, dict[str, Any]]:
        """``geometry.json``: per case its spacing (z, y, x) mm and geometry attributes; empty when absent."""
        path = self.root / GEOMETRY_FILE
        return read_json(path, "prepare the dataset again.") if path.is_file() else {}

    def fingerprint(self) -> Fingerprint | None:
        """``fingerprint.json``, or None when the folder has none (TransUNet-style files)."""
        path = self.root / FINGERPRINT_FILE
        return read_fingerprint(path) if path.is_file() else None

    def plan(self) -> Plan:
        """``plan.json``, or the paper protocol's plan (224 x 224, the recorded intensities) for folders without one
        that never had one (TransUNet-style files, folders of test volumes only).

        Raises:
            InputError: The plan file is invalid (named), its stored range differs from the data's, or it is missing
                from a folder `prepare` wrote with training cases (which always gets one: falling back to the paper
                protocol there would change how a model sees the data without a word).
        """
        path = self.root / PLAN_FILE
        recorded = self.info.stored_intensity()
        if not path.is_file():
            fingerprint = self.fingerprint()
            if fingerprint is not None and fingerprint.training_cases:
                raise InputError(
                    f"{path} is missing: `perspective-unet prepare` wrote the folder's plan there, and without it "
                    "training would silently fall back to the paper protocol at 224 x 224. Restore the file, or "
                    f"derive it again with `perspective-unet plan -d {self.root} --reset` (add --protocol paper for "
                    "the paper protocol)."
                )
            others = tuple(spec.replace(scaling="symmetric") for spec in self.info.other_channels or ())
            return Plan("paper", (224, 224), recorded or IntensitySpec("unit"), batch_size=12, other_channels=others)
        plan = read_plan(path)
        stored = self.info.stored_intensities()
        if stored is not None and plan.num_channels != len(stored):
            raise InputError(
                f"{path}: the plan gives {plan.num_channels} input channel(s) but the stored data have {len(stored)}. "
                f"Fix the file or run `perspective-unet plan -d {self.root} --reset`."
            )
        for spec, data in zip(plan.intensities, stored or ()):
            if _stage1(spec) != _stage1(data):
                raise InputError(
                    f"{path}: intensity {spec.to_dict()} does not match the stored data's {data.to_dict()} (kind, "
                    "window and percentiles are fixed when the data are prepared; only scaling, mean and std may be "
                    f"edited). Fix the file or run `perspective-unet plan -d {self.root} --reset`."
                )
        return plan

    def case_statistics(self) -> dict[str, tuple[ImageStats, ...]]:
        """Per-case mean and std of the stored images (from the fingerprint), one per input channel, for per-image
        z-scoring.

        Raises:
            InputError: The folder has no fingerprint.
        """
        fingerprint = self.fingerprint()
        if fingerprint is None:
            raise InputError(
                f"{self.root} has no {FINGERPRINT_FILE}: per-image z-scoring needs each case's statistics. "
                "Prepare the dataset again with `perspective-unet prepare`, or use 'symmetric' scaling."
            )
        return {c.case: tuple(ImageStats(s.mean, s.std) for s in c.stored_channels) for c in fingerprint.cases}

    def plan_for_training(
        self,
        *,
        protocol: str | None = None,
        patch_size: Sequence[int] | None = None,
        batch_size: int | None = None,
        context_slices: int | None = None,
    ) -> Plan:
        """The folder's plan with a run's overrides; another protocol than the file's is derived from the fingerprint.

        Raises:
            InputError: Another protocol is asked of a folder without a fingerprint, or the spacing protocol of files
                without spacing, or a patch larger than every slice.
        """
        plan = self.plan()
        try:
            if protocol is not None and protocol not in PROTOCOLS:
                raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}.")
            if protocol is not None and protocol != plan.protocol:
                fingerprint = self.fingerprint()
                if fingerprint is None:
                    raise ValueError(
                        f"the {protocol} protocol needs the dataset's fingerprint, which {self.root} lacks (files "
                        "in the TransUNet-style layout carry no spacing); prepare the raw data with "
                        "`perspective-unet prepare`."
                    )
                plan = derive_plan(
                    fingerprint,
                    protocol,
                    patch_size=patch_size,
                    batch_size=batch_size,
                    context_slices=plan.context_slices,
                )
            changes: dict[str, Any] = {}
            if patch_size is not None:
                changes["patch_size"] = tuple(int(s) for s in patch_size)
                self._check_patch(plan, changes["patch_size"])
            if batch_size is not None:
                changes["batch_size"] = int(batch_size)
            if context_slices is not None:
                changes["context_slices"] = int(context_slices)
            return plan.replace(**changes) if changes else plan
        except ValueError as exc:
            raise InputError(f"{self.root}: {exc}") from None

    def _check_patch(self, plan: Plan, patch: tuple[int, int]) -> None:
        if plan.protocol != "spacing":
            return
        fingerprint = self.fingerprint()
        if fingerprint is not None:
            check_patch_size(fingerprint, plan.spacing, patch)


def _stage1(spec: IntensitySpec) -> tuple[Any, ...]:
    return (spec.kind, spec.window, spec.percentiles if spec.kind == "percentile_minmax" else None)
