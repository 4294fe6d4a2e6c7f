"""Load the model a run starts from: ``load_base_model(args) -> (model, tokenizer, processor)``.

A PixelLM folder (``config.json`` with ``model_type: pixellm``, tokenizer, ``preprocessor_config.json``)
loads directly. A LLaVA-style folder (original LLaVA plus a ``--vision-tower`` CLIP folder, or llava-hf
with CLIP inside) is assembled by ``model.llava_loading.load_for_training``. Flags that change the
model (seg_token_num, image_feature_scale_num, loss weights) are checked against a PixelLM folder:
architecture-defining values must match it, loss weights are overridden and the change is logged.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Protocol

import torch
from transformers import PreTrainedTokenizerBase

from model import PixelLMConfig, PixelLMForCausalLM, PixelLMImageProcessor
from model.llava_loading import load_for_training
from model.tokenization import load_tokenizer
from model.tokens import resolve_token_ids, seg_token_names

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
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


def folder_model_type(version: str) -> str | None:
    """``model_type`` in ``version/config.json``; raises when the folder has no config."""
    path = os.path.join(version, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"--version {version}: no config.json there. Pass a PixelLM model folder (python -m model.tiny --out DIR "
            "writes one, merge_lora_weights_and_save_hf_model.py writes trained ones) or a LLaVA folder with --vision-tower"
        )
    with open(path) as f:
        return json.load(f).get("model_type")


def load_base_model(args: ModelFlags) -> tuple[PixelLMForCausalLM, PreTrainedTokenizerBase, PixelLMImageProcessor]:
    """The model (in the ``--precision`` dtype, on the CPU), its tokenizer and image processor."""
    model_type = folder_model_type(args.version)
    if model_type != PixelLMConfig.model_type:
        return _load_llava(args, model_type)
    if args.vision_tower:
        logger.warning("--vision-tower %s is ignored: the PixelLM folder %s holds its own CLIP", args.vision_tower, args.version)
    dtype = DTYPES[args.precision]
    model = PixelLMForCausalLM.from_pretrained(args.version, dtype=dtype, attn_implementation="sdpa")
    tokenizer = load_tokenizer(args.version)
    processor = PixelLMImageProcessor.from_pretrained(args.version)
    check_architecture_flags(model.config, args)
    check_tokenizer(model.config, tokenizer, args.version)
    apply_loss_weights(model.config, args)
    logger.info(
        "loaded PixelLM from %s: %.1fM parameters, %s, K=%d seg tokens, %d image tokens, image size %d",
        args.version, sum(p.numel() for p in model.parameters()) / 1e6, dtype, model.config.num_seg_tokens,
        model.config.num_image_tokens, processor.image_size,
    )
    return model, tokenizer, processor


def _load_llava(args: ModelFlags, model_type: str | None) -> tuple[PixelLMForCausalLM, PreTrainedTokenizerBase, PixelLMImageProcessor]:
    """A fresh PixelLM assembled from a LLaVA-style folder (``model.llava_loading``); new modules are initialised."""
    defaults = PixelLMConfig()
    seg_token_num = args.seg_token_num if args.seg_token_num is not None else defaults.seg_token_num
    scale_num = args.image_feature_scale_num if args.image_feature_scale_num is not None else defaults.image_feature_scale_num
    overrides = {name: float(getattr(args, name)) for name in LOSS_WEIGHTS if getattr(args, name) is not None}
    model, tokenizer, processor = load_for_training(
        version=args.version,
        vision_tower=args.vision_tower,
        seg_token_num=seg_token_num,
        image_feature_scale_num=scale_num,
        dtype=DTYPES[args.precision],
        **overrides,
    )
    logger.info(
        "built PixelLM from the '%s' folder %s (CLIP: %s), seg_token_num=%d, image_feature_scale_num=%d",
        model_type, args.version, args.vision_tower or "from the folder", seg_token_num, scale_num,
    )
    return model, tokenizer, processor


def check_architecture_flags(config: PixelLMConfig, args: ModelFlags) -> None:
    """--seg_token_num / --image_feature_scale_num must equal the folder's (they fix the weights' shapes)."""
    for name in ("seg_token_num", "image_feature_scale_num"):
        wanted = getattr(args, name)
        if wanted is not None and wanted != getattr(config, name):
            raise ValueError(
                f"--{name} {wanted} differs from {getattr(config, name)} in {args.version}/config.json; the folder's "
                f"weights, tokenizer and vision_feature_layers are built for K = {config.num_seg_tokens} seg tokens. "
                f"Drop the flag or start from a folder built with {name}={wanted}"
            )


def check_tokenizer(config: PixelLMConfig, tokenizer: PreTrainedTokenizerBase, version: str) -> None:
    """The tokenizer must hold exactly the K seg tokens whose ids the config records."""
    k = config.num_seg_tokens
    ids = resolve_token_ids(tokenizer, k)
    vocab = tokenizer.get_vocab()
    extra = [name for name in seg_token_names(k + 1) if name not in seg_token_names(k) and name in vocab]
    if extra or (k > 1 and "[SEG]" in vocab):
        raise ValueError(
            f"{version}: the tokenizer holds more seg tokens than K = {k} from config.json ({extra or ['[SEG]']}); "
            "the tokenizer and the config disagree about K"
        )
    if config.seg_token_ids is not None and list(ids.seg) != list(config.seg_token_ids):
        raise ValueError(f"{version}: tokenizer seg ids {list(ids.seg)} differ from config.seg_token_ids {config.seg_token_ids}")
    if len(tokenizer) > config.text_config.vocab_size:
        raise ValueError(f"{version}: the tokenizer has {len(tokenizer)} tokens but the LLM only {config.text_config.vocab_size} embeddings")


def apply_loss_weights(config: PixelLMConfig, args: ModelFlags) -> None:
    """Set the loss weights given on the command line where they differ from the folder's config."""
    for name in LOSS_WEIGHTS:
        wanted = getattr(args, name)
        if wanted is not None and wanted != getattr(config, name):
            logger.info("%s: %s (from the flag; the folder has %s)", name, wanted, getattr(config, name))
            setattr(config, name, float(wanted))
