"""The faster paths compute what the plain float32 path computes: folded BatchNorm, channels-last, fast dropout in
the model, block-wise ENLSA, activation checkpointing, batched volume prediction; and the benchmark functions return
sane results. No timing is asserted here: speed lives in `perspective-unet benchmark`. The CPU backends on their own
(fast dropout, the attention backends, the oneDNN routes) are tested in tests/models/test_ops_*.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import perspective_unet.bench as bench
from perspective_unet import ModelConfig, create_model
from perspective_unet.cli import main
from perspective_unet.engine.inference import predict_volume
from perspective_unet.models.attention import (
    gaussian_orthogonal_random_matrix,
    kernel_attention,
    linear_attention,
    random_feature_map,
)
from perspective_unet.runtime.inference_settings import InferenceSettings

TINY = "perspective_unet_tiny"


def _randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(0.2 * torch.randn(n, generator=g))
            module.running_var.copy_(0.5 + torch.rand(n, generator=g))
            module.weight.data.copy_(0.5 + torch.rand(n, generator=g))
            module.bias.data.copy_(0.1 * torch.randn(n, generator=g))


def _assert_close_to_largest_logit(out: torch.Tensor, reference: torch.Tensor, bound: float = 1e-4) -> None:
    assert out.shape == reference.shape
    assert (out - reference).abs().max() <= bound * reference.abs().max()


@pytest.mark.parametrize("attention", ["tokens", "official"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_model_matches_plain_path(attention, channels_last):
    torch.manual_seed(0)
    model = create_model(TINY, scsi_attention=attention).eval()
    _randomize_batchnorm(model)
    fused = model.fuse_for_inference(channels_last=channels_last)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()), "the original must stay untouched"
    x = torch.randn(2, 1, 48, 64)
    with torch.no_grad():
        _assert_close_to_largest_logit(fused(x), model(x), bound=1e-6)


def test_inplace_fusion_and_channels_last_switch():
    torch.manual_seed(0)
    model = create_model(TINY).eval()
    _randomize_batchnorm(model)
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        reference = model(x)
        model.to_channels_last()
        assert model.channels_last
        _assert_close_to_largest_logit(model(x), reference, bound=1e-6)
        model.to_channels_last(False)
        same = model.fuse_for_inference(channels_last=False, inplace=True)
        assert same is model
        _assert_close_to_largest_logit(model(x), reference, bound=1e-6)


def test_fast_dropout_is_identity_in_eval_and_keeps_outputs():
    torch.manual_seed(0)
    fast = create_model(TINY).eval()
    slow = create_model(TINY, fast_dropout=False).eval()
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(fast(x), slow(x))


@pytest.mark.parametrize("kernel", ["softmax", "relu"])
def test_blockwise_enlsa_equals_one_block(kernel):
    torch.manual_seed(0)
    q, k = (F.normalize(torch.randn(2, 1, 300, 16, dtype=torch.float64), dim=-1) for _ in range(2))
    v = torch.randn(2, 1, 300, 16, dtype=torch.float64)
    w = gaussian_orthogonal_random_matrix(16, 16, dtype=torch.float64)
    whole = linear_attention(random_feature_map(q, w, kernel), random_feature_map(k, w, kernel), v)
    assert torch.equal(kernel_attention(q, k, v, w, kernel, chunk_size=300), whole)
    torch.testing.assert_close(kernel_attention(q, k, v, w, kernel, chunk_size=64), whole, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fast_dropout", [True, False])
def test_gradient_checkpointing_gives_the_same_outputs_and_gradients(fast_dropout):
    torch.manual_seed(0)
    model = create_model(TINY, num_classes=3, fast_dropout=fast_dropout).double().train()
    x = torch.randn(2, 1, 32, 32, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 32, 32))

    initial_buffers = {n: b.clone() for n, b in model.named_buffers()}

    def run() -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        for name, buffer in model.named_buffers():
            buffer.copy_(initial_buffers[name])
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        out = model(x)
        F.cross_entropy(out, target).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        return out.detach(), grads, {n: b.clone() for n, b in model.named_buffers()}

    out_plain, grads_plain, buffers_plain = run()
    model.set_gradient_checkpointing(True)
    assert model.config.gradient_checkpointing == ("cnn", "enltb", "scsi")
    out_ckpt, grads_ckpt, buffers_ckpt = run()
    torch.testing.assert_close(out_ckpt, out_plain, rtol=1e-12, atol=1e-12)
    for name, grad in grads_plain.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-10, atol=1e-12, msg=name)
    # BatchNorm statistics move once per step, also when the CNN stages are recomputed.
    for name, buffer in buffers_plain.items():
        torch.testing.assert_close(buffers_ckpt[name], buffer, rtol=1e-12, atol=1e-12, msg=name)


def test_gradient_checkpointing_saves_memory():
    model = create_model(TINY).train()
    x = torch.randn(2, 1, 64, 64)

    def saved_elements() -> int:
        total = [0]

        def pack(t: torch.Tensor) -> torch.Tensor:
            total[0] += t.numel()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x)
        return total[0]

    before = saved_elements()
    model.set_gradient_checkpointing(["scsi", "enltb"])
    assert saved_elements() < before


def test_checkpointing_option_validation():
    with pytest.raises(ValueError, match="gradient_checkpointing"):
        ModelConfig(gradient_checkpointing=("decoder",))
    with pytest.raises(ValueError, match="enlsa_redraw_interval"):
        ModelConfig(enlsa_redraw_interval=10, gradient_checkpointing=("enltb",))
    config = ModelConfig(gradient_checkpointing="scsi")
    assert config.gradient_checkpointing == ("scsi",)
    assert ModelConfig.from_dict(config.to_dict()) == config
    model = create_model(TINY, gradient_checkpointing=("scsi",))
    assert model.encoder.integrator.gradient_checkpointing
    assert not model.encoder.transformer.stages[0].gradient_checkpointing
    model.set_gradient_checkpointing(False)
    assert not model.encoder.integrator.gradient_checkpointing


def test_checkpointing_keeps_state_dict_keys():
    plain = create_model(TINY)
    other = create_model(TINY, gradient_checkpointing=("scsi", "enltb"), fast_dropout=False)
    assert list(plain.state_dict()) == list(other.state_dict())


def test_batched_volume_prediction_equals_slice_by_slice():
    torch.manual_seed(0)
    model = create_model(TINY, num_classes=4).eval()
    _randomize_batchnorm(model)
    volume = bench.synthetic_ct_volume(7, 40, 56)
    one_by_one = predict_volume(model, volume, (32, 48), InferenceSettings(batch_size=1))
    batched = predict_volume(model, volume, (32, 48), InferenceSettings(batch_size=5))
    fused = predict_volume(model.fuse_for_inference(), volume, (32, 48), InferenceSettings(batch_size=7))
    np.testing.assert_array_equal(one_by_one, batched)
    assert (fused == one_by_one).mean() > 0.999  # equal up to argmax ties from float rounding


def test_benchmark_functions_return_sane_results():
    common = {"img_size": (32, 32), "runs": 1, "warmup": 0}
    inference = bench.measure_inference(TINY, settings=bench.optimized_settings(), **common)
    assert inference.mode == "inference" and inference.timing.median_s > 0
    assert inference.flops_per_call > 0 and inference.parameters > 0 and inference.peak_memory_mb > 0
    train = bench.measure_train_step(TINY, batch_size=2, **common)
    assert train.items == 2 and np.isfinite(train.extra["losses"]).all()
    volume = bench.measure_volume(TINY, volume_shape=(3, 40, 40), batch_size=2, **common)
    assert volume.items == 3 and volume.extra["resampler"] == "scipy"
    report = {"results": [r.to_dict() for r in (inference, train, volume)], "matmul_gflops": 100.0}
    table = bench.comparison_table(report)
    assert "inference" in table and "volume" in table
    fidelity = bench.output_fidelity(TINY, img_size=(32, 32))
    assert fidelity["relative"] < 1e-4 and fidelity["label_agreement"] > 0.99
    assert {"bi-path CNN encoder", "SCSI integrator", "decoder", "head"} <= set(fidelity["parts"])
    assert all(0 <= value < 1e-4 for value in fidelity["parts"].values())
    point = bench.measure_attention_point("enlsa", 256, dim=16, runs=1, warmup=0)
    assert point.tokens == 256 and point.timing.median_s > 0
    profile = bench.profile_path(TINY, img_size=(32, 32))
    assert {r["name"] for r in profile["parts"]} >= {"bi-path CNN encoder", "decoder"}
    assert bench.matmul_gflops(size=128, runs=1) > 0
    assert bench.time_function(lambda: None, runs=3, warmup=0).runs_s.__len__() == 3
    with pytest.raises(ValueError):
        bench.time_function(lambda: None, runs=0)


def test_isolated_measurement_and_cli(tmp_path):
    result = bench.run_isolated("measure_inference", {"model_name": TINY, "img_size": [32, 32], "runs": 1, "warmup": 0})
    assert result["mode"] == "inference" and result["memory_kind"] == "cpu_rss"
    out = tmp_path / "report.json"
    md = tmp_path / "report.md"
    status = main(
        [
            "benchmark",
            "--model",
            TINY,
            "--img-size",
            "32",
            "32",
            "--mode",
            "inference",
            "--runs",
            "1",
            "--warmup",
            "0",
            "--in-process",
            "--no-fidelity",
            "--json",
            str(out),
            "--markdown",
            str(md),
        ]
    )
    assert status == 0
    report = json.loads(out.read_text())
    assert {r["path"] for r in report["results"]} == {"baseline", "optimized"}
    assert "| mode" in md.read_text()
