"""PixelLM server: the web page and the HTTP API in one process, questions answered together in batches.

    python app.py --version path/to/model [--host 0.0.0.0 --port 7860 --device cuda --precision bf16]

The page is at /, the JSON API at /api/v1/answer (streamed: /api/v1/answer/stream), its OpenAPI docs at
/docs. One worker owns the model and answers up to --max_batch_size waiting questions in one batch
(--max_batch_size 1: one at a time). Uploads over --max_upload_mb or --max_pixels are refused with a
message. The page's examples come from --examples_dir, else the model folder's examples/, else three
drawings. docs/serving.md describes the page and the API.
"""

from __future__ import annotations

from cli import build_parser
from serving.options import OptionsError, ServeOptions
from serving.server import run_server


def main(argv: list[str] | None = None) -> None:
    parser = build_parser(ServeOptions, __doc__)
    try:
        run_server(ServeOptions(**vars(parser.parse_args(argv))))
    except OptionsError as exc:
        parser.error(str(exc))


if __name__ == "__main__":
    main()
