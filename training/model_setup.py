"""Load the model a run starts from: ``load_base_model(args) -> (model, tokenizer, processor)``.

The run's model flags go to ``model.loading.load_pretrained``, which reads any folder layout (a PixelLM folder,
or a LLaVA folder around which a fresh PixelLM is built).
"""

from __future__ import annotations

from typing import Protocol

from transformers import PreTrainedTokenizerBase

from model import PixelLMForCausalLM, PixelLMImageProcessor
from model.loading import load_pretrained
from model.precision import dtype_of

LOSS_WEIGHTS = ("ce_loss_weight", "dice_loss_weight", "bce_loss_weight")


class ModelFlags(Protocol):
    """The flags ``load_base_model`` reads (``TrainArgs`` and ``MergeArgs`` both have them)."""

    version: str
    vision_tower: str | None
    seg_token_num: int | None
    image_feature_scale_num: int | None
    ce_loss_weight: float | None
    dice_loss_weight: float | None
    bce_loss_weight: float | None
    precision: str


def load_base_model(args: ModelFlags) -> tuple[PixelLMForCausalLM, PreTrainedTokenizerBase, PixelLMImageProcessor]:
    """The model (in the ``--precision`` dtype, on the CPU), its tokenizer and image processor."""
    overrides = {name: float(getattr(args, name)) for name in LOSS_WEIGHTS if getattr(args, name) is not None}
    return load_pretrained(
        args.version,
        dtype_of(args.precision),
        vision_tower=args.vision_tower,
        seg_token_num=args.seg_token_num,
        image_feature_scale_num=args.image_feature_scale_num,
        **overrides,
    )
