"""Chat with PixelLM about an image in the terminal, or answer one question from a script.

Interactive (type 'image: PATH', then questions; 'reset', 'exit'):
    python chat.py --version path/to/model [--image kitchen.jpg]
One shot (prints the answer, writes <stem>_mask_<j>.png, <stem>_overlay.png, <stem>.json, exits):
    python chat.py --version path/to/model --image kitchen.jpg --query "Segment the chili." --out_dir out/

The original's flags are accepted; the ones this implementation does not need are checked, not silently
ignored (docs/serving.md lists them).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from model.configuration_pixellm import PixelLMConfig
from serving.image_io import ImageLoadConfig, ImageLoadError
from serving.predictor import PixelLMPredictor, QuestionError
from serving.terminal_chat import TerminalChatConfig, answer_once, interactive, supports_color


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", required=True, help="merged model folder (config.json, weights, tokenizer, preprocessor)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda, cuda:1, mps, ...")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="default: bf16 on CUDA, fp32 elsewhere")
    parser.add_argument("--vis_save_path", "--out_dir", dest="out_dir", default="./vis_output", help="where masks, overlays and JSON go")
    parser.add_argument("--image", help="image to load first; with --query, the one-shot mode")
    parser.add_argument("--query", help="one question: answer it, save the files and exit")
    parser.add_argument("--max_new_tokens", type=int, default=512)
    parser.add_argument("--model_max_length", type=int, help="cap the context (prompt + answer) below the model's own limit")
    parser.add_argument("--image_size", type=int, help="must equal the folder's preprocessor image_size (the CLIP input)")
    parser.add_argument(
        "--alpha", choices=["white", "drop"],
        help="images with an alpha channel: composite onto white, or drop the alpha as the original PixelLM did "
        "(default: the folder's preprocessor_config.json; converted releases say drop)",
    )
    parser.add_argument("--conv_type", default="llava_v1", help="chat template; only llava_v1 exists")
    parser.add_argument("--load_in_8bit", action="store_true", help="8-bit LLM via bitsandbytes (CUDA only)")
    parser.add_argument("--load_in_4bit", action="store_true", help="4-bit LLM via bitsandbytes (CUDA only)")
    parser.add_argument("--seg_token_num", type=int, help="checked against the folder's config.json")
    parser.add_argument("--image_feature_scale_num", type=int, help="checked against the folder's config.json")
    parser.add_argument("--vision-tower", "--vision_tower", dest="vision_tower", help="ignored: the vision tower is part of the folder")
    return parser


def check_flags(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Reject flag values that contradict the model folder, with the value that would work."""
    if not (Path(args.version) / "config.json").is_file():
        parser.error(f"--version {args.version}: no config.json there; pass a merged model folder")
    config = PixelLMConfig.from_pretrained(args.version)
    for flag in ("seg_token_num", "image_feature_scale_num"):
        given, saved = getattr(args, flag), getattr(config, flag)
        if given is not None and given != saved:
            parser.error(f"--{flag} {given} does not match {args.version}/config.json ({flag}={saved}); drop the flag or pass {saved}")
    if args.image_size is not None and args.image_size != config.image_size:
        parser.error(
            f"--image_size {args.image_size}: this model has no separate SAM input; its CLIP input size is fixed by the "
            f"folder at {config.image_size}. Drop the flag."
        )
    if args.conv_type != "llava_v1":
        parser.error(f"--conv_type {args.conv_type}: only llava_v1 is implemented (model/conversation.py)")
    if args.load_in_8bit and args.load_in_4bit:
        parser.error("--load_in_8bit and --load_in_4bit exclude each other")
    if (args.load_in_8bit or args.load_in_4bit) and not args.device.startswith("cuda"):
        parser.error(f"--load_in_8bit/--load_in_4bit need a CUDA GPU (bitsandbytes); the device is {args.device}. Use --precision bf16 instead")
    if args.query is not None and args.image is None:
        parser.error("--query needs --image")
    if args.vision_tower:
        print(f"note: --vision-tower {args.vision_tower} is ignored; the vision tower is loaded from {args.version}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_flags(args, parser)
    precision = args.precision or ("bf16" if args.device.startswith("cuda") else "fp32")
    quantization = "8bit" if args.load_in_8bit else "4bit" if args.load_in_4bit else None
    predictor = PixelLMPredictor.from_pretrained(
        args.version,
        device=args.device,
        precision=precision,
        quantization=quantization,
        image_load_config=ImageLoadConfig(alpha=args.alpha),
        model_max_length=args.model_max_length,
    )
    config = TerminalChatConfig(out_dir=Path(args.out_dir), max_new_tokens=args.max_new_tokens, color=supports_color(sys.stdout))
    if args.query is not None:
        try:
            answer_once(predictor, args.image, args.query, config, sys.stdout)
        except (ImageLoadError, QuestionError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    return interactive(predictor, config, sys.stdin, sys.stdout, sys.stderr, image=args.image)


if __name__ == "__main__":
    sys.exit(main())
