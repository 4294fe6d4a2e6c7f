"""Turn generated answer tokens into display text and one phrase per seg group.

A well-formed target in an answer is one *seg group*: the K codebook tokens ``[SEG0] ... [SEG{K-1}]``,
in order and adjacent. Which tokens form which group is decided once, by ``model.seg_codebook.find_seg_groups``
(chunk c is seg tokens cK ... cK+K-1 of the answer, whatever they are), and generation returns those groups
with their masks (``PixelLMGenerateOutput.seg_groups``). ``parse_answer`` reads them: it keeps a group only
when it is well-formed; others are reported in ``ParsedAnswer.warnings`` and their masks dropped. One stray
seg token therefore shifts every later chunk, and those are dropped too: a mask decoded from tokens of
two different targets would be wrong, so none is shown.

Display text: the answer without its seg tokens and eos, with whitespace collapsed, no space before
``,.;:!?)``, and a ``,;:`` that is directly followed by other punctuation removed
("They are S, S, S." -> "They are."). An answer with no letter or digit left becomes "".

Phrase of a target (see ``extract_phrase``): the text between the previous seg token (or the start of
the answer) and the group, reduced to the clause nearest the group, without lead-ins (conjunctions,
"Sure,", "Here are", "I found", "the segmentation result of"), articles, trailing copulas ("is", "are") and
punctuation: "The chili S and the curry S." -> "chili", "curry"; "The masks of the red car are S" ->
"red car". Pronouns and template words give an empty phrase ("Sure, it is S.", "They are S, S and S.");
the predictor then names the target "target j".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

_CLOSING_PUNCT = set(",.;:!?)")
_JOINING_PUNCT = set(",;:")
_ANY_PUNCT = set(",.;:!?")

_LEAD_IN = re.compile(
    r"(?:[\s,;:.!?()\"'\-\u2013\u2014]+"
    r"|(?:and|or|but|plus|then|also|while|whereas|as well as|with|sure|yes|ok|okay|of course"
    r"|here (?:is|are)|there (?:is|are)|i (?:found|see|can see)"
    r"|(?:the )?(?:segmentation )?(?:results?|masks?) (?:of|for)"
    r"|the segmentation (?:results?|masks?))\b"
    r"|(?:the|an|a)\s+(?=\S))",
    re.IGNORECASE,
)
_TRAIL_OUT = re.compile(
    r"(?:[\s,;:.!?()\"'\-\u2013\u2014]+"
    r"|\b(?:is|are|was|were|be|as|at|here|there|shown|located|found|namely|in this (?:image|picture|photo))\s*)$",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"[.!?;:](?=\s|$)")
_PRONOUNS = {"it", "they", "them", "this", "that", "these", "those", "he", "she", "him", "her", "its", "their", "one", "ones"}


@dataclass(frozen=True)
class ParsedGroup:
    """One well-formed seg group of an answer.

    chunk: index of its mask among the model's masks for this answer (find_seg_groups order).
    phrase: the phrase it belongs to ("" when none could be read).
    span: (start, end) of ``phrase`` in ``ParsedAnswer.text``; start == end when the phrase is empty.
    anchor: the character offset in ``ParsedAnswer.text`` where the group stood.
    """

    chunk: int
    phrase: str
    span: tuple[int, int]
    anchor: int


@dataclass
class ParsedAnswer:
    """text: display text; raw_text: the answer with its seg tokens (for the chat history);
    groups: the well-formed groups in answer order; warnings: one message per dropped chunk or leftover seg tokens."""

    text: str
    raw_text: str
    groups: list[ParsedGroup] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def tidy_spacing(text: str) -> tuple[str, list[int]]:
    """Apply the display-text rules of the module docstring.

    Returns (tidy text, positions) where ``positions[i]`` is the offset in the tidy text of original
    character i (len(text) + 1 entries; the last maps the end).
    """
    out: list[str] = []
    positions = [0] * (len(text) + 1)
    for i, ch in enumerate(text):
        positions[i] = len(out)
        if ch.isspace():
            following = _next_visible(text, i + 1)
            if out and out[-1] != " " and following is not None and following not in _CLOSING_PUNCT:
                out.append(" ")
        elif ch in _JOINING_PUNCT:
            following = _next_visible(text, i + 1)
            if out and (following is None or following not in _ANY_PUNCT):
                if out[-1] == " ":
                    out.pop()
                out.append(ch)
        else:
            out.append(ch)
    positions[len(text)] = len(out)
    tidy = "".join(out)
    if not any(c.isalnum() for c in tidy):
        return "", [0] * (len(text) + 1)
    return tidy, [min(p, len(tidy)) for p in positions]


def settled_display_text(partial: str) -> str:
    """The start of the display text that every continuation of the decoded answer ``partial`` shares.

    For streaming: ``partial`` is the answer decoded so far (seg tokens and eos left out). Held back are the
    last word (the next token may change how the tokenizer decodes it; a replacement character of an
    unfinished UTF-8 sequence likewise) and trailing spaces and punctuation, which the tidy rules may still
    drop ("cat," becomes "cat." when "." follows). Nothing is returned before a letter or digit is settled,
    since an answer without one displays as "".
    """
    unfinished = partial.find("\ufffd")
    if unfinished >= 0:
        partial = partial[:unfinished]
    last_space = max((i for i, ch in enumerate(partial) if ch.isspace()), default=0)
    tidy, _ = tidy_spacing(partial[:last_space])
    end = len(tidy)
    while end and (tidy[end - 1] == " " or tidy[end - 1] in _CLOSING_PUNCT):
        end -= 1
    return tidy[:end]


def _next_visible(text: str, start: int) -> str | None:
    for ch in text[start:]:
        if not ch.isspace():
            return ch
    return None


def extract_phrase(region: str) -> tuple[int, int]:
    """(start, end) of the target phrase inside ``region``, the text right before a seg group.

    Rules (module docstring): drop trailing punctuation and copulas, keep the clause after the last
    sentence end, drop lead-ins and articles, drop what is left if it is only a pronoun.
    """
    start, end = 0, len(region)
    end = _strip_trailing(region, start, end)
    boundary = None
    for match in _SENTENCE_END.finditer(region, start, end):
        boundary = match.end()
    if boundary is not None:
        start = boundary
    while True:
        match = _LEAD_IN.match(region, start, end)
        if not match or match.end() == start:
            break
        start = match.end()
    end = _strip_trailing(region, start, end)
    if start >= end or region[start:end].lower() in _PRONOUNS:
        return start, start
    return start, end


def _strip_trailing(region: str, start: int, end: int) -> int:
    while end > start:
        match = _TRAIL_OUT.search(region, start, end)
        if not match or match.start() == end:
            break
        end = match.start()
    return end


def parse_answer(
    token_ids: Sequence[int],
    seg_groups: Sequence[tuple[Sequence[int], bool]],
    tokenizer: PreTrainedTokenizerBase,
    seg_token_ids: Sequence[int],
    eos_token_id: int | None,
    withdrawn: Sequence[tuple[Sequence[int], float]] = (),
) -> ParsedAnswer:
    """Parse generated ids (without the prompt; anything from the first eos on is ignored).

    seg_groups: the answer's groups as generation returns them, (positions of its K tokens in ``token_ids``,
    well formed), in order; seg_token_ids: the K codebook ids; withdrawn: the groups generation withdrew for a
    weak mask, (positions, confidence) (``PixelLMGenerateOutput.withdrawn_groups``): each becomes a warning that
    names its phrase. Never raises on odd token sequences: malformed groups and leftover seg tokens become warnings.
    """
    ids = list(token_ids)
    if eos_token_id is not None and eos_token_id in ids:
        ids = ids[: ids.index(eos_token_id)]
    k = len(seg_token_ids)
    seg_set = set(seg_token_ids)
    seg_positions = [t for t, i in enumerate(ids) if i in seg_set]
    plain = [i for i in ids if i not in seg_set]
    # plain_before[t]: how many non-seg tokens precede position t.
    plain_before, count = [], 0
    for i in ids:
        plain_before.append(count)
        count += i not in seg_set

    warnings = []
    leftover = len(seg_positions) - (len(seg_groups) + len(withdrawn)) * k
    if leftover:
        warnings.append(
            f"the answer has {len(seg_positions)} seg tokens, not a multiple of K={k}: "
            f"the last {leftover} do not form a whole target and were dropped"
        )
    full_text = tokenizer.decode(plain, skip_special_tokens=True)
    text, positions = tidy_spacing(full_text)

    def text_offset(num_plain: int) -> int:
        raw = len(tokenizer.decode(plain[:num_plain], skip_special_tokens=True)) if num_plain else 0
        return positions[min(raw, len(full_text))]

    def phrase_at(first: int) -> tuple[tuple[int, int], int]:
        """(span of the phrase, anchor) of the group whose first token is at answer position ``first``."""
        previous_seg = max((t for t in seg_positions if t < first), default=None)
        region_start = text_offset(plain_before[previous_seg]) if previous_seg is not None else 0
        anchor = text_offset(plain_before[first])
        rel_start, rel_end = extract_phrase(text[region_start:anchor])
        return (region_start + rel_start, region_start + rel_end), anchor

    groups = []
    for c, (chunk_pos, well_formed) in enumerate(seg_groups):
        if not well_formed:
            names = tokenizer.convert_ids_to_tokens([ids[t] for t in chunk_pos])
            warnings.append(
                f"target {c}: malformed seg group {' '.join(names)} at answer tokens {chunk_pos[0]}..{chunk_pos[-1]} "
                f"(expected the {k} codebook tokens in order, adjacent): its mask was dropped"
            )
            continue
        span, anchor = phrase_at(chunk_pos[0])
        groups.append(ParsedGroup(chunk=c, phrase=text[span[0] : span[1]], span=span, anchor=anchor))
    for chunk_pos, confidence in withdrawn:
        span, _ = phrase_at(chunk_pos[0])
        name = f"'{text[span[0] : span[1]]}'" if span[1] > span[0] else f"at answer tokens {chunk_pos[0]}..{chunk_pos[-1]}"
        warnings.append(
            f"target {name}: withdrawn, its mask's confidence {confidence:.2f} is under the model's min_target_confidence "
            "(the decoder does not find it in the image): no mask"
        )
    raw_text = tokenizer.decode(ids, skip_special_tokens=False).strip()
    return ParsedAnswer(text=text, raw_text=raw_text, groups=groups, warnings=warnings)
