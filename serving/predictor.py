"""PixelLMPredictor: load a merged model folder once, embed an image once, ask questions about it.

    predictor = PixelLMPredictor.from_pretrained("path/to/model", device="cuda", precision="bf16")
    predictor.set_image("kitchen.jpg")              # CLIP runs here, once per image
    answer = predictor.ask("Segment the chili and the curry.")
    answer.text                                     # "The chili and the curry." (seg groups removed)
    answer.targets[0].phrase, answer.targets[0].mask  # "chili", bool [H, W] at the image's size
    predictor.ask("And the rice?")                  # same embedding; the prompt holds the first turn
    predictor.ask("Segment the rice.", on_text=print)  # the answer text as it is generated

Masks are ``logit > 0`` at the original (EXIF-oriented) image size. ``Target.score`` is the mean
sigmoid probability over the mask's pixels (0.0 for an empty mask): how sure the decoder is inside the
region it chose, not a calibrated probability that the target exists. Phrases and the display text follow
``serving.answer_parsing``. For a server with many users, keep one ``ChatSession`` per user and call
``start`` / ``reply``, or ``reply_batch`` for several conversations in one generation call (what
``serving.scheduler.BatchScheduler`` does); ``set_image`` / ``ask`` are the same on one built-in session.

An image is embedded once: by ``start``, or, for a session made from ``load``'s ``ImageEmbedding`` that
is not embedded yet, by the first ``reply_batch`` that needs it (all such images of the call in one vision
batch). The decoder-side features follow when an answer first needs a mask; both are kept in the
``ImageEmbedding`` for every later question of every conversation that shares it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from model.conversation import Turn, left_padded, tokenize_conversation
from model.loading import load_pretrained
from model.modeling_pixellm import ImageFeatures, PixelLMForCausalLM
from model.precision import dtype_of
from model.processing_pixellm import PixelLMImageProcessor
from model.tokens import IM_END_TOKEN, IM_START_TOKEN, IMAGE_TOKEN, resolve_token_ids

from .answer_parsing import parse_answer
from .export import ExportTarget, mask_bbox
from .image_io import ImageLoadConfig, ImageSource, load_image
from .text_stream import AnswerTextStreamer, TextCallback

QUANTIZATIONS = ("8bit", "4bit")
# Modules kept in full precision when the LLM is quantised: everything that is not the language model.
_NOT_QUANTIZED = ["vision_tower", "mm_projector", "out_mm_projector", "image_feature_neck", "seg_codebook", "pixel_decoder", "lm_head"]
# Tokenizers without a real limit report a huge sentinel as model_max_length.
_NO_LIMIT = 10**8


class QuestionError(ValueError):
    """A question the predictor cannot answer as given (empty, too long, holding image tokens)."""


@dataclass
class Target:
    """One segmented target of an answer.

    phrase: the words it belongs to, or "target j" when the answer names none (``phrase_found`` False).
    mask: bool [H, W] at the original image size. bbox: (x, y, w, h) in pixels, zeros for an empty mask.
    score: mean sigmoid probability inside the mask (0.0 when empty).
    span: (start, end) of the phrase in ``Answer.text`` (start == end when none was found).
    anchor: the offset in ``Answer.text`` where its seg group stood.
    """

    phrase: str
    mask: np.ndarray
    bbox: tuple[int, int, int, int]
    score: float
    span: tuple[int, int]
    anchor: int
    phrase_found: bool = True


@dataclass
class Answer:
    """text: the answer without seg groups; targets: in answer order; warnings: dropped seg groups etc.
    raw_text: the answer with its seg tokens, as it goes into the history; token_ids: the generated ids."""

    question: str
    text: str
    targets: list[Target] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    raw_text: str = ""
    token_ids: list[int] = field(default_factory=list)

    def export_targets(self) -> list[ExportTarget]:
        """The targets in the form ``serving.export.save_answer`` takes."""
        return [ExportTarget(phrase=t.phrase, mask=t.mask, score=t.score) for t in self.targets]


@dataclass(eq=False)
class ImageEmbedding:
    """One loaded image and what the model computed from it, shared by every conversation about it.

    image: [H, W, 3] uint8 RGB (EXIF-oriented); None after ``release_pixels``. features: its ImageFeatures
    (batch of 1, on the model's device); None until the first question about the image. size: (H, W).
    """

    image: np.ndarray | None
    features: ImageFeatures | None = None
    size: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        if self.image is not None:
            self.size = (int(self.image.shape[0]), int(self.image.shape[1]))

    def release_pixels(self) -> None:
        """Forget the pixels once the image is embedded: answers need only the features and the size (a
        server that keeps many images for follow-up questions keeps them small this way)."""
        if self.features is None:
            raise RuntimeError("the image is not embedded yet: its pixels are still needed")
        self.image = None


@dataclass(eq=False)
class ChatSession:
    """One conversation about one image. history: the finished turns, answers with their seg tokens."""

    embedding: ImageEmbedding
    history: list[Turn] = field(default_factory=list)

    @property
    def image(self) -> np.ndarray | None:
        """[H, W, 3] uint8 RGB (None once released)."""
        return self.embedding.image

    @property
    def features(self) -> ImageFeatures | None:
        return self.embedding.features

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the image; masks have this size."""
        return self.embedding.size


class PixelLMPredictor:
    """Inference on one loaded PixelLM: image embedding once, multi-turn questions, batched questions."""

    def __init__(
        self,
        model: PixelLMForCausalLM,
        tokenizer: PreTrainedTokenizerBase,
        processor: PixelLMImageProcessor,
        image_load_config: ImageLoadConfig | None = None,
        model_max_length: int | None = None,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.processor = processor
        image_load_config = image_load_config or ImageLoadConfig()
        if image_load_config.alpha is None:
            image_load_config = dataclasses.replace(image_load_config, alpha=processor.alpha)
        self.image_load_config = image_load_config
        config = model.config
        self.token_ids = resolve_token_ids(tokenizer, config.tokens_per_target)
        if list(self.token_ids.seg) != list(config.seg_token_ids) or self.token_ids.image != config.image_token_id:
            raise ValueError(
                f"the tokenizer's PixelLM token ids (image {self.token_ids.image}, seg {list(self.token_ids.seg)}) differ from "
                f"config.json's (image_token_id {config.image_token_id}, seg_token_ids {config.seg_token_ids}): "
                "save the tokenizer and the model from the same run into the same folder"
            )
        if processor.image_size != config.image_size:
            raise ValueError(
                f"preprocessor_config.json has image_size {processor.image_size} but the model expects "
                f"{config.image_size} (config.json vision_config.image_size): use the folder's own preprocessor"
            )
        self.eos_token_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else config.text_config.eos_token_id
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_token_id
        limits = [config.text_config.max_position_embeddings]
        if tokenizer.model_max_length and tokenizer.model_max_length < _NO_LIMIT:
            limits.append(int(tokenizer.model_max_length))
        if model_max_length is not None:
            limits.append(int(model_max_length))
        self.max_context = min(limits)
        self._session: ChatSession | None = None

    @classmethod
    def from_pretrained(
        cls,
        folder: str | os.PathLike,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        quantization: str | None = None,
        image_load_config: ImageLoadConfig | None = None,
        model_max_length: int | None = None,
    ) -> "PixelLMPredictor":
        """Load a merged folder (config.json, weights, tokenizer, preprocessor_config.json).

        precision: "fp32", "bf16" or "fp16" for every module. quantization: None, "8bit" or "4bit" loads
        the language model through bitsandbytes (CUDA only; the vision and mask modules stay in ``precision``).
        """
        device = torch.device(device)
        quantized = {} if quantization is None else {
            "quantization_config": _quantization_config(quantization, device), "device_map": {"": device},
        }
        model, tokenizer, processor = load_pretrained(folder, dtype_of(precision), layouts=("pixellm",), model_kwargs=quantized)
        return cls(model if quantized else model.to(device), tokenizer, processor, image_load_config, model_max_length)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.vision_tower.dtype

    # -- sessions ------------------------------------------------------------------------------------------
    def load(self, image: ImageSource) -> ImageEmbedding:
        """Load and check ``image`` (anything ``serving.image_io.load_image`` accepts), without embedding it:
        ``ChatSession(embedding)`` is then a conversation whose first question embeds it."""
        return ImageEmbedding(load_image(image, self.image_load_config))

    def start(self, image: ImageSource | ImageEmbedding) -> ChatSession:
        """A new conversation about ``image``, embedded now (CLIP); pass an ``ImageEmbedding`` to share one
        image's embedding between conversations."""
        embedding = image if isinstance(image, ImageEmbedding) else self.load(image)
        self._embed([embedding])
        return ChatSession(embedding)

    def reply(
        self, session: ChatSession, question: str, max_new_tokens: int = 512, on_text: TextCallback | None = None
    ) -> Answer:
        """Answer ``question`` on ``session``'s image, seeing its earlier turns; appends the turn to it.
        ``on_text`` gets the answer text in pieces as it is generated (they add up to ``Answer.text``)."""
        return self.reply_batch([session], [question], max_new_tokens, [on_text])[0]

    def reply_batch(
        self,
        sessions: Sequence[ChatSession],
        questions: Sequence[str],
        max_new_tokens: int | Sequence[int] = 512,
        on_text: Sequence[TextCallback | None] | None = None,
    ) -> list[Answer]:
        """Answer one question in each of several conversations in one generation call; appends each turn.

        max_new_tokens: one limit, or one per question. on_text: None, or one callback (or None) per
        question, as in ``reply``. Images not embedded yet are embedded together first. The answers equal
        those of ``reply`` one by one up to float rounding (prompts are left-padded into one batch).
        Raises ``QuestionError`` for the first bad question (nothing is generated then).
        """
        if len(sessions) != len(questions):
            raise ValueError(f"one question per conversation, got {len(sessions)} conversations and {len(questions)} questions")
        if len({id(s) for s in sessions}) != len(sessions):
            raise ValueError("a conversation can have one question per batch: a follow-up must see the answer before it")
        if not sessions:
            return []
        budgets = [max_new_tokens] * len(sessions) if isinstance(max_new_tokens, int) else list(max_new_tokens)
        if len(budgets) != len(sessions):
            raise ValueError(f"max_new_tokens: one value or one per question ({len(sessions)}), got {len(budgets)}")
        prompts = [self.prompt_ids(s.history, q, n) for s, q, n in zip(sessions, questions, budgets)]
        self._embed([s.embedding for s in sessions])
        features, shared = self._row_features([s.embedding for s in sessions])
        sizes = torch.tensor([s.size for s in sessions], dtype=torch.long, device=self.device)
        callbacks = list(on_text) if on_text is not None else [None] * len(sessions)
        if len(callbacks) != len(sessions):
            raise ValueError(f"on_text: one callback (or None) per question ({len(sessions)}), got {len(callbacks)}")
        streamer = None
        if any(c is not None for c in callbacks):
            streamer = AnswerTextStreamer(self.tokenizer, self.token_ids.seg, self.eos_token_id, callbacks, budgets)
        answers = self._generate(prompts, features, sizes, list(questions), budgets, streamer)
        if not shared and features.decoder_features is not None:
            # Keep the decoder-side features the batch computed, one copy per image.
            for row, session in enumerate(sessions):
                if session.features.decoder_features is None:
                    session.features.decoder_features = features.decoder_features[row : row + 1].clone()
                    session.features.clip_levels = None
        for session, question, answer in zip(sessions, questions, answers):
            session.history.append(Turn(question=_turn_question(session.history, question), answer=answer.raw_text))
        if streamer is not None:
            streamer.finish([a.text for a in answers])
        return answers

    def set_image(self, image: ImageSource) -> None:
        """Embed ``image`` and start a new conversation about it (the built-in session)."""
        self._session = self.start(image)

    def ask(self, question: str, max_new_tokens: int = 512, on_text: TextCallback | None = None) -> Answer:
        """Answer on the image of ``set_image``; later questions see the earlier turns."""
        if self._session is None:
            raise RuntimeError("no image: call set_image(image) before ask(question)")
        return self.reply(self._session, question, max_new_tokens, on_text)

    def reset(self) -> None:
        """Forget the conversation, keep the image embedding."""
        if self._session is not None:
            self._session.history.clear()

    @property
    def session(self) -> ChatSession | None:
        return self._session

    def ask_batch(self, items: Sequence[tuple[ImageSource, str]], max_new_tokens: int = 512) -> list[Answer]:
        """Answer independent single-turn questions [(image, question), ...] in one batch.

        Prompts are left-padded; the result equals asking each on a fresh ``set_image`` (up to float
        rounding). The built-in session is left untouched.
        """
        sessions = [ChatSession(self.load(image)) for image, _ in items]
        return self.reply_batch(sessions, [q for _, q in items], max_new_tokens)

    # -- building blocks -------------------------------------------------------------------------------------
    def encode(self, images: list[np.ndarray]) -> ImageFeatures:
        """Embed RGB images [H, W, 3] uint8 (CLIP and the LLM's image tokens; the decoder-side features follow
        when a first mask needs them)."""
        batch = self.processor(images)
        pixel_values = batch["pixel_values"].to(self.device, self.dtype)
        with torch.no_grad():
            return self.model.encode_images(pixel_values, batch["clip_resize"].to(self.device), decoder_features=False)

    def _embed(self, embeddings: Sequence[ImageEmbedding]) -> None:
        """Encode every image of ``embeddings`` that has no features yet, in one batch (each image once)."""
        pending = list({id(e): e for e in embeddings if e.features is None}.values())
        if pending:
            features = self.encode([e.image for e in pending])
            for i, embedding in enumerate(pending):
                embedding.features = features.select(torch.tensor([i], device=self.device))

    def _row_features(self, embeddings: Sequence[ImageEmbedding]) -> tuple[ImageFeatures, bool]:
        """The features of one image per prompt, and whether they are the image's own object (a batch of one).

        A batch holds either the decoder-side features of every image or of none (the model adds them when
        the first mask is needed), so in a batch where only some images have them the others get them here.
        """
        features = [e.features for e in embeddings]
        if len(features) == 1:
            return features[0], True
        if any(f.decoder_features is not None for f in features):
            with torch.no_grad():
                for f in features:
                    self.model.add_decoder_features(f)

        def cat(name: str) -> torch.Tensor | None:
            parts = [getattr(f, name) for f in features]
            return None if parts[0] is None else torch.cat(parts)

        fields = ("llm_embeds", "llm_valid", "clip_resize", "clip_levels", "decoder_features")
        return ImageFeatures(**{name: cat(name) for name in fields}), False

    def prompt_ids(self, history: list[Turn], question: str, max_new_tokens: int) -> list[int]:
        """Token ids of the llava_v1 prompt for ``question`` after ``history``; validates the question."""
        if not isinstance(question, str) or not question.strip():
            raise QuestionError("the question is empty: type what to segment or ask, e.g. 'Segment the dog.'")
        for marker in (IMAGE_TOKEN, IM_START_TOKEN, IM_END_TOKEN):
            if marker in question:
                raise QuestionError(f"the question holds {marker!r}, which is reserved for the image: remove it")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        turns = [*history, Turn(_turn_question(history, question))]
        ids = tokenize_conversation(self.tokenizer, turns, self.token_ids, self.model.config.num_image_tokens).input_ids
        if len(ids) + max_new_tokens > self.max_context:
            earlier = f", {len(history)} earlier turn(s) included" if history else ""
            raise QuestionError(
                f"the question is too long: the prompt is {len(ids)} tokens ({self.model.config.num_image_tokens} image "
                f"tokens{earlier}) and up to {max_new_tokens} answer tokens are reserved, {len(ids) + max_new_tokens} in "
                f"all, over the model's context limit of {self.max_context} tokens. Shorten the question"
                + (", start a new conversation" if history else "")
                + " or lower max_new_tokens."
            )
        return ids

    def _generate(
        self,
        prompts: list[list[int]],
        features: ImageFeatures,
        original_sizes: torch.Tensor,
        questions: list[str],
        max_new_tokens: list[int],
        streamer: AnswerTextStreamer | None,
    ) -> list[Answer]:
        """Left-pad ``prompts`` (one per image of ``features``), generate, and build the Answers."""
        input_ids, attention_mask = left_padded(prompts, self.pad_token_id)
        out = self.model.generate_with_masks(
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            image_features=features,
            original_sizes=original_sizes,
            max_new_tokens=max_new_tokens,
            eos_token_id=self.eos_token_id,
            streamer=streamer,
        )
        return [
            self._answer(question, sequence, groups, logits, confidence, withdrawn, tuple(size.tolist()))
            for question, sequence, groups, logits, confidence, withdrawn, size in zip(
                questions, out.sequences, out.seg_groups, out.pred_masks, out.target_confidence, out.withdrawn_groups, original_sizes
            )
        ]

    def _answer(
        self,
        question: str,
        sequence: list[int],
        groups: list[tuple[list[int], bool]],
        logits: torch.Tensor,
        confidence: torch.Tensor,
        withdrawn: list[tuple[list[int], float]],
        size: tuple[int, int],
    ) -> Answer:
        """Pair the well-formed seg groups of ``sequence`` with their mask logits [N, H, W] and confidences [N]
        (mask n is group n's); withdrawn groups become warnings."""
        parsed = parse_answer(sequence, groups, self.tokenizer, self.token_ids.seg, self.eos_token_id, withdrawn)
        warnings = list(parsed.warnings)
        logits = logits.float().cpu()
        targets = []
        for j, group in enumerate(parsed.groups):
            mask = (logits[group.chunk] > 0).numpy()
            score = float(confidence[group.chunk])
            found = bool(group.phrase)
            targets.append(
                Target(
                    phrase=group.phrase if found else f"target {j}",
                    mask=mask,
                    bbox=tuple(mask_bbox(mask)),
                    score=score,
                    span=group.span,
                    anchor=group.anchor,
                    phrase_found=found,
                )
            )
        if targets and targets[0].mask.shape != size:
            raise RuntimeError(f"mask size {targets[0].mask.shape} differs from the image's {size}")
        return Answer(
            question=question, text=parsed.text, targets=targets, warnings=warnings, raw_text=parsed.raw_text, token_ids=list(sequence)
        )


def _turn_question(history: list[Turn], question: str) -> str:
    """The question as it enters the conversation: the first one carries the image placeholder."""
    return question.strip() if history else f"{IMAGE_TOKEN}\n{question.strip()}"


def _quantization_config(quantization: str, device: torch.device):
    """A bitsandbytes config for the language model; clear errors where it cannot work."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be None or one of {QUANTIZATIONS}, got {quantization!r}")
    if device.type != "cuda":
        raise ValueError(
            f"{quantization} loading needs a CUDA GPU (bitsandbytes), but the device is {device}: "
            "drop --load_in_8bit/--load_in_4bit, or use --precision bf16 to halve memory instead"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"{quantization} loading needs bitsandbytes: pip install bitsandbytes") from exc
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=_NOT_QUANTIZED)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_quant_type="nf4",
        llm_int8_skip_modules=_NOT_QUANTIZED,
    )
