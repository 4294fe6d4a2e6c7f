"""PixelLM server: the web page and the HTTP API in one process, questions answered together in batches.

    python app.py --version path/to/model [--host 0.0.0.0 --port 7860 --device cuda --precision bf16]

The page is at /, the JSON API at /api/v1/answer (streamed: /api/v1/answer/stream), its OpenAPI docs at
/docs. One worker owns the model and answers up to --max_batch_size waiting questions in one batch
(--max_batch_size 1: one at a time). Uploads over --max_upload_mb or --max_pixels are refused with a
message. The page's examples come from --examples_dir, else the model folder's examples/, else three
drawings. docs/serving.md describes the page and the API.
"""

from __future__ import annotations

import argparse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", required=True, help="merged model folder (config.json, weights, tokenizer, preprocessor)")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--device", help="default: cuda when a GPU is visible, else cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="default: bf16 on CUDA, fp32 elsewhere")
    parser.add_argument("--max_batch_size", type=int, default=8, help="questions answered together in one batch; 1 turns batching off")
    parser.add_argument("--max_queue", type=int, default=256, help="questions allowed to wait; more are refused with 503")
    parser.add_argument("--concurrency", type=int, default=16, help="questions of the web page handed to the model at once")
    parser.add_argument("--max_upload_mb", type=float, default=10.0, help="largest accepted upload")
    parser.add_argument("--max_pixels", type=int, default=25_000_000, help="largest accepted width*height (decompression-bomb guard)")
    parser.add_argument("--max_new_tokens", type=int, default=512, help="answer length limit (API clients may ask for less)")
    parser.add_argument("--max_question_chars", type=int, default=2000, help="longest accepted question")
    parser.add_argument("--max_conversations", type=int, default=256, help="API conversations kept for follow-ups (least recently used dropped)")
    parser.add_argument("--max_images", type=int, default=64, help="API images kept for new conversations by image_id")
    parser.add_argument("--idle_minutes", type=float, default=30.0, help="API conversations and images unused this long are dropped")
    parser.add_argument("--examples_dir", help="folder of example images (default: the model folder's examples, else drawings)")
    parser.add_argument(
        "--alpha", choices=["white", "drop"],
        help="images with an alpha channel: composite onto white, or drop the alpha as the original PixelLM did "
        "(default: the folder's preprocessor_config.json; converted releases say drop)",
    )
    parser.add_argument("--output_dir", help="where the page writes answers' files (default: pixellm_app in the temp folder)")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Imported after parsing, so that --help and flag errors come without loading torch and gradio.
    from serving.options import OptionsError, ServeOptions
    from serving.server import run_server

    try:
        run_server(ServeOptions(**vars(args)))
    except OptionsError as exc:
        parser.error(str(exc))


if __name__ == "__main__":
    main()
