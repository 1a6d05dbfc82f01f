"""The command line's parser: --help without PyTorch, global options at every level, defaults in every help."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
import torch

import perspective_unet
from perspective_unet.cli import build_parser, info, main
from perspective_unet.cli.options import shown_default

# Libraries that printing help or importing the package must not load: the deep-learning stack, NumPy and the readers
# of images, volumes and models.
HEAVY = ("torch", "monai", "numpy", "scipy", "nibabel", "SimpleITK", "matplotlib", "h5py", "onnx", "onnxruntime")


def _command_parsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser of the command line with the words that reach it: the top level, commands, sub-commands."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _command_parsers(child, (*path, name))


COMMANDS = [path for path, _ in _command_parsers(build_parser())]


def _run_python(code: str) -> dict:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.splitlines()[-1])


def test_the_command_tree_is_walked():
    assert () in COMMANDS and ("train",) in COMMANDS and ("prepare", "nnunet") in COMMANDS
    assert ("visualize", "features") in COMMANDS and ("experiment", "report") in COMMANDS
    assert len(COMMANDS) >= 20


def test_help_of_every_command_imports_no_heavy_library():
    code = f"""
import contextlib, io, json, sys
from perspective_unet.cli import main
printed, codes = io.StringIO(), []
for path in {COMMANDS!r}:
    with contextlib.redirect_stdout(printed):
        try:
            main([*path, "--help"])
        except SystemExit as exc:
            codes.append(exc.code)
print(json.dumps({{"codes": codes, "usage": printed.getvalue().count("usage:"),
                  "loaded": [name for name in {HEAVY!r} if name in sys.modules]}}))
"""
    report = _run_python(code)
    assert report["codes"] == [0] * len(COMMANDS)
    assert report["usage"] == len(COMMANDS)
    assert report["loaded"] == []


def test_importing_the_package_loads_torch_only_when_a_model_is_asked_for():
    code = f"""
import json, sys
import perspective_unet
before = [name for name in {HEAVY!r} if name in sys.modules]
config = perspective_unet.ModelConfig
after_config = "torch" in sys.modules
model = perspective_unet.create_model("perspective_unet_tiny", num_classes=3)
print(json.dumps({{"before": before, "after_config": after_config, "after_model": "torch" in sys.modules,
                  "type": type(model).__name__}}))
"""
    report = _run_python(code)
    assert report == {"before": [], "after_config": False, "after_model": True, "type": "PerspectiveUNet"}


def test_every_public_name_of_the_package_resolves():
    from perspective_unet import metrics
    from perspective_unet.engine.predict import predict_path
    from perspective_unet.models.registry import create_model

    for name in perspective_unet.__all__:
        assert getattr(perspective_unet, name) is not None, name
    assert set(perspective_unet.__all__) <= set(dir(perspective_unet))
    assert perspective_unet.create_model is create_model
    assert perspective_unet.predict_path is predict_path
    assert perspective_unet.metrics is metrics
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        perspective_unet.not_a_name  # noqa: B018


@pytest.mark.parametrize(
    ("argv", "verbose"),
    [
        (["train", "--data", "d"], False),
        (["-v", "train", "--data", "d"], True),
        (["train", "-v", "--data", "d"], True),
        (["train", "--data", "d", "--verbose"], True),
        (["prepare", "synapse", "-i", "raw", "-o", "out", "-v"], True),
        (["prepare", "-v", "synapse", "-i", "raw", "-o", "out"], True),
        (["-v", "prepare", "synapse", "-i", "raw", "-o", "out"], True),
        (["experiment", "run", "grid.yaml", "-o", "out", "-v"], True),
        (["visualize", "features", "--checkpoint", "c.pt", "--image", "i.nii.gz", "-o", "f.png"], False),
    ],
)
def test_verbose_is_accepted_before_and_after_the_command(argv, verbose):
    assert build_parser().parse_args(argv).verbose is verbose


@pytest.mark.parametrize("argv", [["--version"], ["train", "--version"], ["prepare", "nnunet", "--version"]])
def test_version_is_accepted_at_every_level(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"perspective-unet {perspective_unet.__version__}"


def _help(*path: str) -> str:
    parser = dict(_command_parsers(build_parser()))[path]
    return " ".join(parser.format_help().split())


@pytest.mark.parametrize(
    ("path", "shown"),
    [
        (("benchmark",), ["input size (default: 224 224)", "attention lengths (default: 1024 4096 16384 65536)"]),
        (("benchmark",), ["what to measure (default: model)", "(default: reuse)"]),
        (("predict",), ["slices per forward pass (default: 16)", "(default: torch)", "mps (default: auto)"]),
        (("evaluate",), ["which volumes (default: test)", "(default: torch)"]),
        (("prepare", "nnunet"), ["seed of the case split (default: 1234)", "(default: SPL)", "(default: 0.5 99.5)"]),
        (
            ("train",),
            [
                "epochs of training (default: the recipe's: 600 for the paper protocol, derived from the plan",
                "initial learning rate (default: the optimizer's: 0.05 for sgd, 0.002 for adamw)",
                "mixed precision on CUDA (default: on)",
                "(default: 0)",
            ],
        ),
        (("demo",), ["output folder (default: demo_out)", "model variant (default: perspective_unet_tiny)"]),
        (("visualize", "features"), ["matplotlib colormap (default: jet)", "(default: bprb)"]),
        (("plan",), ["in pixels (default: 262144)"]),
    ],
)
def test_help_shows_known_defaults(path, shown):
    text = _help(*path)
    for expected in shown:
        assert expected in text


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_help_shows_each_default_once_and_no_empty_ones(path):
    parser = dict(_command_parsers(build_parser()))[path]
    text = _help(*path)
    assert "(default: None)" not in text and "(default: False)" not in text and "(default: [])" not in text
    for action in parser._actions:
        shown = shown_default(action)
        if shown is None:
            continue
        assert action.help, f"{'/'.join(action.option_strings) or action.dest} has a default but no help"
        assert text.count(f"(default: {shown})") >= 1, action.option_strings
        # A help text that spells its default out by hand would now say it twice.
        assert "default" not in action.help.lower() or action.option_strings == ["--allocator"], action.help


def _raising(error: BaseException):
    def run(args: argparse.Namespace) -> int:
        raise error

    return run


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory"), MemoryError()])
def test_running_out_of_memory_is_one_line_and_status_2(error, monkeypatch, capsys):
    monkeypatch.setattr(info, "run", _raising(error))
    assert main(["info"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("perspective-unet info: error: out of memory")


def test_other_runtime_errors_are_not_taken_for_out_of_memory(monkeypatch):
    monkeypatch.setattr(info, "run", _raising(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        main(["info"])
