"""Multi-target questions for sem_seg and refer_seg (the original's question and answer templates).

Up to ``num_classes_per_sample`` questions per image, each naming up to ``num_classes_per_question``
targets: "Please segment the a, b and c in this image." -> "a is S, b is S and c is S." or
"Sure, they are S, S and S." (S = one seg group). Masks follow the order of the names.
"""

from __future__ import annotations

import numpy as np

from model.conversation import Turn
from model.tokens import IMAGE_TOKEN

from .templates import Templates, fill, join_names


def image_question(text: str) -> str:
    """The first question of a conversation: the image placeholder, a newline, the text."""
    return f"{IMAGE_TOKEN}\n{text}"


def allocate(num_items: int, num_questions: int, per_question: int, rng: np.random.Generator) -> list[int]:
    """Split ``num_items`` targets over at most ``num_questions`` questions of 1..per_question each."""
    if num_items > num_questions * per_question:
        raise ValueError(f"{num_items} targets do not fit {num_questions} questions of {per_question}")
    count = max(min(num_questions, num_items), -(-num_items // per_question))
    sizes = [1] * count
    for _ in range(num_items - count):
        open_slots = [i for i, s in enumerate(sizes) if s < per_question]
        sizes[open_slots[int(rng.integers(len(open_slots)))]] += 1
    return sizes


def answer_for_targets(names: list[str], seg: str, templates: Templates, rng: np.random.Generator) -> str:
    """The answer naming ``names`` in order, one seg group each."""
    if len(names) == 1:
        return fill(templates.single[int(rng.integers(len(templates.single)))], seg=seg)
    if rng.random() < 0.5:
        template = templates.per_target[int(rng.integers(len(templates.per_target)))]
        parts = [fill(template, class_name=name, seg=seg).rstrip(".") for name in names]
        return join_names(parts) + "."
    template = templates.multi[int(rng.integers(len(templates.multi)))]
    return fill(template, class_name=join_names(names), seg=join_names([seg] * len(names)))


def target_conversations(
    names: list[str],
    seg: str,
    templates: Templates,
    rng: np.random.Generator,
    num_questions: int,
    per_question: int,
    use_long: list[bool] | None = None,
) -> tuple[list[list[Turn]], list[list[int]]]:
    """Conversations for the targets ``names`` and, per conversation, the indices of its targets.

    ``use_long[i]`` puts name i (a full sentence) into a long template instead of a short one; it is only
    used for single-target questions.
    """
    sizes = allocate(len(names), num_questions, per_question, rng)
    conversations: list[list[Turn]] = []
    groups: list[list[int]] = []
    start = 0
    for size in sizes:
        idx = list(range(start, start + size))
        start += size
        group_names = [names[i] for i in idx]
        if size == 1 and use_long is not None and use_long[idx[0]]:
            question = fill(templates.long[int(rng.integers(len(templates.long)))], sent=group_names[0])
        else:
            template = templates.short[int(rng.integers(len(templates.short)))]
            question = fill(template, class_name=join_names([n.lower() for n in group_names]))
        answer = answer_for_targets(group_names, seg, templates, rng)
        conversations.append([Turn(image_question(question), answer)])
        groups.append(idx)
    return conversations, groups
