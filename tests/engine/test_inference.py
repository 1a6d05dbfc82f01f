"""The torch resampler reproduces scipy's cubic-spline zoom, so both whole-volume paths give the same labels."""

import numpy as np
import pytest
import scipy.ndimage
import torch

from perspective_unet.engine.inference import predict_volume, zoom_slices
from perspective_unet.runtime.inference_settings import InferenceSettings
from perspective_unet.runtime.kernels import corner_aligned_indices, spline_zoom_matrix


@pytest.mark.parametrize(("source", "target"), [(512, 224), (37, 16), (20, 32), (7, 7), (1, 5), (9, 1)])
def test_spline_zoom_matrix_is_scipy_zoom_in_1d(source, target):
    v = np.random.default_rng(source).random(source)
    expected = scipy.ndimage.zoom(v, target / source, order=3)
    np.testing.assert_allclose(spline_zoom_matrix(source, target) @ v, expected, atol=1e-12)


@pytest.mark.parametrize(("shape", "size"), [((53, 37), (16, 24)), ((40, 56), (32, 48)), ((20, 30), (33, 17))])
def test_zoom_slices_equals_scipy_per_slice(shape, size):
    slices = torch.rand(3, 2, *shape, generator=torch.Generator().manual_seed(0))
    factors = (size[0] / shape[0], size[1] / shape[1])
    expected = np.stack([[scipy.ndimage.zoom(c.numpy(), factors, order=3) for c in s] for s in slices])
    got = zoom_slices(slices, size)
    assert tuple(got.shape) == (3, 2, *size)
    np.testing.assert_allclose(got.numpy(), expected, atol=2e-6)
    np.testing.assert_allclose(zoom_slices(slices.double(), size).numpy(), expected, atol=1e-6)


def test_zoom_slices_leaves_model_sized_slices_alone():
    slices = torch.rand(2, 1, 32, 48)
    assert zoom_slices(slices, (32, 48)) is slices


def test_bad_zoom_size_is_a_value_error():
    with pytest.raises(ValueError, match="positive"):
        spline_zoom_matrix(0, 10)


def test_torch_and_scipy_resamplers_give_the_same_labels():
    # Labels by intensity band: every resampling difference that matters shows up as a label difference.
    model = torch.nn.Conv2d(1, 4, 1).eval()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([0.0, 1.0, 2.0, 3.0]).view(4, 1, 1, 1))
        model.bias.copy_(torch.tensor([0.0, 0.1, -0.2, -0.9]))
    rng = np.random.default_rng(1)
    volume = scipy.ndimage.gaussian_filter(rng.random((5, 59, 45)), 3).astype(np.float32)
    volume = (volume - volume.min()) / (volume.max() - volume.min())
    scipy_loop = predict_volume(model, volume, (32, 48), InferenceSettings(batch_size=1, resampler="scipy"))
    batched, probabilities = predict_volume(
        model, volume, (32, 48), InferenceSettings(batch_size=4, resampler="torch"), return_probabilities=True
    )
    assert batched.shape == volume.shape and probabilities.shape == (4, *volume.shape)
    assert len(np.unique(scipy_loop)) == 4
    np.testing.assert_array_equal(batched, scipy_loop)


def test_label_zoom_back_matches_scipy_order_zero():
    for source, target in [(224, 512), (32, 59), (48, 45), (7, 19), (100, 37)]:
        expected = scipy.ndimage.zoom(np.arange(source, dtype=np.float64), target / source, order=0)
        np.testing.assert_array_equal(corner_aligned_indices(source, target), expected)


def test_scipy_order_zero_quirk_is_only_the_last_index():
    # For some sizes scipy's last output coordinate lands a rounding error beyond the last input and takes the
    # constant 0 (background); the torch path keeps the last label instead. Everything else agrees.
    for source, target in [(8, 26), (32, 61)]:
        expected = scipy.ndimage.zoom(np.arange(source, dtype=np.float64) + 1, target / source, order=0) - 1
        ours = corner_aligned_indices(source, target)
        np.testing.assert_array_equal(ours[:-1], expected[:-1])
        assert expected[-1] == -1 and ours[-1] == source - 1
