"""model.convert_pixellm on a tiny checkpoint in the original PixelLM's released ``hf_model`` layout.

The source folder has the key names and shapes of research/pixellm-keys.txt (264 bf16 tensors), the config
fields of research/pixellm-config-fields.json, a LLaMA-style (Metaspace + byte-fallback BPE) tokenizer of
448 pieces + [SEG0..5] (non-special) + <im_start>/<im_end>, and a separate tiny CLIP folder at 336 px.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, CLIPVisionConfig, CLIPVisionModel, LlamaTokenizer

from model import PixelLMConfig, PixelLMForCausalLM, PixelLMImageProcessor
from model.convert_pixellm import DROPPED_KEYS, convert, map_key
from model.conversation import SYSTEM_PROMPT, Turn, tokenize_conversation
from model.processing_pixellm import SAM_MEAN, SAM_STD
from model.tokens import resolve_token_ids, seg_group_text

H, INTER, VOCAB, C_VIS, D = 64, 128, 456, 32, 256
BASE_VOCAB = 448
KEYS_FILE = Path(__file__).resolve().parents[2] / "shared" / "research" / "pixellm-keys.txt"
ROOT = Path(__file__).resolve().parents[1]


def original_shapes() -> dict[str, tuple[int, ...]]:
    """Every key and shape of the tiny released-format checkpoint, in file order (research/pixellm-keys.txt)."""
    s: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (VOCAB, H)}
    for i in range(2):
        p = f"model.layers.{i}."
        for proj in ("q", "k", "v", "o"):
            s[f"{p}self_attn.{proj}_proj.weight"] = (H, H)
        s[f"{p}self_attn.rotary_emb.inv_freq"] = (8,)
        s[f"{p}mlp.gate_proj.weight"] = (INTER, H)
        s[f"{p}mlp.up_proj.weight"] = (INTER, H)
        s[f"{p}mlp.down_proj.weight"] = (H, INTER)
        s[f"{p}input_layernorm.weight"] = (H,)
        s[f"{p}post_attention_layernorm.weight"] = (H,)
    s["model.norm.weight"] = (H,)
    for proj in ("mm_projector", "out_mm_projector"):
        s.update({f"model.{proj}.0.weight": (2 * H, C_VIS), f"model.{proj}.0.bias": (2 * H,)})
        s.update({f"model.{proj}.2.weight": (H, 2 * H), f"model.{proj}.2.bias": (H,)})
    pe = "model.prompt_encoder."
    s[f"{pe}pe_layer.positional_encoding_gaussian_matrix"] = (2, 128)
    for i in range(4):
        s[f"{pe}point_embeddings.{i}.weight"] = (1, D)
    s[f"{pe}not_a_point_embed.weight"] = (1, D)
    for i, (w, b) in {0: ((4, 1, 2, 2), (4,)), 1: ((4,), (4,)), 3: ((16, 4, 2, 2), (16,)), 4: ((16,), (16,)), 6: ((D, 16, 1, 1), (D,))}.items():
        s[f"{pe}mask_downscaling.{i}.weight"], s[f"{pe}mask_downscaling.{i}.bias"] = w, b
    s[f"{pe}no_mask_embed.weight"] = (1, D)

    def attention(prefix: str, inner: int) -> None:
        for proj in ("q", "k", "v"):
            s[f"{prefix}.{proj}_proj.weight"], s[f"{prefix}.{proj}_proj.bias"] = (inner, D), (inner,)
        s[f"{prefix}.out_proj.weight"], s[f"{prefix}.out_proj.bias"] = (D, inner), (D,)

    def norm(prefix: str) -> None:
        s[f"{prefix}.weight"], s[f"{prefix}.bias"] = (D,), (D,)

    md = "model.mask_decoder."
    for t in range(2):
        for layer in range(2):
            p = f"{md}transformer.{t}.layers.{layer}."
            attention(p + "self_attn", D)
            norm(p + "norm1")
            attention(p + "cross_attn_token_to_image", D // 2)
            norm(p + "norm2")
            s[p + "mlp.lin1.weight"], s[p + "mlp.lin1.bias"] = (2048, D), (2048,)
            s[p + "mlp.lin2.weight"], s[p + "mlp.lin2.bias"] = (D, 2048), (D,)
            norm(p + "norm3")
            norm(p + "norm4")
            attention(p + "cross_attn_image_to_token", D // 2)
        attention(f"{md}transformer.{t}.final_attn_token_to_image", D // 2)
        norm(f"{md}transformer.{t}.norm_final_attn")
    s[f"{md}iou_token.weight"], s[f"{md}mask_tokens.weight"] = (1, D), (4, D)
    s[f"{md}output_upscaling.0.weight"], s[f"{md}output_upscaling.0.bias"] = (D, 32, 2, 2), (32,)
    s[f"{md}output_upscaling.1.weight"], s[f"{md}output_upscaling.1.bias"] = (32,), (32,)
    s[f"{md}upsample_2x.0.weight"], s[f"{md}upsample_2x.0.bias"] = (D, D, 2, 2), (D,)
    norm(f"{md}upsample_2x.1")
    s[f"{md}pe1.positional_encoding_gaussian_matrix"] = (2, 128)
    for head, outputs in [*((f"output_hypernetworks_mlps.{i}", 32) for i in range(4)), ("iou_prediction_head", 4)]:
        for layer, out in enumerate((D, D, outputs)):
            s[f"{md}{head}.layers.{layer}.weight"], s[f"{md}{head}.layers.{layer}.bias"] = (out, D), (out,)
    s[f"{md}level_embed.weight"] = (2, D)
    s["model.image_feature_neck.0.weight"] = (D, H, 1, 1)
    norm("model.image_feature_neck.1")
    s["model.image_feature_neck.2.weight"] = (D, D, 3, 3)
    norm("model.image_feature_neck.3")
    s["model.text_hidden_fcs.0.0.weight"], s["model.text_hidden_fcs.0.0.bias"] = (H, H), (H,)
    s["model.text_hidden_fcs.0.2.weight"], s["model.text_hidden_fcs.0.2.bias"] = (D, H), (D,)
    s["lm_head.weight"] = (VOCAB, H)
    return s


def original_config() -> dict:
    """config.json of the tiny checkpoint (research/pixellm-config-fields.json)."""
    return {
        "model_type": "llava", "architectures": ["PixelLMForCausalLM"], "vocab_size": VOCAB, "hidden_size": H,
        "intermediate_size": INTER, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
        "rms_norm_eps": 1e-6, "max_position_embeddings": 2048, "pretraining_tp": 1, "tie_word_embeddings": False,
        "mm_hidden_size": C_VIS, "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch", "mm_use_im_start_end": True,
        "mm_vision_tower": "clip", "vision_tower": "clip", "separate_mm_projector": True, "mm_projector_hidden_dim": 2,
        "mm_projector_out_dim": 1, "image_feature_scale_num": 2, "pad_train_clip_images": True, "resize_vision_tower": True,
        "resize_vision_tower_size": 448, "vision_tower_for_mask": True, "train_mask_decoder": True, "out_dim": D,
        "use_cache": False, "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
    }


def llama_style_tokenizer(size: int) -> LlamaTokenizer:
    """A LLaMA tokenizer of ``size`` pieces (<unk> <s> </s>, 256 byte-fallback pieces, BPE pieces) trained locally."""
    words = "red green blue yellow purple orange circle square triangle star left right large small segment mask"
    corpus = [SYSTEM_PROMPT, "USER: ASSISTANT: Please segment the thing. It is the one on the left.", words] * 20
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=1000, show_progress=False))
    trained = sorted(bpe.get_vocab().items(), key=lambda kv: kv[1])
    keep = size - 3 - 256
    assert len(trained) >= keep, f"the corpus yields only {len(trained)} pieces"
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    vocab.update({piece: 259 + i for i, (piece, _) in enumerate(trained[:keep])})
    merges = [tuple(m) for m in json.loads(bpe.to_str())["model"]["merges"]]
    merges = [m for m in merges if m[0] in vocab and m[1] in vocab and m[0] + m[1] in vocab]
    return LlamaTokenizer(vocab=vocab, merges=merges)


def write_original(folder: Path, shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Write the tiny released-format folder (pytorch_model.bin, config.json, tokenizer); return its tensors."""
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    state = {k: (0.1 * torch.randn(shape, generator=generator)).to(torch.bfloat16) for k, shape in shapes.items()}
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps(original_config(), indent=2))
    tokenizer = llama_style_tokenizer(BASE_VOCAB)
    tokenizer.add_tokens([f"[SEG{i}]" for i in range(6)])
    tokenizer.add_tokens(["<im_start>", "<im_end>"], special_tokens=True)
    assert len(tokenizer) == VOCAB
    tokenizer.save_pretrained(folder)
    return state


def write_clip(folder: Path) -> CLIPVisionModel:
    """A CLIPVisionModel folder at 336 px (24x24 grid), 12 layers (decoder level 1 reads layer -11), width 32."""
    torch.manual_seed(1)
    config = CLIPVisionConfig(
        hidden_size=C_VIS, intermediate_size=64, num_hidden_layers=12, num_attention_heads=4, patch_size=14, image_size=336,
        projection_dim=C_VIS,
    )
    clip = CLIPVisionModel(config).eval()
    clip.save_pretrained(folder)
    return clip


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run the converter's command line once on the tiny folders."""
    root = tmp_path_factory.mktemp("convert")
    source = write_original(root / "hf_model", original_shapes())
    clip = write_clip(root / "clip")
    out = root / "converted"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "model.convert_pixellm", "--src", str(root / "hf_model"), "--clip", str(root / "clip"), "--out", str(out)]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"root": root, "source": source, "clip": clip, "out": out}


def saved_state(out: Path) -> dict[str, torch.Tensor]:
    files = sorted(out.glob("*.safetensors"))
    state = {}
    for file in files:
        state.update(load_file(file))
    return state


@pytest.mark.skipif(not KEYS_FILE.is_file(), reason="research notes not in this checkout")
def test_tiny_checkpoint_matches_the_research_key_list() -> None:
    listed = [line.split("\t") for line in KEYS_FILE.read_text().splitlines() if line and not line.startswith("#")]
    assert [(k, tuple(json.loads(shape))) for k, shape, _ in listed] == list(original_shapes().items())


def test_every_key_mapped_or_dropped_and_every_tensor_filled(converted: dict) -> None:
    source, out = converted["source"], converted["out"]
    mapped = {k: map_key(k) for k in source}
    dropped = sorted(k for k, v in mapped.items() if v is None)
    assert len(dropped) == 2 + 4 + 1 + 10 + 3 * 6 + 6  # inv_freq, points, not-a-point, mask downscaling, hypernets 1-3, iou head
    assert all(any(re.match(p, k) for p, _ in DROPPED_KEYS) for k in dropped)
    state = saved_state(out)
    config = json.loads((out / "config.json").read_text())
    with torch.device("meta"):
        expected = PixelLMForCausalLM(PixelLMConfig.from_dict(config)).state_dict()
    assert set(state) == set(expected)
    targets = {v for v in mapped.values() if v is not None}
    assert targets | {k for k in expected if k.startswith("vision_tower.")} | {"seg_codebook.token_weights", "pixel_decoder.scale_weights"} == set(expected)


def test_weights_land_in_the_right_place(converted: dict) -> None:
    source, state = converted["source"], saved_state(converted["out"])
    pairs = {
        "pixel_decoder.transformer.1.layers.0.mlp.lin1.weight": "model.mask_decoder.transformer.1.layers.0.mlp.lin1.weight",
        "pixel_decoder.transformer.0.final_attn_token_to_image.q_proj.bias": "model.mask_decoder.transformer.0.final_attn_token_to_image.q_proj.bias",
        "pixel_decoder.output_hypernetwork.layers.2.weight": "model.mask_decoder.output_hypernetworks_mlps.0.layers.2.weight",
        "pixel_decoder.pe_layers.0.positional_encoding_gaussian_matrix": "model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
        "pixel_decoder.pe_layers.1.positional_encoding_gaussian_matrix": "model.mask_decoder.pe1.positional_encoding_gaussian_matrix",
        "pixel_decoder.no_mask_embed.weight": "model.prompt_encoder.no_mask_embed.weight",
        "pixel_decoder.level_embed.weight": "model.mask_decoder.level_embed.weight",
        "image_feature_neck.layers.2.weight": "model.image_feature_neck.2.weight",
        "image_feature_neck.layers.3.bias": "model.image_feature_neck.3.bias",
        "seg_codebook.text_hidden_fcs.2.weight": "model.text_hidden_fcs.0.2.weight",
        "out_mm_projector.0.weight": "model.out_mm_projector.0.weight",
        "language_model.model.layers.1.mlp.down_proj.weight": "model.layers.1.mlp.down_proj.weight",
    }
    for ours, theirs in pairs.items():
        assert torch.equal(state[ours], source[theirs]), ours
    for ours, theirs in (("language_model.model.embed_tokens.weight", "model.embed_tokens.weight"), ("language_model.lm_head.weight", "lm_head.weight")):
        assert state[ours].shape == (VOCAB + 1, H)
        assert torch.equal(state[ours][:VOCAB], source[theirs])
        torch.testing.assert_close(state[ours][VOCAB].float(), source[theirs].float().mean(0), atol=1e-2, rtol=0)
    assert torch.equal(state["seg_codebook.token_weights"].float(), torch.full((2, 3), 1 / 6).to(torch.bfloat16).float())
    assert torch.equal(state["pixel_decoder.scale_weights"].float(), torch.full((2,), 0.5))


def test_clip_positions_resized_with_the_original_shift(converted: dict) -> None:
    old = converted["clip"].embeddings.position_embedding.weight.detach().float()  # [1 + 24*24, C]
    new = saved_state(converted["out"])["vision_tower.embeddings.position_embedding.weight"].float()  # [1 + 32*32, C]
    assert new.shape == (1 + 32 * 32, C_VIS)
    bf16 = lambda x: x.to(torch.bfloat16).float()  # noqa: E731
    # The original takes the LAST row as CLS and rows 0..575 as the 24x24 grid (one raster position off).
    assert torch.equal(new[0], bf16(old[-1]))
    # Bilinear 24 -> 32, align_corners=False: output (0, 0) samples source (-0.125, -0.125), clamped to grid (0, 0) = row 0.
    torch.testing.assert_close(new[1], bf16(old[0]), atol=1e-6, rtol=0)
    # Output (0, 1) samples x = 1.5 * 0.75 - 0.5 = 0.625 between grid (0, 0) = row 0 and grid (0, 1) = row 1.
    torch.testing.assert_close(new[2], bf16(0.375 * old[0] + 0.625 * old[1]), atol=1e-2, rtol=0)


def test_config_tokenizer_and_processor(converted: dict) -> None:
    out = converted["out"]
    config = json.loads((out / "config.json").read_text())
    assert config["compat_clip_pos_embed_shift"] is True and config["compat_fixed_fusion"] is True
    assert config["seg_token_ids"] == list(range(448, 454))
    assert (config["im_start_token_id"], config["im_end_token_id"], config["image_token_id"]) == (454, 455, 456)
    assert config["vision_feature_layers"] == [-2, -11] and config["vision_config"]["image_size"] == 448
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = resolve_token_ids(tokenizer, 6)
    assert (ids.im_start, ids.im_end, ids.image, ids.seg) == (454, 455, 456, tuple(range(448, 454)))
    text_ids = tokenizer(f"It is {seg_group_text(6)}.", add_special_tokens=False).input_ids
    start = text_ids.index(448)
    assert text_ids[start : start + 6] == list(range(448, 454))
    assert tokenizer.convert_ids_to_tokens(text_ids[start - 1]) == "▁is"
    processor = PixelLMImageProcessor.from_pretrained(out)
    assert (processor.image_size, processor.image_mean, processor.image_std) == (448, SAM_MEAN, SAM_STD)


def test_converted_model_runs_forward_and_generation(converted: dict) -> None:
    out = converted["out"]
    model = PixelLMForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    processor = PixelLMImageProcessor.from_pretrained(out)
    ids = resolve_token_ids(tokenizer, model.config.num_seg_tokens)
    image = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    batch = processor([image])
    answer = f"The circle is {seg_group_text(6)} and the square is {seg_group_text(6)}."
    conv = tokenize_conversation(tokenizer, [Turn("<image>\nSegment the circle and the square.", answer)], ids, model.config.num_image_tokens)
    input_ids = torch.tensor([conv.input_ids])
    with torch.no_grad():
        output = model(
            input_ids=input_ids, labels=torch.tensor([conv.labels]), pixel_values=batch["pixel_values"], clip_resize=batch["clip_resize"],
            masks_list=[torch.zeros(2, 60, 80)],
        )
    assert output.pred_masks[0].shape == (2, 60, 80)
    assert torch.isfinite(output.loss)
    prompt = tokenize_conversation(tokenizer, [Turn("<image>\nSegment the circle.")], ids, model.config.num_image_tokens)
    generated = model.generate_with_masks(
        torch.tensor([prompt.input_ids]), pixel_values=batch["pixel_values"], clip_resize=batch["clip_resize"],
        original_sizes=batch["original_sizes"], max_new_tokens=4,
    )
    assert 1 <= len(generated.sequences[0]) <= 4
    assert generated.pred_masks[0].shape[1:] == (60, 80)


def test_unknown_key_is_an_error(tmp_path: Path, converted: dict) -> None:
    shapes = {**original_shapes(), "model.mask_decoder.extra_head.weight": (4, 4)}
    write_original(tmp_path / "src", shapes)
    with pytest.raises(ValueError, match="extra_head"):
        convert(str(tmp_path / "src"), str(converted["root"] / "clip"), str(tmp_path / "out"))


def test_missing_key_is_an_error(tmp_path: Path, converted: dict) -> None:
    shapes = {k: v for k, v in original_shapes().items() if k != "model.mask_decoder.level_embed.weight"}
    write_original(tmp_path / "src", shapes)
    with pytest.raises(ValueError, match=r"unfilled.*pixel_decoder\.level_embed\.weight"):
        convert(str(tmp_path / "src"), str(converted["root"] / "clip"), str(tmp_path / "out"))
