"""Checkpoints of the authors' released implementation load and give its logits (fixture: fixtures/official_compat)."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

import perspective_unet
from perspective_unet import InputError, load_model, load_official_checkpoint
from perspective_unet.models import convert_official_checkpoint

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "official_compat"

# Tests marked slow build the paper-size model (112.66 M parameters), most of them to run it at 224 x 224.


def _released_state_dict() -> dict[str, torch.Tensor]:
    """The fixture's synthetic weights, regenerated from the recipe in its README."""
    shapes = json.loads((FIXTURE / "official_state_dict_9classes.json").read_text())
    bn_stats = np.load(FIXTURE / "official_bn_stats.npz")
    state = {}
    for key, shape in shapes.items():
        g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "num_batches_tracked":
            value = torch.tensor(0)
        elif leaf in ("running_mean", "running_var"):
            value = torch.from_numpy(bn_stats[key])
        elif leaf == "projection_matrix":
            value = torch.randn(shape, generator=g)
        elif len(shape) == 1:
            noise = torch.randn(shape, generator=g)
            value = 1 + 0.1 * noise if leaf.endswith("weight") else 0.05 * noise
        else:
            gain = 2.0 if len(shape) == 4 else 1.0
            value = torch.randn(shape, generator=g) * math.sqrt(gain / math.prod(shape[1:]))
        state[key] = value
    return state


@pytest.fixture(scope="module")
def released_state() -> dict[str, torch.Tensor]:
    state = _released_state_dict()
    assert state["encoder.Encoder1.layers.0.resblock.0.weight"].flatten()[:3].tolist() == pytest.approx(
        [-0.4852, -0.6778, 1.5948], abs=1e-4
    )
    return state


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    with np.load(FIXTURE / "expected_logits.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def released_model(released_state):
    return load_official_checkpoint(released_state)


def _inputs(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def _assert_matches(logits: torch.Tensor, reference: np.ndarray) -> None:
    reference = torch.from_numpy(reference)
    assert logits.shape == reference.shape
    assert (logits - reference).abs().max() <= 1e-4 * reference.abs().max()


@pytest.mark.slow
def test_one_channel_input_matches_the_release(released_model, expected):
    x1 = _inputs((1, 1, 224, 224), 1234)
    assert x1.flatten()[:3].tolist() == pytest.approx([0.0290, 0.4019, 0.2598], abs=1e-4)
    with torch.no_grad():
        _assert_matches(released_model(x1), expected["x1_logits"])


@pytest.mark.slow
def test_three_channel_batch_matches_the_release_per_sample(released_model, expected):
    with torch.no_grad():
        _assert_matches(released_model(_inputs((2, 3, 224, 224), 4321)), expected["x3_logits"])


@pytest.mark.slow
def test_loaded_model_is_in_eval_mode_with_the_release_settings(released_model):
    assert not released_model.training
    config = released_model.config
    assert (config.in_channels, config.num_classes, config.scsi_attention) == (3, 9, "official")
    assert round(sum(p.numel() for p in released_model.parameters()) / 1e6, 2) == 112.66


@pytest.mark.slow
def test_loads_from_a_pth_file_with_a_data_parallel_prefix(released_state, released_model, tmp_path):
    path = tmp_path / "epoch_599.pth"
    torch.save({f"module.{k}": v for k, v in released_state.items()}, path)
    model = load_official_checkpoint(path)
    for (name, a), b in zip(model.state_dict().items(), released_model.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.slow
def test_class_count_comes_from_the_head(released_state):
    state = dict(released_state)
    state["segmentation_head.0.weight"] = torch.randn(4, 64, 3, 3)
    state["segmentation_head.0.bias"] = torch.randn(4)
    assert load_official_checkpoint(state).config.num_classes == 4
    with pytest.raises(InputError, match="mis-shaped"):
        load_official_checkpoint(state, num_classes=9)


@pytest.mark.slow
def test_bad_keys_are_listed_in_one_error(released_state):
    state = dict(released_state)
    del state["decoder.blocks.0.conv1.conv.weight"]
    state["encoder.extra.weight"] = torch.zeros(3)
    state["encoder.fuser.0.bias"] = torch.zeros(7)
    with pytest.raises(InputError) as info:
        load_official_checkpoint(state)
    message = str(info.value)
    assert "1 missing: decoder.blocks.0.conv1.conv.weight" in message
    assert "1 unexpected: encoder.extra.weight" in message
    assert "1 mis-shaped: encoder.fusers.0.bias" in message


def test_corrupt_or_missing_file_is_a_clear_error(tmp_path):
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="broken.pth"):
        load_official_checkpoint(broken)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_official_checkpoint(tmp_path / "missing.pth")


@pytest.mark.slow
def test_no_bipath_checkpoint_drops_the_unused_dilated_path(released_state):
    model = load_official_checkpoint(released_state, use_bipath=False)
    assert not any("dilated_path" in k for k in model.state_dict())


@pytest.mark.slow
def test_converted_checkpoint_rebuilds_from_the_file_alone(released_state, released_model, tmp_path):
    path = convert_official_checkpoint(released_state, tmp_path / "converted.pt")
    model = load_model(path)
    x = _inputs((1, 1, 224, 224), 7)
    with torch.no_grad():
        assert torch.equal(model(x), released_model(x))
    assert isinstance(model, perspective_unet.PerspectiveUNet)


@pytest.mark.slow
def test_released_weights_with_token_attention_take_the_onednn_route_at_the_same_logits(released_state, monkeypatch):
    """The released weights give logits of order one, so this checks the inference route of the paper's token
    attention (``models.ops.onednn_attention``) where a random-initialized model's tiny logits could
    hide a difference."""
    import importlib

    from perspective_unet.models.integrator import CrossScaleAttention
    from perspective_unet.models.ops import onednn_linear
    from perspective_unet.models.ops._torch_private import HAS_ONEDNN_MATMUL

    if not HAS_ONEDNN_MATMUL:
        pytest.skip("PyTorch built without oneDNN")
    kernels = importlib.import_module("perspective_unet.models.ops.attention_kernels")
    blocks = []
    original = kernels._onednn_blocks

    def spy(*args):
        blocks.append(args[-1])
        return original(*args)

    monkeypatch.setattr(kernels, "_onednn_blocks", spy)
    model = load_official_checkpoint(released_state)
    for module in model.modules():
        if isinstance(module, CrossScaleAttention):
            module.mode = "tokens"
    x = _inputs((1, 1, 224, 224), 1234)
    with torch.no_grad():
        routed = model(x)
        assert len(blocks) == model.config.scsi_depth, "every SCSI layer took the oneDNN route"
        with onednn_linear("off"):
            plain = model(x)
    assert len(blocks) == model.config.scsi_depth
    assert plain.abs().max() > 1.0
    assert (routed - plain).abs().max() <= 1e-4 * plain.abs().max()


ABLATIONS = FIXTURE / "ablations"
SETTINGS = [(b, e, s) for b in (1, 0) for e in (1, 0) for s in (1, 0)]


def _ablation_state_dict(bipath: int, enltb: int, scsi: int) -> dict[str, torch.Tensor]:
    """The ablation fixture's weights: the parent recipe, BatchNorm statistics from its file where the key and shape
    exist there, else the recipe's own (``1 + 0.5 * rand`` / ``0.1 * randn`` from the key's generator)."""
    shapes = json.loads((ABLATIONS / f"bipath{bipath}_enltb{enltb}_scsi{scsi}_state_dict.json").read_text())
    bn_stats = np.load(FIXTURE / "official_bn_stats.npz")
    state = {}
    for key, shape in shapes.items():
        g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        leaf = key.rsplit(".", 1)[-1]
        if leaf in ("running_mean", "running_var") and not (key in bn_stats and list(bn_stats[key].shape) == shape):
            state[key] = (
                1 + 0.5 * torch.rand(shape, generator=g)
                if leaf == "running_var"
                else (0.1 * torch.randn(shape, generator=g))
            )
        elif leaf in ("running_mean", "running_var"):
            state[key] = torch.from_numpy(bn_stats[key])
        elif leaf == "num_batches_tracked":
            state[key] = torch.tensor(0)
        elif leaf == "projection_matrix":
            state[key] = torch.randn(shape, generator=g)
        elif len(shape) == 1:
            noise = torch.randn(shape, generator=g)
            state[key] = 1 + 0.1 * noise if leaf.endswith("weight") else 0.05 * noise
        else:
            gain = 2.0 if len(shape) == 4 else 1.0
            state[key] = torch.randn(shape, generator=g) * math.sqrt(gain / math.prod(shape[1:]))
    return state


@pytest.mark.slow
@pytest.mark.parametrize("bipath, enltb, scsi", SETTINGS)
def test_every_released_ablation_setting_loads_and_matches(bipath, enltb, scsi):
    name = f"bipath{bipath}_enltb{enltb}_scsi{scsi}"
    model = load_official_checkpoint(
        _ablation_state_dict(bipath, enltb, scsi), use_bipath=bool(bipath), use_enltb=bool(enltb), use_scsi=bool(scsi)
    )
    with np.load(ABLATIONS / "ablation_logits_every7.npz") as data:
        reference, largest = torch.from_numpy(data[name]), float(data[f"{name}_max_abs"])
    with torch.no_grad():
        logits = model(_inputs((1, 1, 224, 224), 1234))[..., ::7, ::7]
    assert (logits - reference).abs().max() <= 1e-4 * largest


@pytest.mark.slow
def test_an_ablation_loaded_with_the_wrong_switches_names_the_switch():
    with pytest.raises(InputError, match="pass use_scsi=False"):
        load_official_checkpoint(_ablation_state_dict(1, 1, 0))
    with pytest.raises(InputError, match="pass use_enltb=True"):
        load_official_checkpoint(_ablation_state_dict(1, 1, 1), use_enltb=False)


@pytest.mark.slow
def test_config_overrides_reach_the_loaded_model(released_state):
    model = load_official_checkpoint(released_state, scsi_attention="released", scsi_dropout=0.0, drop_path_rate=0.0)
    assert (model.config.scsi_attention, model.config.scsi_dropout, model.config.drop_path_rate) == ("released", 0, 0)
    assert not model.training
    with pytest.raises(ValueError, match="widths"):
        load_official_checkpoint(released_state, widths=(8, 16))
