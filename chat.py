"""Chat with PixelLM about an image in the terminal, or answer one question from a script.

Interactive (type 'image: PATH', then questions; 'reset', 'exit'; answers print as they are generated):
    python chat.py --version path/to/model [--image kitchen.jpg]
One shot (prints the answer, writes <stem>_mask_<j>.png, <stem>_overlay.png, <stem>.json, exits):
    python chat.py --version path/to/model --image kitchen.jpg --query "Segment the chili." --out_dir out/

The original's flags are accepted; the ones this implementation does not need are checked, not silently
ignored (docs/serving.md lists them).
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", required=True, help="merged model folder (config.json, weights, tokenizer, preprocessor)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, mps, ... (default: cuda when a GPU is visible, else cpu)")
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Imported after parsing, so that --help and flag errors come without loading torch.
    from serving.options import ChatOptions, OptionsError
    from serving.terminal_chat import run_chat

    try:
        return run_chat(ChatOptions(**vars(args)))
    except OptionsError as exc:
        parser.error(str(exc))


if __name__ == "__main__":
    sys.exit(main())
