"""Build a fresh PixelLM for training from a LLaVA starting point (or reload one of ours).

Three folder layouts are recognised from ``config.json``:

* ``llava_v1``: the original LLaVA release (LLaVA-Lightning-7B-v1-1, llava-llama-2-13b-chat-lightning-preview,
  llava-v1.5-7b in its original format): ``model_type`` "llava"/"llava_llama" with LLaMA fields at the top
  level and ``mm_vision_tower``; weights ``model.*`` + ``lm_head.*`` (a LlamaForCausalLM) plus
  ``model.mm_projector.*``. CLIP is not in the folder: it comes from ``vision_tower`` (or the config's
  ``mm_vision_tower``). A plain LLaMA folder (``model_type`` "llama") loads the same way.
* ``llava_hf``: ``llava-hf/llava-1.5-7b-hf`` and friends: ``model_type`` "llava" with ``text_config`` and
  ``vision_config``; weights either in the older layout (``language_model.model.*``,
  ``language_model.lm_head.*``, ``vision_tower.[vision_model.]*``, ``multi_modal_projector.*``) or the newer
  one (``model.language_model.*``, ``lm_head.*``, ``model.vision_tower.[vision_model.]*``,
  ``model.multi_modal_projector.*``). CLIP comes from the folder itself.
* ``pixellm``: a folder of ours (``model_type`` "pixellm"), loaded as it is.

A LLaVA projector initialises our ``mm_projector`` only where every shape matches (ours is
Linear(C_vis -> mult*H) - GELU - Linear(mult*H -> H)); otherwise it is freshly initialised and a log line
says so. CLIP is resized to ``image_size`` with ``model.vision_tower.resize_position_embeddings``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, PreTrainedTokenizerBase
from transformers.initialization import no_init_weights

from .configuration_pixellm import PixelLMConfig
from .model_folder import iter_checkpoint
from .modeling_pixellm import PixelLMForCausalLM
from .processing_pixellm import PixelLMImageProcessor
from .tokenization import load_tokenizer
from .tokens import add_pixellm_tokens
from .vision_tower import resize_position_embeddings

logger = logging.getLogger(__name__)

TRAINING_IMAGE_SIZE = 448
# Decoder level 1 reads this CLIP hidden state in the original PixelLM (hard-coded there).
SECOND_LEVEL_LAYER = -11
# Config fields of a LLaVA-v1 config.json that describe its LLaMA.
LLAMA_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "hidden_act", "max_position_embeddings", "rms_norm_eps", "bos_token_id", "eos_token_id", "pad_token_id",
    "attention_bias", "mlp_bias", "head_dim",
)


def load_clip(folder: str | os.PathLike, image_size: int, compat_shift: bool) -> CLIPVisionModel:
    """A CLIPVisionModel / CLIPModel folder -> a float32 CLIPVisionModel resized to ``image_size``."""
    try:
        clip = CLIPVisionModel.from_pretrained(str(folder), dtype=torch.float32)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"could not load a CLIP vision tower from {folder!r}: expected a local Hugging Face CLIPVisionModel or CLIPModel "
            f"folder (e.g. a download of openai/clip-vit-large-patch14-336): {err}"
        ) from err
    return resize_position_embeddings(clip, image_size, compat_shift=compat_shift)


def clip_from_state(vision_config: dict, state: dict[str, torch.Tensor], image_size: int, compat_shift: bool) -> CLIPVisionModel:
    """A CLIPVisionModel built from ``vision_config`` and its state (keys without prefix), resized to ``image_size``."""
    config = CLIPVisionConfig(**{k: v for k, v in vision_config.items() if k != "model_type"})
    clip = CLIPVisionModel(config).float()
    missing, unexpected = clip.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    missing = [k for k in missing if "position_ids" not in k]
    if missing or unexpected:
        raise ValueError(f"the folder's vision tower does not match its vision_config: missing {missing}, unexpected {unexpected}")
    return resize_position_embeddings(clip, image_size, compat_shift=compat_shift)


# -- key layouts ---------------------------------------------------------------------------------------------
def llava_hf_key(key: str) -> tuple[str, str]:
    """Split a llava-hf key into (part, key inside the part); part is 'llm', 'clip' or 'projector'.

    ``llm`` keys come back in LlamaForCausalLM form (``model.*``, ``lm_head.*``); ``clip`` keys without the
    ``vision_model.`` prefix; both the older and the newer llava-hf layouts are understood.
    """
    rules = (
        (r"^language_model\.model\.(.+)$", "llm", r"model.\1"),
        (r"^language_model\.lm_head\.(.+)$", "llm", r"lm_head.\1"),
        (r"^model\.language_model\.(.+)$", "llm", r"model.\1"),
        (r"^lm_head\.(.+)$", "llm", r"lm_head.\1"),
        (r"^(?:model\.)?vision_tower\.(?:vision_model\.)?(.+)$", "clip", r"\1"),
        (r"^(?:model\.)?multi_modal_projector\.(.+)$", "projector", r"\1"),
    )
    for pattern, part, replacement in rules:
        if re.match(pattern, key):
            return part, re.sub(pattern, replacement, key)
    raise ValueError(
        f"unexpected llava-hf weight {key!r}: expected language_model.*, model.language_model.*, lm_head.*, "
        "[model.]vision_tower.*, or [model.]multi_modal_projector.*"
    )


def llava_v1_key(key: str) -> tuple[str, str]:
    """Split an original-LLaVA key into (part, key); part is 'llm', 'projector' or 'vision_tower' (skipped)."""
    if key.startswith("model.mm_projector."):
        return "projector", key[len("model.mm_projector."):]
    if key.startswith("model.vision_tower."):
        return "vision_tower", key
    if key.startswith(("model.", "lm_head.")):
        return "llm", key
    raise ValueError(f"unexpected LLaVA weight {key!r}: expected model.*, lm_head.* or model.mm_projector.*")


def llava_hf_projector_as_ours(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """multi_modal_projector linear_1/linear_2 -> our Sequential indices 0/2."""
    names = {"linear_1": "0", "linear_2": "2"}
    return {re.sub(r"^linear_([12])", lambda m: names[m.group(0)], k): v for k, v in state.items()}


def llava_v1_projector_as_ours(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LLaVA v1's single Linear (``weight``/``bias``) has no counterpart; LLaVA-1.5's ``0.*``/``2.*`` MLP keeps its names."""
    return {k: v for k, v in state.items() if re.match(r"^[02]\.(weight|bias)$", k)}


# -- assembling the model ---------------------------------------------------------------------------------
@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_uninitialised(config: PixelLMConfig, dtype: torch.dtype) -> PixelLMForCausalLM:
    """PixelLM in ``dtype`` with the CLIP and LLM weights left uninitialised (they are loaded next) and every
    PixelLM-specific module (projectors, neck, codebook, decoder) at PyTorch's default init."""
    with no_init_weights(), default_dtype(dtype):
        model = PixelLMForCausalLM(config)
    with default_dtype(dtype):
        for name, child in model.named_children():
            if name in ("vision_tower", "language_model"):
                continue
            for module in child.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
    return model


@torch.no_grad()
def copy_into(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Copy ``state`` into ``module``'s parameters and buffers; every key and shape must match exactly."""
    own = module.state_dict()
    unexpected = sorted(set(state) - set(own))
    missing = sorted(k for k in set(own) - set(state) if "position_ids" not in k and "inv_freq" not in k)
    if unexpected or missing:
        raise ValueError(f"{what}: keys do not match our model: missing {missing[:10]}, unexpected {unexpected[:10]}")
    for key, value in state.items():
        if own[key].shape != value.shape:
            raise ValueError(f"{what}: {key} has shape {tuple(value.shape)}, our model expects {tuple(own[key].shape)}")
        own[key].copy_(value)


def projector_shapes_match(projector: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    own = projector.state_dict()
    return set(own) == set(state) and all(own[k].shape == state[k].shape for k in own)


def default_feature_layers(select_layer: int, image_feature_scale_num: int) -> list[int]:
    """CLIP hidden states feeding the decoder levels: the LLaVA select layer, then layer -11 (the original's)."""
    layers = [select_layer, SECOND_LEVEL_LAYER]
    if image_feature_scale_num > len(layers):
        raise ValueError(f"image_feature_scale_num {image_feature_scale_num}: at most {len(layers)} decoder levels are supported")
    return layers[:image_feature_scale_num]


def llama_config_from_fields(config: dict, vocab_size: int | None = None) -> LlamaConfig:
    """The LLaMA fields at the top level of an original LLaVA or PixelLM config.json as a LlamaConfig (untied
    lm_head); ``vocab_size`` replaces the file's."""
    if config.get("rope_scaling"):
        raise ValueError(f"rope_scaling {config['rope_scaling']} in config.json is not supported (the released LLaVA and PixelLM weights have none)")
    fields = {k: config[k] for k in LLAMA_FIELDS if config.get(k) is not None}
    if vocab_size is not None:
        fields["vocab_size"] = vocab_size
    rope = {"rope_type": "default", "rope_theta": float(config.get("rope_theta", 10000.0))}
    return LlamaConfig(**fields, rope_parameters=rope, tie_word_embeddings=False)


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> None:
    """LLaVA's convention: pad with <unk> when the tokenizer has no pad token."""
    if tokenizer.pad_token is None:
        if tokenizer.unk_token is None:
            raise ValueError("the tokenizer has neither a pad nor an unk token: add a pad token to it first")
        tokenizer.pad_token = tokenizer.unk_token
        logger.info("tokenizer: no pad token, padding with %s (LLaVA's convention)", tokenizer.unk_token)


def assemble(
    llm_config: LlamaConfig,
    llm_state: dict[str, torch.Tensor],
    clip: CLIPVisionModel,
    projector_state: dict[str, torch.Tensor],
    tokenizer: PreTrainedTokenizerBase,
    seg_token_num: int,
    image_feature_scale_num: int,
    select_layer: int,
    dtype: torch.dtype,
    source: str,
    config_overrides: dict,
) -> PixelLMForCausalLM:
    """Build PixelLM around a loaded LLM state and a resized CLIP, add the PixelLM tokens, resize the embeddings."""
    ensure_pad_token(tokenizer)
    config = PixelLMConfig(
        vision_config=clip.config.to_dict(),
        text_config=llm_config.to_dict(),
        seg_token_num=seg_token_num,
        image_feature_scale_num=image_feature_scale_num,
        vision_feature_layers=default_feature_layers(select_layer, image_feature_scale_num),
        **config_overrides,
    )
    config.set_token_ids(add_pixellm_tokens(tokenizer, config.tokens_per_target))
    model = build_uninitialised(config, dtype)
    copy_into(model.language_model, llm_state, f"{source}: LLM weights")
    copy_into(model.vision_tower, clip.state_dict(), f"{source}: CLIP weights")
    if projector_state and projector_shapes_match(model.mm_projector, projector_state):
        copy_into(model.mm_projector, projector_state, f"{source}: projector")
        logger.info("mm_projector: initialised from the LLaVA projector of %s", source)
    else:
        shapes = {k: tuple(v.shape) for k, v in projector_state.items()}
        logger.info(
            "mm_projector: freshly initialised; the LLaVA projector of %s (%s) does not match ours (Linear %d->%d, GELU, Linear %d->%d)",
            source, shapes or "absent", clip.config.hidden_size, config.mm_projector_hidden_mult * llm_config.hidden_size,
            config.mm_projector_hidden_mult * llm_config.hidden_size, llm_config.hidden_size,
        )
    logger.info("out_mm_projector, image_feature_neck, seg_codebook, pixel_decoder: freshly initialised")
    if len(tokenizer) > llm_config.vocab_size:
        model.resize_token_embeddings(len(tokenizer))
        logger.info("embeddings resized %d -> %d rows for the PixelLM tokens", llm_config.vocab_size, len(tokenizer))
    model.config.text_config.vocab_size = model.get_input_embeddings().weight.shape[0]
    return model


def load_llava_v1(
    version: str, config: dict, vision_tower: str | None, image_size: int, compat_shift: bool
) -> tuple[LlamaConfig, dict[str, torch.Tensor], CLIPVisionModel, dict[str, torch.Tensor], int]:
    """-> (LLM config, LLM state, resized CLIP, projector state, CLIP select layer) of an original-LLaVA folder."""
    clip_source = vision_tower or config.get("mm_vision_tower")
    if not clip_source:
        raise ValueError(f"{version}/config.json names no mm_vision_tower: pass the CLIP folder with --vision-tower")
    llm_state, projector, skipped = {}, {}, 0
    for key, tensor in iter_checkpoint(version):
        part, inner = llava_v1_key(key)
        if part == "llm":
            if not inner.endswith("rotary_emb.inv_freq"):
                llm_state[inner] = tensor
        elif part == "projector":
            projector[inner] = tensor
        else:
            skipped += 1
    if skipped:
        logger.info("%s: skipped %d model.vision_tower.* weights; CLIP comes from %s", version, skipped, clip_source)
    clip = load_clip(clip_source, image_size, compat_shift)
    mm_hidden = config.get("mm_hidden_size")
    if mm_hidden is not None and mm_hidden != clip.config.hidden_size:
        logger.info("%s: mm_hidden_size %s differs from the CLIP width %d of %s", version, mm_hidden, clip.config.hidden_size, clip_source)
    return llama_config_from_fields(config), llm_state, clip, llava_v1_projector_as_ours(projector), config.get("mm_vision_select_layer", -2)


def load_llava_hf(
    version: str, config: dict, image_size: int, compat_shift: bool
) -> tuple[LlamaConfig, dict[str, torch.Tensor], CLIPVisionModel, dict[str, torch.Tensor], int]:
    """-> (LLM config, LLM state, resized CLIP, projector state, CLIP select layer) of a llava-hf folder."""
    text, vision = config["text_config"], config["vision_config"]
    if text.get("model_type", "llama") != "llama" or vision.get("model_type", "clip_vision_model") != "clip_vision_model":
        raise ValueError(
            f"{version}/config.json: text_config is {text.get('model_type')!r} and vision_config {vision.get('model_type')!r}; "
            "only LLaMA + CLIP llava-hf models are supported"
        )
    strategy = config.get("vision_feature_select_strategy", "default")
    if strategy != "default":
        raise ValueError(f"{version}/config.json: vision_feature_select_strategy {strategy!r}; PixelLM drops the CLS token ('default')")
    select_layer = config.get("vision_feature_layer", -2)
    if not isinstance(select_layer, int):
        raise ValueError(f"{version}/config.json: vision_feature_layer {select_layer!r} must be one layer index")
    parts: dict[str, dict[str, torch.Tensor]] = {"llm": {}, "clip": {}, "projector": {}}
    for key, tensor in iter_checkpoint(version):
        part, inner = llava_hf_key(key)
        parts[part][inner] = tensor
    llm_config = LlamaConfig(**{k: v for k, v in text.items() if k != "model_type"})
    llm_config.tie_word_embeddings = bool(text.get("tie_word_embeddings", False))
    clip = clip_from_state(vision, parts["clip"], image_size, compat_shift)
    return llm_config, parts["llm"], clip, llava_hf_projector_as_ours(parts["projector"]), select_layer


def build_from_llava(
    folder: str,
    config: dict,
    layout: str,
    vision_tower: str | None,
    seg_token_num: int,
    image_feature_scale_num: int,
    dtype: torch.dtype,
    image_size: int,
    config_overrides: dict,
) -> tuple[PixelLMForCausalLM, PreTrainedTokenizerBase, PixelLMImageProcessor]:
    """A fresh PixelLM around the LLM (and, for llava-hf, the CLIP) of a LLaVA folder whose ``config.json`` is
    ``config`` and whose ``layout`` is "llava_v1" or "llava_hf" (``model.model_folder.detect_layout``).

    CLIP is resized to ``image_size`` (``compat_clip_pos_embed_shift`` in ``config_overrides`` selects the
    original's resize), the PixelLM tokens are added and the embeddings resized; every other module is freshly
    initialised. Returns (model in ``dtype`` on the CPU, tokenizer, image processor with CLIP normalisation).
    """
    compat_shift = bool(config_overrides.get("compat_clip_pos_embed_shift", False))
    if layout == "llava_hf":
        if vision_tower:
            logger.warning("%s is a llava-hf folder with its own CLIP: --vision-tower %s is ignored", folder, vision_tower)
        llm_config, llm_state, clip, projector, select_layer = load_llava_hf(folder, config, image_size, compat_shift)
    else:
        llm_config, llm_state, clip, projector, select_layer = load_llava_v1(folder, config, vision_tower, image_size, compat_shift)
    tokenizer = load_tokenizer(folder)
    model = assemble(
        llm_config, llm_state, clip, projector, tokenizer, seg_token_num, image_feature_scale_num, select_layer, dtype,
        folder, config_overrides,
    )
    logger.info(
        "built PixelLM from the %s folder %s: %.1fM parameters, %s, K=%d seg tokens, CLIP %d px",
        layout, folder, sum(p.numel() for p in model.parameters()) / 1e6, dtype, model.config.tokens_per_target, image_size,
    )
    return model, tokenizer, PixelLMImageProcessor(image_size=image_size)


__all__ = ["build_from_llava", "llama_config_from_fields", "load_clip"]
