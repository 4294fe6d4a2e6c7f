"""``load_pretrained(folder)``: the one way to load a model folder, whatever its layout.

The layout is read once from ``config.json`` (``model.model_folder.detect_layout``):

* ``pixellm`` (ours: ``python -m model.tiny``, a merged run, a converted release): loaded as it is. Asked-for
  ``seg_token_num`` / ``image_feature_scale_num`` must equal the folder's (they fix the weights' shapes); other
  PixelLMConfig fields given (loss weights, ...) replace the folder's, and the change is logged.
* ``llava_v1`` / ``llava_hf``: a fresh PixelLM is built around the folder's LLM (and CLIP)
  (``model.llava_loading.build_from_llava``).
* the original PixelLM's ``hf_model`` folders are refused with the converter command to run first.
"""

from __future__ import annotations

import logging
import os

import torch
from transformers import PreTrainedTokenizerBase

from .configuration_pixellm import PixelLMConfig
from .llava_loading import TRAINING_IMAGE_SIZE, build_from_llava
from .model_folder import detect_layout, read_config
from .modeling_pixellm import PixelLMForCausalLM
from .processing_pixellm import PixelLMImageProcessor
from .tokenization import load_tokenizer
from .tokens import resolve_token_ids, seg_token_names

logger = logging.getLogger(__name__)

ARCHITECTURE_FIELDS = ("seg_token_num", "image_feature_scale_num")
LAYOUTS = ("pixellm", "llava_v1", "llava_hf")


def load_pretrained(
    folder: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    *,
    vision_tower: str | None = None,
    seg_token_num: int | None = None,
    image_feature_scale_num: int | None = None,
    image_size: int = TRAINING_IMAGE_SIZE,
    model_kwargs: dict | None = None,
    layouts: tuple[str, ...] = LAYOUTS,
    **config_overrides,
) -> tuple[PixelLMForCausalLM, PreTrainedTokenizerBase, PixelLMImageProcessor]:
    """(model in ``dtype``, its tokenizer, its image processor) from ``folder``.

    vision_tower: the CLIP folder of an original-LLaVA folder (default: its config's ``mm_vision_tower``);
    ignored, with a warning, for folders that carry their CLIP. seg_token_num, image_feature_scale_num:
    None = the folder's (PixelLM) or PixelLMConfig's defaults (LLaVA). image_size: the CLIP input of a model
    built from LLaVA. model_kwargs: passed to ``from_pretrained`` of a PixelLM folder (quantisation,
    device_map). layouts: the layouts the caller accepts (a chat needs a trained PixelLM folder).
    config_overrides: PixelLMConfig fields.
    """
    folder = str(folder)
    config = read_config(folder)
    layout = detect_layout(folder, config)
    if layout not in layouts:
        raise ValueError(
            f"{folder} is a {layout} folder, not a trained PixelLM: train one from it with train_ds.py and merge the result "
            "(merge_lora_weights_and_save_hf_model.py), or convert a PixelLM release (python -m model.convert_pixellm)"
        )
    if layout != "pixellm":
        defaults = PixelLMConfig()
        return build_from_llava(
            folder, config, layout, vision_tower,
            defaults.seg_token_num if seg_token_num is None else seg_token_num,
            defaults.image_feature_scale_num if image_feature_scale_num is None else image_feature_scale_num,
            dtype, image_size, config_overrides,
        )
    if vision_tower:
        logger.warning("%s is a PixelLM folder with its own CLIP: --vision-tower %s is ignored", folder, vision_tower)
    pixellm_config = PixelLMConfig.from_dict(config)
    check_architecture(pixellm_config, folder, seg_token_num=seg_token_num, image_feature_scale_num=image_feature_scale_num)
    for name, value in config_overrides.items():
        if value != getattr(pixellm_config, name):
            logger.info("%s: %s (the folder has %s)", name, value, getattr(pixellm_config, name))
            setattr(pixellm_config, name, value)
    model = PixelLMForCausalLM.from_pretrained(folder, config=pixellm_config, dtype=dtype, attn_implementation="sdpa", **(model_kwargs or {}))
    tokenizer = load_tokenizer(folder)
    check_tokenizer(pixellm_config, tokenizer, folder)
    processor = PixelLMImageProcessor.from_pretrained(folder)
    logger.info(
        "loaded PixelLM from %s: %.1fM parameters, %s, K=%d seg tokens, %d image tokens, image size %d",
        folder, sum(p.numel() for p in model.parameters()) / 1e6, dtype, pixellm_config.tokens_per_target,
        pixellm_config.num_image_tokens, processor.image_size,
    )
    return model, tokenizer, processor


def check_architecture(config: PixelLMConfig, folder: str, **wanted: int | None) -> None:
    """Each of ``wanted`` (``seg_token_num``, ``image_feature_scale_num``) that is given must equal the folder's."""
    for name, value in wanted.items():
        if name not in ARCHITECTURE_FIELDS:
            raise TypeError(f"check_architecture checks {ARCHITECTURE_FIELDS}, not {name}")
        if value is not None and value != getattr(config, name):
            raise ValueError(
                f"{name}={value} was asked for, but {folder}/config.json has {name}={getattr(config, name)}: the folder's "
                f"weights, tokenizer and vision_feature_layers are built for K = {config.tokens_per_target} seg tokens per target. "
                f"Drop the setting, or start from a LLaVA folder to build a model with {name}={value}"
            )


def check_tokenizer(config: PixelLMConfig, tokenizer: PreTrainedTokenizerBase, folder: str) -> None:
    """The tokenizer must hold exactly the K seg tokens, and the PixelLM token ids, that the config records."""
    k = config.tokens_per_target
    ids = resolve_token_ids(tokenizer, k)
    vocab = tokenizer.get_vocab()
    extra = [name for name in seg_token_names(k + 1) if name not in seg_token_names(k) and name in vocab]
    if extra or (k > 1 and "[SEG]" in vocab):
        raise ValueError(
            f"{folder}: the tokenizer holds more seg tokens than K = {k} from config.json ({extra or ['[SEG]']}); "
            "the tokenizer and the config disagree about K"
        )
    recorded = (config.image_token_id, config.im_start_token_id, config.im_end_token_id, config.seg_token_ids)
    if recorded != (ids.image, ids.im_start, ids.im_end, list(ids.seg)):
        raise ValueError(f"{folder}: the tokenizer's PixelLM token ids {ids} differ from those in config.json {recorded}")
    if len(tokenizer) > config.text_config.vocab_size:
        raise ValueError(f"{folder}: the tokenizer has {len(tokenizer)} tokens but the LLM only {config.text_config.vocab_size} embeddings")


__all__ = ["check_architecture", "check_tokenizer", "load_pretrained"]
