"""``perspective-unet predict``: label maps of NIfTI / DICOM / PNG images on the images' own voxel grids."""

from __future__ import annotations

import argparse

from perspective_unet.cli.choices import OUTPUT_FORMAT_CHOICES, RESAMPLER_CHOICES
from perspective_unet.cli.options import add_checkpoints, add_intensity_override, inference_settings
from perspective_unet.config.checks import PRECISIONS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="segment NIfTI files, DICOM series or PNG/JPG pictures with a checkpoint",
        description="Segment each input with a checkpoint: the volume is reoriented to the training orientation, "
        "normalized as the training data were, predicted slice by slice as the checkpoint's plan says (paper "
        "protocol: each slice zoomed to the training size; spacing protocol: resampled to the plan's pixel spacing, "
        "a Gaussian-weighted sliding window, probabilities resampled back) and written back as a uint8 label map with "
        "the input's shape, affine and header. Output names keep the input's name without nnU-Net's '_0000' "
        "channel suffix (case_0000.nii.gz -> case.nii.gz); a DICOM folder ct/ gives ct.nii.gz; pictures give a PNG "
        "of class ids. A model of several input channels reads <case>_0000, <case>_0001, ... together (a folder is "
        "grouped by case; one file given brings its siblings). Inputs that do not fit the model (a picture into a CT "
        "or MR model, a CT into an MR model) are refused unless --allow-modality-mismatch. --output-format dicom-seg "
        "writes a DICOM Segmentation (ct.dcm) that references the DICOM series it was predicted from. Existing "
        "outputs are never replaced without --overwrite.",
    )
    model = parser.add_mutually_exclusive_group(required=True)
    add_checkpoints(model, required=False)
    model.add_argument(
        "--onnx",
        metavar="MODEL_ONNX",
        help="run this graph (from `export --format onnx`; its plan and classes are in its metadata) in ONNX Runtime "
        "with NumPy instead of PyTorch: works in a `pip install perspective-unet[runtime]` environment without "
        "PyTorch",
    )
    parser.add_argument(
        "-i", "--input", required=True, nargs="+", help="image file(s), DICOM series folder(s), or a folder of them"
    )
    parser.add_argument(
        "-o", "--output", required=True, help="output folder, or a file name (.nii.gz, .png, ...) for a single input"
    )
    parser.add_argument("--tta", action="store_true", help="average the probabilities over flips")
    parser.add_argument(
        "--save-probabilities",
        action="store_true",
        help="also write <name>_probabilities.nii.gz (float, one channel per class; .npz for pictures)",
    )
    parser.add_argument(
        "--output-format",
        choices=OUTPUT_FORMAT_CHOICES,
        default="auto",
        help="auto: the input's format (NIfTI for DICOM series); dicom-seg: a DICOM Segmentation object per DICOM "
        "series, one segment per class, on the series' geometry (needs highdicom: pip install "
        "'perspective-unet[dicom]')",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--batch-size", type=int, default=16, help="slices per forward pass")
    parser.add_argument("--device", default="auto", help="PyTorch's device: auto, cpu, cuda, cuda:N or mps")
    parser.add_argument(
        "--providers",
        default="auto",
        metavar="P[,P...]",
        help="with --onnx: ONNX Runtime's execution providers in order (cpu, cuda, tensorrt, openvino, dnnl, rocm, "
        "coreml, directml); auto takes TensorRT and CUDA where installed, then the CPU",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="PyTorch only: auto takes bfloat16 where the processor computes it natively (AMX or AVX-512 BF16; a GPU "
        "with bfloat16), else float32; bf16 and fp32 force one (docs/performance.md: the check of labels and Dice)",
    )
    add_intensity_override(
        parser,
        window_help="CT window in HU, for checkpoints that do not record their normalization",
        mr_help="per-volume 0.5/99.5 percentile normalization (MR), overriding the checkpoint's",
    )
    parser.add_argument(
        "--orientation", help="canonical orientation code (e.g. SPL, or 'stored'); default: the training data's"
    )
    parser.add_argument(
        "--allow-modality-mismatch",
        action="store_true",
        help="segment inputs that do not fit the model (a picture into a CT or MR model, a CT into an MR or picture "
        "model) instead of refusing them",
    )
    parser.add_argument(
        "--img-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="slice size (paper protocol) or sliding window (spacing protocol); default: the plan's",
    )
    parser.add_argument(
        "--series", metavar="UID", help="the DICOM series (SeriesInstanceUID) to read from a folder that holds several"
    )
    parser.add_argument(
        "--resampler",
        choices=RESAMPLER_CHOICES,
        default="torch",
        help="paper protocol: torch (batched on the device) or scipy (TransUNet's exact slice loop); --onnx resamples "
        "with NumPy as torch does",
    )
    parser.add_argument(
        "--postprocess",
        metavar="POSTPROCESSING_JSON",
        help="apply the post-processing `find-best` decided (keep the largest connected components) to every label "
        "map; the file must be for the model's classes",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = inference_settings(args)
    if args.postprocess:
        from perspective_unet.postprocessing import Postprocessing

        settings = settings.replace(postprocessing=Postprocessing.read(args.postprocess))
    if args.onnx:
        # The light path: ONNX Runtime and NumPy only, so that it runs where PyTorch is not installed.
        from perspective_unet.runtime.predict import predict_onnx

        if args.device not in ("auto", "cpu"):
            raise ValueError(
                f"--onnx runs on ONNX Runtime's execution providers, not on --device {args.device}; choose them with "
                "--providers (e.g. --providers cuda,cpu)."
            )
        written = predict_onnx(
            args.onnx,
            args.input,
            args.output,
            settings.replace(device="cpu"),
            providers=args.providers,
            overwrite=args.overwrite,
            series=args.series,
            output_format=args.output_format,
        )
    else:
        from perspective_unet.engine.predict import predict_path

        if args.providers != "auto":
            raise ValueError("--providers chooses ONNX Runtime's execution providers; it applies with --onnx only.")
        written = predict_path(
            args.checkpoint,
            args.input,
            args.output,
            settings,
            overwrite=args.overwrite,
            series=args.series,
            output_format=args.output_format,
        )
    target = written[0] if len(written) == 1 else args.output
    print(f"wrote {len(written)} label map(s) to {target}")
    return 0
