"""The compiled training path (torch.compile with an activation memory budget) computes what the eager path does."""

import pytest
import torch
import torch.nn.functional as F

from perspective_unet import create_model
from perspective_unet.engine.runtime import compile_model
from perspective_unet.models.ops import dropout, relu_dropout

pytestmark = pytest.mark.slow


def _step(model: torch.nn.Module, forward, x: torch.Tensor, target: torch.Tensor) -> tuple[float, dict]:
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(forward(x), target)
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("scsi_attention", ["official", "tokens"])
def test_compiled_training_step_matches_eager(scsi_attention):
    torch._dynamo.reset()  # no shapes remembered from other tests: this graph compiles with static shapes
    options = {
        "num_classes": 4,
        "enltb_dropout": 0.0,
        "scsi_dropout": 0.0,
        "drop_path_rate": 0.0,
        "scsi_attention": scsi_attention,
    }
    torch.manual_seed(0)
    # float64: in float32, channels-last and fused kernels reorder sums enough to move single gradients by percents.
    eager = create_model("perspective_unet_tiny", **options).double().train()
    compiled_model = create_model("perspective_unet_tiny", **options).double().train()
    compiled_model.load_state_dict(eager.state_dict())
    compiled_model.to_channels_last()
    forward = compile_model(compiled_model, activation_memory_budget=0.4)
    x = torch.randn(2, 1, 32, 48, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    target = torch.randint(0, 4, (2, 32, 48), generator=torch.Generator().manual_seed(2))
    loss_eager, grads_eager = _step(eager, eager, x, target)
    loss_compiled, grads_compiled = _step(compiled_model, forward, x, target)
    assert loss_compiled == pytest.approx(loss_eager, rel=1e-12)
    largest = max(g.abs().max().item() for g in grads_eager.values())
    for name, grad in grads_eager.items():
        torch.testing.assert_close(grads_compiled[name], grad, rtol=1e-9, atol=1e-11 * largest, msg=name)
    for name in ("running_mean", "running_var"):
        for (key, a), b in zip(eager.state_dict().items(), compiled_model.state_dict().values()):
            if key.endswith(name):
                torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_compiled_fast_dropout_is_unbiased_dropout_with_a_one_byte_mask():
    torch.manual_seed(0)
    x = torch.rand(512, 1024, requires_grad=True)

    def f(x):
        return dropout(x, 0.3, True), relu_dropout(x - 0.5, 0.3, True)

    dropped, relu_dropped = torch.compile(f)(x)
    kept = dropped != 0
    assert kept.float().mean().item() == pytest.approx(0.7, abs=0.005)
    torch.testing.assert_close(dropped[kept], x[kept] * (65536 / (65536 - round(0.3 * 65536))))
    assert dropped.mean().item() == pytest.approx(x.mean().item(), rel=0.01)
    assert (relu_dropped >= 0).all() and (relu_dropped[x <= 0.5] == 0).all()
    (dropped.sum() + relu_dropped.sum()).backward()
    grad = x.grad
    scale = 65536 / (65536 - round(0.3 * 65536))
    # Where both dropped x survives and x > 0.5 passes ReLU, both branches pass the scaled gradient.
    assert set(torch.unique(torch.round(grad / scale * 1e4) / 1e4).tolist()) <= {0.0, 1.0, 2.0}


def test_bad_memory_budget_is_a_value_error():
    with pytest.raises(ValueError, match="activation_memory_budget"):
        compile_model(torch.nn.Linear(2, 2), activation_memory_budget=0.0)
