"""Shapes, argument checks, gradients, determinism and batch independence of the network."""

from __future__ import annotations

import itertools

import pytest
import torch

import perspective_unet
from perspective_unet import ModelConfig, create_model
from perspective_unet.models import PerspectiveUNet

TINY = "perspective_unet_tiny"


@pytest.mark.parametrize(
    ("in_channels", "num_classes", "size"),
    [(1, 9, (16, 16)), (1, 4, (32, 48)), (3, 2, (48, 32)), (1, 9, (80, 112)), (2, 14, (160, 192)), (1, 9, (224, 224))],
)
def test_output_shape_table(in_channels, num_classes, size):
    model = create_model(TINY, in_channels=in_channels, num_classes=num_classes).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, *size))
    assert out.shape == (2, num_classes, *size)
    assert torch.isfinite(out).all()


# The paper-size model takes seconds per forward pass on two CPU cores.
VARIANTS = [
    pytest.param(name, marks=pytest.mark.slow) if name == "perspective_unet" else name
    for name in perspective_unet.list_models()
]


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("size", [(224, 224), (160, 192)])
def test_every_variant_builds_and_runs(name, size):
    model = create_model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, *size))
    assert out.shape == (1, 9, *size)
    assert torch.isfinite(out).all()


def test_paper_model_has_the_papers_parameter_count():
    model = create_model("perspective_unet", num_classes=9)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == 112.66


def test_variants_scale_the_widths():
    assert create_model("perspective_unet_small").config.widths == (16, 32, 64, 128, 256)
    assert create_model(TINY).config.widths == (8, 16, 32, 64, 128)


@pytest.mark.parametrize(("height", "width"), [(225, 224), (224, 100), (8, 16), (30, 30)])
def test_bad_input_size_names_the_nearest_valid_sizes(height, width):
    model = create_model(TINY).eval()
    with pytest.raises(ValueError, match="multiples of 16") as info:
        model(torch.randn(1, 1, height, width))
    message = str(info.value)
    for side in (height, width):
        if side % 16 or side < 16:
            assert str(max(16, side // 16 * 16)) in message
            assert str(max(16, -(-side // 16) * 16)) in message


def test_size_divisor_follows_the_number_of_stages():
    model = create_model(TINY, widths=(8, 16, 32, 64)).eval()
    assert model.size_divisor == 8
    with torch.no_grad():
        assert model(torch.randn(1, 1, 24, 40)).shape == (1, 9, 24, 40)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scsi_dim": 30, "scsi_heads": 4}, "scsi_heads"),
        ({"enlsa_heads": 3}, "enlsa_heads"),
        ({"num_classes": 1}, "num_classes"),
        ({"in_channels": 0}, "in_channels"),
        ({"widths": (8, 16)}, "widths"),
        ({"enltb_depths": (1, 1)}, "enltb_depths"),
        ({"enlsa_kernel": "cosine"}, "enlsa_kernel"),
        ({"scsi_attention": "batch"}, "scsi_attention"),
        ({"drop_path_rate": 1.5}, "drop_path_rate"),
        ({"not_an_option": 1}, "not_an_option"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_model(TINY, **kwargs)


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="perspective_unet_tiny"):
        create_model("perspective_unet_huge")


def test_wrong_channel_count_is_a_clear_error():
    model = create_model(TINY, in_channels=1).eval()
    with pytest.raises(ValueError, match="1 input channel"):
        model(torch.randn(1, 3, 32, 32))


def test_gray_input_is_repeated_when_asked():
    model = create_model(TINY, in_channels=3, repeat_gray_to_rgb=True).eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), model(x.repeat(1, 3, 1, 1)))


ABLATIONS = list(itertools.product([True, False], repeat=3))


@pytest.mark.parametrize(("use_bipath", "use_enltb", "use_scsi"), ABLATIONS)
def test_every_parameter_gets_a_gradient_in_every_ablation(use_bipath, use_enltb, use_scsi):
    torch.manual_seed(0)
    model = create_model(
        TINY,
        num_classes=3,
        use_bipath=use_bipath,
        use_enltb=use_enltb,
        use_scsi=use_scsi,
        enltb_dropout=0.0,
        scsi_dropout=0.0,
        drop_path_rate=0.0,
    ).train()
    x = torch.randn(2, 1, 32, 48)
    target = torch.randint(0, 3, (2, 32, 48))
    loss = torch.nn.functional.cross_entropy(model(x), target)
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f"no gradient for {name}"
        assert torch.isfinite(param.grad).all(), f"non-finite gradient for {name}"
        assert param.grad.abs().sum() > 0, f"zero gradient for {name}"


def test_ablations_leave_out_the_modules_they_switch_off():
    model = create_model(TINY, use_bipath=False, use_enltb=False, use_scsi=False)
    names = [n for n, _ in model.named_modules()]
    assert not any("dilated_path" in n for n in names)
    assert model.encoder.transformer is None and model.encoder.integrator is None
    assert len(model.encoder.fusers) == 3  # as released: the 1x1 fusion runs in every setting
    full = create_model(TINY)
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in full.parameters())


def test_eval_mode_is_deterministic():
    model = create_model(TINY).eval()
    x = torch.randn(2, 1, 48, 64)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_training_mode_is_stochastic():
    model = create_model(TINY).train()
    x = torch.randn(2, 1, 32, 32)
    assert not torch.equal(model(x), model(x))


@pytest.mark.parametrize("attention", ["tokens", "official"])
def test_outputs_do_not_depend_on_the_rest_of_the_batch(attention):
    torch.manual_seed(0)
    model = create_model(TINY, scsi_attention=attention).eval()
    x = torch.randn(3, 1, 48, 32)
    with torch.no_grad():
        together = model(x)
        alone = torch.cat([model(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def _pixel_changes(module: torch.nn.Module, features: list[torch.Tensor], scale: int, pixel: tuple[int, int]) -> list:
    """How much each output pixel of every scale moves (largest over channels) when one input pixel, a token, moves."""
    changed = [f.clone() for f in features]
    changed[scale][..., pixel[0], pixel[1]] += 1.0
    with torch.no_grad():
        return [(a - b).abs().amax(dim=(0, 1)) for a, b in zip(module(changed), module(features))]


@pytest.mark.parametrize(("scale", "pixel"), [(0, (2, 1)), (1, (0, 1))])
def test_token_attention_mixes_tokens_but_official_mode_does_not(scale, pixel):
    from perspective_unet.models.integrator import SpatialCrossScaleIntegrator

    torch.manual_seed(0)
    scsi = {
        mode: SpatialCrossScaleIntegrator(
            (8, 16), dim=16, heads=2, depth=2, ffn_dim=32, dropout=0.0, attention=mode
        ).eval()
        for mode in ("tokens", "official")
    }
    scsi["official"].load_state_dict(scsi["tokens"].state_dict())
    features = [torch.randn(1, 8, 6, 4), torch.randn(1, 16, 3, 2)]
    for mode, module in scsi.items():
        changes = _pixel_changes(module, features, scale, pixel)
        assert changes[scale][pixel] > 1e-3, mode  # the token's own output follows it
        own = [torch.zeros_like(c, dtype=torch.bool) for c in changes]
        own[scale][pixel] = True
        others = torch.cat([c[~o] for c, o in zip(changes, own)])  # every other token of every scale
        assert others.numel() == 6 * 4 + 3 * 2 - 1
        if mode == "tokens":
            assert others.min() > 1e-6, "attention across the tokens: every output depends on every token"
        else:
            assert others.max() == 0.0, "official mode: a pixel's output depends on its own token only"


def test_model_built_from_config_object_equals_registry_config():
    config = perspective_unet.models.get_model_config(TINY, num_classes=5)
    assert PerspectiveUNet(config).config == create_model(TINY, num_classes=5).config
    assert ModelConfig.from_dict(config.to_dict()) == config


def test_released_attention_mixes_the_batch_in_training_and_evaluation():
    from perspective_unet.models.integrator import SpatialCrossScaleIntegrator

    torch.manual_seed(0)
    scsi = {
        mode: SpatialCrossScaleIntegrator((8, 16), dim=16, heads=2, depth=2, ffn_dim=32, dropout=0.0, attention=mode)
        for mode in ("released", "official")
    }
    scsi["official"].load_state_dict(scsi["released"].state_dict())
    first = [torch.randn(1, 8, 6, 4), torch.randn(1, 16, 3, 2)]
    others = [[torch.randn(2, 8, 6, 4), torch.randn(2, 16, 3, 2)] for _ in range(2)]
    for training in (True, False):  # the integrator has no BatchNorm: only attention can mix samples
        outputs = {}
        for mode, module in scsi.items():
            module.train(training)
            with torch.no_grad():
                outputs[mode] = [module([torch.cat([f, o]) for f, o in zip(first, other)])[0][:1] for other in others]
        assert not torch.allclose(*outputs["released"], atol=1e-4), training  # sample 0 depends on its companions
        torch.testing.assert_close(*outputs["official"])
    assert create_model(TINY, scsi_attention="released").batch_dependent


def test_released_attention_equals_the_official_mode_at_batch_size_one():
    torch.manual_seed(0)
    released = create_model(TINY, scsi_attention="released").eval()
    official = create_model(TINY, scsi_attention="official").eval()
    official.load_state_dict(released.state_dict())
    x = torch.randn(1, 1, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(released(x), official(x), atol=1e-5, rtol=1e-5)
    assert not official.batch_dependent


def test_released_attention_is_multihead_attention_across_the_batch():
    from perspective_unet.models.integrator import CrossScaleAttention

    torch.manual_seed(0)
    attention = CrossScaleAttention(16, 4, mode="released").eval()
    reference = torch.nn.MultiheadAttention(16, 4)  # sequence-first, fed (B, N, dim) as the release feeds it
    with torch.no_grad():
        reference.in_proj_weight.copy_(attention.qkv.weight)
        reference.in_proj_bias.copy_(attention.qkv.bias)
        reference.out_proj.weight.copy_(attention.out.weight)
        reference.out_proj.bias.copy_(attention.out.bias)
        x = torch.randn(5, 7, 16)
        torch.testing.assert_close(attention(x), reference(x, x, x, need_weights=False)[0], atol=1e-5, rtol=1e-5)


def test_inference_runs_a_batch_dependent_model_one_slice_at_a_time():
    from perspective_unet.engine.inference import predict_slices
    from perspective_unet.runtime.inference_settings import InferenceSettings

    torch.manual_seed(0)
    model = create_model(TINY, num_classes=3, scsi_attention="released").eval()
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        alone = torch.cat([torch.softmax(model(x[i : i + 1]), 1) for i in range(3)])
    torch.testing.assert_close(
        predict_slices(model, x, InferenceSettings(precision="fp32")), alone, atol=1e-6, rtol=1e-5
    )
