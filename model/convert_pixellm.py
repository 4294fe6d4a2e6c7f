"""Convert the original PixelLM's merged ``hf_model`` folder into a PixelLM folder of ours.

    python -m model.convert_pixellm --src PixelLM-7B/hf_model --clip clip-vit-large-patch14-336 --out OUT [--dtype auto]

Input (``--src``): ``config.json`` (``model_type`` "llava" with the original's fields), weights
(``pytorch_model.bin`` or safetensors, possibly sharded with an ``*.index.json``) and the tokenizer
(``tokenizer.model`` + ``tokenizer_config.json``, or ``tokenizer.json``). CLIP is not in the checkpoint (the
original's merge script drops every ``vision_tower`` key): ``--clip`` is a Hugging Face CLIPVisionModel or
CLIPModel folder at 336 px (openai/clip-vit-large-patch14-336).

Output (``--out``): safetensors weights + ``config.json`` (PixelLMConfig) that
``PixelLMForCausalLM.from_pretrained`` loads, the tokenizer and ``preprocessor_config.json``. ``--dtype auto``
stores EVERY part in the dtype of the source's LLM weights (bfloat16 for the released weights), the
float32 CLIP included: that rounds CLIP to bf16 (mask logits move by about 1e-2, a few hundred mask pixels
flip). ``--dtype float32`` keeps everything in float32 and reproduces the original's float32 numbers.

Compat switches written to the config / processor, so that our model computes what the original computed:

* ``compat_clip_pos_embed_shift=True``: CLIP's position grid is resized to 448 px as the original did:
  P[0 : g*g] (CLS row included) is resized as the grid and the last patch row is appended at the end
  (``model.vision_tower.resize_position_embeddings(compat_shift=True)``).
* ``compat_fixed_fusion=True``: seg-token fusion fixed at 1/K per token (K = 6: half the mean of a level's
  3 states) and 1/2 per decoder level, the constants the original used (never trained, never saved).
* ``preprocessor_config.json``: PixelLMImageProcessor with the SAM/ImageNet statistics (SAM_MEAN/SAM_STD),
  which the original applied to its padded 448 px CLIP input, and ``alpha="drop"``: the original read
  images with ``cv2.imread``, which drops an alpha channel.

Unchanged by design (already the same in both): the predicting-state gathering (the state *before* each seg
token), the level split {0,1,2}/{3,4,5}, the 16x16 bilinear pooling of the LLM image tokens, CLIP layers
-2 and -11, the frozen random neck and prompt-encoder values (they are copied).

Key mapping (original -> ours; see KEY_RULES): ``model.{embed_tokens,layers,norm}`` -> ``language_model.model.*``,
``lm_head`` -> ``language_model.lm_head``, ``model.{mm_projector,out_mm_projector}`` -> same names,
``model.text_hidden_fcs.0.{0,2}`` -> ``seg_codebook.text_hidden_fcs.{0,2}``, ``model.image_feature_neck.N`` ->
``image_feature_neck.layers.N``, ``model.prompt_encoder.no_mask_embed`` -> ``pixel_decoder.no_mask_embed``,
``model.prompt_encoder.pe_layer`` -> ``pixel_decoder.pe_layers.0``, ``model.mask_decoder.pe1`` ->
``pixel_decoder.pe_layers.1``, ``model.mask_decoder.output_hypernetworks_mlps.0`` ->
``pixel_decoder.output_hypernetwork``, ``model.mask_decoder.{transformer,iou_token,mask_tokens,level_embed,
output_upscaling,upsample_2x}`` -> ``pixel_decoder.*``. Keys whose values cannot change the output are
dropped by the explicit list DROPPED_KEYS (each with its reason). Any other key, or any of our tensors left
unfilled, is an error.

Vocabulary: the original's is base + [SEG0..5] + <im_start> + <im_end>; those ids are kept. Our ``<image>``
placeholder is appended (id = old vocabulary size); its embedding and lm_head rows are the mean of the
existing rows. It is only ever replaced by image features, and generation never emits it.

Tokenizer: read as the original's slow LLaMA tokenizer read it (``model.tokenization.load_tokenizer``: a fresh
"▁" before every piece of text between added tokens), and its seg and image-bracket tokens re-registered in
place (same ids) with the original's whitespace stripping on both sides (``model.tokens``). Prompts built by
``model.conversation.tokenize_conversation`` then have exactly the original's ids, and the saved folder
reloads with the same behaviour.

Known difference in inference (see docs/released_weights.md): the original ran without a KV cache, re-running
CLIP and the whole sequence at every step; ours caches. In float32 both give the same greedy tokens.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path

import torch
from huggingface_hub import save_torch_state_dict
from transformers import PreTrainedTokenizerBase

from .configuration_pixellm import PixelLMConfig
from .llava_loading import llama_config_from_fields, load_clip
from .model_folder import iter_checkpoint, read_config, staged_folder
from .modeling_pixellm import PixelLMForCausalLM
from .pixel_decoder import PixelDecoder
from .processing_pixellm import SAM_MEAN, SAM_STD, PixelLMImageProcessor
from .seg_codebook import SegCodebook
from .tokenization import load_tokenizer
from .tokens import IM_END_TOKEN, IM_START_TOKEN, PixelLMTokenIds, add_pixellm_tokens, seg_token_names

logger = logging.getLogger(__name__)

# Values PixelLMForCausalLM.__init__ of the original forces whatever its config says.
ORIGINAL_FORCED = {
    "image_feature_scale_num": 2,
    "resize_vision_tower_size": 448,
    "mm_projector_hidden_dim": 2,
    "mm_projector_out_dim": 1,
}
ORIGINAL_SECOND_LEVEL_LAYER = -11
ORIGINAL_LLM_GRID = 16
# The original hard-codes patch 14 in its ViT padding mask and prompt-encoder grid (448 // 14 = 32): it runs no other CLIP.
ORIGINAL_PATCH_SIZE = 14
ORIGINAL_DECODER_HEADS = 8

# (pattern, reason): keys of the original whose values cannot change its output.
DROPPED_KEYS: tuple[tuple[str, str], ...] = (
    (r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$", "rotary frequencies, recomputed from rope_theta"),
    (r"^model\.prompt_encoder\.point_embeddings\.\d+\.weight$", "point-prompt embeddings: PixelLM passes no points"),
    (r"^model\.prompt_encoder\.not_a_point_embed\.weight$", "padding-point embedding: PixelLM passes no points"),
    (r"^model\.prompt_encoder\.mask_downscaling\..+$", "mask-prompt encoder: PixelLM passes no mask prompt (dense = no_mask_embed)"),
    (r"^model\.mask_decoder\.output_hypernetworks_mlps\.[1-9]\d*\..+$", "hypernetworks of mask tokens 1..3: only mask token 0 is decoded"),
    (r"^model\.mask_decoder\.iou_prediction_head\..+$", "IoU head: its prediction is never used"),
    (r"^model\.vision_tower\..+$", "CLIP: taken from --clip (the original's merge script drops these keys)"),
)

# (pattern, replacement): original key -> our key.
KEY_RULES: tuple[tuple[str, str], ...] = (
    (r"^model\.(embed_tokens|layers|norm)\.(.+)$", r"language_model.model.\1.\2"),
    (r"^lm_head\.(.+)$", r"language_model.lm_head.\1"),
    (r"^model\.(mm_projector|out_mm_projector)\.([02])\.(weight|bias)$", r"\1.\2.\3"),
    (r"^model\.text_hidden_fcs\.0\.([02])\.(weight|bias)$", r"seg_codebook.text_hidden_fcs.\1.\2"),
    (r"^model\.image_feature_neck\.(\d+)\.(.+)$", r"image_feature_neck.layers.\1.\2"),
    (r"^model\.prompt_encoder\.no_mask_embed\.weight$", r"pixel_decoder.no_mask_embed.weight"),
    (r"^model\.prompt_encoder\.pe_layer\.(positional_encoding_gaussian_matrix)$", r"pixel_decoder.pe_layers.0.\1"),
    (r"^model\.mask_decoder\.pe1\.(positional_encoding_gaussian_matrix)$", r"pixel_decoder.pe_layers.1.\1"),
    (r"^model\.mask_decoder\.output_hypernetworks_mlps\.0\.(.+)$", r"pixel_decoder.output_hypernetwork.\1"),
    (
        r"^model\.mask_decoder\.(transformer|iou_token|mask_tokens|level_embed|output_upscaling|upsample_2x)\.(.+)$",
        r"pixel_decoder.\1.\2",
    ),
)
# Our tensors with one row per token: the appended <image> row is the mean of the existing rows.
VOCAB_KEYS = ("language_model.model.embed_tokens.weight", "language_model.lm_head.weight")
DTYPE_NAMES = ("bfloat16", "float16", "float32")


def map_key(key: str) -> str | None:
    """Our key for an original key; None when the key is on DROPPED_KEYS; ValueError when neither."""
    for pattern, _ in DROPPED_KEYS:
        if re.match(pattern, key):
            return None
    for pattern, replacement in KEY_RULES:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key)
    raise ValueError(
        f"original key {key!r} is neither mapped (KEY_RULES) nor on the dropped list (DROPPED_KEYS) of "
        "model/convert_pixellm.py: this checkpoint is not in the layout of the released PixelLM weights"
    )


# -- tokenizer ------------------------------------------------------------------------------------------------
def count_seg_tokens(tokenizer: PreTrainedTokenizerBase, src: str) -> int:
    """K: the number of [SEG0], [SEG1], ... tokens in the original's tokenizer ([SEG] alone: K = 1)."""
    vocab = tokenizer.get_vocab()
    if "[SEG]" in vocab:
        return 1
    k = 0
    while f"[SEG{k}]" in vocab:
        k += 1
    if k == 0:
        raise ValueError(f"the tokenizer in {src} has no [SEG0]... tokens: it is not a PixelLM tokenizer")
    return k


def convert_tokenizer(src: str, vocab_rows: int) -> tuple[PreTrainedTokenizerBase, PixelLMTokenIds, int]:
    """Load the original's tokenizer as it was trained (``model.tokenization.load_tokenizer``), re-register its
    seg and image-bracket tokens with the original's whitespace stripping (same ids), append <image>.

    Returns (tokenizer, token ids, K). ``vocab_rows`` is the original's embedding row count, which must equal
    its tokenizer's length.
    """
    tokenizer = load_tokenizer(src)
    if len(tokenizer) != vocab_rows:
        raise ValueError(
            f"{src}: the tokenizer has {len(tokenizer)} tokens but model.embed_tokens has {vocab_rows} rows; the original "
            "resized its embeddings to len(tokenizer), so the folder's tokenizer and weights do not belong together"
        )
    k = count_seg_tokens(tokenizer, src)
    names = [*seg_token_names(k), IM_START_TOKEN, IM_END_TOKEN]
    missing = [n for n in names if n not in tokenizer.get_vocab()]
    if missing:
        raise ValueError(f"the tokenizer in {src} lacks {missing}: the released PixelLM tokenizers hold them (mm_use_im_start_end)")
    before = {n: tokenizer.convert_tokens_to_ids(n) for n in names}
    token_ids = add_pixellm_tokens(tokenizer, k)
    after = {n: tokenizer.convert_tokens_to_ids(n) for n in names}
    if after != before or len(tokenizer) != vocab_rows + 1 or token_ids.image != vocab_rows:
        raise RuntimeError(
            f"adding <image> renumbered the original's tokens ({before} -> {after}, image id {token_ids.image}, "
            f"{len(tokenizer)} tokens for {vocab_rows} rows)"
        )
    return tokenizer, token_ids, k


# -- config ------------------------------------------------------------------------------------------------------
def check_original_config(config: dict, src: str) -> None:
    """Fail on config values the released weights never had and our model cannot express."""
    path = f"{src}/config.json"
    if config.get("model_type") not in ("llava", "llava_llama"):
        raise ValueError(f"{path}: model_type {config.get('model_type')!r}, expected 'llava' (the original's merged hf_model folder)")
    for name, value in ORIGINAL_FORCED.items():
        if name in config and config[name] != value:
            logger.warning("%s: %s=%s, but the original forces %s whatever the file says; using %s", path, name, config[name], value, value)
    checks = {
        "mm_vision_select_feature": "patch",
        "mm_use_im_start_end": True,
        "tie_word_embeddings": False,
    }
    for name, expected in checks.items():
        if config.get(name, expected) != expected:
            raise ValueError(f"{path}: {name}={config[name]!r}; the converter supports only {expected!r} (the released weights' value)")


def decoder_options(shapes: dict[str, tuple[int, ...]]) -> dict:
    """Decoder sizes read off the checkpoint's tensor shapes (so non-standard sizes convert too)."""
    depth = len({k.split(".")[5] for k in shapes if k.startswith("model.mask_decoder.transformer.0.layers.")})
    dim = shapes["model.mask_decoder.iou_token.weight"][1]
    return {
        "out_dim": shapes["model.text_hidden_fcs.0.2.weight"][0],
        "decoder_depth": depth,
        "decoder_num_heads": ORIGINAL_DECODER_HEADS,
        "decoder_mlp_dim": shapes["model.mask_decoder.transformer.0.layers.0.mlp.lin1.weight"][0],
        "decoder_attention_downsample": dim // shapes["model.mask_decoder.transformer.0.layers.0.cross_attn_token_to_image.q_proj.weight"][0],
        "num_mask_tokens": shapes["model.mask_decoder.mask_tokens.weight"][0],
    }


# -- conversion -------------------------------------------------------------------------------------------------
def convert(src: str, clip: str, out: str, dtype: str = "auto") -> Path:
    """Convert the original's ``src`` folder (+ the ``clip`` folder) into a PixelLM folder at ``out``."""
    original = read_config(src)
    check_original_config(original, src)
    source = dict(iter_checkpoint(src))
    shapes = {k: tuple(v.shape) for k, v in source.items()}
    if "model.embed_tokens.weight" not in source:
        raise ValueError(f"{src}: no model.embed_tokens.weight in the weights: not a LLaVA-LLaMA checkpoint")
    target_dtype = source["model.embed_tokens.weight"].dtype if dtype == "auto" else getattr(torch, dtype)
    vocab_rows = source["model.embed_tokens.weight"].shape[0]
    tokenizer, token_ids, k = convert_tokenizer(src, vocab_rows)
    scale_num = ORIGINAL_FORCED["image_feature_scale_num"]
    if k % scale_num:
        raise ValueError(f"{src}: the tokenizer has K = {k} seg tokens, not a multiple of image_feature_scale_num = {scale_num}")

    image_size = ORIGINAL_FORCED["resize_vision_tower_size"]
    vision = load_clip(clip, image_size, compat_shift=True)
    mm_hidden = original.get("mm_hidden_size", vision.config.hidden_size)
    if mm_hidden != vision.config.hidden_size:
        raise ValueError(f"{src}/config.json: mm_hidden_size {mm_hidden} but the CLIP in {clip} is {vision.config.hidden_size} wide")
    if vision.config.num_hidden_layers < -ORIGINAL_SECOND_LEVEL_LAYER:
        raise ValueError(f"the CLIP in {clip} has {vision.config.num_hidden_layers} layers; decoder level 1 reads layer {ORIGINAL_SECOND_LEVEL_LAYER}")
    if vision.config.patch_size != ORIGINAL_PATCH_SIZE:
        raise ValueError(
            f"the CLIP in {clip} has patch size {vision.config.patch_size}; the original PixelLM hard-codes patch "
            f"{ORIGINAL_PATCH_SIZE} (a {image_size // ORIGINAL_PATCH_SIZE}x{image_size // ORIGINAL_PATCH_SIZE} grid at {image_size} px) "
            f"and cannot run it: pass the patch-{ORIGINAL_PATCH_SIZE} CLIP the checkpoint was trained with (e.g. openai/clip-vit-large-patch14-336)"
        )
    grid = image_size // ORIGINAL_PATCH_SIZE
    config = PixelLMConfig(
        vision_config=vision.config.to_dict(),
        text_config=llama_config_from_fields(original, vocab_rows + 1).to_dict(),
        seg_token_num=k // scale_num,
        image_feature_scale_num=scale_num,
        vision_feature_layers=[original.get("mm_vision_select_layer", -2), ORIGINAL_SECOND_LEVEL_LAYER],
        image_token_pool=grid // ORIGINAL_LLM_GRID,
        mm_projector_hidden_mult=ORIGINAL_FORCED["mm_projector_hidden_dim"],
        compat_clip_pos_embed_shift=True,
        compat_fixed_fusion=True,
        image_token_id=token_ids.image,
        im_start_token_id=token_ids.im_start,
        im_end_token_id=token_ids.im_end,
        seg_token_ids=list(token_ids.seg),
        **decoder_options(shapes),
    )
    config.dtype = target_dtype

    state = build_state(source, vision.state_dict(), config)
    out_path = Path(out)
    with staged_folder(out_path) as tmp:
        save_torch_state_dict({k: v.to(target_dtype).contiguous() for k, v in state.items()}, tmp, max_shard_size="5GB")
        config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        PixelLMImageProcessor(image_size=image_size, image_mean=SAM_MEAN, image_std=SAM_STD, alpha="drop").save_pretrained(tmp)
    logger.info("converted %s (+ CLIP %s) to %s: %d tensors, K=%d, vocabulary %d", src, clip, out_path, len(state), k, vocab_rows + 1)
    return out_path


def build_state(source: dict[str, torch.Tensor], clip_state: dict[str, torch.Tensor], config: PixelLMConfig) -> dict[str, torch.Tensor]:
    """Our complete state dict from the original's tensors, the resized CLIP and the fixed fusion constants.

    Every source key is mapped or dropped (DROPPED_KEYS); every tensor of our model must be filled with the
    right shape, else a ValueError lists what is wrong.
    """
    with torch.device("meta"):
        expected = PixelLMForCausalLM(config).state_dict()
    state: dict[str, torch.Tensor] = {}
    problems = []
    for key, tensor in source.items():
        ours = map_key(key)
        if ours is None:
            continue
        if ours not in expected:
            problems.append(f"{key} -> {ours}: our model has no such tensor")
            continue
        if ours in VOCAB_KEYS:
            tensor = torch.cat([tensor, tensor.float().mean(0, keepdim=True).to(tensor.dtype)], dim=0)
        state[ours] = tensor
    state.update({f"vision_tower.{k}": v for k, v in clip_state.items() if f"vision_tower.{k}" in expected})
    # The fixed fusion weights are constants of our modules (compat_fixed_fusion); take them from the modules.
    state["seg_codebook.token_weights"] = SegCodebook(config).token_weights
    state["pixel_decoder.scale_weights"] = PixelDecoder(config).scale_weights
    for key, tensor in state.items():
        if key in expected and tuple(tensor.shape) != tuple(expected[key].shape):
            problems.append(f"{key}: shape {tuple(tensor.shape)}, our model expects {tuple(expected[key].shape)}")
    unfilled = sorted(set(expected) - set(state))
    if unfilled:
        problems.append(f"our tensors left unfilled: {unfilled}")
    if problems:
        raise ValueError("the checkpoint does not convert cleanly:\n  " + "\n  ".join(problems))
    return state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, help="the original's merged folder (PixelLM-7B/hf_model)")
    parser.add_argument("--clip", required=True, help="CLIP ViT-L/14-336 folder (CLIPVisionModel or CLIPModel)")
    parser.add_argument("--out", required=True, help="output folder (our PixelLM format)")
    parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPE_NAMES], help="stored dtype of every part. auto = the source LLM's (bfloat16 for the released weights), CLIP included: CLIP is rounded from float32 to bf16 (mask logits move by ~1e-2). float32 reproduces the original's float32 numbers")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = convert(args.src, args.clip, args.out, args.dtype)
    with open(out / "config.json") as f:
        saved = json.load(f)
    print(f"wrote {out}: seg ids {saved['seg_token_ids']}, <image> id {saved['image_token_id']}; chat with: python chat.py --version {out}")


if __name__ == "__main__":
    main()
