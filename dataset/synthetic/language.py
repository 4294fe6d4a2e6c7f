"""The texts of the synthetic world: referring expressions, grouped questions, reasoning queries, VQA.

Multi-target answers use ``{seg}`` after each target (the MUSE convention); targets are listed left
to right, and that is also the order of their masks.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from .scene import Scene, Shape

NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight")
COLOUR_HINTS = {
    "red": "a ripe tomato",
    "green": "fresh grass",
    "blue": "a clear summer sky",
    "yellow": "a banana",
    "orange": "a carrot",
    "purple": "a plum",
    "pink": "a flamingo",
    "black": "coal",
}
KIND_HINTS = {
    "circle": "has no corners at all",
    "square": "has four equal sides",
    "triangle": "has exactly three corners",
    "star": "has five points",
    "hexagon": "has six sides",
    "diamond": "looks like a rhombus standing on a corner",
}
POSITIONS = (("leftmost", lambda s: s.cx, min), ("rightmost", lambda s: s.cx, max),
             ("topmost", lambda s: s.cy, min), ("bottommost", lambda s: s.cy, max))


def plural(kind: str) -> str:
    return kind + "s"


def pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def left_to_right(shapes: list[Shape]) -> list[Shape]:
    return sorted(shapes, key=lambda s: (s.cx, s.cy))


def _extreme(shapes: list[Shape], key, fn, margin: float) -> Shape | None:
    """The shape extreme in ``key`` if it beats the runner-up by ``margin`` pixels."""
    if len(shapes) < 2:
        return None
    ordered = sorted(shapes, key=key, reverse=fn is max)
    return ordered[0] if abs(key(ordered[0]) - key(ordered[1])) > margin else None


def referring_expressions(scene: Scene, shape: Shape) -> list[str]:
    """Expressions that pick out ``shape`` alone in ``scene``."""
    others = [s for s in scene.shapes if s is not shape]
    out = [f"the {shape.colour} {shape.kind}", f"the {shape.size} {shape.colour} {shape.kind}"]
    if all(s.kind != shape.kind for s in others):
        out += [f"the {shape.kind}", f"the {shape.size} {shape.kind}"]
    if all(s.colour != shape.colour for s in others):
        out.append(f"the {shape.colour} shape")
    margin = 0.05 * max(scene.width, scene.height)
    same_kind = [s for s in scene.shapes if s.kind == shape.kind]
    for word, key, fn in POSITIONS:
        if _extreme(same_kind, key, fn, margin) is shape:
            out.append(f"the {word} {shape.kind}")
        if _extreme(scene.shapes, key, fn, margin) is shape:
            out.append(f"the {word} shape")
    return out


@dataclass
class GroupQuestion:
    """A multi-target question, its ``{seg}`` text answer and the targets in answer order."""

    question: str
    answer: str
    targets: list[Shape]
    attribute: str


def _group_answer(rng: np.random.Generator, targets: list[Shape], noun: str) -> str:
    phrases = [f"the {s.colour} {s.kind} {{seg}}" for s in targets]
    listing = join(phrases)
    n = len(targets)
    forms = [capitalise(listing) + "."]
    if n == 1:
        forms += [f"There is one {noun}: {listing}.", f"I found {listing}."]
    else:
        forms += [f"There are {NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else n} {noun}s: {listing}.", f"Sure: {listing}."]
    return pick(rng, forms)


def _attribute_question(
    rng: np.random.Generator, targets: list[Shape], cfg_no_target: float, questions: list[str], noun: str, absent: list[str],
    attribute: str,
) -> GroupQuestion | None:
    """One of ``questions`` about ``targets`` (answered with ``noun``s), or about an absent group (answered with one of
    ``absent``) at the rate ``cfg_no_target``; None when an absent group is not asked about."""
    if not targets and rng.random() >= cfg_no_target:
        return None
    q = pick(rng, questions)
    a = _group_answer(rng, targets, noun) if targets else pick(rng, absent)
    return GroupQuestion(q, a, targets, attribute)


def group_questions(
    rng: np.random.Generator, scene: Scene, colours: list[str], kinds: list[str], cfg_no_target: float, combos: bool = False
) -> list[GroupQuestion]:
    """Every attribute group of the scene as a question (colour, kind, size, all), plus absent ones; with ``combos``
    also every colour-and-kind group (present ones, and absent ones at the no-target rate)."""
    asked = [
        _attribute_question(
            rng, left_to_right([s for s in scene.shapes if s.colour == colour]), cfg_no_target,
            [f"Segment every {colour} shape.", f"Where are the {colour} shapes?",
             f"Find all {colour} shapes in the picture.", f"Which shapes are {colour}?"],
            f"{colour} shape", [f"There is no {colour} shape in this image.", f"I cannot find any {colour} shape here."], "colour",
        )
        for colour in colours
    ]
    asked += [
        _attribute_question(
            rng, left_to_right([s for s in scene.shapes if s.kind == kind]), cfg_no_target,
            [f"Segment every {kind}.", f"Where are all the {plural(kind)}?", f"Find each {kind} in the image."],
            kind, [f"There is no {kind} in this image.", f"I cannot find any {plural(kind)} here."], "kind",
        )
        for kind in kinds
    ]
    asked += [
        _attribute_question(
            rng, left_to_right([s for s in scene.shapes if s.colour == colour and s.kind == kind]), cfg_no_target,
            [f"Segment every {colour} {kind}.", f"Where are the {colour} {plural(kind)}?", f"Find each {colour} {kind}."],
            f"{colour} {kind}", [f"There is no {colour} {kind} in this image.", f"I cannot find any {colour} {plural(kind)} here."],
            "colour and kind",
        )
        for colour, kind in (itertools.product(colours, kinds) if combos else ())
    ]
    out = [q for q in asked if q is not None]
    for size in ("small", "large"):
        targets = left_to_right([s for s in scene.shapes if s.size == size])
        if targets:
            q = pick(rng, [f"Segment all the {size} shapes.", f"Which shapes are {size}?"])
            out.append(GroupQuestion(q, _group_answer(rng, targets, f"{size} shape"), targets, "size"))
    everything = left_to_right(scene.shapes)
    q = pick(rng, ["Segment every shape.", "Find all the shapes in this image."])
    out.append(GroupQuestion(q, _group_answer(rng, everything, "shape"), everything, "all"))
    return out


@dataclass
class ReasonQuery:
    texts: list[str]
    is_sentence: bool
    target: Shape
    explanation: str


def reason_query(rng: np.random.Generator, scene: Scene) -> ReasonQuery | None:
    """A query that needs a small inference (colour or shape hints) to find one shape."""
    options = []
    for shape in scene.shapes:
        others = [s for s in scene.shapes if s is not shape]
        if all(s.colour != shape.colour for s in others) and shape.colour in COLOUR_HINTS:
            hint = COLOUR_HINTS[shape.colour]
            options.append((shape, [f"Which shape has the colour of {hint}?",
                                    f"Something in this picture is coloured like {hint}. Where is it?"], True,
                            f"It is the {shape.colour} {shape.kind}, because {hint} is {shape.colour}."))
        if all(s.kind != shape.kind for s in others) and shape.kind in KIND_HINTS:
            hint = KIND_HINTS[shape.kind]
            options.append((shape, [f"Which shape {hint}?", f"Find the shape that {hint}."], True,
                            f"It is the {shape.colour} {shape.kind}, because a {shape.kind} {hint}."))
        exprs = referring_expressions(scene, shape)
        options.append((shape, [exprs[-1].removeprefix("the ")], False, f"It is {exprs[-1]}."))
    if not options:
        return None
    shape, texts, is_sentence, explanation = options[int(rng.integers(len(options)))]
    return ReasonQuery(texts, is_sentence, shape, explanation)


def caption(scene: Scene) -> str:
    shapes = left_to_right(scene.shapes)
    names = [f"a {s.name}" for s in shapes]
    if len(names) == 1:
        return capitalise(names[0]) + "."
    if len(names) == 2:
        return f"{capitalise(names[0])} left of {names[1]}."
    return f"From left to right: {join(names)}."


def vqa_rounds(
    rng: np.random.Generator, scene: Scene, colours: list[str], kinds: list[str], rounds: int, presence: bool = False
) -> list[tuple[str, str]]:
    """``rounds`` (question, answer) pairs about counts, colours and the whole scene; with ``presence`` also whether
    a kind or a colour is there ("Is there a star in the image?" -> "Yes: the green star." or "No, there is no star.")."""
    pool: list[tuple[str, str]] = []
    n = len(scene.shapes)
    pool.append((pick(rng, ["How many shapes are there?", "How many shapes are in the image?"]),
                 "There is one shape." if n == 1 else f"There are {NUMBER_WORDS[n]} shapes."))
    kind = pick(rng, kinds)
    k = sum(s.kind == kind for s in scene.shapes)
    pool.append((f"How many {plural(kind)} are there?",
                 f"There is one {kind}." if k == 1 else f"There are {NUMBER_WORDS[k]} {plural(kind)}."))
    for shape in scene.shapes:
        if sum(s.kind == shape.kind for s in scene.shapes) == 1:
            pool.append((f"What colour is the {shape.kind}?", f"The {shape.kind} is {shape.colour}."))
            break
    if presence:
        pool += presence_rounds(rng, scene, colours, kinds)
    pool.append((pick(rng, ["Describe the image.", "What does this picture show?", "Give a short description of the image."]),
                 caption(scene)))
    order = rng.permutation(len(pool))[:rounds]
    return [pool[int(i)] for i in order]


def presence_rounds(rng: np.random.Generator, scene: Scene, colours: list[str], kinds: list[str]) -> list[tuple[str, str]]:
    """Whether a random kind and a random colour are in the scene, answered with the shapes that are (left to right)."""
    kind = pick(rng, kinds)
    about_kind = _presence_round(rng, [s for s in scene.shapes if s.kind == kind],
                                 [f"Is there a {kind} in the image?", f"Are there any {plural(kind)}?"], f"No, there is no {kind}.")
    colour = pick(rng, colours)
    about_colour = _presence_round(rng, [s for s in scene.shapes if s.colour == colour],
                                   [f"Is anything {colour}?", f"Are there {colour} shapes?"], f"No, nothing is {colour}.")
    return [about_kind, about_colour]


def _presence_round(rng: np.random.Generator, targets: list[Shape], questions: list[str], absent: str) -> tuple[str, str]:
    names = [f"the {s.short_name}" for s in left_to_right(targets)]
    return pick(rng, questions), f"Yes: {join(names)}." if names else absent
