"""``perspective-unet info``: parameters and FLOPs per part, and the output shape, as a table."""

from __future__ import annotations

import argparse

from perspective_unet.cli.choices import MODEL_CHOICES


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "info",
        help="show a model's parameters and FLOPs per part",
        description="Build a model variant and print its parameters and FLOPs per part (torch.utils.flop_counter, "
        "a multiply-add counted as 2 FLOPs) and its output shape for one input slice.",
    )
    parser.add_argument("--model", default="perspective_unet", choices=MODEL_CHOICES, help="model variant")
    parser.add_argument("--img-size", type=int, nargs=2, default=(224, 224), metavar=("H", "W"), help="input size")
    parser.add_argument("--num-classes", type=int, default=9, help="output classes, background included")
    parser.add_argument("--in-channels", type=int, default=1, help="input channels")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from perspective_unet.engine.summary import summarize_model
    from perspective_unet.models.registry import create_model

    model = create_model(args.model, in_channels=args.in_channels, num_classes=args.num_classes)
    print(summarize_model(model, tuple(args.img_size), model_name=args.model).table())
    return 0
