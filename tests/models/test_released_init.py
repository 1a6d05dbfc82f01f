"""The released initialization of SCSI's attention (``scsi_init="released"``), against the initial weights recorded
from the released code (fixtures/released_outputs, see its README)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from perspective_unet.config import ModelConfig
from perspective_unet.models.integrator import CrossScaleAttention, IntegratorLayer
from perspective_unet.models.official import convert_official_state_dict, official_model_config
from perspective_unet.models.perspective_unet import PerspectiveUNet

RECORDED = Path(__file__).resolve().parents[1] / "fixtures" / "released_outputs"

# The released layer's names for this project's.
LAYER_KEYS = {
    "self_attn.in_proj_weight": "attn.qkv.weight",
    "self_attn.in_proj_bias": "attn.qkv.bias",
    "self_attn.out_proj.weight": "attn.out.weight",
    "self_attn.out_proj.bias": "attn.out.bias",
    "linear1.weight": "fc1.weight",
    "linear1.bias": "fc1.bias",
    "linear2.weight": "fc2.weight",
    "linear2.bias": "fc2.bias",
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
}


def test_released_init_gives_the_recorded_layer_from_the_same_seed() -> None:
    recorded = np.load(RECORDED / "scsi_layer_init.npz")
    assert set(recorded.files) == set(LAYER_KEYS)
    torch.manual_seed(0)
    state = IntegratorLayer(32, 4, 64, init="released").state_dict()
    for released, ours in LAYER_KEYS.items():
        np.testing.assert_array_equal(state[ours].numpy(), recorded[released], err_msg=released)
    torch.manual_seed(0)
    default = IntegratorLayer(32, 4, 64).state_dict()
    assert default["attn.qkv.bias"].abs().min() > 0  # nn.Linear's biases: the project's default is unchanged
    assert not torch.equal(default["attn.qkv.weight"], state["attn.qkv.weight"])


def test_released_init_draws_like_multihead_attention_at_any_size() -> None:
    attention = CrossScaleAttention(48, 6, init="released")
    torch.manual_seed(5)
    attention.reset_parameters()
    torch.manual_seed(5)
    reference = torch.nn.MultiheadAttention(48, 6)
    assert torch.equal(attention.qkv.weight, reference.in_proj_weight)
    assert torch.equal(attention.qkv.bias, reference.in_proj_bias)
    assert torch.equal(attention.out.weight, reference.out_proj.weight)
    assert torch.equal(attention.out.bias, reference.out_proj.bias)
    bound = (6 / (48 + 3 * 48)) ** 0.5  # xavier-uniform over the stacked (3 dim, dim) matrix
    assert 0.95 * bound < attention.qkv.weight.abs().max() <= bound


def test_scsi_init_is_a_checked_model_option() -> None:
    assert ModelConfig().scsi_init == "linear"
    assert ModelConfig.from_dict({**ModelConfig().to_dict(), "scsi_init": "released"}).scsi_init == "released"
    with pytest.raises(ValueError, match="scsi_init"):
        ModelConfig(scsi_init="xavier")
    with pytest.raises(ValueError, match="init"):
        CrossScaleAttention(8, 2, init="xavier")


@pytest.mark.slow
def test_the_whole_released_network_starts_from_the_recorded_weights() -> None:
    recorded = json.loads((RECORDED / "initial_weights_seed1234.json").read_text())
    tensors = recorded["tensors"]
    names = convert_official_state_dict({key: torch.zeros(entry["shape"]) for key, entry in tensors.items()})
    torch.manual_seed(recorded["seed"])
    model = PerspectiveUNet(official_model_config(recorded["num_classes"], scsi_init="released"))
    state = model.state_dict()
    assert len(state) == len(tensors) == 435
    for (released, entry), ours in zip(tensors.items(), names):
        flat = state[ours].detach().double().flatten()
        assert flat.numel() == int(np.prod(entry["shape"])), released
        values = [*(float(v) for v in flat[:3]), float(flat[-1]), float(flat.sum())]
        expected = [*entry["head"], entry["last"], entry["sum"]]
        if released.endswith("projection_matrix"):
            # ENLSA's projection comes from QR decompositions of the drawn matrices, whose last bits depend on
            # LAPACK's threads; every other tensor is drawn as it is.
            assert values == pytest.approx(expected, rel=1e-5, abs=1e-6 * max(1.0, entry["sum_abs"])), released
        else:
            assert values[:-1] == expected[:-1], released
            assert values[-1] == pytest.approx(expected[-1], rel=0, abs=1e-9 * max(1.0, entry["sum_abs"])), released
