"""Volumes for figures: the choice of slices, and prepared volumes read by the data layer's one h5 reader."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from perspective_unet.data.layouts import files
from perspective_unet.errors import InputError
from perspective_unet.viz import choose_slices, read_canonical, volumes


def test_choose_slices_prefers_foreground_and_spreads():
    labels = np.zeros((30, 8, 8), dtype=np.uint8)
    labels[10:13, :6] = 1  # the largest organ, on three neighboring slices
    labels[25, :2] = 2
    chosen = choose_slices(labels, 2)
    assert len(chosen) == 2 and chosen[0] in (10, 11, 12)
    assert chosen == sorted(chosen)
    assert choose_slices(np.zeros((9, 4, 4)), 3) == [1, 4, 7]
    assert choose_slices(labels, 50) == sorted(set(choose_slices(labels, 50)))
    assert len(choose_slices(labels, 50)) == 30


def test_read_canonical_of_a_prepared_volume_uses_the_data_layers_reader(tiny_dataset, monkeypatch):
    assert volumes.load_h5 is files.load_h5
    calls = []

    def spy(path, z=None, **kwargs):
        calls.append(kwargs)
        return files.load_h5(path, z, **kwargs)

    monkeypatch.setattr(volumes, "load_h5", spy)
    path = tiny_dataset / "test_vol_h5" / "case0004.npy.h5"
    image, meta = read_canonical(path)
    label, _ = read_canonical(path, as_label=True)
    stored_image, stored_label, attrs = files.load_h5(path)
    np.testing.assert_array_equal(image, stored_image)
    np.testing.assert_array_equal(label, stored_label)
    assert label.dtype == np.int64 and image.shape == label.shape == (6, 32, 32)
    assert meta["format"] == "h5" and np.allclose(meta["spacing"], attrs["spacing"])
    assert calls == [{}, {"label_only": True}]  # the label alone does not read the image


def test_a_label_alone_reads_from_a_file_without_an_image(tmp_path):
    path = tmp_path / "labels.npy.h5"
    with h5py.File(path, "w") as f:
        f["label"] = np.arange(8, dtype=np.uint8).reshape(2, 2, 2)
    image, label, _ = files.load_h5(path, label_only=True)
    assert image is None and label.shape == (2, 2, 2)
    volume, _ = read_canonical(path, as_label=True)
    np.testing.assert_array_equal(volume, np.arange(8).reshape(2, 2, 2))


def test_prepared_volume_errors_are_clear(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_canonical(tmp_path / "missing.npy.h5")
    path = tmp_path / "image_only.npy.h5"
    with h5py.File(path, "w") as f:
        f["image"] = np.zeros((2, 4, 4), dtype=np.float32)
    with pytest.raises(InputError, match="no 'label' dataset"):
        read_canonical(path, as_label=True)
    with h5py.File(path, "a") as f:
        f["label"] = -np.ones((2, 4, 4), dtype=np.int16)
    with pytest.raises(InputError, match="negative labels"):
        read_canonical(path, as_label=True)
