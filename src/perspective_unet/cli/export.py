"""``perspective-unet export``: a model folder (safetensors, config, preprocessing, labels, model card) or ONNX."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write a checkpoint as a model folder without pickle, or as ONNX checked against PyTorch",
        description="--format folder writes OUT/ with config.json (model config, hash of the weights), "
        "model.safetensors, preprocessing.json (plan, intensity normalization, orientation), labels.json (class "
        "names and colors) and README.md (a model card); any --checkpoint option takes such a folder. --format onnx "
        "writes OUT.onnx (dynamic batch, height and width; sides multiples of 16) with preprocessing.json and "
        "labels.json beside it, after checking ONNX Runtime's logits against PyTorch's on two sizes and two batch "
        "sizes; `predict --onnx OUT.onnx` then runs without PyTorch's model.",
    )
    parser.add_argument("checkpoint", help="a checkpoint (.pt), run folder or model folder")
    parser.add_argument("output", help="the model folder (folder) or the .onnx file (onnx)")
    parser.add_argument("--format", choices=("folder", "onnx"), default="folder", help="a model folder or an ONNX file")
    parser.add_argument("--overwrite", action="store_true", help="replace files an earlier export wrote")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from perspective_unet.export.folder import export_folder
    from perspective_unet.export.onnx import PARITY_TOLERANCE, export_onnx

    if args.format == "folder":
        folder = export_folder(args.checkpoint, args.output, overwrite=args.overwrite)
        print(f"wrote the model folder {folder}")
        return 0
    parities = export_onnx(args.checkpoint, args.output, overwrite=args.overwrite)
    for parity in parities:
        shape = "x".join(str(s) for s in parity.shape)
        print(
            f"ONNX Runtime vs PyTorch, input {shape}: largest difference {parity.relative_difference:.2e} of the "
            f"largest logit (tolerance {PARITY_TOLERANCE:g})"
        )
    print(f"wrote {args.output} with preprocessing.json and labels.json beside it")
    return 0
