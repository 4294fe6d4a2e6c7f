"""The knobs of the synthetic world, in one dataclass, and its presets."""

from __future__ import annotations

from dataclasses import dataclass, field

FULL_COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "orange": (245, 130, 30),
    "purple": (140, 60, 180),
    "pink": (240, 120, 190),
    "black": (30, 30, 30),
}
FULL_KINDS = ("circle", "square", "triangle", "star", "hexagon", "diamond")


@dataclass
class WorldConfig:
    """What scenes look like and how much of each kind of text is written.

    Sizes are shape radii as fractions of the canvas's shorter side. ``min_visible`` is the smallest
    fraction of a shape's own area that must stay visible after later shapes are drawn over it.
    MUSE questions: every colour, kind and size group of a scene, plus, with probability ``no_target_rate``
    each, a question about an absent colour or kind (answered "none"). The training split uses
    ``train_no_target_rate`` instead, and with ``train_combo_questions`` it also asks for colour-and-kind
    groups ("Segment every green star.", absent ones included), which a model can only answer by reading
    which colour each shape has; the validation and test splits never change with these knobs. VQA
    conversations ask about counts, colours and the whole scene, and with ``vqa_presence_questions`` also whether
    a kind or a colour is there, answered with the shapes that are ("Yes: the green star." / "No, there is no star.").
    """

    colours: dict[str, tuple[int, int, int]] = field(default_factory=lambda: dict(FULL_COLOURS))
    kinds: tuple[str, ...] = FULL_KINDS
    min_side: int = 160
    max_side: int = 320
    min_shapes: int = 1
    max_shapes: int = 6
    sizes: dict[str, tuple[float, float]] = field(default_factory=lambda: {"small": (0.08, 0.11), "large": (0.16, 0.21)})
    min_visible: float = 0.5
    placement_tries: int = 60
    background_range: tuple[int, int] = (225, 250)
    muse_questions_per_image: tuple[int, int] = (2, 3)
    no_target_rate: float = 0.15
    train_no_target_rate: float = 0.15
    train_combo_questions: bool = False
    refs_sentences: tuple[int, int] = (1, 3)
    vqa_rounds: tuple[int, int] = (1, 3)
    vqa_presence_questions: bool = False
    explanatory_rate: float = 0.5
    jpeg_quality: int = 95


PRESETS = {
    "full": WorldConfig,
    "demo": lambda: WorldConfig(
        colours={k: FULL_COLOURS[k] for k in ("red", "green", "blue", "yellow")},
        kinds=("circle", "square", "triangle", "star"),
        max_shapes=4,
        sizes={"small": (0.13, 0.16), "large": (0.22, 0.27)},
        min_visible=0.85,
    ),
}


def preset(name: str) -> WorldConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown synthetic preset '{name}'; choose from {sorted(PRESETS)}")
    return PRESETS[name]()
