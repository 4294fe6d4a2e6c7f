"""Chat with PixelLM about an image in the terminal, or answer one question from a script.

Interactive (type 'image: PATH', then questions; 'reset', 'exit'; answers print as they are generated):
    python chat.py --version path/to/model [--image kitchen.jpg]
One shot (prints the answer, writes <stem>_mask_<j>.png, <stem>_overlay.png, <stem>.json, exits):
    python chat.py --version path/to/model --image kitchen.jpg --query "Segment the chili." --out_dir out/

The original's flags are accepted; the ones this implementation does not need are checked, not silently
ignored (docs/serving.md lists them).
"""

from __future__ import annotations

import sys

from cli import build_parser
from serving.options import ChatOptions, OptionsError
from serving.terminal_chat import run_chat


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(ChatOptions, __doc__)
    try:
        return run_chat(ChatOptions(**vars(parser.parse_args(argv))))
    except OptionsError as exc:
        parser.error(str(exc))


if __name__ == "__main__":
    sys.exit(main())
