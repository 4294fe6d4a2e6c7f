"""Question and answer templates (data files in ``dataset/templates/``) and safe filling.

Templates hold ``{class_name}``, ``{sent}`` and ``{seg}`` placeholders. ``fill`` replaces them in one
pass over the *template* only, so braces inside names or sentences are never interpreted.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache

TEMPLATE_DIR = os.path.join(os.path.dirname(__file__), "templates")
_PLACEHOLDER = re.compile(r"\{(class_name|sent|seg)\}")


def fill(template: str, **values: str) -> str:
    """Replace the placeholders of ``template`` with ``values`` (free text is inserted verbatim)."""

    def sub(match: re.Match) -> str:
        key = match.group(1)
        if key not in values:
            raise KeyError(f"template {template!r} needs a value for {{{key}}}")
        return values[key]

    return _PLACEHOLDER.sub(sub, template)


def join_names(items: list[str]) -> str:
    """``["a"] -> "a"``, ``["a", "b", "c"] -> "a, b and c"``."""
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


@dataclass(frozen=True)
class Templates:
    """The template lists of one data type (the expand lists appended when asked)."""

    short: tuple[str, ...]
    long: tuple[str, ...]
    explanatory: tuple[str, ...]
    single: tuple[str, ...]
    per_target: tuple[str, ...]
    multi: tuple[str, ...]
    multi_named: tuple[str, ...]
    validation_answer: str


@lru_cache(maxsize=None)
def _load(name: str) -> dict:
    with open(os.path.join(TEMPLATE_DIR, name)) as f:
        return json.load(f)


def load_templates(use_expand_question_list: bool = False, expand_long: bool = True) -> Templates:
    """Templates for the loaders; ``expand_long`` adds the extra long-question templates (MUSE, ReasonSeg)."""
    q, a = _load("questions.json"), _load("answers.json")
    short = q["short"] + (q["expand_short"] if use_expand_question_list else [])
    long = q["long"] + (q["expand_long"] if expand_long else [])
    return Templates(
        short=tuple(short),
        long=tuple(long),
        explanatory=tuple(q["explanatory"]),
        single=tuple(a["single"]),
        per_target=tuple(a["per_target"]),
        multi=tuple(a["multi"]),
        multi_named=tuple(a["multi_named"]),
        validation_answer=a["validation"],
    )


def template_texts() -> list[str]:
    """Every template text (for tokenizer corpora)."""
    out: list[str] = []
    for name in ("questions.json", "answers.json"):
        for key, value in _load(name).items():
            if key.startswith("_"):
                continue
            out.extend(value if isinstance(value, list) else [value])
    return out
