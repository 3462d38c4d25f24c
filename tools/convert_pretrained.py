#!/usr/bin/env python
"""Convert ResNet weights into ssdet's backbone format, the input of SSDET.INIT_WEIGHTS.

python tools/convert_pretrained.py --input resnet50.pth --output pretrained/R-50_imagenet.pth
python tools/convert_pretrained.py --input simclr.ckpt --output pretrained/R-50_simclr.pth \
    --format simclr --method simclr
python tools/convert_pretrained.py --input R-18.pkl --output pretrained/R-18.pth --format detectron2
python tools/convert_pretrained.py --input output/mini/pretrain/backbone.pth --output x.pth

Sources: torchvision ResNet state dicts, SimCLR-style checkpoints (ResNet under an encoder
prefix, projection head dropped), Detectron2-named ResNets (the .pkl files of Detectron2's
convert-torchvision-to-d2.py, read without running pickle code; a detector's bottom-up ResNet)
and ssdet's own format. Every source key is converted, dropped for a stated reason, or
reported; shapes that do not fit the ResNet are refused.
"""

import argparse

from ssdet.checkpoint.convert import SOURCE_FORMATS, convert_checkpoint
from ssdet.checkpoint.format import INPUT_FORMATS, METHODS, save_backbone_checkpoint
from ssdet.utils.errors import exit_on_input_error


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input", required=True, help="source checkpoint (.pth, .pt, .ckpt, .pkl)")
    parser.add_argument("--output", required=True, help="converted backbone checkpoint (.pth)")
    parser.add_argument(
        "--format", default="auto", choices=SOURCE_FORMATS, help="source layout (default: auto)"
    )
    parser.add_argument("--depth", type=int, help="target ResNet depth (default: inferred)")
    parser.add_argument(
        "--stem-out-channels", type=int, help="target MODEL.RESNETS.STEM_OUT_CHANNELS"
    )
    parser.add_argument(
        "--res2-out-channels", type=int, help="target MODEL.RESNETS.RES2_OUT_CHANNELS"
    )
    parser.add_argument(
        "--input-format",
        default="BGR",
        choices=INPUT_FORMATS,
        help="channel order of the detector's INPUT.FORMAT (default BGR, Detectron2's); "
        "torchvision and SimCLR weights are RGB and get their stem flipped for BGR",
    )
    parser.add_argument(
        "--method",
        choices=METHODS,
        help="how the weights were trained, recorded in the output (default: converted; "
        "ssdet sources keep theirs)",
    )
    parser.add_argument(
        "--allow-unmatched",
        action="store_true",
        help="leave out (and list) source keys with no counterpart in the ResNet",
    )
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="load with weights_only=False, for trusted files that pickle Python objects "
        "(never for .pkl files, which ssdet's restricted unpickler reads)",
    )
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    conversion = convert_checkpoint(
        args.input,
        args.format,
        depth=args.depth,
        stem_out_channels=args.stem_out_channels,
        res2_out_channels=args.res2_out_channels,
        input_format=args.input_format,
        method=args.method,
        allow_unmatched=args.allow_unmatched,
        trust_pickle=args.trust_pickle,
    )
    save_backbone_checkpoint(
        args.output, conversion.model, conversion.arch, conversion.method, conversion.extra
    )
    print(conversion.summary())
    print(f"wrote {args.output}")


if __name__ == "__main__":
    with exit_on_input_error():
        main(parse_args())
