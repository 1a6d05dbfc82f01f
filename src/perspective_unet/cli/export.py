"""``perspective-unet export``: a model folder (safetensors, config, preprocessing, labels, model card) or ONNX."""

from __future__ import annotations

import argparse

from perspective_unet.cli.choices import DEFAULT_CALIBRATION_SLICES, DEFAULT_DICE_TOLERANCE, QUANTIZATION_CHOICES


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write a checkpoint as a model folder without pickle, or as ONNX checked against PyTorch",
        description="--format folder writes OUT/ with config.json (model config, hash of the weights), "
        "model.safetensors, preprocessing.json (plan, intensity normalization, orientation), labels.json (class "
        "names and colors) and README.md (a model card with the Hub's YAML metadata); any --checkpoint option takes "
        "such a folder. --format onnx writes OUT.onnx (dynamic batch, height and width; sides multiples of 16) after "
        "checking ONNX Runtime's logits against PyTorch's on two sizes and two batch sizes; the graph carries its "
        "plan, labels, version and weights' hash in its metadata (preprocessing.json and labels.json are written "
        "beside it too), so `predict --onnx OUT.onnx` runs from the file alone, without PyTorch. With --quantize "
        "int8 the graph is statically quantized by ONNX Runtime, calibrated on training slices, and written only if "
        "its mean Dice on the dataset's validation (else test) volumes stays within --dice-tolerance of the float "
        "graph's.",
    )
    parser.add_argument("checkpoint", help="a checkpoint (.pt), run folder or model folder")
    parser.add_argument("output", help="the model folder (folder) or the .onnx file (onnx)")
    parser.add_argument("--format", choices=("folder", "onnx"), default="folder", help="a model folder or an ONNX file")
    parser.add_argument("--overwrite", action="store_true", help="replace files an earlier export wrote")
    parser.add_argument(
        "--quantize", choices=QUANTIZATION_CHOICES, help="onnx: write a statically quantized graph (checked first)"
    )
    parser.add_argument(
        "--calibration-data",
        metavar="DATA",
        help="--quantize: the dataset to calibrate on (training slices) and check with (validation, else test "
        "volumes); default: the training data the checkpoint records",
    )
    parser.add_argument(
        "--calibration-slices",
        type=int,
        default=DEFAULT_CALIBRATION_SLICES,
        help="--quantize: training slices whose network inputs calibrate the quantization",
    )
    parser.add_argument(
        "--dice-tolerance",
        type=float,
        default=DEFAULT_DICE_TOLERANCE,
        help="--quantize: the largest drop of the mean Dice (0.01: one Dice point) below the float graph's accepted",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from perspective_unet.export.folder import export_folder
    from perspective_unet.export.onnx import PARITY_TOLERANCE, export_onnx

    if args.format == "folder":
        if args.quantize:
            raise ValueError("--quantize applies to --format onnx; a model folder keeps the float weights.")
        folder = export_folder(args.checkpoint, args.output, overwrite=args.overwrite)
        print(f"wrote the model folder {folder}")
        return 0
    check = None
    if args.quantize:
        from perspective_unet.export.quantize import export_quantized_onnx

        parities, check = export_quantized_onnx(
            args.checkpoint,
            args.output,
            data=args.calibration_data,
            tolerance=args.dice_tolerance,
            calibration_slices=args.calibration_slices,
            overwrite=args.overwrite,
        )
    else:
        parities = export_onnx(args.checkpoint, args.output, overwrite=args.overwrite)
    for parity in parities:
        shape = "x".join(str(s) for s in parity.shape)
        print(
            f"ONNX Runtime vs PyTorch, input {shape}: largest difference {parity.relative_difference:.2e} of the "
            f"largest logit (tolerance {PARITY_TOLERANCE:g})"
        )
    if check is not None:
        print(
            f"{check.quantization} vs float32 on {len(check.cases)} {check.split} volume(s): mean Dice "
            f"{check.quantized_dice:.4f} vs {check.float_dice:.4f} (drop {check.drop:.4f}, tolerance "
            f"{check.tolerance:g})"
        )
    print(f"wrote {args.output} with preprocessing.json and labels.json beside it")
    return 0
