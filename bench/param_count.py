"""Parameter counts of every model preset in ``configs/models/``, from the config alone.

No weights are allocated. The vision tower and the LLM are built from their transformers classes on
the ``meta`` device and also counted analytically (the two must agree). The PixelLM parts
(``mm_projector``, ``out_mm_projector``, ``text_hidden_fcs``, ``image_feature_neck``, pixel decoder)
are counted analytically from the module shapes (``model/pixel_decoder.py``, ``model/seg_codebook.py``,
``model/modeling_pixellm.py``) and the original's module inventory (the 7B figures asserted in
``tests/test_configs.py``); the model code is checked against these numbers.
Random-Fourier positional encodings are buffers and are not counted.

Run: ``make bench`` or ``python -m bench.param_count``. Prints a table and writes
``bench/results/param_count.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import AutoModelForCausalLM, CLIPVisionConfig, CLIPVisionModel, PreTrainedConfig

from bench.report import text_table, write_results
from model import PixelLMConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
PRESETS_DIR = REPO_ROOT / "configs" / "models"
RESULTS_FILE = Path(__file__).resolve().parent / "results" / "param_count.json"
# <image>, <im_start>, <im_end> join the K seg tokens as new rows of embed_tokens and lm_head (model/tokens.py).
NUM_IMAGE_TOKENS_ADDED = 3


def linear(in_features: int, out_features: int, bias: bool = True) -> int:
    return in_features * out_features + (out_features if bias else 0)


def layer_norm(dim: int) -> int:
    """LayerNorm / LayerNorm2d: weight and bias."""
    return 2 * dim


def conv_transpose_2x(in_channels: int, out_channels: int) -> int:
    """ConvTranspose2d(kernel 2, stride 2) with bias."""
    return in_channels * out_channels * 4 + out_channels


def mlp_projector(in_features: int, hidden_mult: int, hidden_size: int) -> int:
    """Linear(C_vis -> mult*H) - GELU - Linear(mult*H -> H): ``mm_projector`` and ``out_mm_projector``."""
    width = hidden_mult * hidden_size
    return linear(in_features, width) + linear(width, hidden_size)


def text_hidden_fcs(hidden_size: int, out_dim: int) -> int:
    """Linear(H -> H) - ReLU - Linear(H -> D)."""
    return linear(hidden_size, hidden_size) + linear(hidden_size, out_dim)


def image_feature_neck(hidden_size: int, out_dim: int) -> int:
    """Conv1x1(H -> D, no bias) - LayerNorm2d - Conv3x3(D -> D, no bias) - LayerNorm2d."""
    return hidden_size * out_dim + layer_norm(out_dim) + out_dim * out_dim * 9 + layer_norm(out_dim)


def attention(dim: int, downsample: int) -> int:
    """SAM attention: q, k, v project D -> D/downsample, out projects back, all with bias."""
    internal = dim // downsample
    return 3 * linear(dim, internal) + linear(internal, dim)


def two_way_transformer(dim: int, depth: int, mlp_dim: int, downsample: int) -> int:
    """SAM TwoWayTransformer: ``depth`` blocks, then a final token-to-image attention and its LayerNorm.

    A block: self-attention (no downsampling), token-to-image attention, MLP, image-to-token
    attention, and four LayerNorms.
    """
    block = (
        attention(dim, 1)
        + 2 * attention(dim, downsample)
        + linear(dim, mlp_dim)
        + linear(mlp_dim, dim)
        + 4 * layer_norm(dim)
    )
    return depth * block + attention(dim, downsample) + layer_norm(dim)


def hypernetwork_mlp(dim: int, out_features: int) -> int:
    """MLP(D -> D -> D -> out) with bias: the per-mask-token hypernetwork and the IoU head."""
    return linear(dim, dim) + linear(dim, dim) + linear(dim, out_features)


def pixel_decoder_parts(config: PixelLMConfig) -> dict[str, int]:
    """The multi-scale pixel decoder (``model/pixel_decoder.py``), one entry per component.

    ``original_structure`` sums the components the original's ``mask_decoder`` holds (its
    ``no_mask_embed`` lives in the prompt encoder and its fusion weights are unregistered).
    """
    dim, levels, masks = config.out_dim, config.image_feature_scale_num, config.num_mask_tokens
    upscaled = dim // 8
    parts = {
        "two_way_transformers": levels
        * two_way_transformer(
            dim, config.decoder_depth, config.decoder_mlp_dim, config.decoder_attention_downsample
        ),
        "iou_and_mask_tokens": (1 + masks) * dim,
        "level_embed": levels * dim,
        "output_upscaling": conv_transpose_2x(dim, upscaled) + layer_norm(upscaled),
        "level_upsample_2x": (levels - 1) * (conv_transpose_2x(dim, dim) + layer_norm(dim)),
        "output_hypernetworks_mlps": masks * hypernetwork_mlp(dim, upscaled),
        "iou_prediction_head": hypernetwork_mlp(dim, masks),
    }
    parts["original_structure"] = sum(parts.values())
    parts["no_mask_embed"] = dim
    parts["fusion_weights"] = 0 if config.compat_fixed_fusion else levels * config.seg_token_num + levels
    parts["total"] = parts["original_structure"] + parts["no_mask_embed"] + parts["fusion_weights"]
    return parts


def pixellm_part_counts(config: PixelLMConfig) -> dict[str, int]:
    """Parameters PixelLM adds around the vision tower and the LLM."""
    vision_width = config.vision_config.hidden_size
    hidden = config.text_config.hidden_size
    parts = {
        "mm_projector": mlp_projector(vision_width, config.mm_projector_hidden_mult, hidden),
        "out_mm_projector": mlp_projector(vision_width, config.mm_projector_hidden_mult, hidden),
        "text_hidden_fcs": text_hidden_fcs(hidden, config.out_dim),
        "image_feature_neck": image_feature_neck(hidden, config.out_dim),
        "pixel_decoder": pixel_decoder_parts(config)["total"],
    }
    parts["total"] = sum(parts.values())
    return parts


def clip_vision_analytic(config: CLIPVisionConfig) -> int:
    """CLIPVisionModel: patch conv (no bias), CLS and position embeddings, pre/post LayerNorms, encoder."""
    width, inter = config.hidden_size, config.intermediate_size
    positions = (config.image_size // config.patch_size) ** 2 + 1
    embeddings = config.num_channels * config.patch_size**2 * width + width + positions * width
    layer = 4 * linear(width, width) + linear(width, inter) + linear(inter, width) + 2 * layer_norm(width)
    return embeddings + 2 * layer_norm(width) + config.num_hidden_layers * layer


def llama_analytic(config: PreTrainedConfig, vocab_size: int) -> int:
    """LlamaForCausalLM without biases: embeddings, decoder layers, final RMSNorm and lm_head."""
    hidden, inter = config.hidden_size, config.intermediate_size
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    q_width = config.num_attention_heads * head_dim
    kv_width = config.num_key_value_heads * head_dim
    attn = hidden * q_width * 2 + hidden * kv_width * 2
    layer = attn + 3 * hidden * inter + 2 * hidden
    heads = 1 if config.tie_word_embeddings else 2
    return heads * vocab_size * hidden + config.num_hidden_layers * layer + hidden


def meta_param_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_preset(preset: dict) -> dict:
    """All counts of one preset (a dict of ``PixelLMConfig`` keyword arguments)."""
    config = PixelLMConfig(**preset)
    with torch.device("meta"):
        vision = meta_param_count(CLIPVisionModel(config.vision_config))
        llm = meta_param_count(AutoModelForCausalLM.from_config(config.text_config))
    vision_analytic = clip_vision_analytic(config.vision_config)
    llm_analytic = llama_analytic(config.text_config, config.text_config.vocab_size)
    if (vision, llm) != (vision_analytic, llm_analytic):
        raise RuntimeError(
            f"meta-device counts (vision {vision}, llm {llm}) differ from the analytic ones "
            f"(vision {vision_analytic}, llm {llm_analytic}): update the formulas in bench/param_count.py"
        )
    added_tokens = config.tokens_per_target + NUM_IMAGE_TOKENS_ADDED
    vocab_resized = config.text_config.vocab_size + added_tokens
    llm_resized = llama_analytic(config.text_config, vocab_resized)
    pixellm = pixellm_part_counts(config)
    return {
        "vision_tower": vision,
        "llm": llm,
        "llm_vocab_size": config.text_config.vocab_size,
        "llm_with_pixellm_tokens": llm_resized,
        "llm_vocab_size_with_pixellm_tokens": vocab_resized,
        "pixellm_parts": pixellm,
        "pixel_decoder_parts": pixel_decoder_parts(config),
        "total": vision + llm_resized + pixellm["total"],
        "num_image_tokens": config.num_image_tokens,
        "tokens_per_target": config.tokens_per_target,
    }


def load_presets(directory: Path = PRESETS_DIR) -> dict[str, dict]:
    presets = {path.stem: json.loads(path.read_text()) for path in sorted(directory.glob("*.json"))}
    if not presets:
        raise FileNotFoundError(f"No model presets (*.json) in {directory}")
    return presets


def millions(n: int) -> str:
    return f"{n / 1e6:,.2f}M"


def format_table(results: dict[str, dict]) -> str:
    columns = [
        ("vision", lambda r: r["vision_tower"]),
        ("LLM", lambda r: r["llm"]),
        ("LLM+tok", lambda r: r["llm_with_pixellm_tokens"]),
        ("mm_proj", lambda r: r["pixellm_parts"]["mm_projector"]),
        ("out_proj", lambda r: r["pixellm_parts"]["out_mm_projector"]),
        ("txt_fcs", lambda r: r["pixellm_parts"]["text_hidden_fcs"]),
        ("neck", lambda r: r["pixellm_parts"]["image_feature_neck"]),
        ("decoder", lambda r: r["pixellm_parts"]["pixel_decoder"]),
        ("PixelLM", lambda r: r["pixellm_parts"]["total"]),
        ("total", lambda r: r["total"]),
    ]
    rows = [["preset", *(name for name, _ in columns)]]
    rows += [[preset, *(millions(get(r)) for _, get in columns)] for preset, r in results.items()]
    return text_table(rows)


def main() -> None:
    counts = {name: count_preset(preset) for name, preset in load_presets().items()}
    results = dict(sorted(counts.items(), key=lambda item: item[1]["total"]))
    print(format_table(results))
    print("LLM+tok: embed_tokens and lm_head resized for <image>, <im_start>, <im_end> and the K seg tokens.")
    write_results(RESULTS_FILE, results)


if __name__ == "__main__":
    main()
