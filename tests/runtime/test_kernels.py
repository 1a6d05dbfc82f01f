"""The light runtime's NumPy kernels against the PyTorch path's: resampling, the sliding window, the inferers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from monai.inferers.utils import compute_importance_map

from perspective_unet.data.resample import resample_array, resample_image, resize_matrix
from perspective_unet.engine.inferers import inferer_for
from perspective_unet.intensity import IntensitySpec
from perspective_unet.plan import Plan
from perspective_unet.runtime.inference_settings import InferenceSettings
from perspective_unet.runtime.inferers import numpy_inferer_for
from perspective_unet.runtime.kernels import mirrored_probabilities, softmax
from perspective_unet.runtime.sliding_window import gaussian_importance, sliding_window, window_starts

SIZES = [((10, 12), (5, 7)), ((50, 61), (101, 37)), ((7, 9), (7, 30)), ((101, 122), (35, 41)), ((5, 5), (1, 1))]


@pytest.mark.parametrize(("shape", "size"), SIZES)
def test_resample_array_is_pytorchs_bilinear_resampling(shape, size):
    image = np.random.default_rng(0).random((2, 3, *shape)).astype(np.float32)
    expected = resample_image(torch.from_numpy(image), size).numpy()
    np.testing.assert_allclose(resample_array(image, size), expected, atol=5e-6)
    aligned = F.interpolate(torch.from_numpy(image), size=size, mode="bilinear", align_corners=True).numpy()
    np.testing.assert_allclose(resample_array(image, size, align_corners=True), aligned, atol=1e-5)


def test_resize_matrices_keep_constants_and_refuse_empty_sizes():
    for source, target, antialias in [(17, 5, True), (5, 17, False), (9, 9, True), (3, 1, True)]:
        np.testing.assert_allclose(resize_matrix(source, target, antialias=antialias).sum(axis=1), 1.0)
    with pytest.raises(ValueError, match="positive"):
        resize_matrix(0, 4)


@pytest.mark.parametrize("window", [(32, 32), (48, 16), (7, 9)])
def test_gaussian_importance_is_monais(window):
    expected = compute_importance_map(window, mode="gaussian").numpy()
    np.testing.assert_allclose(gaussian_importance(window), expected, rtol=1e-6, atol=1e-7)


def test_window_starts_cover_the_axis_and_end_at_its_edge():
    assert window_starts(100, 32, 0.5) == [0, 16, 32, 48, 64, 68]
    assert window_starts(20, 32, 0.5) == [0] and window_starts(32, 32, 0.25) == [0]
    assert window_starts(33, 16, 0.99) == list(range(18))


@pytest.mark.parametrize(
    ("shape", "window", "overlap"),
    [((100, 70), (32, 48), 0.5), ((20, 30), (32, 32), 0.5), ((33, 100), (16, 32), 0.3), ((31, 17), (32, 16), 0.5)],
)
def test_sliding_window_is_monais(shape, window, overlap):
    weights = torch.randn(4, 3, 1, 1, generator=torch.Generator().manual_seed(1))

    def network(x):
        # Depends on the whole batch of windows, so the test also checks that both batch the same windows.
        x = torch.as_tensor(x)
        return torch.softmax(F.conv2d(x, weights) * 3 + x.mean(), 1)

    images = np.random.default_rng(0).random((3, 3, *shape)).astype(np.float32)
    expected = sliding_window_inference(
        torch.from_numpy(images), window, 5, network, overlap=overlap, mode="gaussian", cval=-0.7
    ).numpy()
    got = sliding_window(
        lambda w: network(w).numpy(), images, window, overlap=overlap, windows_per_pass=5, pad_value=-0.7
    )
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_mirrored_probabilities_average_the_four_mirrorings():
    logits = np.random.default_rng(2).normal(size=(2, 3, 5, 6)).astype(np.float32)

    def network(x):  # a network that is not mirror-symmetric: the flips must be undone
        return x[:, :3] + np.arange(6, dtype=np.float32)

    images = np.concatenate([logits, logits[:, :1]], axis=1)
    flips = [(), (-1,), (-2,), (-2, -1)]
    expected = np.mean(
        [np.flip(softmax(network(np.flip(images, f))), f) if f else softmax(network(images)) for f in flips], 0
    )
    np.testing.assert_allclose(mirrored_probabilities(network, images, tta=True), expected, atol=1e-6)
    with pytest.raises(ValueError, match="NaN or infinite"):
        mirrored_probabilities(lambda x: np.full((1, 2, 5, 6), np.nan, np.float32), images[:1])


class Bands(torch.nn.Module):
    """Classes by intensity band of the middle channel, slightly shifted by the neighbors: many class boundaries."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        middle = x[:, x.shape[1] // 2 : x.shape[1] // 2 + 1]
        context = x.mean(dim=1, keepdim=True)
        centers = torch.tensor([-1.0, -0.2, 0.5, 1.2]).view(1, 4, 1, 1)
        return -20.0 * (middle + 0.1 * context - centers) ** 2


PLANS = {
    "paper": Plan("paper", (32, 48), IntensitySpec("unit")),
    "paper_context_zscore": Plan(
        "paper", (48, 32), IntensitySpec("unit", scaling="zscore", mean=0.4, std=0.3), context_slices=1
    ),
    "spacing": Plan("spacing", (32, 32), IntensitySpec("unit", scaling="zscore_per_image"), spacing=(1.3, 0.7)),
    "spacing_context": Plan(
        "spacing", (16, 32), IntensitySpec("unit"), spacing=(0.9, 1.1), context_slices=2, overlap=0.25
    ),
}


@pytest.mark.parametrize("name", sorted(PLANS))
@pytest.mark.parametrize("tta", [False, True])
def test_numpy_inferers_give_the_pytorch_inferers_labels_and_probabilities(name, tta):
    import scipy.ndimage

    model = Bands().eval()
    settings = InferenceSettings(batch_size=3, tta=tta)
    rng = np.random.default_rng(3)
    volume = scipy.ndimage.gaussian_filter(rng.random((6, 45, 59)), 2).astype(np.float32)
    volume = (volume - volume.min()) / (volume.max() - volume.min())
    spacing = (0.8, 1.2)
    torch_labels, torch_probabilities = inferer_for(PLANS[name], settings)(
        model, volume, spacing=spacing, return_probabilities=True
    )

    def network(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(batch)).numpy()

    labels, probabilities = numpy_inferer_for(PLANS[name], settings)(
        network, volume, spacing=spacing, return_probabilities=True
    )
    assert len(np.unique(torch_labels)) >= 3, "a test whose labels are one class would prove nothing"
    np.testing.assert_array_equal(labels, torch_labels)
    np.testing.assert_allclose(probabilities.astype(np.float32), torch_probabilities.astype(np.float32), atol=2e-3)
