"""The terminal side of chat.py: print answers with numbered, coloured targets; save each turn's files.

``run_chat(options)`` is all of chat.py after flag parsing. Interactive commands (one per line):
``image: PATH`` loads an image and starts a new conversation, ``reset`` forgets the conversation but
keeps the image, ``exit``/``quit`` (or end of input) ends; any other line is a question about the current
image, whose answer is printed as it is generated, then its targets.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from .export import save_answer
from .image_io import ImageLoadError
from .options import ChatOptions
from .overlay import target_color
from .predictor import Answer, ChatSession, PixelLMPredictor, QuestionError

_RESET = "\x1b[0m"


@dataclass
class TerminalChatConfig:
    """out_dir: where each turn's masks, overlay and JSON go. max_new_tokens: answer length limit.
    color: ANSI colours in the output."""

    out_dir: Path
    max_new_tokens: int = 512
    color: bool = False


def supports_color(stream: TextIO) -> bool:
    """True when ``stream`` is a terminal and the NO_COLOR convention (https://no-color.org) is not set."""
    return hasattr(stream, "isatty") and stream.isatty() and not os.environ.get("NO_COLOR")


def _color_start(j: int) -> str:
    """The ANSI 24-bit escape for target ``j``'s colour, in bold."""
    r, g, b = target_color(j)
    return f"\x1b[1;38;2;{r};{g};{b}m"


def _paint(text: str, j: int, color: bool) -> str:
    return f"{_color_start(j)}{text}{_RESET}" if color else text


def format_answer(answer: Answer, color: bool) -> str:
    """The answer text with each found phrase painted (when ``color``) and [j] after each target's
    position, then ``format_targets``."""
    marks = []
    for j, target in enumerate(answer.targets):
        if target.phrase_found:
            # At equal offsets: a phrase's end, then a group's marker, then the next phrase's start.
            marks.append((target.span[0], 2, _color_start(j) if color else ""))
            marks.append((target.span[1], 0, _RESET if color else ""))
        marks.append((target.anchor, 1, _paint(f"[{j}]", j, color)))
    text, last = [], 0
    for position, _, insert in sorted(marks):
        text.append(answer.text[last:position])
        text.append(insert)
        last = position
    text.append(answer.text[last:])
    return "\n".join(["".join(text) if answer.text else "(no text)", format_targets(answer, color)])


def format_targets(answer: Answer, color: bool) -> str:
    """One line per target (index, phrase, score and bbox), then any warnings."""
    lines = []
    for j, target in enumerate(answer.targets):
        x, y, w, h = target.bbox
        lines.append(f"  {_paint(f'[{j}]', j, color)} {target.phrase}  score {target.score:.2f}  bbox x={x} y={y} w={w} h={h}")
    if not answer.targets:
        lines.append("  (no target masks in this answer)")
    lines.extend(f"  warning: {w}" for w in answer.warnings)
    return "\n".join(lines)


def save_turn(config: TerminalChatConfig, stem: str, session: ChatSession, answer: Answer) -> dict[str, Path]:
    """Write the answer's PNG masks, overlay and JSON as ``<out_dir>/<stem>_*``."""
    return save_answer(config.out_dir, stem, session.image, answer.question, answer.text, answer.export_targets(), warnings=answer.warnings)


def answer_once(predictor: PixelLMPredictor, image: str, question: str, config: TerminalChatConfig, out: TextIO) -> dict[str, Path]:
    """One-shot mode: load ``image``, answer ``question``, print it, save ``<image stem>_*`` files."""
    session = predictor.start(image)
    answer = predictor.reply(session, question, config.max_new_tokens)
    print(f"ASSISTANT: {format_answer(answer, config.color)}", file=out)
    files = save_turn(config, Path(image).stem, session, answer)
    print(f"saved: {', '.join(str(p) for p in files.values())}", file=out)
    return files


def interactive(
    predictor: PixelLMPredictor,
    config: TerminalChatConfig,
    stdin: TextIO,
    out: TextIO,
    err: TextIO = sys.stderr,
    image: str | None = None,
) -> int:
    """Read commands and questions from ``stdin`` until exit or end of input; returns an exit status.

    Bad images and bad questions print an error and the loop goes on. Turn n (counted over the whole run)
    is saved as ``<image stem>_<n:03d>_*``.
    """
    session: ChatSession | None = None
    image_stem = ""
    turn = 0
    print("Commands: 'image: PATH' loads an image, 'reset' starts over on the same image, 'exit' quits.", file=out)

    def load(path: str) -> None:
        nonlocal session, image_stem
        try:
            session = predictor.start(path)
        except ImageLoadError as exc:
            print(f"error: {exc}", file=err)
            return
        image_stem = Path(path).stem
        h, w = session.size
        print(f"image loaded: {path} ({w}x{h}); new conversation", file=out)

    if image is not None:
        load(image)
    while True:
        print("USER: ", end="", file=out, flush=True)
        line = stdin.readline()
        if not line:
            print(file=out)
            return 0
        line = line.strip()
        if not line:
            continue
        if line.lower() in ("exit", "quit"):
            return 0
        if line.lower().startswith("image:"):
            load(os.path.expanduser(line.split(":", 1)[1].strip()))
            continue
        if session is None:
            print("error: no image yet: load one with 'image: path/to/picture.jpg'", file=err)
            continue
        if line.lower() == "reset":
            session.history.clear()
            print("conversation reset (same image)", file=out)
            continue
        print("ASSISTANT: ", end="", file=out, flush=True)
        try:
            answer = predictor.reply(session, line, config.max_new_tokens, on_text=lambda chunk: print(chunk, end="", file=out, flush=True))
        except QuestionError as exc:
            print(file=out)
            print(f"error: {exc}", file=err)
            continue
        turn += 1
        print("" if answer.text else "(no text)", file=out)
        print(format_targets(answer, config.color), file=out)
        files = save_turn(config, f"{image_stem}_{turn:03d}", session, answer)
        print(f"saved: {files['json']} (+ {len(files) - 1} PNG)", file=out)


def run_chat(options: ChatOptions, stdin: TextIO | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """chat.py: check ``options`` (``OptionsError``), load the model, then answer once (``--query``) or chat.
    The streams default to the process's. Returns the exit status: 2 when the one-shot image or question is bad."""
    stdin, out, err = stdin or sys.stdin, out or sys.stdout, err or sys.stderr
    for note in options.check():
        print(note, file=err)
    predictor = PixelLMPredictor.from_pretrained(
        options.version,
        device=options.device,
        precision=options.precision,
        quantization=options.quantization,
        image_load_config=options.image_load_config,
        model_max_length=options.model_max_length,
    )
    config = TerminalChatConfig(out_dir=Path(options.out_dir), max_new_tokens=options.max_new_tokens, color=supports_color(out))
    if options.query is not None:
        try:
            answer_once(predictor, options.image, options.query, config, out)
        except (ImageLoadError, QuestionError) as exc:
            print(f"error: {exc}", file=err)
            return 2
        return 0
    return interactive(predictor, config, stdin, out, err, image=options.image)
