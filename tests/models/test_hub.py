"""The Hugging Face Hub's conventions: the card's metadata, loading a Hub id from the cache, uploading a folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import huggingface_hub
import pytest
import torch

from perspective_unet import InputError, create_model, from_pretrained, save_model, save_pretrained
from perspective_unet.export.folder import export_folder
from perspective_unet.models.hub import HUB_FILES, hub_folder, hub_license

PLAN = {"protocol": "paper", "patch_size": [32, 32], "intensity": {"kind": "unit"}}
DATASET = {"name": "tiny", "class_names": ["background", "a", "b"], "modality": "CT", "license": "CC-BY-4.0"}


def test_the_model_card_carries_the_hubs_metadata(tmp_path):
    model = create_model("perspective_unet_tiny", num_classes=3)
    checkpoint = save_model(model, tmp_path / "run" / "best.pt", plan=PLAN, dataset=DATASET)
    (tmp_path / "run" / "evaluation").mkdir()
    summary = {"split": "test", "num_cases": 2, "protocol": "legacy", "mean_dice": 0.8125, "mean_hd95": 3.5}
    (tmp_path / "run" / "evaluation" / "summary.json").write_text(json.dumps(summary))
    card = huggingface_hub.ModelCard((export_folder(checkpoint, tmp_path / "model") / "README.md").read_text())
    data = card.data.to_dict()
    assert data["license"] == "cc-by-4.0" and data["library_name"] == "perspective-unet"
    assert data["pipeline_tag"] == "image-segmentation" and data["datasets"] == ["tiny"]
    assert {"medical-imaging", "image-segmentation", "ct"} <= set(data["tags"]) and "dice" in data["metrics"]
    result = data["model-index"][0]["results"][0]
    assert result["metrics"][0] == {"type": "dice", "name": "mean Dice", "value": 0.8125}
    assert "1.69 M parameters" in card.text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("CC0", "cc0-1.0"),
        ("MIT license", "mit"),
        ("apache-2.0", "apache-2.0"),
        ("my own terms", "other"),
        ("", "unknown"),
    ],
)
def test_recorded_licenses_become_the_hubs_identifiers(text, expected):
    assert hub_license(text) == expected


def _fill_cache(cache, repo_id: str, folder) -> str:
    """The layout huggingface_hub's cache has after a download: a snapshot per commit, refs/main naming it."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(folder, repo / "snapshots" / commit)
    return commit


@pytest.mark.slow
def test_from_pretrained_loads_a_hub_id_offline_from_the_cache(tmp_path):
    model = create_model("perspective_unet_tiny", num_classes=3).eval()
    save_pretrained(model, tmp_path / "folder", plan=PLAN, dataset=DATASET)
    cache = tmp_path / "hub-cache"
    _fill_cache(cache, "someone/tiny-ct", tmp_path / "folder")
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.save(model(x), tmp_path / "expected.pt")
    torch.save(x, tmp_path / "x.pt")
    code = textwrap.dedent(
        f"""
        import torch
        from perspective_unet import InputError, from_pretrained
        model = from_pretrained("someone/tiny-ct")
        x, expected = torch.load({str(tmp_path / "x.pt")!r}), torch.load({str(tmp_path / "expected.pt")!r})
        with torch.no_grad():
            torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
        try:
            from_pretrained("someone/not-cached")
        except InputError as exc:
            print(exc)
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "hf-home")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    message = result.stdout.strip()
    assert "someone/not-cached is neither a local folder nor a Hugging Face Hub model" in message
    assert len(message.splitlines()) == 1


def test_a_local_folder_is_never_taken_for_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "owner").mkdir()
    save_pretrained(create_model("perspective_unet_tiny", num_classes=3), tmp_path / "owner" / "name")
    assert hub_folder("owner/name") == Path("owner/name")
    assert isinstance(from_pretrained("owner/name"), torch.nn.Module)
    with pytest.raises(InputError, match="is not a perspective-unet model config|is missing"):
        from_pretrained(tmp_path / "owner")


class RecordingApi:
    """huggingface_hub.HfApi as far as an upload goes: it records the calls instead of reaching the network."""

    calls: list = []

    def __init__(self, **options):
        RecordingApi.calls.append(("init", options))

    def create_repo(self, repo_id, **options):
        RecordingApi.calls.append(("create_repo", repo_id, options))

    def upload_folder(self, **options):
        RecordingApi.calls.append(("upload_folder", sorted(os.listdir(options["folder_path"])), options))
        return "commit"


def test_save_pretrained_pushes_the_folder_with_the_hubs_upload_api(tmp_path, monkeypatch):
    RecordingApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    model = create_model("perspective_unet_tiny", num_classes=3)
    folder = save_pretrained(
        model,
        tmp_path / "tiny-ct",
        plan=PLAN,
        dataset=DATASET,
        push_to_hub=True,
        repo_id="someone/tiny-ct",
        private=True,
        token="hf_test",
    )
    (init, options), create, upload = RecordingApi.calls
    assert options["token"] == "hf_test" and options["library_name"] == "perspective-unet"
    assert create == ("create_repo", "someone/tiny-ct", {"private": True, "exist_ok": True})
    files, upload_options = upload[1], upload[2]
    assert files == sorted(HUB_FILES) and upload_options["repo_id"] == "someone/tiny-ct"
    assert upload_options["folder_path"] == str(folder) and upload_options["allow_patterns"] == HUB_FILES
    card = huggingface_hub.ModelCard((folder / "README.md").read_text())
    assert card.data.library_name == "perspective-unet" and card.data.license == "cc-by-4.0"
