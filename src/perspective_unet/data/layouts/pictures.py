"""Plain 2D datasets (:class:`PictureFolders`): a folder of PNG/JPG/BMP/TIFF images and a folder of masks with the
same file stems.

Each picture is one case (a one-slice volume). Images are converted to gray (luminance) and scaled to [0, 1]:
8-bit by /255, 16-bit by /65535, any other type by its own min and max. Masks hold class ids; when every mask of the
dataset holds only 0 and 255 they are read as binary (255 -> class 1), the common way of saving a binary mask. A
dataset mixing such masks with masks of class ids (0, 1, 2, ...) is refused rather than guessed, and so are JPEG
masks, whose lossy compression alters class ids at object borders.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from perspective_unet.data.checks import check_same_geometry, check_slice_size, require_files
from perspective_unet.data.io import PICTURE_SUFFIXES, full_suffix, read_image
from perspective_unet.data.layouts.info import IGNORE_LABEL, DatasetInfo
from perspective_unet.data.layouts.prepared import PreparedWriter
from perspective_unet.data.layouts.raw import RawDataset, progress, warn_if_all_background
from perspective_unet.data.splits import split_cases
from perspective_unet.errors import InputError
from perspective_unet.intensity import IntensitySpec, picture_to_unit

__all__ = ["PictureFolders", "prepare_folder_2d", "prepare_pictures"]

logger = logging.getLogger(__name__)

# Lossy formats: compression blurs the borders between classes into values that are no class id.
LOSSY_MASK_SUFFIXES = (".jpg", ".jpeg")
_BINARY_255 = frozenset({0, 255})

_PICTURE_NORMALIZATION = (
    "2D pictures: converted to gray (luminance); 8-bit / 255, 16-bit / 65535, other types min-max per image -> [0, 1]"
)


def _find_mask(masks: Path, stem: str, mask_suffix: str) -> Path | None:
    for suffix in PICTURE_SUFFIXES:
        candidate = masks / f"{stem}{mask_suffix}{suffix}"
        if candidate.exists():
            return candidate
    return None


_MASK_FOLDERS = ("masks", "labels")


class PictureFolders(RawDataset):
    """A folder of pictures and a folder of masks with the same file stems (see the module docstring).

    Args:
        images: Folder of pictures.
        masks: Folder of masks named ``<image stem><mask_suffix>.<png|...>``.
        mask_suffix: Text between the image stem and the mask's suffix, such as ``"_mask"``.
    """

    command = "nnunet"
    description = "folders of 2D pictures and masks"

    def __init__(self, images: str | os.PathLike[str], masks: str | os.PathLike[str], mask_suffix: str = "") -> None:
        super().__init__(Path(images).parent)
        self.images, self.masks, self.mask_suffix = Path(images), Path(masks), mask_suffix

    @classmethod
    def recognizes(cls, root: Path) -> bool:
        return (root / "images").is_dir() and any((root / name).is_dir() for name in _MASK_FOLDERS)

    @classmethod
    def of_folder(cls, root: str | os.PathLike[str]) -> PictureFolders:
        """The pictures of ``root/images`` and the masks of ``root/masks`` (or ``root/labels``)."""
        root = Path(root)
        masks = next((root / name for name in _MASK_FOLDERS if (root / name).is_dir()), root / _MASK_FOLDERS[0])
        return cls(root / "images", masks)

    def _pairs(self) -> list[tuple[str, Path, Path | None]]:
        for folder in (self.images, self.masks):
            if not folder.is_dir():
                raise InputError(f"{folder} is not a folder; give the folders of the images and of the masks.")
        image_files = require_files(
            sorted(p for p in self.images.iterdir() if full_suffix(p) in PICTURE_SUFFIXES),
            self.images,
            "PNG/JPG/BMP/TIFF images",
        )
        pairs: list[tuple[str, Path, Path | None]] = []
        seen: dict[str, Path] = {}
        for image_path in image_files:
            case = image_path.name[: -len(full_suffix(image_path))]
            if case in seen:
                raise InputError(f"{image_path} and {seen[case]} share the name {case!r}; rename one of them.")
            seen[case] = image_path
            mask_path = _find_mask(self.masks, case, self.mask_suffix)
            if mask_path is None:
                raise InputError(
                    f"{image_path} has no mask in {self.masks} (looked for '{case}{self.mask_suffix}.png' "
                    "and the other picture suffixes); every image needs a mask with the same stem."
                )
            pairs.append((case, image_path, mask_path))
        return pairs

    def prepare(
        self,
        out: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        class_names: Sequence[str] | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        seed: int = 1234,
        name: str | None = None,
        protocol: str = "spacing",
    ) -> Path:
        """Prepare the pictures with a seeded split of whole images (see :func:`prepare_folder_2d`)."""
        pairs = self._pairs()
        splits = split_cases([case for case, _, _ in pairs], val_fraction, test_fraction, seed)
        return prepare_pictures(
            pairs,
            out,
            splits,
            class_names,
            name=name or self.images.parent.name or "folder2d",
            source=f"2D images from {self.images} with masks from {self.masks}",
            license="as the source images'",
            overwrite=overwrite,
            protocol=protocol,
            folder=self.masks,
        )


def prepare_folder_2d(
    images: str | os.PathLike[str],
    masks: str | os.PathLike[str],
    out: str | os.PathLike[str],
    class_names: Sequence[str] | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 1234,
    mask_suffix: str = "",
    name: str | None = None,
    overwrite: bool = False,
    protocol: str = "spacing",
) -> Path:
    """Prepare a folder of 2D images and masks, with a seeded split of whole images.

    Args:
        images: Folder of pictures.
        masks: Folder of masks named ``<image stem><mask_suffix>.<png|...>``.
        out: Output folder (written atomically).
        class_names: Names of the classes, background first; by default ``class_1``... up to the largest mask value.
        val_fraction: Share of images for validation.
        test_fraction: Share of images for testing.
        seed: Seed of the split.
        mask_suffix: Text between the image stem and the mask's suffix, such as ``"_mask"``.
        name: Dataset name; the images folder's parent name by default.
        overwrite: Replace an existing ``out``.
        protocol: Protocol of the plan written beside the data (``spacing``: pictures at their own pixel size).

    Returns:
        The output folder.
    """
    return PictureFolders(images, masks, mask_suffix).prepare(
        out,
        overwrite=overwrite,
        class_names=class_names,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        name=name,
        protocol=protocol,
    )


def prepare_pictures(
    pairs: Sequence[tuple[str, Path, Path | None]],
    out: str | os.PathLike[str],
    splits: dict[str, list[str]],
    class_names: Sequence[str] | None,
    name: str,
    source: str,
    license: str,
    overwrite: bool = False,
    protocol: str = "spacing",
    folder: str | os.PathLike[str] | None = None,
    ignore_id: int | None = None,
) -> Path:
    """Write 2D picture pairs (case, image, mask) into the prepared layout with the given case split.

    Args:
        pairs: (case, image, mask or None) of every picture.
        out: Output folder (written atomically).
        splits: Cases by split (``train``, ``val``, ``test``); cases in no split are checked but not written.
        class_names: Names of the classes, background first; None derives them from the largest mask value.
        name: Dataset name.
        source: Where the data came from, for dataset.json.
        license: The data's license, for dataset.json.
        overwrite: Replace an existing ``out``.
        protocol: Protocol of the plan written beside the data.
        folder: The dataset's folder, named in warnings about the whole dataset (the first mask's folder if None).
        ignore_id: The mask value of pixels without annotation (nnU-Net's ignore label), stored as ``IGNORE_LABEL``;
            None when every pixel is annotated.

    Raises:
        InputError: JPEG masks, masks mixing the 0/255 and the class-id encodings, pictures smaller than 2 x 2
            pixels, mask values beyond the classes, unreadable files.
    """
    case_split = {case: split for split, cases in splits.items() for case in cases}
    survey = _survey_masks([(case, m) for case, _, m in pairs if m is not None], case_split, ignore_id)
    names = list(class_names) if class_names else ["background", *[f"class_{i}" for i in range(1, survey.largest + 1)]]
    if len(names) < 2:
        raise InputError("A segmentation dataset needs at least two classes (background and one more).")
    if survey.first_mask is not None and "train" in case_split.values():
        warn_if_all_background(
            survey.train_foreground, folder if folder is not None else survey.first_mask.parent, "training mask"
        )
    ignore_label = None if ignore_id is None else IGNORE_LABEL
    with PreparedWriter(out, overwrite=overwrite, ignore_label=ignore_label) as writer:
        for case, image_path, mask_path in progress(pairs, "2D images"):
            picture, image, label = _read_pair(image_path, mask_path, survey.binary_255, len(names), ignore_id)
            split = case_split.get(case)
            if split is None:
                continue
            attrs = {
                "affine": np.eye(4),
                "original_shape": np.asarray(image.shape, dtype=np.int64),
                "orientation": "2d",
                "canonical_shape": np.asarray((1, *image.shape), dtype=np.int64),
                "source": image_path.name,
            }
            if split == "train":
                if label is None:
                    raise InputError(f"{image_path} has no mask; training images need one.")
                # A picture's pixel counts as 1 "mm": the spacing protocol then works at the pictures' own scale.
                writer.add_train_slice(case, 0, image, label, spacing=(1.0, 1.0, 1.0), raw=picture)
                writer.record_geometry(case, (1.0, 1.0, 1.0), attrs)
            else:
                writer.add_volume(
                    split,
                    case,
                    image[None],
                    None if label is None else label[None],
                    (1.0, 1.0, 1.0),
                    attrs,
                    raw=picture[None],
                )
        return writer.finish(
            DatasetInfo(
                name=name,
                class_names=names,
                modality="2D",
                normalization=_PICTURE_NORMALIZATION,
                intensity=IntensitySpec("picture"),
                orientation="2d",
                source=source,
                license=license,
                ignore_label=ignore_label,
            ),
            protocol=protocol,
        )


@dataclass
class _MaskSurvey:
    """What the first pass over the masks found."""

    binary_255: bool
    largest: int
    train_foreground: bool
    first_mask: Path | None


def _survey_masks(
    masks: Sequence[tuple[str, Path]], case_split: dict[str, str], ignore_id: int | None = None
) -> _MaskSurvey:
    """One encoding (0/255 or class ids) for the whole dataset, the largest class id, any training foreground.

    Raises:
        InputError: JPEG masks, or masks mixing the two encodings.
    """
    for _, mask_path in masks:
        if full_suffix(mask_path) in LOSSY_MASK_SUFFIXES:
            raise InputError(
                f"{mask_path} is a JPEG mask; JPEG compression alters class ids at object borders. "
                "Save the masks as PNG."
            )
    values: set[int] = set()
    binary_example: Path | None = None
    ids_example: tuple[Path, list[int]] | None = None
    train_foreground = False
    for case, mask_path in masks:
        mask, _ = read_image(mask_path, as_label=True)
        present = {int(v) for v in np.unique(mask)}
        values |= present
        if present <= _BINARY_255:
            binary_example = binary_example or (mask_path if 255 in present else None)
        elif ids_example is None:
            ids_example = (mask_path, sorted(present))
        train_foreground = train_foreground or (case_split.get(case) == "train" and bool(present - {0, ignore_id}))
    if binary_example is not None and ids_example is not None:
        ids_path, ids_values = ids_example
        shown = ", ".join(str(v) for v in ids_values[:8]) + (", ..." if len(ids_values) > 8 else "")
        raise InputError(
            f"{binary_example} holds only 0 and 255 (a binary mask saved as 0/255) but {ids_path} holds class ids "
            f"[{shown}]; save every mask of the dataset in one encoding: class ids 0, 1, 2, ... (or 0/255 in every "
            "mask of a binary dataset)."
        )
    binary_255 = binary_example is not None
    if binary_255:
        logger.info("Masks hold only 0 and 255: read as binary masks (255 -> class 1).")
    # Empty masks alone still give one foreground class, so that an all-background dataset prepares (with a warning).
    largest = 1 if binary_255 else max(values | {1})
    return _MaskSurvey(binary_255, largest, train_foreground, masks[0][1] if masks else None)


def _read_pair(
    image_path: Path, mask_path: Path | None, binary_255: bool, num_classes: int, ignore_id: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(picture as read, picture in [0, 1], class ids or None) of one image and its mask, checked; the ignore label's
    pixels hold ``IGNORE_LABEL``."""
    picture, meta = read_image(image_path)
    check_slice_size(picture.shape, image_path)
    image = picture_to_unit(picture, image_path)
    if mask_path is None:
        return picture, image, None
    mask, mask_meta = read_image(mask_path, as_label=True)
    check_same_geometry(meta, mask_meta, image_path, mask_path)
    if binary_255:
        mask = (mask == 255).astype(np.uint8)
    ignored = None if ignore_id is None else mask == ignore_id
    classes = mask if ignored is None else np.where(ignored, 0, mask)
    if int(classes.max(initial=0)) >= num_classes or int(classes.min(initial=0)) < 0:
        raise InputError(
            f"{mask_path} holds label values {sorted(int(v) for v in np.unique(classes) if v >= num_classes)}"
            f" beyond the declared classes 0..{num_classes - 1}; fix the mask or declare those classes."
        )
    return picture, image, (classes if ignored is None else np.where(ignored, IGNORE_LABEL, classes)).astype(np.uint8)
