"""Example images and questions for the web page.

Where they come from, first match wins (``choose_examples``):

1. ``--examples_dir``: every image of that folder, with a generic question;
2. the model folder's own examples, ``<model>/examples/examples.json``: a list of
   ``{"image": file name in that folder, "question": ...}`` written by ``write_model_examples`` (the demo
   writes images and questions of the world its model was trained on, so the page's examples work);
3. three synthetic drawings made at start (``make_example_images``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from .image_io import ImageSource, load_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
EXAMPLES_FOLDER = "examples"
EXAMPLES_FILE = "examples.json"


def write_model_examples(model_folder: str | os.PathLike, items: Sequence[tuple[ImageSource, str]]) -> Path:
    """Write example (image, question) pairs into ``<model_folder>/examples/``: ``example_<i>.png`` (lossless)
    and ``examples.json``. Images are anything ``serving.image_io.load_image`` accepts. Returns the JSON's path.
    Replaces the folder's earlier examples."""
    if not items:
        raise ValueError("write_model_examples needs at least one (image, question) pair")
    folder = Path(model_folder) / EXAMPLES_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("example_*.png"):
        old.unlink()
    records = []
    for i, (image, question) in enumerate(items):
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"example {i}: the question must be a non-empty string, got {question!r}")
        name = f"example_{i}.png"
        Image.fromarray(load_image(image)).save(folder / name)
        records.append({"image": name, "question": question.strip()})
    path = folder / EXAMPLES_FILE
    path.write_text(json.dumps(records, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def model_examples(model_folder: str | os.PathLike) -> list[tuple[str, str]] | None:
    """The (image path, question) pairs of ``<model_folder>/examples/examples.json``; None when there is none.
    Raises ValueError naming the file and the entry when it is malformed or names a missing image."""
    path = Path(model_folder) / EXAMPLES_FOLDER / EXAMPLES_FILE
    if not path.is_file():
        return None
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read it as JSON ({exc})") from exc
    if not isinstance(records, list) or not records:
        raise ValueError(f"{path}: expected a non-empty list of {{\"image\": file name, \"question\": text}}")
    examples = []
    for i, record in enumerate(records):
        image = record.get("image") if isinstance(record, dict) else None
        question = record.get("question") if isinstance(record, dict) else None
        if not isinstance(image, str) or not isinstance(question, str) or not question.strip():
            raise ValueError(f"{path}: entry {i} needs \"image\" (a file name) and \"question\" (non-empty text), got {record!r}")
        image_path = path.parent / image
        if Path(image).name != image or not image_path.is_file():
            raise ValueError(f"{path}: entry {i} names {image!r}, which is not a file in {path.parent}")
        examples.append((str(image_path), question.strip()))
    return examples


def make_example_images(folder: str | os.PathLike) -> list[tuple[str, str]]:
    """Draw three synthetic example images into ``folder`` (kept if present); returns (path, question) pairs."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    specs = [
        ("shapes.png", (320, 240), [("ellipse", (40, 60, 140, 160), (220, 40, 40)), ("rectangle", (180, 80, 280, 180), (40, 80, 220))],
         "Please segment the red circle and the blue square."),
        ("fruit.png", (300, 300), [("ellipse", (50, 50, 150, 150), (250, 200, 30)), ("ellipse", (160, 140, 260, 240), (60, 170, 60))],
         "Where are the yellow fruit and the green fruit?"),
        ("stripes.png", (360, 200), [("rectangle", (20, 20, 100, 180), (30, 30, 30)), ("rectangle", (240, 40, 340, 160), (200, 120, 40))],
         "Segment the dark bar."),
    ]
    examples = []
    for name, size, shapes, question in specs:
        path = folder / name
        if not path.is_file():
            image = Image.new("RGB", size, (235, 235, 225))
            draw = ImageDraw.Draw(image)
            for kind, box, colour in shapes:
                getattr(draw, kind)(box, fill=colour)
            image.save(path)
        examples.append((str(path), question))
    return examples


def examples_from_dir(folder: str | os.PathLike, question: str = "What is in this image? Please segment it.") -> list[tuple[str, str]]:
    """Every image file of ``folder`` (sorted) with a generic question."""
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"--examples_dir {folder} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    return [(str(p), question) for p in paths]


def choose_examples(model_folder: str | os.PathLike, examples_dir: str | os.PathLike | None, drawing_folder: str | os.PathLike) -> list[tuple[str, str]]:
    """The page's examples: ``examples_dir`` if given, else the model folder's, else drawings made in ``drawing_folder``."""
    if examples_dir is not None:
        return examples_from_dir(examples_dir)
    return model_examples(model_folder) or make_example_images(drawing_folder)
