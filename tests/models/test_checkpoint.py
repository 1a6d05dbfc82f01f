"""The project's own checkpoint: weights and config in one file."""

from __future__ import annotations

import pytest
import torch

from perspective_unet import InputError, create_model, load_model, save_model


def test_save_load_gives_equal_outputs(tmp_path):
    torch.manual_seed(0)
    model = create_model("perspective_unet_tiny", num_classes=4, enlsa_heads=2, scsi_depth=1, use_bipath=False).eval()
    path = save_model(model, tmp_path / "sub" / "model.pt", epoch=3)
    restored = load_model(path)
    assert restored.config == model.config
    assert not restored.training
    x = torch.randn(2, 1, 32, 64)
    with torch.no_grad():
        assert torch.equal(model(x), restored(x))
    # The random projection is part of the weights, so it survives the round trip.
    assert torch.equal(
        model.encoder.transformer.stages[0][0].attn.projection,
        restored.encoder.transformer.stages[0][0].attn.projection,
    )
    assert torch.load(path, weights_only=True)["epoch"] == 3
    assert not list(path.parent.glob("*.tmp"))


def test_loading_a_foreign_file_says_what_to_do(tmp_path):
    path = tmp_path / "raw_state.pth"
    torch.save(create_model("perspective_unet_tiny").state_dict(), path)
    with pytest.raises(InputError, match="load_official_checkpoint"):
        load_model(path)


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = save_model(create_model("perspective_unet_tiny"), tmp_path / "model.pt")
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(InputError, match="model.pt"):
        load_model(path)


def test_a_model_config_of_an_earlier_version_with_an_empty_extra_entry_still_loads():
    from perspective_unet import ModelConfig

    data = ModelConfig().to_dict()
    assert "extra" not in data
    assert ModelConfig.from_dict({**data, "extra": {}}) == ModelConfig()
    import pytest

    with pytest.raises(ValueError, match="extra"):
        ModelConfig.from_dict({**data, "extra": {"note": "x"}})
