"""The shipped configs: model presets, DeepSpeed JSONs, preprocessor JSONs, and the parameter counts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from bench.param_count import count_preset, image_feature_neck, mlp_projector, pixel_decoder_parts, text_hidden_fcs
from model import PixelLMConfig, PixelLMImageProcessor
from model.processing_pixellm import CLIP_MEAN, CLIP_STD, SAM_MEAN, SAM_STD

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRESETS = {"tiny": 64, "pixellm_7b": 256, "pixellm_13b": 256}  # preset -> image tokens per image


def load_json(path: Path) -> dict:
    with open(path) as f:
        return json.load(f)


def test_the_presets_are_exactly_the_documented_ones():
    assert sorted(p.stem for p in (CONFIGS / "models").glob("*.json")) == sorted(PRESETS)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_builds_a_consistent_config(name: str):
    preset = load_json(CONFIGS / "models" / f"{name}.json")
    config = PixelLMConfig(**preset)

    assert config.tokens_per_target == 6
    assert config.num_image_tokens == PRESETS[name]
    assert config.low_res_mask_size == 4 * config.vision_grid
    for key, value in preset["vision_config"].items():
        assert getattr(config.vision_config, key) == value, f"vision_config.{key} was not applied"
    for key, value in preset["text_config"].items():
        assert getattr(config.text_config, key) == value, f"text_config.{key} was not applied"

    vision, text = config.vision_config, config.text_config
    # hidden_states has num_hidden_layers + 1 entries; index -(L+1) would be the embeddings, not a layer.
    assert all(-vision.num_hidden_layers <= layer <= -1 for layer in config.vision_feature_layers)
    assert vision.hidden_size % vision.num_attention_heads == 0
    assert text.hidden_size % text.num_attention_heads == 0
    cross_attention_width = config.out_dim // config.decoder_attention_downsample
    assert cross_attention_width % config.decoder_num_heads == 0
    assert config.vision_grid % config.image_token_pool == 0
    assert text.max_position_embeddings >= config.num_image_tokens + 512


@pytest.mark.parametrize("name, hidden, layers, heads, inter", [("pixellm_7b", 4096, 32, 32, 11008), ("pixellm_13b", 5120, 40, 40, 13824)])
def test_released_sizes_use_clip_l14_at_448_and_llama2(name: str, hidden: int, layers: int, heads: int, inter: int):
    config = PixelLMConfig(**load_json(CONFIGS / "models" / f"{name}.json"))
    vision, text = config.vision_config, config.text_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads, vision.patch_size) == (1024, 24, 16, 14)
    assert vision.image_size == 448 and config.vision_grid == 32 and config.llm_grid == 16
    assert config.vision_feature_layers == [-2, -11]
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.intermediate_size) == (hidden, layers, heads, inter)
    assert text.vocab_size == 32000 and text.rms_norm_eps == 1e-5 and text.max_position_embeddings == 4096
    assert (config.out_dim, config.decoder_depth, config.decoder_num_heads, config.decoder_mlp_dim) == (256, 2, 8, 2048)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_names_only_declared_fields(name: str):
    # PretrainedConfig keeps unknown keyword arguments as attributes, so a misspelt key would go unnoticed.
    preset = load_json(CONFIGS / "models" / f"{name}.json")
    config = PixelLMConfig(**preset)
    assert set(preset) <= set(PixelLMConfig.__annotations__)
    assert set(preset["vision_config"]) <= set(type(config.vision_config)().to_dict())
    assert set(preset["text_config"]) <= set(type(config.text_config)().to_dict())


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_config_holds_the_training_recipe(stage: int):
    text = (CONFIGS / f"ds_zero{stage}.json").read_text()
    config = json.loads(text)
    assert '"auto"' not in text
    assert config["zero_optimization"]["stage"] == stage
    assert config["zero_optimization"]["contiguous_gradients"] and config["zero_optimization"]["overlap_comm"]
    optimizer = config["optimizer"]
    assert optimizer["type"] == "AdamW"
    assert optimizer["params"]["lr"] == 3e-4 and optimizer["params"]["betas"] == [0.9, 0.95]
    assert optimizer["params"]["weight_decay"] == 0.0
    scheduler = config["scheduler"]
    assert scheduler["type"] == "WarmupDecayLR"
    assert scheduler["params"]["warmup_max_lr"] == optimizer["params"]["lr"]
    assert scheduler["params"]["total_num_steps"] > scheduler["params"]["warmup_num_steps"]
    assert config["gradient_clipping"] == 1.0
    assert config["bf16"]["enabled"] and not config["fp16"]["enabled"]
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        assert isinstance(config[key], int) and config[key] >= 1


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_accepts_the_config_and_takes_a_step(stage: int, deepspeed_env: dict[str, str]):
    import deepspeed

    config = load_json(CONFIGS / f"ds_zero{stage}.json")
    # What the training script overrides for a CPU run: batch sizes, a torch AdamW (no JIT-compiled op).
    config.update(train_micro_batch_size_per_gpu=2, gradient_accumulation_steps=1)
    config["optimizer"]["params"]["torch_adam"] = True
    config["scheduler"]["params"].update(total_num_steps=4, warmup_num_steps=1, warmup_min_lr=1e-4)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    assert engine.zero_optimization_stage() == stage
    assert engine.bfloat16_enabled()

    inputs = torch.randn(2, 8, dtype=torch.bfloat16, device=engine.device)
    losses = []
    for _ in range(3):
        loss = engine(inputs).float().pow(2).mean()
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("file, mean, std", [("preprocessor_448.json", CLIP_MEAN, CLIP_STD), ("preprocessor_448_sam.json", SAM_MEAN, SAM_STD)])
def test_preprocessor_json_loads_with_the_right_statistics(file: str, mean: tuple, std: tuple):
    data = load_json(CONFIGS / file)
    processor = PixelLMImageProcessor.from_pretrained(CONFIGS / file)
    assert data["processor_class"] == "PixelLMImageProcessor"
    assert processor.image_size == 448
    assert processor.image_mean == pytest.approx(mean) and processor.image_std == pytest.approx(std)
    assert processor.to_dict() == data


def test_pixellm_part_formulas_match_the_original_checkpoint_tensors():
    # Element counts of a tiny checkpoint in the original's format (CLIP width 32, H = 64, decoder width 256).
    assert mlp_projector(32, 2, 64) == 12_480
    assert text_hidden_fcs(64, 256) == 20_800
    assert image_feature_neck(64, 256) == 607_232
    decoder = pixel_decoder_parts(PixelLMConfig(out_dim=256))
    assert decoder["original_structure"] == 7_571_940
    assert decoder["two_way_transformers"] == 6_582_528 and decoder["output_hypernetworks_mlps"] == 559_232
    assert decoder["fusion_weights"] == 2 * 3 + 2  # learnable token weights per level, then scale weights
    assert pixel_decoder_parts(PixelLMConfig(out_dim=256, compat_fixed_fusion=True))["fusion_weights"] == 0


def test_param_count_of_the_7b_preset_matches_known_model_sizes():
    counts = count_preset(load_json(CONFIGS / "models" / "pixellm_7b.json"))
    assert counts["llm"] == 6_738_415_616  # LLaMA-2-7B
    assert counts["vision_tower"] == 303_507_456 + (1025 - 577) * 1024  # ViT-L/14-336 with a 32x32 grid
    assert counts["llm_vocab_size_with_pixellm_tokens"] == 32_000 + 6 + 3
    parts = {k: round(v / 1e6, 2) for k, v in counts["pixellm_parts"].items()}
    # The original's 7B module inventory: its mm_projector, text_hidden_fcs, neck and mask decoder sizes.
    assert (parts["mm_projector"], parts["text_hidden_fcs"], parts["image_feature_neck"], parts["pixel_decoder"]) == (41.96, 17.83, 1.64, 7.57)


@pytest.mark.parametrize("pool", [0, 3])
def test_an_image_token_pool_that_does_not_divide_the_vision_grid_is_refused(pool: int):
    tiny = load_json(CONFIGS / "models" / "tiny.json")
    with pytest.raises(ValueError, match=f"image_token_pool {pool} must be a positive divisor of the vision grid"):
        PixelLMConfig(**dict(tiny, image_token_pool=pool))
    assert PixelLMConfig(**dict(tiny, image_token_pool=1)).num_image_tokens == PRESETS["tiny"] * 4
