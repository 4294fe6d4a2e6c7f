"""PixelLM web demo (Gradio): upload an image, ask, get the answer with one coloured mask per target.

    python app.py --version path/to/model [--host 0.0.0.0 --port 7860 --device cuda --precision bf16]

Requests wait in a queue; --concurrency of them run on the model at once. Uploads over --max_upload_mb
or --max_pixels are refused with a message. docs/serving.md describes the page.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import torch  # noqa: E402

from serving.image_io import ImageLoadConfig  # noqa: E402
from serving.predictor import PixelLMPredictor  # noqa: E402
from serving.web_app import AppConfig, build_app, examples_from_dir, launch_kwargs, make_example_images  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", required=True, help="merged model folder (config.json, weights, tokenizer, preprocessor)")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="default: bf16 on CUDA, fp32 elsewhere")
    parser.add_argument("--concurrency", type=int, default=1, help="requests run on the model at once; the rest queue")
    parser.add_argument("--max_upload_mb", type=float, default=10.0, help="largest accepted upload")
    parser.add_argument("--max_pixels", type=int, default=25_000_000, help="largest accepted width*height (decompression-bomb guard)")
    parser.add_argument("--max_new_tokens", type=int, default=512)
    parser.add_argument("--examples_dir", help="folder of example images (default: synthetic examples drawn at start)")
    parser.add_argument(
        "--alpha", choices=["white", "drop"],
        help="images with an alpha channel: composite onto white, or drop the alpha as the original PixelLM did "
        "(default: the folder's preprocessor_config.json; converted releases say drop)",
    )
    parser.add_argument("--output_dir", default=str(Path(tempfile.gettempdir()) / "pixellm_app"), help="where answers' files are written")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    precision = args.precision or ("bf16" if args.device.startswith("cuda") else "fp32")
    predictor = PixelLMPredictor.from_pretrained(
        args.version,
        device=args.device,
        precision=precision,
        image_load_config=ImageLoadConfig(max_pixels=args.max_pixels, max_bytes=int(args.max_upload_mb * 2**20), alpha=args.alpha),
    )
    output_dir = Path(args.output_dir)
    examples = examples_from_dir(args.examples_dir) if args.examples_dir else make_example_images(output_dir / "examples")
    config = AppConfig(
        max_new_tokens=args.max_new_tokens,
        concurrency=args.concurrency,
        max_upload_mb=args.max_upload_mb,
        max_pixels=args.max_pixels,
        output_dir=output_dir,
        examples=examples,
        alpha=predictor.image_load_config.alpha,
    )
    build_app(predictor, config).launch(**launch_kwargs(config, args.host, args.port))


if __name__ == "__main__":
    main()
